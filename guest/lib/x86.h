/* Control registers and misc privileged instructions. */
#ifndef GUEST_LIB_X86_H
#define GUEST_LIB_X86_H

#include "lib/types.h"

#define CR0_PE (1ull << 0)
#define CR0_MP (1ull << 1)
#define CR0_TS (1ull << 3)
#define CR0_CD (1ull << 30)
#define CR0_WP (1ull << 16)
#define CR0_PG (1ull << 31)
#define CR4_PAE (1ull << 5)
#define CR4_PGE (1ull << 7)
#define CR4_UMIP (1ull << 11)
#define CR4_FSGSBASE (1ull << 16)
#define CR4_SMEP (1ull << 20)
#define CR4_SMAP (1ull << 21)
#define RFLAGS_IF (1ull << 9)
#define RFLAGS_AC (1ull << 18)

#define DEFINE_CR(n)                                                   \
    static inline u64 read_cr##n(void)                                 \
    {                                                                  \
        u64 v;                                                         \
        __asm__ volatile("mov %%cr" #n ", %0" : "=r"(v));              \
        return v;                                                      \
    }                                                                  \
    static inline void write_cr##n(u64 v)                              \
    {                                                                  \
        __asm__ volatile("mov %0, %%cr" #n : : "r"(v) : "memory");     \
    }
DEFINE_CR(0)
DEFINE_CR(2)
DEFINE_CR(3)
DEFINE_CR(4)
#undef DEFINE_CR

/* lmsw loads CR0[3:0] (PE can only be set); clts clears CR0.TS. */
static inline void lmsw(u16 v) { __asm__ volatile("lmsw %0" : : "r"(v) : "memory"); }
static inline void clts(void) { __asm__ volatile("clts" ::: "memory"); }

static inline void cli(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void sti(void) { __asm__ volatile("sti" ::: "memory"); }
static inline void pause(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void invlpg(u64 va) { __asm__ volatile("invlpg (%0)" : : "r"(va) : "memory"); }
static inline void stac(void) { __asm__ volatile("stac" ::: "memory", "cc"); }
static inline void clac(void) { __asm__ volatile("clac" ::: "memory", "cc"); }

static inline u64 read_rflags(void)
{
    u64 v;
    __asm__ volatile("pushfq; popq %0" : "=r"(v));
    return v;
}

static inline u64 read_rsp(void)
{
    u64 v;
    __asm__ volatile("mov %%rsp, %0" : "=r"(v));
    return v;
}

#endif
