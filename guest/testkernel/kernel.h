/* vtlvisor reference test kernel: shared declarations. */
#ifndef TESTKERNEL_KERNEL_H
#define TESTKERNEL_KERNEL_H

#include "lib/desc.h"

/* System call numbers (RAX; args RDI, RSI). */
#define SYS_EXIT 0
#define SYS_WRITE 1
#define SYS_ADD 2
#define SYS_VULN_CALL 86 /* deliberately vulnerable; only with attack=... (attack.c) */

/* User address space layout (PML4 slot 1; nothing else lives there). */
#define USER_BASE 0x0000008000000000ull
#define USER_TEXT_VA USER_BASE
#define USER_STACK_VA (USER_BASE + 0x200000ull)
#define USER_STACK_SIZE 0x4000ull
#define USER_DATA_VA (USER_BASE + 0x400000ull)
#define USER_END (USER_BASE + 0x800000ull)

#define DEMAND_BASE 0xffffc00000000000ull /* kernel demand-paged area */
#define DEMAND_PAGES 16

#ifndef __ASSEMBLER__
#include "lib/cpu.h"
#include "lib/cpuid.h"
#include "lib/crpin.h"
#include "lib/fixup.h"
#include "lib/paging.h"
#include "lib/trap.h"
#include "lib/types.h"

/* user.S (ring-3 programs, in .utext) */
extern char user_prog_syscall[], user_prog_exit_int80[], user_prog_read_kernel[], user_prog_ud2[],
    user_prog_hlt[], user_prog_sgdt[], user_ret_stub[], user_msg_syscall[], user_prog_hypercall[];

/* linker symbols */
extern char __kernel_start[], __text_end[], __rodata_end[], __utext_start[], __utext_end[], __data_start[],
    __kernel_end[];

/* mm.c */
extern u64 ram_top;
void mm_init(u64 ram_top_bytes);
u64 page_alloc(void); /* zeroed 4 KiB page, identity mapped */
void map_page(u64 va, u64 pa, u64 flags);
u64 *pte_lookup(u64 va);
u64 user_va(const void *utext_sym);

/* trap.c */
extern volatile u64 timer_ticks, spurious_count, pic_count, demand_faults;
extern volatile u64 ist_test_frame, ist_test_rsp;
extern volatile u64 exec_fault_target; /* kernel #PF at this RIP: emulate "ret" */
extern volatile bool df_armed;
extern volatile u64 df_frame, df_error, df_resume_rip, df_resume_rsp;
extern struct kjmp test_jmp;
extern volatile bool test_active;
extern const char *volatile current_test;
void trap_dispatch(struct trapframe *tf);

/* Result of running a user program. */
enum user_result { USER_EXITED = 1, USER_KILLED = 2 };
struct user_run {
    int result;
    u64 exit_code, exit_via; /* exit_via: VEC_SYSCALL_INSN or VEC_SYSCALL_INT */
    u64 vector, error, cr2, rip, cs, frame;
    u64 n_syscall, n_int80;
};
extern struct user_run user_run_info;
int run_user(const void *entry_sym, u64 arg);

/* main.c */
void fail_count_inc(void);

/* tests.c */
struct test {
    const char *name;
    /* returns 1 = pass, 0 = fail (detail in buf), -1 = skip (reason in buf) */
    int (*fn)(char *detail, size_t n);
    const char *group; /* tests=<group> selects every check of the group */
};
extern const struct test tests[];
extern const size_t n_tests;

/* Helpers for check functions (which take `char *detail, size_t dn`). */
#define FAILF(...)                          \
    do {                                    \
        ksnprintf(detail, dn, __VA_ARGS__); \
        return 0;                           \
    } while (0)
#define SKIPF(...)                          \
    do {                                    \
        ksnprintf(detail, dn, __VA_ARGS__); \
        return -1;                          \
    } while (0)
/* last_fault must hold exactly one (vec, err) fault at rip (0: any); cr2 unchecked if want_cr2 == ~0. */
int expect_fault(char *detail, size_t dn, const char *what, u64 vec, u64 err, u64 rip, u64 want_cr2);
#define EXPECT(...)                                 \
    do {                                            \
        if (!expect_fault(detail, dn, __VA_ARGS__)) \
            return 0;                               \
    } while (0)
int expect_kill(char *detail, size_t dn, const char *what, const void *prog, u64 arg, u64 vec, u64 err, u64 cr2,
                u64 rip);

/* crpin.c: paravirtualized CR pinning */
int t_crpin_allowed(char *, size_t), t_crpin_allowed_ro(char *, size_t), t_crpin_pins(char *, size_t),
    t_crpin_disallowed(char *, size_t), t_crpin_unpin(char *, size_t), t_crpin_pin_low(char *, size_t),
    t_crpin_cr4_set_low(char *, size_t), t_crpin_cr4_clear(char *, size_t), t_crpin_cr0_wp(char *, size_t),
    t_crpin_lmsw_clts(char *, size_t), t_crpin_hc_version(char *, size_t), t_crpin_hc_cr0_nowp(char *, size_t),
    t_crpin_hc_cr4_disallowed(char *, size_t), t_crpin_hc_cr4_clear(char *, size_t),
    t_crpin_hc_args(char *, size_t), t_crpin_hc_lock(char *, size_t), t_crpin_hc_user(char *, size_t),
    t_crpin_hc_unknown(char *, size_t);

/* attack.c: attack=smep|wp (deliberately vulnerable system call + ROP-style gadgets) */
extern int attack_mode; /* 0 = none (sys_vuln_call disabled) */
int attack_select(const char *name); /* 0 if the name is unknown */
NORETURN void attack_run(void);
u64 sys_vuln_call(u64 target, u64 arg1, u64 arg2);
const char *attack_gadget_name(u64 rip); /* the gadget whose first instruction is at rip, or NULL */

#endif

#endif
