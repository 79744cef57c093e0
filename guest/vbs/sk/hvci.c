/*
 * HVCI and the boot hand-off: LOAD_KDATA (validate the boot parameters, verify the VTL0 kernel's
 * signature, make its text the only VTL0-executable memory, protect the kCFG bitmap) and
 * VALIDATE_MODULE (verify a module's signature, link it privately, compare, make its text executable,
 * register its kCFG targets).
 */
#include "lib/ed25519.h"
#include "lib/kmod.h"
#include "lib/string.h"
#include "vbs/sk/sk.h"

struct vbs_boot_params bp;

#define RX (HV_MAP_GPA_READABLE | HV_MAP_GPA_EXECUTABLE)
#define R HV_MAP_GPA_READABLE
#define RW (HV_MAP_GPA_READABLE | HV_MAP_GPA_WRITABLE)
#define PAGES(a, b) (((b) - (a)) / 4096)

static bool aligned(u64 v) { return !(v & 0xfff); }
bool sk_in_kdp(u64 gpa);

struct module_rec {
    u64 start, text_end, end;
};
#define NMOD 16
static struct module_rec mods[NMOD];
static int nmods;

const char *sk_label(u64 gpa)
{
    if (gpa >= SK_BASE && gpa < SK_BASE + SK_REGION_SIZE)
        return gpa >= (u64)__sk_secret && gpa < (u64)__sk_secret + 4096 ? "VTL1 memory: the credential key"
                                                                          : "VTL1 memory";
    if (sk_phase == 0)
        return "";
    if (gpa >= bp.kernel_start && gpa < bp.text_end)
        return "kernel text (HVCI)";
    if (gpa >= bp.kcfg_start && gpa < bp.kcfg_end)
        return "kCFG bitmap";
    if (gpa >= bp.text_end && gpa < bp.signed_end)
        return "kernel rodata (HVCI)";
    if (gpa >= bp.hvcall_page && gpa < bp.hvcall_page + 4096)
        return "hypercall page";
    if (gpa >= bp.ro_after_init_start && gpa < bp.ro_after_init_end)
        return "ro_after_init (KDP)";
    if (sk_in_kdp(gpa))
        return "registered data (KDP)";
    for (int i = 0; i < nmods; i++)
        if (gpa >= mods[i].start && gpa < mods[i].end)
            return gpa < mods[i].text_end ? "module text (HVCI)" : "module data";
    if (gpa >= bp.module_base && gpa < bp.module_base + bp.module_size)
        return "module area (not validated)";
    if (gpa >= bp.pt_pool_start && gpa < bp.pt_pool_end)
        return "VTL0 page tables";
    return "VTL0 memory (HVCI: not executable)";
}

static bool check_params(void)
{
    const struct vbs_boot_params *p = &bp;
    if (p->magic != VBS_BOOT_MAGIC || p->ram_top > 0x40000000ull || p->ram_top < SK_SECURE_BASE + SK_SECURE_SIZE)
        return false;
    vtl0_ram_top = p->ram_top;
    u64 a[] = {p->kernel_start, p->text_end, p->signed_end, p->kcfg_start, p->kcfg_end, p->hvcall_page, p->kernsig,
               p->ro_after_init_start, p->ro_after_init_end, p->module_base, p->module_size};
    for (u64 i = 0; i < ARRAY_SIZE(a); i++)
        if (!aligned(a[i]))
            return false;
    if (!(p->kernel_start >= 0x100000 && p->kernel_start < p->text_end && p->text_end < p->signed_end &&
          p->text_end <= p->kcfg_start && p->kcfg_start < p->kcfg_end && p->kcfg_end <= p->signed_end &&
          p->kcfg_end - p->kcfg_start == sizeof(struct vbs_kcfg)))
        return false;
    if (!vtl0_range_ok(p->kernel_start, p->signed_end - p->kernel_start) || !vtl0_range_ok(p->hvcall_page, 4096) ||
        !vtl0_range_ok(p->kernsig, 4096) || !vtl0_range_ok(p->module_base, p->module_size))
        return false;
    if (p->hvcall_page < p->signed_end && p->hvcall_page + 4096 > p->kernel_start)
        return false;
    if (p->kernsig < p->signed_end && p->kernsig + 4096 > p->kernel_start)
        return false;
    if (p->ro_after_init_end < p->ro_after_init_start || p->ro_after_init_start < p->signed_end ||
        (p->ro_after_init_end > p->ro_after_init_start &&
         !vtl0_range_ok(p->ro_after_init_start, p->ro_after_init_end - p->ro_after_init_start)))
        return false;
    if (p->module_base < p->signed_end && p->module_base + p->module_size > p->kernel_start)
        return false;
    if (p->pt_pool_end <= p->pt_pool_start || !aligned(p->pt_pool_start) || !aligned(p->pt_pool_end) ||
        p->pt_pool_end - p->pt_pool_start > 0x100000 || !vtl0_range_ok(p->pt_pool_start, p->pt_pool_end - p->pt_pool_start) ||
        (p->pt_pool_start < p->signed_end && p->pt_pool_end > p->kernel_start) ||
        (p->pt_pool_start < p->module_base + p->module_size && p->pt_pool_end > p->module_base))
        return false;
    if (p->module_size > KCFG_SPAN || p->n_exports > 4096 ||
        p->exports < p->text_end || p->exports + p->n_exports * sizeof(struct kexport) > p->signed_end)
        return false;
    return true;
}

static bool verify_kernel(void)
{
    struct vbs_kernel_sig ks;
    memcpy(&ks, (const void *)bp.kernsig, sizeof(ks));
    if (memcmp(ks.magic, VBS_KSIG_MAGIC, 15) || ks.start != bp.kernel_start || ks.end != bp.signed_end) {
        SK_LOG("hvci: kernel signature block missing or for another range\n");
        return false;
    }
    u64 hdr[2] = {ks.start, ks.end};
    struct ed25519_piece pieces[2] = {{(const u8 *)hdr, 16}, {(const u8 *)ks.start, ks.end - ks.start}};
    return ed25519_verify_pieces(ks.sig, (const u8 *)sk_sign_pub, pieces, 2);
}

long sk_load_kdata(u64 gpa, u64 *out)
{
    if (sk_phase != 0)
        return -VBS_EPERM;
    if (!vtl0_range_ok(gpa, sizeof(bp)))
        return -VBS_EINVAL;
    memcpy(&bp, (const void *)gpa, sizeof(bp)); /* copy first: VTL0 cannot change what VTL1 checks */
    if (!check_params()) {
        SK_LOG("LOAD_KDATA: bad boot parameters\n");
        memset(&bp, 0, sizeof(bp));
        return -VBS_EINVAL;
    }
    sk_phase = 1;
    sk_requested = (u32)bp.features & VBS_F_ALL;
    SK_LOG("LOAD_KDATA: kernel 0x%lx-0x%lx (text -0x%lx), ro_after_init 0x%lx-0x%lx, modules 0x%lx-0x%lx, "
           "requested 0x%x\n", bp.kernel_start, bp.signed_end - 1, bp.text_end - 1, bp.ro_after_init_start,
           bp.ro_after_init_end - 1, bp.module_base, bp.module_base + bp.module_size - 1, sk_requested);
    if (sk_requested & VBS_F_HVCI) {
        u64 s = bp.kernel_start, t = bp.text_end, e = bp.signed_end;
        /* freeze the image (R only) before verifying it, so that what is verified is what will run */
        if (sk_protect(s, PAGES(s, e), R, "image"))
            return -VBS_EFAULT;
        if (!verify_kernel()) {
            sk_protect(s, PAGES(s, e), 0xf, "image");
            SK_LOG("hvci: kernel signature BAD: HVCI not armed\n");
            return -VBS_EKEYREJECTED;
        }
        int hvpage = sk_hvcall_page_state(); /* domains: no hypercall page, the page is plain data */
        if (hvpage < 0) {
            sk_protect(s, PAGES(s, e), 0xf, "image");
            SK_LOG("hvci: VTL0 hypercall page does not hold the hypervisor's code: HVCI not armed\n");
            return -VBS_EINVAL;
        }
        sk_protect(s, PAGES(s, t), RX | SK_PROT_ONEWAY, "text");
        if (hvpage > 0)
            sk_protect(bp.hvcall_page, 1, RX, "hvcall");
        sk_protect(bp.kernsig, 1, R, "kernsig");
        /* everything else VTL0 owns: readable and writable, never executable */
        int st = sk_set_default_protection(RW);
        if (st) {
            SK_LOG("hvci: default protection (VsmPartitionConfig) failed: status 0x%x\n", st);
            return -VBS_EFAULT;
        }
        sk_armed |= VBS_F_HVCI;
        SK_LOG("hvci: kernel signature ok (Ed25519, 0x%lx bytes); text 0x%lx-0x%lx R+X, rodata 0x%lx-0x%lx R, "
               "all other VTL0 memory RW+NX (default mask), page tables 0x%lx-0x%lx included\n",
               e - s, s, t - 1, t, e - 1, bp.pt_pool_start, bp.pt_pool_end - 1);
    }
    if (sk_requested & VBS_F_KCFG) {
        if (sk_protect(bp.kcfg_start, PAGES(bp.kcfg_start, bp.kcfg_end), R | SK_PROT_ONEWAY, "kcfg"))
            return -VBS_EFAULT;
        sk_armed |= VBS_F_KCFG;
        SK_LOG("kcfg: bitmap 0x%lx-0x%lx read-only for VTL0\n", bp.kcfg_start, bp.kcfg_end - 1);
    }
    sk_armed |= sk_requested & (VBS_F_KDP | VBS_F_CREDGUARD);
    *out = sk_armed;
    return 0;
}

/* ---- modules */
static u8 modbuf[256 * 1024];
static u8 linkbuf[256 * 1024];

static u64 resolve_export(const char *name, void *ctx)
{
    (void)ctx;
    const struct kexport *ex = (const void *)bp.exports;
    for (u64 i = 0; i < bp.n_exports; i++) {
        u64 n = (u64)ex[i].name;
        if (n < bp.kernel_start || n >= bp.signed_end)
            continue; /* names live in the verified image */
        u64 max = bp.signed_end - n;
        if (strnlen((const char *)n, max) == max)
            continue;
        if (!strcmp((const char *)n, name))
            return ex[i].addr;
    }
    return 0;
}

static void kcfg_set(u64 va)
{
    struct vbs_kcfg *k = (void *)bp.kcfg_start;
    u64 i = (va - bp.module_base) / 16;
    k->module[i / 8] |= (u8)(1u << (i % 8));
}

long sk_validate_module(u64 img, u64 len, u64 load, u64 pages, u64 *init)
{
    if (sk_phase == 0 || !(sk_armed & (VBS_F_HVCI | VBS_F_KCFG)))
        return -VBS_ENOSYS;
    u64 size = pages * 4096;
    if (len > sizeof(modbuf) || len < VBS_MODSIG_MAGIC_LEN || !vtl0_range_ok(img, len) || !aligned(load) ||
        pages == 0 || size > sizeof(linkbuf) || load < bp.module_base || load + size > bp.module_base + bp.module_size)
        return -VBS_EINVAL;
    for (int i = 0; i < nmods; i++)
        if (load < mods[i].end && mods[i].start < load + size)
            return -VBS_EBUSY;
    if (nmods >= NMOD)
        return -VBS_ENOSPC;
    bool hvci = sk_armed & VBS_F_HVCI;
    /* freeze the pages VTL0 prepared, then work on a private copy of the image */
    if (hvci && sk_protect(load, pages, R, "module"))
        return -VBS_EFAULT;
    memcpy(modbuf, (const void *)img, len);
    long err = 0;
    struct kmod_layout L;
    const struct vbs_modsig *ms = (const void *)(modbuf + len - VBS_MODSIG_MAGIC_LEN - sizeof(*ms));
    if (len < VBS_MODSIG_MAGIC_LEN + sizeof(*ms) ||
        memcmp(modbuf + len - VBS_MODSIG_MAGIC_LEN, VBS_MODSIG_MAGIC, VBS_MODSIG_MAGIC_LEN) ||
        ms->algo != VBS_MODSIG_ED25519 || ms->signed_len != len - VBS_MODSIG_MAGIC_LEN - sizeof(*ms)) {
        SK_LOG("hvci: module at 0x%lx refused: not signed\n", load);
        err = -VBS_ENOKEY;
        goto fail;
    }
    if (!ed25519_verify(ms->sig, (const u8 *)sk_sign_pub, modbuf, ms->signed_len)) {
        SK_LOG("hvci: module at 0x%lx refused: bad signature\n", load);
        err = -VBS_EKEYREJECTED;
        goto fail;
    }
    if ((err = kmod_layout(modbuf, ms->signed_len, &L)) || L.total > size) {
        SK_LOG("hvci: module at 0x%lx refused: bad ELF layout\n", load);
        err = err ? err : -VBS_EINVAL;
        goto fail;
    }
    memset(linkbuf, 0, L.data_off);
    if ((err = kmod_link(modbuf, ms->signed_len, &L, linkbuf, load, KMOD_TEXT | KMOD_RO, resolve_export, NULL))) {
        SK_LOG("hvci: module at 0x%lx refused: link failed (%ld)\n", load, err);
        goto fail;
    }
    if (memcmp(linkbuf, (const void *)load, L.data_off)) {
        SK_LOG("hvci: module at 0x%lx refused: VTL0's text/rodata differ from the signed image\n", load);
        err = -VBS_EBADMSG;
        goto fail;
    }
    u64 entry = kmod_section_u64(&L, linkbuf, L.modinit_sec, 0);
    if (entry < load || entry >= load + L.ro_off) {
        err = -VBS_ENOEXEC;
        goto fail;
    }
    for (u64 i = 0; i < L.kcfg_count; i++) {
        u64 t = kmod_section_u64(&L, linkbuf, L.kcfg_sec, i);
        if (t < load || t >= load + L.ro_off || (t & 15)) {
            err = -VBS_ENOEXEC;
            goto fail;
        }
    }
    if (hvci) {
        if (L.ro_off)
            sk_protect(load, L.ro_off / 4096, RX, "module text"); /* [ro_off, data_off) stays R */
        if (size > L.data_off)
            sk_protect(load + L.data_off, (size - L.data_off) / 4096, RW, "module data");
    }
    if (sk_armed & VBS_F_KCFG) {
        if (!(entry & 15))
            kcfg_set(entry);
        for (u64 i = 0; i < L.kcfg_count; i++)
            kcfg_set(kmod_section_u64(&L, linkbuf, L.kcfg_sec, i));
    }
    mods[nmods++] = (struct module_rec){load, load + L.ro_off, load + size};
    SK_LOG("hvci: module at 0x%lx: signature ok, relinked and compared; text 0x%lx-0x%lx %s, %lu kCFG target%s\n",
           load, load, load + L.ro_off - 1, hvci ? "R+X" : "(HVCI off)", L.kcfg_count + 1,
           L.kcfg_count ? "s" : "");
    *init = entry;
    return 0;
fail:
    if (hvci)
        sk_protect(load, pages, RW, "module");
    return err;
}
