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

/* The hypervisor layer: sk/hv.c (Hyper-V VSM: this is VTL1) or dom/dom.c (capability domains: this is one
 * feature domain, docs/domains.md).  The rest of the secure kernel is the same source in both designs. */
u64 hv_call(u64 control, const void *in, void *out);
int hv_protect(u64 gpa, u64 pages, u32 flags); /* VTL0 protections (HV_MAP_GPA_* | SK_PROT_ONEWAY); 0 or a status */
int hv_get_reg(u8 input_vtl, u32 name, u64 *lo, u64 *hi);
int hv_set_reg(u8 input_vtl, u32 name, u64 lo, u64 hi);
extern u8 hc_in[4096], hc_out[4096];
#define SK_PROT_ONEWAY (1u << 31) /* a grant nobody can change again (domains: immutable; VSM has none: ignored) */
void sk_platform_init(void);   /* hypercall/VP-assist/message pages and self-protection, or capability discovery */
#define SK_ENTRY_CALL 0
#define SK_ENTRY_INTERCEPT 1
/* answer the entry of kind `reason` with r (a call: RAX status, RSI/R8/R9/R10 outputs; an intercept: the
 * decision sk_intercept made) and wait for the next entry; returns its kind, r holds the caller's registers */
int sk_return_and_wait(struct sk_regs *r, int reason);
int sk_set_default_protection(u32 flags); /* every other page of VTL0 RAM gets flags (VSM: the default mask) */
int sk_hvcall_page_state(void); /* 1 VTL0's hypercall page holds the hypervisor's code, -1 it does not, 0 none */
struct vulnsk_hypercall;
long sk_raw_hypercall(const struct vulnsk_hypercall *req, u64 out[4]); /* vulnsk.c: as the attacker's code */
extern const char *sk_name;       /* "VTL1", "the hvci domain", ... */
extern const char *sk_log_prefix; /* "sk", "dom-hvci", ... */

/* VTL0 memory ("VTL0" is the kernel in both designs: domain 0 with domains) */
extern u64 vtl0_ram_top;
bool vtl0_range_ok(u64 gpa, u64 len); /* inside VTL0 RAM, not the secure region */
/* the secure region no VTL0 buffer may touch: VTL1's region, or every feature domain's slot */
#ifdef SK_DOMAINS
#include "vbs/dom/dom_abi.h"
#define SK_SECURE_BASE DOM_REGION_BASE
#define SK_SECURE_SIZE DOM_REGION_SIZE
#else
#define SK_SECURE_BASE SK_BASE
#define SK_SECURE_SIZE SK_REGION_SIZE
#endif
int sk_protect(u64 gpa, u64 pages, u32 flags, const char *label); /* ModifyVtlProtectionMask on VTL0 */

/* policy state */
extern u32 sk_requested, sk_armed;
extern int sk_phase; /* 0 before LOAD_KDATA, 1 boot, 2 after SIGNAL_END_OF_BOOT */
extern struct vbs_boot_params bp;

/* hvci.c */
long sk_load_kdata(u64 gpa, u64 *out);
long sk_validate_module(u64 img, u64 len, u64 load, u64 pages, u64 *init);
const char *sk_label(u64 gpa);

/* hyperguard.c (VSM) or dom/hyperguard.c (domains) */
long sk_lock_regs(void);
void sk_intercept(struct sk_regs *r); /* handle the intercept that entered us, prepare the return */

/* vulnsk.c: the deliberately vulnerable service (off unless the kernel asked for it) */
#include "vbs/sk/vulnsk.h"
long sk_vulnsk(u64 op, u64 a1, u64 a2, u64 out[4]);

#define SK_LOG(fmt, ...) kprintf("%s: " fmt, sk_log_prefix, ##__VA_ARGS__)

#endif
