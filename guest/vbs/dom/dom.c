/*
 * The domains layer of the secure kernel (docs/domains.md): guest/vbs/sk built with SK_DOMAINS runs as one
 * feature domain of vtlvisor's capability-scoped domains instead of as VTL1.  This file does what
 * guest/vbs/sk/hv.c does for Hyper-V, through the domain ABI (guest/vbs/dom/dom_abi.h):
 *   - no hypercall or message pages: VMMCALL, and the hypervisor passes calls and events in registers;
 *   - what this domain may do is exactly its capability table, which the boot domain (the kernel) filled
 *     before the first call; sk_platform_init reads it back with CAP_QUERY;
 *   - protecting VTL0 memory is MEM_PROTECT with a MEMORY capability on the kernel's view (domain 0);
 *     SK_PROT_ONEWAY becomes an immutable grant, which nobody -- this domain included -- can undo.
 */
#include "lib/io.h"
#include "lib/string.h"
#include "vbs/dom/dom.h"
#include "vbs/sk/sk.h"

u64 dom_switch(struct sk_regs *r, u64 action);

u32 dom_id;
u64 dom_action;             /* sk_intercept's decision for the intercept that entered us */
u64 dom_entry_r10;          /* head.S: the first call's R10 = how many capabilities the kernel gave us */
struct dom_cap dom_caps[DOM_MAX_CAPS];
int dom_ncaps;
u64 dom_kernel = ~0ull;      /* a DOMAIN capability naming domain 0, the kernel */
u64 dom_kernel_regs = ~0ull; /* ... with REGS_READ (the HyperGuard domain: the values it locks) */

static const char *type_name(u32 t)
{
    static const char *const n[] = {"?", "MEMORY", "DOMAIN", "INTERCEPT", "PIN", "CREATE"};
    return t < ARRAY_SIZE(n) ? n[t] : "?";
}

void sk_platform_init(void)
{
    dom_id = (u32)dom_hc(DOM_HC_SELF, 0, 0, 0, 0).rax;
    /* the capability table: slots 0..n-1 (the kernel delegated them in order before calling us) */
    u64 n = dom_entry_r10 < DOM_MAX_CAPS ? dom_entry_r10 : DOM_MAX_CAPS;
    char list[320];
    int at = 0;
    list[0] = 0;
    for (u64 slot = 0; slot < n; slot++) {
        struct dom_hc_ret q = dom_hc(DOM_HC_QUERY, slot, 0, 0, 0);
        if (q.rax < 0)
            break;
        struct dom_cap *c = &dom_caps[dom_ncaps++];
        *c = (struct dom_cap){slot, (u32)q.rax & 0xff, (u32)(q.rax >> 8) & 0xffffff, (u32)(q.rax >> 32) & 0xffff,
                              q.rbx, q.rcx};
        if (c->type == DOM_CAP_DOMAIN && c->target == 0) {
            dom_kernel = slot;
            if (c->rights & DOM_REGS_READ)
                dom_kernel_regs = slot;
        }
        if (c->type == DOM_CAP_MEMORY)
            at += ksnprintf(list + at, sizeof(list) - at, "%sMEMORY 0x%lx-0x%lx rights 0x%x", at ? ", " : "", c->p0,
                            c->p1 - 1, c->rights);
        else if (c->type == DOM_CAP_DOMAIN)
            at += ksnprintf(list + at, sizeof(list) - at, "%sDOMAIN %u rights 0x%x", at ? ", " : "", c->target,
                            c->rights);
        else
            at += ksnprintf(list + at, sizeof(list) - at, "%s%s %lu/0x%lx", at ? ", " : "", type_name(c->type), c->p0,
                            c->p1);
        if (at >= (int)sizeof(list))
            at = sizeof(list) - 1;
    }
    SK_LOG("domain %u: %d capabilities: %s\n", dom_id, dom_ncaps, dom_ncaps ? list : "(none)");
    dom_monitor_init();
}

int sk_return_and_wait(struct sk_regs *r, int reason)
{
    u64 entry = dom_switch(r, reason == SK_ENTRY_INTERCEPT ? dom_action : 0);
    if (entry > DOM_ENTRY_INTERCEPT) {
        kprintf("%s: PANIC: DOMAIN_RETURN failed: %ld\nFAILED 255\n", sk_log_prefix, (long)entry);
        debug_exit(0xff);
    }
    return entry == DOM_ENTRY_INTERCEPT ? SK_ENTRY_INTERCEPT : SK_ENTRY_CALL;
}

/* ---- protections on the kernel's view */
struct range {
    u64 start, end;
};
static struct range explicit[32];
static int nexplicit;

static struct dom_cap *mem_cap(u64 start, u64 end, u32 need)
{
    for (int i = 0; i < dom_ncaps; i++) {
        struct dom_cap *c = &dom_caps[i];
        if (c->type == DOM_CAP_MEMORY && c->p0 <= start && end <= c->p1 && (c->rights & need) == need)
            return c;
    }
    return NULL;
}

static int protect(u64 gpa, u64 pages, u32 perms, bool oneway)
{
    u64 end = gpa + pages * 4096;
    struct dom_cap *c = mem_cap(gpa, end, perms | (oneway ? DOM_IMMUTABLE : 0));
    if (!c || dom_kernel == ~0ull)
        return DOM_EPERM;
    long r = dom_hc(DOM_HC_MEM_PROTECT, c->handle | ((u64)perms << 32) | ((u64)oneway << 36), dom_kernel, gpa, pages)
                 .rax;
    return r ? (int)-r : 0;
}

int hv_protect(u64 gpa, u64 pages, u32 flags)
{
    u32 perms = (flags & HV_MAP_GPA_READABLE ? DOM_R : 0) | (flags & HV_MAP_GPA_WRITABLE ? DOM_W : 0) |
                (flags & HV_MAP_GPA_EXECUTABLE ? DOM_X : 0);
    int st = protect(gpa, pages, perms, flags & SK_PROT_ONEWAY);
    if (!st && nexplicit < (int)ARRAY_SIZE(explicit))
        explicit[nexplicit++] = (struct range){gpa, gpa + pages * 4096};
    return st;
}

/* VSM's default mask, as explicit grants: every page our writable MEMORY capabilities cover and nothing
 * was protected explicitly gets `flags` (a sweep at LOAD_KDATA: VTL0's RAM does not change later) */
int sk_set_default_protection(u32 flags)
{
    u32 perms = (flags & HV_MAP_GPA_READABLE ? DOM_R : 0) | (flags & HV_MAP_GPA_WRITABLE ? DOM_W : 0) |
                (flags & HV_MAP_GPA_EXECUTABLE ? DOM_X : 0);
    /* sort the explicit ranges (few: insertion sort) */
    for (int i = 1; i < nexplicit; i++)
        for (int j = i; j > 0 && explicit[j].start < explicit[j - 1].start; j--) {
            struct range t = explicit[j];
            explicit[j] = explicit[j - 1];
            explicit[j - 1] = t;
        }
    u64 total = 0;
    for (int i = 0; i < dom_ncaps; i++) {
        struct dom_cap *c = &dom_caps[i];
        if (c->type != DOM_CAP_MEMORY || !(c->rights & DOM_W))
            continue;
        u64 cur = c->p0;
        for (int k = 0; k <= nexplicit; k++) {
            u64 s = k < nexplicit ? explicit[k].start : c->p1, e = k < nexplicit ? explicit[k].end : c->p1;
            if (s > c->p1)
                s = c->p1;
            if (s > cur) {
                int st = protect(cur, (s - cur) / 4096, perms, false);
                if (st)
                    return st;
                total += (s - cur) / 4096;
            }
            if (e > cur)
                cur = e;
        }
    }
    SK_LOG("hvci: default protection: %lu pages of VTL0 RAM without an explicit protection get 0x%x\n", total, perms);
    return 0;
}

/* no hypercall page in the domains design (VTL0's .hvcall section stays plain data) */
int sk_hvcall_page_state(void) { return 0; }

/* vulnsk.c: a domain hypercall with the attacker's registers, made by this domain */
long sk_raw_hypercall(const struct vulnsk_hypercall *req, u64 out[4])
{
    struct dom_hc_ret r = dom_hc(req->nr, req->a[0], req->a[1], req->a[2], req->a[3]);
    out[0] = (u64)r.rax;
    out[1] = r.rbx;
    out[2] = r.rcx;
    out[3] = dom_id;
    return 0;
}
