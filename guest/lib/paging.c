/* 4-level page tables (lib/paging.h). */
#include "lib/paging.h"
#include "lib/io.h"
#include "lib/string.h"

static u64 leaf_flags(const struct pgtable *pt, u64 flags) { return pt->nx ? flags : (flags & ~PTE_NX); }

u64 *pt_walk(struct pgtable *pt, u64 va, int level, u64 uflag)
{
    u64 *t = pt->pml4;
    for (int l = 4; l > level; l--) {
        u64 *e = &t[(va >> (12 + 9 * (l - 1))) & 511];
        if (!(*e & PTE_P))
            *e = pt->alloc() | PTE_P | PTE_W | uflag;
        else if (*e & PTE_PS)
            return NULL;
        *e |= uflag;
        t = (u64 *)(*e & PTE_ADDR);
    }
    return &t[(va >> (12 + 9 * (level - 1))) & 511];
}

void pt_map(struct pgtable *pt, u64 va, u64 pa, u64 flags)
{
    u64 *e = pt_walk(pt, va, 1, flags & PTE_U);
    if (!e) {
        kprintf("FATAL: map_page(%lx) hits a large page\n", va);
        debug_exit(0xfe);
    }
    *e = (pa & PTE_ADDR) | leaf_flags(pt, flags) | PTE_P;
    invlpg_va(va);
}

void pt_map_2m(struct pgtable *pt, u64 va, u64 pa, u64 flags)
{
    u64 *e = pt_walk(pt, va, 2, flags & PTE_U);
    if (!e) {
        kprintf("FATAL: map_2m(%lx) hits a large page\n", va);
        debug_exit(0xfe);
    }
    *e = (pa & ~0x1fffffull) | leaf_flags(pt, flags) | PTE_P | PTE_PS;
}

void pt_map_range(struct pgtable *pt, u64 start, u64 end, u64 pa, u64 flags)
{
    for (u64 a = start & ~0xfffull; a < end; a += 4096, pa += 4096)
        pt_map(pt, a, pa, flags);
}

u64 *pt_leaf(struct pgtable *pt, u64 va, int *level)
{
    u64 *t = pt->pml4;
    for (int l = 4; l >= 1; l--) {
        u64 *e = &t[(va >> (12 + 9 * (l - 1))) & 511];
        if (!(*e & PTE_P))
            return NULL;
        if (l == 1 || (l <= 3 && (*e & PTE_PS))) {
            if (level)
                *level = l;
            return e;
        }
        t = (u64 *)(*e & PTE_ADDR);
    }
    return NULL;
}

u64 *pt_lookup(struct pgtable *pt, u64 va)
{
    int level;
    u64 *e = pt_leaf(pt, va, &level);
    return e && level == 1 ? e : NULL;
}
