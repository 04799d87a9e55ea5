/*
 * ingest.c - ingest one layer: parse the tar, store each file's content as an object, and
 * produce the entry records and raw tar metadata described in layerstore.h.
 *
 * The pipeline per feed: the sha256 of the whole stream (the diffID) runs on a helper thread
 * over the same buffer while this thread parses, hashes file content with BLAKE3 and writes
 * objects; the call returns when both are done, so the caller's buffer is free again.
 *
 * Content of up to LS_SMALL_MAX bytes is held in memory (or read straight from the caller's
 * buffer when it arrives in one piece) until its identity is known, so an object that is
 * already stored costs one fstatat and no write.  Larger content streams into a temporary file
 * that is linked into place or dropped at the end.  Memory stays bounded by LS_SMALL_MAX plus
 * the tar reader's limits, whatever the layer holds.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ls_internal.h"

#define LS_SMALL_MAX (8u << 20)
#define LS_SHA_THREAD_MIN (64u << 10)   /* smaller layers are hashed inline */
#define LS_OBJECT_READ (1u << 20)
#define LS_SHA_SLOTS 4
#define LS_SHA_SLOT_BYTES (1u << 20)

struct ls_ingest {
    ls_store *store;        /* NULL: parse and hash only */
    ls_tar *tar;
    ls_err err;
    int code;               /* the error that stopped the ingest, or 0 */
    int finished;
    ls_ingest_stats stats;

    ls_buf records, raw;
    int taken;              /* the buffers were handed out; empty them on the next call */
    uint64_t raw_pending;   /* raw bytes since the previous entry's content */

    /* The entry being read. */
    ls_buf cur;             /* its record, completed at the entry's end */
    int type;
    uint64_t size, got;
    ls_obj_meta meta;
    ls_blake3 *hasher;
    ls_buf held;            /* content kept in memory */
    const uint8_t *direct;  /* or content that arrived whole in the caller's buffer */
    ls_spill spill;         /* or content streamed to tmp/ */
    int spilling;

    /* The sha256 thread and its queue of copied pieces (see sha_main). */
    ls_sha256 *sha;
    pthread_t thread;
    int thread_state;       /* 0 not started, 1 running, -1 could not start */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct sha_slot {
        uint8_t *data;
        size_t len;
    } slots[LS_SHA_SLOTS];
    int head, queued, stop;
    int fill;               /* the slot being filled, after the queued ones */
    size_t fill_len;        /* its bytes so far (0: none is being filled) */

    uint8_t *objbuf;        /* stored objects' content read for a recipe */
};

/* ---- The sha256 thread -------------------------------------------------------------------- */

/*
 * The diffID's sha256 is the longest serial job of an ingest (SHA-NI: about 1.5 GB/s, against
 * BLAKE3's 3 GB/s), so it runs on its own thread.  Feeds are copied into a few slots that the
 * thread drains in order: the ingest thread never waits for the hash of the piece it has just
 * parsed, only when all slots are full, so the two threads overlap across pieces instead of
 * meeting at the end of each.  The copy costs far less than the waiting did.  Small feeds (a
 * rebuilt layer's headers and files) share a slot, so the thread wakes once per slot.
 */

static void *sha_main(void *arg)
{
    ls_ingest *g = arg;
    pthread_mutex_lock(&g->mu);
    for (;;) {
        while (g->queued == 0 && !g->stop)
            pthread_cond_wait(&g->cv, &g->mu);
        if (g->queued == 0)     /* stopping, and nothing left */
            break;
        struct sha_slot *slot = &g->slots[g->head];
        pthread_mutex_unlock(&g->mu);
        ls_sha256_update(g->sha, slot->data, slot->len);
        pthread_mutex_lock(&g->mu);
        g->head = (g->head + 1) % LS_SHA_SLOTS;
        g->queued--;
        pthread_cond_broadcast(&g->cv);
    }
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

/* Whether the thread takes this feed: it starts once the layer passes LS_SHA_THREAD_MIN
 * (small layers are hashed inline), and once started it takes everything, in order. */
static int sha_threaded(ls_ingest *g, size_t len)
{
    if (g->thread_state != 0)
        return g->thread_state > 0;
    if (g->stats.stream_bytes + len < LS_SHA_THREAD_MIN)
        return 0;
    for (int i = 0; i < LS_SHA_SLOTS; i++)
        if (!(g->slots[i].data = malloc(LS_SHA_SLOT_BYTES)))
            return (g->thread_state = -1), 0;
    if (pthread_create(&g->thread, NULL, sha_main, g))
        return (g->thread_state = -1), 0;
    g->thread_state = 1;
    return 1;
}

/* Hands the slot being filled to the thread. */
static void sha_flush(ls_ingest *g)
{
    if (g->fill_len == 0)
        return;
    g->slots[g->fill].len = g->fill_len;
    g->fill_len = 0;
    pthread_mutex_lock(&g->mu);
    g->queued++;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

/* Copies a piece of at most LS_SHA_SLOT_BYTES into the slot being filled (waiting for a free
 * one first), and hands each slot over once full. */
static void sha_queue(ls_ingest *g, const uint8_t *p, size_t n)
{
    while (n > 0) {
        if (g->fill_len == 0) {
            pthread_mutex_lock(&g->mu);
            while (g->queued == LS_SHA_SLOTS)
                pthread_cond_wait(&g->cv, &g->mu);
            /* Not queued, so the thread does not touch it; head + queued stays put as the
             * thread moves on. */
            g->fill = (g->head + g->queued) % LS_SHA_SLOTS;
            pthread_mutex_unlock(&g->mu);
        }
        size_t k = LS_SHA_SLOT_BYTES - g->fill_len;
        if (k > n)
            k = n;
        memcpy(g->slots[g->fill].data + g->fill_len, p, k);
        g->fill_len += k;
        p += k;
        n -= k;
        if (g->fill_len == LS_SHA_SLOT_BYTES)
            sha_flush(g);
    }
}

static void sha_drain(ls_ingest *g)
{
    sha_flush(g);
    pthread_mutex_lock(&g->mu);
    while (g->queued > 0)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

/* ---- Paths -------------------------------------------------------------------------------- */

/* Cleans a path from the archive as Go's filepath.Clean does, relative to the image root:
 * a leading "/" is dropped, empty and "." components vanish and ".." removes the previous
 * component.  A ".." with nothing left to remove leaves the root: LS_E_UNSAFE_PATH.  The root
 * itself is ".". */
static int clean_path(ls_ingest *g, const char *p, size_t n, const char *what, ls_buf *out)
{
    size_t start = out->len;
    if (ls_buf_reserve(out, n + 1))
        return ls_fail(&g->err, LS_E_NOMEM, "out of memory");
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && p[j] != '/')
            j++;
        size_t len = j - i;
        if (len == 2 && p[i] == '.' && p[i + 1] == '.') {
            if (out->len == start)
                return ls_fail(&g->err, LS_E_UNSAFE_PATH, "%s '%.*s' leaves the root", what,
                               (int)(n > 200 ? 200 : n), p);
            while (out->len > start && out->data[out->len - 1] != '/')
                out->len--;
            if (out->len > start)
                out->len--;     /* the separator before the removed component */
        } else if (len > 0 && !(len == 1 && p[i] == '.')) {
            if (out->len > start)
                out->data[out->len++] = '/';
            memcpy(out->data + out->len, p + i, len);
            out->len += len;
        }
        i = j + 1;
    }
    if (out->len == start)
        out->data[out->len++] = '.';
    return 0;
}

/* No Linux filesystem holds a name of more than NAME_MAX bytes, so an image with one could be
 * stored but never checked out: refused here, as a valid tar the store cannot represent.  A
 * whiteout ".wh.NAME" is never made itself, only NAME counts (the layer deletes NAME below). */
static int check_names(ls_ingest *g, const uint8_t *p, size_t n, int whiteout, const char *what)
{
    if (n <= NAME_MAX)
        return 0;
    for (size_t i = 0; i < n;) {
        const uint8_t *slash = memchr(p + i, '/', n - i);
        size_t j = slash ? (size_t)(slash - p) : n;
        size_t len = j - i;
        if (len > NAME_MAX && !(whiteout && j == n && len - 4 <= NAME_MAX &&
                                memcmp(p + i, ".wh.", 4) == 0))
            return ls_fail(&g->err, LS_E_UNSUPPORTED, "%s '%.*s%s' has a name of %zu bytes: "
                           "Linux allows at most %d (NAME_MAX)", what, (int)(n > 300 ? 300 : n),
                           (const char *)p, n > 300 ? "..." : "", len, NAME_MAX);
        i = j + 1;
    }
    return 0;
}

/* ---- Tar callbacks ------------------------------------------------------------------------ */

static int on_raw(void *ctx, const uint8_t *p, size_t n)
{
    ls_ingest *g = ctx;
    g->raw_pending += n;
    if (ls_buf_append(&g->raw, p, n))
        return ls_fail(&g->err, LS_E_NOMEM, "out of memory");
    return 0;
}

static int on_entry(void *ctx, const ls_tar_entry *e)
{
    ls_ingest *g = ctx;
    ls_buf *r = &g->cur;
    r->len = 0;
    if (ls_buf_reserve(r, LS_RECORD_FIXED))
        return ls_fail(&g->err, LS_E_NOMEM, "out of memory");
    uint8_t *h = r->data;
    memset(h, 0, LS_RECORD_FIXED);
    h[LS_RECORD_OFF_TYPE] = (uint8_t)e->type;
    h[LS_RECORD_OFF_FLAGS] = e->sparse ? LS_RECORD_SPARSE : 0;
    ls_put32(h + LS_RECORD_OFF_MODE, e->mode);
    ls_put32(h + LS_RECORD_OFF_UID, e->uid);
    ls_put32(h + LS_RECORD_OFF_GID, e->gid);
    ls_put32(h + LS_RECORD_OFF_DEVMAJOR, e->devmajor);
    ls_put32(h + LS_RECORD_OFF_DEVMINOR, e->devminor);
    ls_put32(h + LS_RECORD_OFF_MTIME_NSEC, e->mtime_nsec);
    ls_put64(h + LS_RECORD_OFF_MTIME, (uint64_t)e->mtime);
    ls_put64(h + LS_RECORD_OFF_SIZE, e->size);
    ls_put64(h + LS_RECORD_OFF_RAW_LEN, g->raw_pending);
    g->raw_pending = 0;
    r->len = LS_RECORD_FIXED;

    int rc = clean_path(g, e->path, e->path_len, "path", r);
    if (rc)
        return rc;
    size_t path_len = r->len - LS_RECORD_FIXED;
    if ((rc = check_names(g, r->data + LS_RECORD_FIXED, path_len, 1, "path")))
        return rc;
    if (e->type == LS_ENTRY_HARDLINK) {
        rc = clean_path(g, e->link, e->link_len, "hardlink target", r);
        if (rc)
            return rc;
        if ((rc = check_names(g, r->data + LS_RECORD_FIXED + path_len,
                              r->len - LS_RECORD_FIXED - path_len, 0, "hardlink target")))
            return rc;
    } else {
        if (e->type == LS_ENTRY_SYMLINK && e->link_len == 0)
            return ls_fail(&g->err, LS_E_CORRUPT, "symlink '%.*s' has an empty target",
                           (int)(path_len > 200 ? 200 : path_len),
                           (const char *)r->data + LS_RECORD_FIXED);
        if (e->type == LS_ENTRY_SYMLINK && ls_buf_append(r, e->link, e->link_len))
            return ls_fail(&g->err, LS_E_NOMEM, "out of memory");
    }
    size_t link_len = r->len - LS_RECORD_FIXED - path_len;
    if (ls_buf_append(r, e->uname, e->uname_len) || ls_buf_append(r, e->gname, e->gname_len) ||
        ls_buf_append(r, e->xattrs, e->xattrs_len))
        return ls_fail(&g->err, LS_E_NOMEM, "out of memory");
    h = r->data;
    ls_put32(h + LS_RECORD_OFF_PATH_LEN, (uint32_t)path_len);
    ls_put32(h + LS_RECORD_OFF_LINK_LEN, (uint32_t)link_len);
    ls_put32(h + LS_RECORD_OFF_UNAME_LEN, (uint32_t)e->uname_len);
    ls_put32(h + LS_RECORD_OFF_GNAME_LEN, (uint32_t)e->gname_len);
    ls_put32(h + LS_RECORD_OFF_XATTRS_LEN, (uint32_t)e->xattrs_len);

    g->type = e->type;
    g->size = e->size;
    g->got = 0;
    g->direct = NULL;
    g->held.len = 0;
    g->spilling = 0;
    if (e->type != LS_ENTRY_FILE)
        return 0;
    g->meta.mode = e->mode;
    g->meta.uid = e->uid;
    g->meta.gid = e->gid;
    g->meta.xattrs = NULL;              /* points into cur, fixed at the end */
    g->meta.xattrs_len = e->xattrs_len;
    ls_blake3_reset(g->hasher);
    if (g->store && e->size > LS_SMALL_MAX) {
        if ((rc = ls_store_spill_open(g->store, &g->spill, NULL, &g->meta, &g->err)))
            return rc;
        g->spilling = 1;
    }
    return 0;
}

static int on_data(void *ctx, const uint8_t *p, size_t n)
{
    ls_ingest *g = ctx;
    ls_blake3_update(g->hasher, p, n);
    g->got += n;
    if (!g->store)
        return 0;
    if (g->spilling)
        return ls_store_spill_write(&g->spill, p, n, &g->err);
    if (g->got == n && n == g->size) {
        g->direct = p;      /* whole in the caller's buffer, and still valid at the end */
        return 0;
    }
    if (ls_buf_append(&g->held, p, n))
        return ls_fail(&g->err, LS_E_NOMEM, "out of memory");
    return 0;
}

static int store_object(ls_ingest *g, const uint8_t *id, int *skipped)
{
    if (g->spilling) {
        g->spilling = 0;
        return ls_store_spill_commit(g->store, &g->spill, id, &g->meta, g->size, skipped,
                                     &g->err);
    }
    int rc = ls_store_has(g->store, id, g->size, &g->err);
    if (rc)
        return rc < 0 ? rc : 0;
    if ((rc = ls_store_spill_open(g->store, &g->spill, id, &g->meta, &g->err)))
        return rc;
    const uint8_t *content = g->direct ? g->direct : g->held.data;
    if ((rc = ls_store_spill_write(&g->spill, content, g->size, &g->err))) {
        ls_store_spill_abort(g->store, &g->spill);
        return rc;
    }
    return ls_store_spill_commit(g->store, &g->spill, id, &g->meta, g->size, skipped, &g->err);
}

static int on_entry_end(void *ctx)
{
    ls_ingest *g = ctx;
    uint8_t *h = g->cur.data;
    g->stats.entries++;
    if (g->type == LS_ENTRY_FILE) {
        uint8_t *id = h + LS_RECORD_OFF_OBJECT_ID;
        uint8_t *content_hash = h + LS_RECORD_OFF_CONTENT_HASH;
        g->meta.xattrs = g->cur.data + g->cur.len - g->meta.xattrs_len;
        ls_blake3_finalize(g->hasher, content_hash, 32);
        ls_object_make_id(content_hash, g->meta.mode, g->meta.uid, g->meta.gid,
                          g->meta.xattrs, g->meta.xattrs_len, id);
        g->stats.files++;
        g->stats.file_bytes += g->size;
        if (g->store && g->size > 0) {      /* empty files are never shared: no object */
            int skipped = 0;
            int rc = store_object(g, id, &skipped);
            if (rc < 0)
                return rc;
            if (rc == 1) {
                h[LS_RECORD_OFF_FLAGS] |= LS_RECORD_NEW_OBJECT;
                g->stats.new_objects++;
                g->stats.new_bytes += g->size;
            }
            if (skipped)
                h[LS_RECORD_OFF_FLAGS] |= LS_RECORD_XATTRS_SKIPPED;
        }
    }
    ls_put32(h + LS_RECORD_OFF_LEN, (uint32_t)g->cur.len);
    if (ls_buf_append(&g->records, g->cur.data, g->cur.len))
        return ls_fail(&g->err, LS_E_NOMEM, "out of memory");
    return 0;
}

static const ls_tar_ops ingest_ops = {on_raw, on_entry, on_data, on_entry_end};

/* ---- Public API --------------------------------------------------------------------------- */

ls_ingest *ls_ingest_new(ls_store *store)
{
    ls_ingest *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    g->store = store;
    g->spill.fd = -1;
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->tar = ls_tar_new(&ingest_ops, g, &g->err);
    g->hasher = ls_blake3_new();
    g->sha = ls_sha256_new();
    if (!g->tar || !g->hasher || !g->sha) {
        ls_ingest_free(g);
        return NULL;
    }
    return g;
}

static void drop_taken(ls_ingest *g)
{
    if (g->taken) {
        g->records.len = 0;
        g->raw.len = 0;
        g->taken = 0;
    }
}

int ls_ingest_feed(ls_ingest *g, const uint8_t *buf, size_t len)
{
    drop_taken(g);
    if (g->code)
        return g->code;
    if (g->finished)
        return ls_fail(&g->err, LS_E_STATE, "feed after finish");
    int rc = 0;
    if (sha_threaded(g, len)) {
        /* Piece by piece, so the thread starts hashing while this one parses. */
        for (size_t off = 0; off < len && !rc; off += LS_SHA_SLOT_BYTES) {
            size_t n = len - off < LS_SHA_SLOT_BYTES ? len - off : LS_SHA_SLOT_BYTES;
            sha_queue(g, buf + off, n);
            rc = ls_tar_feed(g->tar, buf + off, n);
        }
    } else {
        ls_sha256_update(g->sha, buf, len);
        rc = ls_tar_feed(g->tar, buf, len);
    }
    g->stats.stream_bytes += len;
    if (rc)
        g->code = rc;
    return rc;
}

/* The stored object's content as the stream's next size bytes. */
static int feed_object(ls_ingest *g, const uint8_t *id, uint64_t size)
{
    if (!g->objbuf && !(g->objbuf = malloc(LS_OBJECT_READ)))
        return ls_fail(&g->err, LS_E_NOMEM, "out of memory");
    int fd = ls_store_open_object(g->store, id, &g->err);
    if (fd < 0)
        return fd;
    char path[66];
    ls_object_make_path(id, path);
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st))
        rc = ls_fail(&g->err, -errno, "cannot stat object %s: %s", path, strerror(errno));
    else if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != size)
        rc = ls_fail(&g->err, LS_E_CORRUPT, "object %s is not the %llu bytes the index says "
                     "(layerstore fsck reports the damage)", path, (unsigned long long)size);
    while (!rc && size > 0) {
        ssize_t n = read(fd, g->objbuf, size < LS_OBJECT_READ ? (size_t)size : LS_OBJECT_READ);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            rc = ls_fail(&g->err, -errno, "cannot read object %s: %s", path, strerror(errno));
        else if (n == 0)
            rc = ls_fail(&g->err, LS_E_CORRUPT, "object %s shrank while read", path);
        else {
            rc = ls_ingest_feed(g, g->objbuf, (size_t)n);
            size -= (uint64_t)n;
        }
    }
    close(fd);
    return rc;
}

int ls_ingest_feed_recipe(ls_ingest *g, const uint8_t *recipe, size_t len)
{
    drop_taken(g);
    if (g->code)
        return g->code;
    if (!g->store)
        return ls_fail(&g->err, LS_E_STATE, "a recipe names stored objects: it needs a store");
    int rc = 0;
    size_t at = 0;
    while (!rc && at < len) {
        uint64_t n = len - at >= 9 ? ls_get64(recipe + at + 1) : 0;
        uint8_t kind = len - at >= 9 ? recipe[at] : 0;
        at += 9;
        if (kind == 'D' && n <= len - at) {
            rc = ls_ingest_feed(g, recipe + at, (size_t)n);
            at += (size_t)n;
        } else if (kind == 'O' && len - at >= 32) {
            rc = feed_object(g, recipe + at, n);
            at += 32;
        } else {
            rc = ls_fail(&g->err, LS_E_STATE, "malformed recipe at byte %zu", at - 9);
        }
    }
    if (rc)
        g->code = rc;
    return rc;
}

void ls_ingest_take(ls_ingest *g, const uint8_t **records, size_t *records_len,
                    const uint8_t **raw, size_t *raw_len)
{
    drop_taken(g);
    *records = g->records.data;
    *records_len = g->records.len;
    *raw = g->raw.data;
    *raw_len = g->raw.len;
    g->taken = 1;
}

int ls_ingest_finish(ls_ingest *g, ls_ingest_stats *stats)
{
    drop_taken(g);
    if (g->code)
        return g->code;
    if (g->finished)
        return ls_fail(&g->err, LS_E_STATE, "finish called twice");
    int rc = ls_tar_finish(g->tar);
    if (rc)
        return g->code = rc;
    g->finished = 1;
    if (g->thread_state > 0)
        sha_drain(g);
    ls_sha256_finalize(g->sha, g->stats.diff_id);
    *stats = g->stats;
    return 0;
}

const char *ls_ingest_get_error(const ls_ingest *g)
{
    return g->err.msg;
}

void ls_ingest_free(ls_ingest *g)
{
    if (!g)
        return;
    if (g->thread_state == 1) {
        pthread_mutex_lock(&g->mu);
        g->stop = 1;
        pthread_cond_broadcast(&g->cv);
        pthread_mutex_unlock(&g->mu);
        pthread_join(g->thread, NULL);
    }
    for (int i = 0; i < LS_SHA_SLOTS; i++)
        free(g->slots[i].data);
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->cv);
    if (g->spilling && g->store)
        ls_store_spill_abort(g->store, &g->spill);
    ls_tar_free(g->tar);
    ls_blake3_free(g->hasher);
    ls_sha256_free(g->sha);
    ls_buf_free(&g->records);
    ls_buf_free(&g->raw);
    ls_buf_free(&g->cur);
    ls_buf_free(&g->held);
    free(g->objbuf);
    free(g);
}
