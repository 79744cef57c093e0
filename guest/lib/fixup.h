/* Expected-fault recovery: a fixup table of (faulting insn, continuation) pairs, and the fault record
 * kernels fill in when they resume through it. */
#ifndef GUEST_LIB_FIXUP_H
#define GUEST_LIB_FIXUP_H

#include "lib/types.h"

/* Fixup table: "1:" faulting insn, "2:" continuation.  Both link scripts collect .fixup_table between
 * __fixup_start and __fixup_end. */
struct fixup {
    u64 insn, cont;
};
extern const struct fixup __fixup_start[], __fixup_end[];
#define FIXUP_ENTRY(from, to) ".pushsection .fixup_table, \"a\"\n.balign 8\n.quad " from ", " to "\n.popsection\n"

struct fault_record {
    volatile u64 count, vector, error, rip, cr2, cs, frame;
};
extern struct fault_record last_fault; /* expected kernel-mode exceptions */

const struct fixup *find_fixup(u64 rip);
void reset_fault(void);

/* 0, or the vector of the exception the instruction took (resumed after it); rip: the instruction. */
int rdmsr_safe(u32 msr, u64 *val, u64 *rip);
int wrmsr_safe(u32 msr, u64 val, u64 *rip);
int write_cr0_safe(u64 v, u64 *rip);
int write_cr4_safe(u64 v, u64 *rip);
int read_u64_safe(u64 addr, u64 *val, u64 *rip);
int write_u64_safe(u64 addr, u64 val, u64 *rip);
int write_u8_safe(u64 addr, u8 val, u64 *rip);
int call_safe(u64 target, u64 *rip); /* call target (no args); 0 if it returned; rip: the call */

/* For the kernels' trap handlers: record the fault in last_fault and resume (true) if the kernel-mode
 * fault is at a fixup-table instruction / inside call_safe. */
struct trapframe;
bool fixup_recover(struct trapframe *tf, u64 cr2);
bool call_safe_recover(struct trapframe *tf, u64 cr2);

#endif
