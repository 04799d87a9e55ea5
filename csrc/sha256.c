/*
 * sha256.c - SHA-256 (FIPS 180-4), for the diffID of a layer stream.
 *
 * Two block functions behind one dispatch point:
 *   portable  the standard's section 6.2.2, word by word;
 *   shani     the x86 SHA extensions: SHA256RNDS2 does two rounds per instruction and
 *             SHA256MSG1/MSG2 compute four words of the message schedule at a time.
 * The best one the CPU has is picked when the library loads; tests switch with
 * ls_sha256_set_backend.  Ingest runs this on a helper thread, next to BLAKE3 on another.
 */
#include <stdlib.h>
#include <string.h>

#include "layerstore.h"

#define SHA256_BLOCK 64

/* Compresses nblocks 64-byte blocks at p into the state h. */
typedef void sha256_blocks_fn(uint32_t h[8], const uint8_t *p, size_t nblocks);

/* The first 32 bits of the fractional parts of the cube roots of the first 64 primes
 * (FIPS 180-4, 4.2.2). */
static const uint32_t K[64] __attribute__((aligned(16))) = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

/* The first 32 bits of the fractional parts of the square roots of the first 8 primes
 * (FIPS 180-4, 5.3.3). */
static const uint32_t H0[8] = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

/* ---- Portable ------------------------------------------------------------------------- */

static inline uint32_t rotr(uint32_t x, unsigned n)
{
    return (x >> n) | (x << (32 - n));
}

static inline uint32_t load_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static inline void store_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* The functions of FIPS 180-4, 4.1.2. */
#define CH(x, y, z) (((x) & (y)) ^ (~(x) & (z)))
#define MAJ(x, y, z) (((x) & (y)) ^ ((x) & (z)) ^ ((y) & (z)))
#define BSIG0(x) (rotr(x, 2) ^ rotr(x, 13) ^ rotr(x, 22))
#define BSIG1(x) (rotr(x, 6) ^ rotr(x, 11) ^ rotr(x, 25))
#define SSIG0(x) (rotr(x, 7) ^ rotr(x, 18) ^ ((x) >> 3))
#define SSIG1(x) (rotr(x, 17) ^ rotr(x, 19) ^ ((x) >> 10))

static void sha256_blocks_portable(uint32_t h[8], const uint8_t *p, size_t nblocks)
{
    for (; nblocks > 0; nblocks--, p += SHA256_BLOCK) {
        /* The schedule is kept as a 16-word window: W[t] only needs W[t-16..t-1]. */
        uint32_t w[16];
        for (int t = 0; t < 16; t++)
            w[t] = load_be32(p + 4 * t);
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3];
        uint32_t e = h[4], f = h[5], g = h[6], hh = h[7];
        for (int t = 0; t < 64; t++) {
            uint32_t wt;
            if (t < 16) {
                wt = w[t];
            } else {
                wt = SSIG1(w[(t - 2) & 15]) + w[(t - 7) & 15] + SSIG0(w[(t - 15) & 15]) +
                     w[t & 15];
                w[t & 15] = wt;
            }
            uint32_t t1 = hh + BSIG1(e) + CH(e, f, g) + K[t] + wt;
            uint32_t t2 = BSIG0(a) + MAJ(a, b, c);
            hh = g;
            g = f;
            f = e;
            e = d + t1;
            d = c;
            c = b;
            b = a;
            a = t1 + t2;
        }
        h[0] += a;
        h[1] += b;
        h[2] += c;
        h[3] += d;
        h[4] += e;
        h[5] += f;
        h[6] += g;
        h[7] += hh;
    }
}

/* ---- SHA extensions ------------------------------------------------------------------- */

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>

#define SHANI __attribute__((target("sha,sse4.1")))
#define SHA256_UNROLL _Pragma("GCC unroll 16")

/*
 * SHA256RNDS2 keeps the eight state words in two registers in its own order, (A,B,E,F) and
 * (C,D,G,H) from the high lane down, and runs two rounds given the two (W[t] + K[t]) sums in
 * the low lanes of its third operand; after two rounds the old (A,B,E,F) is the new
 * (C,D,G,H), so the two registers simply trade roles.  The state is converted to that order
 * once per call, not once per block.  Lane comments list words from the high lane down.
 */
static SHANI void sha256_blocks_shani(uint32_t h[8], const uint8_t *p, size_t nblocks)
{
    /* Message words are big-endian: reverse the bytes of each 32-bit lane on load. */
    const __m128i bswap = _mm_set_epi8(12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3);

    __m128i abcd = _mm_loadu_si128((const __m128i *)(const void *)h);       /* d c b a */
    __m128i efgh = _mm_loadu_si128((const __m128i *)(const void *)(h + 4)); /* h g f e */
    __m128i badc = _mm_shuffle_epi32(abcd, _MM_SHUFFLE(2, 3, 0, 1));        /* c d a b */
    __m128i hgfe = _mm_shuffle_epi32(efgh, _MM_SHUFFLE(0, 1, 2, 3));        /* e f g h */
    __m128i abef = _mm_alignr_epi8(badc, hgfe, 8);                          /* a b e f */
    __m128i cdgh = _mm_blend_epi16(hgfe, badc, 0xF0);                       /* c d g h */

    for (; nblocks > 0; nblocks--, p += SHA256_BLOCK) {
        const __m128i abef_in = abef, cdgh_in = cdgh;
        __m128i w[4];
        SHA256_UNROLL
        for (int i = 0; i < 4; i++)
            w[i] = _mm_shuffle_epi8(
                _mm_loadu_si128((const __m128i *)(const void *)(p + 16 * i)), bswap);
        /* Sixteen groups of four rounds.  From group 4 on, the group's four schedule words
         * replace the oldest vector of the window: W[t] = s1(W[t-2]) + W[t-7] + s0(W[t-15]) +
         * W[t-16], where MSG1 adds s0(W[t-15]) to W[t-16], the alignr supplies W[t-7], and
         * MSG2 adds the s1 terms (two of which depend on words of the same group).  Fully
         * unrolled, the window w[] lives in four registers. */
        SHA256_UNROLL
        for (int grp = 0; grp < 16; grp++) {
            __m128i *cur = &w[grp & 3];
            if (grp >= 4) {
                __m128i next = w[(grp + 1) & 3];
                __m128i prev2 = w[(grp + 2) & 3], prev1 = w[(grp + 3) & 3];
                __m128i t = _mm_add_epi32(_mm_sha256msg1_epu32(*cur, next),
                                          _mm_alignr_epi8(prev1, prev2, 4));
                *cur = _mm_sha256msg2_epu32(t, prev1);
            }
            __m128i k = _mm_load_si128((const __m128i *)(const void *)(K + 4 * grp));
            __m128i wk = _mm_add_epi32(*cur, k);
            /* Rounds 4*grp and +1 take the low two sums; the next two take the high ones. */
            cdgh = _mm_sha256rnds2_epu32(cdgh, abef, wk);
            wk = _mm_shuffle_epi32(wk, _MM_SHUFFLE(1, 0, 3, 2));
            abef = _mm_sha256rnds2_epu32(abef, cdgh, wk);
        }
        abef = _mm_add_epi32(abef, abef_in);
        cdgh = _mm_add_epi32(cdgh, cdgh_in);
    }

    __m128i feba = _mm_shuffle_epi32(abef, _MM_SHUFFLE(0, 1, 2, 3));        /* f e b a */
    __m128i dchg = _mm_shuffle_epi32(cdgh, _MM_SHUFFLE(2, 3, 0, 1));        /* d c h g */
    abcd = _mm_blend_epi16(feba, dchg, 0xF0);                               /* d c b a */
    efgh = _mm_alignr_epi8(dchg, feba, 8);                                  /* h g f e */
    _mm_storeu_si128((__m128i *)(void *)h, abcd);
    _mm_storeu_si128((__m128i *)(void *)(h + 4), efgh);
}

/* SHA-NI also needs SSSE3 and SSE4.1 for the shuffles and blends around it. */
static int sha256_cpu_has_shani(void)
{
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx))
        return 0;
    int ssse3 = (ecx >> 9) & 1, sse41 = (ecx >> 19) & 1;
    if (!ssse3 || !sse41 || __get_cpuid_max(0, NULL) < 7)
        return 0;
    __cpuid_count(7, 0, eax, ebx, ecx, edx);
    return (ebx >> 29) & 1;
}
#else
static int sha256_cpu_has_shani(void)
{
    return 0;
}
#endif

/* ---- Dispatch ------------------------------------------------------------------------- */

typedef struct sha256_backend {
    int id;                     /* LS_SHA256_* */
    sha256_blocks_fn *blocks;
} sha256_backend;

static const sha256_backend sha256_portable = {LS_SHA256_PORTABLE, sha256_blocks_portable};
#if defined(__x86_64__) || defined(__i386__)
static const sha256_backend sha256_shani = {LS_SHA256_SHANI, sha256_blocks_shani};
#endif

static int sha256_shani_ok;     /* written once, by the constructor */
/* The backend in use: portable until the constructor runs.  Accessed atomically, so switching
 * (tests only, never while another thread hashes) is not a data race. */
static const sha256_backend *sha256_active = &sha256_portable;

static void sha256_set(const sha256_backend *be)
{
    __atomic_store_n(&sha256_active, be, __ATOMIC_RELAXED);
}

static const sha256_backend *sha256_now(void)
{
    return __atomic_load_n(&sha256_active, __ATOMIC_RELAXED);
}

/* Picks the backend once, when the library is loaded, before any hashing can race with it. */
__attribute__((constructor)) static void sha256_pick_backend(void)
{
    sha256_shani_ok = sha256_cpu_has_shani();
#if defined(__x86_64__) || defined(__i386__)
    if (sha256_shani_ok)
        sha256_set(&sha256_shani);
#endif
}

int ls_sha256_get_backend(void)
{
    return sha256_now()->id;
}

int ls_sha256_set_backend(int backend)
{
    switch (backend) {
    case LS_SHA256_PORTABLE:
        sha256_set(&sha256_portable);
        return 0;
    case LS_SHA256_SHANI:
#if defined(__x86_64__) || defined(__i386__)
        if (sha256_shani_ok) {
            sha256_set(&sha256_shani);
            return 0;
        }
#endif
        return LS_E_UNSUPPORTED;
    default:
        return LS_E_STATE;
    }
}

/* ---- The hashing context -------------------------------------------------------------- */

struct ls_sha256 {
    uint32_t h[8];
    uint64_t total;               /* bytes hashed so far */
    uint8_t buf[SHA256_BLOCK];    /* a partial block: total % 64 bytes */
};

ls_sha256 *ls_sha256_new(void)
{
    ls_sha256 *s = malloc(sizeof(*s));
    if (s != NULL)
        ls_sha256_reset(s);
    return s;
}

void ls_sha256_reset(ls_sha256 *s)
{
    memcpy(s->h, H0, sizeof(s->h));
    s->total = 0;
}

void ls_sha256_free(ls_sha256 *s)
{
    free(s);
}

void ls_sha256_update(ls_sha256 *s, const uint8_t *data, size_t len)
{
    if (len == 0)
        return;
    sha256_blocks_fn *blocks = sha256_now()->blocks;
    size_t used = (size_t)(s->total % SHA256_BLOCK);
    s->total += len;
    if (used > 0) {
        size_t take = SHA256_BLOCK - used;
        if (take > len) {
            memcpy(s->buf + used, data, len);
            return;
        }
        memcpy(s->buf + used, data, take);
        blocks(s->h, s->buf, 1);
        data += take;
        len -= take;
    }
    /* Whole blocks straight from the caller's buffer. */
    size_t n = len / SHA256_BLOCK;
    if (n > 0) {
        blocks(s->h, data, n);
        data += n * SHA256_BLOCK;
        len -= n * SHA256_BLOCK;
    }
    if (len > 0)
        memcpy(s->buf, data, len);
}

void ls_sha256_finalize(ls_sha256 *s, uint8_t *out)
{
    sha256_blocks_fn *blocks = sha256_now()->blocks;
    /* Padding (FIPS 180-4, 5.1.1): a 1 bit, zeros up to 56 bytes mod 64, then the length in
     * bits as a big-endian 64-bit number. */
    uint64_t bits = s->total * 8;
    size_t used = (size_t)(s->total % SHA256_BLOCK);
    uint8_t tail[2 * SHA256_BLOCK];
    memcpy(tail, s->buf, used);
    tail[used] = 0x80;
    size_t tail_len = used + 1 <= 56 ? SHA256_BLOCK : 2 * SHA256_BLOCK;
    memset(tail + used + 1, 0, tail_len - 8 - (used + 1));
    for (size_t i = 0; i < 8; i++)
        tail[tail_len - 1 - i] = (uint8_t)(bits >> (8 * i));
    blocks(s->h, tail, tail_len / SHA256_BLOCK);
    for (int i = 0; i < 8; i++)
        store_be32(out + 4 * i, s->h[i]);
}
