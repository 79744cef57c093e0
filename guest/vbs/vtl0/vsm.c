/*
 * VTL0 side of VSM: Hyper-V detection, loading and starting the secure kernel (EnablePartitionVtl,
 * EnableVpVtl), the VTL-call wrapper, KDP registration and the credential service.
 */
#include "lib/cpuid.h"
#include "lib/hyperv.h"
#include "lib/io.h"
#include "lib/msr.h"
#include "lib/sha256.h"
#include "lib/string.h"
#include "lib/x86.h"
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
static u8 vtl0_cred_key[32]; /* only when credential isolation is off (the key then lives in VTL0) */
static bool vtl0_has_key;

struct vbs_ret vbs_call(u64 id, u64 a0, u64 a1, u64 a2, u64 a3)
{
    struct vbs_callregs c = {id, a0, a1, a2, a3, 0, 0, 0, 0, 0};
    struct vbs_ret r = {-VBS_ENOSYS, {0, 0, 0, 0}};
    if (!vbs.vsm)
        return r;
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

bool vsm_probe(void) { return hyperv_vsm_available(); }

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

int vsm_boot(void)
{
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

    /* EnablePartitionVtl: MBEC first (to record that it is not offered), then without */
    struct hv_enable_partition_vtl *ep = (void *)hc_in;
    memset(ep, 0, sizeof(*ep));
    ep->partition_id = HV_PARTITION_ID_SELF;
    ep->target_vtl = 1;
    ep->flags = 1;
    u64 mbec = hc(HvCallEnablePartitionVtl, ep, NULL);
    ep->flags = 0;
    st = hc(HvCallEnablePartitionVtl, ep, NULL);
    kprintf("vsm: EnablePartitionVtl(1): with MBEC status 0x%x%s, without MBEC status 0x%x\n", HV_STATUS(mbec),
            HV_STATUS(mbec) == HV_STATUS_FEATURE_UNAVAILABLE ? " (feature unavailable)" : "", HV_STATUS(st));
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
    struct vbs_boot_params *p = &boot_params;
    p->magic = VBS_BOOT_MAGIC;
    p->features = vbs.requested;
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
    struct vbs_ret r = vbs_call(VBS_CALL_LOAD_KDATA, (u64)p, 0, 0, 0);
    kprintf("vsm: LOAD_KDATA: status %ld, armed 0x%lx\n", r.status, r.r[0]);
    if (r.status)
        return 1;
    vbs.armed = (u32)r.r[0];
    return 0;
}

int vsm_end_of_boot(void)
{
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
