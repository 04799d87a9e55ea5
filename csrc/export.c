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
#define JOBS 256

/*
 * Objects are checked on a second thread while this one goes on writing: their content is
 * read into one of two output buffers, and when a buffer is written the thread checks the
 * objects in it.  A buffer is reused only when its objects are checked.  A mismatch still
 * fails the call (the caller discards what was written), reported once the thread stopped.
 */
/* A piece of an object's content in an output buffer.  An object larger than what is left
 * of a buffer continues in the next one; the pieces are checked in order. */
typedef struct seg {
    const uint8_t *data;
    size_t len;
    const uint8_t *rec;
    int first, last;
} seg;

typedef struct job {
    int buf;                    /* check every piece in that buffer */
} job;

/* The objects read into one output buffer, checked together when the buffer is written (one
 * wakeup of the thread per buffer, not per small file). */
typedef struct segs {
    seg *v;
    size_t n, cap;
} segs;

typedef struct wr {
    int fd;
    uint8_t *bufs[2];
    int cur;
    size_t len;
    uint64_t written;
    ls_err *e;

    pthread_t thread;
    int running;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job jobs[JOBS];
    int head, queued, stop;
    segs segs[2];
    int pending[2];             /* the buffer's check is queued or running */
    const uint8_t *bad;         /* the record of the first object that did not match */
    ls_blake3 *hasher;          /* an object in pieces (used by one thread at a time) */
} wr;

/* Checks the pieces of one buffer, in order; returns the record of an object that did not
 * match, or NULL.  h carries an object across buffers. */
static const uint8_t *run_job(wr *w, const job *j, ls_blake3 *h)
{
    const uint8_t *bad = NULL;
    const struct segs *sg = &w->segs[j->buf];
    for (size_t i = 0; i < sg->n; i++) {
        const seg *p = &sg->v[i];
        uint8_t hash[32];
        if (p->first && p->last) {
            ls_blake3_hash(p->data, p->len, hash);      /* most objects: one piece */
        } else {
            if (p->first)
                ls_blake3_reset(h);
            ls_blake3_update(h, p->data, p->len);
            if (!p->last)
                continue;
            ls_blake3_finalize(h, hash, 32);
        }
        if (!bad && memcmp(hash, p->rec + 88, 32))
            bad = p->rec;
    }
    return bad;
}

static void *verify_main(void *arg)
{
    wr *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (w->queued == 0 && !w->stop)
            pthread_cond_wait(&w->cv, &w->mu);
        if (w->queued == 0)
            break;
        job j = w->jobs[w->head];
        pthread_mutex_unlock(&w->mu);
        const uint8_t *bad = run_job(w, &j, w->hasher);
        pthread_mutex_lock(&w->mu);
        if (bad && !w->bad)
            w->bad = bad;
        w->pending[j.buf] = 0;
        w->head = (w->head + 1) % JOBS;
        w->queued--;
        pthread_cond_broadcast(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* Queues a job (or runs it here, without a thread). */
static void submit(wr *w, job j)
{
    if (!w->running) {
        const uint8_t *bad = run_job(w, &j, w->hasher);
        if (bad && !w->bad)
            w->bad = bad;
        return;
    }
    pthread_mutex_lock(&w->mu);
    while (w->queued == JOBS)
        pthread_cond_wait(&w->cv, &w->mu);
    w->jobs[(w->head + w->queued) % JOBS] = j;
    w->queued++;
    w->pending[j.buf] = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static void verify_stop(wr *w)
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

static int put(wr *w, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t k = write(w->fd, p, n);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return ls_fail(w->e, -errno, "cannot write the layer: %s", strerror(errno));
        }
        p += k;
        n -= (size_t)k;
        w->written += (uint64_t)k;
    }
    return 0;
}

/* Writes the current buffer, queues the check of its objects, and moves to the other buffer
 * once that one's check is done. */
static int flush(wr *w)
{
    int rc = put(w, w->bufs[w->cur], w->len);
    if (w->segs[w->cur].n)
        submit(w, (job){w->cur});
    w->len = 0;
    w->cur ^= 1;
    if (w->running) {
        pthread_mutex_lock(&w->mu);
        while (w->pending[w->cur])
            pthread_cond_wait(&w->cv, &w->mu);
        pthread_mutex_unlock(&w->mu);
    }
    w->segs[w->cur].n = 0;
    return rc;
}

/* Buffers small pieces; writes large ones straight from where they are. */
static int emit(wr *w, const uint8_t *p, size_t n)
{
    if (n >= OUT_BUF / 2) {
        int rc = flush(w);
        return rc ? rc : put(w, p, n);
    }
    if (w->len + n > OUT_BUF) {
        int rc = flush(w);
        if (rc)
            return rc;
    }
    memcpy(w->bufs[w->cur] + w->len, p, n);
    w->len += n;
    return 0;
}

static int modified(ls_err *e, const char *obj, const uint8_t *rec)
{
    uint32_t plen = ls_get32(rec + 120);
    return ls_fail(e, LS_E_CORRUPT, "object %s of %.*s does not match its content hash "
                   "(modified through a hardlinked checkout?): run layerstore fsck", obj,
                   (int)(plen > 300 ? 300 : plen), (const char *)rec + LS_RECORD_FIXED);
}

/* An object's content, checked against the record.  A file longer than the record (appended
 * to) would still give the original bytes, so only what is read is checked. */
static int write_object(wr *w, int objects_fd, const uint8_t *rec, uint64_t size)
{
    char obj[66];
    ls_object_path(rec + 56, obj);
    int fd = openat(objects_fd, obj, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT
            ? ls_fail(w->e, -ENOENT, "object %s is missing from the store (run layerstore fsck)",
                      obj)
            : ls_fail(w->e, -errno, "cannot open object %s: %s", obj, strerror(errno));
    /* Read into the output buffers, which are written whole and checked on the other thread:
     * two copies per byte, as cat makes, and few calls. */
    int rc = 0;
    uint64_t done = 0;
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
                       : modified(w->e, obj, rec);      /* shorter than recorded */
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
        sg->v[sg->n++] = (seg){dst, (size_t)k, rec, done == 0, done + (uint64_t)k == size};
        w->len += (size_t)k;
        done += (uint64_t)k;
    }
    close(fd);
    return rc;
}

int ls_layer_write(const char *objects_dir, const uint8_t *records, size_t records_len,
                   const uint8_t *raw, size_t raw_len, int out_fd, uint64_t *written,
                   char *err, size_t errlen)
{
    ls_err e;
    wr w = {.fd = out_fd, .e = &e};
    int rc = 0, objects_fd = -1;
    *written = 0;
    /* Sparse entries go to the Python writer: decide before writing anything. */
    for (size_t off = 0; off + LS_RECORD_FIXED <= records_len;) {
        uint32_t len = ls_get32(records + off);
        if (len < LS_RECORD_FIXED || len > records_len - off) {
            rc = ls_fail(&e, LS_E_CORRUPT, "the layer's records are damaged");
            goto out;
        }
        if (records[off + 5] & LS_RECORD_SPARSE) {
            rc = ls_fail(&e, LS_E_UNSUPPORTED, "the layer has sparse files");
            goto out;
        }
        off += len;
    }
    objects_fd = open(objects_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (objects_fd < 0) {
        rc = ls_fail(&e, -errno, "cannot open %s: %s", objects_dir, strerror(errno));
        goto out;
    }
    w.bufs[0] = malloc(OUT_BUF);
    w.bufs[1] = malloc(OUT_BUF);
    w.hasher = ls_blake3_new();
    if (!w.bufs[0] || !w.bufs[1] || !w.hasher) {
        rc = ls_fail(&e, LS_E_NOMEM, "out of memory");
        goto out;
    }
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    w.running = pthread_create(&w.thread, NULL, verify_main, &w) == 0;
    size_t rpos = 0;
    for (size_t off = 0; off < records_len;) {
        const uint8_t *rec = records + off;
        uint64_t before = ls_get64(rec + 48), size = ls_get64(rec + 40);
        if (before > raw_len - rpos) {
            rc = ls_fail(&e, LS_E_CORRUPT, "the layer's raw metadata is shorter than its "
                         "records say");
            break;
        }
        if ((rc = emit(&w, raw + rpos, (size_t)before)))
            break;
        rpos += (size_t)before;
        if (rec[4] == LS_ENTRY_FILE && size > 0 && (rc = write_object(&w, objects_fd, rec, size)))
            break;
        off += ls_get32(rec);
    }
    if (!rc)
        rc = emit(&w, raw + rpos, raw_len - rpos);
    if (!rc)
        rc = flush(&w);
    verify_stop(&w);
    pthread_mutex_destroy(&w.mu);
    pthread_cond_destroy(&w.cv);
    if (w.bad && (!rc || rc == LS_E_CORRUPT)) {
        char obj[66];
        ls_object_path(w.bad + 56, obj);
        rc = modified(&e, obj, w.bad);
    }
out:
    *written = w.written;
    free(w.bufs[0]);
    free(w.bufs[1]);
    free(w.segs[0].v);
    free(w.segs[1].v);
    ls_blake3_free(w.hasher);
    if (objects_fd >= 0)
        close(objects_fd);
    if (rc)
        snprintf(err, errlen, "%s", e.msg);
    return rc;
}
