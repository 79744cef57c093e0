/* What a VBS-kernel module may use: the kernel's exported symbols and the section conventions. */
#ifndef VBS_MODULE_H
#define VBS_MODULE_H

#include "lib/types.h"

int kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
long vbs_register_hook(const char *name, long (*fn)(long));

/* A valid indirect-call target (VTL1 adds it to the kCFG module bitmap when it validates the module). */
#define KCFG_TARGET(fn) \
    static const u64 __kcfg_target_##fn __attribute__((used, section(".kcfg_targets"))) = (u64)(fn)
/* The init function, called (through kCFG) once the module is validated and mapped. */
#define MODULE_INIT(fn) static int (*const __modinit)(void) __attribute__((used, section(".modinit"))) = (fn)

#endif
