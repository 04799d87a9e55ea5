/*
 * blake3_avx512.c - BLAKE3 with AVX-512F and AVX-512VL.
 *
 * Two things AVX-512 brings matter here: a rotate instruction (vprord), which turns each of
 * G's four rotations into one instruction with no shuffle mask or shift pair, and 32 vector
 * registers, which hold sixteen state words and sixteen message words at once.
 *
 * - Sixteen inputs at once (hash_many): the SSE4.1 and AVX2 layout with zmm registers, one
 *   state word of sixteen inputs per register.  Only the message needs moving, a 16x16
 *   transpose per block (load_msg16).  Fewer than sixteen inputs go to the AVX2 and SSE4.1
 *   code, except single inputs, which take the one-block path below.
 *
 * - One block (compress_in_place, compress_xof, single inputs): the state as four 128-bit
 *   rows, as in blake3_sse41.c, which a single compression cannot beat with wider registers.
 *   That path is one long chain of dependent instructions; here every rotation on it costs
 *   one cycle instead of a shift pair and an or.  The message side differs from the SSE4.1
 *   code too: each round's four message vectors are gathered straight from the block with
 *   two-source word permutes (vpermt2d), which depend on nothing but the block, instead of
 *   being derived from the previous round's by a chain of shuffles.
 *
 * Compiled with the project's common flags; every function carries target("avx512f,avx512vl")
 * and blake3.c calls them only after checking the CPU and that the OS saves the opmask and
 * zmm registers (XCR0).
 */
#include "blake3_impl.h"

#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#define AVX512 __attribute__((target("avx512f,avx512vl")))
#define AVX512_INLINE static inline __attribute__((target("avx512f,avx512vl"), always_inline))

/* ---- One block, the state as four rows ------------------------------------------------ */

/* An empty asm that claims to change x, so the compiler keeps x as computed: see g1. */
AVX512_INLINE __m128i pin(__m128i x)
{
    __asm__("" : "+x"(x));
    return x;
}

/* G on the four lanes of the rows a, b, c, d.  The message word goes into a before b does:
 * b is the last result of the previous step, the message is ready long before, so this
 * leaves one addition after b instead of two.  Compilers reassociate a + m + b into
 * a + (m + b) unless pin stops them. */
AVX512_INLINE void g1(__m128i *a, __m128i *b, __m128i *c, __m128i *d, __m128i mx, __m128i my)
{
    *a = _mm_add_epi32(pin(_mm_add_epi32(*a, mx)), *b);
    *d = _mm_ror_epi32(_mm_xor_si128(*d, *a), 16);
    *c = _mm_add_epi32(*c, *d);
    *b = _mm_ror_epi32(_mm_xor_si128(*b, *c), 12);
    *a = _mm_add_epi32(pin(_mm_add_epi32(*a, my)), *b);
    *d = _mm_ror_epi32(_mm_xor_si128(*d, *a), 8);
    *c = _mm_add_epi32(*c, *d);
    *b = _mm_ror_epi32(_mm_xor_si128(*b, *c), 7);
}

/*
 * The seven rounds on the rows r0..r3 (r0 = cv[0..3], r1 = cv[4..7], r2 = IV[0..3],
 * r3 = counter, block length, flags).
 *
 * The diagonal step lines the diagonals up as columns by rotating rows 0, 2 and 3 and leaving
 * row 1 in place: row 1 (b) is the last value each G computes and the first the next one
 * needs, so the rotations of the other rows overlap with its computation instead of
 * lengthening the chain.  Lane j then holds the diagonal through v[4+j], which is diagonal
 * j-1, so the diagonal message words arrive rotated by one lane: (s14,s8,s10,s12) and
 * (s15,s9,s11,s13), with s the round's schedule.
 *
 * The message words of a round are picked from the block's two halves by one vpermt2d per
 * pair of vectors: the first G input's four words in the low 128 bits, the second's in the
 * high.  The indices are the schedule itself, constants once the loop is unrolled.
 */
AVX512_INLINE void compress_rows(__m128i r[4], const __m128i cv0, const __m128i cv1,
                                 const uint8_t block[B3_BLOCK_LEN], uint8_t block_len,
                                 uint64_t counter, uint8_t flags)
{
    const __m256i lo = _mm256_loadu_si256((const __m256i *)(const void *)block);
    const __m256i hi = _mm256_loadu_si256((const __m256i *)(const void *)(block + 32));
    __m128i r0 = cv0, r1 = cv1;
    __m128i r2 = _mm_loadu_si128((const __m128i *)(const void *)B3_IV);
    __m128i r3 = _mm_set_epi32((int)flags, (int)block_len, (int)(uint32_t)(counter >> 32),
                               (int)(uint32_t)counter);
    B3_UNROLL
    for (int round = 0; round < 7; round++) {
        const uint8_t *s = B3_SCHEDULE[round];
        const __m256i col = _mm256_permutex2var_epi32(
            lo, _mm256_setr_epi32(s[0], s[2], s[4], s[6], s[1], s[3], s[5], s[7]), hi);
        const __m256i diag = _mm256_permutex2var_epi32(
            lo, _mm256_setr_epi32(s[14], s[8], s[10], s[12], s[15], s[9], s[11], s[13]), hi);
        g1(&r0, &r1, &r2, &r3, _mm256_castsi256_si128(col), _mm256_extracti128_si256(col, 1));
        r0 = _mm_shuffle_epi32(r0, _MM_SHUFFLE(2, 1, 0, 3));
        r2 = _mm_shuffle_epi32(r2, _MM_SHUFFLE(0, 3, 2, 1));
        r3 = _mm_shuffle_epi32(r3, _MM_SHUFFLE(1, 0, 3, 2));
        g1(&r0, &r1, &r2, &r3, _mm256_castsi256_si128(diag), _mm256_extracti128_si256(diag, 1));
        r0 = _mm_shuffle_epi32(r0, _MM_SHUFFLE(0, 3, 2, 1));
        r2 = _mm_shuffle_epi32(r2, _MM_SHUFFLE(2, 1, 0, 3));
        r3 = _mm_shuffle_epi32(r3, _MM_SHUFFLE(1, 0, 3, 2));
    }
    r[0] = r0;
    r[1] = r1;
    r[2] = r2;
    r[3] = r3;
}

AVX512 void ls_b3_compress_in_place_avx512(uint32_t cv[8], const uint8_t block[B3_BLOCK_LEN],
                                           uint8_t block_len, uint64_t counter, uint8_t flags)
{
    __m128i r[4];
    compress_rows(r, _mm_loadu_si128((const __m128i *)(void *)cv),
                  _mm_loadu_si128((const __m128i *)(void *)(cv + 4)), block, block_len, counter,
                  flags);
    _mm_storeu_si128((__m128i *)(void *)cv, _mm_xor_si128(r[0], r[2]));
    _mm_storeu_si128((__m128i *)(void *)(cv + 4), _mm_xor_si128(r[1], r[3]));
}

AVX512 void ls_b3_compress_xof_avx512(const uint32_t cv[8], const uint8_t block[B3_BLOCK_LEN],
                                      uint8_t block_len, uint64_t counter, uint8_t flags,
                                      uint8_t out[64])
{
    const __m128i cv0 = _mm_loadu_si128((const __m128i *)(const void *)cv);
    const __m128i cv1 = _mm_loadu_si128((const __m128i *)(const void *)(cv + 4));
    __m128i r[4];
    compress_rows(r, cv0, cv1, block, block_len, counter, flags);
    /* x86 is little-endian: the words are the output bytes as they stand. */
    _mm_storeu_si128((__m128i *)(void *)(out + 0), _mm_xor_si128(r[0], r[2]));
    _mm_storeu_si128((__m128i *)(void *)(out + 16), _mm_xor_si128(r[1], r[3]));
    _mm_storeu_si128((__m128i *)(void *)(out + 32), _mm_xor_si128(r[2], cv0));
    _mm_storeu_si128((__m128i *)(void *)(out + 48), _mm_xor_si128(r[3], cv1));
}

/* One input of hash_many, its blocks chained with the CV kept in registers: the path of a
 * lone chunk, and so of every file up to 1 KiB. */
static AVX512 void hash1(const uint8_t *in, size_t nblocks, const uint32_t start_cv[8],
                         uint64_t counter, uint8_t flags, uint8_t flags_first, uint8_t flags_last,
                         uint8_t out[32])
{
    __m128i cv0 = _mm_loadu_si128((const __m128i *)(const void *)start_cv);
    __m128i cv1 = _mm_loadu_si128((const __m128i *)(const void *)(start_cv + 4));
    uint8_t f = flags | flags_first;
    for (size_t b = 0; b < nblocks; b++) {
        if (b + 1 == nblocks)
            f |= flags_last;
        __m128i r[4];
        compress_rows(r, cv0, cv1, in + b * B3_BLOCK_LEN, B3_BLOCK_LEN, counter, f);
        cv0 = _mm_xor_si128(r[0], r[2]);
        cv1 = _mm_xor_si128(r[1], r[3]);
        f = flags;
    }
    _mm_storeu_si128((__m128i *)(void *)out, cv0);
    _mm_storeu_si128((__m128i *)(void *)(out + 16), cv1);
}

/* ---- Sixteen inputs, one per lane ----------------------------------------------------- */

AVX512_INLINE __m512i add(__m512i a, __m512i b)
{
    return _mm512_add_epi32(a, b);
}

AVX512_INLINE __m512i xor(__m512i a, __m512i b)
{
    return _mm512_xor_si512(a, b);
}

/*
 * Half a round: G on the four columns (diag = 0) or the four diagonals (diag = 1), each step
 * for all four before the next, so that four independent instructions sit side by side.
 * Unlike the AVX2 code no temporaries are needed (three-operand instructions, rotations in
 * one), which is what lets the state and the whole message share the 32 registers.
 */
AVX512_INLINE void half_round(__m512i v[16], const int diag, const __m512i mx[4],
                              const __m512i my[4])
{
#define A(i) v[(i)]
#define B(i) v[4 + ((i) + diag) % 4]
#define C(i) v[8 + ((i) + 2 * diag) % 4]
#define D(i) v[12 + ((i) + 3 * diag) % 4]
    B3_UNROLL
    for (int i = 0; i < 4; i++)
        A(i) = add(add(A(i), mx[i]), B(i));
    B3_UNROLL
    for (int i = 0; i < 4; i++)
        D(i) = _mm512_ror_epi32(xor(D(i), A(i)), 16);
    B3_UNROLL
    for (int i = 0; i < 4; i++)
        C(i) = add(C(i), D(i));
    B3_UNROLL
    for (int i = 0; i < 4; i++)
        B(i) = _mm512_ror_epi32(xor(B(i), C(i)), 12);
    B3_UNROLL
    for (int i = 0; i < 4; i++)
        A(i) = add(add(A(i), my[i]), B(i));
    B3_UNROLL
    for (int i = 0; i < 4; i++)
        D(i) = _mm512_ror_epi32(xor(D(i), A(i)), 8);
    B3_UNROLL
    for (int i = 0; i < 4; i++)
        C(i) = add(C(i), D(i));
    B3_UNROLL
    for (int i = 0; i < 4; i++)
        B(i) = _mm512_ror_epi32(xor(B(i), C(i)), 7);
#undef A
#undef B
#undef C
#undef D
}

/* One round; r is a constant after inlining, so the schedule picks fixed registers. */
AVX512_INLINE void round16(__m512i v[16], const __m512i m[16], int r)
{
    const uint8_t *s = B3_SCHEDULE[r];
    const __m512i cx[4] = {m[s[0]], m[s[2]], m[s[4]], m[s[6]]};
    const __m512i cy[4] = {m[s[1]], m[s[3]], m[s[5]], m[s[7]]};
    const __m512i dx[4] = {m[s[8]], m[s[10]], m[s[12]], m[s[14]]};
    const __m512i dy[4] = {m[s[9]], m[s[11]], m[s[13]], m[s[15]]};
    half_round(v, 0, cx, cy);
    half_round(v, 1, dx, dy);
}

/*
 * Transposes four registers' 128-bit lanes as a 4x4 matrix: afterwards x[k] holds lane k of
 * x[0], x[1], x[2], x[3] in that order.  Two passes of two-source lane shuffles; the first
 * leaves lanes {0,2} and {1,3} paired, the second finishes each pair.
 */
AVX512_INLINE void transpose_lanes(__m512i *x0, __m512i *x1, __m512i *x2, __m512i *x3)
{
    __m512i e01 = _mm512_shuffle_i32x4(*x0, *x1, _MM_SHUFFLE(2, 0, 2, 0)); /* 0.0 0.2 1.0 1.2 */
    __m512i o01 = _mm512_shuffle_i32x4(*x0, *x1, _MM_SHUFFLE(3, 1, 3, 1)); /* 0.1 0.3 1.1 1.3 */
    __m512i e23 = _mm512_shuffle_i32x4(*x2, *x3, _MM_SHUFFLE(2, 0, 2, 0)); /* 2.0 2.2 3.0 3.2 */
    __m512i o23 = _mm512_shuffle_i32x4(*x2, *x3, _MM_SHUFFLE(3, 1, 3, 1)); /* 2.1 2.3 3.1 3.3 */
    *x0 = _mm512_shuffle_i32x4(e01, e23, _MM_SHUFFLE(2, 0, 2, 0));          /* 0.0 1.0 2.0 3.0 */
    *x2 = _mm512_shuffle_i32x4(e01, e23, _MM_SHUFFLE(3, 1, 3, 1));          /* 0.2 1.2 2.2 3.2 */
    *x1 = _mm512_shuffle_i32x4(o01, o23, _MM_SHUFFLE(2, 0, 2, 0));          /* 0.1 1.1 2.1 3.1 */
    *x3 = _mm512_shuffle_i32x4(o01, o23, _MM_SHUFFLE(3, 1, 3, 1));          /* 0.3 1.3 2.3 3.3 */
}

/* Transposes, within each 128-bit lane, the 4x4 word matrix held in a, b, c, d: in each lane,
 * a receives word 0 of a, b, c, d, and so on. */
AVX512_INLINE void transpose_words(__m512i *a, __m512i *b, __m512i *c, __m512i *d)
{
    __m512i ab01 = _mm512_unpacklo_epi32(*a, *b); /* per lane: a0 b0 a1 b1 */
    __m512i ab23 = _mm512_unpackhi_epi32(*a, *b); /* a2 b2 a3 b3 */
    __m512i cd01 = _mm512_unpacklo_epi32(*c, *d);
    __m512i cd23 = _mm512_unpackhi_epi32(*c, *d);
    *a = _mm512_unpacklo_epi64(ab01, cd01);       /* a0 b0 c0 d0 */
    *b = _mm512_unpackhi_epi64(ab01, cd01);       /* a1 b1 c1 d1 */
    *c = _mm512_unpacklo_epi64(ab23, cd23);
    *d = _mm512_unpackhi_epi64(ab23, cd23);
}

/*
 * m[j] = message word j of the sixteen inputs' block at offset off, input i in lane i.  Each
 * input's block is one 64-byte load.  Transposing words within the lanes of inputs 4q..4q+3
 * leaves, in t[4q + w], word 4k + w of those four inputs in lane k; transposing lanes across
 * t[w], t[4 + w], t[8 + w], t[12 + w] then gathers word 4k + w of all sixteen into one
 * register.  Both passes are needed: neither a word shuffle nor a lane shuffle alone moves
 * data across both lanes and words.
 */
AVX512_INLINE void load_msg16(__m512i m[16], const uint8_t *in, size_t stride, size_t off)
{
    __m512i t[16];
    B3_UNROLL
    for (int i = 0; i < 16; i++)
        t[i] = _mm512_loadu_si512((const void *)(in + (size_t)i * stride + off));
    B3_UNROLL
    for (int q = 0; q < 4; q++)
        transpose_words(&t[4 * q], &t[4 * q + 1], &t[4 * q + 2], &t[4 * q + 3]);
    B3_UNROLL
    for (int w = 0; w < 4; w++) {
        transpose_lanes(&t[w], &t[4 + w], &t[8 + w], &t[12 + w]);
        B3_UNROLL
        for (int k = 0; k < 4; k++)
            m[4 * k + w] = t[4 * k + w];
    }
}

static AVX512 void hash16(const uint8_t *in, size_t stride, size_t nblocks,
                          const uint32_t start_cv[8], uint64_t counter, unsigned counter_step,
                          uint8_t flags, uint8_t flags_first, uint8_t flags_last, uint8_t *out)
{
    __m512i h[8];
    B3_UNROLL
    for (int i = 0; i < 8; i++)
        h[i] = _mm512_set1_epi32((int)start_cv[i]);
    uint32_t lo[16], hi[16];
    B3_UNROLL
    for (int i = 0; i < 16; i++) {
        uint64_t c = counter + (uint64_t)i * counter_step;
        lo[i] = (uint32_t)c;
        hi[i] = (uint32_t)(c >> 32);
    }
    const __m512i ctr_lo = _mm512_loadu_si512((const void *)lo);
    const __m512i ctr_hi = _mm512_loadu_si512((const void *)hi);
    /*
     * The message is transposed one block ahead, into memory, and the rounds read it from
     * there.  Transposed at the top of its own block, it sat between the previous block's
     * last round and this block's first on the 512-bit shuffle port, with the rounds waiting
     * for it; a block ahead, it fills gaps in the rounds instead: 14% faster with GCC 12 on
     * an Emerald Rapids Xeon (clang 14 hid most of the stall by itself).  b3_opaque keeps the
     * compiler from forwarding the stored registers straight back into the rounds, which
     * would put them back on that path.
     */
    __m512i msg[2][16];
    load_msg16(msg[0], in, stride, 0);
    uint8_t f = flags | flags_first;
    for (size_t b = 0; b < nblocks; b++) {
        if (b + 1 == nblocks)
            f |= flags_last;
        const __m512i *m = (const __m512i *)b3_opaque(msg[b & 1]);
        if (b + 1 < nblocks)
            load_msg16(msg[(b + 1) & 1], in, stride, (b + 1) * B3_BLOCK_LEN);
        __m512i v[16];
        B3_UNROLL
        for (int i = 0; i < 8; i++)
            v[i] = h[i];
        B3_UNROLL
        for (int i = 0; i < 4; i++)
            v[8 + i] = _mm512_set1_epi32((int)B3_IV[i]);
        v[12] = ctr_lo;
        v[13] = ctr_hi;
        v[14] = _mm512_set1_epi32(B3_BLOCK_LEN);
        v[15] = _mm512_set1_epi32(f);
        B3_UNROLL
        for (int r = 0; r < 7; r++)
            round16(v, m, r);
        B3_UNROLL
        for (int i = 0; i < 8; i++)
            h[i] = xor(v[i], v[i + 8]);
        f = flags;
    }
    /*
     * Back to one input per row.  The in-lane transposes leave words 0-3 of input 4k + t in
     * lane k of h[t] and words 4-7 in lane k of h[4 + t]; one two-source permute per half
     * then pairs them up, each input's 32 bytes landing in one half of x or y.
     */
    transpose_words(&h[0], &h[1], &h[2], &h[3]);
    transpose_words(&h[4], &h[5], &h[6], &h[7]);
    const __m512i first = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);   /* lanes 0 and 1 */
    const __m512i second = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15); /* lanes 2 and 3 */
    B3_UNROLL
    for (int t = 0; t < 4; t++) {
        __m512i x = _mm512_permutex2var_epi64(h[t], first, h[4 + t]);  /* inputs t, 4 + t */
        __m512i y = _mm512_permutex2var_epi64(h[t], second, h[4 + t]); /* 8 + t, 12 + t */
        _mm256_storeu_si256((__m256i *)(void *)(out + 32 * t), _mm512_castsi512_si256(x));
        _mm256_storeu_si256((__m256i *)(void *)(out + 32 * (4 + t)),
                            _mm512_extracti64x4_epi64(x, 1));
        _mm256_storeu_si256((__m256i *)(void *)(out + 32 * (8 + t)), _mm512_castsi512_si256(y));
        _mm256_storeu_si256((__m256i *)(void *)(out + 32 * (12 + t)),
                            _mm512_extracti64x4_epi64(y, 1));
    }
}

/* Sixteen inputs at a time; a remainder of four or more goes to the AVX2 code (which passes
 * its own remainder of four on to SSE4.1), and the last one to three inputs run one by one
 * on the one-block path, where AVX-512VL's rotations beat SSE4.1's single-input code. */
AVX512 void ls_b3_hash_many_avx512(const uint8_t *in, size_t stride, size_t n, size_t nblocks,
                                   const uint32_t start_cv[8], uint64_t counter,
                                   unsigned counter_step, uint8_t flags, uint8_t flags_first,
                                   uint8_t flags_last, uint8_t *out)
{
    for (; n >= 16; n -= 16) {
        hash16(in, stride, nblocks, start_cv, counter, counter_step, flags, flags_first,
               flags_last, out);
        in += 16 * stride;
        out += 16 * 32;
        counter += 16 * (uint64_t)counter_step;
    }
    size_t wide = n & ~(size_t)3;
    if (wide > 0) {
        ls_b3_hash_many_avx2(in, stride, wide, nblocks, start_cv, counter, counter_step, flags,
                             flags_first, flags_last, out);
        in += wide * stride;
        out += wide * 32;
        counter += wide * (uint64_t)counter_step;
        n -= wide;
    }
    for (; n > 0; n--) {
        hash1(in, nblocks, start_cv, counter, flags, flags_first, flags_last, out);
        in += stride;
        out += 32;
        counter += counter_step;
    }
}

#endif
