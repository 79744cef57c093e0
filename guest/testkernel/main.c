/* vtlvisor reference test kernel: boot info, CPU setup, test runner. */
#include "lib/bootinfo.h"
#include "lib/cpu.h"
#include "lib/crpin.h"
#include "lib/io.h"
#include "lib/msr.h"
#include "lib/multiboot.h"
#include "lib/string.h"
#include "lib/uart.h"
#include "lib/x86.h"
#include "testkernel/kernel.h"

static int n_failed;

void fail_count_inc(void) { n_failed++; }

/* tests=a,b,c on the command line selects checks or groups of checks (default: all). */
static const char *tests_arg(void) { return cmdline_value("tests"); }

static void check_unknown_names(const char *list)
{
    for (const char *p = list; *p && *p != ' ';) {
        const char *q = p;
        while (*q && *q != ',' && *q != ' ')
            q++;
        bool known = q == p;
        for (size_t i = 0; i < n_tests && !known; i++) {
            known = strlen(tests[i].name) == (size_t)(q - p) && !strncmp(p, tests[i].name, q - p);
            known = known || (tests[i].group && strlen(tests[i].group) == (size_t)(q - p) &&
                              !strncmp(p, tests[i].group, q - p));
        }
        if (!known) {
            kprintf("FAIL cmdline: unknown test name '%.*s'\n", (int)(q - p), p);
            n_failed++;
        }
        p = *q == ',' ? q + 1 : q;
    }
}

static void run_tests(void)
{
    const char *sel = tests_arg();
    if (sel)
        check_unknown_names(sel);
    for (size_t i = 0; i < n_tests; i++) {
        const struct test *t = &tests[i];
        if (sel && !list_has(sel, t->name) && !(t->group && list_has(sel, t->group)))
            continue;
        char detail[200];
        detail[0] = 0;
        current_test = t->name;
        int r;
        if (k_setjmp(&test_jmp) == 0) {
            test_active = true;
            r = t->fn(detail, sizeof(detail));
            test_active = false;
        } else {
            r = 2; /* unexpected exception: already reported and counted */
        }
        cli();
        if (smap_on)
            clac();
        if (r == 1) {
            kprintf("PASS %s\n", t->name);
        } else if (r == 0) {
            kprintf("FAIL %s: %s\n", t->name, detail);
            n_failed++;
        } else if (r == -1) {
            kprintf("SKIP %s: %s\n", t->name, detail);
        }
    }
}

void kmain64(u32 magic, u32 mbi_phys)
{
    copy_boot_info(magic, mbi_phys, (u64)__kernel_start, (u64)__kernel_end);
    uart_init();
    kprintf("\nvtlvisor test kernel\n");
    print_boot_info();
    if (mbi_in_kernel)
        kprintf("WARN: mbi lies inside the kernel image (clobbered by .bss clear?)\n");

    u64 top = find_ram_top();
    kprintf("mem: ram_top=0x%lx kernel=0x%lx-0x%lx\n", top, (u64)__kernel_start, (u64)__kernel_end);
    if (top < 0x400000) {
        kprintf("FATAL: need RAM up to at least 4 MiB\nFAILED 255\n");
        debug_exit(0xff);
    }
    pic_disable();
    cpu_setup();
    desc_init();
    mm_init(top);
    cpu_protect();

    const char *crpin_arg = cmdline_value("crpin");
    if (crpin_arg && !word_is(crpin_arg, "on") && !word_is(crpin_arg, "off")) {
        kprintf("FAIL cmdline: crpin=%.*s (expected on or off)\n", word_len(crpin_arg), crpin_arg);
        n_failed++;
    }
    n_failed += crpin_boot(word_is(crpin_arg, "off"));

    const char *attack_arg = cmdline_value("attack");
    if (attack_arg) {
        if (!attack_select(attack_arg)) {
            kprintf("FAIL cmdline: unknown attack '%.*s' (expected smep or wp)\n", word_len(attack_arg), attack_arg);
            n_failed++;
        }
        if (n_failed) {
            kprintf("FAILED %d\n", n_failed);
            debug_exit((u32)n_failed);
        }
        attack_run(); /* runs only the attack; exits */
    }

    run_tests();

    if (n_failed)
        kprintf("FAILED %d\n", n_failed);
    else
        kprintf("ALL PASSED\n");
    debug_exit((u32)n_failed);
}
