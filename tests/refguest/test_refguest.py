"""The VBS reference guest pair (guest/vbs): the VTL0 kernel boots, starts the VTL1 secure kernel and arms
HVCI, KDP, kCFG, HyperGuard and credential isolation; every feature works on the benign path and blocks its
basic violation, with VTL1's own record of the intercept.  Each feature can be switched off, and vsm=off
falls back to CR pinning."""

import re
import struct
import subprocess
import sys

import pytest
from refguest import ALL_CHECKS, FEATURES, IMAGE, KEYS, ROOT, UNPROTECTED, boot, cred_hmac, tampered_kernel

VTL1_BASE, VTL1_KEY = 0x1000000, 0x1010000


@pytest.fixture(scope="module")
def full():
    return boot()


def test_boot_arms_every_feature_and_all_checks_pass(full):
    assert full.returncode == 1, full.out + full.err            # debug-exit 0
    assert full.features["vsm"] == "on"
    for f in FEATURES:
        assert full.features[f] == "armed", f
    assert full.features["crpin"] == "off"
    assert sorted(full.checks) == sorted(ALL_CHECKS)
    assert all(s == "PASS" for n, (s, _) in full.checks.items() if n != "domains"), full.out
    assert full.check("domains")[0] == "SKIP"                     # the domains design's own check
    assert full.features["domains"] in ("off", "unavailable")
    assert "RESULT passed=27 failed=0 skipped=1" in full.out and "ALL PASSED" in full.out
    assert full.seconds < 10


def test_boot_order_and_vtl1_self_protection(full):
    out = full.out
    order = ["vsm: secure kernel loaded at 0x1000000", "EnablePartitionVtl(1): with MBEC status 0x",
             "vsm: EnableVpVtl(1", "sk: secure kernel entered in VTL1",
             "sk: VTL1 region 0x1000000-0x13fffff: no access for VTL0 (ModifyVtlProtectionMask flags 0, 1024 pages)",
             "sk: hvci: kernel signature ok (Ed25519", "sk: kcfg: bitmap", "vsm: LOAD_KDATA: status 0",
             "sk: hyperguard: locked CR0", "sk: kdp: ro_after_init", "vsm: SIGNAL_END_OF_BOOT: status 0, armed 0x1f",
             "vbs: boot complete"]
    pos = [out.find(s) for s in order]
    assert all(p >= 0 for p in pos), [s for s, p in zip(order, pos, strict=True) if p < 0]
    assert pos == sorted(pos)
    # the module-path string is registered with KDP after the end of boot (run-time registration)
    assert re.search(r"end of boot.*\n(.*\n)*sk: kdp: 0x[0-9a-f]+-0x[0-9a-f]+ read-only for VTL0 \(1 page\)\n"
                     r"vbs: vsm on", out)


def test_benign_paths(full):
    d = full.passed("module-signed")
    assert "validated by VTL1" in d and "hook(20)=41" in d and "text write -> #GP" in d
    assert "hello: init running from module text at 0x800010" in full.out
    assert "canary 0x6b64702d63616e31" in full.passed("kdp-read")
    assert "in the bitmap) ran" in full.passed("kcfg-valid")
    full.passed("user-syscall")
    assert "uid 1000: /etc/shadow -EACCES" in full.passed("creds")
    assert "ticks in 3 sti;hlt" in full.passed("timer")


def test_credential_service_hmac_matches_the_build_key(full):
    key = cred_hmac(full, "vtl1")
    assert "key exists only in VTL1 memory" in full.passed("cred-hmac")
    assert key.hex() not in full.out


def _violation(full, access, gpa):
    hits = [v for v in full.violations if v["access"] == access and v["gpa"] == gpa]
    assert len(hits) == 1, (access, hex(gpa), full.violations)
    return hits[0]


def test_violations_are_blocked_with_vtl1_evidence(full):
    assert "-126 (ENOKEY" in full.passed("module-unsigned")
    assert "-129 (EKEYREJECTED" in full.passed("module-tampered")
    assert "sk: hvci: module at 0x802000 refused: not signed" in full.out
    assert "sk: hvci: module at 0x802000 refused: bad signature" in full.out
    assert "evil: UNSIGNED MODULE CODE RUNNING" not in full.out

    d = full.passed("kdp-write")
    m = re.search(r"gpa=(0x[0-9a-f]+) -> VTL1 GpaIntercept \(write, rip=(0x[0-9a-f]+)\)", d)
    v = _violation(full, "write", int(m.group(1), 16))
    assert v["rip"] == int(m.group(2), 16) and v["what"] == "ro_after_init (KDP)"
    assert "value unchanged 0x6b64702d63616e31" in d
    for name in ("kdp-syscall-table", "kdp-cred", "kdp-module-dir"):
        assert full.passed(name).startswith("blocked"), name

    assert full.passed("kcfg-invalid").startswith("blocked: 4 invalid targets")
    assert full.out.count("kcfg: blocked indirect call") == 4
    assert full.passed("kcfg-bitmap").startswith("blocked")

    assert "blocked by HyperGuard" in full.passed("cr4-smep")
    assert re.search(r"sk: violation: VTL0 mov to CR4 0x[0-9a-f]+ changes locked bits 0x100000 at rip", full.out)
    assert full.passed("cr0-wp").startswith("blocked by HyperGuard")
    assert "rewriting the locked value is skipped" in full.passed("msr-lstar")
    assert "sk: violation: VTL0 write of IDTR (base 0x1234000)" in full.out
    assert "ring-3 sgdt -> #GP" in full.passed("npiep")

    d = full.passed("hvci-exec-data")
    gpa = int(re.search(r"execute of data gpa (0x[0-9a-f]+)", d).group(1), 16)
    assert _violation(full, "execute", gpa)["rip"] == 0xFFFFC00000000000
    assert full.passed("hvci-write-text").startswith("blocked")

    assert full.passed("vtl1-read").startswith("blocked")
    assert _violation(full, "read", VTL1_BASE)["what"] == "VTL1 memory"
    assert _violation(full, "read", VTL1_KEY)["what"] == "VTL1 memory: the credential key"


@pytest.mark.parametrize("feature", FEATURES)
def test_each_feature_switches_off_alone(feature):
    b = boot(f"{feature}=off")
    assert b.returncode == 1, b.out + b.err
    assert b.features[feature] == "off"
    assert all(b.features[f] == "armed" for f in FEATURES if f != feature)
    assert all(s == "PASS" for s, _ in b.checks.values() if s != "SKIP"), b.out
    for name in UNPROTECTED[feature]:
        assert b.passed(name).startswith("unprotected"), name
    if feature == "credguard":
        assert re.search(r"^CRED .* by=vtl0$", b.out, re.M)
    if feature == "hvci":       # modules are still checked by VTL1 (for kCFG), just not made executable by it
        assert "validated by VTL1 (signature; HVCI off)" in b.passed("module-signed")
        assert "refused by VTL1" in b.passed("module-unsigned")
    if feature == "hyperguard":
        assert b.check("npiep")[0] == "SKIP"
    assert b.seconds < 10


def test_all_features_off_with_vtl1_running():
    b = boot(" ".join(f"{f}=off" for f in FEATURES))
    assert b.returncode == 1, b.out
    assert b.features["vsm"] == "on" and all(b.features[f] == "off" for f in FEATURES)
    assert b.passed("vtl1-read").startswith("blocked")        # VTL1 still protects itself
    assert "refused by VTL0" in b.passed("module-unsigned")    # the kernel's own module_sig_enforce
    assert b.passed("kcfg-invalid").startswith("unprotected")


def test_vsm_off_protects_itself_with_cr_pinning():
    b = boot("vsm=off")
    assert b.returncode == 1, b.out
    assert b.features["vsm"] == "off" and b.features["crpin"] == "armed"
    assert re.search(r"^crpin: pinned CR0=0x10000 CR4=0x[0-9a-f]+$", b.out, re.M)
    for f in ("hvci", "kdp", "hyperguard", "credguard"):
        assert b.features[f] == "off"
    assert b.features["kcfg"] == "armed" and "bitmap 0x" in b.out and "writable by VTL0" in b.out
    assert "blocked by CR pinning" in b.passed("cr4-smep")
    assert "blocked by CR pinning" in b.passed("cr0-wp")
    assert b.passed("kdp-write").startswith("unprotected")       # the physmap alias defeats self-protection
    assert b.passed("kdp-own-pt").startswith("direct write")
    assert "refused by VTL0" in b.passed("module-tampered")
    assert b.check("vtl1-read")[0] == "SKIP" and b.check("vsm")[0] == "SKIP"
    cred_hmac(b, "vtl0")
    assert not b.violations and "sk:" not in b.out


def test_without_hyperv_the_kernel_falls_back_to_cr_pinning():
    b = boot(hyperv=False)
    assert b.returncode == 1, b.out
    assert b.features["vsm"] == "unavailable" and b.features["crpin"] == "armed"
    assert "no Hyper-V VSM (run with --hyperv)" in b.out


def test_vulnerable_driver_is_opt_in(full):
    assert "-ENOSYS" in full.passed("vulndrv")
    b = boot("vulndrv")
    assert b.returncode == 1, b.out
    assert b.features["vulndrv"] == "ENABLED"
    d = b.passed("vulndrv")
    assert "write to creds -> oops (#GP), killed" in d and "-> kCFG, killed" in d
    assert "vulndrv: read  [0x" in b.out and "(kernel fault in a system call)" in b.out
    b = boot("vulndrv kdp=off kcfg=off")
    assert "landed (KDP off, undone)" in b.passed("vulndrv") and "ran (kCFG off)" in b.passed("vulndrv")


def test_bad_command_line_and_unknown_check():
    b = boot("hvci=maybe checks=bogus")
    assert "FAIL cmdline: hvci=maybe (expected on or off)" in b.out
    assert "CHECK cmdline FAIL unknown check 'bogus'" in b.out
    assert b.returncode == (2 << 1) | 1


def test_kernel_signature_covers_the_image(tmp_path):
    """vbstool verifies the build's signature; a kernel with one flipped text byte is refused by VTL1
    (HVCI not armed, the boot reports the failure)."""
    tool = [sys.executable, str(ROOT / "guest" / "vbs" / "vbstool.py")]
    r = subprocess.run([*tool, "verify-kernel", str(KEYS), str(IMAGE.with_suffix(".elf64"))], capture_output=True,
                       text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok"
    b = boot(image=tampered_kernel(tmp_path))
    assert "sk: hvci: kernel signature BAD: HVCI not armed" in b.out
    assert "vsm: LOAD_KDATA: status -129" in b.out
    assert b.returncode != 1


def test_hyperguard_holds_against_setvpregisters_on_itself():
    b = boot("checks=setvpregs")
    assert b.check("setvpregs")[0] == "PASS", b.check("setvpregs")


def test_module_signature_format():
    """The module signature format: ELF || Ed25519(64) || algo, signed_len || magic; hello.ko verifies with the
    public key, tampered.ko does not."""
    sys.path.insert(0, str(ROOT / "guest" / "vbs"))
    import vbstool
    pub = (KEYS / "sign.pub").read_bytes()
    mods = ROOT / "guest" / "build" / "vbs" / "modules"
    for name, ok in (("hello.ko", True), ("tampered.ko", False)):
        blob = (mods / name).read_bytes()
        assert blob.endswith(b"~Module signature appended~\n")
        algo, signed_len = struct.unpack_from("<II", blob, len(blob) - 28 - 8)
        assert algo == 1 and signed_len == len(blob) - 100
        assert vbstool.ed25519_verify(pub, blob[:signed_len], blob[signed_len:signed_len + 64]) is ok
    assert not (mods / "unsigned.ko").read_bytes().endswith(b"appended~\n")
