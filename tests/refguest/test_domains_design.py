"""The VBS reference guest on the domains design (issue 7, docs/domains.md): the same kernel and the same
secure-kernel sources, with `--domains` instead of `--hyperv`.  Four feature domains (HVCI+kCFG, KDP,
HyperGuard, credentials) each hold only the capabilities their feature needs; the kernel drops everything
else at the end of boot; every check passes as under VSM (npiep is skipped with its reason); the design is
chosen on the command line; the host policy limits what can ever be delegated."""

import re

import pytest
from refguest import ALL_CHECKS, FEATURES, ROOT, UNPROTECTED, boot, cred_hmac, tampered_kernel

POLICY = ROOT / "guest" / "vbs" / "dom" / "policy.toml"
DOM_BUILD = ROOT / "guest" / "build" / "vbs" / "dom"
CRED_KEY = 0x130F000          # the credential domain's .secret page (slot 3 of the secure region)


def dom_boot(append: str = "", **kw):
    return boot(append, hyperv=False, domains=True, **kw)


def caps(b) -> dict[str, tuple[int, int, str]]:
    """role -> (domain id, number of capabilities, the list) from 'dom-<role>: domain N: k capabilities: ...'."""
    return {m.group(1): (int(m.group(2)), int(m.group(3)), m.group(4))
            for m in re.finditer(r"^dom-(\w+): domain (\d+): (\d+) capabilities: (.*)$", b.out, re.M)}


@pytest.fixture(scope="module")
def dom():
    return dom_boot()


def test_every_feature_armed_and_every_check_passes_on_domains(dom):
    assert dom.returncode == 1, dom.out + dom.err
    assert dom.features["domains"] == "on" and dom.features["vsm"] == "unavailable"
    for f in FEATURES:
        assert dom.features[f] == "armed", f
    assert dom.features["crpin"] == "off"
    assert sorted(dom.checks) == sorted(ALL_CHECKS)
    assert all(s == "PASS" for n, (s, _) in dom.checks.items() if n != "npiep"), dom.out
    status, detail = dom.check("npiep")
    assert status == "SKIP" and "domains design: NPIEP is a Hyper-V synthetic MSR" in detail
    assert "RESULT passed=27 failed=0 skipped=1" in dom.out and "ALL PASSED" in dom.out
    assert dom.seconds < 15


def test_boot_order_and_the_kernel_gives_its_capabilities_away(dom):
    order = ["dom: boot domain: 10 capabilities", "dom: feature domains' images loaded at 0x1000000-0x13fffff",
             "dom-hvci: secure kernel entered in the hvci domain at 0x1000060", "dom-hvci: hvci: kernel signature ok",
             "dom-hvci: kcfg: bitmap", "dom: LOAD_KDATA(hvci, domain 1): status 0, armed 0x5",
             "dom: LOAD_KDATA(kdp, domain 2): status 0, armed 0x2",
             "dom-hyperguard: monitor: the kernel's memory violations", "dom: LOAD_KDATA(hyperguard, domain 3)",
             "dom: LOAD_KDATA(cred, domain 4): status 0, armed 0x10", "dom: feature domains' views",
             "dom-hyperguard: hyperguard: locked CR0", "dom-kdp: kdp: ro_after_init",
             "dom: SIGNAL_END_OF_BOOT: status 0, armed 0x1f", "dom: end of boot: the kernel dropped its 9 boot",
             "vbs: boot complete"]
    pos = [dom.out.find(s) for s in order]
    assert all(p >= 0 for p in pos), [s for s, p in zip(order, pos, strict=True) if p < 0]
    assert pos == sorted(pos)
    d = dom.passed("domains")
    assert "the kernel holds 5 capabilities" in d and "MEM_PROTECT on its own text -EBADF" in d
    assert "DOMAIN_CREATE -EPERM" in d and "REGS_SET/GET on a domain -EPERM" in d
    assert "sk:" not in dom.out                                    # no VTL1 anywhere


def test_each_domain_holds_only_what_its_feature_needs(dom):
    c = caps(dom)
    assert set(c) == {"hvci", "kdp", "hyperguard", "cred"}
    # the credential domain: its own name, nothing else (it cannot change any protection)
    assert c["cred"][1] == 1 and "MEMORY" not in c["cred"][2] and "INTERCEPT" not in c["cred"][2]
    # KDP: memory capabilities with R | IMMUTABLE only: it can make VTL0 RAM read-only, never writable
    assert re.findall(r"MEMORY \S+ rights (0x\w+)", c["kdp"][2]) == ["0x9", "0x9"]
    # HVCI: R W X I on VTL0's RAM (both sides of the secure region), no intercepts, no register access
    hv = c["hvci"][2]
    assert "MEMORY 0x0-0xffffff rights 0xf" in hv and "MEMORY 0x1400000-" in hv and "INTERCEPT" not in hv
    assert "DOMAIN 0 rights 0x0" in hv
    # HyperGuard: intercepts (CR0, CR4, 8 MSRs, descriptor tables, memory violations), reads the kernel's
    # registers, and no memory capability at all
    g = c["hyperguard"][2]
    assert g.count("INTERCEPT") == 12 and "MEMORY" not in g and "DOMAIN 0 rights 0x20" in g
    assert "INTERCEPT 1/0x80010001" in g and "INTERCEPT 2/0x300800" in g and "INTERCEPT 5/0x7" in g


def test_violations_reach_the_hyperguard_domain_with_labels(dom):
    by_gpa = {(v["access"], v["gpa"]): v["what"] for v in dom.violations}
    d = dom.passed("kdp-write")
    m = re.search(r"gpa=(0x[0-9a-f]+) -> VTL1 GpaIntercept \(write, rip=(0x[0-9a-f]+)\)", d)
    assert by_gpa[("write", int(m.group(1), 16))] == "ro_after_init (KDP)"
    assert ("read", CRED_KEY) in by_gpa and by_gpa[("read", CRED_KEY)].endswith("the cred domain: the credential key")
    assert by_gpa[("read", 0x1000000)] == "secure memory, the hvci domain"
    assert any(w == "registered data (KDP)" for w in by_gpa.values())
    assert any(w == "kernel text (HVCI)" for (a, _), w in by_gpa.items() if a == "write")
    assert any(a == "execute" for a, _ in by_gpa)
    assert re.search(r"^dom-hyperguard: violation: VTL0 mov to CR4 0x[0-9a-f]+ changes locked bits 0x100000",
                     dom.out, re.M)
    assert "dom-hyperguard: violation: VTL0 write of IDTR (base 0x1234000)" in dom.out
    assert "rewriting the locked value is skipped" in dom.passed("msr-lstar")


def test_the_key_is_only_in_the_credential_domain(dom):
    key = cred_hmac(dom, "domain")
    assert "only in the credential domain's memory" in dom.passed("cred-hmac")
    # the build put the key into the credential domain's image only
    assert key in (DOM_BUILD / "cred.bin").read_bytes()
    for role in ("hvci", "kdp", "hyperguard"):
        assert key not in (DOM_BUILD / f"{role}.bin").read_bytes(), role


@pytest.mark.parametrize("feature", FEATURES)
def test_each_feature_switches_off_alone_on_domains(feature):
    b = dom_boot(f"{feature}=off")
    assert b.returncode == 1, b.out + b.err
    assert b.features[feature] == "off" and b.features["domains"] == "on"
    assert all(b.features[f] == "armed" for f in FEATURES if f != feature)
    assert all(s in ("PASS", "SKIP") for s, _ in b.checks.values()), b.out
    for name in UNPROTECTED[feature]:
        assert b.passed(name).startswith("unprotected"), name
    if feature == "credguard":
        assert re.search(r"^CRED .* by=vtl0$", b.out, re.M)
    assert b.passed("vtl1-read").startswith("blocked")   # the secure region stays out of the kernel's view


def test_the_design_is_chosen_on_the_command_line():
    both = ("--hyperv", "--domains")
    b = boot("checks=vsm,domains", hyperv=False, extra=both)                  # default: VSM first
    assert b.features["vsm"] == "on" and b.features["domains"] == "off" and b.check("domains")[0] == "SKIP"
    b = boot("design=domains checks=vsm,domains", hyperv=False, extra=both)
    assert b.features["domains"] == "on" and b.features["vsm"] == "off"
    assert b.check("domains")[0] == "PASS" and b.check("vsm")[0] == "PASS"
    b = boot("design=domains checks=none")                                       # --hyperv only
    assert "vsm: design=domains: not offered by this hypervisor (run with --domains)" in b.out
    assert b.features["crpin"] == "armed" and b.returncode == 1
    b = dom_boot("design=vsm checks=none")
    assert "(run with --hyperv)" in b.out and b.features["domains"] == "off" and b.features["crpin"] == "armed"
    b = dom_boot("design=both checks=none")
    assert "FAIL cmdline: design=both (expected vsm or domains)" in b.out and b.returncode == (1 << 1) | 1
    b = dom_boot("vsm=off checks=cr4-smep")                                      # no secure side at all
    assert b.features["domains"] == "off" and "blocked by CR pinning" in b.passed("cr4-smep")


def test_host_policy_limits_what_the_kernel_can_delegate(tmp_path):
    b = boot("checks=domains,cr4-smep,lidt", hyperv=False, extra=("--domain-policy", str(POLICY)))
    assert b.returncode == 1, b.out
    assert "dom: boot domain: 15 capabilities" in b.out and all(b.features[f] == "armed" for f in FEATURES)
    assert b.passed("lidt").startswith("blocked")
    # a host that allows no descriptor-table intercepts: HyperGuard cannot arm, and says why
    narrow = tmp_path / "no-dtr.toml"
    narrow.write_text("\n".join(line for line in POLICY.read_text().splitlines() if '"dtr"' not in line) + "\n")
    b = boot("checks=cr4-smep", hyperv=False, extra=("--domain-policy", str(narrow)))
    assert "1 of the HyperGuard domain's intercepts are not allowed by the host policy" in b.out
    assert "hyperguard: missing capabilities" in b.out and b.features["hyperguard"] == "FAILED"
    assert b.features["hvci"] == "armed" and b.returncode != 1


def test_kernel_signature_is_checked_by_the_hvci_domain(tmp_path):
    b = dom_boot("checks=none", image=tampered_kernel(tmp_path))
    assert "dom-hvci: hvci: kernel signature BAD: HVCI not armed" in b.out
    assert "dom: LOAD_KDATA(hvci, domain 1): status -129" in b.out
    assert b.features["hvci"] == "FAILED" and b.returncode != 1


@pytest.mark.parametrize("hyperv", [True, False], ids=["vsm", "domains"])
def test_the_vulnerable_secure_service_is_opt_in(hyperv):
    """Without the word vulnsk no secure component answers VBS_CALL_VULNSK (docs/attacks.md)."""
    b = boot("vulndrv attack=tcb-credkey", hyperv=hyperv, domains=not hyperv)
    assert "the secure side has no vulnerable service" in b.out and "ATTACK tcb-credkey: SUCCEEDED" not in b.out
    assert "vulnsk:" not in b.out
