/* vtlvisor reference test kernel: boot info, CPU setup, test runner. */
#include "lib/io.h"
#include "lib/msr.h"
#include "lib/multiboot.h"
#include "lib/string.h"
#include "lib/uart.h"
#include "lib/x86.h"
#include "testkernel/kernel.h"

struct cpu_features cpu;
bool smap_on, smep_on, umip_on, nx_on;
static int n_failed;

/* Boot info, copied before anything can overwrite the loader's memory. */
u32 boot_magic_seen, boot_mbi_phys;
struct multiboot_info mbi_copy;
char cmdline[256];
bool cmdline_ok;
#define MAX_MMAP 32
struct multiboot_mmap_entry mmap_copy[MAX_MMAP];
int mmap_count;
bool mbi_in_kernel;

void fail_count_inc(void) { n_failed++; }

static void copy_boot_info(u32 magic, u32 mbi_phys)
{
    boot_magic_seen = magic;
    boot_mbi_phys = mbi_phys;
    if (magic != MULTIBOOT_BOOTLOADER_MAGIC || mbi_phys == 0 || mbi_phys >= 0x40000000u)
        return;
    mbi_in_kernel = mbi_phys >= (u64)__kernel_start && mbi_phys < (u64)__kernel_end;
    memcpy(&mbi_copy, (const void *)(u64)mbi_phys, sizeof(mbi_copy));
    if ((mbi_copy.flags & MBI_FLAG_CMDLINE) && mbi_copy.cmdline && mbi_copy.cmdline < 0x40000000u) {
        const char *s = (const char *)(u64)mbi_copy.cmdline;
        size_t n = strnlen(s, sizeof(cmdline) - 1);
        memcpy(cmdline, s, n);
        cmdline[n] = 0;
        cmdline_ok = true;
    }
    if ((mbi_copy.flags & MBI_FLAG_MMAP) && mbi_copy.mmap_addr < 0x40000000u) {
        u64 p = mbi_copy.mmap_addr, end = p + mbi_copy.mmap_length;
        while (p + 4 <= end && mmap_count < MAX_MMAP) {
            const struct multiboot_mmap_entry *e = (const void *)p;
            if (e->size < 20)
                break;
            memcpy(&mmap_copy[mmap_count++], e, sizeof(*e));
            p += e->size + 4;
        }
    }
}

/* Highest usable RAM address of the region containing 1 MiB. */
static u64 find_ram_top(void)
{
    u64 top = 0;
    for (int i = 0; i < mmap_count; i++) {
        const struct multiboot_mmap_entry *e = &mmap_copy[i];
        if (e->type == 1 && e->addr <= 0x100000 && e->addr + e->len > 0x100000)
            top = e->addr + e->len;
    }
    if (!top && (mbi_copy.flags & MBI_FLAG_MEM))
        top = 0x100000ull + (u64)mbi_copy.mem_upper * 1024;
    if (top > 0x40000000ull)
        top = 0x40000000ull;
    return top & ~0x1fffffull;
}

static void print_boot_info(void)
{
    kprintf("boot: magic=0x%08x mbi=0x%08x flags=0x%08x\n", boot_magic_seen, boot_mbi_phys, mbi_copy.flags);
    if (mbi_copy.flags & MBI_FLAG_MEM)
        kprintf("boot: mem_lower=%u KiB mem_upper=%u KiB\n", mbi_copy.mem_lower, mbi_copy.mem_upper);
    for (int i = 0; i < mmap_count; i++)
        kprintf("boot: mmap %016lx-%016lx type %u\n", mmap_copy[i].addr, mmap_copy[i].addr + mmap_copy[i].len - 1,
                mmap_copy[i].type);
    kprintf("boot: cmdline=\"%s\"\n", cmdline_ok ? cmdline : "(none)");
}

static void pic_disable(void)
{
    /* Remap the 8259s to VEC_PIC_BASE (away from exception vectors) and mask everything. */
    outb(0x20, 0x11);
    outb(0xa0, 0x11);
    outb(0x21, VEC_PIC_BASE);
    outb(0xa1, VEC_PIC_BASE + 8);
    outb(0x21, 4);
    outb(0xa1, 2);
    outb(0x21, 1);
    outb(0xa1, 1);
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
}

static void cpu_setup(void)
{
    cpu_detect(&cpu);
    kprintf("cpu: vendor=%s max_leaf=0x%x max_ext=0x%x apic=%d x2apic=%d nx=%d smep=%d smap=%d umip=%d\n",
            cpu.vendor, cpu.max_leaf, cpu.max_ext_leaf, cpu.apic, cpu.x2apic, cpu.nx, cpu.smep, cpu.smap, cpu.umip);
    nx_on = cpu.nx;
    if (nx_on)
        wrmsr(MSR_EFER, rdmsr(MSR_EFER) | EFER_NXE);
}

static void cpu_protect(void)
{
    write_cr0(read_cr0() | CR0_WP);
    u64 cr4 = read_cr4();
    if (cpu.smep)
        cr4 |= CR4_SMEP;
    if (cpu.smap)
        cr4 |= CR4_SMAP;
    if (cpu.umip)
        cr4 |= CR4_UMIP;
    write_cr4(cr4);
    cr4 = read_cr4();
    smep_on = !!(cr4 & CR4_SMEP);
    smap_on = !!(cr4 & CR4_SMAP);
    umip_on = !!(cr4 & CR4_UMIP);
    if (smap_on)
        clac();
    kprintf("cpu: enabled:%s WP%s%s%s (cr0=0x%lx cr4=0x%lx efer=0x%lx)\n", nx_on ? " NX" : "",
            smep_on ? " SMEP" : "", smap_on ? " SMAP" : "", umip_on ? " UMIP" : "", read_cr0(), cr4,
            rdmsr(MSR_EFER));
}

/* The value of the first "key=value" word on the command line (ends at a space), or NULL. */
static const char *cmdline_value(const char *key)
{
    if (!cmdline_ok)
        return NULL;
    size_t n = strlen(key);
    for (const char *p = cmdline; *p;) {
        while (*p == ' ')
            p++;
        if (!strncmp(p, key, n) && p[n] == '=')
            return p + n + 1;
        while (*p && *p != ' ')
            p++;
    }
    return NULL;
}

static bool word_is(const char *v, const char *s)
{
    size_t n = strlen(s);
    return v && !strncmp(v, s, n) && (v[n] == 0 || v[n] == ' ');
}

static int word_len(const char *v)
{
    int n = 0;
    while (v[n] && v[n] != ' ')
        n++;
    return n;
}

/* tests=a,b,c on the command line selects checks or groups of checks (default: all). */
static const char *tests_arg(void) { return cmdline_value("tests"); }

static bool list_has(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; *p && *p != ' ';) {
        const char *q = p;
        while (*q && *q != ',' && *q != ' ')
            q++;
        if ((size_t)(q - p) == n && !strncmp(p, name, n))
            return true;
        p = *q == ',' ? q + 1 : q;
    }
    return false;
}

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
    copy_boot_info(magic, mbi_phys);
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
