/* Multiboot entry for bench-mb.elf: lib/boot32.S switched to long mode and calls here. */
#include "bench/bench.h"
#include "lib/multiboot.h"

void kmain64(u32 magic, u32 mbi_phys)
{
    bench_begin("multiboot", magic, mbi_phys);
    bench_finish(bench_main());
}
