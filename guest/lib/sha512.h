/* SHA-512 (FIPS 180-4), for Ed25519. */
#ifndef GUEST_LIB_SHA512_H
#define GUEST_LIB_SHA512_H

#include "lib/types.h"

struct sha512_ctx {
    u64 h[8];
    u64 len;
    u8 buf[128];
};

void sha512_init(struct sha512_ctx *c);
void sha512_update(struct sha512_ctx *c, const void *data, u64 len);
void sha512_final(struct sha512_ctx *c, u8 out[64]);
void sha512(const u8 *msg, u64 len, u8 out[64]);

#endif
