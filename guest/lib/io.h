/* x86 port I/O. */
#ifndef GUEST_LIB_IO_H
#define GUEST_LIB_IO_H

#include "lib/types.h"

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }

static inline u8 inb(u16 port)
{
    u8 v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline u16 inw(u16 port)
{
    u16 v;
    __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline u32 inl(u16 port)
{
    u32 v;
    __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

/* isa-debug-exit (QEMU: -device isa-debug-exit,iobase=0xf4,iosize=0x04).
 * QEMU exits with status (code << 1) | 1.  Falls back to cli;hlt forever. */
#define DEBUG_EXIT_PORT 0xf4
NORETURN void debug_exit(u32 code);

#endif
