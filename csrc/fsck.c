/*
 * fsck.c - reads and hashes stored objects for fsck, on every core.
 *
 * fsck's cost is reading and hashing every object.  Most objects are small, and a Python call
 * per file (open, read, hash, close) held the GIL long enough that two Python threads ran no
 * faster than one; here a batch runs on threads of its own, taking objects from a shared
 * counter.  The caller passes the biggest objects first, so the big ones spread over the threads
 * and the small ones fill in at the end.  Judging the results against the index stays in Python.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "ls_internal.h"

#define READ_CHUNK (1u << 20)

typedef struct {
    int objects_fd;
    int flags;
    ls_object_check *objs;
    size_t n;
    size_t next;                /* the next object to take; taken atomically */
    int failed;                 /* a thread could not allocate its buffers */
    ls_progress *progress;
} batch;

/* Hashes the rest of fd's st_size bytes, stopping there: reading up to EOF would cost one more
 * system call per object.  A file that shrank meanwhile is hashed as it is (fsck then sees
 * bytes that do not match). */
static int hash_content(int fd, uint64_t size, ls_blake3 *h, ls_sha256 *sha, uint8_t *buf,
                        ls_object_check *o)
{
    if (h)
        ls_blake3_reset(h);
    if (sha)
        ls_sha256_reset(sha);
    while (size > 0) {
        ssize_t r = read(fd, buf, size < READ_CHUNK ? (size_t)size : READ_CHUNK);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        if (r == 0)
            break;
        if (h)
            ls_blake3_update(h, buf, (size_t)r);
        if (sha)
            ls_sha256_update(sha, buf, (size_t)r);
        size -= (uint64_t)r;
    }
    if (h)
        ls_blake3_finalize(h, o->content_hash, 32);
    if (sha)
        ls_sha256_finalize(sha, o->content_sha256);
    return 0;
}

/* How many of fd's xattrs ls_xattr_applies names; 1 when they cannot be listed, so that the
 * caller looks for itself. */
static uint32_t applied_xattrs(int fd, int owners)
{
    char small[1024], *list = small;
    ssize_t len = flistxattr(fd, small, sizeof small);
    if (len < 0 && errno == ERANGE) {
        len = flistxattr(fd, NULL, 0);
        list = len > 0 ? malloc((size_t)len) : NULL;
        len = list ? flistxattr(fd, list, (size_t)len) : -1;
    }
    uint32_t n = len < 0 && errno != ENOTSUP;
    for (ssize_t i = 0; i < len;) {
        size_t l = strnlen(list + i, (size_t)(len - i));
        n += (uint32_t)ls_xattr_applies(list + i, l, owners);
        i += (ssize_t)l + 1;
    }
    if (list != small)
        free(list);
    return n;
}

static void check_one(const batch *b, ls_object_check *o, ls_blake3 *h, ls_sha256 *sha,
                      uint8_t *buf)
{
    char path[66];
    struct stat st;
    ls_object_make_path(o->id, path);
    int fd = openat(b->objects_fd, path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        o->err = errno == ELOOP ? LS_CHECK_NOT_REGULAR : errno;
        return;
    }
    if (fstat(fd, &st)) {
        o->err = errno;
    } else if (!S_ISREG(st.st_mode)) {
        o->err = LS_CHECK_NOT_REGULAR;
    } else {
        o->mode = st.st_mode;
        o->uid = st.st_uid;
        o->gid = st.st_gid;
        o->size = (uint64_t)st.st_size;
        o->mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
        if (b->flags & LS_CHECK_XATTRS)
            o->xattrs = applied_xattrs(fd, b->flags & LS_CHECK_OWNERS);
        o->err = hash_content(fd, o->size, h, sha, buf, o);
    }
    close(fd);
}

static void *work(void *arg)
{
    batch *b = arg;
    ls_blake3 *h = b->flags & LS_CHECK_NO_BLAKE3 ? NULL : ls_blake3_new();
    ls_sha256 *sha = b->flags & LS_CHECK_SHA256 ? ls_sha256_new() : NULL;
    uint8_t *buf = malloc(READ_CHUNK);
    if ((!h && !(b->flags & LS_CHECK_NO_BLAKE3)) || (!sha && (b->flags & LS_CHECK_SHA256))
        || !buf) {
        __atomic_store_n(&b->failed, 1, __ATOMIC_RELAXED);
    } else {
        while (!ls_progress_cancelled(b->progress)) {
            size_t i = __atomic_fetch_add(&b->next, 1, __ATOMIC_RELAXED);
            if (i >= b->n)
                break;
            check_one(b, &b->objs[i], h, sha, buf);
            ls_progress_add(b->progress, b->objs[i].size, 1);
        }
    }
    ls_blake3_free(h);
    ls_sha256_free(sha);
    free(buf);
    return NULL;
}

int ls_objects_check(const char *objects_dir, ls_object_check *objs, size_t n, int threads,
                     int flags, ls_progress *progress, char *err, size_t errlen)
{
    batch b = {.objs = objs, .n = n, .flags = flags, .progress = progress};
    pthread_t tids[16];
    int started = 0;
    b.objects_fd = open(objects_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (b.objects_fd < 0) {
        snprintf(err, errlen, "cannot open %s: %s", objects_dir, strerror(errno));
        return -errno;
    }
    if (threads > 16)
        threads = 16;
    /* Fewer threads than asked for when the system refuses one: the work still gets done. */
    while (started < threads - 1 && pthread_create(&tids[started], NULL, work, &b) == 0)
        started++;
    work(&b);
    for (int i = 0; i < started; i++)
        pthread_join(tids[i], NULL);
    close(b.objects_fd);
    if (b.failed) {
        snprintf(err, errlen, "out of memory");
        return LS_E_NOMEM;
    }
    if (ls_progress_cancelled(progress)) {
        snprintf(err, errlen, "object checks cancelled");
        return LS_E_CANCELLED;
    }
    return 0;
}
