/* Basic freestanding types for the vtlvisor test guests. */
#ifndef GUEST_LIB_TYPES_H
#define GUEST_LIB_TYPES_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
typedef int32_t s32;
typedef int64_t s64;

#define NORETURN __attribute__((noreturn))
#define PACKED __attribute__((packed))
#define ALIGNED(n) __attribute__((aligned(n)))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#endif
