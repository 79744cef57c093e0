/*
 * VTL0 page tables.  Identity map (VA == PA):
 *   [4K, kernel)             RW NX
 *   .text                    R  X        .utext  R NX (the user mapping is R X, U)
 *   .rodata .. .kcfg         R  NX       .hvcall R  X       .kernsig R NX
 *   .data.ro_after_init      RW NX, R NX after boot (mm_protect_ro_after_init)
 *   .vtl1_image .data .bss   RW NX
 *   [kernel end, POOL_END)   RW NX (4 KiB pages; page-table pool, then the page pool)
 *   module area              mapped by the module loader
 *   LAPIC                    RW NX PCD PWT
 * physmap: PHYSMAP_BASE + [0, ram_top) RW NX, 2 MiB pages (the alias attackers love, and the one the
 * checks use to show VTL1's protections hold where VTL0's own page tables do not).
 */
#include "lib/io.h"
#include "lib/lapic.h"
#include "lib/string.h"
#include "lib/x86.h"
#include "vbs/vtl0/kernel.h"

u64 ram_top;
static u64 pool_next = POOL_START, pt_next = PT_POOL_START;

static u64 pt_page_alloc(void)
{
    if (pt_next >= PT_POOL_END) {
        kprintf("FATAL: page-table pool exhausted\nFAILED 255\n");
        debug_exit(0xfe);
    }
    u64 pa = pt_next;
    pt_next += 4096;
    memset((void *)pa, 0, 4096);
    return pa;
}
struct pgtable kpt = {.alloc = pt_page_alloc};

u64 page_alloc(void) { return pool_alloc_aligned(1); }

u64 pool_alloc_aligned(u64 pages)
{
    if (pool_next + pages * 4096 > POOL_END) {
        kprintf("FATAL: page pool exhausted\nFAILED 255\n");
        debug_exit(0xfe);
    }
    u64 pa = pool_next;
    pool_next += pages * 4096;
    memset((void *)pa, 0, pages * 4096);
    return pa;
}

void map_page(u64 va, u64 pa, u64 flags) { pt_map(&kpt, va, pa, flags); }

u64 *pte_lookup(u64 va) { return pt_lookup(&kpt, va); }

u64 user_va(const void *utext_sym) { return USER_TEXT_VA + ((u64)utext_sym - (u64)__utext_start); }

static void map_ident(u64 start, u64 end, u64 flags) { pt_map_range(&kpt, start, end, start, flags); }

void mm_init(void)
{
    if ((u64)__kernel_end > POOL_START) {
        kprintf("FATAL: kernel image ends at 0x%lx, past the page pool at 0x%llx\nFAILED 255\n", (u64)__kernel_end,
                POOL_START);
        debug_exit(0xfe);
    }
    kpt.nx = nx_on;
    kpt.pml4 = (u64 *)pt_page_alloc();
    map_ident(0x1000, (u64)__kernel_start, PTE_W | PTE_NX);
    map_ident((u64)__kernel_start, (u64)__ktext_end, 0);
    map_ident((u64)__utext_start, (u64)__utext_end, PTE_NX);
    map_ident((u64)__text_end, (u64)__signed_end, PTE_NX);
    map_ident((u64)__hvcall_page, (u64)__hvcall_page + 4096, 0);
    map_ident((u64)__kernsig, (u64)__kernsig + 4096, PTE_NX);
    map_ident((u64)__ro_after_init_start, (u64)__kernel_end, PTE_W | PTE_NX);
    map_ident((u64)__kernel_end, POOL_END, PTE_W | PTE_NX);
    map_page(LAPIC_PHYS, LAPIC_PHYS, PTE_W | PTE_NX | PTE_PCD | PTE_PWT);
    for (u64 a = 0; a < ram_top; a += 0x200000)
        pt_map_2m(&kpt, PHYSMAP_BASE + a, a, PTE_W | PTE_NX);

    /* user side */
    for (u64 a = (u64)__utext_start; a < (u64)__utext_end; a += 4096)
        map_page(user_va((void *)a), a, PTE_U);
    for (u64 off = 0; off < USER_STACK_SIZE; off += 4096)
        map_page(USER_STACK_VA + off, page_alloc(), PTE_U | PTE_W | PTE_NX);
    for (u64 off = 0; off < USER_DATA_SIZE; off += 4096)
        map_page(USER_DATA_VA + off, page_alloc(), PTE_U | PTE_W | PTE_NX);
    write_cr3((u64)kpt.pml4);
}

void mm_protect_ro_after_init(void)
{
    for (u64 a = (u64)__ro_after_init_start; a < (u64)__ro_after_init_end; a += 4096)
        map_page(a, a, PTE_NX);
}
