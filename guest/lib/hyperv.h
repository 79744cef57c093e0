/* Hyper-V TLFS guest ABI (the subset vtlvisor implements: VSM chapter 15, SynIC messages). */
#ifndef GUEST_LIB_HYPERV_H
#define GUEST_LIB_HYPERV_H

#include "lib/types.h"

#define HV_CPUID_VENDOR 0x40000000u
#define HV_CPUID_INTERFACE 0x40000001u /* EAX = "Hv#1" */
#define HV_CPUID_FEATURES 0x40000003u  /* EAX/EBX: partition privilege mask low/high */
#define HV_INTERFACE_SIGNATURE 0x31237648u
#define HV_PRIV_HIGH_ACCESS_VSM (1u << 16)     /* AccessVsm (bit 48) in EBX */
#define HV_PRIV_HIGH_ACCESS_VP_REGS (1u << 17) /* AccessVpRegisters (bit 49) */

#define HV_X64_MSR_GUEST_OS_ID 0x40000000u
#define HV_X64_MSR_HYPERCALL 0x40000001u
#define HV_X64_MSR_VP_INDEX 0x40000002u
#define HV_X64_MSR_NPIEP_CONFIG 0x40000040u
#define HV_X64_MSR_VP_ASSIST_PAGE 0x40000073u
#define HV_X64_MSR_SCONTROL 0x40000080u
#define HV_X64_MSR_SIMP 0x40000083u
#define HV_X64_MSR_SINT0 0x40000090u
#define HV_NPIEP_ALL 0xfu /* prevent SGDT, SIDT, SLDT, STR at CPL > 0 */

#define HvCallModifyVtlProtectionMask 0x000c
#define HvCallEnablePartitionVtl 0x000d
#define HvCallEnableVpVtl 0x000f
#define HvCallVtlCall 0x0011
#define HvCallVtlReturn 0x0012
#define HvCallGetVpRegisters 0x0050
#define HvCallSetVpRegisters 0x0051
#define HV_REP(n) ((u64)(n) << 32)
#define HV_STATUS(rax) ((u16)(rax))
#define HV_REPS_DONE(rax) (((rax) >> 32) & 0xfff)
#define HV_STATUS_SUCCESS 0
#define HV_STATUS_ACCESS_DENIED 6
#define HV_STATUS_FEATURE_UNAVAILABLE 0x1e

#define HV_PARTITION_ID_SELF 0xffffffffffffffffull
#define HV_VP_INDEX_SELF 0xfffffffeu
#define HV_INPUT_VTL(vtl) (0x10u | (vtl)) /* use_target_vtl */
#define HV_INPUT_VTL_SELF 0u

#define HV_MAP_GPA_READABLE 0x1u
#define HV_MAP_GPA_WRITABLE 0x2u
#define HV_MAP_GPA_KERNEL_EXECUTABLE 0x4u
#define HV_MAP_GPA_USER_EXECUTABLE 0x8u
#define HV_MAP_GPA_EXECUTABLE (HV_MAP_GPA_KERNEL_EXECUTABLE | HV_MAP_GPA_USER_EXECUTABLE) /* no MBEC */

/* Register names */
#define HvRegisterPendingEvent0 0x00010004u
#define HvX64RegisterRip 0x00020010u
#define HvX64RegisterRflags 0x00020011u
#define HvX64RegisterCr0 0x00040000u
#define HvX64RegisterCr3 0x00040002u
#define HvX64RegisterCr4 0x00040003u
#define HvX64RegisterLdtr 0x00060006u
#define HvX64RegisterTr 0x00060007u
#define HvX64RegisterIdtr 0x00070000u
#define HvX64RegisterGdtr 0x00070001u
#define HvX64RegisterEfer 0x00080001u
#define HvX64RegisterSysenterCs 0x00080005u
#define HvX64RegisterSysenterEip 0x00080006u
#define HvX64RegisterSysenterEsp 0x00080007u
#define HvX64RegisterStar 0x00080008u
#define HvX64RegisterLstar 0x00080009u
#define HvX64RegisterCstar 0x0008000au
#define HvX64RegisterSfmask 0x0008000bu
#define HvRegisterVsmCodePageOffsets 0x000d0002u
#define HvRegisterVsmVpStatus 0x000d0003u
#define HvRegisterVsmPartitionStatus 0x000d0004u
#define HvRegisterVsmCapabilities 0x000d0006u
#define HvRegisterVsmPartitionConfig 0x000d0007u
#define HvX64RegisterCrInterceptControl 0x000e0000u
#define HvX64RegisterCrInterceptCr0Mask 0x000e0001u
#define HvX64RegisterCrInterceptCr4Mask 0x000e0002u

/* HvX64RegisterCrInterceptControl */
#define HV_CRI_CR0_WRITE (1ull << 0)
#define HV_CRI_CR4_WRITE (1ull << 1)
#define HV_CRI_MSR_LSTAR_WRITE (1ull << 6)
#define HV_CRI_MSR_STAR_WRITE (1ull << 8)
#define HV_CRI_MSR_CSTAR_WRITE (1ull << 10)
#define HV_CRI_MSR_EFER_WRITE (1ull << 14)
#define HV_CRI_GDTR_WRITE (1ull << 15)
#define HV_CRI_IDTR_WRITE (1ull << 16)
#define HV_CRI_LDTR_WRITE (1ull << 17)
#define HV_CRI_TR_WRITE (1ull << 18)
#define HV_CRI_MSR_SYSENTER_CS_WRITE (1ull << 19)
#define HV_CRI_MSR_SYSENTER_EIP_WRITE (1ull << 20)
#define HV_CRI_MSR_SYSENTER_ESP_WRITE (1ull << 21)
#define HV_CRI_MSR_SFMASK_WRITE (1ull << 22)

/* HvRegisterVsmPartitionConfig */
#define HV_VSM_CFG_ENABLE_VTL_PROTECTION (1ull << 0)
#define HV_VSM_CFG_DEFAULT_MASK(m) ((u64)(m) << 1)

/* HvRegisterPendingEvent0: exception, deliver error code, vector */
#define HV_PENDING_EXCEPTION(vec, err) (1ull | (1ull << 8) | ((u64)(vec) << 16) | ((u64)(err) << 32))

/* VP assist page */
#define HV_VP_ASSIST_ENTRY_REASON 0x08
#define HV_VTL_ENTRY_VTL_CALL 1
#define HV_VTL_ENTRY_INTERRUPT 2
#define HV_VTL_ENTRY_INTERCEPT 3

/* SynIC messages (SIMP, SINT0 slot at offset 0) */
#define HvMessageTypeNone 0x00000000u
#define HvMessageTypeGpaIntercept 0x80000001u
#define HvMessageTypeX64MsrIntercept 0x80010001u
#define HvMessageTypeRegisterIntercept 0x80010006u
#define HV_INTERCEPT_ACCESS_READ 0
#define HV_INTERCEPT_ACCESS_WRITE 1
#define HV_INTERCEPT_ACCESS_EXECUTE 2

struct hv_segment {
    u64 base;
    u32 limit;
    u16 selector;
    u16 attributes;
} PACKED;

struct hv_table_register {
    u16 pad[3];
    u16 limit;
    u64 base;
} PACKED;

/* HV_INITIAL_VP_CONTEXT (x64), 224 bytes */
struct hv_initial_vp_context {
    u64 rip, rsp, rflags;
    struct hv_segment cs, ds, es, fs, gs, ss, tr, ldtr;
    struct hv_table_register idtr, gdtr;
    u64 efer, cr0, cr3, cr4, msr_cr_pat;
} PACKED;

struct hv_enable_vp_vtl {
    u64 partition_id;
    u32 vp_index;
    u8 target_vtl;
    u8 reserved[3];
    struct hv_initial_vp_context ctx;
} PACKED;

struct hv_enable_partition_vtl {
    u64 partition_id;
    u8 target_vtl;
    u8 flags; /* bit 0: enable MBEC */
    u16 reserved16;
    u32 reserved32;
} PACKED;

struct hv_modify_vtl_protection_mask {
    u64 partition_id;
    u32 map_flags;
    u8 input_vtl;
    u8 reserved[3];
    u64 gpa_page_list[];
} PACKED;
#define HV_MODIFY_MAX_PAGES ((4096 - 16) / 8)

struct hv_vp_registers_header {
    u64 partition_id;
    u32 vp_index;
    u8 input_vtl;
    u8 reserved[3];
} PACKED;

struct hv_register_assoc {
    u32 name;
    u32 reserved1;
    u64 reserved2;
    u64 value_lo, value_hi;
} PACKED;

/* HV_X64_INTERCEPT_MESSAGE_HEADER (40 bytes) */
struct hv_intercept_header {
    u32 vp_index;
    u8 insn_len_cr8; /* instruction length in bits 0-3 */
    u8 access_type;
    u16 exec_state;
    struct hv_segment cs;
    u64 rip, rflags;
} PACKED;

struct hv_message {
    u32 type;
    u8 payload_size, flags;
    u16 reserved;
    u64 sender;
    union {
        u8 payload[240];
        struct hv_intercept_header hdr;
        struct {
            struct hv_intercept_header hdr;
            u32 cache_type;
            u8 insn_byte_count, access_info, tpr_priority, reserved;
            u64 gva, gpa;
            u8 insn_bytes[16];
        } PACKED gpa;
        struct {
            struct hv_intercept_header hdr;
            u8 reserved0, reserved1;
            u16 reserved2;
            u32 reg_name;
            u64 value_lo, value_hi;
        } PACKED reg;
        struct {
            struct hv_intercept_header hdr;
            u32 msr, reserved;
            u64 rdx, rax;
        } PACKED msr;
    };
} PACKED;

/* Hypercall through the hypercall page (RCX control, RDX input GPA, R8 output GPA; RAX result). */
static inline u64 hv_hypercall(const void *page, u64 control, u64 in_gpa, u64 out_gpa)
{
    u64 rax;
    register u64 r8 __asm__("r8") = out_gpa;
    __asm__ volatile("call *%[pg]"
                     : "=a"(rax), "+c"(control), "+d"(in_gpa), "+r"(r8)
                     : [pg] "r"(page)
                     : "memory", "cc", "r9", "r10", "r11");
    return rax;
}

#endif
