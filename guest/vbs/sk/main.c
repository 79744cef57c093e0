/*
 * VTL1 secure kernel: initialisation (self-protection, own page tables), the VTL-call service loop
 * and the services that are not HVCI or HyperGuard (KDP, credential isolation, status, violations).
 * The same source runs as each feature domain of the domains design (built with SK_DOMAINS against
 * guest/vbs/dom/dom.c instead of hv.c: docs/domains.md).
 */
#include "lib/desc.h"
#include "lib/ed25519.h"
#include "lib/fixup.h"
#include "lib/io.h"
#include "lib/msr.h"
#include "lib/paging.h"
#include "lib/sha256.h"
#include "lib/string.h"
#include "lib/trap.h"
#include "lib/x86.h"
#include "vbs/sk/sk.h"

u8 hc_in[4096] ALIGNED(4096), hc_out[4096] ALIGNED(4096);
static u8 pt_pool[16][4096] ALIGNED(4096);
static int pt_used;

struct idt_gate {
    u16 off_lo, sel;
    u8 ist, type_attr;
    u16 off_mid;
    u32 off_hi, zero;
} PACKED;
static struct idt_gate sk_idt[32] ALIGNED(16);

u32 sk_requested, sk_armed;
int sk_phase;
u64 vtl0_ram_top = 0x40000000;

/* ---- violations (GET_VIOLATION) */
struct violation {
    u64 kind_access_action, addr, rip, value;
};
#define NVIOL 64
static struct violation viol[NVIOL];
static u64 nviol;

void sk_record_violation(u32 kind, u32 access, u32 action, u64 addr, u64 rip, u64 value)
{
    struct violation *v = &viol[nviol % NVIOL];
    v->kind_access_action = kind | (access << 8) | ((u64)action << 16);
    v->addr = addr;
    v->rip = rip;
    v->value = value;
    nviol++;
}

/* ---- exceptions in VTL1 are fatal, except at the fixup-table accessors (the vulnerable service's) */
void trap_dispatch(struct trapframe *tf)
{
    if (tf->vector < 32 && fixup_recover(tf, read_cr2()))
        return;
    kprintf("sk: PANIC: %s (vector %lu) error=0x%lx at rip=0x%lx cr2=0x%lx\nFAILED 255\n",
            tf->vector < 32 ? exc_names[tf->vector] : "irq", tf->vector, tf->error, tf->rip, read_cr2());
    debug_exit(0xff);
}

static void idt_init(void)
{
    for (int v = 0; v < 32; v++) {
        u64 off = (u64)isr_stubs + 16ull * v;
        sk_idt[v] = (struct idt_gate){(u16)off, 0x08, 0, 0x8e, (u16)(off >> 16), (u32)(off >> 32), 0};
    }
    struct desc_ptr p = {sizeof(sk_idt) - 1, (u64)sk_idt};
    __asm__ volatile("lidt %0" : : "m"(p));
}

/* ---- own page tables: [0, 1 GiB) RW+NX with 2 MiB pages; the VTL1 region with 4 KiB pages by section */
static u64 pt_alloc(void)
{
    if (pt_used >= (int)ARRAY_SIZE(pt_pool)) {
        kprintf("sk: PANIC: page-table pool exhausted\n");
        debug_exit(0xff);
    }
    memset(pt_pool[pt_used], 0, 4096);
    return (u64)pt_pool[pt_used++];
}

static void paging_init(void)
{
    struct pgtable pt = {.alloc = pt_alloc, .nx = true};
    pt.pml4 = (u64 *)pt_alloc();
    u64 lo = SK_BASE & ~0x1fffffull, hi = (SK_BASE + SK_REGION_SIZE + 0x1fffff) & ~0x1fffffull;
    for (u64 a = 0; a < 0x40000000ull; a += 0x200000)
        if (a < lo || a >= hi)
            pt_map_2m(&pt, a, a, PTE_W | PTE_NX);
    for (u64 a = lo; a < hi; a += 4096) {
        u64 f = PTE_W | PTE_NX;
        if (a >= SK_BASE && a < (u64)__sk_text_end)
            f = 0; /* text and the hypercall page: R+X */
        else if (a >= (u64)__sk_text_end && a < (u64)__sk_rodata_end)
            f = PTE_NX;
        pt_map(&pt, a, a, f);
    }
    write_cr3((u64)pt.pml4);
}

/* ---- init: the hypervisor layer (hv.c: hypercall, VP assist and message pages, self-protection; dom.c:
 * the capabilities this domain was given), own page tables, self-tests */
static void sk_init(void)
{
    idt_init();
    SK_LOG("secure kernel entered in %s at 0x%lx (image 0x%lx-0x%lx, region 0x%lx-0x%lx)\n", sk_name,
           (u64)sk_header.entry, SK_BASE, (u64)__sk_image_end - 1, SK_BASE, SK_BASE + SK_REGION_SIZE - 1);
    sk_platform_init();
    paging_init();
    u8 d[32];
    sha256((const u8 *)"abc", 3, d);
    bool sha_ok = d[0] == 0xba && d[31] == 0xad;
    bool ed_ok = ed25519_selftest();
    SK_LOG("own page tables (W^X); self-test sha256 %s, ed25519 %s\n", sha_ok ? "ok" : "FAILED", ed_ok ? "ok" : "FAILED");
    if (!sha_ok || !ed_ok)
        debug_exit(0xff);
}

/* ---- VTL0 memory */
bool vtl0_range_ok(u64 gpa, u64 len)
{
    if (len == 0 || gpa + len < gpa || gpa + len > vtl0_ram_top)
        return false;
    return gpa + len <= SK_SECURE_BASE || gpa >= SK_SECURE_BASE + SK_SECURE_SIZE;
}

/* label: what the range is, for the reader (the violation log labels addresses with sk_label) */
int sk_protect(u64 gpa, u64 pages, u32 flags, const char *label)
{
    (void)label;
    return hv_protect(gpa, pages, flags);
}

/* ---- services */
struct kdp_range {
    u64 start, end;
};
#define NKDP 32
static struct kdp_range kdp_ranges[NKDP];
static int nkdp;

bool sk_in_kdp(u64 gpa)
{
    for (int i = 0; i < nkdp; i++)
        if (gpa >= kdp_ranges[i].start && gpa < kdp_ranges[i].end)
            return true;
    return false;
}

static bool overlaps(u64 a, u64 alen, u64 b, u64 blen) { return a < b + blen && b < a + alen; }

static long svc_protect_memory(u64 gpa, u64 pages, u64 prot)
{
    if (!(sk_armed & VBS_F_KDP))
        return -VBS_ENOSYS;
    if (prot != VBS_PROT_RO || (gpa & 0xfff) || pages == 0 || pages > 64 || !vtl0_range_ok(gpa, pages * 4096))
        return -VBS_EINVAL;
    u64 len = pages * 4096;
    /* never touch the image VTL1 verified, the module area or the hypercall page: protections only grow */
    if (overlaps(gpa, len, bp.kernel_start, bp.signed_end - bp.kernel_start) ||
        overlaps(gpa, len, bp.module_base, bp.module_size) || overlaps(gpa, len, bp.hvcall_page, 4096) ||
        overlaps(gpa, len, bp.pt_pool_start, bp.pt_pool_end - bp.pt_pool_start))
        return -VBS_EPERM;
    if (nkdp >= NKDP)
        return -VBS_ENOSPC;
    int st = sk_protect(gpa, pages, HV_MAP_GPA_READABLE | SK_PROT_ONEWAY, "kdp");
    if (st)
        return -VBS_EFAULT;
    kdp_ranges[nkdp++] = (struct kdp_range){gpa, gpa + len};
    SK_LOG("kdp: 0x%lx-0x%lx read-only for VTL0 (%lu page%s)\n", gpa, gpa + len - 1, pages, pages == 1 ? "" : "s");
    return 0;
}

static long svc_signal_end_of_boot(u64 *out)
{
    if (sk_phase != 1)
        return -VBS_EPERM;
    if (sk_armed & VBS_F_KDP) {
        u64 s = bp.ro_after_init_start, e = bp.ro_after_init_end;
        if (e > s) {
            if (sk_protect(s, (e - s) / 4096, HV_MAP_GPA_READABLE | SK_PROT_ONEWAY, "ro_after_init"))
                return -VBS_EFAULT;
            kdp_ranges[nkdp++] = (struct kdp_range){s, e};
            SK_LOG("kdp: ro_after_init 0x%lx-0x%lx read-only for VTL0\n", s, e - 1);
        }
    }
    if ((sk_requested & VBS_F_HYPERGUARD) && !(sk_armed & VBS_F_HYPERGUARD)) {
        long r = sk_lock_regs();
        if (r)
            return r;
    }
    sk_phase = 2;
    SK_LOG("end of boot: armed 0x%x; boot-time calls closed\n", sk_armed);
    *out = sk_armed;
    return 0;
}

static long svc_cred_hmac(u64 gpa, u64 len, u64 out[4])
{
    static u8 chal[4096];
    if (!(sk_armed & VBS_F_CREDGUARD))
        return -VBS_ENOSYS;
    if (len == 0 || len > sizeof(chal))
        return -VBS_EINVAL;
    if (!vtl0_range_ok(gpa, len)) { /* a confused-deputy attempt: a buffer in VTL1's own memory */
        SK_LOG("cred: refused a challenge buffer at GPA 0x%lx (+0x%lx) outside VTL0 memory\n", gpa, len);
        return -VBS_EINVAL;
    }
    memcpy(chal, (const void *)gpa, len);
    u8 mac[32];
    hmac_sha256((const u8 *)sk_cred_key, 32, chal, len, mac);
    memcpy(out, mac, 32); /* returned in registers: VTL1 never writes VTL0 memory for this service */
    memset(mac, 0, sizeof(mac));
    return 0;
}

static long dispatch(struct sk_regs *r, u64 out[4])
{
    u64 id = r->rdi, a0 = r->rsi, a1 = r->rdx, a2 = r->r8, a3 = r->r9;
    switch (id) {
    case VBS_CALL_LOAD_KDATA:
        return sk_load_kdata(a0, &out[0]);
    case VBS_CALL_LOCK_REGS:
        if (sk_phase != 1)
            return -VBS_EPERM;
        if (!(sk_requested & VBS_F_HYPERGUARD))
            return -VBS_ENOSYS;
        return sk_lock_regs();
    case VBS_CALL_SIGNAL_END_OF_BOOT:
        return svc_signal_end_of_boot(&out[0]);
    case VBS_CALL_PROTECT_MEMORY:
        return svc_protect_memory(a0, a1, a2);
    case VBS_CALL_VALIDATE_MODULE:
        return sk_validate_module(a0, a1, a2, a3, &out[0]);
    case VBS_CALL_CRED_HMAC:
        return svc_cred_hmac(a0, a1, out);
    case VBS_CALL_VULNSK:
        return sk_vulnsk(a0, a1, a2, out);
    case VBS_CALL_GET_VIOLATION: {
        if (nviol == 0)
            return 0;
        u64 i = a0 == ~0ull ? nviol - 1 : a0;
        if (i >= nviol || nviol - i > NVIOL)
            return -VBS_EINVAL;
        struct violation *v = &viol[i % NVIOL];
        out[0] = v->kind_access_action;
        out[1] = v->addr;
        out[2] = v->rip;
        out[3] = v->value;
        return (long)nviol;
    }
    case VBS_CALL_STATUS:
        out[0] = sk_armed;
        out[1] = (u64)sk_phase;
        out[2] = SK_BASE;
        out[3] = SK_REGION_SIZE;
        return 0;
    default:
        return -VBS_ENOSYS;
    }
}

void sk_main(struct sk_regs *first)
{
    sk_init();
    struct sk_regs r = *first;
    int reason = SK_ENTRY_CALL; /* the first entry is the kernel's first call */
    for (;;) {
        if (reason == SK_ENTRY_INTERCEPT) {
            sk_intercept(&r); /* r: all of VTL0's GPRs, to be restored (VSM) */
        } else {
            u64 out[4] = {0, 0, 0, 0};
            long st = dispatch(&r, out);
            /* scrub: only the status and the outputs go back */
            memset(&r, 0, sizeof(r));
            r.rax = (u64)st;
            r.rsi = out[0];
            r.r8 = out[1];
            r.r9 = out[2];
            r.r10 = out[3];
            memset(out, 0, sizeof(out));
        }
        reason = sk_return_and_wait(&r, reason);
    }
}
