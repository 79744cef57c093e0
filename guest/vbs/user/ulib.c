/* The ring-3 runtime of the attack programs: see ulib.h. */
#include "vbs/user/ulib.h"

NORETURN void u_exit(u64 code)
{
    usys(SYS_EXIT, code, 0, 0);
    for (;;)
        __asm__ volatile("ud2");
}
long u_write(const char *s, u64 n) { return usys(SYS_WRITE, (u64)s, n, 0); }
long u_open(const char *path) { return usys(SYS_OPEN, (u64)path, 0, 0); }
long u_read(long fd, void *buf, u64 n) { return usys(SYS_READ, (u64)fd, (u64)buf, n); }
long u_close(long fd) { return usys(SYS_CLOSE, (u64)fd, 0, 0); }
long u_getuid(void) { return usys(SYS_GETUID, 0, 0, 0); }
long u_init_module(const char *name) { return usys(SYS_INIT_MODULE, (u64)name, 0, 0); }

u64 u_strtoull(const char *s, const char **end, int base)
{
    u64 v = 0;
    if (base == 16 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
        s += 2;
    for (;; s++) {
        int d;
        if (*s >= '0' && *s <= '9')
            d = *s - '0';
        else if (base == 16 && *s >= 'a' && *s <= 'f')
            d = *s - 'a' + 10;
        else if (base == 16 && *s >= 'A' && *s <= 'F')
            d = *s - 'A' + 10;
        else
            break;
        v = v * (u64)base + (u64)d;
    }
    if (end)
        *end = s;
    return v;
}

const char *u_arg(const char *args, const char *key)
{
    size_t k = strlen(key);
    for (const char *p = args; *p;) {
        while (*p == ' ')
            p++;
        if (!strncmp(p, key, k) && p[k] == '=')
            return p + k + 1;
        while (*p && *p != ' ')
            p++;
    }
    return NULL;
}

int u_vsnprintf(char *out, size_t n, const char *fmt, va_list ap) { return kvsnprintf(out, n, fmt, ap); }

int u_snprintf(char *out, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = u_vsnprintf(out, n, fmt, ap);
    va_end(ap);
    return r;
}

static void u_vprintf(const char *fmt, va_list ap)
{
    char buf[256];
    int n = u_vsnprintf(buf, sizeof(buf), fmt, ap);
    u_write(buf, (u64)(n < (int)sizeof(buf) ? n : (int)sizeof(buf) - 1));
}

void u_printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    u_vprintf(fmt, ap);
    va_end(ap);
}

long vulndrv(u64 op, u64 a, u64 b) { return usys(SYS_VULNDRV, op, a, b); }
u64 kread(u64 addr) { return (u64)vulndrv(VULNDRV_READ, addr, 0); }
long kwrite(u64 addr, u64 value) { return vulndrv(VULNDRV_WRITE, addr, value); }
long kcall(u64 target, u64 arg) { return vulndrv(VULNDRV_CALL, target, arg); }

u64 ksym(const char *name)
{
    char *buf = (char *)(USER_DATA_VA + 0x2000); /* kernel.h: the kallsyms buffer */
    long fd = u_open("/proc/kallsyms");
    if (fd < 0) {
        u_printf("  attack: cannot open /proc/kallsyms (%ld)\n", fd);
        return 0;
    }
    long n = u_read(fd, buf, 0x1fff);
    u_close(fd);
    if (n < 0)
        n = 0;
    buf[n] = 0;
    size_t k = strlen(name);
    for (char *p = buf; *p;) {
        const char *end;
        u64 a = u_strtoull(p, &end, 16);
        /* "addr t name\n" */
        if (end[0] == ' ' && end[1] && end[2] == ' ' && !strncmp(end + 3, name, k) &&
            (end[3 + k] == '\n' || !end[3 + k]))
            return a;
        while (*p && *p != '\n')
            p++;
        if (*p)
            p++;
    }
    u_printf("  attack: symbol %s not in /proc/kallsyms\n", name);
    return 0;
}

static void report(const char *what, const char *fmt, va_list ap)
{
    const char *name = ATTACK_CMDLINE;
    int n = 0;
    while (name[n] && name[n] != ' ')
        n++;
    char buf[256];
    int o = u_snprintf(buf, sizeof(buf), "ATTACK %.*s: %s ", n, name, what);
    if (o < (int)sizeof(buf))
        o += u_vsnprintf(buf + o, sizeof(buf) - (size_t)o, fmt, ap);
    if (o > (int)sizeof(buf) - 2)
        o = (int)sizeof(buf) - 2;
    buf[o++] = '\n';
    u_write(buf, (u64)o);
}

NORETURN void attack_succeeded(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    report("SUCCEEDED", fmt, ap);
    va_end(ap);
    u_exit(0);
}

NORETURN void attack_blocked(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    report("BLOCKED", fmt, ap);
    va_end(ap);
    u_exit(1);
}

NORETURN void attack_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    u_printf("  attack: ERROR ");
    u_vprintf(fmt, ap);
    u_printf("\n");
    va_end(ap);
    u_exit(2);
}

extern const struct uattack __uattacks_start[], __uattacks_end[];

NORETURN void umain(const char *cmdline)
{
    int n = 0;
    while (cmdline[n] && cmdline[n] != ' ')
        n++;
    const char *args = cmdline[n] ? cmdline + n + 1 : cmdline + n;
    for (const struct uattack *a = __uattacks_start; a < __uattacks_end; a++)
        if ((int)strlen(a->name) == n && !strncmp(a->name, cmdline, (size_t)n))
            u_exit((u64)a->fn(args));
    attack_error("no attack program named '%.*s'", n, cmdline);
}

/* ---- families 10-11 (docs/attacks.md) */
long kcall6(u64 target, u64 a0, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5)
{
    u64 args[6] = {a0, a1, a2, a3, a4, a5}; /* on the user stack: the driver copies them in */
    return vulndrv(VULNDRV_CALL6, target, (u64)args);
}
long kcall3(u64 target, u64 a0, u64 a1, u64 a2) { return kcall6(target, a0, a1, a2, 0, 0, 0); }

u64 kalloc_page(void)
{
    u64 f = ksym("page_alloc");
    return f ? (u64)kcall(f, 0) : 0;
}

void kwrite_buf(u64 kaddr, const void *src, u64 n)
{
    for (u64 o = 0; o < n; o += 8) {
        u64 v = 0;
        memcpy(&v, (const u8 *)src + o, n - o < 8 ? n - o : 8);
        kwrite(kaddr + o, v);
    }
}

void kread_buf(void *dst, u64 kaddr, u64 n)
{
    for (u64 o = 0; o < n; o += 8) {
        u64 v = kread(kaddr + o);
        memcpy((u8 *)dst + o, &v, n - o < 8 ? n - o : 8);
    }
}

u64 khypercall(u64 control, u64 in_gpa, u64 out_gpa)
{
    /* the page's first bytes are "vmmcall; ret": called with RDI, RSI unused, RDX, RCX, R8 = a2, a3, a4 */
    return (u64)kcall6(ksym("__hvcall_page"), 0, 0, in_gpa, control, out_gpa, 0);
}
