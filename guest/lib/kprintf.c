/* kprintf/kputs: printf-lite (lib/string.c) to COM1.  Kept apart from string.c so that ring-3 programs
 * (guest/vbs/user) can link the string routines without the UART driver. */
#include "lib/string.h"
#include "lib/uart.h"

int kprintf(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = kvsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    uart_write(buf, strnlen(buf, sizeof(buf)));
    return n;
}

void kputs(const char *s)
{
    uart_write(s, strlen(s));
}
