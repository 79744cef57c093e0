/* Trap dispatch: timer, system calls, expected faults (fixups), process kills, oopses, panics. */
#include "lib/io.h"
#include "lib/lapic.h"
#include "lib/string.h"
#include "lib/x86.h"
#include "vbs/vtl0/kernel.h"

volatile u64 timer_ticks;
struct kjmp check_jmp;
volatile bool check_active;
const char *volatile current_check;

static void dump_frame(const struct trapframe *tf, u64 cr2)
{
    kprintf("  vector=%lu (%s) error=0x%lx rip=%016lx cs=%lx rflags=%lx rsp=%016lx ss=%lx cr2=%016lx\n",
            tf->vector, tf->vector < 32 ? exc_names[tf->vector] : "irq", tf->error, tf->rip, tf->cs, tf->rflags,
            tf->rsp, tf->ss, cr2);
    kprintf("  rax=%016lx rbx=%016lx rcx=%016lx rdx=%016lx\n", tf->rax, tf->rbx, tf->rcx, tf->rdx);
    kprintf("  rsi=%016lx rdi=%016lx rbp=%016lx\n", tf->rsi, tf->rdi, tf->rbp);
}

static NORETURN void panic_frame(const char *why, struct trapframe *tf, u64 cr2)
{
    kprintf("PANIC: %s\n", why);
    dump_frame(tf, cr2);
    kprintf("FAILED 255\n");
    debug_exit(0xff);
}

/* With VTL1 running, a #GP VTL1 injected for a memory/register violation is in its log. */
static void report_vtl1_violation(u64 vec)
{
    if (vec != VEC_GP || !vbs.vsm)
        return;
    struct vbs_ret v = vbs_call(VBS_CALL_GET_VIOLATION, ~0ull, 0, 0, 0);
    if (v.status > 0)
        kprintf("  kernel: VTL1 violation #%ld: kind=%lu access=%lu addr=0x%lx rip=0x%lx\n", v.status,
                v.r[0] & 0xff, (v.r[0] >> 8) & 0xff, v.r[1], v.r[2]);
}

void trap_dispatch(struct trapframe *tf)
{
    u64 vec = tf->vector;
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
    if (vec == VEC_SPURIOUS || (vec >= VEC_PIC_BASE && vec < VEC_PIC_BASE + 16))
        return;
    if (vec >= 32) {
        kprintf("WARN: unexpected interrupt vector %lu\n", vec);
        lapic_eoi();
        return;
    }
    u64 cr2 = read_cr2();

    if ((tf->cs & 3) == 3) {
        if (!user_active)
            panic_frame("ring-3 fault without a user process", tf, cr2);
        kill_current(tf, cr2, false, false);
    }
    /* expected kernel faults (checks, safe accessors) */
    if (fixup_recover(tf, cr2) || call_safe_recover(tf, cr2))
        return;
    /* a kernel fault inside a system call is an oops: the process dies, the kernel goes on */
    if (user_active) {
        kprintf("  kernel: oops in system call of pid %d: %s error=0x%lx at rip=0x%lx cr2=0x%lx\n",
                current ? current->pid : -1, exc_names[vec], tf->error, tf->rip, cr2);
        report_vtl1_violation(vec);
        kill_current(tf, cr2, true, false);
    }
    if (check_active) {
        kprintf("CHECK %s FAIL unexpected exception %s error=0x%lx rip=0x%lx cr2=0x%lx\n", current_check,
                exc_names[vec], tf->error, tf->rip, cr2);
        dump_frame(tf, cr2);
        check_active = false;
        k_longjmp(&check_jmp, 1);
    }
    panic_frame("unexpected exception", tf, cr2);
}
