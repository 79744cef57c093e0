/* Processes (one at a time, run to completion), credentials, user-memory access. */
#include "lib/string.h"
#include "lib/x86.h"
#include "vbs/vtl0/kernel.h"

/* Credential templates live in a page of their own, made read-only by KDP (registered at run time). */
const struct cred *cred_root __ro_after_init, *cred_user __ro_after_init;

void cred_init(void)
{
    struct cred *c = (struct cred *)page_alloc();
    c[0] = (struct cred){0, 0, ~0ull, "root"};
    c[1] = (struct cred){1000, 1000, 0, "user"};
    cred_root = &c[0];
    cred_user = &c[1];
    kdp_protect(c, 1);
}

struct proc *current;
struct user_run user_run_info;
bool user_active;
static struct kjmp user_jmp;
static struct proc the_proc;
static int next_pid = 1;

int run_user(const void *entry_sym, u64 arg, const struct cred *cred, const char *name)
{
    memset(&user_run_info, 0, sizeof(user_run_info));
    the_proc = (struct proc){next_pid++, cred, name, {-1, -1, -1, -1}};
    current = &the_proc;
    int r = k_setjmp(&user_jmp);
    if (r == 0) {
        user_active = true;
        enter_user(user_va(entry_sym), USER_STACK_VA + USER_STACK_SIZE, arg);
    }
    user_active = false;
    current = NULL;
    cli();
    if (smap_on)
        clac();
    return r;
}

void kill_current(struct trapframe *tf, u64 cr2, bool oops, bool kcfg)
{
    struct user_run *u = &user_run_info;
    u->result = USER_KILLED;
    u->vector = tf->vector;
    u->error = tf->error;
    u->cr2 = cr2;
    u->rip = tf->rip;
    u->cs = tf->cs;
    u->oops = oops;
    u->kcfg = kcfg;
    if (kcfg)
        kprintf("  kernel: killed pid %d (%s): kCFG violation\n", current->pid, current->name);
    else
        kprintf("  kernel: killed pid %d (%s): %s error=0x%lx rip=0x%lx cr2=0x%lx%s\n", current->pid, current->name,
                tf->vector < 32 ? exc_names[tf->vector] : "?", tf->error, tf->rip, cr2,
                oops ? " (kernel fault in a system call)" : "");
    k_longjmp(&user_jmp, USER_KILLED);
}

NORETURN void exit_current(u64 code)
{
    user_run_info.result = USER_EXITED;
    user_run_info.exit_code = code;
    k_longjmp(&user_jmp, USER_EXITED);
}

bool user_range_ok(u64 p, u64 n) { return p >= USER_BASE && n <= USER_END - USER_BASE && p + n <= USER_END; }

void user_copy_in(void *dst, u64 usrc, u64 n)
{
    if (smap_on)
        stac();
    memcpy(dst, (const void *)usrc, n);
    if (smap_on)
        clac();
}

void user_copy_out(u64 udst, const void *src, u64 n)
{
    if (smap_on)
        stac();
    memcpy((void *)udst, src, n);
    if (smap_on)
        clac();
}
