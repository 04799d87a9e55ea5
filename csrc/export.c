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
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ls_internal.h"

#define OUT_BUF (1u << 20)
#define SMALL_FILE (64u << 10)      /* read into the output buffer; larger files are mapped */
#define JOBS 256

/*
 * Objects are checked on a second thread while this one goes on writing: small objects are
 * read into one of two output buffers and hashed there, large ones are mapped, written from
 * the mapping and hashed from it.  A buffer is reused only when its objects are hashed; a
 * mapping is unmapped by the thread.  A mismatch still fails the call (the caller discards
 * what was written), reported once the thread has stopped.
 */
typedef struct job {
    const uint8_t *data;        /* a mapping to check and unmap, or NULL: all of buffer buf */
    size_t len;
    const uint8_t *rec;
    int buf;
} job;

/* The objects read into one output buffer, checked together when the buffer is written (one
 * wakeup of the thread per buffer, not per small file). */
typedef struct segs {
    job *v;
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
} wr;

static int check(const job *j)
{
    uint8_t hash[32];
    ls_blake3_hash(j->data, j->len, hash);
    return memcmp(hash, j->rec + 88, 32) == 0;
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
        const uint8_t *bad = NULL;
        if (j.data) {
            if (!check(&j))
                bad = j.rec;
            munmap((void *)j.data, j.len);
        } else {
            segs *sg = &w->segs[j.buf];
            for (size_t i = 0; i < sg->n && !bad; i++)
                if (!check(&sg->v[i]))
                    bad = sg->v[i].rec;
        }
        pthread_mutex_lock(&w->mu);
        if (bad && !w->bad)
            w->bad = bad;
        if (!j.data)
            w->pending[j.buf] = 0;
        w->head = (w->head + 1) % JOBS;
        w->queued--;
        pthread_cond_broadcast(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* Queues a check: a mapping (data), or the objects of buffer buf (data NULL).  Without a
 * thread it is done here. */
static void submit(wr *w, const uint8_t *data, size_t len, const uint8_t *rec, int buf)
{
    job j = {data, len, rec, buf};
    if (!w->running) {
        const uint8_t *bad = NULL;
        if (data) {
            bad = check(&j) ? NULL : rec;
            munmap((void *)data, len);
        } else {
            for (size_t i = 0; i < w->segs[buf].n && !bad; i++)
                if (!check(&w->segs[buf].v[i]))
                    bad = w->segs[buf].v[i].rec;
        }
        if (bad && !w->bad)
            w->bad = bad;
        return;
    }
    pthread_mutex_lock(&w->mu);
    while (w->queued == JOBS)
        pthread_cond_wait(&w->cv, &w->mu);
    w->jobs[(w->head + w->queued) % JOBS] = j;
    w->queued++;
    if (!data)
        w->pending[buf] = 1;
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
        submit(w, NULL, 0, NULL, w->cur);
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

static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)ls_get32(p) | (uint64_t)ls_get32(p + 4) << 32;
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
    int rc = 0;
    if (size <= SMALL_FILE) {
        if (w->len + size > OUT_BUF && (rc = flush(w)))
            goto out;
        uint8_t *dst = w->bufs[w->cur] + w->len;
        size_t got = 0;
        while (got < size) {
            ssize_t k = pread(fd, dst + got, size - got, (off_t)got);
            if (k < 0 && errno == EINTR)
                continue;
            if (k <= 0) {
                rc = k < 0 ? ls_fail(w->e, -errno, "cannot read object %s: %s", obj,
                                     strerror(errno))
                           : modified(w->e, obj, rec);
                goto out;
            }
            got += (size_t)k;
        }
        segs *sg = &w->segs[w->cur];
        if (sg->n == sg->cap) {
            size_t cap = sg->cap ? sg->cap * 2 : 256;
            job *v = realloc(sg->v, cap * sizeof *v);
            if (!v) {
                rc = ls_fail(w->e, LS_E_NOMEM, "out of memory");
                goto out;
            }
            sg->v = v;
            sg->cap = cap;
        }
        sg->v[sg->n++] = (job){dst, (size_t)size, rec, w->cur};
        w->len += size;
    } else {
        struct stat st;
        if (fstat(fd, &st) || (uint64_t)st.st_size < size) {   /* mapping past the end */
            rc = modified(w->e, obj, rec);                     /* would fault */
            goto out;
        }
        void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            rc = ls_fail(w->e, -errno, "cannot map object %s: %s", obj, strerror(errno));
            goto out;
        }
        madvise(map, size, MADV_SEQUENTIAL | MADV_WILLNEED);
        if (!(rc = flush(w)))
            rc = put(w, map, size);
        if (rc)
            munmap(map, size);
        else
            submit(w, map, size, rec, -1);
    }
out:
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
    if (!w.bufs[0] || !w.bufs[1]) {
        rc = ls_fail(&e, LS_E_NOMEM, "out of memory");
        goto out;
    }
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    w.running = pthread_create(&w.thread, NULL, verify_main, &w) == 0;
    size_t rpos = 0;
    for (size_t off = 0; off < records_len;) {
        const uint8_t *rec = records + off;
        uint64_t before = get64(rec + 48), size = get64(rec + 40);
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
    if (objects_fd >= 0)
        close(objects_fd);
    if (rc)
        snprintf(err, errlen, "%s", e.msg);
    return rc;
}
