/* Minimal string/memory routines and printf-lite. */
#ifndef GUEST_LIB_STRING_H
#define GUEST_LIB_STRING_H

#include "lib/types.h"

void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
size_t strnlen(const char *s, size_t max);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
char *strchr(const char *s, int c);
char *strcpy(char *dst, const char *src);
char *strncpy(char *dst, const char *src, size_t n); /* NUL-pads; no terminator if src is too long */

/* printf-lite: %c %s %d %i %u %x %X %p %%; flags '0' '-'; width; precision for %s
 * (".N" or ".*"); length l/ll/z.  Output goes to COM1 (kprintf). */
int kvsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
int ksnprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void kputs(const char *s); /* no newline appended */

#endif
