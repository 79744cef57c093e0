/*
 * The ring-3 runtime of the attack programs (guest/vbs/user): system calls, formatted output, the
 * vulnerable driver's primitives and the kernel's symbol table.  Everything here runs at CPL 3 in
 * the VTL0 kernel's user address space; the programs are linked on their own (user.ld) at
 * USER_TEXT_VA, so they cannot reference kernel code or data except through these primitives.
 *
 * An attack is `int attack_x(const char *args)` registered with UATTACK("x", attack_x).  It checks its
 * own success condition and reports with attack_succeeded()/attack_blocked() (one "ATTACK x: ..." line,
 * then exit 0 or 1).  If the kernel kills it, the kernel prints "ATTACK x: BLOCKED ..." itself.
 */
#ifndef VBS_USER_ULIB_H
#define VBS_USER_ULIB_H

#include "lib/string.h"
#include "lib/types.h"
#include "vbs/vtl0/kernel.h"

/* ---- system calls ---- */
static inline long usys(u64 nr, u64 a0, u64 a1, u64 a2)
{
    long r;
    register u64 rdi __asm__("rdi") = a0, rsi __asm__("rsi") = a1, rdx __asm__("rdx") = a2;
    __asm__ volatile("syscall" : "=a"(r), "+r"(rdi), "+r"(rsi), "+r"(rdx) : "0"(nr) : "rcx", "r11", "memory");
    return r;
}
NORETURN void u_exit(u64 code);
long u_write(const char *s, u64 n);
long u_open(const char *path);
long u_read(long fd, void *buf, u64 n);
long u_close(long fd);
long u_getuid(void);
long u_init_module(const char *name);

/* ---- output; the string routines and kvsnprintf of guest/lib/string.c are linked in ---- */
int u_vsnprintf(char *out, size_t n, const char *fmt, va_list ap);
int u_snprintf(char *out, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void u_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
u64 u_strtoull(const char *s, const char **end, int base);
const char *u_arg(const char *args, const char *key); /* "key=value" in the attack's argument string */

/* ---- the vulnerable driver (SYS_VULNDRV; needs "vulndrv" on the kernel command line) ---- */
u64 kread(u64 addr);
long kwrite(u64 addr, u64 value);
long kcall(u64 target, u64 arg);
/* the raw call, for attacks that expect -ENOSYS etc.: returns the system call result */
long vulndrv(u64 op, u64 a, u64 b);

/* ---- /proc/kallsyms ("address type name" lines, world-readable: no KASLR, no kptr_restrict) ---- */
u64 ksym(const char *name); /* 0 when absent (and a line saying so) */

/* ---- reporting ---- */
/* the launcher writes "name args..." at USER_DATA_VA; the name is the first word */
#define ATTACK_CMDLINE ((const char *)USER_DATA_VA)
NORETURN void attack_succeeded(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
NORETURN void attack_blocked(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
NORETURN void attack_error(const char *fmt, ...) __attribute__((format(printf, 1, 2))); /* exit 2 */

/* scratch memory in the user data pages (kernel.h: USER_DATA_SIZE) */
#define U_SCRATCH (USER_DATA_VA + 0x1000)
#define U_SCRATCH_SIZE 0x1000ull

struct uattack { /* 16 bytes, 16-aligned: an array between __uattacks_start/_end (user.ld) */
    const char *name;
    int (*fn)(const char *args);
};
#define UATTACK(n, f) \
    static const struct uattack __uattack_##f __attribute__((used, aligned(16), section(".uattacks"))) = {n, f}

/* ---- families 10-11 (docs/attacks.md): kernel calls with several arguments, kernel
 * buffers, hypercalls through the kernel's hypercall page ---- */
long kcall3(u64 target, u64 a0, u64 a1, u64 a2);                           /* VULNDRV_CALL6 */
long kcall6(u64 target, u64 a0, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5);
u64 kalloc_page(void); /* a zeroed kernel page (VA == GPA) from the kernel's own page_alloc(); 0 on failure */
void kwrite_buf(u64 kaddr, const void *src, u64 n); /* kwrite word by word (n rounded up to 8) */
void kread_buf(void *dst, u64 kaddr, u64 n);        /* kread word by word (n rounded up to 8) */
/* RCX = control, RDX = input GPA, R8 = output GPA, through the hypercall page the kernel enabled
 * (__hvcall_page): returns RAX (status in bits 0-15).  A hypercall page that is not enabled is no
 * hypercall: the caller checks HV_X64_MSR_HYPERCALL first. */
u64 khypercall(u64 control, u64 in_gpa, u64 out_gpa);

#endif
