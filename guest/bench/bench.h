/* Compute-bound benchmark guest (bench.elf / bench-mb.elf). */
#ifndef BENCH_BENCH_H
#define BENCH_BENCH_H

#include "lib/types.h"

#ifndef BENCH_SCALE
#define BENCH_SCALE 40 /* rounds; 40 is ~1-1.5 s of guest work on QEMU TCG (~30 ms per round) */
#endif

/* Runs the sieve and SHA-256 loops; returns a 64-bit checksum (RAX). */
u64 bench_main(void);

/* Shared reporting used by both entry paths. */
void bench_begin(const char *entry, u64 magic, u64 info);
NORETURN void bench_finish(u64 checksum);

#endif
