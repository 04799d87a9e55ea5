/*
 * export.c - write a stored layer back as the exact tar it was imported from.
 *
 * Ingest split the layer into raw bytes (everything but file content, kept in the index) and
 * objects; the records say how many raw bytes precede each entry's content.  Interleaving
 * them again gives the original stream.  Each object's content is checked against the BLAKE3
 * the record holds while it is written, so the output is byte-identical to the imported tar
 * (and hashes to its diffID) unless the index itself changed: an object modified through a
 * hardlinked checkout is an error, not a silently different layer.  Checking objects with
 * BLAKE3, in this call, costs a fraction of re-hashing the stream with SHA-256.
 *
 * Sparse entries hold only their data segments in the tar; they are left to the Python
 * writer (LS_E_UNSUPPORTED before anything is written), as they are rare.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ls_internal.h"

#define OUT_BUF (1u << 20)
#define NBUF 4

/*
 * Two threads share the work as evenly as two cores allow: this one opens and reads objects
 * (the system calls per file are most of what an exporter does beyond cat) and raw metadata
 * into output buffers; the other writes each full buffer and then checks the objects in it
 * against their BLAKE3.  Buffers go round in order, and one is refilled only once written and
 * checked.  Checking costs as much as reading and writing together (most objects are small,
 * where BLAKE3 is slowest), so when the writer falls behind, this thread checks an object
 * itself right after reading it (while it is in cache), and leaves it to the writer otherwise.
 * A mismatch or a failed write still fails the call (the caller discards what was written),
 * reported once the thread stopped.
 */
/* A piece of an object's content in an output buffer.  An object larger than what is left
 * of a buffer continues in the next one; the pieces are checked in order. */
typedef struct seg {
    const uint8_t *data;
    size_t len;
    const uint8_t *rec;         /* the record, for the message if it does not match */
    const uint8_t *hash;        /* the BLAKE3 it must have */
    int first, last;
} seg;

/* The objects read into one output buffer, checked together when the buffer is written (one
 * wakeup of the thread per buffer, not per small file). */
typedef struct segs {
    seg *v;
    size_t n, cap;
} segs;

typedef struct wr {
    int fd;
    uint8_t *bufs[NBUF];
    size_t lens[NBUF];
    int cur;                    /* the buffer being filled, with len bytes so far */
    size_t len;
    ls_err *e;

    pthread_t thread;
    int running;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int queue[NBUF];            /* buffers to write and check, in order */
    int head, queued, stop;
    segs segs[NBUF];
    int pending[NBUF];          /* the buffer is queued or being written */
    /* Set by whichever thread writes (the other one, or this one without it). */
    uint64_t written;
    int write_rc;               /* the first failed write, later ones not tried (atomic) */
    ls_err write_err;
    const uint8_t *bad;         /* the record of the first object that did not match */
    const uint8_t *read_bad;    /* the same, among those this thread checked */
    unsigned backlog;           /* buffers handed to the writer and not yet done (atomic) */
    ls_blake3 *hasher;          /* an object in pieces (used by one thread at a time) */
} wr;

static int put(wr *w, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t k = write(w->fd, p, n);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return ls_fail(&w->write_err, -errno, "cannot write the layer: %s",
                           strerror(errno));
        }
        p += k;
        n -= (size_t)k;
        w->written += (uint64_t)k;
    }
    return 0;
}

/* Writes one buffer, then checks its pieces in order; returns the record of an object that
 * did not match, or NULL.  The hasher carries an object across buffers. */
static const uint8_t *write_and_check(wr *w, int buf)
{
    if (!__atomic_load_n(&w->write_rc, __ATOMIC_RELAXED))
        __atomic_store_n(&w->write_rc, put(w, w->bufs[buf], w->lens[buf]), __ATOMIC_RELAXED);
    const uint8_t *bad = NULL;
    const struct segs *sg = &w->segs[buf];
    for (size_t i = 0; i < sg->n; i++) {
        const seg *p = &sg->v[i];
        uint8_t hash[32];
        if (p->first && p->last) {
            ls_blake3_hash(p->data, p->len, hash);      /* most objects: one piece */
        } else {
            if (p->first)
                ls_blake3_reset(w->hasher);
            ls_blake3_update(w->hasher, p->data, p->len);
            if (!p->last)
                continue;
            ls_blake3_finalize(w->hasher, hash, 32);
        }
        if (!bad && memcmp(hash, p->hash, 32))
            bad = p->rec;
    }
    return bad;
}

static void *writer_main(void *arg)
{
    wr *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (w->queued == 0 && !w->stop)
            pthread_cond_wait(&w->cv, &w->mu);
        if (w->queued == 0)
            break;
        int buf = w->queue[w->head];
        pthread_mutex_unlock(&w->mu);
        const uint8_t *bad = write_and_check(w, buf);
        __atomic_sub_fetch(&w->backlog, 1, __ATOMIC_RELAXED);
        pthread_mutex_lock(&w->mu);
        if (bad && !w->bad)
            w->bad = bad;
        w->pending[buf] = 0;
        w->head = (w->head + 1) % NBUF;
        w->queued--;
        pthread_cond_broadcast(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static void writer_stop(wr *w)
{
    if (!w->running)
        return;
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    w->running = 0;
}

/* Hands the current buffer to the writer and moves to the next one once that one is free.
 * Returns the writer's error, if a write failed: reading on would be wasted. */
static int flush(wr *w)
{
    int buf = w->cur, failed;
    w->lens[buf] = w->len;
    w->cur = (buf + 1) % NBUF;
    if (!w->running) {
        const uint8_t *bad = write_and_check(w, buf);
        if (bad && !w->bad)
            w->bad = bad;
        failed = w->write_rc;
    } else {
        pthread_mutex_lock(&w->mu);
        w->queue[(w->head + w->queued) % NBUF] = buf;
        w->queued++;
        __atomic_add_fetch(&w->backlog, 1, __ATOMIC_RELAXED);
        w->pending[buf] = 1;
        pthread_cond_broadcast(&w->cv);
        while (w->pending[w->cur])
            pthread_cond_wait(&w->cv, &w->mu);
        failed = __atomic_load_n(&w->write_rc, __ATOMIC_RELAXED);
        pthread_mutex_unlock(&w->mu);
    }
    w->len = 0;
    w->segs[w->cur].n = 0;
    return failed;
}

/* Copies raw metadata into the buffers. */
static int emit(wr *w, const uint8_t *p, size_t n)
{
    while (n > 0) {
        if (w->len == OUT_BUF) {
            int rc = flush(w);
            if (rc)
                return rc;
        }
        size_t k = OUT_BUF - w->len < n ? OUT_BUF - w->len : n;
        memcpy(w->bufs[w->cur] + w->len, p, k);
        w->len += k;
        p += k;
        n -= k;
    }
    return 0;
}

static int modified(ls_err *e, const ls_record *r)
{
    char obj[66];
    ls_object_make_path(r->object_id, obj);
    return ls_fail(e, LS_E_CORRUPT, "object %s of %.*s does not match its content hash "
                   "(modified through a hardlinked checkout?): run layerstore fsck", obj,
                   (int)(r->path_len > 300 ? 300 : r->path_len), r->path);
}

/* An object's content, checked against the record.  A file longer than the record (appended
 * to) would still give the original bytes, so only what is read is checked. */
static int write_object(wr *w, int objects_fd, const uint8_t *recp, const ls_record *r)
{
    char obj[66];
    ls_object_make_path(r->object_id, obj);
    int fd = openat(objects_fd, obj, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT
            ? ls_fail(w->e, -ENOENT, "object %s is missing from the store (run layerstore fsck)",
                      obj)
            : ls_fail(w->e, -errno, "cannot open object %s: %s", obj, strerror(errno));
    /* Read into the output buffers, which the other thread writes whole and checks: two
     * copies per byte, as cat makes, and few calls. */
    int rc = 0;
    uint64_t done = 0, size = r->size;
    while (done < size) {
        if (w->len == OUT_BUF && (rc = flush(w)))
            break;
        size_t room = OUT_BUF - w->len;
        size_t want = size - done < room ? (size_t)(size - done) : room;
        uint8_t *dst = w->bufs[w->cur] + w->len;
        ssize_t k = pread(fd, dst, want, (off_t)done);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            rc = k < 0 ? ls_fail(w->e, -errno, "cannot read object %s: %s", obj, strerror(errno))
                       : modified(w->e, r);      /* shorter than recorded */
            break;
        }
        segs *sg = &w->segs[w->cur];
        if (sg->n == sg->cap) {
            size_t cap = sg->cap ? sg->cap * 2 : 256;
            seg *v = realloc(sg->v, cap * sizeof *v);
            if (!v) {
                rc = ls_fail(w->e, LS_E_NOMEM, "out of memory");
                break;
            }
            sg->v = v;
            sg->cap = cap;
        }
        if (done == 0 && (uint64_t)k == size && w->running &&
            __atomic_load_n(&w->backlog, __ATOMIC_RELAXED) >= 2) {
            uint8_t hash[32];
            ls_blake3_hash(dst, (size_t)k, hash);
            if (!w->read_bad && memcmp(hash, r->content_hash, 32))
                w->read_bad = recp;
        } else {
            sg->v[sg->n++] = (seg){dst, (size_t)k, recp, r->content_hash, done == 0,
                                   done + (uint64_t)k == size};
        }
        w->len += (size_t)k;
        done += (uint64_t)k;
    }
    close(fd);
    return rc;
}

int ls_layer_write(const char *objects_dir, const uint8_t *records, size_t records_len,
                   const uint8_t *raw, size_t raw_len, int out_fd, uint64_t *written,
                   ls_progress *progress, char *err, size_t errlen)
{
    ls_err e;
    wr w = {.fd = out_fd, .e = &e};
    int rc = 0, objects_fd = -1;
    *written = 0;
    /* Damaged records, and sparse entries (the Python writer's), before writing anything. */
    ls_record r;
    size_t used;
    for (size_t off = 0; off < records_len; off += used) {
        if ((rc = ls_record_parse(records + off, records_len - off, &r, &used,
                                  "the layer's records", &e)))
            goto out;
        if (r.flags & LS_RECORD_SPARSE) {
            rc = ls_fail(&e, LS_E_UNSUPPORTED, "the layer has sparse files");
            goto out;
        }
    }
    objects_fd = open(objects_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (objects_fd < 0) {
        rc = ls_fail(&e, -errno, "cannot open %s: %s", objects_dir, strerror(errno));
        goto out;
    }
    int allocated = (w.hasher = ls_blake3_new()) != NULL;
    for (int i = 0; i < NBUF; i++)
        allocated &= (w.bufs[i] = malloc(OUT_BUF)) != NULL;
    if (!allocated) {
        rc = ls_fail(&e, LS_E_NOMEM, "out of memory");
        goto out;
    }
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    w.running = pthread_create(&w.thread, NULL, writer_main, &w) == 0;
    size_t rpos = 0;
    for (size_t off = 0; off < records_len; off += used) {
        (void)ls_record_parse(records + off, records_len - off, &r, &used, "", &e); /* checked */
        if (ls_progress_cancelled(progress)) {
            rc = ls_fail(&e, LS_E_CANCELLED, "layer write cancelled");
            break;
        }
        if (r.raw_before > raw_len - rpos) {
            rc = ls_fail(&e, LS_E_CORRUPT, "the layer's raw metadata is shorter than its "
                         "records say");
            break;
        }
        if ((rc = emit(&w, raw + rpos, (size_t)r.raw_before)))
            break;
        rpos += (size_t)r.raw_before;
        if (r.type == LS_ENTRY_FILE && r.size > 0 &&
            (rc = write_object(&w, objects_fd, records + off, &r)))
            break;
        ls_progress_add(progress, r.raw_before + (r.type == LS_ENTRY_FILE ? r.size : 0), 1);
    }
    if (!rc)
        rc = emit(&w, raw + rpos, raw_len - rpos);
    if (!rc)
        rc = flush(&w);
    writer_stop(&w);
    pthread_mutex_destroy(&w.mu);
    pthread_cond_destroy(&w.cv);
    if (w.write_rc) {
        rc = w.write_rc;
        e = w.write_err;
    } else if ((w.bad || w.read_bad) && (!rc || rc == LS_E_CORRUPT)) {
        const uint8_t *bad = w.bad ? w.bad : w.read_bad;
        (void)ls_record_parse(bad, records_len - (size_t)(bad - records), &r, &used, "", &e);
        rc = modified(&e, &r);
    }
out:
    *written = w.written;
    for (int i = 0; i < NBUF; i++) {
        free(w.bufs[i]);
        free(w.segs[i].v);
    }
    ls_blake3_free(w.hasher);
    if (objects_fd >= 0)
        close(objects_fd);
    if (rc)
        snprintf(err, errlen, "%s", e.msg);
    return rc;
}
