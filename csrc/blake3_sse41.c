/*
 * blake3_sse41.c - BLAKE3 with SSE4.1 (128-bit vectors of four 32-bit words).
 *
 * Two shapes of parallelism, one per use:
 *
 * - A single block (compress_in_place, compress_xof, and inputs hashed one at a time): the
 *   4x4 state lives in four registers, one row each, so G runs on all four columns with one
 *   instruction per step.  For the diagonal step three rows are rotated so the diagonals line
 *   up as columns, then rotated back (compress_rows).  The message words must arrive in the
 *   matching order: each round wants (w0,w2,w4,w6), (w1,w3,w5,w7) for the columns and the
 *   words 8-15 likewise for the diagonals, where w is the message permuted once per round.
 *   The code keeps the message in exactly those four vectors and derives the next round's
 *   four from them with a few shuffles (permute), instead of gathering words from memory.
 *   One block is a single chain of dependent instructions, so this path is bound by latency,
 *   and the layout is chosen to keep shuffles off that chain.
 *
 * - Four inputs at once (hash_many): each register holds the same state word of four
 *   independent inputs, so every instruction advances four compressions and no shuffling of the
 *   state is needed.  The message is transposed on load so that message word j of the four
 *   inputs shares a register, and the schedule table picks words per round.
 *
 * The code is compiled with the project's common flags; each function carries
 * target("sse4.1") instead, and blake3.c calls it only after checking the CPU.
 */
#include "blake3_impl.h"

#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#define SSE41 __attribute__((target("sse4.1")))
#define SSE41_INLINE static inline __attribute__((target("sse4.1"), always_inline))

/* ---- Word operations ---------------------------------------------------------------------- */

SSE41_INLINE __m128i add(__m128i a, __m128i b)
{
    return _mm_add_epi32(a, b);
}

SSE41_INLINE __m128i xor(__m128i a, __m128i b)
{
    return _mm_xor_si128(a, b);
}

/* Rotations by 16 and 8 move whole bytes, so one byte shuffle does them; 12 and 7 need two
 * shifts and an or. */
SSE41_INLINE __m128i rot16(__m128i x)
{
    return _mm_shuffle_epi8(x, _mm_set_epi8(13, 12, 15, 14, 9, 8, 11, 10,
                                            5, 4, 7, 6, 1, 0, 3, 2));
}

SSE41_INLINE __m128i rot12(__m128i x)
{
    return _mm_or_si128(_mm_srli_epi32(x, 12), _mm_slli_epi32(x, 20));
}

SSE41_INLINE __m128i rot8(__m128i x)
{
    return _mm_shuffle_epi8(x, _mm_set_epi8(12, 15, 14, 13, 8, 11, 10, 9,
                                            4, 7, 6, 5, 0, 3, 2, 1));
}

SSE41_INLINE __m128i rot7(__m128i x)
{
    return _mm_or_si128(_mm_srli_epi32(x, 7), _mm_slli_epi32(x, 25));
}

/* The same two rotations for the four-way code, where all sixteen registers hold state: the
 * masks are read from memory each time (see b3_opaque). */
static const uint8_t ROT16_MASK[16] __attribute__((aligned(16))) = {
    2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13
};
static const uint8_t ROT8_MASK[16] __attribute__((aligned(16))) = {
    1, 2, 3, 0, 5, 6, 7, 4, 9, 10, 11, 8, 13, 14, 15, 12
};

SSE41_INLINE __m128i rot16_mem(__m128i x)
{
    return _mm_shuffle_epi8(x, _mm_load_si128((const __m128i *)b3_opaque(ROT16_MASK)));
}

SSE41_INLINE __m128i rot8_mem(__m128i x)
{
    return _mm_shuffle_epi8(x, _mm_load_si128((const __m128i *)b3_opaque(ROT8_MASK)));
}

/* An empty asm that claims to change x: the compiler has to materialize x as computed and
 * cannot reassociate or merge the arithmetic around it.  Costs no instruction. */
SSE41_INLINE __m128i pin(__m128i x)
{
    __asm__("" : "+x"(x));
    return x;
}

/* G on four (a, b, c, d) quadruples at once, lane by lane.  The message word is added to a
 * first: it is ready early, while b is the end of the previous step's dependency chain.  pin
 * enforces that order: left alone, gcc reassociates a + m + b into a + (m + b), putting two
 * additions after b instead of one (~4% on a 1 KiB hash with gcc 12 on an Emerald Rapids
 * Xeon; clang 14 kept the order anyway). */
SSE41_INLINE void g(__m128i *a, __m128i *b, __m128i *c, __m128i *d, __m128i mx, __m128i my)
{
    *a = add(pin(add(*a, mx)), *b);
    *d = rot16(xor(*d, *a));
    *c = add(*c, *d);
    *b = rot12(xor(*b, *c));
    *a = add(pin(add(*a, my)), *b);
    *d = rot8(xor(*d, *a));
    *c = add(*c, *d);
    *b = rot7(xor(*b, *c));
}

/* ---- One block, the state as four rows -------------------------------------------------- */

/* _mm_shuffle_ps on integer vectors: lanes 0-1 from a, lanes 2-3 from b. */
#define SHUFFLE2(a, b, imm) \
    _mm_castps_si128(_mm_shuffle_ps(_mm_castsi128_ps(a), _mm_castsi128_ps(b), (imm)))

/*
 * Moves the message to the next round.  With w the current round's words and w' = w permuted
 * (w'[i] = w[perm[i]], perm = {2,6,3,10,7,0,4,13,1,11,12,5,9,14,15,8}), the round's four
 * message vectors are
 *   a = (w0,w2,w4,w6)    b = (w1,w3,w5,w7)      for the columns,
 *   c = (w14,w8,w10,w12) d = (w15,w9,w11,w13)   for the diagonals,
 * the diagonal ones rotated by a lane to match the rows' layout in the diagonal step (see
 * compress_rows).  Working through perm, the next round needs
 *   a' = (w2,w3,w7,w4)    = (a1,b1,b3,a2)
 *   b' = (w6,w10,w0,w13)  = (a3,c2,a0,d3)
 *   c' = (w15,w1,w12,w9)  = (d0,b0,c3,d1)
 *   d' = (w8,w11,w5,w14)  = (c1,d2,b2,c0)
 * each one or two two-source shuffles plus a lane fix-up (a word shuffle or a blend).  None
 * of this is on the critical path: the message does not depend on the state.
 */
SSE41_INLINE void permute(__m128i *a, __m128i *b, __m128i *c, __m128i *d)
{
    __m128i t;
    t = SHUFFLE2(*a, *b, _MM_SHUFFLE(3, 1, 2, 1));                   /* a1 a2 b1 b3 */
    __m128i na = _mm_shuffle_epi32(t, _MM_SHUFFLE(1, 3, 2, 0));      /* a1 b1 b3 a2 */
    t = SHUFFLE2(*a, *c, _MM_SHUFFLE(2, 2, 0, 3));                   /* a3 a0 c2 c2 */
    t = _mm_shuffle_epi32(t, _MM_SHUFFLE(3, 1, 2, 0));               /* a3 c2 a0 -- */
    __m128i nb = _mm_blend_epi16(t, *d, 0xC0);                       /* a3 c2 a0 d3 */
    t = SHUFFLE2(*d, *c, _MM_SHUFFLE(3, 3, 1, 0));                   /* d0 d1 c3 c3 */
    t = _mm_shuffle_epi32(t, _MM_SHUFFLE(1, 2, 0, 0));               /* d0 -- c3 d1 */
    __m128i nc = _mm_blend_epi16(t, _mm_unpacklo_epi32(*b, *b), 0x0C); /* d0 b0 c3 d1 */
    t = SHUFFLE2(*c, *d, _MM_SHUFFLE(2, 2, 0, 1));                   /* c1 c0 d2 d2 */
    t = _mm_shuffle_epi32(t, _MM_SHUFFLE(1, 0, 2, 0));               /* c1 d2 -- c0 */
    __m128i nd = _mm_blend_epi16(t, *b, 0x30);                       /* c1 d2 b2 c0 */
    *a = na;
    *b = nb;
    *c = nc;
    *d = nd;
}

/*
 * The seven rounds on the rows r0..r3 (r0 = cv[0..3], r1 = cv[4..7], r2 = IV[0..3],
 * r3 = counter, block length, flags).
 *
 * For the diagonal step, lane j must hold one diagonal in all four rows.  Row 1 stays put,
 * lane j keeping v[4+j], which lies on diagonal j-1: row 0 rotates right by a lane, row 2
 * left by one and row 3 by two.  Row 1 is the one not moved because it is the last value
 * each step computes (b = rot7(b ^ c)) and the first the next step needs (a += m + b); the
 * other rows are ready earlier, so their shuffles overlap with b's computation instead of
 * adding to the chain of dependent instructions, which is what bounds a single compression.
 */
SSE41_INLINE void compress_rows(__m128i r[4], const __m128i cv0, const __m128i cv1,
                                const uint8_t block[B3_BLOCK_LEN], uint8_t block_len,
                                uint64_t counter, uint8_t flags)
{
    __m128i m0 = _mm_loadu_si128((const __m128i *)(const void *)(block + 0));
    __m128i m1 = _mm_loadu_si128((const __m128i *)(const void *)(block + 16));
    __m128i m2 = _mm_loadu_si128((const __m128i *)(const void *)(block + 32));
    __m128i m3 = _mm_loadu_si128((const __m128i *)(const void *)(block + 48));
    /* Round 0 takes the words in order: even words to the first input of G, odd to the
     * second; the diagonal pair rotated as described at permute(). */
    __m128i a = SHUFFLE2(m0, m1, _MM_SHUFFLE(2, 0, 2, 0));
    __m128i b = SHUFFLE2(m0, m1, _MM_SHUFFLE(3, 1, 3, 1));
    __m128i c = _mm_shuffle_epi32(SHUFFLE2(m2, m3, _MM_SHUFFLE(2, 0, 2, 0)),
                                  _MM_SHUFFLE(2, 1, 0, 3));
    __m128i d = _mm_shuffle_epi32(SHUFFLE2(m2, m3, _MM_SHUFFLE(3, 1, 3, 1)),
                                  _MM_SHUFFLE(2, 1, 0, 3));

    __m128i r0 = cv0, r1 = cv1;
    __m128i r2 = _mm_loadu_si128((const __m128i *)(const void *)B3_IV);
    __m128i r3 = _mm_set_epi32((int)flags, (int)block_len, (int)(uint32_t)(counter >> 32),
                               (int)(uint32_t)counter);
    B3_UNROLL
    for (int round = 0; round < 7; round++) {
        if (round > 0)
            permute(&a, &b, &c, &d);
        g(&r0, &r1, &r2, &r3, a, b);
        r0 = _mm_shuffle_epi32(r0, _MM_SHUFFLE(2, 1, 0, 3));
        r2 = _mm_shuffle_epi32(r2, _MM_SHUFFLE(0, 3, 2, 1));
        r3 = _mm_shuffle_epi32(r3, _MM_SHUFFLE(1, 0, 3, 2));
        g(&r0, &r1, &r2, &r3, c, d);
        r0 = _mm_shuffle_epi32(r0, _MM_SHUFFLE(0, 3, 2, 1));
        r2 = _mm_shuffle_epi32(r2, _MM_SHUFFLE(2, 1, 0, 3));
        r3 = _mm_shuffle_epi32(r3, _MM_SHUFFLE(1, 0, 3, 2));
    }
    r[0] = r0;
    r[1] = r1;
    r[2] = r2;
    r[3] = r3;
}

SSE41 void ls_b3_compress_in_place_sse41(uint32_t cv[8], const uint8_t block[B3_BLOCK_LEN],
                                         uint8_t block_len, uint64_t counter, uint8_t flags)
{
    __m128i r[4];
    compress_rows(r, _mm_loadu_si128((const __m128i *)(void *)cv),
                  _mm_loadu_si128((const __m128i *)(void *)(cv + 4)), block, block_len, counter,
                  flags);
    _mm_storeu_si128((__m128i *)(void *)cv, xor(r[0], r[2]));
    _mm_storeu_si128((__m128i *)(void *)(cv + 4), xor(r[1], r[3]));
}

SSE41 void ls_b3_compress_xof_sse41(const uint32_t cv[8], const uint8_t block[B3_BLOCK_LEN],
                                    uint8_t block_len, uint64_t counter, uint8_t flags,
                                    uint8_t out[64])
{
    __m128i cv0 = _mm_loadu_si128((const __m128i *)(const void *)cv);
    __m128i cv1 = _mm_loadu_si128((const __m128i *)(const void *)(cv + 4));
    __m128i r[4];
    compress_rows(r, cv0, cv1, block, block_len, counter, flags);
    /* x86 is little-endian, so the words store as the output bytes directly. */
    _mm_storeu_si128((__m128i *)(void *)(out + 0), xor(r[0], r[2]));
    _mm_storeu_si128((__m128i *)(void *)(out + 16), xor(r[1], r[3]));
    _mm_storeu_si128((__m128i *)(void *)(out + 32), xor(r[2], cv0));
    _mm_storeu_si128((__m128i *)(void *)(out + 48), xor(r[3], cv1));
}

/* One input of hash_many: its blocks chained with the CV kept in registers throughout. */
SSE41_INLINE void hash1(const uint8_t *in, size_t nblocks, const uint32_t start_cv[8],
                        uint64_t counter, uint8_t flags, uint8_t flags_first,
                        uint8_t flags_last, uint8_t out[32])
{
    __m128i cv0 = _mm_loadu_si128((const __m128i *)(const void *)start_cv);
    __m128i cv1 = _mm_loadu_si128((const __m128i *)(const void *)(start_cv + 4));
    uint8_t f = flags | flags_first;
    for (size_t b = 0; b < nblocks; b++) {
        if (b + 1 == nblocks)
            f |= flags_last;
        __m128i r[4];
        compress_rows(r, cv0, cv1, in + b * B3_BLOCK_LEN, B3_BLOCK_LEN, counter, f);
        cv0 = xor(r[0], r[2]);
        cv1 = xor(r[1], r[3]);
        f = flags;
    }
    _mm_storeu_si128((__m128i *)(void *)out, cv0);
    _mm_storeu_si128((__m128i *)(void *)(out + 16), cv1);
}

/* ---- Four inputs, one per lane ---------------------------------------------------------- */

/* Transposes a 4x4 matrix of words: row i becomes column i. */
SSE41_INLINE void transpose4(__m128i *a, __m128i *b, __m128i *c, __m128i *d)
{
    __m128i ab01 = _mm_unpacklo_epi32(*a, *b); /* a0 b0 a1 b1 */
    __m128i ab23 = _mm_unpackhi_epi32(*a, *b); /* a2 b2 a3 b3 */
    __m128i cd01 = _mm_unpacklo_epi32(*c, *d);
    __m128i cd23 = _mm_unpackhi_epi32(*c, *d);
    *a = _mm_unpacklo_epi64(ab01, cd01);       /* a0 b0 c0 d0 */
    *b = _mm_unpackhi_epi64(ab01, cd01);       /* a1 b1 c1 d1 */
    *c = _mm_unpacklo_epi64(ab23, cd23);
    *d = _mm_unpackhi_epi64(ab23, cd23);
}

/* m[j] = message word j of the four inputs' block at offset off. */
SSE41_INLINE void load_msg4(__m128i m[16], const uint8_t *in, size_t stride, size_t off)
{
    B3_UNROLL
    for (int q = 0; q < 4; q++) {
        B3_UNROLL
        for (int i = 0; i < 4; i++)
            m[4 * q + i] = _mm_loadu_si128(
                (const __m128i *)(const void *)(in + (size_t)i * stride + off + 16 * (size_t)q));
        transpose4(&m[4 * q], &m[4 * q + 1], &m[4 * q + 2], &m[4 * q + 3]);
    }
}

/*
 * Two G's side by side, on (a0,b0,c0,d0) and (a1,b1,c1,d1), each step done for both before
 * the next: two independent instructions next to each other keep the vector pipes busy.
 * Four at once would overlap more but needs more temporaries than the sixteen registers
 * leave beside the state, and the spills cost more than the overlap gains (measured on Zen).
 */
SSE41_INLINE void g2(__m128i *a0, __m128i *b0, __m128i *c0, __m128i *d0, __m128i *a1,
                     __m128i *b1, __m128i *c1, __m128i *d1, __m128i x0, __m128i y0, __m128i x1,
                     __m128i y1)
{
    *a0 = add(add(*a0, x0), *b0);
    *a1 = add(add(*a1, x1), *b1);
    *d0 = rot16_mem(xor(*d0, *a0));
    *d1 = rot16_mem(xor(*d1, *a1));
    *c0 = add(*c0, *d0);
    *c1 = add(*c1, *d1);
    *b0 = rot12(xor(*b0, *c0));
    *b1 = rot12(xor(*b1, *c1));
    *a0 = add(add(*a0, y0), *b0);
    *a1 = add(add(*a1, y1), *b1);
    *d0 = rot8_mem(xor(*d0, *a0));
    *d1 = rot8_mem(xor(*d1, *a1));
    *c0 = add(*c0, *d0);
    *c1 = add(*c1, *d1);
    *b0 = rot7(xor(*b0, *c0));
    *b1 = rot7(xor(*b1, *c1));
}

/* One round on transposed state: G on the four columns, then on the four diagonals.  r is a
 * constant after inlining, so the schedule lookups fold into fixed register or stack slots. */
SSE41_INLINE void round4(__m128i v[16], const __m128i m[16], int r)
{
    const uint8_t *s = B3_SCHEDULE[r];
    g2(&v[0], &v[4], &v[8], &v[12], &v[1], &v[5], &v[9], &v[13], m[s[0]], m[s[1]], m[s[2]],
       m[s[3]]);
    g2(&v[2], &v[6], &v[10], &v[14], &v[3], &v[7], &v[11], &v[15], m[s[4]], m[s[5]], m[s[6]],
       m[s[7]]);
    g2(&v[0], &v[5], &v[10], &v[15], &v[1], &v[6], &v[11], &v[12], m[s[8]], m[s[9]], m[s[10]],
       m[s[11]]);
    g2(&v[2], &v[7], &v[8], &v[13], &v[3], &v[4], &v[9], &v[14], m[s[12]], m[s[13]], m[s[14]],
       m[s[15]]);
}

static SSE41 void hash4(const uint8_t *in, size_t stride, size_t nblocks,
                        const uint32_t start_cv[8], uint64_t counter, unsigned counter_step,
                        uint8_t flags, uint8_t flags_first, uint8_t flags_last, uint8_t *out)
{
    __m128i h[8];
    B3_UNROLL
    for (int i = 0; i < 8; i++)
        h[i] = _mm_set1_epi32((int)start_cv[i]);
    /* Each lane's 64-bit counter, split into low and high words. */
    uint64_t c[4];
    B3_UNROLL
    for (int i = 0; i < 4; i++)
        c[i] = counter + (uint64_t)i * counter_step;
    uint32_t lo[4], hi[4];
    B3_UNROLL
    for (int i = 0; i < 4; i++) {
        lo[i] = (uint32_t)c[i];
        hi[i] = (uint32_t)(c[i] >> 32);
    }
    const __m128i ctr_lo = _mm_loadu_si128((const __m128i *)(const void *)lo);
    const __m128i ctr_hi = _mm_loadu_si128((const __m128i *)(const void *)hi);
    uint8_t f = flags | flags_first;
    for (size_t b = 0; b < nblocks; b++) {
        if (b + 1 == nblocks)
            f |= flags_last;
        __m128i m[16];
        load_msg4(m, in, stride, b * B3_BLOCK_LEN);
        __m128i v[16];
        B3_UNROLL
        for (int i = 0; i < 8; i++)
            v[i] = h[i];
        B3_UNROLL
        for (int i = 0; i < 4; i++)
            v[8 + i] = _mm_set1_epi32((int)B3_IV[i]);
        v[12] = ctr_lo;
        v[13] = ctr_hi;
        v[14] = _mm_set1_epi32(B3_BLOCK_LEN);
        v[15] = _mm_set1_epi32(f);
        round4(v, m, 0);
        round4(v, m, 1);
        round4(v, m, 2);
        round4(v, m, 3);
        round4(v, m, 4);
        round4(v, m, 5);
        round4(v, m, 6);
        B3_UNROLL
        for (int i = 0; i < 8; i++)
            h[i] = xor(v[i], v[i + 8]);
        f = flags;
    }
    /* Back from one word per register to one input per register. */
    transpose4(&h[0], &h[1], &h[2], &h[3]);
    transpose4(&h[4], &h[5], &h[6], &h[7]);
    B3_UNROLL
    for (int i = 0; i < 4; i++) {
        _mm_storeu_si128((__m128i *)(void *)(out + 32 * i), h[i]);
        _mm_storeu_si128((__m128i *)(void *)(out + 32 * i + 16), h[4 + i]);
    }
}

SSE41 void ls_b3_hash_many_sse41(const uint8_t *in, size_t stride, size_t n, size_t nblocks,
                                 const uint32_t start_cv[8], uint64_t counter,
                                 unsigned counter_step, uint8_t flags, uint8_t flags_first,
                                 uint8_t flags_last, uint8_t *out)
{
    for (; n >= 4; n -= 4) {
        hash4(in, stride, nblocks, start_cv, counter, counter_step, flags, flags_first,
              flags_last, out);
        in += 4 * stride;
        out += 4 * 32;
        counter += 4 * (uint64_t)counter_step;
    }
    for (; n > 0; n--) {
        hash1(in, nblocks, start_cv, counter, flags, flags_first, flags_last, out);
        in += stride;
        out += 32;
        counter += counter_step;
    }
}

#endif
