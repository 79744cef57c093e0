/* GDT/TSS/IDT layout shared by the VTL0 kernels (test kernel, VBS kernel). */
#ifndef GUEST_LIB_DESC_H
#define GUEST_LIB_DESC_H

/* Selectors (kernel GDT; layout chosen for SYSCALL/SYSRET). */
#define SEL_KCODE 0x08
#define SEL_KDATA 0x10
#define SEL_UCODE32 0x18 /* STAR[63:48] base: SYSRET SS=base+8, CS=base+16 */
#define SEL_UDATA 0x20
#define SEL_UCODE 0x28
#define SEL_TSS 0x30

/* Interrupt vectors. */
#define VEC_DF 8
#define VEC_GP 13
#define VEC_PF 14
#define VEC_TIMER 0x20
#define VEC_PIC_BASE 0x30 /* 8259 remapped here (and masked) */
#define VEC_IST_TEST 0x41 /* software-only gate on IST1 (same IST as #DF) */
#define VEC_SYSCALL_INT 0x80
#define VEC_SPURIOUS 0xff
#define VEC_SYSCALL_INSN 0x100 /* pseudo vector for frames built by syscall_entry */

#define STACK_SIZE 0x4000

/* Section for data written during boot only (the VBS kernel makes it read-only at the end of boot;
 * other link scripts fold it into .data). */
#define __ro_after_init __attribute__((section(".data..ro_after_init")))

#ifndef __ASSEMBLER__
#include "lib/types.h"

struct desc_ptr {
    u16 limit;
    u64 base;
} PACKED;

extern char rsp0_stack[], ist1_stack[];
#define RSP0_TOP ((u64)rsp0_stack + STACK_SIZE)
#define IST1_TOP ((u64)ist1_stack + STACK_SIZE)
extern u64 syscall_kstack_top;
/* GDT (with TSS: RSP0, IST1), 256-gate IDT (isr_stubs; #DF and VEC_IST_TEST on IST1, int 0x80 DPL3),
 * SYSCALL MSRs (LSTAR = syscall_entry), EFER.SCE.  GDT, TSS and IDT live in .data..ro_after_init. */
void desc_init(void);
u8 idt_gate_ist(int vec);
extern u64 gdt_table[8];
extern struct desc_ptr gdt_ptr, idt_ptr;
#endif

#endif
