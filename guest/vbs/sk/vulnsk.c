/*
 * The DELIBERATELY VULNERABLE secure service (vulnsk.h, docs/attacks.md).  No address is checked:
 * this is "the attacker runs code inside the secure component", reduced to its primitives.  Only the
 * component the kernel named at boot (VBS_F_VULNSK in its boot parameters) answers; all others say
 * -ENOSYS, as every component does without "vulnsk" on the kernel command line.
 */
#include "lib/fixup.h"
#include "lib/io.h"
#include "lib/string.h"
#include "lib/trap.h"
#include "vbs/sk/sk.h"

static struct vulnsk_hypercall req;

long sk_vulnsk(u64 op, u64 a1, u64 a2, u64 out[4])
{
    if (sk_phase == 0 || !(bp.features & VBS_F_VULNSK))
        return -VBS_ENOSYS;
    switch (op) {
    case VULNSK_READ: {
        u64 v = 0, rip;
        int vec = read_u64_safe(a1, &v, &rip);
        SK_LOG("vulnsk: READ 0x%lx -> %s\n", a1, vec ? exc_names[vec & 31] : "ok");
        if (vec) {
            out[1] = (u64)vec;
            return -VBS_EFAULT;
        }
        out[0] = v;
        return 0;
    }
    case VULNSK_WRITE: {
        u64 rip;
        int vec = write_u64_safe(a1, a2, &rip);
        SK_LOG("vulnsk: WRITE 0x%lx <- 0x%lx -> %s\n", a1, a2, vec ? exc_names[vec & 31] : "ok");
        if (vec) {
            out[1] = (u64)vec;
            return -VBS_EFAULT;
        }
        return 0;
    }
    case VULNSK_HYPERCALL:
        if (!vtl0_range_ok(a1, sizeof(req)))
            return -VBS_EINVAL;
        memcpy(&req, (const void *)a1, sizeof(req));
        SK_LOG("vulnsk: hypercall 0x%llx from %s on the attacker's behalf\n", req.nr, sk_name);
        return sk_raw_hypercall(&req, out);
    default:
        return -VBS_EINVAL;
    }
}
