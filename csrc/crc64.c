/*
 * crc64.c - CRC-64/ISO as Go's hash/crc64 computes it with crc64.ISO, for tar-split.
 *
 * containers/storage keeps, per layer, a tar-split file: the raw tar headers and, for each
 * file, its size and CRC-64 (Go's crc64.MakeTable(crc64.ISO): reflected polynomial
 * 0xD800000000000000, initial value and final xor all ones).  It rebuilds the layer tar for
 * `podman save` and `push` from the file contents and checks each one against that CRC, so
 * exporting a store to containers-storage computes one per stored object.  It is computed
 * there, from the objects, and not at ingest: most stores never serve podman, and a record
 * field would change the layout every stored layer already has.
 *
 * Slicing-by-8 (eight 256-entry tables, one 8-byte word per step) runs at a few GB/s, so
 * reading the objects, not the CRC, is what an export waits for.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ls_internal.h"

#define POLY 0xD800000000000000ULL
#define READ_CHUNK (1u << 20)

static uint64_t table[8][256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void make_table(void)
{
    for (unsigned i = 0; i < 256; i++) {
        uint64_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ POLY : c >> 1;
        table[0][i] = c;
    }
    for (unsigned i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xff];
}

uint64_t ls_crc64(uint64_t crc, const uint8_t *p, size_t len)
{
    pthread_once(&table_once, make_table);
    crc = ~crc;
    while (len > 0 && ((uintptr_t)p & 7)) {
        crc = table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        len--;
    }
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        w = __builtin_bswap64(w);
#endif
        crc ^= w;
        crc = table[7][crc & 0xff] ^ table[6][(crc >> 8) & 0xff] ^
              table[5][(crc >> 16) & 0xff] ^ table[4][(crc >> 24) & 0xff] ^
              table[3][(crc >> 32) & 0xff] ^ table[2][(crc >> 40) & 0xff] ^
              table[1][(crc >> 48) & 0xff] ^ table[0][crc >> 56];
        p += 8;
        len -= 8;
    }
    while (len-- > 0)
        crc = table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

int ls_objects_crc64(const char *objects_dir, const uint8_t *ids, size_t n, uint64_t *crcs,
                     ls_progress *progress, char *err, size_t errlen)
{
    ls_err e = {{0}};
    int rc = 0;
    int dfd = open(objects_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        rc = ls_fail(&e, -errno, "cannot open %s: %s", objects_dir, strerror(errno));
        goto out;
    }
    uint8_t *buf = malloc(READ_CHUNK);
    if (buf == NULL) {
        close(dfd);
        rc = ls_fail(&e, LS_E_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (ls_progress_cancelled(progress)) {
            rc = ls_fail(&e, LS_E_CANCELLED, "cancelled");
            break;
        }
        char name[66];     /* "ab/cdef...", see ls_object_make_path */
        ls_object_make_path(ids + 32 * i, name);
        int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) {
            rc = ls_fail(&e, -errno, "cannot open object %s: %s", name, strerror(errno));
            break;
        }
        uint64_t crc = 0, bytes = 0;
        for (;;) {
            ssize_t r = read(fd, buf, READ_CHUNK);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                rc = ls_fail(&e, -errno, "cannot read object %s: %s", name, strerror(errno));
                break;
            }
            if (r == 0)
                break;
            crc = ls_crc64(crc, buf, (size_t)r);
            bytes += (uint64_t)r;
        }
        close(fd);
        crcs[i] = crc;
        ls_progress_add(progress, bytes, 1);
    }
    free(buf);
    close(dfd);
out:
    if (rc && err != NULL && errlen > 0)
        snprintf(err, errlen, "%s", e.msg);
    return rc;
}
