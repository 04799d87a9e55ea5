/*
 * mount.c - overlay mounts for runtimes/overlay.py: one system call each, no fork and exec of
 * mount(8), and the errno handed back as it is so that the caller can say what went wrong
 * (needs root, no overlay in this kernel, upper and work dir on different filesystems, ...).
 */
#include <errno.h>
#include <sys/mount.h>

#include "layerstore.h"

int ls_overlay_mount(const char *target, const char *options)
{
    return mount("overlay", target, "overlay", 0, options) ? -errno : 0;
}

int ls_overlay_unmount(const char *target)
{
    return umount2(target, 0) ? -errno : 0;
}
