/*
 * Paravirtualized CR pinning (KVM RFC, June 2020: KVM_FEATURE_CR_PIN = CPUID
 * 0x40000001 EAX bit 15, MSRs 0x4b564d08..0x4b564d0d) and Heki's
 * KVM_HC_LOCK_CR_UPDATE hypercall: boot-time pinning and the crpin checks.
 *
 * Every rule is exercised by real guest instructions (wrmsr, mov to CR,
 * lmsw, clts, vmmcall/vmcall); expected #GPs are resumed through the fixup
 * table and verified for vector, error code and RIP, and that nothing
 * changed.  A CR write that should have faulted but went through is undone
 * before the check reports FAIL.
 */
#include "lib/crpin.h"
#include "lib/fixup.h"
#include "lib/io.h"
#include "lib/kvm_para.h"
#include "lib/msr.h"
#include "lib/string.h"
#include "lib/x86.h"
#include "testkernel/kernel.h"

#define CR0_ALLOWED CR0_WP
#define CR4_ALLOWED (CR4_SMEP | CR4_SMAP | CR4_UMIP | CR4_FSGSBASE)

static void try_write_cr0(u64 v, u64 *rip) { write_cr0_safe(v, rip); }
static void try_write_cr4(u64 v, u64 *rip) { write_cr4_safe(v, rip); }

/* ---- check helpers ---- */

#define NEED_CRPIN()                          \
    do {                                      \
        if (crpin_state != CRPIN_ON)          \
            SKIPF("%s", crpin_reason);        \
    } while (0)

struct pins {
    u64 cr0_low, cr0_high, cr4_low, cr4_high;
};

static int read_pins(char *detail, size_t dn, struct pins *p)
{
    static const u32 m[4] = {MSR_KVM_CR0_PINNED_LOW, MSR_KVM_CR0_PINNED_HIGH, MSR_KVM_CR4_PINNED_LOW,
                             MSR_KVM_CR4_PINNED_HIGH};
    u64 *dst[4] = {&p->cr0_low, &p->cr0_high, &p->cr4_low, &p->cr4_high};
    for (int i = 0; i < 4; i++) {
        int vec = rdmsr_safe(m[i], dst[i], NULL);
        if (vec)
            FAILF("rdmsr %s (0x%x) took vector %d", crpin_msr_name(m[i]), m[i], vec);
    }
    return 1;
}
#define READ_PINS(p)                        \
    do {                                    \
        if (!read_pins(detail, dn, &(p)))   \
            return 0;                       \
    } while (0)

static int pins_equal(char *detail, size_t dn, const char *what, const struct pins *want)
{
    struct pins now;
    READ_PINS(now);
    if (memcmp(&now, want, sizeof(now)))
        FAILF("%s: pins CR0 low/high 0x%lx/0x%lx CR4 low/high 0x%lx/0x%lx, expected 0x%lx/0x%lx 0x%lx/0x%lx", what,
              now.cr0_low, now.cr0_high, now.cr4_low, now.cr4_high, want->cr0_low, want->cr0_high, want->cr4_low,
              want->cr4_high);
    return 1;
}
#define PINS_EQUAL(what, p)                         \
    do {                                            \
        if (!pins_equal(detail, dn, what, &(p)))    \
            return 0;                               \
    } while (0)

/* wrmsr(msr, v) must take #GP(0) at the wrmsr, and the MSR and every pin stay unchanged. */
static int expect_wrmsr_gp(char *detail, size_t dn, const char *what, u32 msr, u64 v)
{
    struct pins before;
    READ_PINS(before);
    u64 old, now, rip;
    if (rdmsr_safe(msr, &old, NULL))
        FAILF("%s: rdmsr %s faulted", what, crpin_msr_name(msr));
    reset_fault();
    wrmsr_safe(msr, v, &rip);
    if (last_fault.count == 0)
        FAILF("%s: wrmsr %s <- 0x%lx did not fault", what, crpin_msr_name(msr), v);
    EXPECT(what, 13, 0, rip, ~0ull);
    if (rdmsr_safe(msr, &now, NULL) || now != old)
        FAILF("%s: %s changed from 0x%lx to 0x%lx", what, crpin_msr_name(msr), old, now);
    return pins_equal(detail, dn, what, &before);
}
#define WRMSR_GP(what, msr, v)                                  \
    do {                                                        \
        if (!expect_wrmsr_gp(detail, dn, what, msr, v))         \
            return 0;                                           \
    } while (0)

/* wrmsr(msr, v) must succeed and read back v. */
static int expect_wrmsr_ok(char *detail, size_t dn, const char *what, u32 msr, u64 v)
{
    u64 now;
    reset_fault();
    int vec = wrmsr_safe(msr, v, NULL);
    if (vec)
        FAILF("%s: wrmsr %s <- 0x%lx took vector %d error 0x%lx", what, crpin_msr_name(msr), v, vec, last_fault.error);
    if (rdmsr_safe(msr, &now, NULL) || now != v)
        FAILF("%s: %s reads 0x%lx after writing 0x%lx", what, crpin_msr_name(msr), now, v);
    return 1;
}
#define WRMSR_OK(what, msr, v)                                  \
    do {                                                        \
        if (!expect_wrmsr_ok(detail, dn, what, msr, v))         \
            return 0;                                           \
    } while (0)

/* mov v to CR<n> must take #GP(0) at the mov and leave the register unchanged. */
static int expect_cr_gp(char *detail, size_t dn, const char *what, int n, u64 v)
{
    u64 old = n == 4 ? read_cr4() : read_cr0(), rip;
    reset_fault();
    if (n == 4)
        try_write_cr4(v, &rip);
    else
        try_write_cr0(v, &rip);
    u64 now = n == 4 ? read_cr4() : read_cr0();
    if (now != old) {
        if (n == 4)
            write_cr4(old);
        else
            write_cr0(old);
        FAILF("%s: CR%d changed 0x%lx -> 0x%lx (%lu faults; restored)", what, n, old, now, last_fault.count);
    }
    if (last_fault.count == 0)
        FAILF("%s: mov 0x%lx to CR%d did not fault", what, v, n);
    EXPECT(what, 13, 0, rip, ~0ull);
    return 1;
}
#define CR_GP(what, n, v)                                   \
    do {                                                    \
        if (!expect_cr_gp(detail, dn, what, n, v))          \
            return 0;                                       \
    } while (0)

/* mov v to CR<n> must work. */
static int expect_cr_ok(char *detail, size_t dn, const char *what, int n, u64 v)
{
    u64 rip;
    reset_fault();
    if (n == 4)
        try_write_cr4(v, &rip);
    else
        try_write_cr0(v, &rip);
    if (last_fault.count)
        FAILF("%s: mov 0x%lx to CR%d took vector %lu error 0x%lx", what, v, n, last_fault.vector, last_fault.error);
    u64 now = n == 4 ? read_cr4() : read_cr0();
    if (now != v)
        FAILF("%s: CR%d is 0x%lx after writing 0x%lx", what, n, now, v);
    return 1;
}
#define CR_OK(what, n, v)                                   \
    do {                                                    \
        if (!expect_cr_ok(detail, dn, what, n, v))          \
            return 0;                                       \
    } while (0)

static u64 first_bit(u64 mask, const u64 *prefer, int n)
{
    for (int i = 0; i < n; i++)
        if (mask & prefer[i])
            return prefer[i];
    return mask & -mask;
}
static const u64 cr4_pref[] = {CR4_SMEP, CR4_SMAP, CR4_UMIP, CR4_FSGSBASE};

static const char *cr4_bit_name(u64 b)
{
    return b == CR4_SMEP ? "SMEP" : b == CR4_SMAP ? "SMAP" : b == CR4_UMIP ? "UMIP" : b == CR4_FSGSBASE ? "FSGSBASE"
                                                                                                      : "?";
}

/* ---- MSR interface ---- */

int t_crpin_allowed(char *detail, size_t dn)
{
    NEED_CRPIN();
    u64 a0, a4;
    int vec;
    if ((vec = rdmsr_safe(MSR_KVM_CR0_PIN_ALLOWED, &a0, NULL)))
        FAILF("rdmsr CR0_PIN_ALLOWED took vector %d", vec);
    if ((vec = rdmsr_safe(MSR_KVM_CR4_PIN_ALLOWED, &a4, NULL)))
        FAILF("rdmsr CR4_PIN_ALLOWED took vector %d", vec);
    kprintf("  crpin: CR0_PIN_ALLOWED=0x%lx CR4_PIN_ALLOWED=0x%lx\n", a0, a4);
    if (a0 != CR0_ALLOWED)
        FAILF("CR0_PIN_ALLOWED = 0x%lx, expected 0x%llx (WP)", a0, CR0_ALLOWED);
    if (a4 != CR4_ALLOWED)
        FAILF("CR4_PIN_ALLOWED = 0x%lx, expected 0x%llx (SMEP|SMAP|UMIP|FSGSBASE)", a4, CR4_ALLOWED);
    return 1;
}

int t_crpin_allowed_ro(char *detail, size_t dn)
{
    NEED_CRPIN();
    static const u32 m[2] = {MSR_KVM_CR0_PIN_ALLOWED, MSR_KVM_CR4_PIN_ALLOWED};
    for (int i = 0; i < 2; i++) {
        u64 v;
        if (rdmsr_safe(m[i], &v, NULL))
            FAILF("rdmsr %s faulted", crpin_msr_name(m[i]));
        WRMSR_GP("write the value read", m[i], v);
        WRMSR_GP("write 0", m[i], 0);
        WRMSR_GP("write ~0", m[i], ~0ull);
    }
    return 1;
}

int t_crpin_pins(char *detail, size_t dn)
{
    NEED_CRPIN();
    struct pins p;
    READ_PINS(p);
    u64 cr0 = read_cr0(), cr4 = read_cr4();
    kprintf("  crpin: CR0 low=0x%lx high=0x%lx  CR4 low=0x%lx high=0x%lx  (cr0=0x%lx cr4=0x%lx)\n", p.cr0_low,
            p.cr0_high, p.cr4_low, p.cr4_high, cr0, cr4);
    if ((p.cr0_high & boot_cr0_pins) != boot_cr0_pins || (p.cr4_high & boot_cr4_pins) != boot_cr4_pins)
        FAILF("boot pins CR0 0x%lx CR4 0x%lx not all in PINNED_HIGH", boot_cr0_pins, boot_cr4_pins);
    if ((p.cr0_low | p.cr0_high) & ~CR0_ALLOWED || (p.cr4_low | p.cr4_high) & ~CR4_ALLOWED)
        FAILF("pins outside the allowed bits");
    if (p.cr0_low & p.cr0_high || p.cr4_low & p.cr4_high)
        FAILF("a bit is pinned both low and high");
    if ((cr0 & p.cr0_high) != p.cr0_high || cr0 & p.cr0_low || (cr4 & p.cr4_high) != p.cr4_high || cr4 & p.cr4_low)
        FAILF("control registers do not honour the pins");
    /* rewriting the current pins is allowed and changes nothing */
    WRMSR_OK("rewrite CR0_PINNED_LOW", MSR_KVM_CR0_PINNED_LOW, p.cr0_low);
    WRMSR_OK("rewrite CR0_PINNED_HIGH", MSR_KVM_CR0_PINNED_HIGH, p.cr0_high);
    WRMSR_OK("rewrite CR4_PINNED_LOW", MSR_KVM_CR4_PINNED_LOW, p.cr4_low);
    WRMSR_OK("rewrite CR4_PINNED_HIGH", MSR_KVM_CR4_PINNED_HIGH, p.cr4_high);
    PINS_EQUAL("after rewriting", p);
    return 1;
}

int t_crpin_disallowed(char *detail, size_t dn)
{
    NEED_CRPIN();
    struct pins p;
    READ_PINS(p);
    WRMSR_GP("pin CR4.PAE high", MSR_KVM_CR4_PINNED_HIGH, p.cr4_high | CR4_PAE);
    WRMSR_GP("pin CR4.PGE low", MSR_KVM_CR4_PINNED_LOW, p.cr4_low | CR4_PGE);
    WRMSR_GP("pin CR0.PG high", MSR_KVM_CR0_PINNED_HIGH, p.cr0_high | CR0_PG);
    WRMSR_GP("pin CR0.CD low", MSR_KVM_CR0_PINNED_LOW, p.cr0_low | CR0_CD);
    WRMSR_GP("pin CR4 bit 63 high", MSR_KVM_CR4_PINNED_HIGH, p.cr4_high | (1ull << 63));
    return 1;
}

int t_crpin_unpin(char *detail, size_t dn)
{
    NEED_CRPIN();
    struct pins p;
    READ_PINS(p);
    if (!p.cr0_high && !p.cr4_high)
        SKIPF("nothing pinned high");
    if (p.cr4_high) {
        char what[48];
        u64 b = first_bit(p.cr4_high, cr4_pref, 4);
        ksnprintf(what, sizeof(what), "unpin CR4.%s", cr4_bit_name(b));
        WRMSR_GP(what, MSR_KVM_CR4_PINNED_HIGH, p.cr4_high & ~b);
        WRMSR_GP("write 0 to CR4_PINNED_HIGH", MSR_KVM_CR4_PINNED_HIGH, 0);
    }
    if (p.cr0_high & CR0_WP)
        WRMSR_GP("unpin CR0.WP", MSR_KVM_CR0_PINNED_HIGH, p.cr0_high & ~CR0_WP);
    return 1;
}

/* Pin CR4.FSGSBASE low (it is clear; the kernel never uses it). */
static int pin_fsgsbase_low(char *detail, size_t dn, struct pins *p)
{
    if (p->cr4_low & CR4_FSGSBASE)
        return 1;
    struct pins want = *p;
    want.cr4_low |= CR4_FSGSBASE;
    WRMSR_OK("pin CR4.FSGSBASE low", MSR_KVM_CR4_PINNED_LOW, want.cr4_low);
    PINS_EQUAL("after pinning FSGSBASE low", want);
    *p = want;
    return 1;
}

int t_crpin_pin_low(char *detail, size_t dn)
{
    NEED_CRPIN();
    u64 cr4 = read_cr4();
    if (cr4 & CR4_FSGSBASE)
        SKIPF("CR4.FSGSBASE is set");
    struct pins p;
    READ_PINS(p);
    if (p.cr4_high & CR4_FSGSBASE)
        SKIPF("CR4.FSGSBASE is already pinned high");
    /* a bit pinned high cannot be pinned low */
    if (p.cr4_high) {
        char what[48];
        u64 b = first_bit(p.cr4_high, cr4_pref, 4);
        ksnprintf(what, sizeof(what), "pin CR4.%s (pinned high) low", cr4_bit_name(b));
        WRMSR_GP(what, MSR_KVM_CR4_PINNED_LOW, p.cr4_low | b);
    }
    if (p.cr0_high & CR0_WP)
        WRMSR_GP("pin CR0.WP (pinned high) low", MSR_KVM_CR0_PINNED_LOW, p.cr0_low | CR0_WP);
    /* control: before the pin, CR4.FSGSBASE can be set and cleared */
    if (cpu.fsgsbase && !(p.cr4_low & CR4_FSGSBASE)) {
        CR_OK("set CR4.FSGSBASE before pinning", 4, cr4 | CR4_FSGSBASE);
        CR_OK("clear CR4.FSGSBASE before pinning", 4, cr4);
    }
    if (!pin_fsgsbase_low(detail, dn, &p))
        return 0;
    WRMSR_GP("pin CR4.FSGSBASE (pinned low) high", MSR_KVM_CR4_PINNED_HIGH, p.cr4_high | CR4_FSGSBASE);
    WRMSR_GP("unpin CR4.FSGSBASE low", MSR_KVM_CR4_PINNED_LOW, p.cr4_low & ~CR4_FSGSBASE);
    return 1;
}

/* ---- enforcement on CR writes ---- */

int t_crpin_cr4_set_low(char *detail, size_t dn)
{
    NEED_CRPIN();
    u64 cr4 = read_cr4();
    if (cr4 & CR4_FSGSBASE)
        SKIPF("CR4.FSGSBASE is set");
    struct pins p;
    READ_PINS(p);
    if (p.cr4_high & CR4_FSGSBASE)
        SKIPF("CR4.FSGSBASE is pinned high");
    if (!pin_fsgsbase_low(detail, dn, &p))
        return 0;
    if (!cpu.fsgsbase)
        kprintf("  crpin-cr4-set-low: CPUID lacks FSGSBASE: the #GP would also be a reserved-bit #GP\n");
    CR_OK("mov the current value to CR4", 4, cr4);
    CR_GP("mov to CR4 setting FSGSBASE (pinned low)", 4, cr4 | CR4_FSGSBASE);
    PINS_EQUAL("after the refused write", p);
    return 1;
}

int t_crpin_cr4_clear(char *detail, size_t dn)
{
    NEED_CRPIN();
    struct pins p;
    READ_PINS(p);
    u64 cr4 = read_cr4();
    if (!p.cr4_high)
        SKIPF("no CR4 bit pinned high (CPU lacks SMEP, SMAP and UMIP)");
    CR_OK("mov the current value to CR4", 4, cr4);
    for (int i = 0; i < 4; i++) {
        u64 b = cr4_pref[i];
        if (!(p.cr4_high & b))
            continue;
        char what[48];
        ksnprintf(what, sizeof(what), "mov to CR4 clearing %s", cr4_bit_name(b));
        CR_GP(what, 4, cr4 & ~b);
    }
    CR_GP("mov to CR4 clearing every pinned bit", 4, cr4 & ~p.cr4_high);
    PINS_EQUAL("after the refused writes", p);
    return 1;
}

int t_crpin_cr0_wp(char *detail, size_t dn)
{
    NEED_CRPIN();
    struct pins p;
    READ_PINS(p);
    if (!(p.cr0_high & CR0_WP))
        FAILF("CR0.WP is not pinned high (CR0_PINNED_HIGH 0x%lx)", p.cr0_high);
    u64 cr0 = read_cr0();
    CR_OK("mov the current value to CR0", 0, cr0);
    CR_GP("mov to CR0 clearing WP", 0, cr0 & ~CR0_WP);
    CR_GP("mov to CR0 clearing WP and setting TS", 0, (cr0 & ~CR0_WP) | CR0_TS);
    PINS_EQUAL("after the refused writes", p);
    return 1;
}

int t_crpin_lmsw_clts(char *detail, size_t dn)
{
    NEED_CRPIN();
    u64 cr0 = read_cr0() & ~CR0_TS, cr0_ts = cr0 | CR0_TS;
    clts();
    lmsw((u16)cr0_ts); /* faults here are unexpected: the check fails with a dump */
    u64 c1 = read_cr0();
    clts();
    u64 c2 = read_cr0();
    if (c1 != cr0_ts)
        FAILF("after lmsw (TS=1) CR0 = 0x%lx, expected 0x%lx", c1, cr0_ts);
    if (c2 != cr0)
        FAILF("after clts CR0 = 0x%lx, expected 0x%lx", c2, cr0);
    if (!(c2 & CR0_WP))
        FAILF("CR0.WP lost");
    return 1;
}

/* ---- KVM_HC_LOCK_CR_UPDATE ---- */

/* The hypercall must return `want`; unless want == 0 no pin may change. */
static int expect_hc(char *detail, size_t dn, const char *what, unsigned nr, u64 cr, u64 mask, u64 flags, long want)
{
    struct pins before;
    READ_PINS(before);
    long r = kvm_hypercall3(nr, cr, mask, flags);
    if (r != want)
        FAILF("%s: hypercall %u(cr=%lu, mask=0x%lx, flags=0x%lx) returned %ld, expected %ld", what, nr, cr, mask,
              flags, r, want);
    if (want != 0)
        return pins_equal(detail, dn, what, &before);
    return 1;
}
#define HC(what, nr, cr, mask, flags, want)                                \
    do {                                                                   \
        if (!expect_hc(detail, dn, what, nr, cr, mask, flags, want))       \
            return 0;                                                      \
    } while (0)
#define LOCK(what, cr, mask, want) HC(what, KVM_HC_LOCK_CR_UPDATE, cr, mask, 0, want)

int t_crpin_hc_version(char *detail, size_t dn)
{
    NEED_CRPIN();
    HC("version query", KVM_HC_LOCK_CR_UPDATE, 0, 0, KVM_LOCK_CR_UPDATE_VERSION, 1);
    /* the flag wins over anything else: nothing is checked or pinned */
    HC("version query with cr=4 mask=PAE", KVM_HC_LOCK_CR_UPDATE, 4, CR4_PAE, KVM_LOCK_CR_UPDATE_VERSION, 1);
    HC("version query with cr=4 mask=SMEP|SMAP|UMIP", KVM_HC_LOCK_CR_UPDATE, 4, read_cr4() & CR4_BOOT_PINS,
       KVM_LOCK_CR_UPDATE_VERSION, 1);
    return 1;
}

int t_crpin_hc_cr0_nowp(char *detail, size_t dn)
{
    NEED_CRPIN();
    LOCK("lock CR0 mask=0", 0, 0, -KVM_EINVAL);
    LOCK("lock CR0 mask=PE", 0, CR0_PE, -KVM_EINVAL);
    return 1;
}

int t_crpin_hc_cr4_disallowed(char *detail, size_t dn)
{
    NEED_CRPIN();
    u64 cr4 = read_cr4();
    LOCK("lock CR4 mask=PAE", 4, CR4_PAE, -KVM_EINVAL);
    if (cr4 & CR4_BOOT_PINS)
        LOCK("lock CR4 mask=PAE plus allowed bits", 4, CR4_PAE | (cr4 & CR4_BOOT_PINS), -KVM_EINVAL);
    return 1;
}

int t_crpin_hc_cr4_clear(char *detail, size_t dn)
{
    NEED_CRPIN();
    if (read_cr4() & CR4_FSGSBASE)
        SKIPF("CR4.FSGSBASE is set");
    LOCK("lock CR4 mask=FSGSBASE (clear in CR4)", 4, CR4_FSGSBASE, -KVM_EINVAL);
    return 1;
}

int t_crpin_hc_args(char *detail, size_t dn)
{
    NEED_CRPIN();
    LOCK("lock cr=3", 3, CR0_WP, -KVM_EINVAL);
    LOCK("lock cr=8", 8, CR0_WP, -KVM_EINVAL);
    LOCK("lock CR4 mask=0", 4, 0, -KVM_EINVAL);
    LOCK("lock CR0 mask=WP|PG", 0, CR0_WP | CR0_PG, -KVM_EINVAL);
    return 1;
}

int t_crpin_hc_lock(char *detail, size_t dn)
{
    NEED_CRPIN();
    struct pins p;
    READ_PINS(p);
    u64 cr4 = read_cr4();
    if (cpu.fsgsbase && !(cr4 & CR4_FSGSBASE) && !((p.cr4_low | p.cr4_high) & CR4_FSGSBASE)) {
        /* a bit nobody pinned yet: set CR4.FSGSBASE, lock it, try to clear it */
        CR_OK("set CR4.FSGSBASE", 4, cr4 | CR4_FSGSBASE);
        LOCK("lock CR4 mask=FSGSBASE", 4, CR4_FSGSBASE, 0);
        struct pins want = p;
        want.cr4_high |= CR4_FSGSBASE;
        PINS_EQUAL("after locking CR4.FSGSBASE", want);
        CR_GP("mov to CR4 clearing FSGSBASE (locked)", 4, cr4);
        kprintf("  crpin-hc-lock: locked CR4.FSGSBASE (a new pin), CR4_PINNED_HIGH=0x%lx\n", want.cr4_high);
        return 1;
    }
    /* FSGSBASE used up by crpin-pin-low (or absent): lock the bits pinned at boot again */
    u64 mask = cr4 & CR4_BOOT_PINS & ~p.cr4_low;
    struct pins want = p;
    if (mask) {
        LOCK("lock CR4 (set allowed bits)", 4, mask, 0);
        want.cr4_high |= mask;
    }
    LOCK("lock CR0 mask=WP", 0, CR0_WP, 0);
    want.cr0_high |= CR0_WP;
    PINS_EQUAL("after locking", want);
    kprintf("  crpin-hc-lock: locked CR4 mask 0x%lx and CR0.WP (already pinned); CR4_PINNED_HIGH=0x%lx\n", mask,
            want.cr4_high);
    return 1;
}

int t_crpin_hc_user(char *detail, size_t dn)
{
    NEED_CRPIN();
    struct pins p;
    READ_PINS(p);
    struct user_run *u = &user_run_info;
    int r = run_user(user_prog_hypercall, kvm_hypercall_uses_vmcall());
    if (r != USER_EXITED)
        FAILF("ring-3 %s killed: vector %lu error 0x%lx rip 0x%lx", kvm_hypercall_uses_vmcall() ? "vmcall" : "vmmcall",
              u->vector, u->error, u->rip);
    if (u->exit_code != (u64)-KVM_EPERM)
        FAILF("ring-3 lock CR0.WP returned %ld, expected %d", (long)u->exit_code, -KVM_EPERM);
    PINS_EQUAL("after the ring-3 hypercall", p);
    return 1;
}

int t_crpin_hc_unknown(char *detail, size_t dn)
{
    NEED_CRPIN();
    HC("hypercall 999", 999, 0, 0, 0, -KVM_ENOSYS);
    HC("hypercall 0x12345678", 0x12345678, 4, CR4_SMEP, 0, -KVM_ENOSYS);
    return 1;
}
