/* COM1 16550 UART, polled output. */
#ifndef GUEST_LIB_UART_H
#define GUEST_LIB_UART_H

#include "lib/types.h"

#define COM1_PORT 0x3f8

void uart_init(void);
void uart_putc(char c);
void uart_write(const char *s, size_t n);

#endif
