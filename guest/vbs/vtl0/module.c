/*
 * Module loader: find <module_dir><name>.ko in the file table, lay it out and link it into the module
 * area (lib/kmod.c), have VTL1 validate it (signature, private relink and compare; then its text
 * becomes executable and its kCFG targets valid), map it and call its init through kCFG.  Without
 * VTL1 the kernel checks the signature itself (module_sig_enforce) and sets the kCFG bits.
 */
#include "lib/ed25519.h"
#include "lib/kmod.h"
#include "lib/string.h"
#include "vbs/vtl0/kernel.h"

char *module_dir __ro_after_init; /* "/lib/modules/": a page of its own, registered with KDP at run time */
static u64 mod_next = MODULE_BASE;
extern const u8 vtl0_sign_pub[];

void module_init_dir(void)
{
    char *p = (char *)page_alloc();
    strcpy(p, "/lib/modules/");
    module_dir = p;
}

static u64 resolve(const char *name, void *ctx)
{
    (void)ctx;
    for (const struct kexport *e = (const void *)__kexports_start; e < (const struct kexport *)__kexports_end; e++)
        if (!strcmp(e->name, name))
            return e->addr;
    return 0;
}

/* signed_len of the trailer, or -ENOKEY; with check, -EKEYREJECTED for a bad signature */
static long modsig(const u8 *img, u64 len, bool check)
{
    const struct vbs_modsig *ms = (const void *)(img + len - VBS_MODSIG_MAGIC_LEN - sizeof(*ms));
    if (len < VBS_MODSIG_MAGIC_LEN + sizeof(*ms) ||
        memcmp(img + len - VBS_MODSIG_MAGIC_LEN, VBS_MODSIG_MAGIC, VBS_MODSIG_MAGIC_LEN) ||
        ms->algo != VBS_MODSIG_ED25519 || ms->signed_len != len - VBS_MODSIG_MAGIC_LEN - sizeof(*ms))
        return -VBS_ENOKEY;
    if (check && !ed25519_verify(ms->sig, vtl0_sign_pub, img, ms->signed_len))
        return -VBS_EKEYREJECTED;
    return ms->signed_len;
}

long module_load(const char *name, u64 *init_ret)
{
    char path[96];
    ksnprintf(path, sizeof(path), "%s%s.ko", module_dir, name);
    const struct file *f = file_lookup(path);
    if (!f)
        return -ENOENT;
    const u8 *img = f->data;
    u64 len = f->size;
    bool by_vtl1 = vbs.armed & (VBS_F_HVCI | VBS_F_KCFG);
    long sl = modsig(img, len, !by_vtl1 && vbs.module_sig_enforce);
    if (sl == -VBS_EKEYREJECTED || (sl < 0 && !by_vtl1 && vbs.module_sig_enforce)) {
        kprintf("  module: %s refused by VTL0: %s\n", path, sl == -VBS_ENOKEY ? "not signed" : "bad signature");
        return sl;
    }
    u64 elf_len = sl > 0 ? (u64)sl : len;
    struct kmod_layout L;
    long r = kmod_layout(img, elf_len, &L);
    if (r)
        return r;
    u64 load = mod_next, pages = L.total / 4096;
    if (load + L.total > MODULE_BASE + MODULE_SIZE)
        return -VBS_ENOSPC;
    for (u64 i = 0; i < pages; i++)
        map_page(load + i * 4096, load + i * 4096, PTE_W | PTE_NX);
    memset((void *)load, 0, L.total);
    r = kmod_link(img, elf_len, &L, (u8 *)load, load, KMOD_TEXT | KMOD_RO | KMOD_DATA, resolve, NULL);
    if (r)
        return r;
    u64 init;
    if (by_vtl1) {
        struct vbs_ret v = vbs_call(VBS_CALL_VALIDATE_MODULE, (u64)img, len, load, pages);
        if (v.status) {
            kprintf("  module: %s refused by VTL1: status %ld\n", path, v.status);
            return v.status;
        }
        init = v.r[0];
    } else {
        init = kmod_section_u64(&L, (const u8 *)load, L.modinit_sec, 0);
        kcfg_set_module_target(init);
        for (u64 i = 0; i < L.kcfg_count; i++)
            kcfg_set_module_target(kmod_section_u64(&L, (const u8 *)load, L.kcfg_sec, i));
    }
    for (u64 a = load; a < load + L.ro_off; a += 4096)
        map_page(a, a, 0); /* text: R+X */
    for (u64 a = load + L.ro_off; a < load + L.data_off; a += 4096)
        map_page(a, a, PTE_NX);
    mod_next += L.total;
    kprintf("  module: %s at 0x%lx (text 0x%lx bytes, %s), init 0x%lx\n", path, load, L.ro_off,
            by_vtl1 ? "validated by VTL1" : vbs.module_sig_enforce ? "signature checked by VTL0" : "unchecked", init);
    bool blocked;
    int ir = (int)kcfg_icall(init, 0, "module init", &blocked);
    *init_ret = init;
    return blocked ? -EPERM : ir;
}

/* Hooks: module callbacks the kernel calls indirectly (through kCFG). */
struct hook {
    char name[16];
    long (*fn)(long);
};
static struct hook hooks[8];

long vbs_register_hook(const char *name, long (*fn)(long))
{
    for (u64 i = 0; i < ARRAY_SIZE(hooks); i++)
        if (!hooks[i].fn) {
            strncpy(hooks[i].name, name, sizeof(hooks[i].name) - 1);
            hooks[i].fn = fn;
            return 0;
        }
    return -VBS_ENOSPC;
}

long vbs_call_hook(const char *name, long arg, bool *found)
{
    *found = false;
    for (u64 i = 0; i < ARRAY_SIZE(hooks); i++)
        if (hooks[i].fn && !strcmp(hooks[i].name, name)) {
            *found = true;
            bool blocked;
            long r = (long)kcfg_icall((u64)hooks[i].fn, (u64)arg, "module hook", &blocked);
            return blocked ? -EPERM : r;
        }
    return -ENOENT;
}

KEXPORT(kprintf);
KEXPORT(vbs_register_hook);
KEXPORT(memcpy);
KEXPORT(memset);
KEXPORT(strlen);
