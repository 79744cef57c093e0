/*
 * attack=smep / attack=wp: two exploits against a deliberately vulnerable
 * system call, run with and without paravirtualized CR pinning.
 *
 * sys_vuln_call(target, arg1, arg2) lets ring 3 make the kernel call any
 * address with RDI/RSI of its choice: it stands in for kernel control-flow
 * hijack (a ROP chain).  It is only reachable when attack=... is on the
 * command line; otherwise it returns -ENOSYS.  The exploits reuse gadgets in
 * kernel text (attack_asm.S): "mov %rdi,%cr4; ret" (as LKDTM UNSET_SMEP does with
 * native_write_cr4), "mov %rdi,%cr0; ret" and "mov %rsi,(%rdi); ret".
 *
 *   smep: clear CR4.SMEP through the gadget, then have the kernel call a
 *         payload in a user page; the payload sets a kernel marker.
 *   wp:   clear CR0.WP through the gadget, then write a marker into a
 *         read-only page of kernel text.
 *
 * With the bits pinned (crpin: at boot), the gadget's CR write takes #GP(0);
 * the kernel's fault handler treats it as an oops and kills the process.
 * Output: one "ATTACK <name>: SUCCEEDED ..." or "ATTACK <name>: BLOCKED ..."
 * line and debug-exit 0; anything else is "ATTACK <name>: ERROR ..." and
 * debug-exit 1.
 */
#include "lib/io.h"
#include "lib/string.h"
#include "lib/x86.h"
#include "testkernel/kernel.h"

enum { ATTACK_NONE, ATTACK_SMEP, ATTACK_WP };
int attack_mode;

extern char gadget_write_cr4[], gadget_write_cr0[], gadget_write_mem[], attack_text_target[];
extern char user_exploit_smep[], user_exploit_wp[];

/* What the exploit "leaked" about the kernel; lives in the user data page. */
struct attack_info {
    u64 cr_gadget, cr_value, cr_clear_bit, write_target, marker_addr, marker_value;
};

#define MARKER_SMEP 0xc0dec0dec0dec0deull
#define MARKER_WP 0x0bad7e4700c0ffeeull

static volatile u64 smep_marker; /* kernel data: the SMEP payload writes here */

int attack_select(const char *name)
{
    size_t n = 0;
    while (name[n] && name[n] != ' ')
        n++;
    if (n == 4 && !strncmp(name, "smep", 4))
        attack_mode = ATTACK_SMEP;
    else if (n == 2 && !strncmp(name, "wp", 2))
        attack_mode = ATTACK_WP;
    return attack_mode;
}

/* THE VULNERABLE SYSTEM CALL (attack mode only): calls an arbitrary address. */
u64 sys_vuln_call(u64 target, u64 arg1, u64 arg2)
{
    if (attack_mode == ATTACK_NONE)
        return (u64)-38; /* -ENOSYS */
    const char *g = attack_gadget_name(target);
    kprintf("  kernel: sys_vuln_call(target=0x%lx%s%s, rdi=0x%lx, rsi=0x%lx)\n", target, g ? " = " : "",
            g ? g : (target >= USER_BASE && target < USER_END ? " (user page)" : ""), arg1, arg2);
    return ((u64(*)(u64, u64))target)(arg1, arg2);
}

const char *attack_gadget_name(u64 rip)
{
    if (rip == (u64)gadget_write_cr4)
        return "gadget_write_cr4 (mov %rdi,%cr4; ret)";
    if (rip == (u64)gadget_write_cr0)
        return "gadget_write_cr0 (mov %rdi,%cr0; ret)";
    if (rip == (u64)gadget_write_mem)
        return "gadget_write_mem (mov %rsi,(%rdi); ret)";
    return NULL;
}

static void put_info(const struct attack_info *ai)
{
    if (smap_on)
        stac();
    memcpy((void *)USER_DATA_VA, ai, sizeof(*ai));
    if (smap_on)
        clac();
}

static const char *crpin_name(void)
{
    return crpin_state == CRPIN_ON ? "on" : crpin_state == CRPIN_OFF ? "off" : "unavailable";
}

static NORETURN void conclude(bool ok) { debug_exit(ok ? 0 : 1); }

static NORETURN void attack_smep(void)
{
    const char *name = "smep";
    u64 cr4 = read_cr4();
    struct attack_info ai = {
        .cr_gadget = (u64)gadget_write_cr4,
        .cr_value = cr4,
        .cr_clear_bit = CR4_SMEP,
        .marker_addr = (u64)&smep_marker,
        .marker_value = MARKER_SMEP,
    };
    kprintf("  attack: smep: cr4=0x%lx (SMEP %s), crpin %s; gadget at 0x%lx, payload in a user page\n", cr4,
            cr4 & CR4_SMEP ? "on" : "off: nothing to defeat", crpin_name(), (u64)gadget_write_cr4);
    put_info(&ai);
    smep_marker = 0;
    int r = run_user(user_exploit_smep, USER_DATA_VA);
    u64 cr4_after = read_cr4();
    struct user_run *u = &user_run_info;
    if (r == USER_EXITED && u->exit_code == 0 && smep_marker == MARKER_SMEP) {
        kprintf("ATTACK %s: SUCCEEDED payload-ran cr4=0x%lx\n", name, cr4_after);
        conclude(true);
    }
    if (r == USER_KILLED && (u->cs & 3) == 0 && u->vector == 13 && u->error == 0 &&
        u->rip == (u64)gadget_write_cr4 && cr4_after == cr4 && smep_marker == 0) {
        kprintf("ATTACK %s: BLOCKED vector=13 rip=0x%lx cr4=0x%lx\n", name, u->rip, cr4_after);
        conclude(true);
    }
    if (r == USER_KILLED)
        kprintf("ATTACK %s: ERROR process killed: vector=%lu error=0x%lx rip=0x%lx cr2=0x%lx cr4=0x%lx marker=0x%lx\n",
                name, u->vector, u->error, u->rip, u->cr2, cr4_after, smep_marker);
    else
        kprintf("ATTACK %s: ERROR exploit exited %lu, marker=0x%lx cr4=0x%lx\n", name, u->exit_code, smep_marker,
                cr4_after);
    conclude(false);
}

static NORETURN void attack_wp(void)
{
    const char *name = "wp";
    volatile u64 *text = (volatile u64 *)attack_text_target;
    u64 cr0 = read_cr0(), old = *text;
    u64 *pte = pte_lookup((u64)text);
    struct attack_info ai = {
        .cr_gadget = (u64)gadget_write_cr0,
        .cr_value = cr0,
        .cr_clear_bit = CR0_WP,
        .write_target = (u64)gadget_write_mem,
        .marker_addr = (u64)text,
        .marker_value = MARKER_WP,
    };
    kprintf("  attack: wp: cr0=0x%lx (WP %s), crpin %s; gadget at 0x%lx, target text 0x%lx (pte 0x%lx)\n", cr0,
            cr0 & CR0_WP ? "on" : "off", crpin_name(), (u64)gadget_write_cr0, (u64)text, pte ? *pte : 0);
    if (!pte || (*pte & PTE_W)) {
        kprintf("ATTACK %s: ERROR target page is not mapped read-only\n", name);
        conclude(false);
    }
    put_info(&ai);
    int r = run_user(user_exploit_wp, USER_DATA_VA);
    u64 cr0_after = read_cr0(), now = *text;
    struct user_run *u = &user_run_info;
    if (r == USER_EXITED && u->exit_code == 0 && now == MARKER_WP) {
        kprintf("ATTACK %s: SUCCEEDED text-changed old=0x%lx new=0x%lx cr0=0x%lx\n", name, old, now, cr0_after);
        conclude(true);
    }
    if (r == USER_KILLED && (u->cs & 3) == 0 && u->vector == 13 && u->error == 0 &&
        u->rip == (u64)gadget_write_cr0 && cr0_after == cr0 && now == old) {
        kprintf("ATTACK %s: BLOCKED vector=13 rip=0x%lx cr0=0x%lx text=0x%lx\n", name, u->rip, cr0_after, now);
        conclude(true);
    }
    if (r == USER_KILLED)
        kprintf("ATTACK %s: ERROR process killed: vector=%lu error=0x%lx rip=0x%lx cr2=0x%lx cr0=0x%lx text=0x%lx\n",
                name, u->vector, u->error, u->rip, u->cr2, cr0_after, now);
    else
        kprintf("ATTACK %s: ERROR exploit exited %lu, cr0=0x%lx text=0x%lx\n", name, u->exit_code, cr0_after, now);
    conclude(false);
}

void attack_run(void)
{
    if (attack_mode == ATTACK_SMEP)
        attack_smep();
    attack_wp();
}
