/*
 * attack=NAME: after boot, run the ring-3 attack program NAME (guest/vbs/user/attacks) as an
 * unprivileged process (uid 1000).  The program reports its own verdict ("ATTACK NAME: SUCCEEDED" when
 * its success condition holds, "BLOCKED" when a primitive was refused); when the kernel kills it (an
 * oops in the vulnerable driver, a #GP injected by VTL1, a kCFG violation...), this launcher prints the
 * BLOCKED line with the fault.  The program gets "NAME <kernel command line>" so that it can read options.
 */
#include "lib/bootinfo.h"
#include "lib/string.h"
#include "lib/x86.h"
#include "vbs/vtl0/kernel.h"

int run_attack(const char *name)
{
    int n = word_len(name);
    char args[1024];
    ksnprintf(args, sizeof(args), "%.*s %s", n, name, cmdline);
    user_copy_out(USER_DATA_VA, args, strlen(args) + 1);
    kallsyms_init();
    kprintf("attack: %.*s: running as an unprivileged process (uid %u)%s\n", n, name, cred_user->uid,
            vbs.vulndrv ? "" : "; the vulnerable driver is off");
    int r = run_user(uattack_start, USER_DATA_VA, cred_user, "attack");
    struct user_run *u = &user_run_info;
    if (r == USER_KILLED) {
        if (u->kcfg)
            kprintf("ATTACK %.*s: BLOCKED process killed: kCFG refused an indirect call\n", n, name);
        else
            kprintf("ATTACK %.*s: BLOCKED process killed: %s error=0x%lx at rip 0x%lx cr2=0x%lx%s\n", n, name,
                    u->vector < 32 ? exc_names[u->vector] : "?", u->error, u->rip, u->cr2,
                    u->oops ? " (kernel fault in a system call)" : "");
        return 0;
    }
    if (u->exit_code > 1) {
        kprintf("attack: %.*s: no verdict (exit code %lu)\n", n, name, u->exit_code);
        return 1;
    }
    return 0;
}
