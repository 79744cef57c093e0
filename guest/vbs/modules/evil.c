/* A module nobody signed (unsigned.ko): its init must never run. */
#include "vbs/modules/module.h"

static int evil_init(void)
{
    kprintf("  evil: UNSIGNED MODULE CODE RUNNING IN THE KERNEL\n");
    return 0;
}
MODULE_INIT(evil_init);
