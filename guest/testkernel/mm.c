/*
 * 4-level paging.  Identity map (VA == PA):
 *   [0, 4K)                  not mapped (null guard)
 *   [4K, kernel)             RW NX          (BIOS area, loader data)
 *   kernel .text             R  X
 *   kernel .rodata           R  NX
 *   kernel .utext            R  NX          (user code, seen from the kernel)
 *   kernel .data/.bss        RW NX
 *   [kernel end, 2M)         RW NX          (4 KiB pages)
 *   [2M, ram_top)            RW NX          (2 MiB pages; page pool at 2M..4M)
 *   0xFEE00000 (LAPIC)       RW NX PCD PWT
 * User (PML4 slot 1): .utext again at USER_TEXT_VA (U, R X), stack and
 * data pages (U, RW NX).
 */
#include "lib/io.h"
#include "lib/lapic.h"
#include "lib/string.h"
#include "lib/x86.h"
#include "testkernel/kernel.h"

#define POOL_START 0x200000ull /* page pool: page tables, demand pages, user pages */
#define POOL_END 0x400000ull

u64 ram_top;
static u64 pool_next = POOL_START;

u64 page_alloc(void)
{
    if (pool_next >= POOL_END) {
        kprintf("FATAL: page pool exhausted\n");
        debug_exit(0xfe);
    }
    u64 pa = pool_next;
    pool_next += 4096;
    memset((void *)pa, 0, 4096);
    return pa;
}

static struct pgtable kpt = {.alloc = page_alloc};

void map_page(u64 va, u64 pa, u64 flags) { pt_map(&kpt, va, pa, flags); }

static void map_2m(u64 va, u64 pa, u64 flags) { pt_map_2m(&kpt, va, pa, flags); }

u64 *pte_lookup(u64 va) { return pt_lookup(&kpt, va); }

u64 user_va(const void *utext_sym) { return USER_TEXT_VA + ((u64)utext_sym - (u64)__utext_start); }

static void map_range(u64 start, u64 end, u64 flags)
{
    for (u64 a = start & ~0xfffull; a < end; a += 4096)
        map_page(a, a, flags);
}

void mm_init(u64 ram_top_bytes)
{
    ram_top = ram_top_bytes;
    if ((u64)__kernel_end > POOL_START) {
        kprintf("FATAL: kernel image ends at 0x%lx, past the page pool at 0x%llx\n", (u64)__kernel_end, POOL_START);
        debug_exit(0xfe);
    }
    kpt.nx = nx_on;
    kpt.pml4 = (u64 *)page_alloc();

    map_range(0x1000, (u64)__kernel_start, PTE_W | PTE_NX);
    map_range((u64)__kernel_start, (u64)__text_end, 0);
    map_range((u64)__text_end, (u64)__rodata_end, PTE_NX);
    map_range((u64)__utext_start, (u64)__utext_end, PTE_NX);
    map_range((u64)__data_start, (u64)__kernel_end, PTE_W | PTE_NX);
    map_range((u64)__kernel_end, POOL_START, PTE_W | PTE_NX);
    for (u64 a = POOL_START; a < ram_top; a += 0x200000)
        map_2m(a, a, PTE_W | PTE_NX);
    map_page(LAPIC_PHYS, LAPIC_PHYS, PTE_W | PTE_NX | PTE_PCD | PTE_PWT);

    /* user side */
    for (u64 a = (u64)__utext_start; a < (u64)__utext_end; a += 4096)
        map_page(user_va((void *)a), a, PTE_U);
    for (u64 off = 0; off < USER_STACK_SIZE; off += 4096)
        map_page(USER_STACK_VA + off, page_alloc(), PTE_U | PTE_W | PTE_NX);
    map_page(USER_DATA_VA, page_alloc(), PTE_U | PTE_W | PTE_NX);

    write_cr3((u64)kpt.pml4);
}
