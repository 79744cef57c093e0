/* Ed25519 signature verification (RFC 8032, cofactorless, as ref10/TweetNaCl), written for vtlvisor's
 * guests: radix-2^51 field arithmetic with 128-bit products, extended twisted-Edwards coordinates with
 * the complete a=-1 addition law, and a joint double-and-add for [S]B - [k]A. */
#ifndef GUEST_LIB_ED25519_H
#define GUEST_LIB_ED25519_H

#include "lib/types.h"

/* 1 if sig (R || S, 64 bytes) is a valid signature of msg under the public key pk (32 bytes). */
int ed25519_verify(const u8 sig[64], const u8 pk[32], const u8 *msg, u64 len);
/* The same, with the message given as a list of pieces (hashed in order, nothing copied). */
struct ed25519_piece {
    const u8 *p;
    u64 len;
};
int ed25519_verify_pieces(const u8 sig[64], const u8 pk[32], const struct ed25519_piece *pieces, int n);
/* RFC 8032 section 7.1 test 1 and 2 (a valid and a corrupted signature): 1 if all behave. */
int ed25519_selftest(void);

#endif
