/*
 * Shared Multiboot v1 boot stub: 32-bit protected mode -> 64-bit long mode.
 *
 * Entered by the loader as Multiboot specifies: EAX=0x2BADB002, EBX=mbi
 * physical address, flat 32-bit CS/DS, paging off, interrupts off.
 * Builds a throw-away identity map of the first 1 GiB (2 MiB pages, RWX),
 * enables PAE + EFER.LME + CR0.PG, far-jumps to a 64-bit CS (0x08) and calls
 *     void kmain64(u32 magic, u32 mbi_phys)
 * on boot_stack (RDI=magic, RSI=mbi).  Boot GDT: 0x08 code64, 0x10 data,
 * 0x18 code32 (kernels install their own GDT later).
 */
#include "lib/multiboot.h"

#define BOOT_STACK_SIZE 0x8000

    .section .multiboot, "a"
    .align 4
multiboot_header:
    .long MULTIBOOT_HEADER_MAGIC
    .long MULTIBOOT_HEADER_FLAGS
    .long -(MULTIBOOT_HEADER_MAGIC + MULTIBOOT_HEADER_FLAGS)

    .section .boot32, "ax"
    .code32
    .globl _start
    .type _start, @function
_start:
    cli
    cld
    mov %eax, %edi                  /* magic */
    mov %ebx, %esi                  /* mbi */

    lgdt boot_gdt_ptr
    ljmp $0x18, $1f
1:  mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    mov %edi, boot_magic
    mov %esi, boot_mbi

    /* Zero .bss (the loader should have done it; do not rely on it). */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb
    mov $boot_stack_top, %esp

    /* Long mode available?  CPUID.80000001h:EDX.LM[29] */
    mov $0x80000000, %eax
    cpuid
    cmp $0x80000001, %eax
    jb no_long_mode
    mov $0x80000001, %eax
    cpuid
    bt $29, %edx
    jnc no_long_mode

    /* Identity map 0..1 GiB with 2 MiB pages: PML4[0] -> PDPT[0] -> PD. */
    movl $(boot_pdpt + 0x3), boot_pml4
    movl $(boot_pd + 0x3), boot_pdpt
    mov $boot_pd, %edi
    mov $0x83, %eax                 /* P | RW | PS */
    mov $512, %ecx
2:  mov %eax, (%edi)
    movl $0, 4(%edi)
    add $0x200000, %eax
    add $8, %edi
    loop 2b

    mov %cr4, %eax
    or $0x20, %eax                  /* CR4.PAE */
    mov %eax, %cr4
    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx           /* EFER.LME */
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax            /* CR0.PG | CR0.PE */
    mov %eax, %cr0
    ljmp $0x08, $long_mode_entry

no_long_mode:
    mov $no_lm_msg, %esi
3:  lodsb
    test %al, %al
    jz 5f
    mov %al, %bl
    mov $0x3fd, %dx                 /* COM1 LSR */
4:  in %dx, %al
    test $0x20, %al
    jz 4b
    mov $0x3f8, %dx
    mov %bl, %al
    out %al, %dx
    jmp 3b
5:  mov $0xf4, %dx
    mov $0xff, %eax
    out %eax, %dx
6:  cli
    hlt
    jmp 6b

    .code64
long_mode_entry:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    mov $boot_stack_top, %rsp
    xor %ebp, %ebp
    mov boot_magic(%rip), %edi
    mov boot_mbi(%rip), %esi
    call kmain64
7:  cli
    hlt
    jmp 7b
    .size _start, . - _start

    .section .rodata
no_lm_msg:
    .asciz "FATAL: CPU has no long mode\n"

    .data
    .align 16
boot_gdt:
    .quad 0
    .quad 0x00af9b000000ffff        /* 0x08: 64-bit code, DPL0 */
    .quad 0x00cf93000000ffff        /* 0x10: data, DPL0 */
    .quad 0x00cf9b000000ffff        /* 0x18: 32-bit code, DPL0 */
boot_gdt_end:
    .align 8
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt
boot_magic:
    .long 0
boot_mbi:
    .long 0

    .bss
    .align 4096
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4096
    .globl boot_stack_bottom, boot_stack_top
boot_stack_bottom:
    .skip BOOT_STACK_SIZE
boot_stack_top:
