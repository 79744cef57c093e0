/* Relocatable-module (ELF64 ET_REL, x86-64) layout and linking, shared by the VTL0 module loader and the
 * VTL1 module validator (which links its own copy and compares). */
#ifndef GUEST_LIB_KMOD_H
#define GUEST_LIB_KMOD_H

#include "lib/types.h"

#define KMOD_MAX_SECTIONS 48
#define KMOD_TEXT 1u
#define KMOD_RO 2u
#define KMOD_DATA 4u

/* Layout in the module region: [text pages][read-only pages][data + bss pages], each class page aligned. */
struct kmod_layout {
    u64 ro_off, data_off, total; /* text starts at 0 */
    u32 nsec;
    u64 sec_off[KMOD_MAX_SECTIONS]; /* offset of each loaded section */
    u8 sec_class[KMOD_MAX_SECTIONS];
    int modinit_sec, kcfg_sec; /* ".modinit" (one pointer: the init function), ".kcfg_targets" (pointers) */
    u64 kcfg_count;
};

typedef u64 (*kmod_resolve_fn)(const char *name, void *ctx); /* 0: unknown symbol */

/* Validate the ELF and compute the layout: 0 or -errno. */
int kmod_layout(const u8 *img, u64 len, struct kmod_layout *L);
/* Copy the sections of `classes` into dst (the module region image, at least L->total bytes for data, or
 * L->data_off for text|ro) and apply the relocations that land in them, for a module running at dst_va.
 * bss is zeroed.  0 or -errno (unknown symbol: -ENOENT; unsupported/overflowing relocation: -ENOEXEC). */
int kmod_link(const u8 *img, u64 len, const struct kmod_layout *L, u8 *dst, u64 dst_va, u32 classes,
              kmod_resolve_fn resolve, void *ctx);
/* The i-th u64 of a linked section (e.g. .modinit, .kcfg_targets), or 0. */
u64 kmod_section_u64(const struct kmod_layout *L, const u8 *dst, int sec, u64 i);

#endif
