/* Multiboot v1 structures (only what the guests use). */
#ifndef GUEST_LIB_MULTIBOOT_H
#define GUEST_LIB_MULTIBOOT_H

#define MULTIBOOT_HEADER_MAGIC 0x1BADB002
#define MULTIBOOT_BOOTLOADER_MAGIC 0x2BADB002
/* Header flags: bit 0 = page-align modules, bit 1 = provide memory info. */
#define MULTIBOOT_HEADER_FLAGS 0x00000003

#define MBI_FLAG_MEM (1u << 0)
#define MBI_FLAG_BOOTDEV (1u << 1)
#define MBI_FLAG_CMDLINE (1u << 2)
#define MBI_FLAG_MODS (1u << 3)
#define MBI_FLAG_MMAP (1u << 6)
#define MBI_FLAG_LOADER_NAME (1u << 9)

#ifndef __ASSEMBLER__
#include "lib/types.h"

struct multiboot_info {
    u32 flags;
    u32 mem_lower; /* KiB below 1 MiB */
    u32 mem_upper; /* KiB above 1 MiB (first hole) */
    u32 boot_device;
    u32 cmdline;
    u32 mods_count;
    u32 mods_addr;
    u32 syms[4];
    u32 mmap_length;
    u32 mmap_addr;
    u32 drives_length;
    u32 drives_addr;
    u32 config_table;
    u32 boot_loader_name;
    u32 apm_table;
} PACKED;

struct multiboot_mmap_entry {
    u32 size; /* size of the rest of the entry (excluding this field) */
    u64 addr;
    u64 len;
    u32 type; /* 1 = available RAM */
} PACKED;

/* Entry point of the 64-bit C code; called by lib/boot32.S. */
void kmain64(u32 magic, u32 mbi_phys);

/* Provided by lib/boot32.S. */
extern char boot_stack_bottom[], boot_stack_top[];
#endif

#endif
