/* VTL1 hypercalls through its own hypercall page. */
#include "lib/string.h"
#include "vbs/sk/sk.h"

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
        in->map_flags = flags;
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
