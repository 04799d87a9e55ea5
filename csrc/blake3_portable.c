/*
 * blake3_portable.c - the BLAKE3 compression function in plain C (paper, section 2.2).
 *
 * The reference every SIMD backend is tested against, and the path a machine without SSE4.1
 * (or a non-x86 machine) runs.  It favours clarity; the compiler unrolls the rounds.
 */
#include "blake3_impl.h"

static inline uint32_t rotr32(uint32_t x, unsigned n)
{
    return (x >> n) | (x << (32 - n));
}

/* The quarter-round G: mixes message words mx and my into the four state words a, b, c, d. */
static inline void g(uint32_t v[16], int a, int b, int c, int d, uint32_t mx, uint32_t my)
{
    v[a] = v[a] + v[b] + mx;
    v[d] = rotr32(v[d] ^ v[a], 16);
    v[c] = v[c] + v[d];
    v[b] = rotr32(v[b] ^ v[c], 12);
    v[a] = v[a] + v[b] + my;
    v[d] = rotr32(v[d] ^ v[a], 8);
    v[c] = v[c] + v[d];
    v[b] = rotr32(v[b] ^ v[c], 7);
}

/* One round: G on the four columns of the 4x4 state, then on its four diagonals. */
static inline void round_fn(uint32_t v[16], const uint32_t m[16], const uint8_t s[16])
{
    g(v, 0, 4, 8, 12, m[s[0]], m[s[1]]);
    g(v, 1, 5, 9, 13, m[s[2]], m[s[3]]);
    g(v, 2, 6, 10, 14, m[s[4]], m[s[5]]);
    g(v, 3, 7, 11, 15, m[s[6]], m[s[7]]);
    g(v, 0, 5, 10, 15, m[s[8]], m[s[9]]);
    g(v, 1, 6, 11, 12, m[s[10]], m[s[11]]);
    g(v, 2, 7, 8, 13, m[s[12]], m[s[13]]);
    g(v, 3, 4, 9, 14, m[s[14]], m[s[15]]);
}

/* Runs the seven rounds; v receives the state before the final feed-forward. */
static void compress(uint32_t v[16], const uint32_t cv[8], const uint8_t block[B3_BLOCK_LEN],
                     uint8_t block_len, uint64_t counter, uint8_t flags)
{
    uint32_t m[16];
    for (int i = 0; i < 16; i++)
        m[i] = b3_load32(block + 4 * i);
    for (int i = 0; i < 8; i++)
        v[i] = cv[i];
    for (int i = 0; i < 4; i++)
        v[8 + i] = B3_IV[i];
    v[12] = (uint32_t)counter;
    v[13] = (uint32_t)(counter >> 32);
    v[14] = block_len;
    v[15] = flags;
    for (int r = 0; r < 7; r++)
        round_fn(v, m, B3_SCHEDULE[r]);
}

void ls_b3_compress_in_place_portable(uint32_t cv[8], const uint8_t block[B3_BLOCK_LEN],
                                      uint8_t block_len, uint64_t counter, uint8_t flags)
{
    uint32_t v[16];
    compress(v, cv, block, block_len, counter, flags);
    for (int i = 0; i < 8; i++)
        cv[i] = v[i] ^ v[i + 8];
}

void ls_b3_compress_xof_portable(const uint32_t cv[8], const uint8_t block[B3_BLOCK_LEN],
                                 uint8_t block_len, uint64_t counter, uint8_t flags,
                                 uint8_t out[64])
{
    uint32_t v[16];
    compress(v, cv, block, block_len, counter, flags);
    /* The second half of an extended output feeds the input CV forward, so that knowing one
     * output block reveals nothing about the CV it came from. */
    for (int i = 0; i < 8; i++) {
        b3_store32(out + 4 * i, v[i] ^ v[i + 8]);
        b3_store32(out + 32 + 4 * i, v[i + 8] ^ cv[i]);
    }
}

void ls_b3_hash_many_portable(const uint8_t *in, size_t stride, size_t n, size_t nblocks,
                              const uint32_t start_cv[8], uint64_t counter,
                              unsigned counter_step, uint8_t flags, uint8_t flags_first,
                              uint8_t flags_last, uint8_t *out)
{
    for (size_t i = 0; i < n; i++, in += stride, out += 32, counter += counter_step) {
        uint32_t cv[8];
        memcpy(cv, start_cv, sizeof(cv));
        for (size_t b = 0; b < nblocks; b++) {
            uint8_t f = flags;
            if (b == 0)
                f |= flags_first;
            if (b + 1 == nblocks)
                f |= flags_last;
            ls_b3_compress_in_place_portable(cv, in + b * B3_BLOCK_LEN, B3_BLOCK_LEN, counter,
                                             f);
        }
        b3_store_cv(out, cv);
    }
}
