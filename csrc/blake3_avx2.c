/*
 * blake3_avx2.c - BLAKE3 hash_many with AVX2: eight inputs at once, one per 32-bit lane.
 *
 * The same shape as the SSE4.1 four-way code with registers twice as wide: register j holds
 * state word j (or message word j) of eight independent inputs, so the rounds need no
 * shuffling of the state; only loading the message needs a transpose (load_msg8).
 * A single block gains nothing from 256-bit registers (its state is four 128-bit rows), so
 * blake3.c pairs this hash_many with the SSE4.1 compress functions, and so does the tail of
 * fewer than eight inputs here.
 *
 * Compiled with the project's common flags; every function carries target("avx2") and
 * blake3.c calls them only after checking the CPU and the OS (XSAVE of the ymm registers).
 */
#include "blake3_impl.h"

#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#define AVX2 __attribute__((target("avx2")))
#define AVX2_INLINE static inline __attribute__((target("avx2"), always_inline))

AVX2_INLINE __m256i add(__m256i a, __m256i b)
{
    return _mm256_add_epi32(a, b);
}

AVX2_INLINE __m256i xor(__m256i a, __m256i b)
{
    return _mm256_xor_si256(a, b);
}

/* Byte-aligned rotations are one in-lane byte shuffle; the masks (the same pattern in both
 * halves) are read from memory each time, see b3_opaque. */
static const uint8_t ROT16_MASK[32] __attribute__((aligned(32))) = {
    2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13,
    2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13
};
static const uint8_t ROT8_MASK[32] __attribute__((aligned(32))) = {
    1, 2, 3, 0, 5, 6, 7, 4, 9, 10, 11, 8, 13, 14, 15, 12,
    1, 2, 3, 0, 5, 6, 7, 4, 9, 10, 11, 8, 13, 14, 15, 12
};

AVX2_INLINE __m256i rot16(__m256i x)
{
    return _mm256_shuffle_epi8(x, _mm256_load_si256((const __m256i *)b3_opaque(ROT16_MASK)));
}

AVX2_INLINE __m256i rot8(__m256i x)
{
    return _mm256_shuffle_epi8(x, _mm256_load_si256((const __m256i *)b3_opaque(ROT8_MASK)));
}

AVX2_INLINE __m256i rot12(__m256i x)
{
    return _mm256_or_si256(_mm256_srli_epi32(x, 12), _mm256_slli_epi32(x, 20));
}

AVX2_INLINE __m256i rot7(__m256i x)
{
    return _mm256_or_si256(_mm256_srli_epi32(x, 7), _mm256_slli_epi32(x, 25));
}

/*
 * Half a round: G on the four columns (diag = 0) or on the four diagonals (diag = 1).  The
 * four G's are independent, and each step is done for all four before the next one, so that
 * independent instructions sit side by side for the out-of-order core.  (The SSE4.1 code
 * interleaves only two: there the extra temporaries cost more in spills than they gain;
 * here all four measured 8% faster than two, on Zen with GCC.)  diag is a constant after
 * inlining, so the index arithmetic folds away.
 */
AVX2_INLINE void half_round(__m256i v[16], const int diag, const __m256i mx[4],
                            const __m256i my[4])
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
        D(i) = rot16(xor(D(i), A(i)));
    B3_UNROLL
    for (int i = 0; i < 4; i++)
        C(i) = add(C(i), D(i));
    B3_UNROLL
    for (int i = 0; i < 4; i++)
        B(i) = rot12(xor(B(i), C(i)));
    B3_UNROLL
    for (int i = 0; i < 4; i++)
        A(i) = add(add(A(i), my[i]), B(i));
    B3_UNROLL
    for (int i = 0; i < 4; i++)
        D(i) = rot8(xor(D(i), A(i)));
    B3_UNROLL
    for (int i = 0; i < 4; i++)
        C(i) = add(C(i), D(i));
    B3_UNROLL
    for (int i = 0; i < 4; i++)
        B(i) = rot7(xor(B(i), C(i)));
#undef A
#undef B
#undef C
#undef D
}

/* One round; r is a constant after inlining, so the schedule lookups fold into fixed
 * register or stack-slot choices. */
AVX2_INLINE void round8(__m256i v[16], const __m256i m[16], int r)
{
    const uint8_t *s = B3_SCHEDULE[r];
    const __m256i cx[4] = {m[s[0]], m[s[2]], m[s[4]], m[s[6]]};
    const __m256i cy[4] = {m[s[1]], m[s[3]], m[s[5]], m[s[7]]};
    const __m256i dx[4] = {m[s[8]], m[s[10]], m[s[12]], m[s[14]]};
    const __m256i dy[4] = {m[s[9]], m[s[11]], m[s[13]], m[s[15]]};
    half_round(v, 0, cx, cy);
    half_round(v, 1, dx, dy);
}

/* Transposes, within each 128-bit half, the 4x4 matrix of words held in x[0..3]: in each
 * half, row i becomes column i. */
AVX2_INLINE void transpose4x2(__m256i x[4])
{
    __m256i ab01 = _mm256_unpacklo_epi32(x[0], x[1]); /* a0 b0 a1 b1 | same, high half */
    __m256i ab23 = _mm256_unpackhi_epi32(x[0], x[1]); /* a2 b2 a3 b3 | ... */
    __m256i cd01 = _mm256_unpacklo_epi32(x[2], x[3]);
    __m256i cd23 = _mm256_unpackhi_epi32(x[2], x[3]);
    x[0] = _mm256_unpacklo_epi64(ab01, cd01);          /* a0 b0 c0 d0 | ... */
    x[1] = _mm256_unpackhi_epi64(ab01, cd01);          /* a1 b1 c1 d1 | ... */
    x[2] = _mm256_unpacklo_epi64(ab23, cd23);
    x[3] = _mm256_unpackhi_epi64(ab23, cd23);
}

/* Two 16-byte loads, from p into the low half and from q into the high half.  Loading the
 * halves separately replaces the cross-half permutes of a full 8x8 transpose, which are slow
 * on some CPUs, with in-half shuffles only. */
AVX2_INLINE __m256i load2x128(const uint8_t *p, const uint8_t *q)
{
    __m256i lo = _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)p));
    return _mm256_inserti128_si256(lo, _mm_loadu_si128((const __m128i *)(const void *)q), 1);
}

/*
 * m[j] = message word j of the eight inputs' block at offset off, input i in lane i.  Row i
 * of each 4x4 group holds four words of input i (low half) and of input i + 4 (high half), so
 * transposing within the halves leaves inputs 0-3 in the low lanes and 4-7 in the high ones.
 */
AVX2_INLINE void load_msg8(__m256i m[16], const uint8_t *in, size_t stride, size_t off)
{
    B3_UNROLL
    for (int q = 0; q < 4; q++) {
        B3_UNROLL
        for (int i = 0; i < 4; i++) {
            const uint8_t *p = in + (size_t)i * stride + off + 16 * (size_t)q;
            m[4 * q + i] = load2x128(p, p + 4 * stride);
        }
        transpose4x2(&m[4 * q]);
    }
}

static AVX2 void hash8(const uint8_t *in, size_t stride, size_t nblocks,
                       const uint32_t start_cv[8], uint64_t counter, unsigned counter_step,
                       uint8_t flags, uint8_t flags_first, uint8_t flags_last, uint8_t *out)
{
    __m256i h[8];
    B3_UNROLL
    for (int i = 0; i < 8; i++)
        h[i] = _mm256_set1_epi32((int)start_cv[i]);
    uint32_t lo[8], hi[8];
    B3_UNROLL
    for (int i = 0; i < 8; i++) {
        uint64_t c = counter + (uint64_t)i * counter_step;
        lo[i] = (uint32_t)c;
        hi[i] = (uint32_t)(c >> 32);
    }
    const __m256i ctr_lo = _mm256_loadu_si256((const __m256i *)(const void *)lo);
    const __m256i ctr_hi = _mm256_loadu_si256((const __m256i *)(const void *)hi);
    uint8_t f = flags | flags_first;
    for (size_t b = 0; b < nblocks; b++) {
        if (b + 1 == nblocks)
            f |= flags_last;
        __m256i m[16];
        load_msg8(m, in, stride, b * B3_BLOCK_LEN);
        __m256i v[16];
        B3_UNROLL
        for (int i = 0; i < 8; i++)
            v[i] = h[i];
        B3_UNROLL
        for (int i = 0; i < 4; i++)
            v[8 + i] = _mm256_set1_epi32((int)B3_IV[i]);
        v[12] = ctr_lo;
        v[13] = ctr_hi;
        v[14] = _mm256_set1_epi32(B3_BLOCK_LEN);
        v[15] = _mm256_set1_epi32(f);
        round8(v, m, 0);
        round8(v, m, 1);
        round8(v, m, 2);
        round8(v, m, 3);
        round8(v, m, 4);
        round8(v, m, 5);
        round8(v, m, 6);
        B3_UNROLL
        for (int i = 0; i < 8; i++)
            h[i] = xor(v[i], v[i + 8]);
        f = flags;
    }
    /* Back to one input per row: after the in-half transposes, h[i] holds words 0-3 of input i
     * (low half) and of input i + 4 (high half), h[4 + i] words 4-7 of the same two. */
    transpose4x2(&h[0]);
    transpose4x2(&h[4]);
    B3_UNROLL
    for (int i = 0; i < 4; i++) {
        __m256i first = _mm256_permute2x128_si256(h[i], h[4 + i], 0x20);  /* input i */
        __m256i second = _mm256_permute2x128_si256(h[i], h[4 + i], 0x31); /* input i + 4 */
        _mm256_storeu_si256((__m256i *)(void *)(out + 32 * i), first);
        _mm256_storeu_si256((__m256i *)(void *)(out + 32 * (i + 4)), second);
    }
}

AVX2 void ls_b3_hash_many_avx2(const uint8_t *in, size_t stride, size_t n, size_t nblocks,
                               const uint32_t start_cv[8], uint64_t counter,
                               unsigned counter_step, uint8_t flags, uint8_t flags_first,
                               uint8_t flags_last, uint8_t *out)
{
    for (; n >= 8; n -= 8) {
        hash8(in, stride, nblocks, start_cv, counter, counter_step, flags, flags_first,
              flags_last, out);
        in += 8 * stride;
        out += 8 * 32;
        counter += 8 * (uint64_t)counter_step;
    }
    if (n > 0)
        ls_b3_hash_many_sse41(in, stride, n, nblocks, start_cv, counter, counter_step, flags,
                              flags_first, flags_last, out);
}

#endif
