/*
 * blake3.c - BLAKE3 hashing: the tree, the incremental hasher, and the choice of backend.
 *
 * The compression function lives in the backends (blake3_portable.c, blake3_sse41.c,
 * blake3_avx2.c, blake3_avx512.c); this file decides what to compress.  See blake3_impl.h for the shape of the
 * tree.  Two facts drive the design:
 *
 * 1. Speed comes from compressing many independent nodes at once: the chunks of a subtree, and
 *    then the parents of each of its levels.  So whole subtrees are hashed straight from the
 *    caller's buffer, bottom-up, one hash_many call per level (subtree_children).
 *
 * 2. A node can only be compressed with the right flags once we know whether it is the root,
 *    and that depends on input not seen yet.  So the hasher keeps the last chunk open until
 *    more input arrives, and keeps finished subtrees' CVs on a stack whose merges are put off
 *    until later input proves that the merged parent is not the root ("lazy merging").
 *
 * The CV stack: after the chunks 0..n-1 are done, the tree over them is a sequence of
 * complete subtrees whose sizes are the binary digits of n, largest (leftmost) first, so the
 * stack holds popcount(n) CVs.  Merging the top two whenever there are more than that keeps
 * this shape; finalizing merges the rest from right to left, the last merge being the root.
 *
 * No function here allocates except ls_blake3_new: ls_blake3_reset and ls_blake3_hash are
 * cheap enough to call once per file.
 */
#include <stdlib.h>

#include "blake3_impl.h"

/* ---- Backends and their choice --------------------------------------------------------- */

typedef struct b3_backend {
    int id;                                     /* LS_BLAKE3_* */
    unsigned lanes;                             /* inputs hash_many takes in one pass */
    b3_compress_in_place_fn *compress_in_place;
    b3_compress_xof_fn *compress_xof;
    b3_hash_many_fn *hash_many;
} b3_backend;

/* Indexed by LS_BLAKE3_*. */
static const b3_backend b3_backends[] = {
    {LS_BLAKE3_PORTABLE, 1, ls_b3_compress_in_place_portable, ls_b3_compress_xof_portable,
     ls_b3_hash_many_portable},
#if defined(__x86_64__) || defined(__i386__)
    {LS_BLAKE3_SSE41, 4, ls_b3_compress_in_place_sse41, ls_b3_compress_xof_sse41,
     ls_b3_hash_many_sse41},
    /* One block at a time gains nothing from ymm registers: AVX2 reuses SSE4.1 there. */
    {LS_BLAKE3_AVX2, 8, ls_b3_compress_in_place_sse41, ls_b3_compress_xof_sse41,
     ls_b3_hash_many_avx2},
    {LS_BLAKE3_AVX512, 16, ls_b3_compress_in_place_avx512, ls_b3_compress_xof_avx512,
     ls_b3_hash_many_avx512},
#endif
};

/* Bit i set: this CPU runs backend i.  Written once by the constructor below. */
static unsigned b3_supported = 1u << LS_BLAKE3_PORTABLE;
/* The backend in use.  Portable until the constructor runs; read and written atomically so
 * that switching backends (tests only) is never a data race, only a documented misuse. */
static const b3_backend *b3_active = &b3_backends[0];

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

/* Reads the CPU's features with cpuid.  AVX2 also needs the OS to save the ymm registers on a
 * context switch, which XGETBV reports (XCR0 bits 1 and 2: SSE and AVX state); AVX-512 needs
 * the opmask registers and both halves of the zmm file saved as well (bits 5, 6 and 7).  A
 * kernel may leave those off, as may a hypervisor that hides AVX-512 from its guests. */
static unsigned b3_cpu_backends(void)
{
    unsigned found = 1u << LS_BLAKE3_PORTABLE;
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx))
        return found;
    int sse41 = (ecx >> 19) & 1, osxsave = (ecx >> 27) & 1, avx = (ecx >> 28) & 1;
    if (!sse41)
        return found;
    found |= 1u << LS_BLAKE3_SSE41;
    if (!osxsave || !avx || __get_cpuid_max(0, NULL) < 7)
        return found;
    uint32_t xcr0_lo, xcr0_hi;
    __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    (void)xcr0_hi;
    if ((xcr0_lo & 6) != 6)
        return found;
    __cpuid_count(7, 0, eax, ebx, ecx, edx);
    if ((ebx >> 5) & 1)
        found |= 1u << LS_BLAKE3_AVX2;
    /* The AVX-512 backend also calls the AVX2 code for its remainders, hence the AVX2 check. */
    int avx512f = (ebx >> 16) & 1, avx512vl = (ebx >> 31) & 1;
    if ((found & (1u << LS_BLAKE3_AVX2)) && avx512f && avx512vl && (xcr0_lo & 0xE0) == 0xE0)
        found |= 1u << LS_BLAKE3_AVX512;
    return found;
}
#else
static unsigned b3_cpu_backends(void)
{
    return 1u << LS_BLAKE3_PORTABLE;
}
#endif

/* Picks the best backend once, when the library is loaded, so that no hashing call ever races
 * with the detection. */
__attribute__((constructor)) static void b3_pick_backend(void)
{
    b3_supported = b3_cpu_backends();
    int best = LS_BLAKE3_PORTABLE;
    for (int id = LS_BLAKE3_PORTABLE; id <= LS_BLAKE3_AVX512; id++)
        if (b3_supported & (1u << id))
            best = id;
    __atomic_store_n(&b3_active, &b3_backends[best], __ATOMIC_RELAXED);
}

static inline const b3_backend *b3_backend_now(void)
{
    return __atomic_load_n(&b3_active, __ATOMIC_RELAXED);
}

int ls_blake3_get_backend(void)
{
    return b3_backend_now()->id;
}

int ls_blake3_set_backend(int backend)
{
    if (backend < LS_BLAKE3_PORTABLE || backend > LS_BLAKE3_AVX512)
        return LS_E_STATE;
    if (!(b3_supported & (1u << backend)))
        return LS_E_UNSUPPORTED;
    __atomic_store_n(&b3_active, &b3_backends[backend], __ATOMIC_RELAXED);
    return 0;
}

/* ---- Chunk state: the chunk being filled ---------------------------------------------- */

typedef struct b3_chunk {
    uint32_t cv[8];          /* the chaining value over blocks_done blocks */
    uint64_t counter;        /* this chunk's index in the input */
    uint8_t buf[B3_BLOCK_LEN];
    uint8_t buf_len;         /* bytes in buf: the chunk's last block so far, kept back because
                                it needs CHUNK_END (and maybe ROOT) if no more input follows */
    uint8_t blocks_done;
} b3_chunk;

static void chunk_start(b3_chunk *c, const uint32_t key[8], uint64_t counter)
{
    memcpy(c->cv, key, sizeof(c->cv));
    c->counter = counter;
    c->buf_len = 0;
    c->blocks_done = 0;
}

static size_t chunk_len(const b3_chunk *c)
{
    return (size_t)c->blocks_done * B3_BLOCK_LEN + c->buf_len;
}

static uint8_t chunk_start_flag(const b3_chunk *c)
{
    return c->blocks_done == 0 ? B3_CHUNK_START : 0;
}

/* Adds len bytes to the chunk; len never takes it past B3_CHUNK_LEN. */
static void chunk_update(const b3_backend *be, b3_chunk *c, const uint8_t *in, size_t len)
{
    if (c->buf_len > 0) {
        size_t take = B3_BLOCK_LEN - c->buf_len;
        if (take > len)
            take = len;
        memcpy(c->buf + c->buf_len, in, take);
        c->buf_len += (uint8_t)take;
        in += take;
        len -= take;
        if (len == 0)
            return;
        /* More bytes follow, so the buffered block is not the chunk's last. */
        be->compress_in_place(c->cv, c->buf, B3_BLOCK_LEN, c->counter, chunk_start_flag(c));
        c->blocks_done++;
        c->buf_len = 0;
    }
    /* Whole blocks straight from the input, all but the last one (even if it is whole). */
    if (len > B3_BLOCK_LEN) {
        size_t nblocks = (len - 1) / B3_BLOCK_LEN;
        uint8_t cv[32];
        be->hash_many(in, 0, 1, nblocks, c->cv, c->counter, 0, 0, chunk_start_flag(c), 0, cv);
        b3_load_cv(c->cv, cv);
        c->blocks_done += (uint8_t)nblocks;
        in += nblocks * B3_BLOCK_LEN;
        len -= nblocks * B3_BLOCK_LEN;
    }
    memcpy(c->buf, in, len);
    c->buf_len = (uint8_t)len;
}

/* ---- Output nodes: a node whose flags await the decision "root or not" --------------------- */

typedef struct b3_output {
    uint32_t cv[8];          /* input chaining value: the key for a parent */
    uint8_t block[B3_BLOCK_LEN];
    uint8_t block_len;
    uint64_t counter;
    uint8_t flags;
} b3_output;

static void chunk_output(const b3_chunk *c, b3_output *o)
{
    memcpy(o->cv, c->cv, sizeof(o->cv));
    memcpy(o->block, c->buf, c->buf_len);
    memset(o->block + c->buf_len, 0, B3_BLOCK_LEN - c->buf_len);
    o->block_len = c->buf_len;
    o->counter = c->counter;
    o->flags = chunk_start_flag(c) | B3_CHUNK_END;
}

/* The parent of two children whose CVs are the 64 bytes at children. */
static void parent_output(const uint32_t key[8], const uint8_t children[64], b3_output *o)
{
    memcpy(o->cv, key, sizeof(o->cv));
    memcpy(o->block, children, B3_BLOCK_LEN);
    o->block_len = B3_BLOCK_LEN;
    o->counter = 0;
    o->flags = B3_PARENT;
}

/* The node is not the root: its CV. */
static void output_cv(const b3_backend *be, const b3_output *o, uint8_t out[32])
{
    uint32_t cv[8];
    memcpy(cv, o->cv, sizeof(cv));
    be->compress_in_place(cv, o->block, o->block_len, o->counter, o->flags);
    b3_store_cv(out, cv);
}

/* The node is the root: len bytes of its extended output, 64 bytes per output block. */
static void output_root(const b3_backend *be, const b3_output *o, uint8_t *out, size_t len)
{
    uint8_t block[64];
    for (uint64_t n = 0; len > 0; n++) {
        size_t take = len < 64 ? len : 64;
        if (take == 64) {
            be->compress_xof(o->cv, o->block, o->block_len, n, o->flags | B3_ROOT, out);
        } else {
            be->compress_xof(o->cv, o->block, o->block_len, n, o->flags | B3_ROOT, block);
            memcpy(out, block, take);
        }
        out += take;
        len -= take;
    }
}

/* ---- Whole subtrees ------------------------------------------------------------------ */

/* The largest subtree hashed in one go.  Its level buffers live on the stack (6 KiB); past
 * this size the serial work per subtree (its top levels, a stack merge) is already noise. */
#define B3_SUBTREE_MAX 128

/*
 * Hashes the n whole chunks at in, chunk indices counter.. counter+n-1, where n is a power of
 * two from 2 to B3_SUBTREE_MAX and counter a multiple of n: a complete subtree.  Writes the
 * CVs of its two halves to out (its root is left to the caller, who may not know yet whether
 * it is the root of everything).  Each level is one hash_many call: first the chunks, then
 * the parents, whose children's CVs lie side by side as parent blocks.
 */
static void subtree_children(const b3_backend *be, const uint32_t key[8], const uint8_t *in,
                             size_t n, uint64_t counter, uint8_t out[64])
{
    uint8_t level_a[B3_SUBTREE_MAX * 32], level_b[B3_SUBTREE_MAX / 2 * 32];
    uint8_t *cur = level_a, *next = level_b;
    be->hash_many(in, B3_CHUNK_LEN, n, B3_CHUNK_BLOCKS, key, counter, 1, 0, B3_CHUNK_START,
                  B3_CHUNK_END, cur);
    for (; n > 2; n /= 2) {
        be->hash_many(cur, 2 * 32, n / 2, 1, key, 0, 0, B3_PARENT, 0, 0, next);
        uint8_t *t = cur;
        cur = next;
        next = t;
    }
    memcpy(out, cur, 64);
}

/* ---- The incremental hasher ----------------------------------------------------------- */

struct ls_blake3 {
    uint32_t key[8];          /* the IV: plain hashing */
    b3_chunk chunk;           /* the chunk being filled, index chunk.counter */
    uint8_t stack_len;
    /* CVs of complete subtrees left of the current chunk, oldest first: one per set bit of
     * the chunk count, plus up to two whose merge is put off.  With fewer than 2^54 chunks
     * that is at most 55. */
    uint8_t stack[(B3_MAX_DEPTH + 1) * 32];
};

/* Merges the stack down to popcount(chunks) CVs, the shape that `chunks` finished chunks
 * leave, knowing that input follows them (so none of the merged parents is the root). */
static void stack_merge(const b3_backend *be, ls_blake3 *h, uint64_t chunks)
{
    size_t keep = (size_t)__builtin_popcountll(chunks);
    while (h->stack_len > keep) {
        uint8_t *left = h->stack + (h->stack_len - 2) * 32;
        uint32_t cv[8];
        memcpy(cv, h->key, sizeof(cv));
        be->compress_in_place(cv, left, B3_BLOCK_LEN, 0, B3_PARENT);
        b3_store_cv(left, cv);
        h->stack_len--;
    }
}

/* Pushes the CV of the subtree that starts at chunk index first, after merging what the
 * subtree's arrival proves to be non-root. */
static void stack_push(const b3_backend *be, ls_blake3 *h, const uint8_t cv[32],
                       uint64_t first)
{
    stack_merge(be, h, first);
    memcpy(h->stack + h->stack_len * 32, cv, 32);
    h->stack_len++;
}

static void hasher_init(ls_blake3 *h)
{
    memcpy(h->key, B3_IV, sizeof(h->key));
    chunk_start(&h->chunk, h->key, 0);
    h->stack_len = 0;
}

ls_blake3 *ls_blake3_new(void)
{
    ls_blake3 *h = malloc(sizeof(*h));
    if (h != NULL)
        hasher_init(h);
    return h;
}

void ls_blake3_reset(ls_blake3 *h)
{
    hasher_init(h);
}

void ls_blake3_free(ls_blake3 *h)
{
    free(h);
}

/* The size, in chunks, of the next subtree to hash from the input: the largest power of two
 * that fits in len bytes, does not exceed B3_SUBTREE_MAX and starts at a multiple of itself
 * (a subtree of the BLAKE3 tree always does). */
static size_t next_subtree(uint64_t counter, size_t len)
{
    size_t n = len / B3_CHUNK_LEN;
    if (n > B3_SUBTREE_MAX)
        n = B3_SUBTREE_MAX;
    /* Round down to a power of two: keep the highest set bit. */
    n = (size_t)1 << (63 - __builtin_clzll((unsigned long long)n));
    while (counter & (n - 1))
        n /= 2;
    return n;
}

/* The most chunks batched at the end of an input (see tail_subtrees). */
#define B3_TAIL_MAX 16

/*
 * Hashes n whole chunks (n <= B3_TAIL_MAX) into n CVs.  hash_many runs its widest pass on
 * groups of `lanes` inputs and narrower ones, down to one input at a time, on the rest.  A
 * rest that would take two or more narrower passes (3, 5, 6, 7, ...) is cheaper as one more
 * widest pass over copies of the chunks, the spare lanes hashing whatever the scratch holds
 * (their CVs are dropped): measured on AVX-512, AVX2 and SSE4.1, e.g. 7 chunks in 4.5 us
 * instead of 6.8 with AVX2, where 4 + 1 + 1 + 1 inputs are four passes.
 */
static void hash_chunks(const b3_backend *be, const uint32_t key[8], const uint8_t *in,
                        size_t n, uint64_t counter, uint8_t *out)
{
    size_t rest = n % be->lanes;
    if (rest < 3 || !(rest & (rest - 1))) {
        be->hash_many(in, B3_CHUNK_LEN, n, B3_CHUNK_BLOCKS, key, counter, 1, 0, B3_CHUNK_START,
                      B3_CHUNK_END, out);
        return;
    }
    uint8_t scratch[B3_TAIL_MAX * B3_CHUNK_LEN], cvs[B3_TAIL_MAX * 32];
    memcpy(scratch, in, n * B3_CHUNK_LEN);
    be->hash_many(scratch, B3_CHUNK_LEN, n - rest + be->lanes, B3_CHUNK_BLOCKS, key, counter, 1,
                  0, B3_CHUNK_START, B3_CHUNK_END, cvs);
    memcpy(out, cvs, n * 32);
}

/*
 * The subtrees of fewer than B3_TAIL_MAX chunks that end an input (4 + 2 + 1 chunks, say) or
 * lead up to an aligned one: all their chunks hashed in one batch, where subtree by subtree
 * each would be a narrow pass of its own; then each subtree's parents level by level, and
 * its two halves pushed as in ls_blake3_update.  Returns the bytes consumed, 0 when the next
 * subtree is a big one.
 */
static size_t tail_subtrees(const b3_backend *be, ls_blake3 *h, const uint8_t *in, size_t len)
{
    uint64_t counter = h->chunk.counter;
    size_t sizes[B3_TAIL_MAX], k = 0, m = 0, left = len;
    while (left > B3_CHUNK_LEN) {
        size_t n = next_subtree(counter + m, left);
        if (n >= B3_TAIL_MAX || m + n > B3_TAIL_MAX)
            break;
        sizes[k++] = n;
        m += n;
        left -= n * B3_CHUNK_LEN;
    }
    if (m < 2)
        return 0;
    uint8_t cvs[B3_TAIL_MAX * 32], parents[2][B3_TAIL_MAX / 2 * 32];
    hash_chunks(be, h->key, in, m, counter, cvs);
    size_t first = 0;
    for (size_t i = 0; i < k; first += sizes[i], i++) {
        size_t n = sizes[i];
        const uint8_t *level = cvs + first * 32;
        if (n == 1) {
            stack_push(be, h, level, counter + first);
            continue;
        }
        for (int p = 0; n > 2; n /= 2, p ^= 1) {
            be->hash_many(level, 2 * 32, n / 2, 1, h->key, 0, 0, B3_PARENT, 0, 0, parents[p]);
            level = parents[p];
        }
        stack_push(be, h, level, counter + first);
        stack_push(be, h, level + 32, counter + first + sizes[i] / 2);
    }
    h->chunk.counter = counter + m;
    return m * B3_CHUNK_LEN;
}

void ls_blake3_update(ls_blake3 *h, const uint8_t *in, size_t len)
{
    const b3_backend *be = b3_backend_now();
    if (len == 0)
        return;

    /* 1. Fill the open chunk; close it only if input continues past it. */
    if (chunk_len(&h->chunk) > 0) {
        size_t take = B3_CHUNK_LEN - chunk_len(&h->chunk);
        if (take > len)
            take = len;
        chunk_update(be, &h->chunk, in, take);
        in += take;
        len -= take;
        if (len == 0)
            return;
        b3_output o;
        uint8_t cv[32];
        chunk_output(&h->chunk, &o);
        output_cv(be, &o, cv);
        stack_push(be, h, cv, h->chunk.counter);
        chunk_start(&h->chunk, h->key, h->chunk.counter + 1);
    }

    /* 2. Whole subtrees straight from the input while more than a chunk remains.  A subtree
     * of two or more chunks may turn out to be all that is left, in which case its parent is
     * the root: so push its two halves and let the stack merge them later, or finalize. */
    while (len > B3_CHUNK_LEN) {
        size_t taken = tail_subtrees(be, h, in, len);
        if (taken) {
            in += taken;
            len -= taken;
            continue;
        }
        uint64_t counter = h->chunk.counter;
        size_t n = next_subtree(counter, len);
        uint8_t cvs[64];
        if (n == 1) {
            be->hash_many(in, 0, 1, B3_CHUNK_BLOCKS, h->key, counter, 0, 0, B3_CHUNK_START,
                          B3_CHUNK_END, cvs);
            stack_push(be, h, cvs, counter);
        } else {
            subtree_children(be, h->key, in, n, counter, cvs);
            stack_push(be, h, cvs, counter);
            stack_push(be, h, cvs + 32, counter + n / 2);
        }
        h->chunk.counter = counter + n;
        in += n * B3_CHUNK_LEN;
        len -= n * B3_CHUNK_LEN;
    }

    /* 3. At most one chunk is left: it opens the next chunk.  Input now follows everything on
     * the stack, so the merges put off so far can be done. */
    if (len > 0) {
        chunk_update(be, &h->chunk, in, len);
        stack_merge(be, h, h->chunk.counter);
    }
}

void ls_blake3_finalize(const ls_blake3 *h, uint8_t *out, size_t out_len)
{
    const b3_backend *be = b3_backend_now();
    if (out_len == 0)
        return;
    b3_output o;
    size_t i = h->stack_len;
    if (chunk_len(&h->chunk) > 0 || i == 0) {
        /* The open chunk is the rightmost node (or, with an empty stack, the whole input). */
        chunk_output(&h->chunk, &o);
    } else {
        /* The input ended exactly where a subtree of two or more chunks did (update pushed
         * its two halves and nothing after): those two are on top. */
        parent_output(h->key, h->stack + (i - 2) * 32, &o);
        i -= 2;
    }
    /* Fold the stack in from the right: each CV on it is the left sibling of everything
     * after it. */
    while (i > 0) {
        uint8_t children[64];
        memcpy(children, h->stack + (i - 1) * 32, 32);
        output_cv(be, &o, children + 32);
        parent_output(h->key, children, &o);
        i--;
    }
    output_root(be, &o, out, out_len);
}

void ls_blake3_hash(const void *data, size_t len, uint8_t *out)
{
    const b3_backend *be = b3_backend_now();
    if (len <= B3_CHUNK_LEN) {
        /* One chunk, which is the root: no hasher needed.  All blocks but the last chain into
         * the CV; the last, padded with zeros, gives the first 32 bytes of root output. */
        uint32_t cv[8];
        size_t full = len > 0 ? (len - 1) / B3_BLOCK_LEN : 0;
        if (full > 0) {
            uint8_t bytes[32];
            be->hash_many(data, 0, 1, full, B3_IV, 0, 0, 0, B3_CHUNK_START, 0, bytes);
            b3_load_cv(cv, bytes);
        } else {
            memcpy(cv, B3_IV, sizeof(cv));
        }
        size_t last = len - full * B3_BLOCK_LEN;
        uint8_t block[B3_BLOCK_LEN] = {0};
        if (last > 0)
            memcpy(block, (const uint8_t *)data + full * B3_BLOCK_LEN, last);
        uint8_t flags = (full == 0 ? B3_CHUNK_START : 0) | B3_CHUNK_END | B3_ROOT;
        be->compress_in_place(cv, block, (uint8_t)last, 0, flags);
        b3_store_cv(out, cv);
        return;
    }
    ls_blake3 h;
    hasher_init(&h);
    ls_blake3_update(&h, data, len);
    ls_blake3_finalize(&h, out, LS_BLAKE3_OUT_LEN);
}
