/*
 * The VBS guest pair's shared ABI (docs/guest.md): the VTL-call service VTL0 -> VTL1, the boot
 * parameters, the secure-kernel image header, the kernel and module signature formats, kCFG.
 */
#ifndef GUEST_LIB_VBS_ABI_H
#define GUEST_LIB_VBS_ABI_H

/* ---- VTL call service: RDI = function id, RSI/RDX/R8/R9 = a0..a3.  Returns RAX = status (0 or a
 * negative errno; GET_VIOLATION: the count), outputs in RSI/R8/R9/R10 (r0..r3).  VTL1 clears every
 * other GPR before it returns (RCX = 0x12 and RDX = 1 come from the VTL-return stub).  Ids as LVBS. */
#define VBS_CALL_ENABLE_APS_VTL 0x1ffe0     /* -ENOSYS (one VP) */
#define VBS_CALL_BOOT_APS 0x1ffe1           /* -ENOSYS */
#define VBS_CALL_LOCK_REGS 0x1ffe2          /* boot only: HyperGuard locks now */
#define VBS_CALL_SIGNAL_END_OF_BOOT 0x1ffe3 /* KDP: ro_after_init read-only; locks; ends the boot phase */
#define VBS_CALL_PROTECT_MEMORY 0x1ffe4     /* a0 gpa, a1 pages, a2 VBS_PROT_*: KDP, never undone */
#define VBS_CALL_LOAD_KDATA 0x1ffe5         /* boot only, once: a0 = gpa of struct vbs_boot_params */
#define VBS_CALL_VALIDATE_MODULE 0x1ffe6    /* a0 image gpa, a1 image len, a2 load gpa, a3 load pages */
#define VBS_CALL_FREE_MODULE_INIT 0x1ffe7   /* -ENOSYS */
#define VBS_CALL_UNLOAD_MODULE 0x1ffe8      /* -ENOSYS */
#define VBS_CALL_COPY_SECONDARY_KEY 0x1ffe9 /* -ENOSYS */
#define VBS_CALL_KEXEC_VALIDATE 0x1ffea     /* -ENOSYS */
#define VBS_CALL_CRED_HMAC 0x1fff0          /* a0 challenge gpa, a1 len (1..4096), a2 out gpa (32 bytes) */
#define VBS_CALL_GET_VIOLATION 0x1fff1      /* a0 index (~0 = last): RAX = count, r0..r3 = record */
#define VBS_CALL_STATUS 0x1fff2             /* r0 = armed features, r1 = phase, r2 = VTL1 region base, r3 = size */

/* Features (requested in boot params, armed mask in LOAD_KDATA/SIGNAL_END_OF_BOOT/STATUS r0). */
#define VBS_F_HVCI (1u << 0)
#define VBS_F_KDP (1u << 1)
#define VBS_F_KCFG (1u << 2)
#define VBS_F_HYPERGUARD (1u << 3)
#define VBS_F_CREDGUARD (1u << 4)
#define VBS_F_ALL 0x1fu

#define VBS_BOOT_MAGIC 0x3130544f4f425356 /* "VSBOOT01" */
#define VBS_SK_MAGIC 0x31304b5356544c56   /* "VLTVSK01" */

#define VBS_PROT_RO 1 /* PROTECT_MEMORY: readable, not writable, not executable for VTL0 */

/* GET_VIOLATION record: r0 = kind | access << 8 | action << 16, r1 = GPA / MSR / register name,
 * r2 = VTL0 RIP, r3 = attempted value (MSR/register) */
#define VBS_V_GPA 1
#define VBS_V_MSR 2
#define VBS_V_REG 3
#define VBS_ACT_GP 1   /* #GP injected */
#define VBS_ACT_SKIP 2 /* instruction skipped (a rewrite of the locked value) */

/* errno values used in statuses */
#define VBS_EPERM 1
#define VBS_ENOENT 2
#define VBS_EFAULT 14
#define VBS_EACCES 13
#define VBS_EBUSY 16
#define VBS_EINVAL 22
#define VBS_ENOSPC 28
#define VBS_ENOSYS 38
#define VBS_ENOEXEC 8
#define VBS_EBADMSG 74
#define VBS_ENOKEY 126
#define VBS_EKEYREJECTED 129

#ifndef __ASSEMBLER__
#include "lib/types.h"

/* ---- boot parameters (VTL0 memory, read by VTL1 in LOAD_KDATA; all addresses are GPAs = VTL0 VAs) */
struct vbs_boot_params {
    u64 magic, features, ram_top;
    u64 kernel_start; /* signed image: [kernel_start, signed_end) */
    u64 text_end;     /* [kernel_start, text_end): kernel text + user text (R+X) */
    u64 signed_end;   /* [text_end, signed_end): rodata + kCFG bitmap (R) */
    u64 kcfg_start, kcfg_end; /* struct vbs_kcfg, page aligned, inside the signed range */
    u64 hvcall_page;  /* VTL0's hypercall page (R+X once checked) */
    u64 kernsig;      /* struct vbs_kernel_sig (page aligned, its own page) */
    u64 ro_after_init_start, ro_after_init_end;
    u64 exports, n_exports; /* struct kexport[], inside the signed range */
    u64 module_base, module_size;
    /* VTL0's page-table pages (vtlvisor workaround, docs/guest.md: they must stay executable in the NPT) */
    u64 pt_pool_start, pt_pool_end;
};

/* ---- secure kernel image header (first bytes of the VTL1 blob) */
struct vbs_sk_header {
    u64 magic, base, region_size, image_size;
    u64 entry, stack_top, cr3, gdt_base, gdt_limit, tss_base;
    u64 key, key_len; /* the credential key (VTL1 data) */
};

/* ---- kernel signature (.kernsig): Ed25519 over le64(start) || le64(end) || bytes [start, end) */
#define VBS_KSIG_MAGIC "vbs-kernel-sig\0"
struct vbs_kernel_sig {
    u8 sig[64];
    u64 start, end;
    char magic[16];
};

/* ---- module signature trailer: [ELF, signed_len bytes][struct vbs_modsig][VBS_MODSIG_MAGIC] */
#define VBS_MODSIG_MAGIC "~Module signature appended~\n"
#define VBS_MODSIG_MAGIC_LEN 28
#define VBS_MODSIG_ED25519 1
struct vbs_modsig {
    u8 sig[64];
    u32 algo, signed_len;
};

/* ---- kCFG: one bit per 16-byte slot; kernel bitmap covers [kernel_start, +KCFG_SPAN), the module
 * bitmap [module_base, +KCFG_SPAN).  Built by guest/vbs/vbstool.py from .kcfg_targets. */
#define KCFG_SPAN 0x100000ull
#define KCFG_BITMAP_BYTES (KCFG_SPAN / 16 / 8)
struct vbs_kcfg {
    u8 kernel[KCFG_BITMAP_BYTES];
    u8 module[KCFG_BITMAP_BYTES];
};

/* kernel export table for modules (.kexports, in the signed rodata) */
struct kexport {
    const char *name;
    u64 addr;
};

#endif /* __ASSEMBLER__ */

#endif
