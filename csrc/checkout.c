/*
 * checkout.c - make an image's merged tree real in a directory, in one call.
 *
 * The plan is the image's union (computed once, at import) as entry records in the layout of
 * layerstore.h, parents before children.  A HARDLINK record names, in its link field, the
 * path of an earlier record of the plan: the two share an inode here as in the image.
 *
 * Nothing is ever created through a symlink: every parent directory is opened component by
 * component with O_NOFOLLOW from DEST's descriptor (and the plan's parents are directories
 * this call made), and everything is made with *at() calls relative to those descriptors.  The
 * open directories of the current path are kept on a stack, so a plan in tree order opens
 * each directory about once per pass.  The work is done in passes (see ls_tree_checkout), the
 * largest of them on two threads.
 *
 * A file is, by default, an inode of its own with its record's metadata, so that writing to
 * it cannot change the store: a reflink of its object (FICLONE) where the filesystem has them,
 * else a copy (copy_file_range, holes kept).  With LS_CHECKOUT_COPY it is a copy whose blocks
 * are its own even there (sendfile: copy_file_range itself reflinks on xfs and btrfs).  With
 * LS_CHECKOUT_LINK it is a hardlink to its object and takes the object's own metadata: nothing
 * here may chmod, chown or touch it, since that would change the store.  An empty file is
 * always made fresh, never shared.  EMLINK (the object has as many links as the filesystem
 * allows), EXDEV and EPERM turn a link into a file of its own.  Directories get their final
 * mode, owner and times last, deepest first, so a read-only directory does not stop its
 * children from being made; DEST, which the caller made or found empty, last of all.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "ls_internal.h"

typedef ls_record rec;

#define NO_DIR ((size_t)-1)

typedef struct co {
    int dest_fd, objects_fd, flags;
    uid_t euid;
    gid_t egid;
    uint32_t umask;
    int own_group;          /* new entries get our group (DEST is not setgid) */
    ls_checkout_stats *st;
    ls_err *e;
    /* The open directories of the current parent path: fds[i] is the directory whose path is
     * the first i components of cur (fds[0] is DEST). */
    int *fds;
    size_t depth, cap;
    char cur[LS_MAX_PATH + 1];
    size_t cur_len;
    size_t *level_dir;      /* per stack level: the index in dirs of its record, or NO_DIR */
    /* Offsets of directory records, for their metadata once their children are made. */
    size_t *dirs;
    uint8_t *dir_done;
    size_t ndirs, dirs_cap;
    const uint8_t *plan;
    size_t plan_len;
    uint8_t *copybuf;
    int no_reflink;
    int no_cfr;             /* copy_file_range refused: read and write */
    int defer_meta;         /* leaving a directory does not finish it (the first pass) */
    const int *stop;        /* set when another thread failed: give up early */
    ls_progress *progress;  /* items: entries made; bytes: their file content */
} co;

static int parse(const uint8_t *p, size_t left, rec *r, size_t *used, ls_err *e)
{
    return ls_record_parse(p, left, r, used, "checkout plan", e);
}

static int os_fail(co *c, int err, const char *what, const char *path, size_t len)
{
    return ls_fail(c->e, -err, "%s %.*s: %s", what, (int)(len > 300 ? 300 : len), path,
                   strerror(err));
}

/* A path component that could step outside: the plan is ours, but it was stored on disk. */
static int bad_component(const char *s, size_t n)
{
    return n == 0 || (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.');
}

static int apply_meta(co *c, int fd, const rec *r);

/* Closes stack levels down to keep.  A directory made from a record is complete when it is
 * left (the plan is in tree order: a directory's children follow it), so its metadata is
 * applied then, through the descriptor already open. */
static int pop_to(co *c, size_t keep)
{
    int rc = 0;
    while (c->depth > keep) {
        size_t d = c->level_dir[c->depth];
        if (d != NO_DIR && !rc && !c->defer_meta) {
            rec r;
            size_t used;
            rc = parse(c->plan + c->dirs[d], c->plan_len - c->dirs[d], &r, &used, c->e);
            if (!rc)
                rc = apply_meta(c, c->fds[c->depth], &r);
            if (!rc)
                c->dir_done[d] = 1;
        }
        close(c->fds[c->depth]);
        c->depth--;
    }
    return rc;
}

/* Closes the whole stack: the walk is back at DEST, where the next pass starts. */
static int leave_all(co *c)
{
    int rc = pop_to(c, 0);
    c->cur_len = 0;
    return rc;
}

/* Pushes fd (a directory whose path is path) on the stack. */
static int push(co *c, int fd, size_t dir, const char *path, size_t len)
{
    if (c->depth + 2 > c->cap) {
        size_t cap = c->cap * 2;
        int *fds = realloc(c->fds, cap * sizeof *fds);
        size_t *lv = fds ? realloc(c->level_dir, cap * sizeof *lv) : NULL;
        if (fds)
            c->fds = fds;
        if (lv)
            c->level_dir = lv;
        if (!fds || !lv) {
            close(fd);
            return ls_fail(c->e, LS_E_NOMEM, "out of memory");
        }
        c->cap = cap;
    }
    c->fds[++c->depth] = fd;
    c->level_dir[c->depth] = dir;
    memcpy(c->cur, path, len);
    c->cur_len = len;
    return 0;
}

/* Makes the stack hold the directories of parent (a path of len bytes, "" for DEST). */
static int enter(co *c, const char *parent, size_t len)
{
    /* The whole components parent shares with the current path stay open. */
    size_t i = 0, common = 0, keep = 0;
    while (i < len && i < c->cur_len && parent[i] == c->cur[i]) {
        i++;
        if ((i == len || parent[i] == '/') && (i == c->cur_len || c->cur[i] == '/')) {
            common = i;
            keep++;
        }
    }
    if (common == len && len == c->cur_len)
        return 0;       /* the same directory */
    int rc = pop_to(c, keep);
    if (rc)
        return rc;
    c->cur_len = common;
    size_t pos = common;
    while (pos < len) {
        if (parent[pos] == '/')
            pos++;
        size_t end = pos;
        while (end < len && parent[end] != '/')
            end++;
        char name[256];
        if (end - pos >= sizeof name)
            return os_fail(c, ENAMETOOLONG, "cannot make", parent, len);
        if (bad_component(parent + pos, end - pos))
            return ls_fail(c->e, LS_E_UNSAFE_PATH, "checkout plan: bad path %.*s",
                           (int)(len > 300 ? 300 : len), parent);
        memcpy(name, parent + pos, end - pos);
        name[end - pos] = 0;
        int fd = openat(c->fds[c->depth], name,
                        O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
            return os_fail(c, errno, "cannot open directory", parent, end);
        if ((rc = push(c, fd, NO_DIR, parent, end)))
            return rc;
        pos = end;
    }
    return 0;
}

/* Splits a record's path into the parent (entered) and the last component. */
static int locate(co *c, const char *path, size_t len, char name[256])
{
    size_t slash = len;
    while (slash > 0 && path[slash - 1] != '/')
        slash--;
    size_t nlen = len - slash;
    /* The image may hold a name longer than NAME_MAX; no Linux filesystem can make it. */
    if (nlen >= 256)
        return os_fail(c, ENAMETOOLONG, "cannot make", path, len);
    if (bad_component(path + slash, nlen))
        return ls_fail(c->e, LS_E_UNSAFE_PATH, "checkout plan: bad path %.*s",
                       (int)(len > 300 ? 300 : len), path);
    memcpy(name, path + slash, nlen);
    name[nlen] = 0;
    return enter(c, path, slash ? slash - 1 : 0);
}

static int here(co *c)
{
    return c->fds[c->depth];
}

/* Whether the owner can be set: as root always; otherwise only to ourselves (counted). */
static int want_owner(co *c, const rec *r)
{
    if (c->flags & LS_CHECKOUT_OWNERS)
        return 1;
    if (r->uid != c->euid || r->gid != c->egid)
        c->st->skipped_owners++;
    return 0;
}

/* The xattrs of a record that a checkout would set as root: for an entry with no descriptor
 * to set them through (a symlink, device node or fifo), what is skipped.  The plan's lengths
 * were checked when it was parsed. */
static uint64_t settable_xattrs(const rec *r)
{
    const uint8_t *p = r->xattrs, *end = r->xattrs + r->xattrs_len;
    uint64_t n = 0;
    while (p + 8 <= end) {
        uint32_t nlen = ls_get32(p), vlen = ls_get32(p + 4);
        if ((uint64_t)nlen + vlen > (uint64_t)(end - p - 8))
            break;
        n += (uint64_t)ls_xattr_applies((const char *)p + 8, nlen, 1);
        p += 8 + (size_t)nlen + vlen;
    }
    return n;
}

/* The xattrs of the namespaces ls_xattr_applies names (the others live in the records only);
 * one that needs root when we are not, or that the filesystem refuses, is counted. */
static int set_xattrs(co *c, int fd, const rec *r)
{
    const uint8_t *p = r->xattrs, *end = r->xattrs + r->xattrs_len;
    int owners = c->flags & LS_CHECKOUT_OWNERS;
    char name[256];
    while (p + 8 <= end) {
        uint32_t nlen = ls_get32(p), vlen = ls_get32(p + 4);
        if ((uint64_t)nlen + vlen > (uint64_t)(end - p - 8))
            return ls_fail(c->e, LS_E_CORRUPT, "checkout plan: bad xattrs");
        const char *xname = (const char *)p + 8;
        const uint8_t *val = p + 8 + nlen;
        p = val + vlen;
        if (!ls_xattr_applies(xname, nlen, owners)) {
            if (ls_xattr_applies(xname, nlen, 1))
                c->st->skipped_xattrs++;
            continue;
        }
        if (nlen < sizeof name && !memchr(xname, 0, nlen)) {
            memcpy(name, xname, nlen);
            name[nlen] = 0;
            if (fsetxattr(fd, name, val, vlen, 0)) {
                if (!ls_xattr_refused(fd, errno))
                    return os_fail(c, errno, "cannot set xattr on", r->path, r->path_len);
                c->st->skipped_xattrs++;
            }
        } else {
            c->st->skipped_xattrs++;
        }
    }
    return 0;
}

static struct timespec mtime_of(const rec *r, struct timespec ts[2])
{
    ts[0].tv_sec = ts[1].tv_sec = r->mtime;
    ts[0].tv_nsec = ts[1].tv_nsec = r->mtime_nsec;
    return ts[0];
}

/* Whether something just made already has the record's owner: we made it, and its group is
 * ours (no setgid directory above gave it another). */
static int owned_already(co *c, const rec *r)
{
    return c->own_group && r->uid == c->euid && r->gid == c->egid;
}

/* The permission bits to create a file or directory with, and what the umask leaves of them.
 * Not as root, a directory stays writable and searchable by us until its children are made. */
static uint32_t create_mode(co *c, const rec *r)
{
    uint32_t m = r->mode & 0777;
    if (r->type == LS_ENTRY_DIR && !(c->flags & LS_CHECKOUT_OWNERS))
        m |= 0700;
    return m;
}

static int is_root(const rec *r)
{
    return r->path_len == 1 && r->path[0] == '.';
}

/* Owner, mode, xattrs and times of something this call made and holds open; most entries
 * are made with their final owner and mode already, which saves two calls each.  DEST, the
 * plan's root, was not made from its record: its owner and mode are always set. */
static int apply_meta(co *c, int fd, const rec *r)
{
    int chowned = 0, dest = is_root(r);
    if ((dest || !owned_already(c, r)) && want_owner(c, r)) {
        if (fchown(fd, r->uid, r->gid))
            return os_fail(c, errno, "cannot set the owner of", r->path, r->path_len);
        chowned = 1;
    }
    /* After chown, which clears setuid/setgid bits. */
    if ((dest || chowned || (r->mode & 07777) != (create_mode(c, r) & ~c->umask)) &&
        fchmod(fd, r->mode & 07777))
        return os_fail(c, errno, "cannot set the mode of", r->path, r->path_len);
    int rc = set_xattrs(c, fd, r);
    if (rc)
        return rc;
    struct timespec ts[2];
    mtime_of(r, ts);
    if (futimens(fd, ts))
        return os_fail(c, errno, "cannot set the times of", r->path, r->path_len);
    return 0;
}

/* Copies bytes [off, off + len) of an object to the same place in dst. */
static int copy_range(co *c, int src, int dst, uint64_t off, uint64_t len, const rec *r)
{
    loff_t in = (loff_t)off, out = (loff_t)off;
    while (len > 0) {
        ssize_t n = -1;
        size_t want = len > (1u << 30) ? 1u << 30 : (size_t)len;
        if (!c->no_cfr) {
            if (c->flags & LS_CHECKOUT_COPY) {
                /* copy_file_range would share the blocks where it can: sendfile writes them. */
                off_t from = (off_t)in;
                n = lseek(dst, (off_t)out, SEEK_SET) < 0 ? -1 : sendfile(dst, src, &from, want);
                if (n > 0) {
                    in += n;
                    out += n;
                }
            } else {
                n = copy_file_range(src, &in, dst, &out, want, 0);
            }
            if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS ||
                          errno == EOPNOTSUPP)) {
                c->no_cfr = 1;
                continue;
            }
        } else {
            if (!c->copybuf && !(c->copybuf = malloc(1u << 20)))
                return ls_fail(c->e, LS_E_NOMEM, "out of memory");
            n = pread(src, c->copybuf, want < (1u << 20) ? want : 1u << 20, in);
            for (ssize_t done = 0; done < n;) {
                ssize_t w = pwrite(dst, c->copybuf + done, (size_t)(n - done), out + done);
                if (w < 0 && errno != EINTR)
                    return os_fail(c, errno, "cannot write", r->path, r->path_len);
                done += w > 0 ? w : 0;
            }
            if (n > 0) {
                in += n;
                out += n;
            }
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return os_fail(c, errno, "cannot copy into", r->path, r->path_len);
        }
        if (n == 0)
            return ls_fail(c->e, LS_E_CORRUPT, "object of %.*s is shorter than its record",
                           (int)(r->path_len > 300 ? 300 : r->path_len), r->path);
        len -= (uint64_t)n;
    }
    return 0;
}

/* Gives dst the content of src: a reflink where the filesystem has them (*cloned set), unless
 * LS_CHECKOUT_COPY asked for blocks of its own, else a copy. */
static int copy_content(co *c, int src, int dst, const rec *r, int *cloned)
{
    if (!c->no_reflink) {
        if (ioctl(dst, FICLONE, src) == 0) {
            *cloned = 1;
            return 0;
        }
        /* Not on this filesystem (ext4, or objects on another one): stop asking. */
        if (errno == EOPNOTSUPP || errno == ENOTTY || errno == EXDEV || errno == EINVAL)
            c->no_reflink = 1;
    }
    /* Objects keep zero blocks as holes (objstore.c); a copy keeps them too, segment by
     * segment, where copy_file_range alone would write the zeros out. */
    off_t hole = r->size >= LS_HOLE_BLOCK ? lseek(src, 0, SEEK_HOLE) : -1;
    if (hole < 0 || (uint64_t)hole >= r->size)
        return copy_range(c, src, dst, 0, r->size, r);
    if (lseek(src, 0, SEEK_END) != (off_t)r->size)
        return ls_fail(c->e, LS_E_CORRUPT, "object of %.*s is not the size of its record",
                       (int)(r->path_len > 300 ? 300 : r->path_len), r->path);
    for (uint64_t off = 0; off < r->size;) {
        off_t data = lseek(src, (off_t)off, SEEK_DATA), end;
        if (data < 0 && errno == ENXIO)
            break;                  /* only a hole is left */
        if (data < 0 || (end = lseek(src, data, SEEK_HOLE)) < 0)
            return os_fail(c, errno, "cannot read the object of", r->path, r->path_len);
        int rc = copy_range(c, src, dst, (uint64_t)data, (uint64_t)(end - data), r);
        if (rc)
            return rc;
        off = (uint64_t)end;
    }
    if (ftruncate(dst, (off_t)r->size))
        return os_fail(c, errno, "cannot write", r->path, r->path_len);
    return 0;
}

/* An independent file with the record's content (from src, an open object or file). */
static int make_copy(co *c, int src, const char *name, const rec *r)
{
    int dst = openat(here(c), name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                     create_mode(c, r));
    if (dst < 0)
        return os_fail(c, errno, "cannot create", r->path, r->path_len);
    int cloned = 0;
    int rc = src >= 0 ? copy_content(c, src, dst, r, &cloned) : 0;
    if (!rc)
        rc = apply_meta(c, dst, r);
    close(dst);
    if (!rc && cloned)
        c->st->reflinked++;
    else if (!rc)
        c->st->copied++;
    return rc;
}

static int make_file(co *c, const char *name, const rec *r)
{
    c->st->files++;
    if (r->size == 0)
        return make_copy(c, -1, name, r);
    char obj[66];
    ls_object_make_path(r->object_id, obj);
    if (c->flags & LS_CHECKOUT_LINK) {
        if (linkat(c->objects_fd, obj, here(c), name, 0) == 0) {
            c->st->hardlinked++;
            return 0;
        }
        if (errno == ENOENT)
            return ls_fail(c->e, -ENOENT, "object %s of %.*s is missing from the store (run "
                           "fsck)", obj, (int)(r->path_len > 300 ? 300 : r->path_len), r->path);
        if (errno != EMLINK && errno != EXDEV && errno != EPERM)
            return os_fail(c, errno, "cannot link", r->path, r->path_len);
    }
    int src = openat(c->objects_fd, obj, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (src < 0)
        return errno == ENOENT
            ? ls_fail(c->e, -ENOENT, "object %s of %.*s is missing from the store (run fsck)",
                      obj, (int)(r->path_len > 300 ? 300 : r->path_len), r->path)
            : os_fail(c, errno, "cannot open the object of", r->path, r->path_len);
    int rc = make_copy(c, src, name, r);
    close(src);
    return rc;
}

/* Opens the directory holding path (relative to DEST) on its own, without the stack. */
static int open_parent(co *c, const char *path, size_t len, char name[256])
{
    size_t slash = len;
    while (slash > 0 && path[slash - 1] != '/')
        slash--;
    if (len - slash >= 256 || bad_component(path + slash, len - slash))
        return ls_fail(c->e, LS_E_UNSAFE_PATH, "checkout plan: bad link %.*s",
                       (int)(len > 300 ? 300 : len), path);
    memcpy(name, path + slash, len - slash);
    name[len - slash] = 0;
    int fd = dup(c->dest_fd);
    size_t pos = 0, end_all = slash ? slash - 1 : 0;
    while (fd >= 0 && pos < end_all) {
        size_t end = pos;
        while (end < end_all && path[end] != '/')
            end++;
        char comp[256];
        if (end - pos >= sizeof comp || bad_component(path + pos, end - pos)) {
            close(fd);
            return ls_fail(c->e, LS_E_UNSAFE_PATH, "checkout plan: bad link %.*s",
                           (int)(len > 300 ? 300 : len), path);
        }
        memcpy(comp, path + pos, end - pos);
        comp[end - pos] = 0;
        int next = openat(fd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        close(fd);
        fd = next;
        pos = end + 1;
    }
    if (fd < 0)
        return os_fail(c, errno, "cannot open the directory of", path, len);
    return fd;
}

static int make_hardlink(co *c, const char *name, const rec *r)
{
    char src_name[256];
    int dir = open_parent(c, r->link, r->link_len, src_name);
    if (dir < 0)
        return dir;
    int rc = 0;
    struct stat st;
    if (fstatat(dir, src_name, &st, AT_SYMLINK_NOFOLLOW))
        rc = os_fail(c, errno, "cannot find hardlink target", r->link, r->link_len);
    else if (linkat(dir, src_name, here(c), name, 0) == 0)
        ;
    else if (errno == EMLINK && S_ISREG(st.st_mode)) {
        /* The target is a hardlinked object at its limit: this name gets a copy of it. */
        int src = openat(dir, src_name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (src < 0) {
            rc = os_fail(c, errno, "cannot open", r->link, r->link_len);
        } else {
            rec meta = *r;
            meta.mode = st.st_mode & 07777;
            meta.uid = st.st_uid;
            meta.gid = st.st_gid;
            meta.size = (uint64_t)st.st_size;
            meta.mtime = st.st_mtim.tv_sec;
            meta.mtime_nsec = (uint32_t)st.st_mtim.tv_nsec;
            meta.xattrs_len = 0;
            rc = make_copy(c, src, name, &meta);
            close(src);
        }
    } else {
        rc = os_fail(c, errno, "cannot link", r->path, r->path_len);
    }
    close(dir);
    if (!rc) {
        if (S_ISREG(st.st_mode))
            c->st->files++;
        else
            c->st->specials++;
    }
    return rc;
}

static int make_symlink(co *c, const char *name, const rec *r)
{
    char target[LS_MAX_PATH + 1];
    memcpy(target, r->link, r->link_len);
    target[r->link_len] = 0;
    if (symlinkat(target, here(c), name))
        return os_fail(c, errno, "cannot make symlink", r->path, r->path_len);
    if (!owned_already(c, r) && want_owner(c, r) &&
        fchownat(here(c), name, r->uid, r->gid, AT_SYMLINK_NOFOLLOW))
        return os_fail(c, errno, "cannot set the owner of", r->path, r->path_len);
    c->st->skipped_xattrs += settable_xattrs(r);    /* no fd to set them through */
    struct timespec ts[2];
    mtime_of(r, ts);
    if (utimensat(here(c), name, ts, AT_SYMLINK_NOFOLLOW))
        return os_fail(c, errno, "cannot set the times of", r->path, r->path_len);
    c->st->symlinks++;
    return 0;
}

static int make_special(co *c, const char *name, const rec *r)
{
    mode_t kind = r->type == LS_ENTRY_CHAR ? S_IFCHR
                : r->type == LS_ENTRY_BLOCK ? S_IFBLK : S_IFIFO;
    if (kind != S_IFIFO && !(c->flags & LS_CHECKOUT_OWNERS)) {
        c->st->skipped_specials++;      /* only root may make device nodes */
        return 0;
    }
    if (mknodat(here(c), name, kind | 0600, makedev(r->devmajor, r->devminor)))
        return os_fail(c, errno, "cannot make", r->path, r->path_len);
    /* Opening a device or fifo could block or act: set metadata through the name instead. */
    if (want_owner(c, r) && fchownat(here(c), name, r->uid, r->gid, AT_SYMLINK_NOFOLLOW))
        return os_fail(c, errno, "cannot set the owner of", r->path, r->path_len);
    if (fchmodat(here(c), name, r->mode & 07777, 0))
        return os_fail(c, errno, "cannot set the mode of", r->path, r->path_len);
    c->st->skipped_xattrs += settable_xattrs(r);
    struct timespec ts[2];
    mtime_of(r, ts);
    if (utimensat(here(c), name, ts, AT_SYMLINK_NOFOLLOW))
        return os_fail(c, errno, "cannot set the times of", r->path, r->path_len);
    c->st->specials++;
    return 0;
}

static int remember_dir(co *c, size_t offset)
{
    if (c->ndirs == c->dirs_cap) {
        size_t cap = c->dirs_cap ? c->dirs_cap * 2 : 256;
        size_t *d = realloc(c->dirs, cap * sizeof *d);
        if (d)
            c->dirs = d;
        uint8_t *done = d ? realloc(c->dir_done, cap) : NULL;
        if (done)
            c->dir_done = done;
        if (!d || !done)
            return ls_fail(c->e, LS_E_NOMEM, "out of memory");
        c->dirs_cap = cap;
    }
    c->dir_done[c->ndirs] = 0;
    c->dirs[c->ndirs++] = offset;
    return 0;
}

static int one(co *c, const rec *r)
{
    if (is_root(r))
        return r->type == LS_ENTRY_DIR ? 0 : ls_fail(c->e, LS_E_CORRUPT,
                                                      "checkout plan: the root is not a directory");
    char name[256];
    int rc = locate(c, r->path, r->path_len, name);
    if (rc)
        return rc;
    switch (r->type) {
    case LS_ENTRY_DIR: {
        if (mkdirat(here(c), name, create_mode(c, r)))
            return os_fail(c, errno, "cannot make directory", r->path, r->path_len);
        c->st->dirs++;
        /* Its children come next: enter it now, and finish it when it is left. */
        int fd = openat(here(c), name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
            return os_fail(c, errno, "cannot open directory", r->path, r->path_len);
        return push(c, fd, c->ndirs - 1, r->path, r->path_len);
    }
    case LS_ENTRY_FILE:
        return make_file(c, name, r);
    case LS_ENTRY_HARDLINK:
        return make_hardlink(c, name, r);
    case LS_ENTRY_SYMLINK:
        return make_symlink(c, name, r);
    case LS_ENTRY_CHAR:
    case LS_ENTRY_BLOCK:
    case LS_ENTRY_FIFO:
        return make_special(c, name, r);
    default:
        return ls_fail(c->e, LS_E_CORRUPT, "checkout plan: unknown entry type %d", r->type);
    }
}

/* Directories not finished on the way (the root, or a plan not in tree order): deepest first
 * (the plan has parents first, so reverse order). */
static int finish_dirs(co *c, const uint8_t *plan, size_t plan_len)
{
    for (size_t i = c->ndirs; i-- > 0;) {
        if (c->dir_done[i])
            continue;
        rec r;
        size_t used;
        int rc = parse(plan + c->dirs[i], plan_len - c->dirs[i], &r, &used, c->e);
        if (rc)
            return rc;
        int fd;
        if (is_root(&r)) {
            fd = dup(c->dest_fd);
        } else {
            char name[256];
            int dir = open_parent(c, r.path, r.path_len, name);
            if (dir < 0)
                return dir;
            fd = openat(dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            close(dir);
        }
        if (fd < 0)
            return os_fail(c, errno, "cannot open directory", r.path, r.path_len);
        rc = apply_meta(c, fd, &r);
        close(fd);
        if (rc)
            return rc;
    }
    return 0;
}

/* ---- The passes ----------------------------------------------------------------------- */

enum { PASS_DIRS, PASS_ENTRIES, PASS_HARDLINKS };

static int in_pass(int pass, int type)
{
    if (pass == PASS_DIRS)
        return type == LS_ENTRY_DIR;
    if (pass == PASS_HARDLINKS)
        return type == LS_ENTRY_HARDLINK;
    return type != LS_ENTRY_DIR && type != LS_ENTRY_HARDLINK;
}

/* Makes the records of the plan's bytes [from, to) that belong to pass, on c's stack. */
static int run_pass(co *c, int pass, size_t from, size_t to)
{
    size_t used;
    for (size_t off = from; off < to; off += used) {
        rec r;
        int rc = parse(c->plan + off, c->plan_len - off, &r, &used, c->e);
        if (rc)
            return rc;
        if (!in_pass(pass, r.type))
            continue;
        if (c->stop && __atomic_load_n(c->stop, __ATOMIC_RELAXED))
            return 0;
        if (ls_progress_cancelled(c->progress))
            return ls_fail(c->e, LS_E_CANCELLED, "checkout cancelled");
        if (pass == PASS_DIRS && (rc = remember_dir(c, off)))
            return rc;
        if ((rc = one(c, &r)))
            return rc;
        ls_progress_add(c->progress, r.type == LS_ENTRY_FILE ? r.size : 0, 1);
    }
    return leave_all(c);
}

/* Finishes every directory (owner, mode, xattrs, times) once everything in it is made:
 * walking them in plan order, each is finished as the walk leaves it, deepest first. */
static int finish_pass(co *c)
{
    for (size_t i = 0; i < c->ndirs; i++) {
        rec r;
        size_t used;
        int rc = parse(c->plan + c->dirs[i], c->plan_len - c->dirs[i], &r, &used, c->e);
        if (rc)
            return rc;
        if (is_root(&r))
            continue;           /* DEST itself: finish_dirs, last */
        char name[256];
        if ((rc = locate(c, r.path, r.path_len, name)))
            return rc;
        int fd = openat(here(c), name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
            return os_fail(c, errno, "cannot open directory", r.path, r.path_len);
        if ((rc = push(c, fd, i, r.path, r.path_len)))
            return rc;
    }
    int rc = leave_all(c);
    return rc ? rc : finish_dirs(c, c->plan, c->plan_len);
}

/* A walk of its own (stack, counts, error, copy buffer) over the shared, read-only rest of
 * base: one per thread. */
static int walk_init(co *w, const co *base, ls_checkout_stats *st, ls_err *e)
{
    *w = *base;
    w->st = st;
    w->e = e;
    w->depth = w->cur_len = 0;
    w->copybuf = NULL;
    w->cap = 64;
    w->fds = malloc(w->cap * sizeof *w->fds);
    w->level_dir = malloc(w->cap * sizeof *w->level_dir);
    if (!w->fds || !w->level_dir)
        return ls_fail(e, LS_E_NOMEM, "out of memory");
    w->fds[0] = w->dest_fd;
    return 0;
}

static void walk_free(co *w)
{
    while (w->fds && w->depth > 0)
        close(w->fds[w->depth--]);
    free(w->fds);
    free(w->level_dir);
    free(w->copybuf);
    w->fds = NULL;
    w->level_dir = NULL;
    w->copybuf = NULL;
}

static void add_stats(ls_checkout_stats *to, const ls_checkout_stats *from)
{
    to->files += from->files;
    to->dirs += from->dirs;
    to->symlinks += from->symlinks;
    to->specials += from->specials;
    to->hardlinked += from->hardlinked;
    to->reflinked += from->reflinked;
    to->copied += from->copied;
    to->skipped_specials += from->skipped_specials;
    to->skipped_owners += from->skipped_owners;
    to->skipped_xattrs += from->skipped_xattrs;
}

/* The second thread's share of the entries pass. */
typedef struct part {
    co w;
    ls_checkout_stats st;
    ls_err e;
    size_t from, to;
    int rc;
    int *stop;
} part;

static void *part_main(void *arg)
{
    part *p = arg;
    p->rc = run_pass(&p->w, PASS_ENTRIES, p->from, p->to);
    if (p->rc)
        __atomic_store_n(p->stop, 1, __ATOMIC_RELAXED);
    return NULL;
}

/* Where to cut the plan so that each side holds about half of the entries pass's records. */
static size_t middle(const co *c, size_t entries)
{
    size_t seen = 0, used = 0;
    for (size_t off = 0; off < c->plan_len; off += used) {
        /* The first pass checked every record. */
        used = ls_get32(c->plan + off + LS_RECORD_OFF_LEN);
        if (in_pass(PASS_ENTRIES, c->plan[off + LS_RECORD_OFF_TYPE]) && ++seen > entries / 2)
            return off;
    }
    return c->plan_len;
}

/*
 * Four passes, because creating inodes is most of a checkout's time and two threads creating
 * them in different directories run almost twice as fast (the kernel scales): first every
 * directory, in plan order; then everything else but hardlinks between entries, in two halves
 * of the plan at once, each thread with its own stack of open directories; then those
 * hardlinks, whose targets may be in either half; last, every directory's metadata, deepest
 * first.  A plan too small to gain from a thread is made by this one alone.
 */
#define PARALLEL_MIN 512

int ls_tree_checkout(const char *objects_dir, const char *dest, const uint8_t *plan,
                     size_t plan_len, int flags, ls_checkout_stats *stats,
                     ls_progress *progress, char *err, size_t errlen)
{
    ls_err e;
    co c = {0};
    part second = {0};
    int stop = 0, started = 0;
    c.flags = flags;
    c.st = stats;
    c.e = &e;
    c.euid = geteuid();
    c.egid = getegid();
    c.umask = ls_umask();
    c.stop = &stop;
    c.progress = progress;
    c.no_reflink = (flags & LS_CHECKOUT_COPY) != 0;
    memset(stats, 0, sizeof *stats);
    int rc = 0;
    if ((flags & LS_CHECKOUT_COPY) && (flags & LS_CHECKOUT_LINK)) {
        c.objects_fd = c.dest_fd = -1;
        rc = ls_fail(&e, LS_E_STATE, "checkout: copies and hardlinks both asked for");
        goto out;
    }
    c.objects_fd = open(objects_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    c.dest_fd = open(dest, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    c.plan = plan;
    c.plan_len = plan_len;
    if (c.objects_fd < 0) {
        rc = ls_fail(&e, -errno, "cannot open %s: %s", objects_dir, strerror(errno));
        goto out;
    }
    if (c.dest_fd < 0) {
        rc = ls_fail(&e, -errno, "cannot open %s: %s", dest, strerror(errno));
        goto out;
    }
    struct stat dst;
    c.own_group = fstat(c.dest_fd, &dst) == 0 && !(dst.st_mode & S_ISGID);
    if ((rc = walk_init(&c, &c, stats, &e)))
        goto out;

    c.defer_meta = 1;
    if ((rc = run_pass(&c, PASS_DIRS, 0, plan_len)))
        goto out;
    c.defer_meta = 0;

    size_t entries = 0, used;
    for (size_t off = 0; off < plan_len; off += used) {
        used = ls_get32(plan + off + LS_RECORD_OFF_LEN);
        entries += in_pass(PASS_ENTRIES, plan[off + LS_RECORD_OFF_TYPE]);
    }
    size_t mid = entries >= PARALLEL_MIN ? middle(&c, entries) : plan_len;
    pthread_t tid;
    if (mid < plan_len) {
        second.from = mid;
        second.to = plan_len;
        second.stop = &stop;
        if (walk_init(&second.w, &c, &second.st, &second.e) == 0)
            started = pthread_create(&tid, NULL, part_main, &second) == 0;
    }
    /* Without the thread (a small plan, or none could start) this one does both halves. */
    rc = run_pass(&c, PASS_ENTRIES, 0, started ? mid : plan_len);
    if (rc)
        __atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
    if (started) {
        pthread_join(tid, NULL);
        add_stats(stats, &second.st);
        if (!rc && second.rc) {
            rc = second.rc;
            e = second.e;
        }
    }
    if (rc)
        goto out;

    if ((rc = run_pass(&c, PASS_HARDLINKS, 0, plan_len)))
        goto out;
    rc = finish_pass(&c);
out:
    walk_free(&second.w);
    walk_free(&c);
    if (c.dest_fd >= 0)
        close(c.dest_fd);
    if (c.objects_fd >= 0)
        close(c.objects_fd);
    free(c.dirs);
    free(c.dir_done);
    if (rc)
        snprintf(err, errlen, "%s", e.msg);
    return rc;
}
