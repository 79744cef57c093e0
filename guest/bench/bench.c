/*
 * Benchmark: prime sieve below SIEVE_LIMIT and SHA-256 over a 1 MiB buffer,
 * each BENCH_SCALE rounds.  Integer only (built with -mgeneral-regs-only),
 * no dependence on boot information.
 */
#include "bench/bench.h"
#include "lib/io.h"
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

/* ---- SHA-256 (FIPS 180-4) ---- */
static const u32 K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static inline u32 ror(u32 x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha256_block(u32 h[8], const u8 *p)
{
    u32 w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (u32)p[4 * i] << 24 | (u32)p[4 * i + 1] << 16 | (u32)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        u32 s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
        u32 s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    u32 a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; i++) {
        u32 t1 = hh + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        u32 t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        hh = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += hh;
}

static void sha256(const u8 *msg, u64 len, u8 out[32])
{
    u32 h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    u64 off = 0;
    for (; off + 64 <= len; off += 64)
        sha256_block(h, msg + off);
    u8 tail[128];
    u64 rem = len - off;
    memset(tail, 0, sizeof(tail));
    memcpy(tail, msg + off, rem);
    tail[rem] = 0x80;
    u64 tl = rem + 1 + 8 <= 64 ? 64 : 128;
    u64 bits = len * 8;
    for (int i = 0; i < 8; i++)
        tail[tl - 1 - i] = (u8)(bits >> (8 * i));
    sha256_block(h, tail);
    if (tl == 128)
        sha256_block(h, tail + 64);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (u8)(h[i] >> 24);
        out[4 * i + 1] = (u8)(h[i] >> 16);
        out[4 * i + 2] = (u8)(h[i] >> 8);
        out[4 * i + 3] = (u8)h[i];
    }
}

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
