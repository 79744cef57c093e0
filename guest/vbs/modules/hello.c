/* The good module: signed at build time; registers a hook the kernel calls through kCFG. */
#include "vbs/modules/module.h"

static long hello_hook(long x) { return 2 * x + 1; }
KCFG_TARGET(hello_hook);

static int hello_init(void)
{
    kprintf("  hello: init running from module text at %p\n", (void *)hello_init);
    return (int)vbs_register_hook("hello", hello_hook);
}
MODULE_INIT(hello_init);
