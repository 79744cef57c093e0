/*
 * VTL0 side of VSM: Hyper-V detection, loading and starting the secure kernel (EnablePartitionVtl,
 * EnableVpVtl), the VTL-call wrapper, KDP registration and the credential service.
 *
 * The same services run on either design (design=vsm|domains on the command line, else whichever the
 * hypervisor offers, Hyper-V VSM first): with capability-scoped domains (docs/domains.md) the kernel is
 * the boot domain; it loads one instance of the secure kernel per feature (HVCI+kCFG, KDP, HyperGuard,
 * credentials), gives each only the capabilities it needs, routes every service call to the domain that
 * implements it, and at the end of boot drops every capability it held except CALL on those domains.
 * vbs.vsm then means "a secure component answers vbs_call", in both designs.
 */
#include "lib/cpuid.h"
#include "lib/hyperv.h"
#include "lib/io.h"
#include "lib/msr.h"
#include "lib/sha256.h"
#include "lib/string.h"
#include "lib/bootinfo.h"
#include "lib/x86.h"
#include "vbs/dom/dom_abi.h"
#include "vbs/sk/vulnsk.h"
#include "vbs/vtl0/kernel.h"

struct vbs_callregs {
    u64 id, a0, a1, a2, a3, rax, r0, r1, r2, r3;
};
void vbs_vtl_call(struct vbs_callregs *c);
extern char hvcall_page[], vtl1_image[], vtl1_image_end[];

u64 vtl_call_stub __ro_after_init;
static u8 vp_assist0[4096] ALIGNED(4096);
static u8 hc_in[4096] ALIGNED(4096), hc_out[4096] ALIGNED(4096);
static struct vbs_boot_params boot_params;
static struct vbs_boot_params *fill_boot_params(u64 features);
static u8 vtl0_cred_key[32]; /* only when credential isolation is off (the key then lives in VTL0) */
static bool vtl0_has_key;

/* ---- the design (VBS_DESIGN_*): which hypervisor interface the secure side is built on */
int vbs_design __ro_after_init;
KSYM(vbs_design);
int vbs_cmdline_failures;
static bool hv_available, dom_available;
static struct vbs_ret dom_call(u64 id, u64 a0, u64 a1, u64 a2, u64 a3);

bool vsm_hyperv(void) { return vbs_design == VBS_DESIGN_VSM; }

struct vbs_ret vbs_call(u64 id, u64 a0, u64 a1, u64 a2, u64 a3)
{
    struct vbs_callregs c = {id, a0, a1, a2, a3, 0, 0, 0, 0, 0};
    struct vbs_ret r = {-VBS_ENOSYS, {0, 0, 0, 0}};
    if (!vbs.vsm)
        return r;
    if (vbs_design == VBS_DESIGN_DOMAINS)
        return dom_call(id, a0, a1, a2, a3);
    vbs_vtl_call(&c);
    r.status = (long)c.rax;
    r.r[0] = c.r0;
    r.r[1] = c.r1;
    r.r[2] = c.r2;
    r.r[3] = c.r3;
    return r;
}

static u64 hc(u64 control, const void *in, void *out)
{
    return hv_hypercall(hvcall_page, control, (u64)in, (u64)out);
}

static bool hyperv_vsm_available(void)
{
    struct cpuid_regs r = cpuid(HV_CPUID_VENDOR, 0);
    char v[13];
    memcpy(v, &r.ebx, 4);
    memcpy(v + 4, &r.ecx, 4);
    memcpy(v + 8, &r.edx, 4);
    v[12] = 0;
    if (memcmp(v, "Microsoft Hv", 12) || r.eax < HV_CPUID_FEATURES)
        return false;
    if (cpuid(HV_CPUID_INTERFACE, 0).eax != HV_INTERFACE_SIGNATURE)
        return false;
    struct cpuid_regs f = cpuid(HV_CPUID_FEATURES, 0);
    return (f.ebx & HV_PRIV_HIGH_ACCESS_VSM) && (f.ebx & HV_PRIV_HIGH_ACCESS_VP_REGS);
}

/* KVM's signature leaf (0x40000000, or 0x40000100 beside Hyper-V) with the domains feature bit */
static bool domains_available(void)
{
    static const u32 bases[2] = {0x40000000u, 0x40000100u};
    for (int i = 0; i < 2; i++) {
        struct cpuid_regs r = cpuid(bases[i], 0);
        char v[12];
        memcpy(v, &r.ebx, 4);
        memcpy(v + 4, &r.ecx, 4);
        memcpy(v + 8, &r.edx, 4);
        if (memcmp(v, "KVMKVMKVM\0\0\0", 12) || r.eax < bases[i] + 1)
            continue;
        return cpuid(bases[i] + 1, 0).eax & (1u << KVM_FEATURE_VTLVISOR_DOMAINS);
    }
    return false;
}

/* design=vsm|domains chooses; without it Hyper-V VSM is preferred, then domains */
bool vsm_probe(void)
{
    hv_available = hyperv_vsm_available();
    dom_available = domains_available();
    const char *d = cmdline_value("design");
    if (d && word_is(d, "vsm"))
        vbs_design = hv_available ? VBS_DESIGN_VSM : VBS_DESIGN_NONE;
    else if (d && word_is(d, "domains"))
        vbs_design = dom_available ? VBS_DESIGN_DOMAINS : VBS_DESIGN_NONE;
    else {
        if (d) {
            kprintf("FAIL cmdline: design=%.*s (expected vsm or domains)\n", word_len(d), d);
            vbs_cmdline_failures++;
        }
        vbs_design = hv_available ? VBS_DESIGN_VSM : dom_available ? VBS_DESIGN_DOMAINS : VBS_DESIGN_NONE;
    }
    if (d && vbs_design == VBS_DESIGN_NONE && (word_is(d, "vsm") || word_is(d, "domains")))
        kprintf("vsm: design=%.*s: not offered by this hypervisor (%s)\n", word_len(d), d,
                word_is(d, "vsm") ? "run with --hyperv" : "run with --domains");
    return vbs_design != VBS_DESIGN_NONE;
}

/* the two machine-readable design lines (docs/guest.md): exactly one of them says "on" when the secure
 * side runs */
void vsm_print_design(void)
{
    bool on = vbs.vsm;
    kprintf("vbs: vsm %s\n", on && vbs_design == VBS_DESIGN_VSM ? "on" : hv_available ? "off" : "unavailable");
    kprintf("vbs: domains %s\n", on && vbs_design == VBS_DESIGN_DOMAINS ? "on" : dom_available ? "off" : "unavailable");
    if (on && vbs_design == VBS_DESIGN_DOMAINS)
        kprintf("  domains: where a CHECK detail says VTL1 or an intercept, read the feature domain that holds the "
                "capability (every violation of the kernel goes to the hyperguard domain)\n");
}

static struct hv_segment seg(u64 base, u32 limit, u16 sel, u16 attr) { return (struct hv_segment){base, limit, sel, attr}; }

static void take_key(const struct vbs_sk_header *h, const u8 *image)
{
    memcpy(vtl0_cred_key, image + (h->key - h->base), sizeof(vtl0_cred_key));
    vtl0_has_key = true;
}

const u8 *vbs_cred_key_vtl0(void) { return vtl0_has_key ? vtl0_cred_key : NULL; }

/* Without VTL1 the kernel keeps the credential key itself (what credential isolation prevents). */
void vsm_no_vtl1_key(void)
{
    const struct vbs_sk_header *h = (const void *)vtl1_image;
    if (h->magic == VBS_SK_MAGIC)
        take_key(h, (const u8 *)vtl1_image);
    memset(vtl1_image, 0, (u64)(vtl1_image_end - vtl1_image));
}

static int dom_boot(void);
static int dom_end_of_boot(void);
static u32 vulnsk_features(int role);

int vsm_boot(void)
{
    if (vbs_design == VBS_DESIGN_DOMAINS)
        return dom_boot();
    const struct vbs_sk_header *h = (const void *)vtl1_image;
    u64 blob = (u64)(vtl1_image_end - vtl1_image);
    if (h->magic != VBS_SK_MAGIC || h->image_size > blob || h->image_size > h->region_size ||
        (h->base & 0xfff) || (h->region_size & 0xfff) || h->base + h->region_size > ram_top ||
        h->base < POOL_END) {
        kprintf("vsm: FAILED bad secure kernel image (magic 0x%lx, base 0x%lx, size 0x%lx)\n", h->magic, h->base,
                h->region_size);
        return 1;
    }
    wrmsr(HV_X64_MSR_GUEST_OS_ID, 0x8100000000000001ull); /* open source OS, vtlvisor reference guest */
    wrmsr(HV_X64_MSR_HYPERCALL, (u64)hvcall_page | 1);
    wrmsr(HV_X64_MSR_VP_ASSIST_PAGE, (u64)vp_assist0 | 1);
    if (!(rdmsr(HV_X64_MSR_HYPERCALL) & 1)) {
        kprintf("vsm: FAILED the hypercall page did not enable\n");
        return 1;
    }
    /* where the VTL call stub is */
    struct hv_vp_registers_header *rh = (void *)hc_in;
    memset(hc_in, 0, 64);
    rh->partition_id = HV_PARTITION_ID_SELF;
    rh->vp_index = HV_VP_INDEX_SELF;
    *(u32 *)(hc_in + sizeof(*rh)) = HvRegisterVsmCodePageOffsets;
    u64 st = hc(HvCallGetVpRegisters | HV_REP(1), hc_in, hc_out);
    if (HV_STATUS(st)) {
        kprintf("vsm: FAILED GetVpRegisters(VsmCodePageOffsets): status 0x%x\n", HV_STATUS(st));
        return 1;
    }
    u64 offsets = *(u64 *)hc_out;
    vtl_call_stub = (u64)hvcall_page + (offsets & 0xfff);

    /* load the secure kernel into its region (through the physmap; VTL0 never maps it otherwise) */
    u8 *region = (u8 *)physmap(h->base);
    memset(region, 0, h->region_size);
    memcpy(region, vtl1_image, h->image_size);
    struct vbs_sk_header hdr = *h;
    if (!(vbs.requested & VBS_F_CREDGUARD))
        take_key(&hdr, (const u8 *)vtl1_image);
    memset(vtl1_image, 0, blob); /* the staging copy held the key: wipe it */
    vbs.sk_base = hdr.base;
    vbs.sk_size = hdr.region_size;
    vbs.sk_key = hdr.key;
    kprintf("vsm: secure kernel loaded at 0x%lx (%lu bytes, region 0x%lx bytes); staging copy wiped\n", hdr.base,
            hdr.image_size, hdr.region_size);

    /* EnablePartitionVtl: MBEC first (recorded when it is not offered), then without; when the hypervisor
     * offers it VTL1 runs with it (its protections keep kernel and user execute equal either way) */
    struct hv_enable_partition_vtl *ep = (void *)hc_in;
    memset(ep, 0, sizeof(*ep));
    ep->partition_id = HV_PARTITION_ID_SELF;
    ep->target_vtl = 1;
    ep->flags = 1;
    u64 mbec = hc(HvCallEnablePartitionVtl, ep, NULL);
    if (HV_STATUS(mbec) == 0) {
        st = mbec;
        kprintf("vsm: EnablePartitionVtl(1): with MBEC status 0x0 (MBEC enabled)\n");
    } else {
        ep->flags = 0;
        st = hc(HvCallEnablePartitionVtl, ep, NULL);
        kprintf("vsm: EnablePartitionVtl(1): with MBEC status 0x%x%s, without MBEC status 0x%x\n", HV_STATUS(mbec),
                HV_STATUS(mbec) == HV_STATUS_FEATURE_UNAVAILABLE ? " (feature unavailable)" : "", HV_STATUS(st));
    }
    if (HV_STATUS(st))
        return 1;

    struct hv_enable_vp_vtl *ev = (void *)hc_in;
    memset(ev, 0, sizeof(*ev));
    ev->partition_id = HV_PARTITION_ID_SELF;
    ev->vp_index = HV_VP_INDEX_SELF;
    ev->target_vtl = 1;
    struct hv_initial_vp_context *c = &ev->ctx;
    c->rip = hdr.entry;
    c->rsp = hdr.stack_top;
    c->rflags = 2;
    c->cs = seg(0, 0xffffffff, 0x08, 0xa09b);
    c->ds = c->es = c->fs = c->gs = c->ss = seg(0, 0xffffffff, 0x10, 0xc093);
    c->tr = seg(hdr.tss_base, 0x67, 0x18, 0x8b);
    c->ldtr = seg(0, 0xffff, 0, 0x82);
    c->idtr.limit = 0;
    c->idtr.base = 0;
    c->gdtr.limit = (u16)hdr.gdt_limit;
    c->gdtr.base = hdr.gdt_base;
    c->efer = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE;
    c->cr0 = CR0_PG | CR0_WP | (1ull << 5) | (1ull << 4) | CR0_MP | CR0_PE;
    c->cr3 = hdr.cr3;
    c->cr4 = CR4_PAE | (1ull << 9) | (1ull << 10) | (smep_on ? CR4_SMEP : 0);
    c->msr_cr_pat = 0x0007040600070406ull;
    st = hc(HvCallEnableVpVtl, ev, NULL);
    kprintf("vsm: EnableVpVtl(1, rip=0x%lx rsp=0x%lx cr3=0x%lx): status 0x%x\n", c->rip, c->rsp, c->cr3,
            HV_STATUS(st));
    if (HV_STATUS(st))
        return 1;
    vbs.vsm = true;

    /* first VTL call: VTL1 initialises, protects itself, takes the kernel's layout and arms */
    struct vbs_boot_params *p = fill_boot_params(vbs.requested | vulnsk_features(-1));
    struct vbs_ret r = vbs_call(VBS_CALL_LOAD_KDATA, (u64)p, 0, 0, 0);
    kprintf("vsm: LOAD_KDATA: status %ld, armed 0x%lx\n", r.status, r.r[0]);
    if (r.status)
        return 1;
    vbs.armed = (u32)r.r[0];
    return 0;
}

/* the kernel's layout for LOAD_KDATA (the same for VTL1 and for every feature domain) */
static struct vbs_boot_params *fill_boot_params(u64 features)
{
    struct vbs_boot_params *p = &boot_params;
    memset(p, 0, sizeof(*p));
    p->magic = VBS_BOOT_MAGIC;
    p->features = features;
    p->ram_top = ram_top;
    p->kernel_start = (u64)__kernel_start;
    p->text_end = (u64)__text_end;
    p->signed_end = (u64)__signed_end;
    p->kcfg_start = (u64)__kcfg_start;
    p->kcfg_end = (u64)__kcfg_end;
    p->hvcall_page = (u64)hvcall_page;
    p->kernsig = (u64)__kernsig;
    p->ro_after_init_start = (u64)__ro_after_init_start;
    p->ro_after_init_end = (u64)__ro_after_init_end;
    p->exports = (u64)__kexports_start;
    p->n_exports = (u64)(__kexports_end - __kexports_start) / sizeof(struct kexport);
    p->module_base = MODULE_BASE;
    p->module_size = MODULE_SIZE;
    p->pt_pool_start = PT_POOL_START;
    p->pt_pool_end = PT_POOL_END;
    return p;
}

int vsm_end_of_boot(void)
{
    if (vbs_design == VBS_DESIGN_DOMAINS)
        return dom_end_of_boot();
    /* vbs (ro_after_init) is read-only once this returns: VTL0 states what it expects, VTL1 confirms */
    struct vbs_ret r = vbs_call(VBS_CALL_SIGNAL_END_OF_BOOT, 0, 0, 0, 0);
    kprintf("vsm: SIGNAL_END_OF_BOOT: status %ld, armed 0x%lx\n", r.status, r.r[0]);
    if (r.status || r.r[0] != vbs.armed) {
        kprintf("vsm: FAILED VTL1 armed 0x%lx, expected 0x%x\n", r.r[0], vbs.armed);
        return 1;
    }
    return 0;
}

int kdp_protect(void *p, u64 pages)
{
    if (!(vbs.armed & VBS_F_KDP))
        return 0;
    struct vbs_ret r = vbs_call(VBS_CALL_PROTECT_MEMORY, (u64)p, pages, VBS_PROT_RO, 0);
    if (r.status)
        kprintf("vsm: PROTECT_MEMORY(0x%lx, %lu): status %ld\n", (u64)p, pages, r.status);
    return (int)r.status;
}

long cred_hmac(const u8 *msg, u64 len, u8 out[32], bool *by_vtl1)
{
    if (vbs.armed & VBS_F_CREDGUARD) {
        *by_vtl1 = true;
        struct vbs_ret r = vbs_call(VBS_CALL_CRED_HMAC, (u64)msg, len, 0, 0);
        if (r.status == 0)
            memcpy(out, r.r, 32);
        return r.status;
    }
    *by_vtl1 = false;
    if (!vtl0_has_key)
        return -ENOSYS;
    hmac_sha256(vtl0_cred_key, sizeof(vtl0_cred_key), msg, len, out);
    return 0;
}

/* ==================================================================================================
 * The domains design (docs/domains.md).  The kernel is the boot domain: it holds every capability the
 * host's policy allows until the end of boot, and only CALL on the feature domains after it.
 */
struct vbs_callregs;
void dom_vtl_call(u64 handle, struct vbs_callregs *c, u64 r10);
struct dom_image {
    u64 start, end;
};
extern const struct dom_image dom_images[DOM_NROLES];

struct kcap {
    u64 h;
    u32 type, rights;
    u64 p0, p1;
};
static struct kcap kcaps[48];
static int nkcaps;
static u64 dom_handle[DOM_NROLES]; /* the kernel's DOMAIN capabilities (all rights at boot, CALL after) */
static u32 dom_id_of[DOM_NROLES];
static u64 dom_ncaps[DOM_NROLES];  /* what each domain's table holds before its first call */
static u64 self_name = ~0ull;      /* the kernel's own name (slot 0) */
static u64 narrow_buf[2] ALIGNED(16);
static bool dom_ok[DOM_NROLES];

static struct dom_hc_ret dhc(u64 nr, u64 a0, u64 a1, u64 a2, u64 a3) { return dom_hc(nr, a0, a1, a2, a3); }

/* the kernel's own capability table: slots are handed out in order, so read until the first empty one */
static void read_table(void)
{
    nkcaps = 0;
    for (u64 slot = 0; slot < ARRAY_SIZE(kcaps); slot++) {
        struct dom_hc_ret q = dhc(DOM_HC_QUERY, slot, 0, 0, 0);
        if (q.rax < 0)
            break;
        kcaps[nkcaps++] = (struct kcap){slot, (u32)q.rax & 0xff, (u32)(q.rax >> 8) & 0xffffff, q.rbx, q.rcx};
    }
}

static const struct kcap *kcap(u32 type, u64 p0, u32 need)
{
    for (int i = 0; i < nkcaps; i++)
        if (kcaps[i].type == type && (type != DOM_CAP_INTERCEPT || kcaps[i].p0 == p0) &&
            (kcaps[i].rights & need) == need)
            return &kcaps[i];
    return NULL;
}

/* CAP_DELEGATE, narrowed to [n0, n1) (MEMORY) or n0 (INTERCEPT) when `narrow` */
static long delegate(u64 h, int role, u64 rights, bool narrow, u64 n0, u64 n1)
{
    narrow_buf[0] = n0;
    narrow_buf[1] = n1;
    long r = dhc(DOM_HC_DELEGATE, h, role < 0 ? self_name : dom_handle[role], rights, narrow ? (u64)narrow_buf : 0).rax;
    if (r >= 0 && role >= 0)
        dom_ncaps[role]++;
    return r;
}

static long mem_protect(u64 mem, u64 target, u64 start, u64 end, u32 perms, bool immutable)
{
    if (end <= start)
        return 0;
    return dhc(DOM_HC_MEM_PROTECT, mem | ((u64)perms << 32) | ((u64)immutable << 36), target, start,
               (end - start) / 4096).rax;
}

/* `perms` (immutable) over VTL0's RAM in a domain's view, except [hole, hole_end) */
static long view_of_kernel(u64 mem, u64 target, u32 perms, u64 hole, u64 hole_end)
{
    u64 ranges[2][2] = {{0, DOM_REGION_BASE}, {DOM_REGION_BASE + DOM_REGION_SIZE, ram_top}};
    long r = 0;
    for (int i = 0; i < 2 && !r; i++) {
        u64 s = ranges[i][0], e = ranges[i][1];
        if (hole_end > hole && hole >= s && hole_end <= e) {
            r = mem_protect(mem, target, s, hole, perms, true);
            if (!r)
                r = mem_protect(mem, target, hole_end, e, perms, true);
        } else {
            r = mem_protect(mem, target, s, e, perms, true);
        }
    }
    return r;
}

static int vulnsk_role = -2; /* -2 off, -1 VTL1, else the domain that carries the bug */

static u32 vulnsk_features(int role)
{
    if (vulnsk_role == -2) {
        const char *v = cmdline_value("vulnsk");
        vulnsk_role = -3;
        if (v || cmdline_has_word("vulnsk")) {
            vulnsk_role = DOM_ROLE_CRED;
            for (int i = 0; v && i < DOM_NROLES; i++)
                if (word_is(v, dom_role_names[i]))
                    vulnsk_role = i;
        }
    }
    if (vulnsk_role == -3)
        return 0;
    return (role < 0 || role == vulnsk_role) ? VBS_F_VULNSK : 0;
}

static const u32 role_features[DOM_NROLES] = {VBS_F_HVCI | VBS_F_KCFG, VBS_F_KDP, VBS_F_HYPERGUARD, VBS_F_CREDGUARD};

static int dom_boot(void)
{
    read_table();
    self_name = 0;
    const struct kcap *mem = kcap(DOM_CAP_MEMORY, 0, DOM_R | DOM_W | DOM_X | DOM_IMMUTABLE | DOM_DELEGATE);
    if (!mem || mem->p0 > 0 || mem->p1 < ram_top || !kcap(DOM_CAP_CREATE, 0, 0)) {
        kprintf("dom: FAILED the boot domain lacks a MEMORY capability over all RAM (RWXID) or CREATE (host policy?)\n");
        return 1;
    }
    kprintf("dom: boot domain: %d capabilities (host policy or the default: every capability)\n", nkcaps);
    /* 1. the images into their slots (through the physmap), then the staging copies are wiped */
    const struct vbs_sk_header *cred_hdr = NULL;
    for (int role = 0; role < DOM_NROLES; role++) {
        const struct vbs_sk_header *h = (const void *)dom_images[role].start;
        u64 blob = dom_images[role].end - dom_images[role].start;
        u64 slot = DOM_SLOT_BASE(role);
        if (h->magic != VBS_SK_MAGIC || h->base != slot || h->region_size != DOM_SLOT_SIZE || h->image_size > blob ||
            h->entry < slot || h->entry >= slot + DOM_SLOT_SIZE || h->stack_top > slot + DOM_SLOT_SIZE ||
            h->cr3 < slot || h->cr3 >= slot + DOM_SLOT_SIZE || ram_top < DOM_REGION_BASE + DOM_REGION_SIZE) {
            kprintf("dom: FAILED bad %s image (magic 0x%lx base 0x%lx)\n", dom_role_names[role], h->magic, h->base);
            return 1;
        }
        u8 *region = (u8 *)physmap(slot);
        memset(region, 0, DOM_SLOT_SIZE);
        memcpy(region, h, h->image_size);
        if (role == DOM_ROLE_CRED)
            cred_hdr = h;
    }
    struct vbs_sk_header hdr[DOM_NROLES];
    for (int role = 0; role < DOM_NROLES; role++)
        hdr[role] = *(const struct vbs_sk_header *)dom_images[role].start;
    if (!(vbs.requested & VBS_F_CREDGUARD))
        take_key(cred_hdr, (const u8 *)cred_hdr);
    memset(vtl1_image, 0, (u64)(vtl1_image_end - vtl1_image)); /* the staging copies held the key: wipe them */
    vbs.sk_base = DOM_REGION_BASE;
    vbs.sk_size = DOM_REGION_SIZE;
    vbs.sk_key = hdr[DOM_ROLE_CRED].key;
    /* 2. the kernel never sees the secure region again: no access, immutable (nobody can grant it back) */
    long r = mem_protect(mem->h, self_name, DOM_REGION_BASE, DOM_REGION_BASE + DOM_REGION_SIZE, 0, true);
    kprintf("dom: feature domains' images loaded at 0x%llx-0x%llx (1 MiB each: hvci, kdp, hyperguard, cred); staging "
            "copies wiped; the kernel's own view of the region: no access, immutable (%ld)\n",
            DOM_REGION_BASE, DOM_REGION_BASE + DOM_REGION_SIZE - 1, r);
    if (r)
        return 1;
    /* 3. create the domains; each starts on its own page tables (REGS_SET CR3 before it ever runs) */
    for (int role = 0; role < DOM_NROLES; role++) {
        struct dom_hc_ret c = dhc(DOM_HC_CREATE, hdr[role].entry, hdr[role].stack_top, 0, 0);
        if (c.rax < 0) {
            kprintf("dom: FAILED DOMAIN_CREATE(%s): %ld\n", dom_role_names[role], c.rax);
            return 1;
        }
        dom_handle[role] = (u64)c.rax;
        dom_ncaps[role] = 1; /* its own name */
        dom_id_of[role] = (u32)(dhc(DOM_HC_QUERY, dom_handle[role], 0, 0, 0).rax >> 32) & 0xffff;
        r = dhc(DOM_HC_REGS_SET, dom_handle[role], DOM_REG_CR3, hdr[role].cr3, 0).rax;
        if (r) {
            kprintf("dom: FAILED REGS_SET(%s, CR3): %ld\n", dom_role_names[role], r);
            return 1;
        }
    }
    /* 4. each domain gets only what its feature needs */
    u64 lo_end = DOM_REGION_BASE, hi = DOM_REGION_BASE + DOM_REGION_SIZE;
    long bad = 0;
    /* HVCI + kCFG: set any protection on VTL0's RAM (immutable too), and a name for the kernel */
    bad |= delegate(mem->h, DOM_ROLE_HVCI, DOM_R | DOM_W | DOM_X | DOM_IMMUTABLE, true, 0, lo_end) < 0;
    if (ram_top > hi)
        bad |= delegate(mem->h, DOM_ROLE_HVCI, DOM_R | DOM_W | DOM_X | DOM_IMMUTABLE, true, hi, ram_top) < 0;
    bad |= delegate(self_name, DOM_ROLE_HVCI, 0, false, 0, 0) < 0;
    /* KDP: make VTL0's RAM read-only (or less), forever -- never writable or executable */
    bad |= delegate(mem->h, DOM_ROLE_KDP, DOM_R | DOM_IMMUTABLE, true, 0, lo_end) < 0;
    if (ram_top > hi)
        bad |= delegate(mem->h, DOM_ROLE_KDP, DOM_R | DOM_IMMUTABLE, true, hi, ram_top) < 0;
    bad |= delegate(self_name, DOM_ROLE_KDP, 0, false, 0, 0) < 0;
    /* HyperGuard: the intercepts it locks with, the kernel's memory violations, the kernel's registers (read) */
    static const struct {
        u32 kind;
        u64 param;
    } hg[] = {
        {DOM_INT_CR0, CR0_WP | CR0_PG | CR0_PE}, {DOM_INT_CR4, CR4_SMEP | CR4_SMAP | CR4_UMIP},
        {DOM_INT_MSR, 0xc0000082}, {DOM_INT_MSR, 0xc0000081}, {DOM_INT_MSR, 0xc0000083}, {DOM_INT_MSR, 0xc0000084},
        {DOM_INT_MSR, 0xc0000080}, {DOM_INT_MSR, 0x174}, {DOM_INT_MSR, 0x175}, {DOM_INT_MSR, 0x176},
        {DOM_INT_DTR, 0xf}, {DOM_INT_MEM, 0x7},
    };
    int hg_missing = 0;
    for (u64 i = 0; i < ARRAY_SIZE(hg); i++) {
        const struct kcap *ic = NULL;
        for (int k = 0; k < nkcaps && !ic; k++)
            if (kcaps[k].type == DOM_CAP_INTERCEPT && kcaps[k].p0 == hg[i].kind && (kcaps[k].rights & DOM_DELEGATE) &&
                (hg[i].kind == DOM_INT_MSR ? (kcaps[k].p1 == hg[i].param || kcaps[k].p1 == 0xffffffffu)
                                           : !(hg[i].param & ~kcaps[k].p1)))
                ic = &kcaps[k];
        if (!ic || delegate(ic->h, DOM_ROLE_HYPERGUARD, 0, true, hg[i].param, 0) < 0)
            hg_missing++;
    }
    bad |= delegate(self_name, DOM_ROLE_HYPERGUARD, DOM_REGS_READ, false, 0, 0) < 0;
    if (hg_missing)
        kprintf("dom: %d of the HyperGuard domain's intercepts are not allowed by the host policy\n", hg_missing);
    /* credential isolation: nothing at all (its key is in its own memory; it answers calls) */
    if (bad) {
        kprintf("dom: FAILED delegating the feature domains' capabilities\n");
        return 1;
    }
    vbs.vsm = true;
    /* 5. first call of each: it enters on its own page tables and GDT, reads its table, arms its feature */
    int failed = 0;
    u32 armed = 0;
    for (int role = 0; role < DOM_NROLES; role++) {
        struct vbs_boot_params *p = fill_boot_params((vbs.requested & role_features[role]) | vulnsk_features(role));
        struct vbs_callregs c = {VBS_CALL_LOAD_KDATA, (u64)p, 0, 0, 0, 0, 0, 0, 0, 0};
        dom_vtl_call(dom_handle[role], &c, dom_ncaps[role]);
        kprintf("dom: LOAD_KDATA(%s, domain %u): status %ld, armed 0x%lx\n", dom_role_names[role], dom_id_of[role],
                (long)c.rax, c.r0);
        if (c.rax) {
            failed++;
            continue;
        }
        dom_ok[role] = true;
        armed |= (u32)c.r0;
    }
    vbs.armed = armed;
    /* 6. and now each domain's own view: the other slots no access, VTL0's RAM read-only (the HVCI domain
     * may write the module half of the kCFG bitmap), all immutable: no domain can widen its own view */
    r = 0;
    for (int role = 0; role < DOM_NROLES; role++) {
        for (int other = 0; other < DOM_NROLES && !r; other++)
            if (other != role)
                r = mem_protect(mem->h, dom_handle[role], DOM_SLOT_BASE(other), DOM_SLOT_BASE(other) + DOM_SLOT_SIZE, 0,
                                true);
        u64 bm = (u64)__kcfg_start + KCFG_BITMAP_BYTES, bm_end = (u64)__kcfg_end;
        if (!r && role == DOM_ROLE_HVCI)
            r = mem_protect(mem->h, dom_handle[role], bm, bm_end, DOM_R | DOM_W, true);
        if (!r)
            r = view_of_kernel(mem->h, dom_handle[role], DOM_R, role == DOM_ROLE_HVCI ? bm : 0,
                               role == DOM_ROLE_HVCI ? bm_end : 0);
    }
    kprintf("dom: feature domains' views: the other domains' memory no access, VTL0 RAM read-only (hvci: the kCFG "
            "module bitmap read-write), immutable (%ld)\n", r);
    return failed || r ? 1 : 0;
}

static struct vbs_ret dom_call_role(int role, u64 id, u64 a0, u64 a1, u64 a2, u64 a3)
{
    struct vbs_callregs c = {id, a0, a1, a2, a3, 0, 0, 0, 0, 0};
    dom_vtl_call(dom_handle[role], &c, 0);
    return (struct vbs_ret){(long)c.rax, {c.r0, c.r1, c.r2, c.r3}};
}

/* every service goes to the one domain that implements it; STATUS and the end of boot go to all */
static struct vbs_ret dom_call(u64 id, u64 a0, u64 a1, u64 a2, u64 a3)
{
    int role;
    switch (id) {
    case VBS_CALL_STATUS:
    case VBS_CALL_SIGNAL_END_OF_BOOT: {
        struct vbs_ret all = {0, {0, 2, DOM_REGION_BASE, DOM_REGION_SIZE}};
        for (role = 0; role < DOM_NROLES; role++) {
            struct vbs_ret r = dom_call_role(role, id, a0, a1, a2, a3);
            if (r.status && !all.status)
                all.status = r.status;
            all.r[0] |= r.r[0];
            if (id == VBS_CALL_STATUS && r.r[1] < all.r[1])
                all.r[1] = r.r[1];
        }
        if (id == VBS_CALL_SIGNAL_END_OF_BOOT)
            all.r[1] = all.r[2] = all.r[3] = 0;
        return all;
    }
    case VBS_CALL_LOCK_REGS:
    case VBS_CALL_GET_VIOLATION:
        role = DOM_ROLE_HYPERGUARD; /* the monitor: every violation of the kernel comes to it */
        break;
    case VBS_CALL_PROTECT_MEMORY:
        role = DOM_ROLE_KDP;
        break;
    case VBS_CALL_CRED_HMAC:
        role = DOM_ROLE_CRED;
        break;
    case VBS_CALL_VULNSK:
        role = vulnsk_role >= 0 ? vulnsk_role : DOM_ROLE_CRED;
        break;
    default: /* LOAD_KDATA (refused after boot), VALIDATE_MODULE, unknown ids (-ENOSYS) */
        role = DOM_ROLE_HVCI;
    }
    return dom_call_role(role, id, a0, a1, a2, a3);
}

/* end of boot: every domain closes its boot phase; then the kernel gives up its capabilities for good --
 * what it delegated stays with the domains (CAP_DELETE keeps derived capabilities), it keeps its own name
 * and CALL on each domain */
static int dom_end_of_boot(void)
{
    struct vbs_ret r = dom_call(VBS_CALL_SIGNAL_END_OF_BOOT, 0, 0, 0, 0);
    kprintf("dom: SIGNAL_END_OF_BOOT: status %ld, armed 0x%lx\n", r.status, r.r[0]);
    int failed = r.status || r.r[0] != vbs.armed;
    if (failed)
        kprintf("dom: FAILED the domains armed 0x%lx, expected 0x%x\n", r.r[0], vbs.armed);
    for (int role = 0; role < DOM_NROLES; role++) {
        long h = dhc(DOM_HC_DELEGATE, dom_handle[role], self_name, DOM_CALL, 0).rax;
        long d = dhc(DOM_HC_DELETE, dom_handle[role], DOM_DELETE_KEEP_DERIVED, 0, 0).rax;
        if (h < 0 || d) {
            kprintf("dom: FAILED attenuating the kernel's capability on the %s domain: %ld %ld\n", dom_role_names[role],
                    h, d);
            failed = 1;
            continue;
        }
        dom_handle[role] = (u64)h;
    }
    int dropped = 0;
    for (int i = 0; i < nkcaps; i++) { /* the boot table: everything but the kernel's own name */
        if (kcaps[i].h == self_name)
            continue;
        if (dhc(DOM_HC_DELETE, kcaps[i].h, DOM_DELETE_KEEP_DERIVED, 0, 0).rax)
            failed = 1;
        else
            dropped++;
    }
    kprintf("dom: end of boot: the kernel dropped its %d boot capabilities (memory, create, intercepts, pins) and "
            "its full rights on the domains; it keeps its own name and CALL on the %d feature domains\n", dropped,
            DOM_NROLES);
    return failed;
}

/* CHECK domains: what the kernel can still do after the end of boot (domains design only) */
int vbs_check_domains(char *d, size_t dn)
{
    if (vbs_design != VBS_DESIGN_DOMAINS || !vbs.vsm) {
        ksnprintf(d, dn, "not the domains design (%s)", vbs.vsm ? "VSM: VTL1 holds every power over VTL0" : "no secure side");
        return -1;
    }
    /* every slot of the table (generations 0 and 1: nothing was created after the end of boot) */
    u64 held[48];
    int n = 0, calls = 0, other = 0;
    for (u64 slot = 0; slot < 24; slot++)
        for (u64 gen = 0; gen < 2; gen++) {
            u64 h = slot | gen << 16;
            struct dom_hc_ret q = dhc(DOM_HC_QUERY, h, 0, 0, 0);
            if (q.rax < 0)
                continue;
            u32 type = (u32)q.rax & 0xff, rights = (u32)(q.rax >> 8) & 0xffffff;
            held[n++] = h;
            if (type == DOM_CAP_DOMAIN && rights == DOM_CALL)
                calls++;
            else if (!(h == self_name && type == DOM_CAP_DOMAIN && !(rights & ~(DOM_DELEGATE | DOM_REGS_READ))))
                other++;
        }
    if (calls != DOM_NROLES || other) {
        ksnprintf(d, dn, "the kernel holds %d capabilities: %d CALL, %d others", n, calls, other);
        return 0;
    }
    u64 text = (u64)__kernel_start;
    long mp = 0;
    for (int i = 0; i < n && !mp; i++) /* every handle it holds, used as a memory capability */
        mp = dhc(DOM_HC_MEM_PROTECT, held[i] | ((u64)(DOM_R | DOM_W | DOM_X) << 32), self_name, text, 1).rax;
    long cr = dhc(DOM_HC_CREATE, text, 0, 0, 0).rax;
    long rs = dhc(DOM_HC_REGS_SET, dom_handle[DOM_ROLE_CRED], DOM_REG_RIP, text, 0).rax;
    long rg = dhc(DOM_HC_REGS_GET, dom_handle[DOM_ROLE_CRED], DOM_REG_RIP, 0, 0).rax;
    if (mp != -DOM_EBADF || cr != -DOM_EPERM || rs != -DOM_EPERM || rg != -DOM_EPERM) {
        ksnprintf(d, dn, "MEM_PROTECT %ld (want -EBADF), CREATE %ld, REGS_SET %ld, REGS_GET %ld (want -EPERM)", mp, cr,
                  rs, rg);
        return 0;
    }
    ksnprintf(d, dn, "the kernel holds %d capabilities (its name, CALL on hvci/kdp/hyperguard/cred): MEM_PROTECT on its "
              "own text -EBADF, DOMAIN_CREATE -EPERM, REGS_SET/GET on a domain -EPERM", n);
    return 1;
}

/* ---- the kernel's side of the deliberately vulnerable secure service (sk/vulnsk.h): off unless "vulnsk" */
static struct vulnsk_request vulnsk_req;
static struct vulnsk_hypercall vulnsk_hc ALIGNED(4096);

long vbs_vulnsk(u64 ureq)
{
    if (vulnsk_features(-1) == 0 || !vbs.vsm)
        return -ENOSYS;
    if (!user_range_ok(ureq, sizeof(vulnsk_req)))
        return -EFAULT;
    user_copy_in(&vulnsk_req, ureq, sizeof(vulnsk_req));
    u64 a1 = vulnsk_req.a1;
    if (vulnsk_req.op == VULNSK_HYPERCALL) {
        memcpy(&vulnsk_hc, &vulnsk_req.hc, sizeof(vulnsk_hc));
        a1 = (u64)&vulnsk_hc;
    }
    struct vbs_ret r = vbs_call(VBS_CALL_VULNSK, vulnsk_req.op, a1, vulnsk_req.a2, 0);
    vulnsk_req.status = r.status;
    memcpy(vulnsk_req.r, r.r, sizeof(r.r));
    user_copy_out(ureq, &vulnsk_req, sizeof(vulnsk_req) - sizeof(vulnsk_req.hc));
    return r.status;
}
KCFG_TARGET(vbs_vulnsk);
KSYM(vbs_vulnsk);
KCFG_TARGET(vbs_check_domains);
