/*
 * record.c - reads entry records (layout in layerstore.h) back, for checkout and export.
 *
 * Records come from the index, which a user can damage: every length is checked before any
 * variable part is touched, so a damaged batch is an error, never a read out of bounds.
 */
#include <string.h>

#include "ls_internal.h"

_Static_assert(LS_RECORD_OFF_XATTRS_LEN + 4 == LS_RECORD_FIXED,
               "the last fixed field ends the fixed part");

int ls_record_parse(const uint8_t *p, size_t left, ls_record *r, size_t *used,
                    const char *what, ls_err *e)
{
    if (left < LS_RECORD_FIXED)
        return ls_fail(e, LS_E_CORRUPT, "%s: truncated record", what);
    uint32_t len = ls_get32(p + LS_RECORD_OFF_LEN);
    uint32_t plen = ls_get32(p + LS_RECORD_OFF_PATH_LEN),
             llen = ls_get32(p + LS_RECORD_OFF_LINK_LEN),
             ulen = ls_get32(p + LS_RECORD_OFF_UNAME_LEN),
             glen = ls_get32(p + LS_RECORD_OFF_GNAME_LEN),
             x = ls_get32(p + LS_RECORD_OFF_XATTRS_LEN);
    if (len < LS_RECORD_FIXED || len > left)
        return ls_fail(e, LS_E_CORRUPT, "%s: bad record length", what);
    if ((uint64_t)plen + llen + ulen + glen + x != len - LS_RECORD_FIXED || plen == 0 ||
        plen > LS_MAX_PATH || llen > LS_MAX_PATH)
        return ls_fail(e, LS_E_CORRUPT, "%s: bad record lengths", what);
    r->type = p[LS_RECORD_OFF_TYPE];
    r->flags = p[LS_RECORD_OFF_FLAGS];
    r->mode = ls_get32(p + LS_RECORD_OFF_MODE);
    r->uid = ls_get32(p + LS_RECORD_OFF_UID);
    r->gid = ls_get32(p + LS_RECORD_OFF_GID);
    r->devmajor = ls_get32(p + LS_RECORD_OFF_DEVMAJOR);
    r->devminor = ls_get32(p + LS_RECORD_OFF_DEVMINOR);
    r->mtime_nsec = ls_get32(p + LS_RECORD_OFF_MTIME_NSEC);
    r->mtime = (int64_t)ls_get64(p + LS_RECORD_OFF_MTIME);
    r->size = ls_get64(p + LS_RECORD_OFF_SIZE);
    r->raw_before = ls_get64(p + LS_RECORD_OFF_RAW_LEN);
    r->object_id = p + LS_RECORD_OFF_OBJECT_ID;
    r->content_hash = p + LS_RECORD_OFF_CONTENT_HASH;
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
