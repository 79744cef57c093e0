/* 4-level page tables (identity-mapped table pages), shared by all kernels. */
#ifndef GUEST_LIB_PAGING_H
#define GUEST_LIB_PAGING_H

#include "lib/types.h"

#define PTE_P (1ull << 0)
#define PTE_W (1ull << 1)
#define PTE_U (1ull << 2)
#define PTE_PWT (1ull << 3)
#define PTE_PCD (1ull << 4)
#define PTE_A (1ull << 5)
#define PTE_D (1ull << 6)
#define PTE_PS (1ull << 7)
#define PTE_G (1ull << 8)
#define PTE_NX (1ull << 63)
#define PTE_ADDR 0x000ffffffffff000ull

struct pgtable {
    u64 *pml4;
    u64 (*alloc)(void); /* a zeroed 4 KiB page, VA == PA */
    bool nx;            /* EFER.NXE on: keep PTE_NX, else strip it */
};

/* The entry at `level` (1 = PT, 2 = PD, 3 = PDPT) covering va, creating the tables above it (their U bit
 * is or-ed with uflag); NULL if a large page is in the way. */
u64 *pt_walk(struct pgtable *pt, u64 va, int level, u64 uflag);
void pt_map(struct pgtable *pt, u64 va, u64 pa, u64 flags);    /* 4 KiB; invlpg */
void pt_map_2m(struct pgtable *pt, u64 va, u64 pa, u64 flags); /* 2 MiB */
void pt_map_range(struct pgtable *pt, u64 start, u64 end, u64 pa, u64 flags); /* 4 KiB pages */
/* The leaf entry mapping va (4 KiB, 2 MiB or 1 GiB; *level = 1, 2 or 3), or NULL. */
u64 *pt_leaf(struct pgtable *pt, u64 va, int *level);
u64 *pt_lookup(struct pgtable *pt, u64 va); /* the 4 KiB leaf, or NULL */
static inline void invlpg_va(u64 va) { __asm__ volatile("invlpg (%0)" : : "r"(va) : "memory"); }

#endif
