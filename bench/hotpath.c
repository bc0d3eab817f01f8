/*
 * hotpath.c — traffic-hotpath: N operations of one kind on a memory:// table, for counting
 * instructions per operation with callgrind or perf, where time is too noisy to compare.
 *
 *   traffic-hotpath OP N [KEYS]
 *     OP    get          traffic_get of a 16-byte value (KEYS prefilled)
 *           get-counter  traffic_get of a counter (formats its decimal text)
 *           incr-hit     traffic_increment of an existing counter, no TTL
 *           incr-hit-ttl traffic_increment of an existing counter that has a TTL (reads the clock)
 *           incr-insert  traffic_increment creating a new key each time (N fresh keys)
 *           set          traffic_set of a 16-byte value over an existing one
 *     N     operations (0: setup only, to subtract)
 *     KEYS  keys cycled through (default 1000)
 *
 * Everything but the N operations (open, prefill, formatting the keys) happens outside
 * hotpath_run, so `valgrind --tool=callgrind --toggle-collect=hotpath_run` counts exactly the
 * operations plus a few instructions of loop; dividing by N gives instructions per operation.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <traffic/traffic.h>

enum { H_GET, H_GET_COUNTER, H_INCR_HIT, H_INCR_HIT_TTL, H_INCR_INSERT, H_SET };
static const char *const names[] = {"get", "get-counter", "incr-hit", "incr-hit-ttl", "incr-insert", "set"};

#define STRIDE 24

/* The measured part. Not static and never inlined, so callgrind can toggle on its name. */
__attribute__((noinline)) long hotpath_run(traffic_backend *b, int op, const char *keys, unsigned nkeys,
                                           unsigned long n)
{
    long bad = 0;
    char buf[64];
    size_t len;
    int64_t out;
    unsigned k = 0;
    for (unsigned long i = 0; i < n; i++) {
        const char *key = keys + (size_t)k * STRIDE;
        if (++k == nkeys) k = 0;
        int rc;
        switch (op) {
        case H_GET:
        case H_GET_COUNTER: rc = traffic_get(b, key, buf, sizeof buf, &len); break;
        case H_INCR_HIT:
        case H_INCR_INSERT: rc = traffic_increment(b, key, 1, 0, &out); break;
        case H_INCR_HIT_TTL: rc = traffic_increment(b, key, 1, 3600, &out); break;
        default: rc = traffic_set(b, key, "0123456789abcdef", 16, 0); break;
        }
        bad += rc != 0;
    }
    return bad;
}

int main(int argc, char **argv)
{
    int op = -1;
    if (argc >= 3)
        for (int i = 0; i < (int)(sizeof names / sizeof names[0]); i++)
            if (strcmp(argv[1], names[i]) == 0) op = i;
    if (op < 0) {
        fprintf(stderr, "usage: traffic-hotpath get|get-counter|incr-hit|incr-hit-ttl|incr-insert|set N [KEYS]\n");
        return 2;
    }
    unsigned long n = strtoul(argv[2], NULL, 10);
    unsigned nkeys = argc > 3 ? (unsigned)strtoul(argv[3], NULL, 10) : 1000;
    if (nkeys == 0) nkeys = 1;
    /* incr-insert: N fresh keys, each inserted once, after KEYS prefilled ones */
    unsigned long total = op == H_INCR_INSERT ? nkeys + n : nkeys;
    char url[96];
    snprintf(url, sizeof url, "memory://?max_size=%lu", total);
    traffic_backend *b;
    int rc = traffic_open(url, &b);
    if (rc) {
        fprintf(stderr, "traffic-hotpath: %s: %s (%s)\n", url, traffic_strerror(rc), traffic_errmsg(NULL));
        return 1;
    }
    char *keys = malloc((size_t)total * STRIDE);
    if (!keys) return 1;
    for (unsigned long i = 0; i < total; i++)
        snprintf(keys + i * STRIDE, STRIDE, "key:%010u", (unsigned)i);
    for (unsigned i = 0; i < nkeys; i++) {
        const char *key = keys + (size_t)i * STRIDE;
        int64_t out;
        if (op == H_GET || op == H_SET)
            rc = traffic_set(b, key, "fedcba9876543210", 16, 0);
        else
            rc = traffic_increment(b, key, 1, op == H_INCR_HIT_TTL ? 3600 : 0, &out);
        if (rc) {
            fprintf(stderr, "traffic-hotpath: prefill: %s\n", traffic_strerror(rc));
            return 1;
        }
    }
    long bad = op == H_INCR_INSERT ? hotpath_run(b, op, keys + (size_t)nkeys * STRIDE, (unsigned)n ? (unsigned)n : 1, n)
                                   : hotpath_run(b, op, keys, nkeys, n);
    printf("%s: %lu operations on %u keys, %ld failed\n", names[op], n, nkeys, bad);
    traffic_close(b);
    free(keys);
    return bad ? 1 : 0;
}
