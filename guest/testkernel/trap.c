/* Trap dispatch: interrupts, syscalls, demand paging, expected faults, user kills. */
#include "lib/io.h"
#include "lib/lapic.h"
#include "lib/string.h"
#include "lib/uart.h"
#include "lib/x86.h"
#include "testkernel/kernel.h"


volatile u64 timer_ticks, spurious_count, pic_count, demand_faults;
volatile u64 ist_test_frame, ist_test_rsp;
volatile u64 exec_fault_target;
volatile bool df_armed;
volatile u64 df_frame, df_error, df_resume_rip, df_resume_rsp;
struct kjmp test_jmp;
volatile bool test_active;
const char *volatile current_test;
struct user_run user_run_info;
static struct kjmp user_jmp;
static volatile bool user_active;

static void dump_frame(const struct trapframe *tf, u64 cr2)
{
    kprintf("  vector=%lu (%s) error=0x%lx rip=%016lx cs=%lx rflags=%lx rsp=%016lx ss=%lx cr2=%016lx\n",
            tf->vector, tf->vector < 32 ? exc_names[tf->vector] : "irq", tf->error, tf->rip, tf->cs, tf->rflags,
            tf->rsp, tf->ss, cr2);
    kprintf("  rax=%016lx rbx=%016lx rcx=%016lx rdx=%016lx\n", tf->rax, tf->rbx, tf->rcx, tf->rdx);
    kprintf("  rsi=%016lx rdi=%016lx rbp=%016lx frame=%p\n", tf->rsi, tf->rdi, tf->rbp, (void *)tf);
}

static NORETURN void panic_frame(const char *why, struct trapframe *tf, u64 cr2)
{
    kprintf("PANIC: %s\n", why);
    dump_frame(tf, cr2);
    kprintf("FAILED 255\n");
    debug_exit(0xff);
}

/* System calls (from SYSCALL or int 0x80); user pointers checked, SMAP-aware. */
static void do_syscall(struct trapframe *tf)
{
    if (tf->vector == VEC_SYSCALL_INSN)
        user_run_info.n_syscall++;
    else
        user_run_info.n_int80++;
    switch (tf->rax) {
    case SYS_EXIT:
        user_run_info.result = USER_EXITED;
        user_run_info.exit_code = tf->rdi;
        user_run_info.exit_via = tf->vector;
        k_longjmp(&user_jmp, USER_EXITED);
    case SYS_WRITE: {
        u64 p = tf->rdi, n = tf->rsi;
        if (n > 256 || p < USER_BASE || p + n > USER_END) {
            tf->rax = (u64)-14; /* -EFAULT */
            return;
        }
        char buf[257];
        if (smap_on)
            stac();
        memcpy(buf, (const void *)p, n);
        if (smap_on)
            clac();
        uart_write(buf, n);
        tf->rax = n;
        return;
    }
    case SYS_ADD:
        tf->rax = tf->rdi + tf->rsi;
        return;
    case SYS_VULN_CALL: /* -ENOSYS unless attack=... */
        tf->rax = sys_vuln_call(tf->rdi, tf->rsi, tf->rdx);
        return;
    default:
        tf->rax = (u64)-38; /* -ENOSYS */
        return;
    }
}

int run_user(const void *entry_sym, u64 arg)
{
    memset(&user_run_info, 0, sizeof(user_run_info));
    int r = k_setjmp(&user_jmp);
    if (r == 0) {
        user_active = true;
        enter_user(user_va(entry_sym), USER_STACK_VA + USER_STACK_SIZE, arg);
    }
    user_active = false;
    cli();
    if (smap_on)
        clac();
    return r;
}

/* Kill the current user process for an exception (in ring 3, or in ring 0 during one of its system calls). */
static NORETURN void kill_user(struct trapframe *tf, u64 cr2)
{
    struct user_run *u = &user_run_info;
    u64 vec = tf->vector;
    u->result = USER_KILLED;
    u->vector = vec;
    u->error = tf->error;
    u->cr2 = cr2;
    u->rip = tf->rip;
    u->cs = tf->cs;
    u->frame = (u64)tf;
    kprintf("  kernel: killed user process: %s vector=%lu error=0x%lx rip=%lx cr2=%lx\n", exc_names[vec], vec,
            tf->error, tf->rip, cr2);
    k_longjmp(&user_jmp, USER_KILLED);
}

void trap_dispatch(struct trapframe *tf)
{
    u64 vec = tf->vector;

    /* Interrupts and system calls first. */
    if (vec == VEC_SYSCALL_INSN || vec == VEC_SYSCALL_INT) {
        if ((tf->cs & 3) != 3)
            panic_frame("system call from ring 0", tf, read_cr2());
        do_syscall(tf);
        return;
    }
    if (vec == VEC_TIMER) {
        timer_ticks++;
        lapic_eoi();
        return;
    }
    if (vec == VEC_SPURIOUS) {
        spurious_count++; /* no EOI for spurious */
        return;
    }
    if (vec >= VEC_PIC_BASE && vec < VEC_PIC_BASE + 16) {
        pic_count++; /* PIC is fully masked: only spurious IRQ7/15 can get here; no EOI */
        return;
    }
    if (vec == VEC_IST_TEST) {
        ist_test_frame = (u64)tf;
        ist_test_rsp = tf->rsp;
        return;
    }
    if (vec >= 32) {
        kprintf("WARN: unexpected interrupt vector %lu\n", vec);
        lapic_eoi();
        return;
    }

    u64 cr2 = read_cr2();

    if (vec == VEC_DF) {
        if (!df_armed)
            panic_frame("double fault", tf, cr2);
        df_armed = false;
        df_frame = (u64)tf;
        df_error = tf->error;
        /* #DF saved RIP/RSP are undefined: resume at a known point. */
        tf->rip = df_resume_rip;
        tf->rsp = df_resume_rsp;
        tf->cs = SEL_KCODE;
        tf->ss = SEL_KDATA;
        return;
    }

    /* Faults in ring 3: kill the process, report, continue in the kernel. */
    if ((tf->cs & 3) == 3) {
        if (!user_active)
            panic_frame("ring-3 fault without a user process", tf, cr2);
        kill_user(tf, cr2);
    }

    /* Demand paging of the kernel demand area. */
    if (vec == VEC_PF && cr2 >= DEMAND_BASE && cr2 < DEMAND_BASE + DEMAND_PAGES * 4096ull) {
        last_fault.count++;
        last_fault.vector = vec;
        last_fault.error = tf->error;
        last_fault.cr2 = cr2;
        last_fault.rip = tf->rip;
        demand_faults++;
        map_page(cr2 & ~0xfffull, page_alloc(), PTE_W | PTE_NX);
        return; /* retry the access */
    }

    /* Expected kernel faults: record; resume via fixup table / emulated ret. */
    const struct fixup *f = find_fixup(tf->rip);
    bool exec_fault = vec == VEC_PF && exec_fault_target && tf->rip == exec_fault_target;
    if (f || vec == 3 || exec_fault) {
        last_fault.count++;
        last_fault.vector = vec;
        last_fault.error = tf->error;
        last_fault.cr2 = cr2;
        last_fault.rip = tf->rip;
        last_fault.cs = tf->cs;
        last_fault.frame = (u64)tf;
        if (f) {
            tf->rip = f->cont;
        } else if (exec_fault) {
            exec_fault_target = 0;
            tf->rip = *(u64 *)tf->rsp; /* the faulting "call" pushed the return address */
            tf->rsp += 8;
        }
        /* #BP is a trap: RIP already points after int3. */
        return;
    }

    /* attack=...: a kernel fault inside a system call is an oops that kills the process (as Linux does).
     * A #GP on a CR-write gadget is the hypervisor refusing to clear a pinned bit. */
    if (attack_mode && user_active && (tf->cs & 3) == 0) {
        const char *g = attack_gadget_name(tf->rip);
        kprintf("  kernel: oops in system call: %s error=0x%lx at rip=%lx%s%s%s\n", exc_names[vec], tf->error,
                tf->rip, g ? " (" : "", g ? g : "", g ? ")" : "");
        if (g && vec == 13 && !strncmp(g, "gadget_write_cr", 15))
            kprintf("  kernel: #GP at the CR-write gadget: the control-register write was refused\n");
        kill_user(tf, cr2);
    }

    if (test_active) {
        kprintf("FAIL %s: unexpected exception %s\n", current_test, exc_names[vec]);
        dump_frame(tf, cr2);
        fail_count_inc();
        test_active = false;
        k_longjmp(&test_jmp, 1);
    }
    panic_frame("unexpected exception", tf, cr2);
}
