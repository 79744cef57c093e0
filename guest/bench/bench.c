/*
 * Benchmark: prime sieve below SIEVE_LIMIT and SHA-256 over a 1 MiB buffer,
 * each BENCH_SCALE rounds.  Integer only (built with -mgeneral-regs-only),
 * no dependence on boot information.
 */
#include "bench/bench.h"
#include "lib/io.h"
#include "lib/sha256.h"
#include "lib/string.h"
#include "lib/uart.h"

#define SIEVE_LIMIT 2000000u
#define SHA_BUF_SIZE (1u << 20)
#define PRIMES_BELOW_2M 148933u
#define PRIME_SUM_BELOW_2M 142913828922ull

static u8 sieve_bits[SIEVE_LIMIT / 16 + 1]; /* one bit per odd number */
static u8 sha_buf[SHA_BUF_SIZE];
static u32 last_prime_count;
static u64 last_prime_sum;
static bool sha_selftest_ok;

/* ---- sieve of Eratosthenes over odd numbers ---- */
static void sieve(u32 limit, u32 *count, u64 *sum)
{
    u32 nbits = limit / 2; /* bit i <-> 2i+1 */
    memset(sieve_bits, 0, nbits / 8 + 1);
    for (u32 i = 1; (2 * i + 1) * (2 * i + 1) < limit; i++) {
        if (sieve_bits[i >> 3] & (1u << (i & 7)))
            continue;
        u32 p = 2 * i + 1;
        for (u32 j = (p * p) / 2; j < nbits; j += p)
            sieve_bits[j >> 3] |= (u8)(1u << (j & 7));
    }
    u32 c = limit > 2 ? 1 : 0; /* 2 */
    u64 s = limit > 2 ? 2 : 0;
    for (u32 i = 1; i < nbits; i++) {
        if (!(sieve_bits[i >> 3] & (1u << (i & 7)))) {
            c++;
            s += 2 * i + 1;
        }
    }
    *count = c;
    *sum = s;
}

/* ---- SHA-256: lib/sha256.c ---- */

static u64 mix(u64 acc, u64 v)
{
    acc ^= v + 0x9e3779b97f4a7c15ull + (acc << 6) + (acc >> 2);
    return acc * 0xff51afd7ed558ccdull;
}

u64 bench_main(void)
{
    static const u8 abc_digest[32] = {0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40,
                                      0xde, 0x5d, 0xae, 0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17,
                                      0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
    u8 d[32];
    sha256((const u8 *)"abc", 3, d);
    sha_selftest_ok = memcmp(d, abc_digest, 32) == 0;

    u64 acc = 0x76746c76;
    for (int r = 0; r < BENCH_SCALE; r++) {
        u32 c;
        u64 s;
        sieve(SIEVE_LIMIT, &c, &s);
        last_prime_count = c;
        last_prime_sum = s;
        acc = mix(acc, c);
        acc = mix(acc, s);
    }

    u64 x = 0x2545f4914f6cdd1dull; /* xorshift64 fill */
    for (u32 i = 0; i < SHA_BUF_SIZE; i += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(sha_buf + i, &x, 8);
    }
    for (int r = 0; r < BENCH_SCALE; r++) {
        sha256(sha_buf, SHA_BUF_SIZE, d);
        memcpy(sha_buf, d, 32); /* chain rounds */
        for (int i = 0; i < 32; i += 8) {
            u64 v;
            memcpy(&v, d + i, 8);
            acc = mix(acc, v);
        }
    }
    return acc;
}

void bench_begin(const char *entry, u64 magic, u64 info)
{
    uart_init();
    kprintf("\nvtlvisor bench (%s entry, magic=0x%lx info=0x%lx) BENCH_SCALE=%d\n", entry, magic, info,
            BENCH_SCALE);
}

NORETURN void bench_finish(u64 checksum)
{
    bool ok = sha_selftest_ok && last_prime_count == PRIMES_BELOW_2M && last_prime_sum == PRIME_SUM_BELOW_2M;
    kprintf("bench: sha256(\"abc\") %s, primes<%u: %u sum %lu (%s)\n", sha_selftest_ok ? "ok" : "WRONG",
            SIEVE_LIMIT, last_prime_count, last_prime_sum, ok ? "ok" : "WRONG");
    kprintf("bench: checksum=0x%016lx\n", checksum);
    debug_exit(0);
}
