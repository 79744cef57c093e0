/* The Hyper-V layer of the secure kernel (VSM design): VTL1's hypercall, VP-assist and message pages, its
 * self-protection, VTL return and entry reasons, hypercalls through its own hypercall page.  The domains
 * design replaces this file with guest/vbs/dom/dom.c. */
#include "lib/io.h"
#include "lib/msr.h"
#include "lib/string.h"
#include "vbs/sk/sk.h"

static u8 vp_assist[4096] ALIGNED(4096);
u8 sk_simp_page[4096] ALIGNED(4096);
const char *sk_name = "VTL1";
const char *sk_log_prefix = "sk";

void sk_platform_init(void)
{
    /* GUEST_OS_ID is private to each VTL (TLFS 15.11.1): no hypercall page before VTL1 sets its own */
    wrmsr(HV_X64_MSR_GUEST_OS_ID, 0x8100000000000001ull);
    wrmsr(HV_X64_MSR_HYPERCALL, (u64)sk_hvcall_page | 1);
    wrmsr(HV_X64_MSR_VP_ASSIST_PAGE, (u64)vp_assist | 1);
    wrmsr(HV_X64_MSR_SIMP, (u64)sk_simp_page | 1);
    wrmsr(HV_X64_MSR_SCONTROL, 1);
    u64 offsets, hi;
    if (hv_get_reg(HV_INPUT_VTL_SELF, HvRegisterVsmCodePageOffsets, &offsets, &hi) == 0)
        sk_vtl_return_stub = (u64)sk_hvcall_page + ((offsets >> 12) & 0xfff);
    /* VTL1 memory: no access at all for VTL0 (code, data, stack, page tables, the key) */
    u64 pages = SK_REGION_SIZE / 4096;
    int st = sk_protect(SK_BASE, pages, 0, "vtl1");
    if (st) {
        kprintf("sk: PANIC: ModifyVtlProtectionMask on the VTL1 region failed: status 0x%x\n", st);
        debug_exit(0xff);
    }
    SK_LOG("VTL1 region 0x%lx-0x%lx: no access for VTL0 (ModifyVtlProtectionMask flags 0, %lu pages)\n", SK_BASE,
           SK_BASE + SK_REGION_SIZE - 1, pages);
}

/* VtlReturn, always the non-fast kind: the VTL return control input (RCX, which the hypercall page's stub
 * moves to RAX) is 0, so the hypervisor restores VTL0's RAX and RCX from our VP assist page -- the status
 * after a call, VTL0's own values after an intercept.  (An older vtlvisor took the fast flag from RDX bit 0:
 * a call returns RDX = 0; after an intercept VTL0's odd RDX made that return fast and VTL0's RCX 0x12.) */
int sk_return_and_wait(struct sk_regs *r, int reason)
{
    (void)reason;
    *(volatile u64 *)(vp_assist + 0x10) = r->rax;
    *(volatile u64 *)(vp_assist + 0x18) = r->rcx;
    r->rcx = 0;
    sk_switch(r);
    return *(volatile u32 *)(vp_assist + HV_VP_ASSIST_ENTRY_REASON) == HV_VTL_ENTRY_INTERCEPT ? SK_ENTRY_INTERCEPT
                                                                                            : SK_ENTRY_CALL;
}

/* everything VTL0 owns that has no explicit protection: the partition's default mask (write-once) */
int sk_set_default_protection(u32 flags)
{
    return hv_set_reg(HV_INPUT_VTL_SELF, HvRegisterVsmPartitionConfig,
                      HV_VSM_CFG_ENABLE_VTL_PROTECTION | HV_VSM_CFG_DEFAULT_MASK(flags), 0);
}

/* the hypervisor writes the same code into every VTL's hypercall page: VTL0's must equal ours */
int sk_hvcall_page_state(void) { return memcmp((const void *)bp.hvcall_page, sk_hvcall_page, 4096) ? -1 : 1; }

/* vulnsk.c: a Hyper-V hypercall with the attacker's control word and input page, as VTL1 */
long sk_raw_hypercall(const struct vulnsk_hypercall *req, u64 out[4])
{
    memcpy(hc_in, req->input, sizeof(req->input));
    memset(hc_out, 0, 64);
    out[0] = hv_call(req->nr, hc_in, hc_out);
    out[1] = *(u64 *)hc_out;
    out[2] = *(u64 *)(hc_out + 8);
    out[3] = *(u64 *)(hc_out + 16);
    return 0;
}

u64 hv_call(u64 control, const void *in, void *out)
{
    return hv_hypercall(sk_hvcall_page, control, (u64)in, (u64)out);
}

int hv_protect(u64 gpa, u64 pages, u32 flags)
{
    struct hv_modify_vtl_protection_mask *in = (void *)hc_in;
    while (pages) {
        u64 n = pages < HV_MODIFY_MAX_PAGES ? pages : HV_MODIFY_MAX_PAGES;
        in->partition_id = HV_PARTITION_ID_SELF;
        in->map_flags = flags & ~SK_PROT_ONEWAY; /* VSM: VTL1 can change every protection, always */
        in->input_vtl = HV_INPUT_VTL(0);
        memset(in->reserved, 0, sizeof(in->reserved));
        for (u64 i = 0; i < n; i++)
            in->gpa_page_list[i] = (gpa >> 12) + i;
        u64 rax = hv_call(HvCallModifyVtlProtectionMask | HV_REP(n), in, NULL);
        if (HV_STATUS(rax) || HV_REPS_DONE(rax) != n)
            return HV_STATUS(rax) ? HV_STATUS(rax) : -1;
        gpa += n * 4096;
        pages -= n;
    }
    return 0;
}

int hv_get_reg(u8 input_vtl, u32 name, u64 *lo, u64 *hi)
{
    struct hv_vp_registers_header *h = (void *)hc_in;
    memset(h, 0, sizeof(*h));
    h->partition_id = HV_PARTITION_ID_SELF;
    h->vp_index = HV_VP_INDEX_SELF;
    h->input_vtl = input_vtl;
    *(u32 *)(hc_in + sizeof(*h)) = name;
    u64 rax = hv_call(HvCallGetVpRegisters | HV_REP(1), hc_in, hc_out);
    if (HV_STATUS(rax))
        return HV_STATUS(rax);
    *lo = *(u64 *)hc_out;
    if (hi)
        *hi = *(u64 *)(hc_out + 8);
    return 0;
}

int hv_set_reg(u8 input_vtl, u32 name, u64 lo, u64 hi)
{
    struct hv_vp_registers_header *h = (void *)hc_in;
    memset(hc_in, 0, sizeof(*h) + sizeof(struct hv_register_assoc));
    h->partition_id = HV_PARTITION_ID_SELF;
    h->vp_index = HV_VP_INDEX_SELF;
    h->input_vtl = input_vtl;
    struct hv_register_assoc *a = (void *)(hc_in + sizeof(*h));
    a->name = name;
    a->value_lo = lo;
    a->value_hi = hi;
    u64 rax = hv_call(HvCallSetVpRegisters | HV_REP(1), hc_in, NULL);
    return HV_STATUS(rax);
}
