/* Ed25519 verification (lib/ed25519.h). */
#include "lib/ed25519.h"
#include "lib/sha512.h"
#include "lib/string.h"

typedef unsigned __int128 u128;
typedef s64 i64;
#define MASK51 ((1ull << 51) - 1)

typedef struct {
    u64 v[5];
} fe;

typedef struct {
    fe X, Y, Z, T;
} ge;

static void fe_carry(fe *r)
{
    u64 c;
    for (int i = 0; i < 4; i++) {
        c = r->v[i] >> 51;
        r->v[i] &= MASK51;
        r->v[i + 1] += c;
    }
    c = r->v[4] >> 51;
    r->v[4] &= MASK51;
    r->v[0] += c * 19;
    c = r->v[0] >> 51;
    r->v[0] &= MASK51;
    r->v[1] += c;
}

static void fe_0(fe *r) { memset(r, 0, sizeof(*r)); }
static void fe_small(fe *r, u64 n)
{
    fe_0(r);
    r->v[0] = n;
}

static void fe_add(fe *r, const fe *a, const fe *b)
{
    for (int i = 0; i < 5; i++)
        r->v[i] = a->v[i] + b->v[i];
    fe_carry(r);
}

/* a - b + 2p (limbs of a and b are carried: below 2^52 - 38) */
static void fe_sub(fe *r, const fe *a, const fe *b)
{
    r->v[0] = a->v[0] + 0xfffffffffffdaull - b->v[0];
    for (int i = 1; i < 5; i++)
        r->v[i] = a->v[i] + 0xffffffffffffeull - b->v[i];
    fe_carry(r);
}

static void fe_neg(fe *r, const fe *a)
{
    fe z;
    fe_0(&z);
    fe_sub(r, &z, a);
}

static void fe_mul(fe *r, const fe *a, const fe *b)
{
    const u64 a0 = a->v[0], a1 = a->v[1], a2 = a->v[2], a3 = a->v[3], a4 = a->v[4];
    const u64 b0 = b->v[0], b1 = b->v[1], b2 = b->v[2], b3 = b->v[3], b4 = b->v[4];
    const u64 b1_19 = 19 * b1, b2_19 = 19 * b2, b3_19 = 19 * b3, b4_19 = 19 * b4;
    u128 t0 = (u128)a0 * b0 + (u128)a1 * b4_19 + (u128)a2 * b3_19 + (u128)a3 * b2_19 + (u128)a4 * b1_19;
    u128 t1 = (u128)a0 * b1 + (u128)a1 * b0 + (u128)a2 * b4_19 + (u128)a3 * b3_19 + (u128)a4 * b2_19;
    u128 t2 = (u128)a0 * b2 + (u128)a1 * b1 + (u128)a2 * b0 + (u128)a3 * b4_19 + (u128)a4 * b3_19;
    u128 t3 = (u128)a0 * b3 + (u128)a1 * b2 + (u128)a2 * b1 + (u128)a3 * b0 + (u128)a4 * b4_19;
    u128 t4 = (u128)a0 * b4 + (u128)a1 * b3 + (u128)a2 * b2 + (u128)a3 * b1 + (u128)a4 * b0;
    t1 += (u64)(t0 >> 51);
    t2 += (u64)(t1 >> 51);
    t3 += (u64)(t2 >> 51);
    t4 += (u64)(t3 >> 51);
    u64 c = (u64)(t4 >> 51);
    r->v[0] = ((u64)t0 & MASK51) + c * 19;
    r->v[1] = (u64)t1 & MASK51;
    r->v[2] = (u64)t2 & MASK51;
    r->v[3] = (u64)t3 & MASK51;
    r->v[4] = (u64)t4 & MASK51;
    fe_carry(r);
}

static void fe_sq(fe *r, const fe *a) { fe_mul(r, a, a); }

/* r = a^e, e little-endian bytes (square and multiply, most significant bit first) */
static void fe_pow(fe *r, const fe *a, const u8 e[32])
{
    fe acc, base = *a;
    fe_small(&acc, 1);
    for (int i = 255; i >= 0; i--) {
        fe_sq(&acc, &acc);
        if ((e[i / 8] >> (i % 8)) & 1)
            fe_mul(&acc, &acc, &base);
    }
    *r = acc;
}

static const u8 EXP_P_MINUS_2[32] = {0xeb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                     0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                     0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f};
static const u8 EXP_P_MINUS_5_DIV_8[32] = {0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                           0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                           0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f};
static const u8 EXP_P_MINUS_1_DIV_4[32] = {0xfb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                           0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                           0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f};
/* the group order L = 2^252 + 27742317777372353535851937790883648493, little endian */
static const u8 L_BYTES[32] = {0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7,
                               0xa2, 0xde, 0xf9, 0xde, 0x14, 0,    0,    0,    0,    0,    0,
                               0,    0,    0,    0,    0,    0,    0,    0,    0,    0x10};

static void fe_invert(fe *r, const fe *a) { fe_pow(r, a, EXP_P_MINUS_2); }

static void fe_frombytes(fe *r, const u8 s[32])
{
    u64 w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = 0;
        for (int j = 7; j >= 0; j--)
            w[i] = (w[i] << 8) | s[8 * i + j];
    }
    r->v[0] = w[0] & MASK51;
    r->v[1] = ((w[0] >> 51) | (w[1] << 13)) & MASK51;
    r->v[2] = ((w[1] >> 38) | (w[2] << 26)) & MASK51;
    r->v[3] = ((w[2] >> 25) | (w[3] << 39)) & MASK51;
    r->v[4] = (w[3] >> 12) & MASK51; /* bit 255 dropped */
}

static void fe_tobytes(u8 s[32], const fe *a)
{
    fe h = *a;
    fe_carry(&h);
    fe_carry(&h);
    /* h < 2^255 + small: subtract p once if h >= p */
    u64 q = (h.v[0] + 19) >> 51;
    q = (h.v[1] + q) >> 51;
    q = (h.v[2] + q) >> 51;
    q = (h.v[3] + q) >> 51;
    q = (h.v[4] + q) >> 51;
    h.v[0] += 19 * q;
    for (int i = 0; i < 4; i++) {
        h.v[i + 1] += h.v[i] >> 51;
        h.v[i] &= MASK51;
    }
    h.v[4] &= MASK51;
    u64 w[4];
    w[0] = h.v[0] | (h.v[1] << 51);
    w[1] = (h.v[1] >> 13) | (h.v[2] << 38);
    w[2] = (h.v[2] >> 26) | (h.v[3] << 25);
    w[3] = (h.v[3] >> 39) | (h.v[4] << 12);
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 8; j++)
            s[8 * i + j] = (u8)(w[i] >> (8 * j));
}

static bool fe_eq(const fe *a, const fe *b)
{
    u8 x[32], y[32];
    fe_tobytes(x, a);
    fe_tobytes(y, b);
    return !memcmp(x, y, 32);
}

static bool fe_iszero(const fe *a)
{
    fe z;
    fe_0(&z);
    return fe_eq(a, &z);
}

static int fe_isodd(const fe *a)
{
    u8 s[32];
    fe_tobytes(s, a);
    return s[0] & 1;
}

/* ---- the curve: -x^2 + y^2 = 1 + d x^2 y^2 ---- */
static fe C_D, C_2D, C_SQRTM1;
static ge C_B;
static bool consts_ready;

static void ge_identity(ge *p)
{
    fe_0(&p->X);
    fe_small(&p->Y, 1);
    fe_small(&p->Z, 1);
    fe_0(&p->T);
}

/* complete addition for a = -1 (add-2008-hwcd-3); also doubles */
static void ge_add(ge *r, const ge *p, const ge *q)
{
    fe a, b, c, d, e, f, g, h, t;
    fe_sub(&a, &p->Y, &p->X);
    fe_sub(&t, &q->Y, &q->X);
    fe_mul(&a, &a, &t);
    fe_add(&b, &p->Y, &p->X);
    fe_add(&t, &q->Y, &q->X);
    fe_mul(&b, &b, &t);
    fe_mul(&c, &p->T, &q->T);
    fe_mul(&c, &c, &C_2D);
    fe_mul(&d, &p->Z, &q->Z);
    fe_add(&d, &d, &d);
    fe_sub(&e, &b, &a);
    fe_sub(&f, &d, &c);
    fe_add(&g, &d, &c);
    fe_add(&h, &b, &a);
    fe_mul(&r->X, &e, &f);
    fe_mul(&r->Y, &g, &h);
    fe_mul(&r->T, &e, &h);
    fe_mul(&r->Z, &f, &g);
}

static void ge_neg(ge *r, const ge *p)
{
    fe_neg(&r->X, &p->X);
    r->Y = p->Y;
    r->Z = p->Z;
    fe_neg(&r->T, &p->T);
}

static void ge_encode(u8 s[32], const ge *p)
{
    fe zi, x, y;
    fe_invert(&zi, &p->Z);
    fe_mul(&x, &p->X, &zi);
    fe_mul(&y, &p->Y, &zi);
    fe_tobytes(s, &y);
    s[31] ^= (u8)(fe_isodd(&x) << 7);
}

/* x from y and the sign bit (RFC 8032 5.1.3); 0 if there is no such point */
static int recover_x(fe *x, const fe *y, int sign)
{
    fe one, u, v, v3, v7, t, vx2, negu;
    fe_small(&one, 1);
    fe_sq(&u, y);
    fe_mul(&v, &u, &C_D);
    fe_sub(&u, &u, &one); /* y^2 - 1 */
    fe_add(&v, &v, &one); /* d y^2 + 1 */
    fe_sq(&v3, &v);
    fe_mul(&v3, &v3, &v);  /* v^3 */
    fe_sq(&v7, &v3);
    fe_mul(&v7, &v7, &v);  /* v^7 */
    fe_mul(&t, &u, &v7);
    fe_pow(&t, &t, EXP_P_MINUS_5_DIV_8);
    fe_mul(x, &u, &v3);
    fe_mul(x, x, &t);      /* x = u v^3 (u v^7)^((p-5)/8) */
    fe_sq(&vx2, x);
    fe_mul(&vx2, &vx2, &v);
    fe_neg(&negu, &u);
    if (!fe_eq(&vx2, &u)) {
        if (!fe_eq(&vx2, &negu))
            return 0;
        fe_mul(x, x, &C_SQRTM1);
    }
    if (fe_iszero(x) && sign)
        return 0;
    if (fe_isodd(x) != sign)
        fe_neg(x, x);
    return 1;
}

static int ge_decode(ge *p, const u8 s[32])
{
    u8 chk[32];
    fe_frombytes(&p->Y, s);
    fe_tobytes(chk, &p->Y);
    chk[31] |= s[31] & 0x80;
    if (memcmp(chk, s, 32))
        return 0; /* y not canonical (>= p) */
    if (!recover_x(&p->X, &p->Y, s[31] >> 7))
        return 0;
    fe_small(&p->Z, 1);
    fe_mul(&p->T, &p->X, &p->Y);
    return 1;
}

static void init_consts(void)
{
    if (consts_ready)
        return;
    fe t, n;
    fe_small(&t, 121666);
    fe_invert(&t, &t);
    fe_small(&n, 121665);
    fe_neg(&n, &n);
    fe_mul(&C_D, &n, &t); /* d = -121665 / 121666 */
    fe_add(&C_2D, &C_D, &C_D);
    fe_small(&t, 2);
    fe_pow(&C_SQRTM1, &t, EXP_P_MINUS_1_DIV_4); /* 2^((p-1)/4) */
    fe_small(&t, 5);
    fe_invert(&t, &t);
    fe_small(&n, 4);
    fe_mul(&C_B.Y, &n, &t); /* base point: y = 4/5, x even */
    recover_x(&C_B.X, &C_B.Y, 0);
    fe_small(&C_B.Z, 1);
    fe_mul(&C_B.T, &C_B.X, &C_B.Y);
    consts_ready = true;
}

/* ---- scalars mod L ---- */
static void mod_l(u8 r[32], i64 x[64])
{
    i64 carry;
    int i, j;
    for (i = 63; i >= 32; --i) {
        carry = 0;
        for (j = i - 32; j < i - 12; ++j) {
            x[j] += carry - 16 * x[i] * L_BYTES[j - (i - 32)];
            carry = (x[j] + 128) >> 8;
            x[j] -= carry * 256;
        }
        x[j] += carry;
        x[i] = 0;
    }
    carry = 0;
    for (j = 0; j < 32; ++j) {
        x[j] += carry - (x[31] >> 4) * L_BYTES[j];
        carry = x[j] >> 8;
        x[j] &= 255;
    }
    for (j = 0; j < 32; ++j)
        x[j] -= carry * L_BYTES[j];
    for (i = 0; i < 32; ++i) {
        x[i + 1] += x[i] >> 8;
        r[i] = (u8)(x[i] & 255);
    }
}

static void reduce64(u8 r[32], const u8 h[64])
{
    i64 x[64];
    for (int i = 0; i < 64; i++)
        x[i] = h[i];
    mod_l(r, x);
}

static bool scalar_lt_l(const u8 s[32])
{
    for (int i = 31; i >= 0; i--) {
        if (s[i] < L_BYTES[i])
            return true;
        if (s[i] > L_BYTES[i])
            return false;
    }
    return false;
}

int ed25519_verify_pieces(const u8 sig[64], const u8 pk[32], const struct ed25519_piece *pieces, int n)
{
    init_consts();
    const u8 *s = sig + 32;
    if (!scalar_lt_l(s))
        return 0;
    ge a, nega, bna, acc;
    if (!ge_decode(&a, pk))
        return 0;
    u8 h[64], k[32];
    struct sha512_ctx c;
    sha512_init(&c);
    sha512_update(&c, sig, 32);
    sha512_update(&c, pk, 32);
    for (int i = 0; i < n; i++)
        sha512_update(&c, pieces[i].p, pieces[i].len);
    sha512_final(&c, h);
    reduce64(k, h);
    /* R' = [s]B + [k](-A), one shared doubling chain (Shamir) */
    ge_neg(&nega, &a);
    ge_add(&bna, &C_B, &nega);
    ge_identity(&acc);
    for (int i = 255; i >= 0; i--) {
        ge_add(&acc, &acc, &acc);
        int bs = (s[i / 8] >> (i % 8)) & 1, bk = (k[i / 8] >> (i % 8)) & 1;
        if (bs && bk)
            ge_add(&acc, &acc, &bna);
        else if (bs)
            ge_add(&acc, &acc, &C_B);
        else if (bk)
            ge_add(&acc, &acc, &nega);
    }
    u8 r[32];
    ge_encode(r, &acc);
    return !memcmp(r, sig, 32);
}

int ed25519_verify(const u8 sig[64], const u8 pk[32], const u8 *msg, u64 len)
{
    struct ed25519_piece p = {msg, len};
    return ed25519_verify_pieces(sig, pk, &p, 1);
}

int ed25519_selftest(void)
{
    /* RFC 8032 7.1 TEST 1 (empty message) and TEST 2 (one byte 0x72) */
    static const u8 pk1[32] = {0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe,
                               0xd3, 0xc9, 0x64, 0x07, 0x3a, 0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6,
                               0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68, 0xf7, 0x07, 0x51, 0x1a};
    static const u8 sig1[64] = {0xe5, 0x56, 0x43, 0x00, 0xc3, 0x60, 0xac, 0x72, 0x90, 0x86, 0xe2, 0xcc, 0x80,
                                0x6e, 0x82, 0x8a, 0x84, 0x87, 0x7f, 0x1e, 0xb8, 0xe5, 0xd9, 0x74, 0xd8, 0x73,
                                0xe0, 0x65, 0x22, 0x49, 0x01, 0x55, 0x5f, 0xb8, 0x82, 0x15, 0x90, 0xa3, 0x3b,
                                0xac, 0xc6, 0x1e, 0x39, 0x70, 0x1c, 0xf9, 0xb4, 0x6b, 0xd2, 0x5b, 0xf5, 0xf0,
                                0x59, 0x5b, 0xbe, 0x24, 0x65, 0x51, 0x41, 0x43, 0x8e, 0x7a, 0x10, 0x0b};
    static const u8 pk2[32] = {0x3d, 0x40, 0x17, 0xc3, 0xe8, 0x43, 0x89, 0x5a, 0x92, 0xb7, 0x0a,
                               0xa7, 0x4d, 0x1b, 0x7e, 0xbc, 0x9c, 0x98, 0x2c, 0xcf, 0x2e, 0xc4,
                               0x96, 0x8c, 0xc0, 0xcd, 0x55, 0xf1, 0x2a, 0xf4, 0x66, 0x0c};
    static const u8 sig2[64] = {0x92, 0xa0, 0x09, 0xa9, 0xf0, 0xd4, 0xca, 0xb8, 0x72, 0x0e, 0x82, 0x0b, 0x5f,
                                0x64, 0x25, 0x40, 0xa2, 0xb2, 0x7b, 0x54, 0x16, 0x50, 0x3f, 0x8f, 0xb3, 0x76,
                                0x22, 0x23, 0xeb, 0xdb, 0x69, 0xda, 0x08, 0x5a, 0xc1, 0xe4, 0x3e, 0x15, 0x99,
                                0x6e, 0x45, 0x8f, 0x36, 0x13, 0xd0, 0xf1, 0x1d, 0x8c, 0x38, 0x7b, 0x2e, 0xae,
                                0xb4, 0x30, 0x2a, 0xee, 0xb0, 0x0d, 0x29, 0x16, 0x12, 0xbb, 0x0c, 0x00};
    static const u8 msg2[1] = {0x72};
    u8 bad[64];
    memcpy(bad, sig2, 64);
    bad[10] ^= 1;
    return ed25519_verify(sig1, pk1, NULL, 0) && ed25519_verify(sig2, pk2, msg2, 1) &&
           !ed25519_verify(bad, pk2, msg2, 1) && !ed25519_verify(sig2, pk2, (const u8 *)"\x73", 1);
}
