/* Multiboot v1 boot information and the kernel command line. */
#include "lib/bootinfo.h"
#include "lib/string.h"

u32 boot_magic_seen, boot_mbi_phys;
struct multiboot_info mbi_copy;
char cmdline[256];
bool cmdline_ok;
struct multiboot_mmap_entry mmap_copy[MAX_MMAP];
int mmap_count;
bool mbi_in_kernel;

void copy_boot_info(u32 magic, u32 mbi_phys, u64 kernel_start, u64 kernel_end)
{
    boot_magic_seen = magic;
    boot_mbi_phys = mbi_phys;
    if (magic != MULTIBOOT_BOOTLOADER_MAGIC || mbi_phys == 0 || mbi_phys >= 0x40000000u)
        return;
    mbi_in_kernel = mbi_phys >= kernel_start && mbi_phys < kernel_end;
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

u64 find_ram_top(void)
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

void print_boot_info(void)
{
    kprintf("boot: magic=0x%08x mbi=0x%08x flags=0x%08x\n", boot_magic_seen, boot_mbi_phys, mbi_copy.flags);
    if (mbi_copy.flags & MBI_FLAG_MEM)
        kprintf("boot: mem_lower=%u KiB mem_upper=%u KiB\n", mbi_copy.mem_lower, mbi_copy.mem_upper);
    for (int i = 0; i < mmap_count; i++)
        kprintf("boot: mmap %016lx-%016lx type %u\n", mmap_copy[i].addr, mmap_copy[i].addr + mmap_copy[i].len - 1,
                mmap_copy[i].type);
    kprintf("boot: cmdline=\"%s\"\n", cmdline_ok ? cmdline : "(none)");
}

const char *cmdline_value(const char *key)
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

bool cmdline_has_word(const char *word)
{
    if (!cmdline_ok)
        return false;
    for (const char *p = cmdline; *p;) {
        while (*p == ' ')
            p++;
        if (word_is(p, word))
            return true;
        while (*p && *p != ' ')
            p++;
    }
    return false;
}

bool word_is(const char *v, const char *s)
{
    size_t n = strlen(s);
    return v && !strncmp(v, s, n) && (v[n] == 0 || v[n] == ' ');
}

int word_len(const char *v)
{
    int n = 0;
    while (v[n] && v[n] != ' ')
        n++;
    return n;
}

bool list_has(const char *list, const char *name)
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
