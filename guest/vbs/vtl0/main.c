/*
 * The VBS VTL0 kernel: boot, VSM bring-up (or CR pinning without VTL1), feature arming, the checks.
 * Command line: vsm= hvci= kdp= kcfg= hyperguard= credguard= crpin= (on|off), vulndrv, checks=a,b|none,
 * attack=NAME (guest/vbs/user/attacks, docs/attacks.md).
 */
#include "lib/bootinfo.h"
#include "lib/cpu.h"
#include "lib/crpin.h"
#include "lib/hyperv.h"
#include "lib/io.h"
#include "lib/lapic.h"
#include "lib/msr.h"
#include "lib/string.h"
#include "lib/uart.h"
#include "lib/x86.h"
#include "vbs/vtl0/kernel.h"

struct vbs_state vbs __ro_after_init;
u64 kdp_canary __ro_after_init;
#define KDP_CANARY 0x6b64702d63616e31ull
bool vsm_probe(void);
void vsm_no_vtl1_key(void);
bool vsm_hyperv(void);        /* vsm.c: the secure side is Hyper-V VSM (else capability domains, or none) */
void vsm_print_design(void);
extern int vbs_cmdline_failures;

static int n_failed;

static const struct {
    const char *key;
    u32 bit;
} feature_keys[] = {
    {"hvci", VBS_F_HVCI}, {"kdp", VBS_F_KDP}, {"kcfg", VBS_F_KCFG}, {"hyperguard", VBS_F_HYPERGUARD},
    {"credguard", VBS_F_CREDGUARD},
};

/* key=on|off: *out keeps the default when absent; a bad value is a failure */
static void onoff(const char *key, bool *out)
{
    const char *v = cmdline_value(key);
    if (!v)
        return;
    if (word_is(v, "on"))
        *out = true;
    else if (word_is(v, "off"))
        *out = false;
    else {
        kprintf("FAIL cmdline: %s=%.*s (expected on or off)\n", key, word_len(v), v);
        n_failed++;
    }
}

static bool want_vsm = true, want_crpin = true, crpin_given;

static void parse_cmdline(void)
{
    u32 req = 0;
    for (u64 i = 0; i < ARRAY_SIZE(feature_keys); i++) {
        bool on = true;
        onoff(feature_keys[i].key, &on);
        if (on)
            req |= feature_keys[i].bit;
    }
    vbs.requested = req;
    onoff("vsm", &want_vsm);
    crpin_given = cmdline_value("crpin") != NULL;
    onoff("crpin", &want_crpin);
    vbs.vulndrv = cmdline_has_word("vulndrv");
    vbs.kcfg = req & VBS_F_KCFG;
    vbs.module_sig_enforce = true;
}

static void timer_init(void)
{
    lapic_wr(LAPIC_TPR, 0);
    lapic_wr(LAPIC_SVR, 0x100 | VEC_SPURIOUS);
    lapic_wr(LAPIC_LVT_LINT0, LVT_MASKED);
    lapic_wr(LAPIC_TIMER_DCR, 0x3); /* divide by 16 */
    lapic_wr(LAPIC_LVT_TIMER, LVT_MASKED | VEC_TIMER);
    if (word_is(cmdline_value("timer"), "periodic")) {
        /* always ticking (interrupts mostly pending: IF=0 in the kernel, none in VTL1): vtlvisor caveat 2 */
        lapic_wr(LAPIC_LVT_TIMER, LVT_PERIODIC | VEC_TIMER);
        lapic_wr(LAPIC_TIMER_ICR, 100000);
        kprintf("timer: LAPIC vector 0x%x, periodic from boot (timer=periodic)\n", VEC_TIMER);
        return;
    }
    kprintf("timer: LAPIC vector 0x%x, periodic while the timer check runs (docs/guest.md: vtlvisor caveat)\n",
            VEC_TIMER);
}

static const char *state(u32 bit)
{
    if (vbs.armed & bit)
        return "armed";
    if ((bit == VBS_F_KCFG) && vbs.kcfg)
        return "armed";
    if (vbs.vsm && (vbs.requested & bit))
        return "FAILED";
    return "off";
}

static void print_features(void)
{
    vsm_print_design(); /* "vbs: vsm ..." and "vbs: domains ..." */
    for (u64 i = 0; i < ARRAY_SIZE(feature_keys); i++) {
        const char *s = state(feature_keys[i].bit);
        kprintf("vbs: %s %s\n", feature_keys[i].key, s);
        if (!strcmp(s, "FAILED"))
            n_failed++;
    }
    kprintf("vbs: crpin %s\n", vbs.crpin ? "armed" : "off");
    if (vbs.kcfg && !(vbs.armed & VBS_F_KCFG))
        kprintf("  kcfg: bitmap 0x%lx-0x%lx is writable by VTL0 (no VTL1 protects it)\n", (u64)__kcfg_start,
                (u64)__kcfg_end - 1);
    if (!(vbs.armed & VBS_F_CREDGUARD))
        kprintf("  credguard: the credential key is in VTL0 memory at 0x%lx\n", (u64)vbs_cred_key_vtl0());
    kprintf("vbs: vulndrv %s\n", vbs.vulndrv ? "ENABLED (deliberately vulnerable driver, SYS_VULNDRV=86)" : "off");
}

void kmain64(u32 magic, u32 mbi_phys)
{
    copy_boot_info(magic, mbi_phys, (u64)__kernel_start, (u64)__kernel_end);
    uart_init();
    kprintf("\nvtlvisor VBS kernel (VTL0)\n");
    print_boot_info();
    ram_top = find_ram_top();
    kprintf("mem: ram_top=0x%lx kernel=0x%lx-0x%lx pool=0x%llx-0x%llx modules=0x%llx-0x%llx physmap=0x%llx\n", ram_top,
            (u64)__kernel_start, (u64)__kernel_end - 1, POOL_START, POOL_END - 1, MODULE_BASE,
            MODULE_BASE + MODULE_SIZE - 1, PHYSMAP_BASE);
    if (ram_top < RAM_MIN) {
        kprintf("FATAL: need at least 32 MiB of RAM\nFAILED 255\n");
        debug_exit(0xff);
    }
    parse_cmdline();
    pic_disable();
    cpu_setup();
    desc_init();
    mm_init();
    cpu_protect();
    files_init();
    timer_init();

    vbs.vsm_available = vsm_probe(); /* Hyper-V VSM or capability domains (design=) */
    n_failed += vbs_cmdline_failures;
    if (want_vsm && vbs.vsm_available) {
        if (vsm_boot()) {
            kprintf("vsm: FAILED to start VTL1\n");
            n_failed++;
        }
    } else {
        kprintf("vsm: %s: no VTL1; the kernel protects itself\n",
                vbs.vsm_available ? "vsm=off on the command line" : "no Hyper-V VSM (run with --hyperv)");
        vsm_no_vtl1_key();
    }
    if (!vbs.vsm)
        vbs.armed = 0;
    /* CR pinning: the self-protection design (default without VTL1; VTL1 locks the registers otherwise) */
    bool pin = crpin_given ? want_crpin : !vbs.vsm;
    n_failed += crpin_boot(!pin);
    vbs.crpin = crpin_state == CRPIN_ON;

    syscall_init();   /* syscall table: KDP page */
    cred_init();      /* credential templates: KDP page */
    module_init_dir();
    kdp_canary = KDP_CANARY;
    if (vbs.armed & VBS_F_HYPERGUARD || (vbs.vsm && (vbs.requested & VBS_F_HYPERGUARD))) {
        if (vsm_hyperv()) /* a Hyper-V MSR: none with domains (UMIP, locked by HyperGuard, does the same) */
            wrmsr(HV_X64_MSR_NPIEP_CONFIG, HV_NPIEP_ALL); /* VTL0 writes its own NPIEP config (trust caveat) */
        struct vbs_ret r = vbs_call(VBS_CALL_LOCK_REGS, 0, 0, 0, 0);
        kprintf("vsm: LOCK_REGS: status %ld\n", r.status);
        if (r.status)
            n_failed++;
        else
            vbs.armed |= VBS_F_HYPERGUARD;
    }
    if (vbs.vsm && vsm_end_of_boot())
        n_failed++;
    mm_protect_ro_after_init(); /* and in VTL0's own page tables */
    /* run-time KDP registration, after the end of boot */
    kdp_protect(module_dir, 1);
    print_features();
    kprintf("vbs: boot complete\n");

    const char *sel = cmdline_value("checks");
    const char *attack = cmdline_value("attack");
    if (attack && !sel)
        sel = "none"; /* attack=NAME runs that attack program instead of the checks (unless checks= says) */
    if (!word_is(sel, "none"))
        n_failed += run_checks(sel);
    if (attack)
        n_failed += run_attack(attack);
    if (n_failed)
        kprintf("FAILED %d\n", n_failed);
    else
        kprintf("ALL PASSED\n");
    debug_exit((u32)n_failed);
}
