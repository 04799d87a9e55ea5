/*
 * fuzz_tar.c - libFuzzer target for the tar reader, through the ingest call that uses it.
 *
 * The first input byte picks how the rest is cut into feeds (1..64 bytes, or whole), so the
 * reader's state machine is exercised at every split point.  No store: the target parses and
 * hashes only, which is where untrusted bytes meet the core.
 */
#include <stdint.h>
#include <stddef.h>

#include "layerstore.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    size_t piece = data[0] < 192 ? (size_t)(data[0] % 64) + 1 : size;
    data++;
    size--;
    ls_ingest *g = ls_ingest_new(NULL);
    if (!g)
        return 0;
    const uint8_t *records, *raw;
    size_t records_len, raw_len;
    int rc = 0;
    for (size_t pos = 0; pos < size && rc == 0; pos += piece) {
        size_t n = size - pos < piece ? size - pos : piece;
        rc = ls_ingest_feed(g, data + pos, n);
        ls_ingest_take(g, &records, &records_len, &raw, &raw_len);
    }
    if (rc == 0) {
        ls_ingest_stats stats;
        ls_ingest_finish(g, &stats);
        ls_ingest_take(g, &records, &records_len, &raw, &raw_len);
    }
    ls_ingest_free(g);
    return 0;
}
