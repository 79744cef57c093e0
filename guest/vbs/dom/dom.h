/* The domains layer of the secure kernel (dom.c, hyperguard.c): what a feature domain knows of itself. */
#ifndef VBS_DOM_DOM_H
#define VBS_DOM_DOM_H

#include "lib/types.h"
#include "vbs/dom/dom_abi.h"

struct dom_cap {
    u64 handle;
    u32 type, rights, target;
    u64 p0, p1; /* MEMORY: [p0, p1); INTERCEPT: kind, parameter; PIN: CR, bits */
};
#define DOM_MAX_CAPS 32
extern struct dom_cap dom_caps[DOM_MAX_CAPS];
extern int dom_ncaps;
extern u32 dom_id;
extern u64 dom_action, dom_kernel, dom_kernel_regs;

void dom_monitor_init(void); /* hyperguard.c: take the kernel's memory violations when we hold that intercept */

#endif
