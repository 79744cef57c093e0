/*
 * System calls.  The table is a page of its own, filled at boot and registered with KDP (read-only for
 * VTL0 through VTL1); dispatch is an indirect call checked by kCFG.
 */
#include "lib/string.h"
#include "lib/uart.h"
#include "vbs/vtl0/kernel.h"

syscall_fn *syscall_table __ro_after_init;
NORETURN void exit_current(u64 code);

static long sys_exit(struct trapframe *tf) { exit_current(tf->rdi); }

static long sys_write(struct trapframe *tf)
{
    u64 p = tf->rdi, n = tf->rsi;
    if (n > 256 || !user_range_ok(p, n))
        return -EFAULT;
    char buf[256];
    user_copy_in(buf, p, n);
    uart_write(buf, n);
    return (long)n;
}

static long sys_getuid(struct trapframe *tf)
{
    (void)tf;
    return current->cred->uid;
}

static long sys_getpid(struct trapframe *tf)
{
    (void)tf;
    return current->pid;
}

static long sys_setuid(struct trapframe *tf)
{
    if (current->cred->uid != 0)
        return -EPERM;
    if (tf->rdi == 0)
        current->cred = cred_root;
    else if (tf->rdi == cred_user->uid)
        current->cred = cred_user;
    else
        return -EINVAL;
    return 0;
}

static long copy_path(u64 up, char *buf, u64 n)
{
    if (!user_range_ok(up, 1))
        return -EFAULT;
    u64 max = USER_END - up < n - 1 ? USER_END - up : n - 1;
    user_copy_in(buf, up, max);
    buf[max] = 0;
    return (long)strnlen(buf, max);
}

static long sys_open(struct trapframe *tf)
{
    char path[96];
    if (copy_path(tf->rdi, path, sizeof(path)) < 0)
        return -EFAULT;
    const struct file *f = file_lookup(path);
    if (!f)
        return -ENOENT;
    const struct cred *c = current->cred;
    bool ok = c->uid == 0 || (c->uid == f->owner ? (f->mode & 0400) : (f->mode & 0004));
    if (!ok)
        return -EACCES;
    for (int fd = 0; fd < MAX_FDS; fd++)
        if (current->fds[fd] < 0) {
            current->fds[fd] = (int)(f - files_table);
            return fd;
        }
    return -EMFILE;
}

static long sys_read(struct trapframe *tf)
{
    u64 fd = tf->rdi, p = tf->rsi, n = tf->rdx;
    if (fd >= MAX_FDS || current->fds[fd] < 0)
        return -EBADF;
    const struct file *f = &files_table[current->fds[fd]];
    if (n > f->size)
        n = f->size;
    if (!user_range_ok(p, n))
        return -EFAULT;
    user_copy_out(p, f->data, n);
    return (long)n;
}

static long sys_close(struct trapframe *tf)
{
    if (tf->rdi >= MAX_FDS || current->fds[tf->rdi] < 0)
        return -EBADF;
    current->fds[tf->rdi] = -1;
    return 0;
}

static long sys_init_module(struct trapframe *tf)
{
    if (current->cred->uid != 0)
        return -EPERM;
    char name[48];
    if (copy_path(tf->rdi, name, sizeof(name)) < 0)
        return -EFAULT;
    u64 init;
    return module_load(name, &init);
}

static long sys_cred_hmac(struct trapframe *tf)
{
    u64 p = tf->rdi, n = tf->rsi, out = tf->rdx;
    static u8 chal[1024];
    if (n == 0 || n > sizeof(chal) || !user_range_ok(p, n) || !user_range_ok(out, 32))
        return -EFAULT;
    user_copy_in(chal, p, n);
    u8 mac[32];
    bool by_vtl1;
    long r = cred_hmac(chal, n, mac, &by_vtl1);
    if (r == 0)
        user_copy_out(out, mac, 32);
    return r;
}

KCFG_TARGET(sys_exit);
KCFG_TARGET(sys_write);
KCFG_TARGET(sys_getuid);
KCFG_TARGET(sys_setuid);
KCFG_TARGET(sys_open);
KCFG_TARGET(sys_read);
KCFG_TARGET(sys_close);
KCFG_TARGET(sys_init_module);
KCFG_TARGET(sys_cred_hmac);
KCFG_TARGET(sys_getpid);
KCFG_TARGET(sys_vulndrv);

void syscall_init(void)
{
    syscall_fn *t = (syscall_fn *)page_alloc();
    t[SYS_EXIT] = sys_exit;
    t[SYS_WRITE] = sys_write;
    t[SYS_GETUID] = sys_getuid;
    t[SYS_SETUID] = sys_setuid;
    t[SYS_OPEN] = sys_open;
    t[SYS_READ] = sys_read;
    t[SYS_CLOSE] = sys_close;
    t[SYS_INIT_MODULE] = sys_init_module;
    t[SYS_CRED_HMAC] = sys_cred_hmac;
    t[SYS_GETPID] = sys_getpid;
    t[SYS_VULNDRV] = sys_vulndrv;
    syscall_table = t;
    kdp_protect(t, 1);
}

void do_syscall(struct trapframe *tf)
{
    u64 nr = tf->rax;
    syscall_fn fn = nr < NR_SYSCALLS ? syscall_table[nr] : NULL;
    if (!fn) {
        tf->rax = (u64)-ENOSYS;
        return;
    }
    if (!kcfg_valid((u64)fn)) {
        kcfg_violation((u64)fn, "system-call dispatch");
        kill_current(tf, 0, false, true);
    }
    tf->rax = (u64)fn(tf);
}
