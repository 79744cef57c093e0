/*
 * The checks.  Each returns 1 (PASS), 0 (FAIL, detail filled) or -1 (SKIP).
 * Expected kernel-mode faults are resumed through the fixup table
 * (FIXUP_ENTRY("1b", "2b"): fault at label 1 continues at label 2).
 */
#include "lib/bootinfo.h"
#include "lib/lapic.h"
#include "lib/msr.h"
#include "lib/multiboot.h"
#include "lib/string.h"
#include "lib/x86.h"
#include "testkernel/kernel.h"

#define FRAME_SIZE sizeof(struct trapframe) /* 176: 16-byte aligned, CPU frame + our pushes */


/* Check last_fault against an expected (vector, error, rip); cr2 unchecked if want_cr2 == ~0. */
int expect_fault(char *detail, size_t dn, const char *what, u64 vec, u64 err, u64 rip, u64 want_cr2)
{
    if (last_fault.count != 1)
        FAILF("%s: %lu exceptions recorded, expected 1", what, last_fault.count);
    if (last_fault.vector != vec)
        FAILF("%s: vector %lu, expected %lu", what, last_fault.vector, vec);
    if (last_fault.error != err)
        FAILF("%s: error code 0x%lx, expected 0x%lx", what, last_fault.error, err);
    if (rip && last_fault.rip != rip)
        FAILF("%s: rip 0x%lx, expected 0x%lx", what, last_fault.rip, rip);
    if (want_cr2 != ~0ull && last_fault.cr2 != want_cr2)
        FAILF("%s: cr2 0x%lx, expected 0x%lx", what, last_fault.cr2, want_cr2);
    return 1;
}

/* ---- mbi ---- */
static int t_mbi(char *detail, size_t dn)
{
    if (boot_magic_seen != MULTIBOOT_BOOTLOADER_MAGIC)
        FAILF("EAX magic 0x%08x != 0x2BADB002", boot_magic_seen);
    u32 f = mbi_copy.flags;
    if (!(f & MBI_FLAG_MEM))
        FAILF("flags 0x%x: no mem_lower/mem_upper (bit 0)", f);
    if (mbi_copy.mem_lower == 0 || mbi_copy.mem_lower > 640)
        FAILF("mem_lower %u KiB out of range", mbi_copy.mem_lower);
    if (mbi_copy.mem_upper < 3 * 1024) /* the kernel needs RAM up to 4 MiB */
        FAILF("mem_upper %u KiB < 3 MiB", mbi_copy.mem_upper);
    if (!(f & MBI_FLAG_MMAP) || mmap_count == 0)
        FAILF("flags 0x%x: no memory map (bit 6)", f);
    bool has_1m = false;
    for (int i = 0; i < mmap_count; i++) {
        if (mmap_copy[i].len == 0)
            FAILF("mmap entry %d has length 0", i);
        if (mmap_copy[i].type == 1 && mmap_copy[i].addr <= 0x100000 &&
            mmap_copy[i].addr + mmap_copy[i].len >= 0x400000ull)
            has_1m = true;
    }
    if (!has_1m)
        FAILF("no usable (type 1) mmap region covering 1 MiB..4 MiB");
    if (!(f & MBI_FLAG_CMDLINE) || !cmdline_ok)
        FAILF("flags 0x%x: no command line (bit 2)", f);
    for (const char *p = cmdline; *p; p++)
        if ((u8)*p < 0x20 || (u8)*p > 0x7e)
            FAILF("command line has non-printable byte 0x%02x", (u8)*p);
    kprintf("  mbi: flags=0x%x mem_lower=%u mem_upper=%u mmap_entries=%d cmdline=\"%s\"\n", f, mbi_copy.mem_lower,
            mbi_copy.mem_upper, mmap_count, cmdline);
    return 1;
}

/* ---- pf-demand ---- */
static int t_pf_demand(char *detail, size_t dn)
{
    volatile u64 *w = (volatile u64 *)(DEMAND_BASE + 0x2128);
    volatile u64 *r = (volatile u64 *)(DEMAND_BASE + 0x5ff8);
    if (pte_lookup((u64)w) && (*pte_lookup((u64)w) & PTE_P))
        FAILF("demand page already mapped");
    u64 d0 = demand_faults;

    reset_fault();
    *w = 0xfeedface12345678ull; /* not present, write, supervisor: error 0x2 */
    EXPECT("write fault", VEC_PF, 0x2, 0, (u64)w);
    if (*w != 0xfeedface12345678ull)
        FAILF("value not stored after retry");
    u64 *pte = pte_lookup((u64)w);
    if (!pte || !(*pte & PTE_P))
        FAILF("no PTE after demand fault");
    u64 pa = (*pte & PTE_ADDR) + ((u64)w & 0xfff);
    if (*(volatile u64 *)pa != 0xfeedface12345678ull)
        FAILF("identity alias of the new page at 0x%lx does not hold the value", pa);

    reset_fault();
    u64 v = *r; /* not present, read: error 0x0 */
    EXPECT("read fault", VEC_PF, 0x0, 0, (u64)r);
    if (v != 0)
        FAILF("fresh page not zeroed (0x%lx)", v);

    reset_fault();
    *w += 1; /* now mapped: no fault */
    if (last_fault.count)
        FAILF("unexpected fault on a mapped demand page");
    if (demand_faults - d0 != 2)
        FAILF("%lu demand faults, expected 2", demand_faults - d0);
    return 1;
}

/* ---- exceptions ---- */
static int t_exceptions(char *detail, size_t dn)
{
    u64 rip;

    reset_fault();
    __asm__ volatile("lea 1f(%%rip), %0\n1: ud2\n2:\n" FIXUP_ENTRY("1b", "2b") : "=r"(rip) : : "memory");
    EXPECT("#UD", 6, 0, rip, ~0ull);

    reset_fault();
    __asm__ volatile("lea 1f(%%rip), %0\n"
                     "mov $1, %%eax\n xor %%edx, %%edx\n xor %%ecx, %%ecx\n"
                     "1: div %%ecx\n2:\n" FIXUP_ENTRY("1b", "2b")
                     : "=&r"(rip)
                     :
                     : "rax", "rcx", "rdx", "memory", "cc");
    EXPECT("#DE", 0, 0, rip, ~0ull);

    reset_fault();
    __asm__ volatile("lea 1f(%%rip), %0\nint3\n1:\n" : "=r"(rip) : : "memory");
    EXPECT("#BP", 3, 0, rip, ~0ull); /* trap: RIP after int3 */

    reset_fault();
    __asm__ volatile("lea 1f(%%rip), %0\n"
                     "movabs $0x8000000000000000, %%rax\n"
                     "1: mov (%%rax), %%rax\n2:\n" FIXUP_ENTRY("1b", "2b")
                     : "=&r"(rip)
                     :
                     : "rax", "memory");
    EXPECT("#GP non-canonical", 13, 0, rip, ~0ull);

    reset_fault();
    __asm__ volatile("lea 1f(%%rip), %0\n"
                     "mov $0xfff8, %%eax\n"
                     "1: mov %%eax, %%ds\n2:\n" FIXUP_ENTRY("1b", "2b")
                     : "=&r"(rip)
                     :
                     : "rax", "memory");
    EXPECT("#GP bad selector", 13, 0xfff8, rip, ~0ull);
    return 1;
}

/* ---- protection: CR0.WP on kernel text, NX on kernel data ---- */
static u8 nx_ret_insn[16] ALIGNED(16) = {0xc3}; /* "ret" in a RW+NX data page */

static int t_protection(char *detail, size_t dn)
{
    u64 rip, text = (u64)__kernel_start;
    reset_fault();
    __asm__ volatile("lea 1f(%%rip), %0\n"
                     "movb (%1), %%cl\n"
                     "1: movb %%cl, (%1)\n2:\n" FIXUP_ENTRY("1b", "2b")
                     : "=&r"(rip)
                     : "r"(text)
                     : "rcx", "memory");
    EXPECT("write to RX kernel text (WP)", VEC_PF, 0x3, rip, text);

    if (!nx_on) {
        kprintf("  protection: NX not available, exec check skipped\n");
        return 1;
    }
    u64 target = (u64)nx_ret_insn;
    reset_fault();
    exec_fault_target = target;
    __asm__ volatile("call *%0"
                     :
                     : "r"(target)
                     : "rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "memory", "cc");
    exec_fault_target = 0;
    EXPECT("execute NX data page", VEC_PF, 0x11, target, target);
    return 1;
}

/* ---- ist-df: the IST gate really switches stacks ---- */
static int t_ist_df(char *detail, size_t dn)
{
    if (idt_gate_ist(VEC_DF) != 1)
        FAILF("#DF gate IST=%u, expected 1", idt_gate_ist(VEC_DF));
    for (int i = 0; i < 2; i++) {
        ist_test_frame = 0;
        u64 rsp = read_rsp();
        __asm__ volatile("int %0" : : "i"(VEC_IST_TEST) : "memory");
        if (!ist_test_frame)
            FAILF("IST gate handler did not run");
        if (ist_test_frame != IST1_TOP - FRAME_SIZE)
            FAILF("handler frame at 0x%lx, expected 0x%lx (IST1 stack 0x%lx-0x%lx)", ist_test_frame,
                  IST1_TOP - FRAME_SIZE, (u64)ist1_stack, IST1_TOP);
        if (ist_test_rsp < (u64)boot_stack_bottom || ist_test_rsp > (u64)boot_stack_top ||
            ist_test_rsp > rsp || rsp - ist_test_rsp > 256)
            FAILF("interrupted RSP 0x%lx is not the kernel stack (rsp was 0x%lx)", ist_test_rsp, rsp);
    }
    return 1;
}

/* ---- double-fault: real #DF (nested #PF on an unmapped stack) via IST1 ---- */
#define BAD_STACK 0xffffd00000002000ull

static int t_double_fault(char *detail, size_t dn)
{
    df_frame = 0;
    df_error = ~0ull;
    __asm__ volatile("lea 2f(%%rip), %%rax\n"
                     "mov %%rax, df_resume_rip(%%rip)\n"
                     "mov %%rsp, df_resume_rsp(%%rip)\n"
                     "movb $1, df_armed(%%rip)\n"
                     "movabs %0, %%rsp\n"
                     "ud2\n" /* #UD -> #PF (push) -> #PF (push) -> #DF on IST1 */
                     "2:\n"
                     :
                     : "i"(BAD_STACK)
                     : "rax", "memory");
    df_armed = false;
    if (!df_frame)
        FAILF("#DF handler did not run");
    if (df_frame != IST1_TOP - FRAME_SIZE)
        FAILF("#DF frame at 0x%lx, expected 0x%lx on IST1", df_frame, IST1_TOP - FRAME_SIZE);
    if (df_error != 0)
        FAILF("#DF error code 0x%lx, expected 0", df_error);
    u64 cr2 = read_cr2();
    if (cr2 < BAD_STACK - 64 || cr2 >= BAD_STACK)
        FAILF("cr2 0x%lx not just below the bad stack 0x%llx", cr2, BAD_STACK);
    return 1;
}

/* ---- user-syscall ---- */
static int t_user_syscall(char *detail, size_t dn)
{
    struct user_run *u = &user_run_info;
    int r = run_user(user_prog_syscall, 0);
    if (r != USER_EXITED)
        FAILF("user program killed: vector %lu error 0x%lx rip 0x%lx cr2 0x%lx", u->vector, u->error, u->rip,
              u->cr2);
    if (u->exit_code != 0)
        FAILF("user program reported failure at step %lu", u->exit_code);
    if (u->exit_via != VEC_SYSCALL_INSN)
        FAILF("exit did not come through SYSCALL");
    if (u->n_syscall != 3 || u->n_int80 != 2)
        FAILF("saw %lu SYSCALLs and %lu int 0x80s, expected 3 and 2", u->n_syscall, u->n_int80);

    r = run_user(user_prog_exit_int80, 0);
    if (r != USER_EXITED || u->exit_code != 7 || u->exit_via != VEC_SYSCALL_INT)
        FAILF("int 0x80 exit: result %d code %lu via 0x%lx", r, u->exit_code, u->exit_via);
    return 1;
}

/* ---- user-fault ---- */
int expect_kill(char *detail, size_t dn, const char *what, const void *prog, u64 arg, u64 vec, u64 err,
                       u64 cr2, u64 rip)
{
    struct user_run *u = &user_run_info;
    int r = run_user(prog, arg);
    if (r != USER_KILLED)
        FAILF("%s: not killed (exit code %lu)", what, u->exit_code);
    if (u->vector != vec || u->error != err)
        FAILF("%s: vector %lu error 0x%lx, expected %lu / 0x%lx", what, u->vector, u->error, vec, err);
    if (cr2 != ~0ull && u->cr2 != cr2)
        FAILF("%s: cr2 0x%lx, expected 0x%lx", what, u->cr2, cr2);
    if (rip && u->rip != rip)
        FAILF("%s: rip 0x%lx, expected 0x%lx", what, u->rip, rip);
    if (u->cs != (SEL_UCODE | 3))
        FAILF("%s: faulting cs 0x%lx", what, u->cs);
    if (u->frame != RSP0_TOP - FRAME_SIZE)
        FAILF("%s: frame at 0x%lx, expected 0x%lx (TSS.RSP0 stack)", what, u->frame, RSP0_TOP - FRAME_SIZE);
    return 1;
}

static int t_user_fault(char *detail, size_t dn)
{
    u64 kaddr = (u64)__kernel_start;
    /* present + user-mode read of a supervisor page: error P|U = 0x5 */
    if (!expect_kill(detail, dn, "read kernel page", user_prog_read_kernel, kaddr, VEC_PF, 0x5, kaddr,
                     user_va(user_prog_read_kernel)))
        return 0;
    if (!expect_kill(detail, dn, "ud2", user_prog_ud2, 0, 6, 0, ~0ull, user_va(user_prog_ud2)))
        return 0;
    if (!expect_kill(detail, dn, "hlt", user_prog_hlt, 0, 13, 0, ~0ull, user_va(user_prog_hlt)))
        return 0;
    /* the kernel is still fine and can run another process */
    int r = run_user(user_prog_exit_int80, 0);
    if (r != USER_EXITED || user_run_info.exit_code != 7)
        FAILF("process after kills did not run normally");
    return 1;
}

/* ---- timer (xAPIC) ---- */
#define TIMER_COUNT 200000u /* with divide-by-16 */
#define PERIODIC_TICKS 5


static void spin_sti(u64 n)
{
    sti();
    for (u64 i = 0; i < n; i++)
        (void)lapic_rd(LAPIC_TIMER_CCR);
    cli();
}

static int t_timer(char *detail, size_t dn)
{
    if (!cpu.apic)
        FAILF("CPUID.1:EDX.APIC is 0");
    u64 base = rdmsr(MSR_APIC_BASE);
    if ((base & 0xfffff000ull) != 0xfee00000ull)
        FAILF("IA32_APIC_BASE = 0x%lx, expected base 0xfee00000", base);
    if (base & (1u << 10))
        FAILF("APIC is in x2APIC mode (IA32_APIC_BASE = 0x%lx)", base);
    if (!(base & (1u << 11)))
        wrmsr(MSR_APIC_BASE, base | (1u << 11));
    lapic_wr(LAPIC_TPR, 0);
    lapic_wr(LAPIC_SVR, 0x100 | VEC_SPURIOUS); /* software enable + spurious vector */
    lapic_wr(LAPIC_LVT_LINT0, LVT_MASKED);
    lapic_wr(LAPIC_TIMER_DCR, 0x3); /* divide by 16 */
    u32 svr = lapic_rd(LAPIC_SVR);
    if ((svr & 0x1ff) != (0x100 | VEC_SPURIOUS))
        FAILF("SVR reads back 0x%x", svr);

    /* 1) current count decreases (masked one-shot) */
    lapic_wr(LAPIC_LVT_TIMER, LVT_MASKED | VEC_TIMER);
    lapic_wr(LAPIC_TIMER_ICR, 0x10000000u);
    u32 c1 = lapic_rd(LAPIC_TIMER_CCR), c2 = c1;
    for (u32 i = 0; i < 1000000 && c2 == c1; i++)
        c2 = lapic_rd(LAPIC_TIMER_CCR);
    lapic_wr(LAPIC_TIMER_ICR, 0);
    if (c1 == 0 || c1 > 0x10000000u || c2 >= c1)
        FAILF("current count does not decrease (0x%x then 0x%x)", c1, c2);

    /* 2) one-shot fires exactly once */
    u64 t0 = timer_ticks;
    lapic_wr(LAPIC_LVT_TIMER, VEC_TIMER); /* one-shot, unmasked */
    lapic_wr(LAPIC_TIMER_ICR, TIMER_COUNT);
    u64 running = 0, zero = 0;
    sti();
    while (timer_ticks == t0) {
        if (lapic_rd(LAPIC_TIMER_CCR))
            running++;
        else if (++zero > running + 100000)
            break;
        if (running > 200000000ull)
            break;
    }
    cli();
    if (timer_ticks == t0)
        FAILF("one-shot: no interrupt (count %s)", running > 200000000ull ? "never reached 0" : "reached 0");
    u64 spins = running + zero + 1000; /* about one timer period, measured */
    spin_sti(3 * spins);
    if (timer_ticks != t0 + 1)
        FAILF("one-shot fired %lu times", timer_ticks - t0);
    if (lapic_rd(LAPIC_TIMER_CCR) != 0)
        FAILF("one-shot: current count 0x%x after expiry", lapic_rd(LAPIC_TIMER_CCR));

    /* 3) periodic: hlt until PERIODIC_TICKS interrupts */
    t0 = timer_ticks;
    lapic_wr(LAPIC_LVT_TIMER, LVT_PERIODIC | VEC_TIMER);
    lapic_wr(LAPIC_TIMER_ICR, TIMER_COUNT);
    u64 halts = 0;
    while (timer_ticks - t0 < PERIODIC_TICKS) {
        if (lapic_rd(LAPIC_TIMER_CCR) == 0) { /* periodic must reload; never sleep on a dead timer */
            u64 t = timer_ticks;
            spin_sti(3 * spins);
            if (timer_ticks == t && lapic_rd(LAPIC_TIMER_CCR) == 0)
                FAILF("periodic timer stopped after %lu ticks", timer_ticks - t0);
            continue;
        }
        __asm__ volatile("sti; hlt; cli" ::: "memory");
        halts++;
    }
    u32 ccr = lapic_rd(LAPIC_TIMER_CCR);
    if (ccr == 0 || ccr > TIMER_COUNT)
        FAILF("periodic: current count 0x%x not in (0, 0x%x]", ccr, TIMER_COUNT);

    /* 4) masked: no more interrupts */
    lapic_wr(LAPIC_LVT_TIMER, LVT_MASKED | LVT_PERIODIC | VEC_TIMER);
    u64 t1 = timer_ticks;
    spin_sti(3 * spins);
    u64 extra = timer_ticks - t1;
    lapic_wr(LAPIC_TIMER_ICR, 0);
    if (extra)
        FAILF("%lu interrupts after masking the timer", extra);
    kprintf("  timer: apic id=%u ver=0x%x; one-shot fired once; periodic %lu ticks in %lu hlt; spurious=%lu\n",
            lapic_rd(LAPIC_ID) >> 24, lapic_rd(LAPIC_VER), timer_ticks - t0 - extra, halts, spurious_count);
    return 1;
}

/* ---- umip ---- */
static int t_umip(char *detail, size_t dn)
{
    if (!cpu.umip)
        SKIPF("CPUID.7.0:ECX.UMIP is 0");
    if (!umip_on)
        FAILF("CR4.UMIP did not stick");
    struct {
        u16 limit;
        u64 base;
    } PACKED g = {0, 0};
    __asm__ volatile("sgdt %0" : "=m"(g)); /* ring 0 is unaffected */
    if (g.limit != 63)
        FAILF("ring-0 sgdt limit %u", g.limit);
    if (!expect_kill(detail, dn, "ring-3 sgdt", user_prog_sgdt, 0, 13, 0, ~0ull, 0))
        return 0;
    return 1;
}

/* ---- smep ---- */
static int t_smep(char *detail, size_t dn)
{
    if (!cpu.smep)
        SKIPF("CPUID.7.0:EBX.SMEP is 0");
    if (!smep_on)
        FAILF("CR4.SMEP did not stick");
    u64 target = user_va(user_ret_stub);
    reset_fault();
    exec_fault_target = target;
    __asm__ volatile("call *%0"
                     :
                     : "r"(target)
                     : "rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "memory", "cc");
    exec_fault_target = 0;
    if (last_fault.count == 0)
        FAILF("ring 0 executed a user page without a fault");
    if (!(last_fault.error & 0x10))
        FAILF("#PF error code 0x%lx lacks I/D (bit 4)", last_fault.error);
    EXPECT("exec user page", VEC_PF, 0x11, target, target);
    return 1;
}

/* ---- smap ---- */
static int t_smap(char *detail, size_t dn)
{
    if (!cpu.smap)
        SKIPF("CPUID.7.0:EBX.SMAP is 0");
    if (!smap_on)
        FAILF("CR4.SMAP did not stick");
    u64 rip, v = 0, p = USER_DATA_VA;
    reset_fault();
    __asm__ volatile("lea 1f(%%rip), %0\n"
                     "1: mov (%2), %1\n2:\n" FIXUP_ENTRY("1b", "2b")
                     : "=&r"(rip), "+r"(v)
                     : "r"(p)
                     : "memory");
    EXPECT("read user page with AC=0", VEC_PF, 0x1, rip, p);
    reset_fault();
    stac();
    *(volatile u64 *)p = 0x5a5a;
    v = *(volatile u64 *)p;
    clac();
    if (last_fault.count || v != 0x5a5a)
        FAILF("access with AC=1 failed");
    return 1;
}

/* Run order; the checks that can take the whole VM down on a broken platform
 * (timer: hlt forever; double-fault: triple fault) come last. */
const struct test tests[] = {
    {"mbi", t_mbi, NULL},
    {"pf-demand", t_pf_demand, NULL},
    {"exceptions", t_exceptions, NULL},
    {"protection", t_protection, NULL},
    {"ist-df", t_ist_df, NULL},
    {"user-syscall", t_user_syscall, NULL},
    {"user-fault", t_user_fault, NULL},
    {"umip", t_umip, NULL},
    {"smep", t_smep, NULL},
    {"smap", t_smap, NULL},
    {"crpin-allowed", t_crpin_allowed, "crpin"},
    {"crpin-allowed-ro", t_crpin_allowed_ro, "crpin"},
    {"crpin-pins", t_crpin_pins, "crpin"},
    {"crpin-disallowed", t_crpin_disallowed, "crpin"},
    {"crpin-unpin", t_crpin_unpin, "crpin"},
    {"crpin-pin-low", t_crpin_pin_low, "crpin"},
    {"crpin-cr4-set-low", t_crpin_cr4_set_low, "crpin"},
    {"crpin-cr4-clear", t_crpin_cr4_clear, "crpin"},
    {"crpin-cr0-wp", t_crpin_cr0_wp, "crpin"},
    {"crpin-lmsw-clts", t_crpin_lmsw_clts, "crpin"},
    {"crpin-hc-version", t_crpin_hc_version, "crpin"},
    {"crpin-hc-cr0-nowp", t_crpin_hc_cr0_nowp, "crpin"},
    {"crpin-hc-cr4-disallowed", t_crpin_hc_cr4_disallowed, "crpin"},
    {"crpin-hc-cr4-clear", t_crpin_hc_cr4_clear, "crpin"},
    {"crpin-hc-args", t_crpin_hc_args, "crpin"},
    {"crpin-hc-lock", t_crpin_hc_lock, "crpin"},
    {"crpin-hc-user", t_crpin_hc_user, "crpin"},
    {"crpin-hc-unknown", t_crpin_hc_unknown, "crpin"},
    {"timer", t_timer, NULL},
    {"double-fault", t_double_fault, NULL},
};
const size_t n_tests = ARRAY_SIZE(tests);
