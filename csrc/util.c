/*
 * util.c - error messages and the growable byte buffer shared by the core's components.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
}
