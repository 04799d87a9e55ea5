/*
 * util.c - error messages and the growable byte buffer shared by the core's components.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
