/* Fault-tolerant privileged accesses resumed through the fixup table (lib/fixup.h). */
#include "lib/fixup.h"
#include "lib/string.h"
#include "lib/trap.h"

struct fault_record last_fault;

const char *const exc_names[32] = {
    "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS", "#GP", "#PF", "#15",
    "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "#22", "#23", "#24", "#25", "#26", "#27", "#HV", "#VC", "#SX", "#31",
};

const struct fixup *find_fixup(u64 rip)
{
    for (const struct fixup *f = __fixup_start; f < __fixup_end; f++)
        if (f->insn == rip)
            return f;
    return NULL;
}

void reset_fault(void) { memset(&last_fault, 0, sizeof(last_fault)); }

#define FAULTED(n0) (last_fault.count != (n0) ? (int)last_fault.vector : 0)

int rdmsr_safe(u32 msr, u64 *val, u64 *rip)
{
    u64 n0 = last_fault.count, r;
    u32 lo = 0, hi = 0;
    __asm__ volatile("lea 1f(%%rip), %0\n1: rdmsr\n2:\n" FIXUP_ENTRY("1b", "2b")
                     : "=&r"(r), "+a"(lo), "+d"(hi)
                     : "c"(msr)
                     : "memory");
    if (rip)
        *rip = r;
    *val = ((u64)hi << 32) | lo;
    return FAULTED(n0);
}

int wrmsr_safe(u32 msr, u64 v, u64 *rip)
{
    u64 n0 = last_fault.count, r;
    __asm__ volatile("lea 1f(%%rip), %0\n1: wrmsr\n2:\n" FIXUP_ENTRY("1b", "2b")
                     : "=&r"(r)
                     : "c"(msr), "a"((u32)v), "d"((u32)(v >> 32))
                     : "memory");
    if (rip)
        *rip = r;
    return FAULTED(n0);
}

int write_cr0_safe(u64 v, u64 *rip)
{
    u64 n0 = last_fault.count, r;
    __asm__ volatile("lea 1f(%%rip), %0\n1: mov %1, %%cr0\n2:\n" FIXUP_ENTRY("1b", "2b")
                     : "=&r"(r)
                     : "r"(v)
                     : "memory");
    if (rip)
        *rip = r;
    return FAULTED(n0);
}

int write_cr4_safe(u64 v, u64 *rip)
{
    u64 n0 = last_fault.count, r;
    __asm__ volatile("lea 1f(%%rip), %0\n1: mov %1, %%cr4\n2:\n" FIXUP_ENTRY("1b", "2b")
                     : "=&r"(r)
                     : "r"(v)
                     : "memory");
    if (rip)
        *rip = r;
    return FAULTED(n0);
}

int read_u64_safe(u64 addr, u64 *val, u64 *rip)
{
    u64 n0 = last_fault.count, r, v = 0;
    __asm__ volatile("lea 1f(%%rip), %0\n1: mov (%2), %1\n2:\n" FIXUP_ENTRY("1b", "2b")
                     : "=&r"(r), "+r"(v)
                     : "r"(addr)
                     : "memory");
    if (rip)
        *rip = r;
    *val = v;
    return FAULTED(n0);
}

int write_u64_safe(u64 addr, u64 val, u64 *rip)
{
    u64 n0 = last_fault.count, r;
    __asm__ volatile("lea 1f(%%rip), %0\n1: mov %1, (%2)\n2:\n" FIXUP_ENTRY("1b", "2b")
                     : "=&r"(r)
                     : "r"(val), "r"(addr)
                     : "memory");
    if (rip)
        *rip = r;
    return FAULTED(n0);
}

int write_u8_safe(u64 addr, u8 val, u64 *rip)
{
    u64 n0 = last_fault.count, r;
    __asm__ volatile("lea 1f(%%rip), %0\n1: movb %1, (%2)\n2:\n" FIXUP_ENTRY("1b", "2b")
                     : "=&r"(r)
                     : "q"(val), "r"(addr)
                     : "memory");
    if (rip)
        *rip = r;
    return FAULTED(n0);
}

/* call_safe: a fault inside the callee (or at the target itself: NX, NPT execute) resumes at the
 * continuation with RSP as it was at the call; the kernel's trap handler does that when call_safe_cont
 * is set (see call_safe_recover).  Callee-saved registers are saved around the call. */
u64 call_safe_rsp, call_safe_cont;
int call_safe(u64 target, u64 *rip)
{
    u64 n0 = last_fault.count, r;
    __asm__ volatile("push %%rbx\npush %%rbp\npush %%r12\npush %%r13\npush %%r14\npush %%r15\n"
                     "lea 1f(%%rip), %0\n"
                     "lea 2f(%%rip), %%rax\n"
                     "mov %%rax, call_safe_cont(%%rip)\n"
                     "mov %%rsp, call_safe_rsp(%%rip)\n"
                     "1: call *%1\n"
                     "2: movq $0, call_safe_cont(%%rip)\n"
                     "pop %%r15\npop %%r14\npop %%r13\npop %%r12\npop %%rbp\npop %%rbx\n"
                     : "=&r"(r)
                     : "r"(target)
                     : "rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "memory", "cc");
    if (rip)
        *rip = r;
    return FAULTED(n0);
}

bool call_safe_recover(struct trapframe *tf, u64 cr2)
{
    if (!call_safe_cont || (tf->cs & 3))
        return false;
    last_fault.count++;
    last_fault.vector = tf->vector;
    last_fault.error = tf->error;
    last_fault.cr2 = cr2;
    last_fault.rip = tf->rip;
    last_fault.cs = tf->cs;
    last_fault.frame = (u64)tf;
    tf->rip = call_safe_cont;
    tf->rsp = call_safe_rsp;
    call_safe_cont = 0;
    return true;
}

bool fixup_recover(struct trapframe *tf, u64 cr2)
{
    const struct fixup *f = find_fixup(tf->rip);
    if (!f || (tf->cs & 3))
        return false;
    last_fault.count++;
    last_fault.vector = tf->vector;
    last_fault.error = tf->error;
    last_fault.cr2 = cr2;
    last_fault.rip = tf->rip;
    last_fault.cs = tf->cs;
    last_fault.frame = (u64)tf;
    tf->rip = f->cont;
    return true;
}
