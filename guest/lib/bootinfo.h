/* Multiboot v1 boot information, copied early (lib/bootinfo.c), and command-line parsing. */
#ifndef GUEST_LIB_BOOTINFO_H
#define GUEST_LIB_BOOTINFO_H

#include "lib/multiboot.h"
#include "lib/types.h"

#define MAX_MMAP 32
extern u32 boot_magic_seen, boot_mbi_phys;
extern struct multiboot_info mbi_copy;
extern char cmdline[256];
extern bool cmdline_ok;
extern struct multiboot_mmap_entry mmap_copy[MAX_MMAP];
extern int mmap_count;
extern bool mbi_in_kernel;

/* Copy the MBI, command line and memory map before anything can overwrite the loader's memory. */
void copy_boot_info(u32 magic, u32 mbi_phys, u64 kernel_start, u64 kernel_end);
/* Highest usable RAM address of the region containing 1 MiB (2 MiB aligned, at most 1 GiB). */
u64 find_ram_top(void);
void print_boot_info(void); /* the boot: lines */

/* Command line: words separated by spaces.  The value of the first "key=value" word (ends at a space or
 * NUL), or NULL. */
const char *cmdline_value(const char *key);
bool cmdline_has_word(const char *word); /* a bare word, e.g. "vulndrv" */
bool word_is(const char *v, const char *s); /* v (ending at space/NUL) equals s */
int word_len(const char *v);
bool list_has(const char *list, const char *name); /* comma-separated list ending at space/NUL */

#endif
