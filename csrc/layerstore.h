/*
 * layerstore.h - the interface of layerstore's C core, and the only header handed to ffi.cdef.
 *
 * The core sees bytes, paths and file descriptors, never Python objects.  A function that can
 * fail returns 0 or a negative code: -errno for an operating-system error, or one of the LS_E_*
 * codes below, which lie below -4096 so they never collide with an errno.  Handles keep the
 * message of their last error ("bad header checksum at offset 1536").
 *
 * Threads: a handle is never used by two threads at once (the Python wrapper holds a lock per
 * handle); distinct handles are independent.  cffi releases the GIL around every call, which is
 * what lets decompression in Python overlap with ingest in C.
 *
 * build_ffi.py hands this file to ffi.cdef after dropping preprocessor lines, so it holds only
 * prototypes, opaque types, plain structs and enums.
 */
#ifndef LAYERSTORE_H
#define LAYERSTORE_H

#include <stddef.h>
#include <stdint.h>

enum {
    LS_OK = 0,
    LS_E_CORRUPT = -5001,     /* malformed tar: checksum, number field, PAX record, sparse map */
    LS_E_TRUNCATED = -5002,   /* the stream ended inside a header or inside file data */
    LS_E_LIMIT = -5003,       /* a name, extended header or sparse map beyond the core's limits */
    LS_E_UNSAFE_PATH = -5004, /* a path or hardlink target that leaves the root */
    LS_E_UNSUPPORTED = -5005, /* valid tar the store cannot represent (multi-volume, ...) */
    LS_E_NOMEM = -5006,
    LS_E_STATE = -5007,       /* a call out of order: feed after finish, unknown backend, ... */
    LS_E_CANCELLED = -5008    /* another thread set ls_progress.cancel */
};

/* Progress and cancellation of a long call (checkout, layer write, object checks).  The call
 * adds to bytes and items as it works, so that another thread can show how far it got, and
 * stops with LS_E_CANCELLED soon after another thread sets cancel (an interrupted command must
 * not wait for the whole job).  Both sides use relaxed atomic loads and stores.  Calls take a
 * pointer that may be NULL: no reporting, no cancelling. */
typedef struct {
    uint64_t bytes;
    uint64_t items;
    int32_t cancel;
} ls_progress;

/* How the core was built (csrc/build_ffi.py says by which environment variables). */
enum {
    LS_BUILD_SANITIZED = 1,     /* AddressSanitizer + UBSan (LAYERSTORE_SANITIZE=1) */
    LS_BUILD_TEST_HOOKS = 2     /* ls_test_step kills (LAYERSTORE_TEST_HOOKS=1): test builds */
};
/* The package version stamped in at build time; layerstore/_native.py refuses a stale build. */
const char *ls_build_get_version(void);
/* LS_BUILD_* flags, so that tests can insist on the build they need. */
int ls_build_get_flags(void);
/* Crash-test hook (tests/test_crash.py): counts a step (an object linked, an index transaction
 * begun or committed, a file unlinked) and SIGKILLs the process at the Nth step when the
 * environment sets LAYERSTORE_TEST_KILL_AFTER=N at its first call.  Compiled only into test
 * builds (LS_BUILD_TEST_HOOKS); in any other it does nothing, whatever the environment says. */
void ls_test_step(void);

/* ---- BLAKE3 (blake3.c, blake3_portable.c, blake3_sse41.c, blake3_avx2.c) ----------------- */

enum {
    LS_BLAKE3_OUT_LEN = 32,
    LS_BLAKE3_PORTABLE = 0,
    LS_BLAKE3_SSE41 = 1,
    LS_BLAKE3_AVX2 = 2,
    LS_BLAKE3_AVX512 = 3
};

typedef struct ls_blake3 ls_blake3;

/* Incremental hashing.  ls_blake3_new returns NULL only when out of memory. */
ls_blake3 *ls_blake3_new(void);
void ls_blake3_reset(ls_blake3 *h);
void ls_blake3_update(ls_blake3 *h, const uint8_t *data, size_t len);
/* Extendable output: any out_len; the first 32 bytes are the hash.  Does not change h. */
void ls_blake3_finalize(const ls_blake3 *h, uint8_t *out, size_t out_len);
void ls_blake3_free(ls_blake3 *h);
/* One-shot: out receives LS_BLAKE3_OUT_LEN bytes. */
void ls_blake3_hash(const void *data, size_t len, uint8_t *out);

/* The backend is picked once from the CPU; tests and benchmarks may switch it for the whole
 * process (not while another thread hashes).  Returns 0, or LS_E_UNSUPPORTED when this CPU or
 * build lacks it. */
int ls_blake3_get_backend(void);
int ls_blake3_set_backend(int backend);

/* ---- SHA-256 (sha256.c): the diffID of a layer stream ------------------------------------ */

enum { LS_SHA256_PORTABLE = 0, LS_SHA256_SHANI = 1 };

typedef struct ls_sha256 ls_sha256;

ls_sha256 *ls_sha256_new(void);
void ls_sha256_update(ls_sha256 *h, const uint8_t *data, size_t len);
/* Writes 32 bytes; h must be reset or freed afterwards. */
void ls_sha256_finalize(ls_sha256 *h, uint8_t *out);
void ls_sha256_reset(ls_sha256 *h);
void ls_sha256_free(ls_sha256 *h);
int ls_sha256_get_backend(void);
int ls_sha256_set_backend(int backend);

/* ---- Object store (objstore.c) ------------------------------------------------------------ */

/* Flags for ls_store_open. */
enum {
    LS_STORE_OWNERS = 1   /* set each object's uid/gid (needs CAP_CHOWN, i.e. root) */
};

typedef struct ls_store ls_store;

/* Opens the store rooted at the existing directory root, creating objects/00..ff and tmp/ when
 * missing.  On failure returns a negative code and writes a message to err. */
int ls_store_open(const char *root, int flags, ls_store **out, char *err, size_t errlen);
/* Makes every object written through this store so far durable (one syncfs). */
int ls_store_sync(ls_store *s);
void ls_store_close(ls_store *s);

/* An object's identity: the BLAKE3 of its content combined with the metadata a hardlink shares:
 *   BLAKE3("layerstore-object-v1" || content_hash || le32 mode || le32 uid || le32 gid ||
 *          BLAKE3(xattrs))
 * where xattrs is the encoding described under "Records" (sorted by name). */
void ls_object_make_id(const uint8_t *content_hash, uint32_t mode, uint32_t uid,
                       uint32_t gid, const uint8_t *xattrs, size_t xattrs_len, uint8_t *out);
/* Writes the object's path relative to objects/ ("ab/cdef...", 65 chars and a NUL). */
void ls_object_make_path(const uint8_t *id, char *out);
/* Re-creates object id, whose name must be free (fsck --repair removed the damaged file),
 * from object src_id, which holds the same content under other metadata: a reflink where the
 * filesystem has them, else a copy that keeps holes; checked against content_hash on the way
 * (LS_E_CORRUPT if src no longer holds it); given the metadata as ingest gives it, and linked
 * into place.  Not made durable: ls_store_sync does that.  *xattrs_skipped as for ingest. */
int ls_store_restore(ls_store *s, const uint8_t *id, const uint8_t *src_id,
                     const uint8_t *content_hash, uint64_t size, uint32_t mode, uint32_t uid,
                     uint32_t gid, const uint8_t *xattrs, size_t xattrs_len, int *xattrs_skipped,
                     char *err, size_t errlen);
/* Whether an xattr (name of len bytes, not NUL-terminated) is applied to files made from the
 * records - objects, checkouts, directories - when owners (root) is set or not; the others are
 * kept in the records only (util.c says which and why).  fsck compares exactly these. */
int ls_xattr_applies(const char *name, size_t len, int owners);

/* ---- Layer ingest (ingest.c) ---------------------------------------------------------------
 *
 * Fed an uncompressed layer tar in pieces of any size, ingest parses it, stores each regular
 * file's content as an object (when given a store) and produces, in batches:
 *   records: one per entry, in archive order (layout below);
 *   raw:     every byte of the stream that is not file content (headers, extended headers,
 *            padding, end-of-archive blocks), so the exact tar can be re-created from raw and
 *            the objects.
 *
 * Record layout, little-endian, no alignment: LS_RECORD_FIXED bytes holding the fields below at
 * their LS_RECORD_OFF_* offsets, then the variable parts, without separators, in this order:
 *   path (cleaned, relative, "." for the root), link (symlink target as written, or the
 *   cleaned hardlink target), uname, gname, xattrs.
 * xattrs encoding: for each attribute, sorted by name: u32 name_len, u32 value_len, name, value.
 * These offsets are the one description of the layout: the C writer (ingest.c) and reader
 * (record.c) and the Python codec (layerstore/_native.py, which reads them from here) use them.
 */

enum {
    LS_RECORD_OFF_LEN = 0,              /* u32: the whole record, variable parts included */
    LS_RECORD_OFF_TYPE = 4,             /* u8: LS_ENTRY_* */
    LS_RECORD_OFF_FLAGS = 5,            /* u8: LS_RECORD_* flags below */
    LS_RECORD_OFF_RESERVED = 6,         /* u16: zero */
    LS_RECORD_OFF_MODE = 8,             /* u32: the 07777 bits */
    LS_RECORD_OFF_UID = 12,             /* u32 */
    LS_RECORD_OFF_GID = 16,             /* u32 */
    LS_RECORD_OFF_DEVMAJOR = 20,        /* u32 */
    LS_RECORD_OFF_DEVMINOR = 24,        /* u32 */
    LS_RECORD_OFF_MTIME_NSEC = 28,      /* u32 */
    LS_RECORD_OFF_MTIME = 32,           /* i64: seconds */
    LS_RECORD_OFF_SIZE = 40,            /* u64: regular files' logical content length, else 0 */
    LS_RECORD_OFF_RAW_LEN = 48,         /* u64: raw bytes that precede this entry's content
                                           since the previous content */
    LS_RECORD_OFF_OBJECT_ID = 56,       /* u8[32]: regular files; zeros otherwise */
    LS_RECORD_OFF_CONTENT_HASH = 88,    /* u8[32]: BLAKE3 of the content; zeros otherwise */
    LS_RECORD_OFF_PATH_LEN = 120,       /* u32 each: the lengths of the variable parts */
    LS_RECORD_OFF_LINK_LEN = 124,
    LS_RECORD_OFF_UNAME_LEN = 128,
    LS_RECORD_OFF_GNAME_LEN = 132,
    LS_RECORD_OFF_XATTRS_LEN = 136,
    LS_RECORD_FIXED = 140
};

enum {
    LS_ENTRY_FILE = 0,
    LS_ENTRY_HARDLINK = 1,
    LS_ENTRY_SYMLINK = 2,
    LS_ENTRY_CHAR = 3,
    LS_ENTRY_BLOCK = 4,
    LS_ENTRY_DIR = 5,
    LS_ENTRY_FIFO = 6
};

enum {
    LS_RECORD_NEW_OBJECT = 1,     /* this ingest wrote the object (it was not in the store) */
    LS_RECORD_SPARSE = 2,         /* stored sparse in the tar (GNU old, PAX 0.0, 0.1 or 1.0) */
    LS_RECORD_XATTRS_SKIPPED = 4  /* the filesystem refused some xattrs on the object */
};

typedef struct {
    uint64_t stream_bytes;  /* bytes fed: the length of the layer tar */
    uint64_t entries;
    uint64_t files;         /* regular files */
    uint64_t file_bytes;    /* their logical bytes */
    uint64_t new_objects;   /* objects this ingest wrote */
    uint64_t new_bytes;     /* content bytes of those objects */
    uint8_t diff_id[32];    /* sha256 of the stream */
} ls_ingest_stats;

typedef struct ls_ingest ls_ingest;

/* store may be NULL: parse and hash only.  Returns NULL only when out of memory. */
ls_ingest *ls_ingest_new(ls_store *store);
int ls_ingest_feed(ls_ingest *g, const uint8_t *buf, size_t len);
/* Feeds a recipe of the stream: records of 'D', a little-endian u64 n and n bytes of the
 * stream; or 'O', a u64 size and a 32-byte object id: that stored object's content, which must
 * be size bytes (LS_E_CORRUPT otherwise).  A partial pull's rebuilt layer is mostly objects the
 * store holds, so they are read here rather than handed over from Python.  Needs a store. */
int ls_ingest_feed_recipe(ls_ingest *g, const uint8_t *recipe, size_t len);
/* Takes the records and raw bytes produced so far; the pointers stay valid until the next call
 * on g.  Call after each feed so that memory stays bounded. */
void ls_ingest_take(ls_ingest *g, const uint8_t **records, size_t *records_len,
                    const uint8_t **raw, size_t *raw_len);
/* Checks that the stream ended cleanly, completes the diffID and fills stats.  Records and raw
 * bytes produced by finishing must still be taken. */
int ls_ingest_finish(ls_ingest *g, ls_ingest_stats *stats);
const char *ls_ingest_get_error(const ls_ingest *g);
void ls_ingest_free(ls_ingest *g);

/* ---- Checkout (checkout.c) ------------------------------------------------------------------
 *
 * Makes DEST (an existing, empty directory) the tree a plan describes: entry records (layout
 * above) of an image's merged view, parents before children; a HARDLINK record's link is the
 * path of an earlier record, whose inode it shares.  DEST itself takes the plan's "." record
 * (mode, owner, xattrs, mtime).  Regular files are, by default, files of their own that a
 * write cannot carry back into the store: reflinks of their objects where the filesystem has
 * them, else copies.  LS_CHECKOUT_COPY: copies that share no blocks with the store even where
 * it could.  LS_CHECKOUT_LINK: hardlinks to the objects, for read-only use (a write through
 * one changes the store).  The two together are LS_E_STATE.  LS_CHECKOUT_OWNERS (root) sets
 * owners and makes device nodes.  On error DEST holds what was made so far; the caller
 * removes it. */

enum { LS_CHECKOUT_COPY = 1, LS_CHECKOUT_OWNERS = 2, LS_CHECKOUT_LINK = 4 };

typedef struct {
    uint64_t files, dirs, symlinks, specials;
    uint64_t hardlinked;        /* files sharing the object's inode */
    uint64_t reflinked;         /* files of their own sharing the object's blocks (FICLONE) */
    uint64_t copied;            /* files written as independent copies (empty files too) */
    uint64_t skipped_specials;  /* device nodes not made (not root) */
    uint64_t skipped_owners;    /* entries whose owner could not be set (not root) */
    uint64_t skipped_xattrs;
} ls_checkout_stats;

int ls_tree_checkout(const char *objects_dir, const char *dest, const uint8_t *plan,
                     size_t plan_len, int flags, ls_checkout_stats *stats,
                     ls_progress *progress, char *err, size_t errlen);

/* ---- Layer export (export.c) ---------------------------------------------------------------
 *
 * Writes a stored layer's exact tar to out_fd: raw bytes and object content interleaved as the
 * records say, each object checked against its record's BLAKE3 (LS_E_CORRUPT if it changed).
 * LS_E_UNSUPPORTED, before anything is written, when the layer has sparse files.  *written
 * counts the bytes written, also on error. */
int ls_layer_write(const char *objects_dir, const uint8_t *records, size_t records_len,
                   const uint8_t *raw, size_t raw_len, int out_fd, uint64_t *written,
                   ls_progress *progress, char *err, size_t errlen);

/* ---- Object checks for fsck (fsck.c) ------------------------------------------------------
 *
 * Opens every object named by ids (never following a symlink), and fills its stat fields and
 * the BLAKE3 of its bytes: the whole batch on `threads` threads (the caller's among them), so a
 * store of small objects is hashed on every core without a call per file.  err is 0, an errno
 * (ENOENT: missing), or LS_CHECK_NOT_REGULAR.  With LS_CHECK_XATTRS, xattrs counts the
 * object's xattrs that ls_xattr_applies names (owners: LS_CHECK_OWNERS), so that a label the
 * host puts on every file costs fsck nothing; else 0.  With LS_CHECK_SHA256, content_sha256 is
 * the SHA-256 of the same bytes (what zstd:chunked and eStargz TOCs name files by), read once
 * for both hashes; LS_CHECK_NO_BLAKE3 leaves content_hash zero when only that is wanted. */

enum { LS_CHECK_NOT_REGULAR = -1 };
enum { LS_CHECK_XATTRS = 1, LS_CHECK_OWNERS = 2, LS_CHECK_SHA256 = 4, LS_CHECK_NO_BLAKE3 = 8 };

typedef struct {
    uint8_t id[32];             /* in */
    int32_t err;
    uint32_t mode, uid, gid;
    uint32_t xattrs;
    uint64_t size;
    int64_t mtime_ns;
    uint8_t content_hash[32];
    uint8_t content_sha256[32];
} ls_object_check;

int ls_objects_check(const char *objects_dir, ls_object_check *objs, size_t n, int threads,
                     int flags, ls_progress *progress, char *err, size_t errlen);

/* ---- CRC-64 for containers-storage's tar-split (crc64.c) ------------------------------------
 *
 * CRC-64 with Go's crc64.ISO table (reflected 0xD800000000000000, init and xorout all ones):
 * ls_crc64(0, data, len) is Go's crc64.Checksum(data, crc64.MakeTable(crc64.ISO)), and
 * ls_crc64(ls_crc64(0, a, n), b, m) continues it.  ls_objects_crc64 fills crcs[i] with the CRC
 * of the object named by ids[32*i .. 32*i+32), reading the files in order; progress counts
 * their bytes and objects. */
uint64_t ls_crc64(uint64_t crc, const uint8_t *data, size_t len);
int ls_objects_crc64(const char *objects_dir, const uint8_t *ids, size_t n, uint64_t *crcs,
                     ls_progress *progress, char *err, size_t errlen);

/* ---- Overlay mounts (mount.c) ---------------------------------------------------------------
 *
 * mount(2) of an overlay filesystem at target with the given options (lowerdir=..., built and
 * escaped by the caller; at most a page), and umount2(2) of what is mounted at target.  Each
 * returns 0 or -errno, which the caller turns into a message: these need root (CAP_SYS_ADMIN). */
int ls_overlay_mount(const char *target, const char *options);
int ls_overlay_unmount(const char *target);

#endif
