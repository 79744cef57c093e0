/* SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104). */
#ifndef GUEST_LIB_SHA256_H
#define GUEST_LIB_SHA256_H

#include "lib/types.h"

struct sha256_ctx {
    u32 h[8];
    u64 len;
    u8 buf[64];
};

void sha256_block(u32 h[8], const u8 *p);
void sha256_init(struct sha256_ctx *c);
void sha256_update(struct sha256_ctx *c, const void *data, u64 len);
void sha256_final(struct sha256_ctx *c, u8 out[32]);
void sha256(const u8 *msg, u64 len, u8 out[32]);
void hmac_sha256(const u8 *key, u64 key_len, const u8 *msg, u64 len, u8 out[32]);

#endif
