/*
 * ls_internal.h - private declarations shared by the core's .c files (not given to cffi).
 */
#ifndef LS_INTERNAL_H
#define LS_INTERNAL_H

#include <stdarg.h>
#include <stdint.h>
#include <stddef.h>

#include "layerstore.h"

#define LS_HIDDEN __attribute__((visibility("hidden")))
#define LS_PRINTF(f, a) __attribute__((format(printf, f, a)))

/* Limits that keep memory bounded on hostile input.  Real layers stay far below them. */
#define LS_MAX_PATH      32768u          /* a path or link target, in bytes */
#define LS_MAX_PAX       (1u << 20)      /* one extended header ('x', 'X', 'L', 'K') */
#define LS_MAX_GLOBAL    4096u           /* one global header ('g'): its records are copied
                                            into every later entry's record, so a small
                                            archive could otherwise multiply its size */
#define LS_MAX_SPARSE    (1u << 18)      /* segments in one sparse map */
/* Bytes of holes the sparse files of one layer may hold.  GNU tar and Go make a hole by
 * seeking, but every byte of a file is hashed here, so without a bound a 2 KB archive could
 * declare an 80 TB file and keep an import hashing zeros for hours.  At ~5 GB/s this is under
 * 15 s; no tool that builds layers (Docker, BuildKit, buildah) writes sparse entries at all.
 * The fuzz build lowers it to stay within libFuzzer's timeout. */
#ifndef LS_MAX_HOLES
#define LS_MAX_HOLES     (64ull << 30)
#endif
#define LS_MAX_TRAILER   (1u << 20)      /* bytes after the end-of-archive marker */

/* ---- Error messages -------------------------------------------------------------------- */

typedef struct ls_err {
    char msg[512];
} ls_err;

/* Formats msg into e and returns code, so call sites read `return ls_fail(e, code, ...)`. */
LS_HIDDEN int ls_fail(ls_err *e, int code, const char *fmt, ...) LS_PRINTF(3, 4);

/* ---- Entry records (layout in layerstore.h), read back by checkout and export ---------- */

typedef struct ls_record {
    int type, flags;
    uint32_t mode, uid, gid, devmajor, devminor, mtime_nsec;
    int64_t mtime;
    uint64_t size;
    uint64_t raw_before;        /* raw bytes that precede this entry's content */
    const uint8_t *object_id, *content_hash;
    const char *path, *link;
    uint32_t path_len, link_len;
    const uint8_t *xattrs;
    uint32_t xattrs_len;
} ls_record;

/* Reads the record at p (left bytes remain), checking every length against the record and
 * the paths for NULs; *used is its length.  what names the batch in error messages. */
LS_HIDDEN int ls_record_parse(const uint8_t *p, size_t left, ls_record *r, size_t *used,
                              const char *what, ls_err *e);

/* ---- A growable byte buffer -------------------------------------------------------------- */

typedef struct ls_buf {
    uint8_t *data;
    size_t len, cap;
} ls_buf;

LS_HIDDEN int ls_buf_reserve(ls_buf *b, size_t extra);
LS_HIDDEN int ls_buf_append(ls_buf *b, const void *p, size_t n);
LS_HIDDEN void ls_buf_free(ls_buf *b);

/* Whether fsetxattr's failure err on fd means that this file cannot hold the xattr, which is
 * then skipped (recorded or counted), rather than a failing disk, which is an error.  Which
 * xattrs are applied at all is ls_xattr_applies (layerstore.h). */
LS_HIDDEN int ls_xattr_refused(int fd, int err);

/* The process umask, read from /proc without changing it (07777 when unknown). */
LS_HIDDEN uint32_t ls_umask(void);

static inline void ls_put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline void ls_put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint32_t ls_get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t ls_get64(const uint8_t *p)
{
    return (uint64_t)ls_get32(p) | (uint64_t)ls_get32(p + 4) << 32;
}

/* ---- Progress (layerstore.h): a NULL ls_progress counts nothing and is never cancelled --- */

static inline void ls_progress_add(ls_progress *p, uint64_t bytes, uint64_t items)
{
    if (p) {
        __atomic_fetch_add(&p->bytes, bytes, __ATOMIC_RELAXED);
        __atomic_fetch_add(&p->items, items, __ATOMIC_RELAXED);
    }
}

static inline int ls_progress_cancelled(const ls_progress *p)
{
    return p && __atomic_load_n(&p->cancel, __ATOMIC_RELAXED);
}

/* ---- Streaming tar reader (tar.c) ---------------------------------------------------------
 *
 * A push parser: ls_tar_feed takes the stream in pieces of any size and calls back, in order,
 *   raw(p, n)     for every byte that is not file content: headers, extended headers, sparse
 *                 maps, padding, end-of-archive blocks and what follows them;
 *   entry(e)      when an entry's metadata is complete, right before its content;
 *   data(p, n)    the entry's logical content (sparse holes delivered as zeros), in pieces;
 *   entry_end()   after the last piece of content.
 * Pointers passed to callbacks are valid only during the call.  A callback returning nonzero
 * stops the reader with that code (the callback writes the message into the shared ls_err).
 */

typedef struct ls_tar_entry {
    int type;                    /* LS_ENTRY_* */
    int sparse;                  /* content was stored sparse */
    uint32_t mode;               /* permission bits, 07777 */
    uint32_t uid, gid;
    uint32_t devmajor, devminor;
    int64_t mtime;
    uint32_t mtime_nsec;
    uint64_t size;               /* logical content length (regular files), else 0 */
    const char *path;            /* as in the archive, not cleaned; not NUL-terminated */
    size_t path_len;
    const char *link;            /* symlink or hardlink target */
    size_t link_len;
    const char *uname, *gname;
    size_t uname_len, gname_len;
    const uint8_t *xattrs;       /* encoded as in layerstore.h, sorted by name */
    size_t xattrs_len;
    uint64_t offset;             /* stream offset of the entry's first header */
} ls_tar_entry;

typedef struct ls_tar_ops {
    int (*raw)(void *ctx, const uint8_t *p, size_t n);
    int (*entry)(void *ctx, const ls_tar_entry *e);
    int (*data)(void *ctx, const uint8_t *p, size_t n);
    int (*entry_end)(void *ctx);
} ls_tar_ops;

typedef struct ls_tar ls_tar;

/* err is owned by the caller and receives every message. */
LS_HIDDEN ls_tar *ls_tar_new(const ls_tar_ops *ops, void *ctx, ls_err *err);
LS_HIDDEN int ls_tar_feed(ls_tar *t, const uint8_t *p, size_t n);
/* Declares the end of the stream: an error if it ended inside a header or inside content. */
LS_HIDDEN int ls_tar_finish(ls_tar *t);
LS_HIDDEN uint64_t ls_tar_offset(const ls_tar *t);
LS_HIDDEN void ls_tar_free(ls_tar *t);

/* ---- Object store internals (objstore.c), used by ingest.c -------------------------------- */

typedef struct ls_obj_meta {
    uint32_t mode, uid, gid;
    const uint8_t *xattrs;      /* encoded as in layerstore.h */
    size_t xattrs_len;
} ls_obj_meta;

/* An object being written: content goes to an unnamed file in tmp/ (O_TMPFILE), or to a named
 * one where the filesystem lacks O_TMPFILE; its identity is known only at the end. */
typedef struct ls_spill {
    int fd;
    char tmpname[64];           /* empty for O_TMPFILE */
    uint32_t mode;              /* the permission bits it was created with */
    uint64_t pos;               /* bytes of content given so far */
    uint64_t written_end;       /* end of the last bytes written (zero blocks are skipped) */
} ls_spill;

/* The unit of holes in objects: zero blocks of this size, aligned in the file, are not written
 * (objstore.c), and copies keep them (checkout.c). */
#define LS_HOLE_BLOCK 4096u

/* Whether an object with this id is stored with this size (1), absent (0) or an error (<0). */
LS_HIDDEN int ls_store_has(ls_store *s, const uint8_t *id, uint64_t size, ls_err *e);
/* Opens a stored object for reading: its fd, or <0 with e set. */
LS_HIDDEN int ls_store_open_object(ls_store *s, const uint8_t *id, ls_err *e);
/* Opens an unnamed file for an object's content; id, when already known, places it near its
 * final name (else it goes to tmp/); m is the metadata it will have, if known (else NULL). */
LS_HIDDEN int ls_store_spill_open(ls_store *s, ls_spill *sp, const uint8_t *id,
                                  const ls_obj_meta *m, ls_err *e);
LS_HIDDEN int ls_store_spill_write(ls_spill *sp, const uint8_t *p, size_t n, ls_err *e);
/* Gives the spilled file its metadata and links it into place as id.  Returns 1 when it was
 * linked, 0 when an equal object was already stored (the spill is dropped), <0 on error.
 * *xattrs_skipped is set when the filesystem refused some xattrs.  Closes the spill always. */
LS_HIDDEN int ls_store_spill_commit(ls_store *s, ls_spill *sp, const uint8_t *id,
                                    const ls_obj_meta *m, uint64_t size, int *xattrs_skipped,
                                    ls_err *e);
LS_HIDDEN void ls_store_spill_abort(ls_store *s, ls_spill *sp);

#endif
