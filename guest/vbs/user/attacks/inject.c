/*
 * Code injection (docs/attacks.md, family 6): make the kernel execute bytes the attacker wrote into
 * memory that holds data: a kernel .bss buffer, a page of the page pool (the kernel heap), the kernel
 * stack of the system call, and a writable+executable alias of the attacker's own page (ret2dir).
 *
 * The attacker owns VTL0's page tables: every attack first clears the NX bit of the page-table entry
 * that maps its shellcode, so VTL0's own W^X is no obstacle.  What is left is HVCI: VTL1 keeps every
 * VTL0 page that is not signed kernel text non-executable in the second-stage (NPT) tables, whatever
 * VTL0's page tables say.
 *
 * This file also holds the page-table helpers the other family 6-9 programs use (patch.c, module.c,
 * data.c declare them).
 */
#include "vbs/user/ulib.h"

/* ---- VTL0's page tables, walked and edited with the driver's read and write ---- */

/* VTL0's PML4 (kpt.pml4, the first field of struct pgtable). */
u64 uk_pml4(void) { return kread(ksym("kpt")); }

/* The kernel address of the leaf entry that maps va (4 KiB, 2 MiB or 1 GiB; *level = 1, 2 or 3), or 0.
 * Page-table pages are identity mapped (VA == PA), so an entry's address is also where to kwrite it. */
u64 uk_pte(u64 pml4, u64 va, int *level)
{
    u64 table = pml4;
    for (int l = 4; l >= 1; l--) {
        u64 slot = table + ((va >> (12 + 9 * (l - 1))) & 511) * 8;
        u64 e = kread(slot);
        if (!(e & PTE_P))
            return 0;
        if (l == 1 || (l <= 3 && (e & PTE_PS))) {
            if (level)
                *level = l;
            return slot;
        }
        table = e & PTE_ADDR;
    }
    return 0;
}

/* The physical address behind va in VTL0's page tables, or ~0 when unmapped. */
u64 uk_phys(u64 pml4, u64 va)
{
    int level;
    u64 slot = uk_pte(pml4, va, &level);
    if (!slot)
        return ~0ull;
    u64 e = kread(slot), span = 1ull << (12 + 9 * (level - 1));
    return (e & PTE_ADDR & ~(span - 1)) + (va & (span - 1));
}

/* Clear the NX bit of the entry that maps va ("the attacker owns VTL0's page tables"). */
void uk_make_exec(u64 pml4, u64 va)
{
    int level;
    u64 slot = uk_pte(pml4, va, &level);
    if (!slot)
        attack_error("0x%lx is not mapped", va);
    u64 e = kread(slot);
    kwrite(slot, e & ~PTE_NX);
    u_printf("  attack: PTE of 0x%lx (level %d, at 0x%lx): 0x%lx -> 0x%lx (NX cleared in VTL0's page tables)\n", va,
             level, slot, e, (u64)(e & ~PTE_NX));
}

/* Write n bytes at kernel address dst with the driver's 8-byte write (read-modify-write at the edges). */
void uk_write_bytes(u64 dst, const void *src, u64 n)
{
    const u8 *s = src;
    for (u64 w = dst & ~7ull; w < dst + n; w += 8) {
        u64 v = (w < dst || w + 8 > dst + n) ? kread(w) : 0;
        u8 *b = (u8 *)&v;
        for (int i = 0; i < 8; i++)
            if (w + (u64)i >= dst && w + (u64)i < dst + n)
                b[i] = s[w + (u64)i - dst];
        kwrite(w, v);
    }
}

/* ---- the shellcode: mov %rdi,%rax; xor $INJECT_MAGIC,%rax; ret (returns its argument ^ the magic) ---- */
#define INJECT_MAGIC 0x5eedc0deull
#define INJECT_NONCE 0x4a11c0de00c0ffeeull
const u8 uk_shellcode[16] = {0x48, 0x89, 0xf8, 0x48, 0x35, 0xde, 0xc0, 0xed, 0x5e, 0xc3,
                             0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc};

/* Call the shellcode at va through the driver and judge by its result. */
static NORETURN void run_shellcode(u64 va, const char *where)
{
    u_printf("  attack: calling the shellcode at 0x%lx (%s) with 0x%lx\n", va, where, (u64)INJECT_NONCE);
    long r = kcall(va, INJECT_NONCE); /* with HVCI: the fetch is a GpaIntercept (execute): #GP, we are killed */
    if ((u64)r == (INJECT_NONCE ^ INJECT_MAGIC))
        attack_succeeded("kernel executed injected code in %s at 0x%lx (returned 0x%lx = nonce ^ 0x%llx)", where, va,
                         (u64)r, INJECT_MAGIC);
    attack_blocked("shellcode at 0x%lx did not run (returned 0x%lx)", va, (u64)r);
}

/* Write the shellcode with the driver, make its page executable in VTL0's page tables, call it. */
static NORETURN void inject_at(u64 va, const char *where, bool need_free)
{
    u64 pml4 = uk_pml4();
    if (need_free && (kread(va) != 0 || kread(va + 8) != 0))
        attack_error("target 0x%lx in %s is not free (0x%lx)", va, where, kread(va));
    u_printf("  attack: uid %ld; writing 10 bytes of shellcode into %s at 0x%lx\n", u_getuid(), where, va);
    uk_write_bytes(va, uk_shellcode, sizeof(uk_shellcode));
    if (kread(va) != *(const u64 *)uk_shellcode)
        attack_error("shellcode did not land at 0x%lx", va);
    uk_make_exec(pml4, va);
    run_shellcode(va, where);
}

/*
 * inject-data: LKDTM EXEC_DATA: run code placed in a kernel data object (.bss).  The object is the
 * unused tail of the /proc/kallsyms buffer (a global char array of the kernel).
 */
static int attack_inject_data(const char *args)
{
    (void)args;
    u64 buf = ksym("kallsyms_text");
    if (!buf)
        attack_error("missing symbols");
    inject_at(buf + 0x1f00, "kernel .bss (kallsyms_text)", true);
}
UATTACK("inject-data", attack_inject_data);

/*
 * inject-heap: LKDTM EXEC_KMALLOC: run code placed in kernel heap memory, here a page of VTL0's page
 * pool (POOL_START..POOL_END, kernel.h), identity mapped RW+NX: the top page, which nothing allocated.
 */
static int attack_inject_heap(const char *args)
{
    (void)args;
    inject_at(POOL_END - 0x1000 + 0x40, "the page pool (kernel heap)", true);
}
UATTACK("inject-heap", attack_inject_heap);

/*
 * inject-stack: LKDTM EXEC_STACK: run code placed on the kernel stack of the running system call
 * (the SYSCALL entry stack, syscall_kstack_top), 12 KiB below its top, deeper than the driver's frames.
 */
static int attack_inject_stack(const char *args)
{
    (void)args;
    u64 top = kread(ksym("syscall_kstack_top")), base = ksym("rsp0_stack");
    if (!top || !base || top <= base + 0x3000)
        attack_error("kernel stack not found (top 0x%lx, rsp0_stack 0x%lx)", top, base);
    u_printf("  attack: kernel stack of the system call 0x%lx-0x%lx\n", base, top);
    inject_at((top - 0x3000) & ~15ull, "the kernel stack of the system call", false);
}
UATTACK("inject-stack", attack_inject_stack);

/*
 * inject-wx: ret2dir (Kemerlis et al., "ret2dir: Rethinking Kernel Isolation", USENIX Security 2014)
 * as a write-then-execute through one writable+executable mapping: the attacker writes the shellcode
 * into its OWN user page with ordinary stores (no kernel write), finds the page's alias in the kernel's
 * physmap (PHYSMAP_BASE + pa: the Linux direct map, RW), clears NX in the physmap's 2 MiB entry (the
 * alias is now W+X) and has the kernel call the alias.  SMEP and SMAP do not apply: the alias is a
 * kernel address.
 */
static int attack_inject_wx(const char *args)
{
    (void)args;
    u64 pml4 = uk_pml4();
    u8 *page = (u8 *)U_SCRATCH;
    memcpy(page, uk_shellcode, sizeof(uk_shellcode));
    u64 pa = uk_phys(pml4, (u64)page);
    if (pa == ~0ull)
        attack_error("own page not mapped?");
    u64 alias = PHYSMAP_BASE + pa;
    u_printf("  attack: uid %ld; shellcode in my own page 0x%lx (pa 0x%lx); kernel alias 0x%lx\n", u_getuid(),
             (u64)page, pa, alias);
    if (kread(alias) != *(const u64 *)uk_shellcode)
        attack_error("physmap alias 0x%lx does not show my page", alias);
    uk_make_exec(pml4, alias);
    run_shellcode(alias, "the physmap alias of a user page (W+X)");
}
UATTACK("inject-wx", attack_inject_wx);

/*
 * inject-ptpool: shellcode in a page of VTL0's page-table pool (PT_POOL_START..PT_POOL_END), which VTL1
 * must leave R+W+X in the NPT (docs/guest.md, vtlvisor caveat 1).  Not a matrix row: it is the known hole
 * that workaround opens in HVCI (it succeeds with HVCI on).  Uses the pool's last page (unused at run time).
 */
static int attack_inject_ptpool(const char *args)
{
    (void)args;
    inject_at(PT_POOL_END - 0x1000 + 0x40, "VTL0's page-table pool", true);
}
UATTACK("inject-ptpool", attack_inject_ptpool);
