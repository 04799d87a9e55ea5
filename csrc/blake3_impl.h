/*
 * blake3_impl.h - private declarations shared by blake3.c and its backends (not given to cffi).
 *
 * BLAKE3 in brief (the paper "BLAKE3: one function, fast everywhere", 2020, sections 2 and 5):
 * the input is cut into 1 KiB chunks of sixteen 64-byte blocks.  Each chunk chains its blocks
 * through the compression function, starting from the key (the IV in plain hashing), into a
 * 32-byte chaining value (CV).  CVs are then combined pairwise, a parent node being the
 * compression of the 64-byte block "left CV || right CV", up a binary tree whose left subtrees
 * are always complete powers of two.  The one node that has no parent, the root, is compressed
 * with the ROOT flag, and its output can be extended to any length by compressing it again
 * with counters 0, 1, 2, ...
 *
 * The backends differ only in how they run the compression function:
 *   compress_in_place  one block, keeping the first half of the output as the new CV
 *   compress_xof       one block, all 64 bytes of output (root output, XOF)
 *   hash_many          n independent inputs of whole blocks at once, one per SIMD lane: the
 *                      chunks of a subtree, or the parents of one tree level
 * blake3.c picks one backend per process and holds all of the tree logic.
 */
#ifndef LS_BLAKE3_IMPL_H
#define LS_BLAKE3_IMPL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "layerstore.h"

#define B3_HIDDEN __attribute__((visibility("hidden")))

/* The SIMD backends keep the state in registers only if their short fixed-count loops are
 * fully unrolled (an array indexed by a loop variable must live in memory).  -O3 usually does
 * that on its own, but tuning flags or -O2 change the heuristics, so ask explicitly. */
#define B3_UNROLL _Pragma("GCC unroll 16")

/*
 * Returns p, but hides from the compiler that it is the same pointer every time.  The wide
 * backends use it for the byte-shuffle masks of the 16- and 8-bit rotations: loaded through
 * it, each mask stays a memory operand of its shuffle instead of being hoisted into a
 * register for the whole loop.  Sixteen state words already fill the sixteen vector
 * registers, and two pinned masks cost more in spills of the state than the repeated loads
 * (which hit L1) do: 6-8% on the 8-way code and 18% on the 4-way code, measured on Zen.
 */
static inline const void *b3_opaque(const void *p)
{
    __asm__("" : "+r"(p));
    return p;
}

#define B3_BLOCK_LEN 64
#define B3_CHUNK_LEN 1024
#define B3_CHUNK_BLOCKS (B3_CHUNK_LEN / B3_BLOCK_LEN)

/* A 64-bit byte length holds at most 2^54 chunks, so the tree is at most 54 levels deep. */
#define B3_MAX_DEPTH 54

/* Domain-separation flags, the last word of the compression state (paper, table 3).  Only the
 * plain hash mode is used here; keyed hashing and key derivation would add flags 16, 32, 64. */
enum {
    B3_CHUNK_START = 1 << 0,
    B3_CHUNK_END = 1 << 1,
    B3_PARENT = 1 << 2,
    B3_ROOT = 1 << 3
};

/* The initial value: the same eight words as SHA-256's. */
static const uint32_t B3_IV[8] __attribute__((unused)) = {
    0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
    0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19
};

/*
 * Which message word each G input of round r takes.  Row 0 is the block's own order; every
 * later row applies the paper's permutation {2,6,3,10,7,0,4,13,1,11,12,5,9,14,15,8} to the row
 * before (row[r][i] = row[r-1][perm[i]]).  Precomputing the rows lets the SIMD backends, which
 * keep each message word in its own register, index the words instead of moving them.
 */
static const uint8_t B3_SCHEDULE[7][16] __attribute__((unused)) = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8},
    {3, 4, 10, 12, 13, 2, 7, 14, 6, 5, 9, 0, 11, 15, 8, 1},
    {10, 7, 12, 9, 14, 3, 13, 15, 4, 0, 11, 2, 5, 8, 1, 6},
    {12, 13, 9, 11, 15, 10, 14, 8, 7, 2, 5, 3, 0, 1, 6, 4},
    {9, 14, 11, 5, 8, 12, 15, 1, 13, 3, 0, 10, 2, 6, 4, 7},
    {11, 15, 5, 0, 1, 9, 8, 6, 14, 10, 2, 12, 3, 4, 7, 13},
};

static inline uint32_t b3_load32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline void b3_store32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* CVs travel between functions as 32 little-endian bytes, so that two adjacent CVs already
 * form a parent block; inside a compression they are eight words. */
static inline void b3_store_cv(uint8_t out[32], const uint32_t cv[8])
{
    for (int i = 0; i < 8; i++)
        b3_store32(out + 4 * i, cv[i]);
}

static inline void b3_load_cv(uint32_t cv[8], const uint8_t in[32])
{
    for (int i = 0; i < 8; i++)
        cv[i] = b3_load32(in + 4 * i);
}

/*
 * The backend operations.  block_len is the number of real bytes in block (the rest is zero).
 *
 * hash_many compresses n inputs, input i being the nblocks whole blocks at in + i * stride:
 * every input starts from start_cv, input i uses the block counter counter + i * counter_step
 * for all of its blocks, its first block adds flags_first to flags and its last block adds
 * flags_last.  It writes input i's final CV to out + 32 * i.  Chunks are hash_many(stride 1024,
 * 16 blocks, counter_step 1, CHUNK_START, CHUNK_END); the parents of a tree level, whose
 * children's CVs lie side by side, are hash_many(stride 64, 1 block, counter 0, step 0,
 * flags PARENT).  out must not overlap the input.
 */
typedef void b3_compress_in_place_fn(uint32_t cv[8], const uint8_t block[B3_BLOCK_LEN],
                                     uint8_t block_len, uint64_t counter, uint8_t flags);
typedef void b3_compress_xof_fn(const uint32_t cv[8], const uint8_t block[B3_BLOCK_LEN],
                                uint8_t block_len, uint64_t counter, uint8_t flags,
                                uint8_t out[64]);
typedef void b3_hash_many_fn(const uint8_t *in, size_t stride, size_t n, size_t nblocks,
                             const uint32_t start_cv[8], uint64_t counter, unsigned counter_step,
                             uint8_t flags, uint8_t flags_first, uint8_t flags_last,
                             uint8_t *out);

/* blake3_portable.c: plain C, any machine. */
B3_HIDDEN b3_compress_in_place_fn ls_b3_compress_in_place_portable;
B3_HIDDEN b3_compress_xof_fn ls_b3_compress_xof_portable;
B3_HIDDEN b3_hash_many_fn ls_b3_hash_many_portable;

#if defined(__x86_64__) || defined(__i386__)
/* blake3_sse41.c: one block with the state's four rows in four registers; four inputs at once
 * with one word of each input per 32-bit lane. */
B3_HIDDEN b3_compress_in_place_fn ls_b3_compress_in_place_sse41;
B3_HIDDEN b3_compress_xof_fn ls_b3_compress_xof_sse41;
B3_HIDDEN b3_hash_many_fn ls_b3_hash_many_sse41;

/* blake3_avx2.c: eight inputs at once; fewer than eight fall back to the SSE4.1 code. */
B3_HIDDEN b3_hash_many_fn ls_b3_hash_many_avx2;

/* blake3_avx512.c: sixteen inputs at once, and one block with AVX-512VL's rotations. */
B3_HIDDEN b3_compress_in_place_fn ls_b3_compress_in_place_avx512;
B3_HIDDEN b3_compress_xof_fn ls_b3_compress_xof_avx512;
B3_HIDDEN b3_hash_many_fn ls_b3_hash_many_avx512;
#endif

#endif
