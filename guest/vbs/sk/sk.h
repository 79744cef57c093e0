/* VTL1 secure kernel: shared declarations. */
#ifndef VBS_SK_H
#define VBS_SK_H

#include "lib/hyperv.h"
#include "lib/types.h"
#include "lib/vbs_abi.h"

/* The 15 GPRs shared between VTLs (head.S offsets). */
struct sk_regs {
    u64 rax, rbx, rcx, rdx, rsi, rdi, rbp, r8, r9, r10, r11, r12, r13, r14, r15;
};
void sk_switch(struct sk_regs *r);
NORETURN void sk_main(struct sk_regs *first);

extern char __sk_start[], __sk_text_end[], __sk_rodata_end[], __sk_secret[], __sk_image_end[], __sk_end[];
extern char sk_hvcall_page[], sk_cred_key[], sk_sign_pub[];
extern u64 sk_vtl_return_stub;
extern struct vbs_sk_header sk_header;
#define SK_BASE ((u64)__sk_start)
#define SK_REGION_SIZE (sk_header.region_size)

/* hv.c: hypercalls */
u64 hv_call(u64 control, const void *in, void *out);
int hv_protect(u64 gpa, u64 pages, u32 flags); /* VTL0 protections; 0 or the HV status */
int hv_get_reg(u8 input_vtl, u32 name, u64 *lo, u64 *hi);
int hv_set_reg(u8 input_vtl, u32 name, u64 lo, u64 hi);
extern u8 hc_in[4096], hc_out[4096];

/* VTL0 memory */
extern u64 vtl0_ram_top;
bool vtl0_range_ok(u64 gpa, u64 len); /* inside VTL0 RAM, not the VTL1 region */
int sk_protect(u64 gpa, u64 pages, u32 flags, const char *label); /* ModifyVtlProtectionMask on VTL0 */

/* policy state */
extern u32 sk_requested, sk_armed;
extern int sk_phase; /* 0 before LOAD_KDATA, 1 boot, 2 after SIGNAL_END_OF_BOOT */
extern struct vbs_boot_params bp;

/* hvci.c */
long sk_load_kdata(u64 gpa, u64 *out);
long sk_validate_module(u64 img, u64 len, u64 load, u64 pages, u64 *init);
const char *sk_label(u64 gpa);

/* hyperguard.c */
long sk_lock_regs(void);
void sk_intercept(struct sk_regs *r); /* handle the message in SIMP slot 0, prepare the return */

#define SK_LOG(...) kprintf("sk: " __VA_ARGS__)

#endif
