/*
 * The checks: one machine-readable line each, "CHECK <name> PASS|FAIL|SKIP <detail>".  Violation
 * checks expect "blocked" when the protecting feature is armed and "unprotected" (the access went
 * through, then undone) when it is off, so both designs run the same list.  With VTL1, "blocked"
 * also requires VTL1's record of the intercept (GET_VIOLATION: kind, access, address, RIP).
 */
#include "lib/bootinfo.h"
#include "lib/cpu.h"
#include "lib/hyperv.h"
#include "lib/lapic.h"
#include "lib/msr.h"
#include "lib/string.h"
#include "lib/x86.h"
#include "vbs/vtl0/kernel.h"

extern u64 kdp_canary;
extern const char *volatile current_check;
extern char gadget_write_cr4[];
#define KDP_CANARY 0x6b64702d63616e31ull
#define USCRIPT ((struct uscript *)USER_DATA_VA)
bool vsm_hyperv(void);                       /* vsm.c: VSM design (else domains: docs/domains.md) */
int vbs_check_domains(char *d, size_t dn);   /* vsm.c: CHECK domains */
#define D(...) ksnprintf(d, dn, __VA_ARGS__)
#define FAILF(...)   \
    do {             \
        D(__VA_ARGS__); \
        return 0;    \
    } while (0)
#define SKIPF(...)   \
    do {             \
        D(__VA_ARGS__); \
        return -1;   \
    } while (0)

/* ---- helpers */
struct viol {
    long count;
    u64 kind, access, action, addr, rip, value;
};

static struct viol last_violation(void)
{
    struct viol v = {0, 0, 0, 0, 0, 0, 0};
    struct vbs_ret r = vbs_call(VBS_CALL_GET_VIOLATION, ~0ull, 0, 0, 0);
    if (r.status <= 0)
        return v;
    v.count = r.status;
    v.kind = r.r[0] & 0xff;
    v.access = (r.r[0] >> 8) & 0xff;
    v.action = (r.r[0] >> 16) & 0xff;
    v.addr = r.r[1];
    v.rip = r.r[2];
    v.value = r.r[3];
    return v;
}

static long violations(void) { return vbs.vsm ? last_violation().count : 0; }

/* The exception that just happened was VTL1's doing: one new record with this kind/access/address/RIP. */
static int expect_vtl1(char *d, size_t dn, long before, u64 kind, u64 access, u64 addr, u64 rip)
{
    struct viol v = last_violation();
    if (v.count != before + 1)
        FAILF("VTL1 recorded %ld violations, expected %ld", v.count - before, 1L);
    if (v.kind != kind || v.access != access || v.addr != addr || v.rip != rip)
        FAILF("VTL1 record kind=%lu access=%lu addr=0x%lx rip=0x%lx, expected %lu/%lu/0x%lx/0x%lx", v.kind, v.access,
              v.addr, v.rip, kind, access, addr, rip);
    return 1;
}


/* A blocked access: exactly one #GP(0) at rip. */
static int expect_gp(char *d, size_t dn, u64 n0, u64 rip)
{
    if (last_fault.count != n0 + 1)
        FAILF("%lu exceptions, expected one #GP", last_fault.count - n0);
    if (last_fault.vector != VEC_GP || last_fault.error != 0 || last_fault.rip != rip)
        FAILF("%s error 0x%lx at rip 0x%lx, expected #GP(0) at 0x%lx", exc_names[last_fault.vector & 31],
              last_fault.error, last_fault.rip, rip);
    return 1;
}

/* Write a u64 through the physmap alias (writable in VTL0's own page tables). */
static int alias_write(char *d, size_t dn, const char *what, u64 va, u64 value, bool protect)
{
    u64 pa = va, alias = physmap(pa), old = *(volatile u64 *)va, rip;
    long v0 = violations();
    u64 n0 = last_fault.count;
    int vec = write_u64_safe(alias, value, &rip);
    u64 now = *(volatile u64 *)va;
    if (protect) {
        if (!vec)
            FAILF("%s: write through the physmap went through (now 0x%lx)", what, now);
        if (!expect_gp(d, dn, n0, rip))
            return 0;
        if (now != old)
            FAILF("%s: changed to 0x%lx despite the #GP", what, now);
        if (!expect_vtl1(d, dn, v0, VBS_V_GPA, HV_INTERCEPT_ACCESS_WRITE, pa, rip))
            return 0;
        D("blocked: %s write gpa=0x%lx -> VTL1 GpaIntercept (write, rip=0x%lx) -> #GP; value unchanged 0x%lx", what,
          pa, rip, now);
        return 1;
    }
    if (vec)
        FAILF("%s: unexpected %s with the protection off", what, exc_names[vec & 31]);
    if (now != value)
        FAILF("%s: write did not land", what);
    write_u64_safe(alias, old, NULL);
    D("unprotected: %s write through the physmap landed (0x%lx -> 0x%lx), restored", what, old, value);
    return 1;
}

static int run_script(const struct cred *c, const char *name)
{
    return run_user(uprog_script, USER_DATA_VA, c, name);
}

static void script_reset(void)
{
    stac();
    memset(USCRIPT, 0, sizeof(struct uscript));
    clac();
}

static void script_op(u64 nr, u64 a0, u64 a1, u64 a2)
{
    stac();
    struct uscript *s = USCRIPT;
    s->op[s->n++] = (struct uscript_op){nr, a0, a1, a2, 0};
    clac();
}

static u64 script_str(u64 off, const char *str)
{
    stac();
    strcpy(USCRIPT->buf + off, str);
    clac();
    return (u64)(USCRIPT->buf + off);
}

static long script_ret(int i)
{
    stac();
    long r = (long)USCRIPT->op[i].ret;
    clac();
    return r;
}

/* ---- checks */
static int c_vsm(char *d, size_t dn)
{
    if (!vbs.vsm)
        SKIPF("no VTL1 (%s)", vbs.vsm_available ? "vsm=off" : "no Hyper-V VSM");
    struct vbs_ret r = vbs_call(VBS_CALL_STATUS, 0, 0, 0, 0);
    if (r.status || r.r[0] != vbs.armed || r.r[1] != 2)
        FAILF("STATUS: %ld armed 0x%lx phase %lu", r.status, r.r[0], r.r[1]);
    struct vbs_ret again = vbs_call(VBS_CALL_LOAD_KDATA, 0, 0, 0, 0);
    struct vbs_ret unknown = vbs_call(0x12345, 0, 0, 0, 0);
    if (again.status != -VBS_EPERM || unknown.status != -VBS_ENOSYS)
        FAILF("LOAD_KDATA after boot %ld (want -EPERM), unknown id %ld (want -ENOSYS)", again.status, unknown.status);
    D("%s at 0x%lx (0x%lx bytes), armed 0x%lx, phase runtime; boot-time calls refused",
      vsm_hyperv() ? "VTL1" : "4 feature domains", r.r[2], r.r[3], r.r[0]);
    return 1;
}

static int c_user_syscall(char *d, size_t dn)
{
    script_reset();
    static const char hello[] = "  user: hello from ring 3 (uid 1000)\n";
    u64 msg = script_str(0, hello);
    script_op(SYS_WRITE, msg, sizeof(hello) - 1, 0);
    script_op(SYS_GETUID, 0, 0, 0);
    script_op(SYS_GETPID, 0, 0, 0);
    script_op(63, 0, 0, 0);
    int r = run_script(cred_user, "user-syscall");
    if (r != USER_EXITED || user_run_info.exit_code)
        FAILF("process killed (vector %lu rip 0x%lx)", user_run_info.vector, user_run_info.rip);
    if (script_ret(0) != (long)sizeof(hello) - 1 || script_ret(1) != 1000 || script_ret(2) <= 0 || script_ret(3) != -ENOSYS)
        FAILF("results write=%ld getuid=%ld getpid=%ld nr63=%ld", script_ret(0), script_ret(1), script_ret(2),
              script_ret(3));
    /* ring-3 faults kill the process, the kernel goes on */
    r = run_user(uprog_read_kernel, (u64)__kernel_start, cred_user, "read-kernel");
    if (r != USER_KILLED || user_run_info.vector != VEC_PF || user_run_info.error != 5)
        FAILF("ring-3 read of a kernel page: result %d vector %lu error 0x%lx", r, user_run_info.vector,
              user_run_info.error);
    D("SYSCALL write/getuid/getpid through the kCFG-checked table; ring-3 #PF on a kernel page killed the process");
    return 1;
}

static int c_creds(char *d, size_t dn)
{
    script_reset();
    u64 shadow = script_str(0, "/etc/shadow"), motd = script_str(32, "/etc/motd");
    u64 buf = (u64)(USCRIPT->buf + 1024);
    script_op(SYS_OPEN, shadow, 0, 0);
    script_op(SYS_OPEN, motd, 0, 0);
    script_op(SYS_READ, 0, buf, 64);
    script_op(SYS_SETUID, 0, 0, 0);
    run_script(cred_user, "creds-user");
    long o1 = script_ret(0), o2 = script_ret(1), rd = script_ret(2), su = script_ret(3);
    if (o1 != -EACCES || o2 != 0 || rd <= 0 || su != -EPERM)
        FAILF("uid 1000: open shadow %ld (want -EACCES), open motd %ld, read %ld, setuid(0) %ld (want -EPERM)", o1,
              o2, rd, su);
    script_reset();
    shadow = script_str(0, "/etc/shadow");
    script_op(SYS_OPEN, shadow, 0, 0);
    script_op(SYS_READ, 0, buf, 64);
    script_op(SYS_GETUID, 0, 0, 0);
    run_script(cred_root, "creds-root");
    stac();
    bool root_read = !strncmp((const char *)buf, "root:", 5);
    clac();
    if (script_ret(0) != 0 || script_ret(1) <= 0 || !root_read || script_ret(2) != 0)
        FAILF("uid 0: open %ld read %ld getuid %ld", script_ret(0), script_ret(1), script_ret(2));
    D("uid 1000: /etc/shadow -EACCES, /etc/motd readable, setuid(0) -EPERM; uid 0 reads /etc/shadow; creds at 0x%lx",
      (u64)cred_user);
    return 1;
}

/* The periodic tick runs only here: with a LAPIC interrupt pending while IF=0 (or while VTL1 runs),
 * vtlvisor stops the engine every 50 us, which corrupts guest state, and a LAPIC write then never
 * completes (docs/guest.md, caveat 2).  So the timer is stopped with IF=1 (after a nop: not in the STI
 * shadow), letting a tick that became pending in. */
static int c_timer(char *d, size_t dn)
{
    u64 t0 = timer_ticks;
    lapic_wr(LAPIC_LVT_TIMER, LVT_PERIODIC | VEC_TIMER);
    lapic_wr(LAPIC_TIMER_ICR, 1000000);
    for (int i = 0; i < 3; i++)
        __asm__ volatile("sti; hlt; cli" ::: "memory");
    __asm__ volatile("sti; nop" ::: "memory");
    lapic_wr(LAPIC_TIMER_ICR, 0);
    lapic_wr(LAPIC_LVT_TIMER, LVT_MASKED | VEC_TIMER);
    __asm__ volatile("cli" ::: "memory");
    u64 n = timer_ticks - t0;
    if (n < 3)
        FAILF("%lu ticks in 3 hlt", n);
    D("LAPIC periodic timer: %lu ticks in 3 sti;hlt (interrupts reach VTL0 with VTL1 enabled)", n);
    return 1;
}

static int c_kdp_read(char *d, size_t dn)
{
    if (kdp_canary != KDP_CANARY)
        FAILF("ro_after_init canary 0x%lx", kdp_canary);
    if (!syscall_table[SYS_GETUID] || cred_user->uid != 1000 || cred_root->uid != 0 ||
        strcmp(module_dir, "/lib/modules/"))
        FAILF("registered data unreadable or wrong");
    u64 *pte = pte_lookup((u64)&kdp_canary);
    if (!pte || (*pte & PTE_W))
        FAILF("ro_after_init still writable in VTL0's own page tables");
    D("ro_after_init canary 0x%lx; syscall table 0x%lx, creds 0x%lx, module_dir \"%s\" at 0x%lx readable", kdp_canary,
      (u64)syscall_table, (u64)cred_user, module_dir, (u64)module_dir);
    return 1;
}

static int c_kdp_write(char *d, size_t dn)
{
    return alias_write(d, dn, "ro_after_init", (u64)&kdp_canary, 0x4141414141414141ull, vbs.armed & VBS_F_KDP);
}

static int c_kdp_own_pt(char *d, size_t dn)
{
    u64 rip, n0 = last_fault.count;
    int vec = write_u64_safe((u64)&kdp_canary, 0x4242, &rip);
    if (vec != VEC_PF || last_fault.count != n0 + 1 || last_fault.error != 0x3)
        FAILF("direct write: vector %d error 0x%lx", vec, last_fault.error);
    D("direct write to ro_after_init: #PF error 0x3 from VTL0's own page tables (CR0.WP)");
    return 1;
}

static int c_kdp_syscall_table(char *d, size_t dn)
{
    return alias_write(d, dn, "syscall table", (u64)&syscall_table[SYS_GETPID], (u64)gadget_write_cr4,
                       vbs.armed & VBS_F_KDP);
}

static int c_kdp_cred(char *d, size_t dn)
{
    return alias_write(d, dn, "uid 1000 credentials", (u64)&cred_user->uid, 0, vbs.armed & VBS_F_KDP);
}

static int c_kdp_module_dir(char *d, size_t dn)
{
    return alias_write(d, dn, "module_dir", (u64)module_dir, 0x2f706d742f, vbs.armed & VBS_F_KDP); /* "/tmp/" */
}

static int c_module_signed(char *d, size_t dn)
{
    u64 init = 0;
    long r = module_load("hello", &init);
    if (r)
        FAILF("hello.ko: %ld", r);
    bool found;
    long h = vbs_call_hook("hello", 20, &found);
    if (!found || h != 41)
        FAILF("hook(20) = %ld", h);
    const char *who = (vbs.armed & VBS_F_HVCI) ? "VTL1 (Ed25519, relinked and compared), text R+X"
                      : (vbs.armed & VBS_F_KCFG) ? "VTL1 (signature; HVCI off)"
                                                 : "VTL0 self-check";
    if (vbs.armed & VBS_F_HVCI) {
        u64 rip, n0 = last_fault.count;
        long v0 = violations();
        u8 b = *(volatile u8 *)init;
        if (!write_u8_safe(physmap(init), b, &rip))
            FAILF("module text writable through the physmap");
        if (!expect_gp(d, dn, n0, rip) || !expect_vtl1(d, dn, v0, VBS_V_GPA, HV_INTERCEPT_ACCESS_WRITE, init, rip))
            return 0;
    }
    D("hello.ko validated by %s; init at 0x%lx ran; hook(20)=41 through kCFG%s", who, init,
      (vbs.armed & VBS_F_HVCI) ? "; text write -> #GP" : "");
    return 1;
}

static int module_refused(char *d, size_t dn, const char *name, long want)
{
    u64 init = 0;
    long v0 = violations();
    long r = module_load(name, &init);
    if (r != want)
        FAILF("%s.ko: status %ld, expected %ld", name, r, want);
    if (violations() != v0)
        FAILF("%s.ko: VTL1 recorded a violation", name);
    D("%s.ko refused by %s: %ld (%s)", name, (vbs.armed & (VBS_F_HVCI | VBS_F_KCFG)) ? "VTL1" : "VTL0", r,
      want == -VBS_ENOKEY ? "ENOKEY: not signed" : "EKEYREJECTED: bad signature");
    return 1;
}

static int c_module_unsigned(char *d, size_t dn) { return module_refused(d, dn, "unsigned", -VBS_ENOKEY); }
static int c_module_tampered(char *d, size_t dn) { return module_refused(d, dn, "tampered", -VBS_EKEYREJECTED); }

/* kCFG demo targets: one listed, one not (both ordinary functions) */
static volatile u64 kcfg_marker;
__attribute__((noinline)) static u64 kcfg_demo_valid(u64 x)
{
    kcfg_marker = x;
    return x + 1;
}
KCFG_TARGET(kcfg_demo_valid);
__attribute__((noinline)) static u64 kcfg_demo_unlisted(u64 x)
{
    kcfg_marker = x;
    return x + 2;
}

static int c_kcfg_valid(char *d, size_t dn)
{
    u64 fn = (u64)kcfg_demo_valid;
    bool blocked;
    kcfg_marker = 0;
    u64 r = kcfg_icall(fn, 41, "check kcfg-valid", &blocked);
    if (blocked || r != 42 || kcfg_marker != 41)
        FAILF("indirect call to kcfg_demo_valid 0x%lx: blocked=%d ret=%lu", fn, blocked, r);
    if (vbs.kcfg && !kcfg_valid((u64)syscall_table[SYS_GETUID]))
        FAILF("syscall handler not a valid target");
    D("indirect call to kcfg_demo_valid 0x%lx (in the bitmap) ran", fn);
    return 1;
}

static int c_kcfg_invalid(char *d, size_t dn)
{
    u64 targets[] = {(u64)kcfg_demo_unlisted, (u64)kcfg_demo_valid + 4, (u64)gadget_write_cr4, USER_TEXT_VA};
    bool blocked;
    if (!vbs.kcfg) {
        if (kcfg_icall(targets[0], 1, "check kcfg-invalid", &blocked) != 3 || blocked)
            FAILF("with kCFG off the call should have run");
        D("unprotected: kcfg off, indirect call to the unlisted kcfg_demo_unlisted ran");
        return 1;
    }
    u64 b0 = kcfg_blocked;
    for (u64 i = 0; i < ARRAY_SIZE(targets); i++) {
        kcfg_marker = 0;
        kcfg_icall(targets[i], 5, "check kcfg-invalid", &blocked);
        if (!blocked || kcfg_marker)
            FAILF("target 0x%lx was called", targets[i]);
    }
    D("blocked: %lu invalid targets (unlisted function 0x%lx, mid-function, gadget_write_cr4, user page) refused",
      kcfg_blocked - b0, targets[0]);
    return 1;
}

static int c_kcfg_bitmap(char *d, size_t dn)
{
    /* VTL1 protects the bitmap for kCFG, and as part of the signed image for HVCI */
    return alias_write(d, dn, "kCFG bitmap", (u64)__kcfg_start + 64, ~0ull, vbs.armed & (VBS_F_KCFG | VBS_F_HVCI));
}

static int c_hvci_exec_data(char *d, size_t dn)
{
    u64 pa = page_alloc(), alias = 0xffffc00000000000ull;
    *(volatile u8 *)pa = 0xc3; /* ret */
    map_page(alias, pa, 0);    /* executable in VTL0's page tables: only the NPT stands in the way */
    u64 rip, n0 = last_fault.count;
    long v0 = violations();
    int vec = call_safe(alias, &rip);
    if (!(vbs.armed & VBS_F_HVCI)) {
        if (vec)
            FAILF("exec of a data page: %s with HVCI off", exc_names[vec & 31]);
        D("unprotected: HVCI off, kernel executed a data page (ret at 0x%lx)", alias);
        return 1;
    }
    if (vec != VEC_GP || last_fault.count != n0 + 1 || last_fault.rip != alias)
        FAILF("exec of a data page: vector %d rip 0x%lx", vec, last_fault.rip);
    if (!expect_vtl1(d, dn, v0, VBS_V_GPA, HV_INTERCEPT_ACCESS_EXECUTE, pa, alias))
        return 0;
    D("blocked: execute of data gpa 0x%lx (mapped X at 0x%lx by VTL0) -> VTL1 GpaIntercept (execute) -> #GP", pa,
      alias);
    return 1;
}

static int c_hvci_write_text(char *d, size_t dn)
{
    u64 va = (u64)kcfg_demo_valid, rip, n0 = last_fault.count;
    long v0 = violations();
    u8 b = *(volatile u8 *)va;
    int vec = write_u8_safe(physmap(va), b, &rip); /* the same byte: harmless if it lands */
    if (!(vbs.armed & VBS_F_HVCI)) {
        if (vec)
            FAILF("text write: %s with HVCI off", exc_names[vec & 31]);
        D("unprotected: HVCI off, kernel text 0x%lx written through the physmap", va);
        return 1;
    }
    if (!expect_gp(d, dn, n0, rip) || !expect_vtl1(d, dn, v0, VBS_V_GPA, HV_INTERCEPT_ACCESS_WRITE, va, rip))
        return 0;
    D("blocked: write to kernel text gpa 0x%lx through the physmap -> VTL1 GpaIntercept (write) -> #GP", va);
    return 1;
}

static bool regs_locked(void) { return vbs.armed & VBS_F_HYPERGUARD; }

static int cr_check(char *d, size_t dn, int cr, u64 bit, const char *bitname)
{
    u64 old = cr == 0 ? read_cr0() : read_cr4();
    if (!(old & bit))
        SKIPF("%s is not set", bitname);
    u64 rip, n0 = last_fault.count;
    long v0 = violations();
    int vec = cr == 0 ? write_cr0_safe(old & ~bit, &rip) : write_cr4_safe(old & ~bit, &rip);
    u64 now = cr == 0 ? read_cr0() : read_cr4();
    bool expect = regs_locked() || vbs.crpin;
    if (!expect) {
        if (vec || (now & bit))
            FAILF("clearing %s: vector %d, CR%d now 0x%lx", bitname, vec, cr, now);
        cr == 0 ? write_cr0(old) : write_cr4(old);
        D("unprotected: CR%d.%s cleared (0x%lx -> 0x%lx), restored", cr, bitname, old, now);
        return 1;
    }
    if (!vec)
        FAILF("clearing %s went through (CR%d 0x%lx)", bitname, cr, now);
    if (!expect_gp(d, dn, n0, rip))
        return 0;
    if (now != old)
        FAILF("CR%d changed to 0x%lx", cr, now);
    if (regs_locked()) {
        if (!expect_vtl1(d, dn, v0, VBS_V_REG, HV_INTERCEPT_ACCESS_WRITE,
                         cr == 0 ? HvX64RegisterCr0 : HvX64RegisterCr4, rip))
            return 0;
        D("blocked by HyperGuard: mov to CR%d clearing %s -> VTL1 RegisterIntercept -> #GP; CR%d 0x%lx", cr, bitname, cr,
          now);
    } else {
        D("blocked by CR pinning: mov to CR%d clearing %s -> #GP from the hypervisor; CR%d 0x%lx", cr, bitname, cr, now);
    }
    return 1;
}

static int c_cr4_smep(char *d, size_t dn) { return cr_check(d, dn, 4, CR4_SMEP, "SMEP"); }
static int c_cr4_smap(char *d, size_t dn) { return cr_check(d, dn, 4, CR4_SMAP, "SMAP"); }
static int c_cr0_wp(char *d, size_t dn) { return cr_check(d, dn, 0, CR0_WP, "WP"); }

static int c_msr_lstar(char *d, size_t dn)
{
    u64 old = rdmsr(MSR_LSTAR), rip, n0 = last_fault.count;
    long v0 = violations();
    int vec = wrmsr_safe(MSR_LSTAR, (u64)gadget_write_cr4, &rip);
    u64 now = rdmsr(MSR_LSTAR);
    if (!regs_locked()) {
        if (vec || now != (u64)gadget_write_cr4)
            FAILF("LSTAR write: vector %d, now 0x%lx", vec, now);
        wrmsr(MSR_LSTAR, old);
        D("unprotected: LSTAR rewritten (0x%lx -> 0x%lx), restored", old, now);
        return 1;
    }
    if (!vec || !expect_gp(d, dn, n0, rip) || now != old)
        FAILF("LSTAR write: vector %d, now 0x%lx (was 0x%lx)", vec, now, old);
    if (!expect_vtl1(d, dn, v0, VBS_V_MSR, HV_INTERCEPT_ACCESS_WRITE, MSR_LSTAR, rip))
        return 0;
    /* rewriting the locked value is allowed: VTL1 skips the instruction */
    n0 = last_fault.count;
    vec = wrmsr_safe(MSR_LSTAR, old, &rip);
    struct viol v = last_violation();
    if (vec || last_fault.count != n0 || v.action != VBS_ACT_SKIP || rdmsr(MSR_LSTAR) != old)
        FAILF("rewrite of the locked LSTAR: vector %d action %lu", vec, v.action);
    D("blocked: wrmsr LSTAR <- 0x%lx -> VTL1 MsrIntercept -> #GP, LSTAR 0x%lx; rewriting the locked value is "
      "skipped", (u64)gadget_write_cr4, now);
    return 1;
}

static int lidt_safe(const struct desc_ptr *p, u64 *rip)
{
    u64 n0 = last_fault.count, r;
    __asm__ volatile("lea 1f(%%rip), %0\n1: lidt %1\n2:\n" FIXUP_ENTRY("1b", "2b") : "=&r"(r) : "m"(*p) : "memory");
    *rip = r;
    return last_fault.count != n0 ? (int)last_fault.vector : 0;
}

static int c_lidt(char *d, size_t dn)
{
    struct desc_ptr cur, fake = {0xfff, 0x1234000};
    __asm__ volatile("sidt %0" : "=m"(cur));
    u64 rip, n0 = last_fault.count;
    long v0 = violations();
    int vec = lidt_safe(&fake, &rip);
    struct desc_ptr now;
    __asm__ volatile("sidt %0" : "=m"(now));
    if (!regs_locked()) {
        __asm__ volatile("lidt %0" : : "m"(idt_ptr));
        if (vec || now.base != fake.base)
            FAILF("lidt: vector %d, base now 0x%lx", vec, now.base);
        D("unprotected: lidt loaded base 0x%lx, restored", now.base);
        return 1;
    }
    if (!vec || !expect_gp(d, dn, n0, rip) || now.base != cur.base)
        FAILF("lidt: vector %d, IDTR base now 0x%lx", vec, now.base);
    if (!expect_vtl1(d, dn, v0, VBS_V_REG, HV_INTERCEPT_ACCESS_WRITE, HvX64RegisterIdtr, rip))
        return 0;
    D("blocked: lidt base 0x%lx -> VTL1 RegisterIntercept (IDTR) -> #GP; IDTR base 0x%lx", fake.base, now.base);
    return 1;
}

static int c_npiep(char *d, size_t dn)
{
    if (vbs.vsm && !vsm_hyperv())
        SKIPF("domains design: NPIEP is a Hyper-V synthetic MSR; UMIP (locked by the HyperGuard domain) makes ring-3 "
              "SGDT/SIDT #GP instead");
    if (!regs_locked())
        SKIPF("HyperGuard off: NPIEP not configured");
    u64 cfg;
    if (rdmsr_safe(HV_X64_MSR_NPIEP_CONFIG, &cfg, NULL) || cfg != HV_NPIEP_ALL)
        FAILF("NPIEP_CONFIG 0x%lx", cfg);
    int r = run_user(uprog_sgdt, 0, cred_user, "sgdt");
    if (r != USER_KILLED || user_run_info.vector != VEC_GP)
        FAILF("ring-3 sgdt: result %d vector %lu", r, user_run_info.vector);
    D("NPIEP_CONFIG=0x%lx; ring-3 sgdt -> #GP (UMIP %s)", cfg, umip_on ? "on too" : "off");
    return 1;
}

static int c_vtl1_read(char *d, size_t dn)
{
    if (!vbs.vsm)
        SKIPF("no VTL1");
    u64 gpas[2] = {vbs.sk_base, vbs.sk_key}, val = 0, rip = 0;
    for (int i = 0; i < 2; i++) {
        u64 n0 = last_fault.count;
        long v0 = violations();
        val = 0;
        int vec = read_u64_safe(physmap(gpas[i]), &val, &rip);
        if (vec != VEC_GP || !expect_gp(d, dn, n0, rip))
            FAILF("read of VTL1 memory 0x%lx: vector %d value 0x%lx", gpas[i], vec, val);
        if (val)
            FAILF("VTL0 got data 0x%lx from VTL1 memory", val);
        if (!expect_vtl1(d, dn, v0, VBS_V_GPA, HV_INTERCEPT_ACCESS_READ, gpas[i], rip))
            return 0;
    }
    D("blocked: VTL0 reads of VTL1 gpa 0x%lx (image) and 0x%lx (the key) -> GpaIntercept (read, rip=0x%lx) -> #GP",
      gpas[0], gpas[1], rip);
    return 1;
}

static void hex(char *out, const u8 *p, u64 n)
{
    static const char h[] = "0123456789abcdef";
    for (u64 i = 0; i < n; i++) {
        out[2 * i] = h[p[i] >> 4];
        out[2 * i + 1] = h[p[i] & 15];
    }
    out[2 * n] = 0;
}

static int c_cred_hmac(char *d, size_t dn)
{
    static const char chal[] = "vtlvisor-credential-challenge-0001";
    u8 mac[32], mac2[32];
    bool by_vtl1;
    long r = cred_hmac((const u8 *)chal, sizeof(chal) - 1, mac, &by_vtl1);
    if (r)
        FAILF("credential service: %ld", r);
    /* the same from ring 3 through SYS_CRED_HMAC */
    script_reset();
    u64 c = script_str(0, chal), out = (u64)(USCRIPT->buf + 512);
    script_op(SYS_CRED_HMAC, c, sizeof(chal) - 1, out);
    run_script(cred_user, "cred");
    user_copy_in(mac2, out, 32);
    if (script_ret(0) != 0 || memcmp(mac, mac2, 32))
        FAILF("ring-3 request: %ld, result differs", script_ret(0));
    char hc[2 * sizeof(chal)], hm[65];
    hex(hc, (const u8 *)chal, sizeof(chal) - 1);
    hex(hm, mac, 32);
    kprintf("CRED challenge=%s hmac=%s by=%s\n", hc, hm, by_vtl1 ? (vsm_hyperv() ? "vtl1" : "domain") : "vtl0");
    if (by_vtl1 && vbs_cred_key_vtl0())
        FAILF("VTL0 holds a copy of the key");
    if (by_vtl1) {
        extern char vtl1_image[], vtl1_image_end[];
        for (const char *p = vtl1_image; p < vtl1_image_end; p++)
            if (*p)
                FAILF("the staging copy of the secure kernel was not wiped");
    }
    D("HMAC-SHA256 computed by %s (%s)", by_vtl1 ? (vsm_hyperv() ? "VTL1" : "the credential domain") : "VTL0",
      by_vtl1 ? (vsm_hyperv() ? "the key exists only in VTL1 memory" : "the key exists only in the credential domain's memory")
              : "credential isolation off: the key is in VTL0 memory");
    return 1;
}

static int c_vulndrv(char *d, size_t dn)
{
    script_reset();
    script_op(SYS_VULNDRV, VULNDRV_READ, (u64)&kdp_canary, 0);
    int r = run_script(cred_user, "vulndrv");
    if (!vbs.vulndrv) {
        if (r != USER_EXITED || script_ret(0) != -ENOSYS)
            FAILF("disabled driver answered %ld", script_ret(0));
        D("disabled (no \"vulndrv\" on the command line): -ENOSYS");
        return 1;
    }
    if (r != USER_EXITED || (u64)script_ret(0) != KDP_CANARY)
        FAILF("arbitrary read: %ld", script_ret(0));
    /* arbitrary write to KDP data: the process dies (oops) when VTL1 protects it */
    script_reset();
    script_op(SYS_VULNDRV, VULNDRV_WRITE, physmap((u64)&cred_user->uid), 0);
    r = run_script(cred_user, "vulndrv-write");
    bool kdp = vbs.armed & VBS_F_KDP;
    if (kdp && !(r == USER_KILLED && user_run_info.oops && user_run_info.vector == VEC_GP && cred_user->uid == 1000))
        FAILF("write to the credentials: result %d, uid now %u", r, cred_user->uid);
    if (!kdp) {
        if (cred_user->uid != 0)
            FAILF("write to the credentials did not land with KDP off");
        write_u64_safe(physmap((u64)&cred_user->uid), 1000 | (1000ull << 32), NULL);
    }
    /* controlled indirect call to a gadget: kCFG kills the process */
    script_reset();
    script_op(SYS_VULNDRV, VULNDRV_CALL, (u64)kcfg_demo_unlisted, 7); /* returns 9 if it runs */
    r = run_script(cred_user, "vulndrv-call");
    if (vbs.kcfg && !(r == USER_KILLED && user_run_info.kcfg))
        FAILF("call of an invalid target: result %d", r);
    if (!vbs.kcfg && !(r == USER_EXITED && script_ret(0) == 9))
        FAILF("call with kCFG off: result %d ret %ld", r, script_ret(0));
    D("enabled: arbitrary read ok; write to creds %s; call of an unlisted function %s", kdp ? "-> oops (#GP), killed"
      : "landed (KDP off, undone)", vbs.kcfg ? "-> kCFG, killed" : "ran (kCFG off)");
    return 1;
}

/* HyperGuard must also hold against VTL0 setting its own registers with HvCallSetVpRegisters. */
static u8 hc_page[4096] ALIGNED(4096);
extern char hvcall_page[];
static u64 setreg_self(u32 name, u64 lo, u64 hi)
{
    struct hv_vp_registers_header *h = (void *)hc_page;
    memset(hc_page, 0, 64);
    h->partition_id = HV_PARTITION_ID_SELF;
    h->vp_index = HV_VP_INDEX_SELF;
    h->input_vtl = HV_INPUT_VTL_SELF;
    struct hv_register_assoc *a = (void *)(hc_page + sizeof(*h));
    a->name = name;
    a->value_lo = lo;
    a->value_hi = hi;
    return HV_STATUS(hv_hypercall(hvcall_page, HvCallSetVpRegisters | HV_REP(1), (u64)hc_page, 0));
}

static int c_setvpregs(char *d, size_t dn)
{
    if (!vbs.vsm || !vsm_hyperv())
        SKIPF("no Hyper-V hypercalls without VTL1 (domains: REGS_SET on oneself is refused by the hypervisor)");
    u64 cr4 = read_cr4(), lstar = rdmsr(MSR_LSTAR);
    struct desc_ptr idt0;
    __asm__ volatile("sidt %0" : "=m"(idt0));
    long v0 = violations();
    u64 s1 = setreg_self(HvX64RegisterCr4, cr4 & ~CR4_SMEP, 0);
    u64 cr4_now = read_cr4();
    u64 s2 = setreg_self(HvX64RegisterLstar, (u64)gadget_write_cr4, 0);
    u64 lstar_now = rdmsr(MSR_LSTAR);
    u64 s3 = setreg_self(HvX64RegisterIdtr, (u64)0xfff << 48, 0x1234000);
    struct desc_ptr idt_now;
    __asm__ volatile("sidt %0" : "=m"(idt_now));
    /* undo whatever went through (the same way: lidt/wrmsr are intercepted once locked) */
    if (cr4_now != cr4)
        setreg_self(HvX64RegisterCr4, cr4, 0);
    if (lstar_now != lstar)
        setreg_self(HvX64RegisterLstar, lstar, 0);
    if (idt_now.base != idt0.base)
        setreg_self(HvX64RegisterIdtr, (u64)idt0.limit << 48, idt0.base);
    bool changed = cr4_now != cr4 || lstar_now != lstar || idt_now.base != idt0.base;
    bool expect = regs_locked();
    if (expect && changed)
        FAILF("HyperGuard bypassed by SetVpRegisters on VTL0 itself: CR4 status 0x%lx (0x%lx -> 0x%lx), LSTAR 0x%lx "
              "(-> 0x%lx), IDTR 0x%lx (-> 0x%lx), VTL1 saw %ld intercepts", s1, cr4, cr4_now, s2, lstar_now, s3,
              idt_now.base, violations() - v0);
    if (!expect) {
        D("unprotected: HyperGuard off; SetVpRegisters statuses 0x%lx/0x%lx/0x%lx", s1, s2, s3);
        return 1;
    }
    D("refused: SetVpRegisters(VTL0 self) CR4 0x%lx, LSTAR 0x%lx, IDTR 0x%lx; registers unchanged", s1, s2, s3);
    return 1;
}

struct check {
    const char *name;
    int (*fn)(char *d, size_t dn);
    bool on_demand; /* a known vtlvisor gap (docs/guest.md): runs only when named in checks= */
};

#define CHECK(n, f) {n, f, false}
static const struct check checks[] = {
    CHECK("vsm", c_vsm),
    CHECK("domains", vbs_check_domains),
    CHECK("user-syscall", c_user_syscall),
    CHECK("creds", c_creds),
    CHECK("timer", c_timer),
    CHECK("kdp-read", c_kdp_read),
    CHECK("kdp-write", c_kdp_write),
    CHECK("kdp-own-pt", c_kdp_own_pt),
    CHECK("kdp-syscall-table", c_kdp_syscall_table),
    CHECK("kdp-cred", c_kdp_cred),
    CHECK("kdp-module-dir", c_kdp_module_dir),
    CHECK("module-signed", c_module_signed),
    CHECK("module-unsigned", c_module_unsigned),
    CHECK("module-tampered", c_module_tampered),
    CHECK("kcfg-valid", c_kcfg_valid),
    CHECK("kcfg-invalid", c_kcfg_invalid),
    CHECK("kcfg-bitmap", c_kcfg_bitmap),
    CHECK("hvci-exec-data", c_hvci_exec_data),
    CHECK("hvci-write-text", c_hvci_write_text),
    CHECK("cr4-smep", c_cr4_smep),
    CHECK("cr4-smap", c_cr4_smap),
    CHECK("cr0-wp", c_cr0_wp),
    CHECK("msr-lstar", c_msr_lstar),
    CHECK("lidt", c_lidt),
    CHECK("npiep", c_npiep),
    {"setvpregs", c_setvpregs, true},
    CHECK("vtl1-read", c_vtl1_read),
    CHECK("cred-hmac", c_cred_hmac),
    CHECK("vulndrv", c_vulndrv),
};
KCFG_TARGET(c_vsm);
KCFG_TARGET(c_user_syscall);
KCFG_TARGET(c_creds);
KCFG_TARGET(c_timer);
KCFG_TARGET(c_kdp_read);
KCFG_TARGET(c_kdp_write);
KCFG_TARGET(c_kdp_own_pt);
KCFG_TARGET(c_kdp_syscall_table);
KCFG_TARGET(c_kdp_cred);
KCFG_TARGET(c_kdp_module_dir);
KCFG_TARGET(c_module_signed);
KCFG_TARGET(c_module_unsigned);
KCFG_TARGET(c_module_tampered);
KCFG_TARGET(c_kcfg_valid);
KCFG_TARGET(c_kcfg_invalid);
KCFG_TARGET(c_kcfg_bitmap);
KCFG_TARGET(c_hvci_exec_data);
KCFG_TARGET(c_hvci_write_text);
KCFG_TARGET(c_cr4_smep);
KCFG_TARGET(c_cr4_smap);
KCFG_TARGET(c_cr0_wp);
KCFG_TARGET(c_msr_lstar);
KCFG_TARGET(c_lidt);
KCFG_TARGET(c_npiep);
KCFG_TARGET(c_setvpregs);
KCFG_TARGET(c_vtl1_read);
KCFG_TARGET(c_cred_hmac);
KCFG_TARGET(c_vulndrv);

int run_checks(const char *sel)
{
    static int failed, passed, skipped;
    failed = passed = skipped = 0;
    if (sel) {
        for (const char *p = sel; *p && *p != ' ';) {
            const char *q = p;
            while (*q && *q != ',' && *q != ' ')
                q++;
            bool known = false;
            for (u64 i = 0; i < ARRAY_SIZE(checks); i++)
                known = known || (strlen(checks[i].name) == (size_t)(q - p) && !strncmp(p, checks[i].name, q - p));
            if (!known) {
                kprintf("CHECK cmdline FAIL unknown check '%.*s'\n", (int)(q - p), p);
                failed++;
            }
            p = *q == ',' ? q + 1 : q;
        }
    }
    for (u64 i = 0; i < ARRAY_SIZE(checks); i++) {
        const struct check *c = &checks[i];
        if (sel ? !list_has(sel, c->name) : c->on_demand)
            continue;
        char detail[320];
        detail[0] = 0;
        current_check = c->name;
        int r;
        if (!kcfg_valid((u64)c->fn)) {
            kcfg_violation((u64)c->fn, "check table");
            r = 0;
            ksnprintf(detail, sizeof(detail), "check function not a kCFG target");
        } else if (k_setjmp(&check_jmp) == 0) {
            check_active = true;
            r = c->fn(detail, sizeof(detail));
            check_active = false;
        } else {
            r = 2; /* unexpected exception: reported */
        }
        cli();
        if (smap_on)
            clac();
        if (r == 1) {
            kprintf("CHECK %s PASS %s\n", c->name, detail);
            passed++;
        } else if (r == -1) {
            kprintf("CHECK %s SKIP %s\n", c->name, detail);
            skipped++;
        } else {
            if (r == 0)
                kprintf("CHECK %s FAIL %s\n", c->name, detail);
            failed++;
        }
    }
    kprintf("RESULT passed=%d failed=%d skipped=%d\n", passed, failed, skipped);
    return failed;
}
