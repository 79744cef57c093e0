/* Trap frames and the shared entry code (lib/isr.S, lib/entry.S). */
#ifndef GUEST_LIB_TRAP_H
#define GUEST_LIB_TRAP_H

#include "lib/types.h"

/* Built by isr_common / syscall_entry; 176 bytes, 16-byte aligned. */
struct trapframe {
    u64 r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
    u64 vector, error, rip, cs, rflags, rsp, ss;
};

struct kjmp {
    u64 rbx, rbp, r12, r13, r14, r15, rsp, rip;
};
int k_setjmp(struct kjmp *j) __attribute__((returns_twice));
NORETURN void k_longjmp(struct kjmp *j, int val);

/* lib/isr.S: 256 stubs of 16 bytes each; every one ends in the kernel's trap_dispatch(). */
extern char isr_stubs[];
void trap_dispatch(struct trapframe *tf);

/* lib/entry.S */
void syscall_entry(void);                             /* LSTAR: frame on syscall_kstack_top, SYSRET */
NORETURN void enter_user(u64 rip, u64 rsp, u64 arg); /* IRETQ to ring 3, RDI = arg, IF = 1 */

extern const char *const exc_names[32];

#endif
