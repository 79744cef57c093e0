/* COM1 16550 UART: 115200 8N1, no interrupts, polled transmit. */
#include "lib/uart.h"
#include "lib/io.h"

#define UART_THR 0 /* transmit holding (DLAB=0) */
#define UART_DLL 0 /* divisor latch low (DLAB=1) */
#define UART_IER 1 /* interrupt enable (DLAB=0) */
#define UART_DLM 1 /* divisor latch high (DLAB=1) */
#define UART_FCR 2
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5
#define LSR_THRE 0x20

void uart_init(void)
{
    outb(COM1_PORT + UART_IER, 0x00); /* no interrupts */
    outb(COM1_PORT + UART_LCR, 0x80); /* DLAB=1 */
    outb(COM1_PORT + UART_DLL, 0x01); /* divisor 1 = 115200 baud */
    outb(COM1_PORT + UART_DLM, 0x00);
    outb(COM1_PORT + UART_LCR, 0x03); /* DLAB=0, 8 data bits, no parity, 1 stop */
    outb(COM1_PORT + UART_FCR, 0x07); /* enable + clear FIFOs */
    outb(COM1_PORT + UART_MCR, 0x03); /* DTR | RTS, OUT2 off (no IRQ) */
}

void uart_putc(char c)
{
    /* Poll LSR.THRE before every byte; bounded so a broken UART cannot hang us. */
    for (u32 spins = 0; spins < 1000000; spins++) {
        if (inb(COM1_PORT + UART_LSR) & LSR_THRE)
            break;
        __asm__ volatile("pause");
    }
    outb(COM1_PORT + UART_THR, (u8)c);
}

void uart_write(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        uart_putc(s[i]);
}
