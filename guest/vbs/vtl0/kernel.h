/* The VBS VTL0 kernel: shared declarations. */
#ifndef VBS_VTL0_KERNEL_H
#define VBS_VTL0_KERNEL_H

#include "lib/desc.h"

/* Physical memory map (identity mapped, VA == PA, except the physmap alias and user space). */
#define PT_POOL_START 0x400000ull /* VTL0's page-table pages (see docs/guest.md: NPT execute workaround) */
#define PT_POOL_END 0x440000ull
#define POOL_START 0x440000ull    /* page pool: user pages, KDP pages, data */
#define POOL_END 0x800000ull
#define MODULE_BASE 0x800000ull   /* module area (kCFG module bitmap covers KCFG_SPAN from here) */
#define MODULE_SIZE 0x100000ull
#define RAM_MIN 0x2000000ull      /* 32 MiB: the VTL1 region is at 16 MiB */
#define PHYSMAP_BASE 0xffff888000000000ull /* all RAM again, RW+NX (the Linux direct map) */

/* User address space (PML4 slot 1) */
#define USER_BASE 0x0000008000000000ull
#define USER_TEXT_VA USER_BASE
#define USER_STACK_VA (USER_BASE + 0x200000ull)
#define USER_STACK_SIZE 0x4000ull
#define USER_DATA_VA (USER_BASE + 0x400000ull)
#define USER_DATA_SIZE 0x4000ull /* [0,4K) arguments, [4K,8K) scratch, [8K,16K) kallsyms buffer */
#define USER_END (USER_BASE + 0x800000ull)

/* System calls: RAX = number, RDI/RSI/RDX = arguments, RAX = result (negative errno). */
#define SYS_EXIT 0
#define SYS_WRITE 1        /* (buf, len) */
#define SYS_GETUID 2
#define SYS_SETUID 3       /* (uid): root only */
#define SYS_OPEN 4         /* (path): fd; permission check against the caller's credentials */
#define SYS_READ 5         /* (fd, buf, len) */
#define SYS_CLOSE 6        /* (fd) */
#define SYS_INIT_MODULE 7  /* (name): root only; loads module_dir + name */
#define SYS_CRED_HMAC 8    /* (challenge, len, out[32]): the credential service */
#define SYS_GETPID 9
#define SYS_VULNDRV 86     /* DELIBERATELY VULNERABLE DRIVER: only with "vulndrv" on the command line */
#define NR_SYSCALLS 128

/* SYS_VULNDRV operations (RDI): arbitrary kernel read/write and a controlled indirect call */
#define VULNDRV_READ 1  /* (addr): returns *(u64 *)addr */
#define VULNDRV_WRITE 2 /* (addr, value): *(u64 *)addr = value */
#define VULNDRV_CALL 3  /* (target, arg): returns ((u64 (*)(u64))target)(arg), through the kCFG check */
#define VULNDRV_CALL6 4 /* (target, uargs): target(uargs[0..5]) (a user array of six u64), through the kCFG
                           * check: a ROP chain calling a kernel function with several arguments */

#define ENOENT 2
#define EBADF 9
#define EACCES 13
#define EFAULT 14
#define EPERM 1
#define EINVAL 22
#define EMFILE 24
#define ENOSYS 38

#ifndef __ASSEMBLER__
#include "lib/fixup.h"
#include "lib/paging.h"
#include "lib/trap.h"
#include "lib/types.h"
#include "lib/vbs_abi.h"

/* linker symbols */
extern char __kernel_start[], __ktext_end[], __text_end[], __utext_start[], __utext_end[], __signed_end[],
    __kcfg_start[], __kcfg_end[], __kcfg_targets_start[], __kcfg_targets_end[], __hvcall_page[], __kernsig[],
    __ro_after_init_start[], __ro_after_init_end[], __vtl1_image_start[], __vtl1_image_end[], __data_start[],
    __kernel_end[], __kexports_start[], __kexports_end[];

/* kCFG: KCFG_TARGET(fn) makes fn a valid indirect-call target (bitmap built at link time). */
#define KCFG_TARGET(fn) \
    static const u64 __kcfg_target_##fn __attribute__((used, section(".kcfg_targets"))) = (u64)(fn)
#define KEXPORT(sym)                                                                  \
    static const char __kexport_name_##sym[] = #sym;                                  \
    static const struct kexport __kexport_##sym __attribute__((used, section(".kexports"))) = { \
        __kexport_name_##sym, (u64)&(sym)}

/* /proc/kallsyms (kallsyms.c): KSYM(sym) lists sym; world-readable, as with kptr_restrict=0 and no KASLR */
struct ksym {
    const char *name;
    u64 addr;
};
#define KSYM(sym) \
    static const struct ksym __ksym_##sym __attribute__((used, section(".ksyms"))) = {#sym, (u64)&(sym)}
extern char __ksyms_start[], __ksyms_end[];
extern u64 cr4_shadow; /* the CR4 value the kernel believes in (Linux: cpu_tlbstate.cr4) */
void kallsyms_init(void);
extern char kallsyms_text[];
extern u64 kallsyms_len;
/* attack.c: attack=NAME runs the ring-3 attack program NAME (guest/vbs/user) as an unprivileged process */
int run_attack(const char *name);
extern char uattack_start[];

/* Features (ro_after_init) */
struct vbs_state {
    bool vsm;                  /* VTL1 running */
    bool vsm_available;
    u32 requested, armed;      /* VBS_F_* */
    bool crpin;                /* CR pinning armed (vsm off) */
    bool vulndrv;
    bool kcfg;                 /* kCFG checks on (with or without VTL1) */
    bool module_sig_enforce;   /* VTL0's own signature check of modules */
    u64 sk_base, sk_size, sk_key; /* VTL1 region and the GPA of its key */
};
extern struct vbs_state vbs;
extern u64 ram_top;
extern struct cpu_features cpu;
extern bool smap_on, smep_on, umip_on, nx_on;

/* mm.c */
extern struct pgtable kpt;
void mm_init(void);
u64 page_alloc(void);
u64 pool_alloc_aligned(u64 pages); /* contiguous, page aligned, zeroed */
void map_page(u64 va, u64 pa, u64 flags);
u64 *pte_lookup(u64 va);
u64 user_va(const void *utext_sym);
static inline u64 physmap(u64 pa) { return PHYSMAP_BASE + pa; }
void mm_protect_ro_after_init(void); /* VTL0's own page tables: ro_after_init -> R */

/* vsm.c */
struct vbs_ret {
    long status;
    u64 r[4];
};
struct vbs_ret vbs_call(u64 id, u64 a0, u64 a1, u64 a2, u64 a3);
int vsm_boot(void);             /* loads and starts VTL1, LOAD_KDATA; prints the vsm: lines */
int vsm_end_of_boot(void);
int kdp_protect(void *p, u64 pages); /* PROTECT_MEMORY (no-op without KDP) */
const u8 *vbs_cred_key_vtl0(void); /* the key VTL0 holds when credential isolation is off, or NULL */
long cred_hmac(const u8 *msg, u64 len, u8 out[32], bool *by_vtl1);

/* kcfg.c */
bool kcfg_valid(u64 target);
void kcfg_violation(u64 target, const char *site);
/* the checked indirect call: target(arg), or *blocked and 0 */
u64 kcfg_icall(u64 target, u64 arg, const char *site, bool *blocked);
extern u64 kcfg_blocked;
void kcfg_set_module_target(u64 va); /* VTL0 sets bits only when VTL1 does not protect the bitmap */

/* proc.c / syscall.c */
struct cred {
    u32 uid, gid;
    u64 caps;
    char name[16];
};
extern const struct cred *cred_root, *cred_user;
#define MAX_FDS 4
struct proc {
    int pid;
    const struct cred *cred;
    const char *name;
    int fds[MAX_FDS];
};
extern struct proc *current;
enum user_result { USER_EXITED = 1, USER_KILLED = 2 };
struct user_run {
    int result;
    u64 exit_code, vector, error, cr2, rip, cs;
    bool oops;   /* killed for a kernel fault inside one of its system calls */
    bool kcfg;   /* killed by a kCFG violation */
};
extern struct user_run user_run_info;
int run_user(const void *entry_sym, u64 arg, const struct cred *cred, const char *name);
NORETURN void kill_current(struct trapframe *tf, u64 cr2, bool oops, bool kcfg);
extern bool user_active;
void syscall_init(void);
void do_syscall(struct trapframe *tf);
typedef long (*syscall_fn)(struct trapframe *tf);
extern syscall_fn *syscall_table;
void cred_init(void);
void user_copy_in(void *dst, u64 usrc, u64 n);
void user_copy_out(u64 udst, const void *src, u64 n);
bool user_range_ok(u64 p, u64 n);

/* files.c */
struct file {
    const char *path;
    u32 owner, mode;
    const u8 *data;
    u64 size;
};
void files_init(void);
const struct file *file_lookup(const char *path);
extern struct file files_table[];
extern const int n_files;

/* module.c */
extern char *module_dir;
void module_init_dir(void);
long module_load(const char *name, u64 *init_ret);
long vbs_register_hook(const char *name, long (*fn)(long));
long vbs_call_hook(const char *name, long arg, bool *found);

/* vulndrv.c */
long sys_vulndrv(struct trapframe *tf);

/* checks.c */
int run_checks(const char *sel);

/* trap.c */
extern volatile u64 timer_ticks;
extern struct kjmp check_jmp;
extern volatile bool check_active;

/* user.S */
extern char uprog_script[], uprog_sgdt[], uprog_ud2[], uprog_read_kernel[];
struct uscript_op {
    u64 nr, a0, a1, a2, ret;
};
#define USCRIPT_MAX 16
struct uscript {
    u64 n, done;
    struct uscript_op op[USCRIPT_MAX];
    char buf[3072];
};

#endif
#endif
