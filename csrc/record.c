/*
 * record.c - reads entry records (layout in layerstore.h) back, for checkout and export.
 *
 * Records come from the index, which a user can damage: every length is checked before any
 * variable part is touched, so a damaged batch is an error, never a read out of bounds.
 */
#include <string.h>

#include "ls_internal.h"

int ls_record_parse(const uint8_t *p, size_t left, ls_record *r, size_t *used,
                    const char *what, ls_err *e)
{
    if (left < LS_RECORD_FIXED)
        return ls_fail(e, LS_E_CORRUPT, "%s: truncated record", what);
    uint32_t len = ls_get32(p);
    uint32_t plen = ls_get32(p + 120), llen = ls_get32(p + 124), ulen = ls_get32(p + 128),
             glen = ls_get32(p + 132), x = ls_get32(p + 136);
    if (len < LS_RECORD_FIXED || len > left)
        return ls_fail(e, LS_E_CORRUPT, "%s: bad record length", what);
    if ((uint64_t)plen + llen + ulen + glen + x != len - LS_RECORD_FIXED || plen == 0 ||
        plen > LS_MAX_PATH || llen > LS_MAX_PATH)
        return ls_fail(e, LS_E_CORRUPT, "%s: bad record lengths", what);
    r->type = p[4];
    r->flags = p[5];
    r->mode = ls_get32(p + 8);
    r->uid = ls_get32(p + 12);
    r->gid = ls_get32(p + 16);
    r->devmajor = ls_get32(p + 20);
    r->devminor = ls_get32(p + 24);
    r->mtime_nsec = ls_get32(p + 28);
    r->mtime = (int64_t)ls_get64(p + 32);
    r->size = ls_get64(p + 40);
    r->raw_before = ls_get64(p + 48);
    r->object_id = p + 56;
    r->content_hash = p + 88;
    r->path = (const char *)p + LS_RECORD_FIXED;
    r->path_len = plen;
    r->link = r->path + plen;
    r->link_len = llen;
    r->xattrs = (const uint8_t *)r->link + llen + ulen + glen;
    r->xattrs_len = x;
    if (memchr(r->path, 0, plen) || memchr(r->link, 0, llen))
        return ls_fail(e, LS_E_CORRUPT, "%s: NUL in a path", what);
    *used = len;
    return 0;
}
