/*
 * util.c - error messages, the growable byte buffer and the xattr rule shared by the core's
 * components.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "ls_internal.h"

int ls_fail(ls_err *e, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return code;
}

int ls_buf_reserve(ls_buf *b, size_t extra)
{
    if (b->cap - b->len >= extra)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < extra) {
        if (cap > SIZE_MAX / 2)
            return LS_E_NOMEM;
        cap *= 2;
    }
    uint8_t *p = realloc(b->data, cap);
    if (!p)
        return LS_E_NOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

int ls_buf_append(ls_buf *b, const void *p, size_t n)
{
    int rc = ls_buf_reserve(b, n);
    if (rc)
        return rc;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

void ls_buf_free(ls_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* Which recorded xattrs are made real on files, the one rule for objects (objstore.c),
 * checkouts (checkout.c) and fsck (through _native.py).  A layer records every xattr, and all
 * of them are part of an object's identity, so save re-creates the layer byte for byte; but
 * only these namespaces say something about the file itself:
 *   user.*               the file's own data, settable by its owner;
 *   trusted.*            the same for root only;
 *   security.capability  file capabilities, which a binary needs to work (root only);
 * but never overlayfs's own (trusted.overlay.*, user.overlay.*, user.fuseoverlayfs.*).
 * The rest stay in the records: security.selinux and the other LSM labels belong to the
 * host that built the image (this host's policy labels its files itself, and its kernel may
 * refuse or rewrite a foreign label), and system.* (ACLs) only restates the mode by other
 * means.  GNU tar's --xattrs restores user.* alone; Docker applies whatever the kernel takes. */
static int has_prefix(const char *name, size_t len, const char *prefix)
{
    size_t n = strlen(prefix);
    return len >= n && memcmp(name, prefix, n) == 0;
}

int ls_xattr_applies(const char *name, size_t len, int owners)
{
    /* overlayfs reads its own xattrs (opaque, redirect, origin) in the layer dirs that mounts
     * stack: an image must not steer a mount through them.  Opaque dirs come from the layer's
     * .wh..wh..opq entries, set by runtimes/overlay.py, never from records. */
    if (has_prefix(name, len, "trusted.overlay.") || has_prefix(name, len, "user.overlay.") ||
        has_prefix(name, len, "user.fuseoverlayfs."))
        return 0;
    if (has_prefix(name, len, "user."))
        return 1;
    if (!owners)
        return 0;
    return has_prefix(name, len, "trusted.") ||
           (len == sizeof "security.capability" - 1 && has_prefix(name, len, "security.capability"));
}

int ls_xattr_refused(int fd, int err)
{
    if (err != ENOSPC)
        return err != EIO && err != EDQUOT;
    /* ext4 without ea_inode answers ENOSPC for a value larger than a block, with space to
     * spare; a disk that is really full has none left. */
    struct statvfs sv;
    return fstatvfs(fd, &sv) == 0 && (uint64_t)sv.f_bfree * sv.f_frsize >= (1u << 20);
}

/* The process umask, read without changing it (umask(2) would, for every thread). */
uint32_t ls_umask(void)
{
    FILE *f = fopen("/proc/self/status", "re");
    unsigned int u = 07777;     /* unknown: assume every bit is masked, so modes are always set */
    char line[128];
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "Umask: %o", &u) == 1)
            break;
    if (f)
        fclose(f);
    return u;
}

void ls_test_step(void)
{
#ifdef LS_TEST_HOOKS
    /* -2: the variable not read yet, -1: inert; else the steps left before the kill. */
    static long left = -2;
    long n = __atomic_load_n(&left, __ATOMIC_RELAXED);
    if (n == -1)
        return;
    if (n == -2) {
        const char *v = getenv("LAYERSTORE_TEST_KILL_AFTER");
        long want = v && *v ? strtol(v, NULL, 10) : -1;
        __atomic_compare_exchange_n(&left, &n, want > 0 ? want : -1, 0, __ATOMIC_RELAXED,
                                    __ATOMIC_RELAXED);
        if (want <= 0)
            return;
    }
    if (__atomic_sub_fetch(&left, 1, __ATOMIC_RELAXED) == 0)
        kill(getpid(), SIGKILL);
#endif
}
