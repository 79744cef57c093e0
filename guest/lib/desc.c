/* GDT (kernel/user code+data, TSS), TSS stacks, IDT, SYSCALL MSRs. */
#include "lib/desc.h"
#include "lib/msr.h"
#include "lib/string.h"
#include "lib/trap.h"

struct tss64 {
    u32 reserved0;
    u64 rsp[3];
    u64 reserved1;
    u64 ist[7];
    u64 reserved2;
    u16 reserved3;
    u16 iomap_base;
} PACKED;

struct idt_gate {
    u16 off_lo;
    u16 sel;
    u8 ist;
    u8 type_attr;
    u16 off_mid;
    u32 off_hi;
    u32 zero;
} PACKED;

/* Accessed bits preset so the CPU never writes the GDT on segment loads. */
u64 gdt_table[8] ALIGNED(16) __ro_after_init = {
    0,
    0x00af9b000000ffffull, /* 0x08 kernel code 64 */
    0x00cf93000000ffffull, /* 0x10 kernel data */
    0x00cffb000000ffffull, /* 0x18 user code 32 (SYSRET base, unused) */
    0x00cff3000000ffffull, /* 0x20 user data */
    0x00affb000000ffffull, /* 0x28 user code 64 */
    0,                     /* 0x30 TSS low  */
    0,                     /* 0x38 TSS high */
};
static struct tss64 tss ALIGNED(16) __ro_after_init;
static struct idt_gate idt[256] ALIGNED(16) __ro_after_init;
struct desc_ptr gdt_ptr __ro_after_init, idt_ptr __ro_after_init;

char rsp0_stack[STACK_SIZE] ALIGNED(16);
char ist1_stack[STACK_SIZE] ALIGNED(16);
u64 syscall_kstack_top;

static void set_gate(int vec, u8 type_attr, u8 ist)
{
    u64 off = (u64)isr_stubs + 16ull * vec;
    idt[vec] = (struct idt_gate){
        .off_lo = (u16)off,
        .sel = SEL_KCODE,
        .ist = ist,
        .type_attr = type_attr,
        .off_mid = (u16)(off >> 16),
        .off_hi = (u32)(off >> 32),
    };
}

u8 idt_gate_ist(int vec) { return idt[vec].ist & 7; }

void desc_init(void)
{
    /* TSS: RSP0 for ring 3 -> 0 transitions, IST1 for #DF (and the test gate). */
    memset(&tss, 0, sizeof(tss));
    tss.rsp[0] = RSP0_TOP;
    tss.ist[0] = IST1_TOP;
    tss.iomap_base = sizeof(tss); /* no I/O bitmap: ring 3 IN/OUT -> #GP */
    u64 base = (u64)&tss, limit = sizeof(tss) - 1;
    gdt_table[6] = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x89ull << 40) | (((limit >> 16) & 0xf) << 48) |
                   (((base >> 24) & 0xff) << 56);
    gdt_table[7] = base >> 32;

    gdt_ptr = (struct desc_ptr){sizeof(gdt_table) - 1, (u64)gdt_table};
    __asm__ volatile("lgdt %0\n\t"
                     "pushq %1\n\t"
                     "leaq 1f(%%rip), %%rax\n\t"
                     "pushq %%rax\n\t"
                     "lretq\n"
                     "1:\n\t"
                     "mov %2, %%eax\n\t"
                     "mov %%eax, %%ds\n\t"
                     "mov %%eax, %%es\n\t"
                     "mov %%eax, %%ss\n\t"
                     "xor %%eax, %%eax\n\t"
                     "mov %%eax, %%fs\n\t"
                     "mov %%eax, %%gs\n\t"
                     :
                     : "m"(gdt_ptr), "i"(SEL_KCODE), "i"(SEL_KDATA)
                     : "rax", "memory");
    __asm__ volatile("ltr %w0" : : "r"(SEL_TSS));

    /* IDT: every vector gets a stub; interrupt gates (IF cleared), DPL0. */
    for (int v = 0; v < 256; v++)
        set_gate(v, 0x8e, 0);
    set_gate(VEC_DF, 0x8e, 1);
    set_gate(VEC_IST_TEST, 0x8e, 1);
    set_gate(VEC_SYSCALL_INT, 0xee, 0); /* DPL3: reachable with int 0x80 from ring 3 */
    idt_ptr = (struct desc_ptr){sizeof(idt) - 1, (u64)idt};
    __asm__ volatile("lidt %0" : : "m"(idt_ptr));

    /* SYSCALL/SYSRET */
    syscall_kstack_top = RSP0_TOP;
    wrmsr(MSR_STAR, ((u64)SEL_UCODE32 << 48) | ((u64)SEL_KCODE << 32));
    wrmsr(MSR_LSTAR, (u64)syscall_entry);
    wrmsr(MSR_CSTAR, 0);
    wrmsr(MSR_SFMASK, 0x47700); /* IF TF DF AC NT */
    wrmsr(MSR_EFER, rdmsr(MSR_EFER) | EFER_SCE);
}
