/*
 * objstore.c - the object store: one file per distinct (content, metadata), named by identity.
 *
 * Layout: objects/ab/cdef... (the hex of the 32-byte id, split after two digits) and tmp/.
 *
 * Atomicity.  An object is written to an unnamed O_TMPFILE in tmp/ (a named temporary file
 * where the filesystem lacks O_TMPFILE), given its owner, mode and xattrs, and only then linked
 * into objects/ under its final name.  Anyone who sees the name sees the whole object.  linkat
 * fails with EEXIST when the name already exists: another ingest, maybe in another process,
 * stored the same identity first, so ours is dropped.  That is also the only locking: the name
 * is the content, so two writers never disagree about what it should hold.
 *
 * Durability.  Nothing here calls fsync per object; ls_store_sync does one syncfs for a whole
 * import, before the index commit that references the objects.  A crash before that leaves at
 * most unreferenced objects (and tmp/ files), which gc removes.
 *
 * Every object's mtime is 0 (the epoch), as ostree's are: mtime is not part of an object's
 * identity, so a hardlinked checkout shows this canonical one; --copy checkouts and exports
 * restore the recorded mtimes.
 *
 * Ownership and mode.  As root (LS_STORE_OWNERS) an object gets the owner and mode the image
 * asks for, so a hardlinked checkout shows them.  Otherwise the owner is the user, and the mode
 * gains the owner-read bit so the store can always read its own objects; the intended metadata
 * lives in the index.  chown clears setuid bits, so owner goes before mode.
 *
 * fsck --repair re-makes a damaged object the same way, from another object with the same
 * content (ls_store_restore): its bytes are a reflink or a copy of that one's, hashed again.
 *
 * Objects are never opened for writing once linked.  The store handle may be shared by
 * several ingests on different threads: its only mutable fields are updated atomically.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <linux/fs.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "ls_internal.h"

struct ls_store {
    int root_fd, objects_fd, tmp_fd;
    int flags;
    int no_tmpfile;         /* the filesystem refused O_TMPFILE once: use named files */
    int link_via_proc;      /* linkat(AT_EMPTY_PATH) needs a capability we lack */
    uint64_t counter;       /* names of named temporary files */
    /* What a new file gets by itself, so that most objects need no fchown or fchmod. */
    uint32_t umask;
    uid_t euid;
    gid_t egid;
    int group_inherited;    /* objects/ is setgid: new files take its group, not ours */
};

static const char hexdigits[] = "0123456789abcdef";

void ls_object_make_path(const uint8_t *id, char *out)
{
    char *o = out;
    for (int i = 0; i < 32; i++) {
        *o++ = hexdigits[id[i] >> 4];
        *o++ = hexdigits[id[i] & 15];
        if (i == 0)
            *o++ = '/';
    }
    *o = 0;
}

void ls_object_make_id(const uint8_t *content_hash, uint32_t mode, uint32_t uid,
                       uint32_t gid, const uint8_t *xattrs, size_t xattrs_len, uint8_t *out)
{
    static const char tag[20] = "layerstore-object-v1";
    uint8_t buf[sizeof tag + 32 + 12 + 32];
    memcpy(buf, tag, sizeof tag);
    memcpy(buf + 20, content_hash, 32);
    ls_put32(buf + 52, mode);
    ls_put32(buf + 56, uid);
    ls_put32(buf + 60, gid);
    ls_blake3_hash(xattrs, xattrs_len, buf + 64);
    ls_blake3_hash(buf, sizeof buf, out);
}

static int os_fail(ls_err *e, int err, const char *what, const char *path)
{
    return ls_fail(e, -err, "%s %s: %s", what, path, strerror(err));
}

/* The mode an object should have: as root the image's; otherwise readable by the store. */
static uint32_t object_mode(const ls_store *s, const ls_obj_meta *m)
{
    return (s->flags & LS_STORE_OWNERS) ? m->mode : (m->mode | S_IRUSR);
}

int ls_store_open(const char *root, int flags, ls_store **out, char *err, size_t errlen)
{
    ls_store *s = calloc(1, sizeof *s);
    ls_err e;
    int rc = 0;
    *out = NULL;
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return LS_E_NOMEM;
    }
    s->flags = flags;
    s->root_fd = s->objects_fd = s->tmp_fd = -1;
    s->umask = ls_umask();
    s->euid = geteuid();
    s->egid = getegid();
    s->root_fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->root_fd < 0) {
        rc = os_fail(&e, errno, "cannot open store", root);
        goto out;
    }
    static const char *const dirs[] = {"objects", "tmp"};
    int *fds[] = {&s->objects_fd, &s->tmp_fd};
    for (int i = 0; i < 2; i++) {
        if (mkdirat(s->root_fd, dirs[i], 0700) && errno != EEXIST) {
            rc = os_fail(&e, errno, "cannot create", dirs[i]);
            goto out;
        }
        *fds[i] = openat(s->root_fd, dirs[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
        if (*fds[i] < 0) {
            rc = os_fail(&e, errno, "cannot open", dirs[i]);
            goto out;
        }
    }
    /* Mark objects/ as the top of a hierarchy (chattr +T) before its subdirectories exist:
     * ext4's Orlov allocator then spreads the fan-out directories, and with them the objects'
     * inodes, over the block groups.  Left in objects/'s group they crowd a few groups, where
     * every inode allocation scans past the others (and, on a filesystem without a journal,
     * re-reads each recently freed inode): an import ran 2-3x slower.  Filesystems without
     * the flag refuse it, which changes nothing else. */
    struct stat ost;
    s->group_inherited = fstat(s->objects_fd, &ost) != 0 || (ost.st_mode & S_ISGID);
    int fl;
    if (ioctl(s->objects_fd, FS_IOC_GETFLAGS, &fl) == 0 && !(fl & FS_TOPDIR_FL)) {
        fl |= FS_TOPDIR_FL;
        (void)ioctl(s->objects_fd, FS_IOC_SETFLAGS, &fl);
    }
    /* The 256 fan-out directories exist from the start, so writing an object never mkdirs. */
    for (int i = 0; i < 256; i++) {
        char d[3] = {hexdigits[i >> 4], hexdigits[i & 15], 0};
        if (mkdirat(s->objects_fd, d, 0700) && errno != EEXIST) {
            rc = os_fail(&e, errno, "cannot create objects/", d);
            goto out;
        }
    }
out:
    if (rc) {
        snprintf(err, errlen, "%s", e.msg);
        ls_store_close(s);
        return rc;
    }
    *out = s;
    return 0;
}

int ls_store_sync(ls_store *s)
{
    return syncfs(s->root_fd) ? -errno : 0;
}

void ls_store_close(ls_store *s)
{
    if (!s)
        return;
    if (s->root_fd >= 0)
        close(s->root_fd);
    if (s->objects_fd >= 0)
        close(s->objects_fd);
    if (s->tmp_fd >= 0)
        close(s->tmp_fd);
    free(s);
}

int ls_store_has(ls_store *s, const uint8_t *id, uint64_t size, ls_err *e)
{
    char path[66];
    struct stat st;
    ls_object_make_path(id, path);
    if (fstatat(s->objects_fd, path, &st, AT_SYMLINK_NOFOLLOW) == 0)
        /* A wrong type or size is damage (fsck reports it); the writer replaces it. */
        return S_ISREG(st.st_mode) && (uint64_t)st.st_size == size;
    if (errno == ENOENT)
        return 0;
    return os_fail(e, errno, "cannot stat object", path);
}

int ls_store_open_object(ls_store *s, const uint8_t *id, ls_err *e)
{
    char path[66];
    ls_object_make_path(id, path);
    int fd = openat(s->objects_fd, path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    return fd >= 0 ? fd : os_fail(e, errno, "cannot open object", path);
}

int ls_store_spill_open(ls_store *s, ls_spill *sp, const uint8_t *id, const ls_obj_meta *m,
                        ls_err *e)
{
    sp->tmpname[0] = 0;
    sp->pos = sp->written_end = 0;
    /* Created with its final permission bits where the umask allows, so that commit can
     * skip fchmod (writing through this descriptor works whatever the bits).  Readable too:
     * a restore hashes what a reflink put in it. */
    uint32_t want = m ? object_mode(s, m) & 0777 : 0600;
    sp->mode = want & ~s->umask;
    if (!__atomic_load_n(&s->no_tmpfile, __ATOMIC_RELAXED)) {
        /* When the identity is already known, the unnamed file is made in its fan-out
         * directory: ext4 allocates a new inode near its directory's, and thousands of
         * inodes from one directory crowd one block group, where each allocation then scans
         * (and, after deletions, rejects recently freed inodes) for minutes per million. */
        char fan[3] = {0};
        if (id) {
            fan[0] = hexdigits[id[0] >> 4];
            fan[1] = hexdigits[id[0] & 15];
        }
        sp->fd = openat(id ? s->objects_fd : s->tmp_fd, id ? fan : ".",
                        O_TMPFILE | O_RDWR | O_CLOEXEC, want);
        if (sp->fd >= 0)
            return 0;
        if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)
            return os_fail(e, errno, "cannot create a temporary object in", "tmp/");
        __atomic_store_n(&s->no_tmpfile, 1, __ATOMIC_RELAXED);
    }
    uint64_t n = __atomic_fetch_add(&s->counter, 1, __ATOMIC_RELAXED);
    snprintf(sp->tmpname, sizeof sp->tmpname, "obj-%ld-%llu", (long)getpid(),
             (unsigned long long)n);
    sp->mode = 0600 & ~s->umask;
    sp->fd = openat(s->tmp_fd, sp->tmpname, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
    if (sp->fd < 0)
        return os_fail(e, errno, "cannot create tmp/", sp->tmpname);
    return 0;
}

static int write_at(ls_spill *sp, const uint8_t *p, size_t n, uint64_t off, ls_err *e)
{
    while (n > 0) {
        ssize_t w = pwrite(sp->fd, p, n, (off_t)off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return os_fail(e, errno, "cannot write", "an object in tmp/");
        }
        p += w;
        off += (uint64_t)w;
        n -= (size_t)w;
    }
    sp->written_end = off;
    return 0;
}

/* Whether bytes are all zeros.  Data almost always differs in its first word, so the full
 * comparison runs only on the rare piece that starts with zeros. */
static int all_zero(const uint8_t *p, size_t n)
{
    uint64_t w;
    if (n < sizeof w) {
        while (n > 0 && p[n - 1] == 0)
            n--;
        return n == 0;
    }
    memcpy(&w, p, sizeof w);
    return w == 0 && memcmp(p, p + sizeof w, n - sizeof w) == 0;
}

/* Zeros are not written where they would fill a whole block, as `cp --sparse=always` does, so
 * a file of zeros costs no disk.  Content arrives in pieces of any size, so each piece is cut
 * at the file's block boundaries and a part of a block that is all zeros is skipped too: bytes
 * never written read as zeros (writes only go forward, and commit sets the size), and a block
 * split over two pieces stays a hole when both of its parts were zeros.  Writes take explicit
 * offsets, so skipping costs no system call, and data is written in runs as long as before. */
int ls_store_spill_write(ls_spill *sp, const uint8_t *p, size_t n, ls_err *e)
{
    uint64_t base = sp->pos;
    size_t run = 0;         /* start of the bytes neither written nor skipped */
    sp->pos += n;
    for (size_t seg = 0; seg < n;) {
        size_t next = seg + (LS_HOLE_BLOCK - (base + seg) % LS_HOLE_BLOCK);
        if (next > n)
            next = n;
        if (all_zero(p + seg, next - seg)) {
            int rc = seg > run ? write_at(sp, p + run, seg - run, base + run, e) : 0;
            if (rc)
                return rc;
            run = next;
        }
        seg = next;
    }
    return n > run ? write_at(sp, p + run, n - run, base + run, e) : 0;
}

void ls_store_spill_abort(ls_store *s, ls_spill *sp)
{
    if (sp->fd >= 0)
        close(sp->fd);
    if (sp->tmpname[0])
        unlinkat(s->tmp_fd, sp->tmpname, 0);
    sp->fd = -1;
    sp->tmpname[0] = 0;
}

/* Whether the file holds xattr name with exactly this value. */
static int holds_xattr(int fd, const char *name, const uint8_t *val, uint32_t vlen)
{
    uint8_t small[256], *buf = vlen <= sizeof small ? small : malloc(vlen);
    if (!buf)
        return 0;
    ssize_t n = fgetxattr(fd, name, buf, vlen);
    int same = n == (ssize_t)vlen && memcmp(buf, val, vlen) == 0;
    if (buf != small)
        free(buf);
    return same;
}

/* Applies the xattrs of the namespaces ls_xattr_applies names; the others live in the records
 * only.  An applicable one the filesystem refused, or stored otherwise than recorded (the
 * kernel rewrites a v3 security.capability whose root is 0 as v2), is recorded as skipped,
 * so fsck does not take the object's xattrs for damage; a read-back costs little, since few
 * files carry applicable xattrs.  Only a failing disk is fatal (ls_xattr_refused). */
static int set_xattrs(ls_spill *sp, const ls_obj_meta *m, int owners, int *skipped, ls_err *e)
{
    const uint8_t *p = m->xattrs, *end = m->xattrs + m->xattrs_len;
    char name[256];
    while (p < end) {
        uint32_t nlen = ls_get32(p), vlen = ls_get32(p + 4);
        const char *xname = (const char *)p + 8;
        const uint8_t *val = p + 8 + nlen;
        p = val + vlen;
        if (!ls_xattr_applies(xname, nlen, owners))
            continue;
        if (nlen >= sizeof name || memchr(xname, 0, nlen)) {
            *skipped = 1;       /* longer than XATTR_NAME_MAX, or a NUL: no file takes it */
            continue;
        }
        memcpy(name, xname, nlen);
        name[nlen] = 0;
        if (fsetxattr(sp->fd, name, val, vlen, 0)) {
            if (!ls_xattr_refused(sp->fd, errno))
                return os_fail(e, errno, "cannot set xattr", name);
            *skipped = 1;
        } else if (!holds_xattr(sp->fd, name, val, vlen)) {
            *skipped = 1;
        }
    }
    return 0;
}

static int link_into_place(ls_store *s, ls_spill *sp, const char *path)
{
    if (sp->tmpname[0])
        return linkat(s->tmp_fd, sp->tmpname, s->objects_fd, path, 0) ? -errno : 0;
    if (!__atomic_load_n(&s->link_via_proc, __ATOMIC_RELAXED)) {
        if (linkat(sp->fd, "", s->objects_fd, path, AT_EMPTY_PATH) == 0)
            return 0;
        /* Without CAP_DAC_READ_SEARCH the kernel refuses AT_EMPTY_PATH (ENOENT or EPERM). */
        if (errno != ENOENT && errno != EPERM)
            return -errno;
    }
    char proc[40];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", sp->fd);
    if (linkat(AT_FDCWD, proc, s->objects_fd, path, AT_SYMLINK_FOLLOW))
        return -errno;
    __atomic_store_n(&s->link_via_proc, 1, __ATOMIC_RELAXED);
    return 0;
}

int ls_store_spill_commit(ls_store *s, ls_spill *sp, const uint8_t *id, const ls_obj_meta *m,
                          uint64_t size, int *xattrs_skipped, ls_err *e)
{
    char path[66];
    int rc = 0;
    ls_object_make_path(id, path);
    /* Content that ends in skipped zeros gets its size from a hole at the end; before the
     * mode, as truncating drops setuid bits like writing does. */
    if (sp->written_end < size && ftruncate(sp->fd, (off_t)size)) {
        rc = os_fail(e, errno, "cannot set the size of object", path);
        goto out;
    }
    int owners = s->flags & LS_STORE_OWNERS;
    /* A new file is ours already: most image files are root's, and so are we, as root. */
    int chown_needed = owners && (m->uid != s->euid || m->gid != s->egid || s->group_inherited);
    if (chown_needed && fchown(sp->fd, m->uid, m->gid)) {
        rc = os_fail(e, errno, "cannot set the owner of object", path);
        goto out;
    }
    /* fchown clears setuid/setgid, and the umask may have taken bits: then set the mode. */
    uint32_t mode = object_mode(s, m) & 07777;
    if ((chown_needed || mode != sp->mode) && fchmod(sp->fd, mode)) {
        rc = os_fail(e, errno, "cannot set the mode of object", path);
        goto out;
    }
    if (m->xattrs_len && (rc = set_xattrs(sp, m, owners, xattrs_skipped, e)))
        goto out;

    /* One canonical mtime: a hardlinked checkout shows it whichever image it came from. */
    static const struct timespec epoch[2] = {{0, 0}, {0, 0}};
    if (futimens(sp->fd, epoch)) {
        rc = os_fail(e, errno, "cannot set the mtime of object", path);
        goto out;
    }
    for (int attempt = 0;; attempt++) {
        int err = link_into_place(s, sp, path);
        if (err == 0) {
            rc = 1;
            ls_test_step();
            break;
        }
        if (err != -EEXIST || attempt > 0) {
            rc = os_fail(e, -err, "cannot link object", path);
            break;
        }
        /* Someone stored this identity first: keep theirs, unless it is damaged. */
        int has = ls_store_has(s, id, size, e);
        if (has != 0) {
            rc = has < 0 ? has : 0;
            break;
        }
        if (unlinkat(s->objects_fd, path, 0) && errno != ENOENT) {
            rc = os_fail(e, errno, "cannot replace damaged object", path);
            break;
        }
    }
out:
    ls_store_spill_abort(s, sp);
    return rc;
}

/* Copies size bytes of src into the spill, as a reflink where the filesystem has them (the
 * two objects then share their blocks) or else by reading and writing, which keeps holes as
 * ingest makes them.  What the new file holds is hashed on the way, so a source that changed
 * since fsck read it gives LS_E_CORRUPT instead of a wrong object. */
static int copy_content(int src, ls_spill *sp, uint64_t size, const uint8_t *content_hash,
                        ls_err *e)
{
    struct stat st;
    int cloned = ioctl(sp->fd, FICLONE, src) == 0;
    if (cloned && (fstat(sp->fd, &st) || (uint64_t)st.st_size != size))
        return ls_fail(e, LS_E_CORRUPT, "the object copied from changed size");
    int from = cloned ? sp->fd : src;
    ls_blake3 *h = ls_blake3_new();
    uint8_t *buf = malloc(1u << 20);
    uint64_t off = 0;
    int rc = 0;
    if (!h || !buf)
        rc = ls_fail(e, LS_E_NOMEM, "out of memory");
    while (!rc && off < size) {
        ssize_t n = pread(from, buf, size - off < (1u << 20) ? (size_t)(size - off) : 1u << 20,
                          (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            rc = os_fail(e, errno, "cannot read", "the object copied from");
        else if (n == 0)
            break;
        else if (!cloned)
            rc = ls_store_spill_write(sp, buf, (size_t)n, e);
        if (!rc)
            ls_blake3_update(h, buf, (size_t)n);
        off += n > 0 ? (uint64_t)n : 0;
    }
    uint8_t got[32];
    if (!rc) {
        ls_blake3_finalize(h, got, 32);
        if (off != size || memcmp(got, content_hash, 32))
            rc = ls_fail(e, LS_E_CORRUPT, "the object copied from no longer holds the content");
    }
    if (cloned)
        sp->pos = sp->written_end = size;
    ls_blake3_free(h);
    free(buf);
    return rc;
}

int ls_store_restore(ls_store *s, const uint8_t *id, const uint8_t *src_id,
                     const uint8_t *content_hash, uint64_t size, uint32_t mode, uint32_t uid,
                     uint32_t gid, const uint8_t *xattrs, size_t xattrs_len, int *xattrs_skipped,
                     char *err, size_t errlen)
{
    ls_obj_meta m = {mode & 07777, uid, gid, xattrs, xattrs_len};
    ls_spill sp;
    ls_err e;
    int rc;
    int src = ls_store_open_object(s, src_id, &e);
    if (src < 0) {
        rc = src;
    } else {
        rc = ls_store_spill_open(s, &sp, id, &m, &e);
        if (!rc && (rc = copy_content(src, &sp, size, content_hash, &e)))
            ls_store_spill_abort(s, &sp);
        else if (!rc)
            rc = ls_store_spill_commit(s, &sp, id, &m, size, xattrs_skipped, &e);
        close(src);
    }
    if (rc < 0)
        snprintf(err, errlen, "%s", e.msg);
    return rc < 0 ? rc : 0;
}
