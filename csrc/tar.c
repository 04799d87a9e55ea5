/*
 * tar.c - a streaming tar reader fed by push.
 *
 * Formats: v7, POSIX ustar, GNU (long names 'L' and long links 'K', old sparse 'S', dump
 * directories 'D', volume labels 'V') and PAX ('x' local, Solaris 'X', and 'g' global extended
 * headers: path, linkpath, size, uid, gid, uname, gname, mtime, SCHILY.xattr.*,
 * SCHILY.devmajor/devminor, and GNU sparse 0.0, 0.1 and 1.0).
 *
 * Every archive is untrusted.  The reader owns one 512-byte block, the extended headers of the
 * entry being read (at most LS_MAX_PAX bytes each, LS_MAX_GLOBAL for 'g') and one sparse map
 * (LS_MAX_SPARSE segments); file content only passes through, and the holes of sparse files,
 * delivered as zeros, are bounded per layer (LS_MAX_HOLES).
 *
 * What GNU tar and Go's archive/tar (which wrote or read most real layers) both read, this
 * reads as they do; what both refuse, this refuses (tests/test_tar_compat.py holds a case for
 * each).  Where the two disagree, this follows Go, except where Go only hands a header over
 * for the caller to judge:
 *   - 'X' is 'x', 'g' applies to every later entry until the next 'g' replaces it, 'D' is a
 *     directory whose listing is skipped, 'V' makes nothing, and a type POSIX does not define
 *     is a regular file (GNU tar; Go returns such headers as entries of their own type);
 *   - PAX records override GNU long names whichever comes first (GNU tar; Go lets 'L' win),
 *     as this reader always did, so layers stored before read the same;
 *   - a GNU header's prefix area is a name prefix when it cannot be atime and ctime (Go,
 *     for the archives Go 1.7 and older wrote; GNU tar ignores it);
 *   - an empty PAX value or GNU long name leaves the header's field (Go; GNU tar extracts
 *     "." instead);
 *   - size is ignored for header-only types, a lone zero block followed by data is an error,
 *     and a stream that stops right after its last entry's content (padding and end-of-archive
 *     blocks missing) is accepted (Go).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ls_internal.h"

/* The 512-byte header, field by field. */
struct tar_header {
    char name[100];         /*   0: NUL-terminated unless all 100 bytes are used */
    char mode[8];           /* 100: octal; some writers include the S_IFMT bits */
    char uid[8];            /* 108 */
    char gid[8];            /* 116 */
    char size[12];          /* 124: octal, or GNU base-256 for files of 8 GiB and more */
    char mtime[12];         /* 136 */
    char chksum[8];         /* 148: sum of the header bytes with this field read as spaces */
    char typeflag;          /* 156 */
    char linkname[100];     /* 157 */
    char magic[6];          /* 257: "ustar\0" for POSIX, "ustar " for GNU, other for v7 */
    char version[2];        /* 263 */
    char uname[32];         /* 265 */
    char gname[32];         /* 297 */
    char devmajor[8];       /* 329 */
    char devminor[8];       /* 337 */
    union {
        struct {
            char prefix[155];   /* 345: POSIX: the directory part of a name over 100 bytes */
            char pad[12];
        } posix;
        struct {
            char atime[12];     /* 345: GNU reuses the prefix area */
            char ctime[12];
            char offset[12];    /* multi-volume continuation */
            char longnames[4];
            char unused;
            char sparse[4][24]; /* 386: old GNU sparse map, offset[12] numbytes[12] each */
            char isextended;    /* 482: more map entries follow in extension blocks */
            char realsize[12];  /* 483: the logical size of a sparse file */
            char pad[17];
        } gnu;
    } u;
};
_Static_assert(sizeof(struct tar_header) == 512, "tar header is one block");

/* An old GNU sparse extension block: 21 more map entries and a continuation flag. */
struct gnu_sparse_block {
    char sparse[21][24];
    char isextended;        /* 504 */
    char pad[7];
};
_Static_assert(sizeof(struct gnu_sparse_block) == 512, "sparse block is one block");

enum tar_state {
    S_HEADER,       /* collecting a header block */
    S_EXTENSION,    /* the body of an 'x', 'g', 'L' or 'K' header */
    S_GNU_SPARSE,   /* old GNU sparse extension blocks */
    S_SPARSE_MAP,   /* the PAX 1.0 sparse map at the start of the content area */
    S_CONTENT,      /* file content */
    S_SKIP,         /* data that is not content: a dump directory's listing, a label's data */
    S_PADDING,      /* up to the next block boundary */
    S_END,          /* after one zero block; a second one must follow */
    S_TRAILER,      /* after the end-of-archive marker */
    S_FAILED
};

struct segment {
    uint64_t offset, len;
};

struct xattr_ref {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

struct ls_tar {
    const ls_tar_ops *ops;
    void *ctx;
    ls_err *err;
    enum tar_state state;
    int code;                       /* the error that stopped the reader */
    uint64_t offset;                /* stream bytes consumed: only consume() moves it */

    uint8_t block[512];             /* a header or sparse block arriving in pieces */
    size_t block_len;
    uint64_t block_offset;          /* where the block being collected or read started */
    uint64_t remaining;             /* bytes left in the current area */
    uint64_t padding;               /* padding that follows the current area */

    /* Extended headers seen since the last entry. */
    char ext_type;                  /* the one being read */
    ls_buf ext;
    int pending;                    /* 'x', 'L' or 'K' seen, entry not yet */
    uint64_t entry_offset;          /* where the pending entry's first header starts */
    ls_buf longname, longlink, pax;
    int have_longname, have_longlink;
    ls_buf global;                  /* every 'g' record so far, in order */

    /* The entry being delivered. */
    ls_tar_entry e;
    char typeflag;
    ls_buf path, link, uname, gname, xattrs;
    struct xattr_ref *xrefs;
    size_t nxrefs, xrefs_cap;
    uint64_t stored;                /* content bytes in the archive (sparse: segments only) */
    uint64_t skip;                  /* data bytes after the header that are not content */

    /* Sparse state. */
    int sparse_major, sparse_minor, sparse_realsize_set;
    uint64_t realsize;
    struct segment *map;
    size_t map_len, map_cap;
    size_t seg;                     /* the segment being delivered */
    uint64_t seg_done;              /* its bytes delivered */
    uint64_t logical;               /* logical bytes delivered */
    uint64_t sparse_00_offset;      /* PAX 0.0: an offset waiting for its numbytes */
    int sparse_00_have_offset;
    /* PAX 1.0 map text parser. */
    uint64_t map_number;
    unsigned map_digits;            /* a digit was seen on this line */
    uint64_t map_count;             /* segments announced */
    uint64_t map_numbers;           /* numbers read, the count included */
    uint64_t map_bytes;             /* bytes of the content area the map used so far */

    uint64_t holes;                 /* bytes of holes in the sparse files so far */
    uint64_t trailer;
};

static const uint8_t zeros[65536];

static int fail(ls_tar *t, int code, const char *fmt, ...) LS_PRINTF(3, 4);

static int fail(ls_tar *t, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->err->msg, sizeof t->err->msg, fmt, ap);
    va_end(ap);
    t->state = S_FAILED;
    t->code = code;
    return code;
}

static uint64_t pad512(uint64_t n)
{
    return (512 - n % 512) % 512;
}

static int is_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/* Length of a NUL-terminated field that may fill its whole width. */
static size_t field_len(const char *f, size_t width)
{
    const char *nul = memchr(f, 0, width);
    return nul ? (size_t)(nul - f) : width;
}

/* Parses a numeric header field as Go's archive/tar does: octal digits between optional spaces
 * and NULs (empty means 0), ending at the first NUL after them ("644\0junk" is 0644, as GNU
 * tar reads it too), or GNU base-256 when the first byte has its high bit set (0x80 positive,
 * 0xff negative).  Returns 0 and sets *out, or -1 when the field is not a number or does not
 * fit in 63 bits. */
static int parse_number(const char *f, size_t width, int64_t *out)
{
    const uint8_t *b = (const uint8_t *)f;
    if (b[0] & 0x80) {
        uint8_t inv = (b[0] & 0x40) ? 0xff : 0;     /* two's complement negative */
        uint64_t x = 0;
        for (size_t i = 0; i < width; i++) {
            uint8_t c = b[i] ^ inv;
            if (i == 0)
                c &= 0x7f;
            if (x >> 55)
                return -1;
            x = x << 8 | c;
        }
        if (x >> 63)
            return -1;
        *out = inv ? ~(int64_t)x : (int64_t)x;
        return 0;
    }
    size_t i = 0, end = width;
    while (i < end && (f[i] == ' ' || f[i] == 0))
        i++;
    while (end > i && (f[end - 1] == ' ' || f[end - 1] == 0))
        end--;
    const char *nul = memchr(f + i, 0, end - i);
    if (nul)
        end = (size_t)(nul - f);
    uint64_t x = 0;
    for (; i < end; i++) {
        if (f[i] < '0' || f[i] > '7' || (x >> 60))
            return -1;
        x = x << 3 | (uint64_t)(f[i] - '0');
    }
    *out = (int64_t)x;
    return 0;
}

/* Parses an unsigned decimal PAX value that must fit in max.  Leading zeros are allowed, as
 * many as the writer liked (Go's strconv.ParseInt and GNU tar's strtoumax take them). */
static int parse_decimal(const char *s, size_t n, uint64_t max, uint64_t *out)
{
    if (n == 0)
        return -1;
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        uint64_t d = (uint64_t)(s[i] - '0');
        if (x > (UINT64_MAX - d) / 10)
            return -1;
        x = x * 10 + d;
    }
    if (x > max)
        return -1;
    *out = x;
    return 0;
}

/* PAX mtime: [-]seconds[.fraction]; the fraction is kept to nanoseconds and may be empty
 * ("1700000000." is whole seconds to Go and GNU tar). */
static int parse_pax_time(const char *s, size_t n, int64_t *sec, uint32_t *nsec)
{
    int neg = n > 0 && s[0] == '-';
    size_t i = neg;
    size_t dot = i;
    while (dot < n && s[dot] != '.')
        dot++;
    uint64_t whole;
    if (parse_decimal(s + i, dot - i, INT64_MAX, &whole))
        return -1;
    uint32_t frac = 0;
    if (dot < n) {
        size_t digits = n - dot - 1;
        for (size_t k = 0; k < digits; k++) {
            char c = s[dot + 1 + k];
            if (c < '0' || c > '9')
                return -1;
            if (k < 9)
                frac = frac * 10 + (uint32_t)(c - '0');
        }
        for (size_t k = digits; k < 9; k++)
            frac *= 10;
    }
    if (neg && frac) {
        /* -1.25 is 1.25 s before the epoch: seconds -2, nanoseconds 750000000. */
        *sec = -(int64_t)whole - 1;
        *nsec = 1000000000u - frac;
    } else {
        *sec = neg ? -(int64_t)whole : (int64_t)whole;
        *nsec = frac;
    }
    return 0;
}

/* ---- PAX records -------------------------------------------------------------------------- */

typedef int (*pax_fn)(ls_tar *t, const char *key, size_t klen, const char *val, size_t vlen);

/* Walks "LEN KEY=VALUE\n" records; LEN counts the whole record, itself included, and may have
 * leading zeros.  A key may not hold a NUL (Go and GNU tar refuse the header). */
static int pax_walk(ls_tar *t, const uint8_t *buf, size_t n, pax_fn fn)
{
    size_t pos = 0;
    while (pos < n) {
        const char *r = (const char *)buf + pos;
        size_t left = n - pos, i = 0;
        uint64_t len = 0;
        /* Once len passes left it can only fail, so it stops growing (no overflow). */
        for (; i < left && r[i] >= '0' && r[i] <= '9'; i++)
            if (len <= left)
                len = len * 10 + (uint64_t)(r[i] - '0');
        if (i == 0 || i >= left || r[i] != ' ' || len <= i + 1 || len > left ||
            r[len - 1] != '\n') {
            /* Writers pad the body with NULs after the last record; tolerate only that. */
            if (is_zero((const uint8_t *)r, left))
                return 0;
            return fail(t, LS_E_CORRUPT, "bad PAX record length in the extended header of "
                        "the entry at offset %llu", (unsigned long long)t->entry_offset);
        }
        const char *key = r + i + 1;
        const char *end = r + len - 1;
        const char *eq = memchr(key, '=', (size_t)(end - key));
        if (!eq || eq == key)
            return fail(t, LS_E_CORRUPT, "PAX record without a key in the extended header of "
                        "the entry at offset %llu", (unsigned long long)t->entry_offset);
        if (memchr(key, 0, (size_t)(eq - key)))
            return fail(t, LS_E_CORRUPT, "NUL inside a PAX key in the extended header of the "
                        "entry at offset %llu", (unsigned long long)t->entry_offset);
        if (fn) {
            int rc = fn(t, key, (size_t)(eq - key), eq + 1, (size_t)(end - eq - 1));
            if (rc)
                return rc;
        }
        pos += len;
    }
    return 0;
}

static int keyis(const char *key, size_t klen, const char *name)
{
    return strlen(name) == klen && memcmp(key, name, klen) == 0;
}

static int set_name(ls_tar *t, ls_buf *dst, const char *what, const char *v, size_t n)
{
    if (memchr(v, 0, n))
        return fail(t, LS_E_CORRUPT, "NUL inside the %s of the entry at offset %llu", what,
                    (unsigned long long)t->entry_offset);
    if (n > LS_MAX_PATH)
        return fail(t, LS_E_LIMIT, "%s of %zu bytes in the entry at offset %llu (limit %u)",
                    what, n, (unsigned long long)t->entry_offset, LS_MAX_PATH);
    dst->len = 0;
    if (ls_buf_append(dst, v, n))
        return fail(t, LS_E_NOMEM, "out of memory");
    return 0;
}

static int add_segment(ls_tar *t, uint64_t offset, uint64_t len)
{
    if (t->map_len >= LS_MAX_SPARSE)
        return fail(t, LS_E_LIMIT, "sparse map of the entry at offset %llu has more than %u "
                    "segments", (unsigned long long)t->entry_offset, LS_MAX_SPARSE);
    if (t->map_len == t->map_cap) {
        size_t cap = t->map_cap ? t->map_cap * 2 : 16;
        struct segment *m = realloc(t->map, cap * sizeof *m);
        if (!m)
            return fail(t, LS_E_NOMEM, "out of memory");
        t->map = m;
        t->map_cap = cap;
    }
    t->map[t->map_len].offset = offset;
    t->map[t->map_len].len = len;
    t->map_len++;
    return 0;
}

static int bad_pax_value(ls_tar *t, const char *key, size_t klen)
{
    return fail(t, LS_E_CORRUPT, "bad value for PAX key '%.*s' in the entry at offset %llu",
                (int)(klen > 64 ? 64 : klen), key, (unsigned long long)t->entry_offset);
}

/* Applies one PAX record to the entry being built.  An empty value leaves the field as it was
 * (the header's, or a global record's), as Go does: GNU tar complains about "uid=" but keeps
 * the header's uid too, and an empty path would make it extract "." instead.  Extended
 * attributes are the exception: an empty value is a value, and both set it. */
static int pax_apply(ls_tar *t, const char *key, size_t klen, const char *v, size_t n)
{
    ls_tar_entry *e = &t->e;
    uint64_t u;
    int xattr = klen > 13 && memcmp(key, "SCHILY.xattr.", 13) == 0;
    if (n == 0 && !xattr)
        return 0;
    if (keyis(key, klen, "path") || keyis(key, klen, "GNU.sparse.name"))
        return set_name(t, &t->path, "path", v, n);
    if (keyis(key, klen, "linkpath"))
        return set_name(t, &t->link, "link target", v, n);
    if (keyis(key, klen, "uname"))
        return set_name(t, &t->uname, "user name", v, n);
    if (keyis(key, klen, "gname"))
        return set_name(t, &t->gname, "group name", v, n);
    if (keyis(key, klen, "size")) {
        if (parse_decimal(v, n, INT64_MAX, &u))
            return bad_pax_value(t, key, klen);
        t->stored = u;
        return 0;
    }
    if (keyis(key, klen, "uid") || keyis(key, klen, "gid")) {
        if (parse_decimal(v, n, UINT32_MAX, &u))
            return bad_pax_value(t, key, klen);
        *(key[0] == 'u' ? &e->uid : &e->gid) = (uint32_t)u;
        return 0;
    }
    if (keyis(key, klen, "mtime")) {
        if (parse_pax_time(v, n, &e->mtime, &e->mtime_nsec))
            return bad_pax_value(t, key, klen);
        return 0;
    }
    if (keyis(key, klen, "SCHILY.devmajor") || keyis(key, klen, "SCHILY.devminor")) {
        if (parse_decimal(v, n, UINT32_MAX, &u))
            return bad_pax_value(t, key, klen);
        *(key[11] == 'a' ? &e->devmajor : &e->devminor) = (uint32_t)u;
        return 0;
    }
    if (xattr) {
        const char *name = key + 13;
        size_t name_len = klen - 13;
        if (memchr(name, 0, name_len))
            return bad_pax_value(t, key, klen);
        for (size_t i = 0; i < t->nxrefs; i++) {
            struct xattr_ref *x = &t->xrefs[i];
            if (x->name_len == name_len && memcmp(x->name, name, name_len) == 0) {
                x->value = v;     /* a later record wins */
                x->value_len = n;
                return 0;
            }
        }
        if (t->nxrefs == t->xrefs_cap) {
            size_t cap = t->xrefs_cap ? t->xrefs_cap * 2 : 8;
            struct xattr_ref *r = realloc(t->xrefs, cap * sizeof *r);
            if (!r)
                return fail(t, LS_E_NOMEM, "out of memory");
            t->xrefs = r;
            t->xrefs_cap = cap;
        }
        t->xrefs[t->nxrefs++] = (struct xattr_ref){name, name_len, v, n};
        return 0;
    }
    if (klen > 11 && memcmp(key, "GNU.sparse.", 11) == 0) {
        const char *k = key + 11;
        size_t kl = klen - 11;
        if (keyis(k, kl, "size") || keyis(k, kl, "realsize")) {
            if (parse_decimal(v, n, INT64_MAX, &t->realsize))
                return bad_pax_value(t, key, klen);
            t->sparse_realsize_set = 1;
        } else if (keyis(k, kl, "major") || keyis(k, kl, "minor")) {
            if (parse_decimal(v, n, 1000, &u))
                return bad_pax_value(t, key, klen);
            *(k[1] == 'a' ? &t->sparse_major : &t->sparse_minor) = (int)u;
        } else if (keyis(k, kl, "offset")) {            /* 0.0: offset, numbytes, ... */
            if (t->sparse_00_have_offset || parse_decimal(v, n, INT64_MAX, &u))
                return bad_pax_value(t, key, klen);
            t->sparse_00_offset = u;
            t->sparse_00_have_offset = 1;
        } else if (keyis(k, kl, "numbytes")) {
            if (!t->sparse_00_have_offset || parse_decimal(v, n, INT64_MAX, &u))
                return bad_pax_value(t, key, klen);
            t->sparse_00_have_offset = 0;
            return add_segment(t, t->sparse_00_offset, u);
        } else if (keyis(k, kl, "map")) {               /* 0.1: "offset,numbytes,..." */
            t->map_len = 0;
            size_t i = 0, count = 0;
            uint64_t pair[2];
            while (n > 0 && i <= n) {
                size_t j = i;
                while (j < n && v[j] != ',')
                    j++;
                if (parse_decimal(v + i, j - i, INT64_MAX, &pair[count % 2]))
                    return bad_pax_value(t, key, klen);
                if (++count % 2 == 0) {
                    int rc = add_segment(t, pair[0], pair[1]);
                    if (rc)
                        return rc;
                }
                i = j + 1;
            }
            if (count % 2)
                return bad_pax_value(t, key, klen);
        }
        return 0;
    }
    return 0;   /* atime, ctime, comment, charset, hdrcharset, vendor keys: not kept */
}

/* ---- Entries ------------------------------------------------------------------------------ */

static int xref_cmp(const void *a, const void *b)
{
    const struct xattr_ref *x = a, *y = b;
    size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int c = memcmp(x->name, y->name, n);
    return c ? c : (x->name_len > y->name_len) - (x->name_len < y->name_len);
}

static int encode_xattrs(ls_tar *t)
{
    t->xattrs.len = 0;
    if (t->nxrefs == 0)
        return 0;
    qsort(t->xrefs, t->nxrefs, sizeof *t->xrefs, xref_cmp);
    for (size_t i = 0; i < t->nxrefs; i++) {
        const struct xattr_ref *x = &t->xrefs[i];
        uint8_t hdr[8];
        ls_put32(hdr, (uint32_t)x->name_len);
        ls_put32(hdr + 4, (uint32_t)x->value_len);
        if (ls_buf_append(&t->xattrs, hdr, 8) || ls_buf_append(&t->xattrs, x->name, x->name_len)
            || ls_buf_append(&t->xattrs, x->value, x->value_len))
            return fail(t, LS_E_NOMEM, "out of memory");
    }
    return 0;
}

static void reset_pending(ls_tar *t)
{
    t->pending = 0;
    t->have_longname = t->have_longlink = 0;
    t->pax.len = 0;
}

static int numeric_field(ls_tar *t, const char *f, size_t width, const char *what,
                         int64_t max, int64_t *out)
{
    if (parse_number(f, width, out) || *out > max)
        return fail(t, LS_E_CORRUPT, "bad %s field in the header at offset %llu", what,
                    (unsigned long long)t->block_offset);
    if (*out < 0)
        return fail(t, LS_E_CORRUPT, "negative %s in the header at offset %llu", what,
                    (unsigned long long)t->block_offset);
    return 0;
}

/* Reads old GNU sparse map entries; stops at the first unused one. */
static int gnu_sparse_entries(ls_tar *t, const char (*ent)[24], int count)
{
    for (int i = 0; i < count; i++) {
        if (ent[i][12] == 0)     /* GNU tar: an unused entry has an empty numbytes */
            break;
        int64_t off, len;
        if (parse_number(ent[i], 12, &off) || parse_number(ent[i] + 12, 12, &len) || off < 0 ||
            len < 0)
            return fail(t, LS_E_CORRUPT, "bad old GNU sparse map entry in the entry at offset "
                        "%llu", (unsigned long long)t->entry_offset);
        int rc = add_segment(t, (uint64_t)off, (uint64_t)len);
        if (rc)
            return rc;
    }
    return 0;
}

static int finish_content(ls_tar *t);
static void next_area(ls_tar *t);

/* Checks the sparse map against the sizes, then hands the entry over and starts its content. */
static int begin_content(ls_tar *t)
{
    ls_tar_entry *e = &t->e;
    if (e->sparse) {
        uint64_t end = 0, sum = 0;
        for (size_t i = 0; i < t->map_len; i++) {
            const struct segment *s = &t->map[i];
            if (s->offset < end || s->offset > t->realsize || s->len > t->realsize - s->offset)
                return fail(t, LS_E_CORRUPT, "sparse map of the entry at offset %llu has "
                            "segments out of order or beyond its size",
                            (unsigned long long)t->entry_offset);
            end = s->offset + s->len;
            sum += s->len;
        }
        if (sum != t->stored)
            return fail(t, LS_E_CORRUPT, "sparse map of the entry at offset %llu covers %llu "
                        "bytes but %llu are stored", (unsigned long long)t->entry_offset,
                        (unsigned long long)sum, (unsigned long long)t->stored);
        if (t->realsize - sum > LS_MAX_HOLES - t->holes)
            return fail(t, LS_E_LIMIT, "sparse file of %llu bytes at offset %llu: the layer's "
                        "sparse files would hold more than %llu bytes of holes",
                        (unsigned long long)t->realsize, (unsigned long long)t->entry_offset,
                        (unsigned long long)LS_MAX_HOLES);
        t->holes += t->realsize - sum;
        e->size = t->realsize;
    } else {
        e->size = e->type == LS_ENTRY_FILE ? t->stored : 0;
    }
    e->path = (const char *)t->path.data;
    e->path_len = t->path.len;
    e->link = (const char *)t->link.data;
    e->link_len = t->link.len;
    e->uname = (const char *)t->uname.data;
    e->uname_len = t->uname.len;
    e->gname = (const char *)t->gname.data;
    e->gname_len = t->gname.len;
    e->xattrs = t->xattrs.data;
    e->xattrs_len = t->xattrs.len;
    e->offset = t->entry_offset;
    int rc = t->ops->entry(t->ctx, e);
    if (rc) {
        t->state = S_FAILED;
        t->code = rc;
        return rc;
    }
    t->seg = 0;
    t->seg_done = 0;
    t->logical = 0;
    t->remaining = t->stored;
    if (t->stored == 0)
        return finish_content(t);
    t->state = S_CONTENT;
    return 0;
}

/* Delivers zeros for a sparse hole. */
static int deliver_zeros(ls_tar *t, uint64_t n)
{
    while (n > 0) {
        size_t k = n < sizeof zeros ? (size_t)n : sizeof zeros;
        int rc = t->ops->data(t->ctx, zeros, k);
        if (rc) {
            t->state = S_FAILED;
            t->code = rc;
            return rc;
        }
        n -= k;
        t->logical += k;
    }
    return 0;
}

static int finish_content(ls_tar *t)
{
    if (t->e.sparse) {
        int rc = deliver_zeros(t, t->realsize - t->logical);
        if (rc)
            return rc;
    }
    int rc = t->ops->entry_end(t->ctx);
    if (rc) {
        t->state = S_FAILED;
        t->code = rc;
        return rc;
    }
    next_area(t);
    return 0;
}

/* After an entry's content: data to skip, padding, or the next header. */
static void next_area(ls_tar *t)
{
    if (t->skip) {
        t->state = S_SKIP;
        t->remaining = t->skip;
        t->skip = 0;
    } else {
        t->state = t->padding ? S_PADDING : S_HEADER;
        t->remaining = t->padding;
    }
}

/* Go before 1.8 wrote the ustar prefix into GNU headers, where atime and ctime belong
 * (golang.org/issue/12594), and Docker wrote layers with it.  Go reads such a header's prefix
 * as the start of the name when atime or ctime is not a number and the prefix is ASCII; so
 * does this reader, and those layers keep their long names (GNU tar reads the short name). */
static int gnu_prefix_is_name(const struct tar_header *h)
{
    int64_t v;
    if ((h->u.gnu.atime[0] == 0 || parse_number(h->u.gnu.atime, 12, &v) == 0) &&
        (h->u.gnu.ctime[0] == 0 || parse_number(h->u.gnu.ctime, 12, &v) == 0))
        return 0;
    size_t n = field_len(h->u.posix.prefix, 155);
    for (size_t i = 0; i < n; i++)
        if ((uint8_t)h->u.posix.prefix[i] >= 0x80)
            return 0;
    return 1;
}

static int start_entry(ls_tar *t, const struct tar_header *h)
{
    ls_tar_entry *e = &t->e;
    memset(e, 0, sizeof *e);
    t->typeflag = h->typeflag;
    t->nxrefs = 0;
    t->map_len = 0;
    t->sparse_major = t->sparse_minor = -1;
    t->sparse_realsize_set = 0;
    t->sparse_00_have_offset = 0;
    t->realsize = 0;

    int posix = memcmp(h->magic, "ustar\0", 6) == 0;
    int gnu = memcmp(h->magic, "ustar ", 6) == 0;

    /* The header's own fields, which extended headers then override. */
    t->path.len = 0;
    if (t->have_longname) {
        if (ls_buf_append(&t->path, t->longname.data, t->longname.len))
            return fail(t, LS_E_NOMEM, "out of memory");
    } else {
        size_t plen = posix || (gnu && gnu_prefix_is_name(h)) ?
                      field_len(h->u.posix.prefix, 155) : 0;
        if (plen && (ls_buf_append(&t->path, h->u.posix.prefix, plen) ||
                     ls_buf_append(&t->path, "/", 1)))
            return fail(t, LS_E_NOMEM, "out of memory");
        if (ls_buf_append(&t->path, h->name, field_len(h->name, 100)))
            return fail(t, LS_E_NOMEM, "out of memory");
    }
    t->link.len = 0;
    const void *lsrc = t->have_longlink ? (const void *)t->longlink.data : h->linkname;
    size_t llen = t->have_longlink ? t->longlink.len : field_len(h->linkname, 100);
    t->uname.len = t->gname.len = 0;
    if (ls_buf_append(&t->link, lsrc, llen) ||
        ls_buf_append(&t->uname, h->uname, field_len(h->uname, 32)) ||
        ls_buf_append(&t->gname, h->gname, field_len(h->gname, 32)))
        return fail(t, LS_E_NOMEM, "out of memory");

    int64_t v;
    int rc;
    if ((rc = numeric_field(t, h->mode, 8, "mode", INT64_MAX, &v)))
        return rc;
    e->mode = (uint32_t)(v & 07777);
    if ((rc = numeric_field(t, h->uid, 8, "uid", UINT32_MAX, &v)))
        return rc;
    e->uid = (uint32_t)v;
    if ((rc = numeric_field(t, h->gid, 8, "gid", UINT32_MAX, &v)))
        return rc;
    e->gid = (uint32_t)v;
    if ((rc = numeric_field(t, h->size, 12, "size", INT64_MAX, &v)))
        return rc;
    t->stored = (uint64_t)v;
    if (parse_number(h->mtime, 12, &v))     /* mtime alone may be negative (before 1970) */
        return fail(t, LS_E_CORRUPT, "bad mtime field in the header at offset %llu",
                    (unsigned long long)t->block_offset);
    e->mtime = v;
    if (h->typeflag == '3' || h->typeflag == '4') {
        if ((rc = numeric_field(t, h->devmajor, 8, "devmajor", UINT32_MAX, &v)))
            return rc;
        e->devmajor = (uint32_t)v;
        if ((rc = numeric_field(t, h->devminor, 8, "devminor", UINT32_MAX, &v)))
            return rc;
        e->devminor = (uint32_t)v;
    }

    if ((rc = pax_walk(t, t->global.data, t->global.len, pax_apply)) ||
        (rc = pax_walk(t, t->pax.data, t->pax.len, pax_apply)))
        return rc;
    if (t->sparse_00_have_offset)
        return fail(t, LS_E_CORRUPT, "PAX 0.0 sparse offset without numbytes in the entry at "
                    "offset %llu", (unsigned long long)t->entry_offset);
    if ((rc = encode_xattrs(t)))
        return rc;

    t->skip = 0;
    switch (h->typeflag) {
    case '\0':
        /* v7 marks a directory by a trailing slash on a regular file. */
        e->type = (t->path.len && t->path.data[t->path.len - 1] == '/') ? LS_ENTRY_DIR
                                                                         : LS_ENTRY_FILE;
        break;
    case '1': e->type = LS_ENTRY_HARDLINK; break;
    case '2': e->type = LS_ENTRY_SYMLINK; break;
    case '3': e->type = LS_ENTRY_CHAR; break;
    case '4': e->type = LS_ENTRY_BLOCK; break;
    case '5': e->type = LS_ENTRY_DIR; break;
    case '6': e->type = LS_ENTRY_FIFO; break;
    case 'D':
        /* A GNU dump directory: a directory, and its data a listing of the names it held
         * when dumped, which only an incremental restore reads; GNU tar -x skips it. */
        e->type = LS_ENTRY_DIR;
        t->skip = t->stored;
        break;
    case 'V':
        /* A GNU volume label names the archive, not a file: GNU tar makes nothing of it. */
        t->skip = t->stored;
        t->stored = 0;
        t->padding = pad512(t->skip);
        reset_pending(t);
        next_area(t);
        return 0;
    default:
        /* '0', '7' (contiguous), 'S' (old GNU sparse) and every type POSIX does not define:
         * "a conforming implementation shall treat an unrecognized typeflag as a regular
         * file", and GNU tar extracts them so (Go hands over the header and its content). */
        e->type = LS_ENTRY_FILE;
        break;
    }
    if (t->path.len == 0)
        return fail(t, LS_E_CORRUPT, "entry with an empty name at offset %llu",
                    (unsigned long long)t->entry_offset);
    if (e->type == LS_ENTRY_HARDLINK && t->link.len == 0)
        return fail(t, LS_E_CORRUPT, "hardlink without a target at offset %llu",
                    (unsigned long long)t->entry_offset);
    if (e->type != LS_ENTRY_FILE)
        t->stored = 0;      /* header-only types carry no content, whatever their size says */

    t->padding = pad512(t->stored + t->skip);
    reset_pending(t);

    if (h->typeflag == 'S') {
        if (!gnu)
            return fail(t, LS_E_CORRUPT, "old GNU sparse entry without the GNU magic at "
                        "offset %llu", (unsigned long long)t->entry_offset);
        e->sparse = 1;
        if (parse_number(h->u.gnu.realsize, 12, &v) || v < 0)
            return fail(t, LS_E_CORRUPT, "bad sparse real size in the header at offset %llu",
                        (unsigned long long)t->entry_offset);
        t->realsize = (uint64_t)v;
        if ((rc = gnu_sparse_entries(t, (const char (*)[24])h->u.gnu.sparse, 4)))
            return rc;
        if (h->u.gnu.isextended) {
            t->state = S_GNU_SPARSE;
            t->block_len = 0;
            return 0;
        }
        return begin_content(t);
    }
    if (e->type == LS_ENTRY_FILE &&
        (t->map_len || t->sparse_major >= 0 || t->sparse_realsize_set)) {
        e->sparse = 1;
        if (!t->sparse_realsize_set)
            return fail(t, LS_E_CORRUPT, "PAX sparse entry without a real size at offset %llu",
                        (unsigned long long)t->entry_offset);
        if (t->sparse_major == 1 && t->sparse_minor == 0) {
            t->map_len = 0;
            t->map_number = t->map_digits = 0;
            t->map_count = t->map_numbers = t->map_bytes = 0;
            t->remaining = t->stored;
            t->state = S_SPARSE_MAP;
            return 0;
        }
        if (t->sparse_major >= 0 && !(t->sparse_major == 0 && t->sparse_minor <= 1))
            return fail(t, LS_E_UNSUPPORTED, "unsupported GNU sparse format %d.%d at offset "
                        "%llu", t->sparse_major, t->sparse_minor,
                        (unsigned long long)t->entry_offset);
    }
    return begin_content(t);
}

/* ---- Blocks ------------------------------------------------------------------------------- */

static int check_checksum(ls_tar *t, const uint8_t *b)
{
    int64_t want;
    if (parse_number((const char *)b + 148, 8, &want))
        return fail(t, LS_E_CORRUPT, "bad checksum field in the header at offset %llu",
                    (unsigned long long)t->block_offset);
    int64_t usum = 8 * ' ', ssum = 8 * ' ';
    for (int i = 0; i < 512; i++) {
        if (i >= 148 && i < 156)
            continue;
        usum += b[i];
        ssum += (int8_t)b[i];       /* some old writers summed signed chars */
    }
    if (want != usum && want != ssum)
        return fail(t, LS_E_CORRUPT, "bad header checksum at offset %llu",
                    (unsigned long long)t->block_offset);
    return 0;
}

static int on_header(ls_tar *t, const uint8_t *b)
{
    const struct tar_header *h = (const struct tar_header *)b;
    if (is_zero(b, 512)) {
        if (t->pending)
            return fail(t, LS_E_CORRUPT, "end-of-archive marker at offset %llu right after an "
                        "extended header", (unsigned long long)t->block_offset);
        t->state = S_END;
        return 0;
    }
    int rc = check_checksum(t, b);
    if (rc)
        return rc;
    if (!t->pending)
        t->entry_offset = t->block_offset;
    switch (h->typeflag) {
    case 'x': case 'X': case 'g': case 'L': case 'K': {
        int64_t size;
        if ((rc = numeric_field(t, h->size, 12, "size", INT64_MAX, &size)))
            return rc;
        if ((uint64_t)size > LS_MAX_PAX)
            return fail(t, LS_E_LIMIT, "extended header of %lld bytes at offset %llu (limit "
                        "%u)", (long long)size, (unsigned long long)t->block_offset,
                        LS_MAX_PAX);
        if (h->typeflag == 'g' && (uint64_t)size > LS_MAX_GLOBAL)
            return fail(t, LS_E_LIMIT, "global extended header of %lld bytes at offset %llu "
                        "(limit %u: its records apply to every later entry)", (long long)size,
                        (unsigned long long)t->block_offset, LS_MAX_GLOBAL);
        t->ext_type = h->typeflag == 'X' ? 'x' : h->typeflag;  /* Solaris' name for 'x' */
        t->ext.len = 0;
        if (h->typeflag != 'g')
            t->pending = 1;
        t->remaining = (uint64_t)size;
        t->padding = pad512((uint64_t)size);
        t->state = S_EXTENSION;
        return 0;
    }
    case 'M':
        /* GNU tar refuses to extract it as well: it holds the rest of a file begun on
         * another volume. */
        return fail(t, LS_E_UNSUPPORTED, "unsupported GNU tar entry type 'M' (the rest of a "
                    "file from another volume of a multi-volume archive) at offset %llu",
                    (unsigned long long)t->block_offset);
    default:
        return start_entry(t, h);
    }
}

/* A GNU long name body is the name and a NUL; the name ends at the first NUL, whatever
 * follows it (GNU tar and Go read it as a C string).  An empty name counts as none, as in Go:
 * the header's own name field applies (GNU tar would extract "." instead). */
static int take_long_name(ls_tar *t, ls_buf *dst, int *have, const char *what)
{
    /* An empty body leaves the buffer unallocated: no pointer to scan (the fuzzer's find). */
    const uint8_t *data = t->ext.len ? t->ext.data : (const uint8_t *)"";
    size_t n = field_len((const char *)data, t->ext.len);
    *have = n > 0;
    if (n > LS_MAX_PATH)
        return fail(t, LS_E_LIMIT, "GNU long %s of %zu bytes at offset %llu (limit %u)", what,
                    n, (unsigned long long)t->entry_offset, LS_MAX_PATH);
    dst->len = 0;
    if (ls_buf_append(dst, data, n))
        return fail(t, LS_E_NOMEM, "out of memory");
    return 0;
}

static int on_extension_done(ls_tar *t)
{
    int rc = 0;
    switch (t->ext_type) {
    case 'L':
        rc = take_long_name(t, &t->longname, &t->have_longname, "name");
        break;
    case 'K':
        rc = take_long_name(t, &t->longlink, &t->have_longlink, "link name");
        break;
    case 'x': case 'g': {
        /* A later header replaces an earlier one of its kind whole, records it lacks
         * included: GNU tar and Go keep only the last 'x' before an entry, and GNU tar the
         * last 'g' (Go applies no 'g' at all). */
        if ((rc = pax_walk(t, t->ext.data, t->ext.len, NULL)))
            return rc;
        ls_buf *dst = t->ext_type == 'x' ? &t->pax : &t->global;
        ls_buf old = *dst;
        *dst = t->ext;
        t->ext = old;
        break;
    }
    }
    if (rc)
        return rc;
    t->state = t->padding ? S_PADDING : S_HEADER;
    t->remaining = t->padding;
    return 0;
}

static int on_gnu_sparse_block(ls_tar *t, const uint8_t *b)
{
    const struct gnu_sparse_block *s = (const struct gnu_sparse_block *)b;
    int rc = gnu_sparse_entries(t, (const char (*)[24])s->sparse, 21);
    if (rc)
        return rc;
    if (s->isextended)
        return 0;   /* another block follows */
    return begin_content(t);
}

/* Consumes PAX 1.0 map text: decimal numbers, one per line, the count first; the map then
 * runs to the next block boundary of the content area. */
static int sparse_map_bytes(ls_tar *t, const uint8_t *p, size_t n, size_t *used)
{
    size_t i = 0;
    uint64_t total = 1 + 2 * t->map_count;
    while (i < n && t->map_numbers < total) {
        uint8_t c = p[i++];
        if (c == '\n') {
            if (t->map_digits == 0)
                goto bad;
            if (t->map_numbers == 0) {
                if (t->map_number > LS_MAX_SPARSE)
                    return fail(t, LS_E_LIMIT, "sparse map of the entry at offset %llu has "
                                "more than %u segments",
                                (unsigned long long)t->entry_offset, LS_MAX_SPARSE);
                t->map_count = t->map_number;
                total = 1 + 2 * t->map_count;
            } else if (t->map_numbers % 2 == 1) {
                t->sparse_00_offset = t->map_number;
            } else {
                int rc = add_segment(t, t->sparse_00_offset, t->map_number);
                if (rc)
                    return rc;
            }
            t->map_numbers++;
            t->map_number = 0;
            t->map_digits = 0;
        } else if (c >= '0' && c <= '9' && t->map_number <= (INT64_MAX - 9) / 10) {
            t->map_number = t->map_number * 10 + (c - '0');     /* leading zeros are fine */
            t->map_digits = 1;
        } else {
            goto bad;
        }
    }
    *used = i;
    return 0;
bad:
    return fail(t, LS_E_CORRUPT, "bad PAX 1.0 sparse map in the entry at offset %llu",
                (unsigned long long)t->entry_offset);
}

/* ---- Content ------------------------------------------------------------------------------ */

static int deliver(ls_tar *t, const uint8_t *p, size_t n)
{
    int rc = t->ops->data(t->ctx, p, n);
    if (rc) {
        t->state = S_FAILED;
        t->code = rc;
    }
    return rc;
}

/* Consumes up to n content bytes; returns how many, or sets the failed state. */
static size_t content(ls_tar *t, const uint8_t *p, size_t n)
{
    size_t used = 0;
    if (!t->e.sparse) {
        used = n < t->remaining ? n : (size_t)t->remaining;
        if (deliver(t, p, used))
            return 0;
    } else {
        while (used < n && t->seg < t->map_len) {
            const struct segment *s = &t->map[t->seg];
            if (t->seg_done == 0 && deliver_zeros(t, s->offset - t->logical))
                return 0;
            uint64_t left = s->len - t->seg_done;
            size_t k = (n - used) < left ? n - used : (size_t)left;
            if (k && deliver(t, p + used, k))
                return 0;
            used += k;
            t->seg_done += k;
            t->logical += k;
            if (t->seg_done == s->len) {
                t->seg++;
                t->seg_done = 0;
            }
        }
    }
    t->remaining -= used;
    if (t->remaining == 0 && finish_content(t))
        return 0;
    return used;
}

/* ---- The feed loop ------------------------------------------------------------------------
 *
 * Each state has one step, which takes what it can use from the front of the unread stream,
 * hands raw bytes to the raw callback before acting on them (a header's bytes precede the entry
 * they announce) and says how many it took; consume() alone counts them, so that t->offset is
 * always where the unread stream starts.  Messages about a header name where its block started
 * (block_offset), however the stream was split.
 */

static int raw(ls_tar *t, const uint8_t *p, size_t n)
{
    int rc = t->ops->raw(t->ctx, p, n);
    if (rc) {
        t->state = S_FAILED;
        t->code = rc;
    }
    return rc;
}

/* A 512-byte block - a header, an old GNU sparse block, the block after a lone zero block -
 * that may arrive in pieces: on_block runs once it is whole. */
static int take_block(ls_tar *t, const uint8_t *p, size_t n, size_t *used,
                      int (*on_block)(ls_tar *t, const uint8_t *b))
{
    *used = 512 - t->block_len < n ? 512 - t->block_len : n;
    if (t->block_len == 0)
        t->block_offset = t->offset;
    if (raw(t, p, *used))
        return t->code;
    if (t->block_len == 0 && *used == 512)
        return on_block(t, p);
    memcpy(t->block + t->block_len, p, *used);
    t->block_len += *used;
    if (t->block_len < 512)
        return 0;
    t->block_len = 0;
    return on_block(t, t->block);
}

/* After one zero block: a second one ends the archive. */
static int on_end_block(ls_tar *t, const uint8_t *b)
{
    if (!is_zero(b, 512))
        return fail(t, LS_E_CORRUPT, "a lone zero block at offset %llu is followed by data",
                    (unsigned long long)(t->block_offset - 512));
    t->state = S_TRAILER;
    return 0;
}

/* An area of known length that is not content - an extended header's body (kept in keep),
 * data to skip, padding - and what follows its end. */
static int take_area(ls_tar *t, const uint8_t *p, size_t n, size_t *used, ls_buf *keep,
                     int (*on_end)(ls_tar *t))
{
    *used = n < t->remaining ? n : (size_t)t->remaining;
    if (raw(t, p, *used))
        return t->code;
    if (keep && ls_buf_append(keep, p, *used))
        return fail(t, LS_E_NOMEM, "out of memory");
    t->remaining -= *used;
    return t->remaining == 0 ? on_end(t) : 0;
}

static int on_skipped(ls_tar *t)
{
    next_area(t);
    return 0;
}

static int on_padded(ls_tar *t)
{
    t->state = S_HEADER;
    return 0;
}

/* The PAX 1.0 sparse map at the start of the content area: decimal text, then padding to the
 * next block boundary, all raw; the content follows. */
static int take_sparse_map(ls_tar *t, const uint8_t *p, size_t n, size_t *used)
{
    size_t avail = n < t->remaining ? n : (size_t)t->remaining;
    int rc;
    *used = 0;
    if (t->map_numbers == 1 + 2 * t->map_count)     /* it runs on to a block boundary */
        *used = avail < pad512(t->map_bytes) ? avail : (size_t)pad512(t->map_bytes);
    else if ((rc = sparse_map_bytes(t, p, avail, used)))
        return rc;
    if (raw(t, p, *used))
        return t->code;
    t->map_bytes += *used;
    t->remaining -= *used;
    if (t->map_numbers == 1 + 2 * t->map_count && t->map_bytes % 512 == 0) {
        t->stored = t->remaining;
        return begin_content(t);
    }
    if (t->remaining == 0)
        return fail(t, LS_E_CORRUPT, "PAX 1.0 sparse map of the entry at offset %llu runs "
                    "past its content", (unsigned long long)t->entry_offset);
    return 0;
}

/* What follows the end-of-archive marker, up to a bound. */
static int take_trailer(ls_tar *t, const uint8_t *p, size_t n, size_t *used)
{
    *used = n;
    if (raw(t, p, n))
        return t->code;
    t->trailer += n;
    if (t->trailer > LS_MAX_TRAILER)
        return fail(t, LS_E_LIMIT, "more than %u bytes follow the end-of-archive marker",
                    LS_MAX_TRAILER);
    return 0;
}

static int step(ls_tar *t, const uint8_t *p, size_t n, size_t *used)
{
    switch (t->state) {
    case S_CONTENT:
        *used = content(t, p, n);
        return t->state == S_FAILED ? t->code : 0;
    case S_HEADER:     return take_block(t, p, n, used, on_header);
    case S_GNU_SPARSE: return take_block(t, p, n, used, on_gnu_sparse_block);
    case S_END:        return take_block(t, p, n, used, on_end_block);
    case S_EXTENSION:  return take_area(t, p, n, used, &t->ext, on_extension_done);
    case S_SKIP:       return take_area(t, p, n, used, NULL, on_skipped);
    case S_PADDING:    return take_area(t, p, n, used, NULL, on_padded);
    case S_SPARSE_MAP: return take_sparse_map(t, p, n, used);
    case S_TRAILER:    return take_trailer(t, p, n, used);
    default:           return t->code;  /* S_FAILED */
    }
}

/* Counts the bytes a step took: the one place that does, as libarchive's
 * __archive_read_consume is. */
static void consume(ls_tar *t, const uint8_t **p, size_t *n, size_t used)
{
    t->offset += used;
    *p += used;
    *n -= used;
}

int ls_tar_feed(ls_tar *t, const uint8_t *p, size_t n)
{
    while (n > 0 && t->state != S_FAILED) {
        size_t used = 0;
        int rc = step(t, p, n, &used);
        consume(t, &p, &n, used);
        if (rc)
            return rc;
    }
    return t->state == S_FAILED ? t->code : 0;
}

int ls_tar_finish(ls_tar *t)
{
    switch (t->state) {
    case S_FAILED:
        return t->code;
    case S_HEADER:
        if (t->block_len)
            return fail(t, LS_E_TRUNCATED, "truncated tar archive: the stream ends inside a "
                        "header at offset %llu", (unsigned long long)t->block_offset);
        if (t->pending)
            return fail(t, LS_E_TRUNCATED, "truncated tar archive: the stream ends after an "
                        "extended header, before its entry");
        return 0;
    case S_PADDING:     /* only padding or end blocks missing: the last entry is whole */
        if (t->pending)
            return fail(t, LS_E_TRUNCATED, "truncated tar archive: the stream ends after an "
                        "extended header, before its entry");
        return 0;
    case S_TRAILER:
        return 0;
    case S_END:
        if (!is_zero(t->block, t->block_len))
            return fail(t, LS_E_CORRUPT, "data after a lone zero block at the end of the "
                        "archive");
        return 0;
    case S_CONTENT: case S_SKIP:
        return fail(t, LS_E_TRUNCATED, "truncated tar archive: the stream ends inside the "
                    "%s of an entry (%llu bytes missing) at offset %llu",
                    t->state == S_CONTENT ? "content" : "data", (unsigned long long)t->remaining,
                    (unsigned long long)t->offset);
    default:
        return fail(t, LS_E_TRUNCATED, "truncated tar archive: the stream ends inside an "
                    "extended header or sparse map at offset %llu",
                    (unsigned long long)t->offset);
    }
}

uint64_t ls_tar_offset(const ls_tar *t)
{
    return t->offset;
}

ls_tar *ls_tar_new(const ls_tar_ops *ops, void *ctx, ls_err *err)
{
    ls_tar *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->ops = ops;
    t->ctx = ctx;
    t->err = err;
    t->state = S_HEADER;
    return t;
}

void ls_tar_free(ls_tar *t)
{
    if (!t)
        return;
    ls_buf_free(&t->ext);
    ls_buf_free(&t->longname);
    ls_buf_free(&t->longlink);
    ls_buf_free(&t->pax);
    ls_buf_free(&t->global);
    ls_buf_free(&t->path);
    ls_buf_free(&t->link);
    ls_buf_free(&t->uname);
    ls_buf_free(&t->gname);
    ls_buf_free(&t->xattrs);
    free(t->xrefs);
    free(t->map);
    free(t);
}
