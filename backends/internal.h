/*
 * internal.h — what the dispatch layer (api.c) and the built-in backends share, and nothing
 * public: the openers the dispatch calls for each URL scheme, and the conversions every
 * backend needs once (TTL seconds to milliseconds, stats to JSON).
 */
#ifndef TRAFFIC_BACKENDS_INTERNAL_H
#define TRAFFIC_BACKENDS_INTERNAL_H

#include "traffic/backend.h"
#include "url.h"

/* Opens a backend from a parsed URL; each consumes its parameters and calls url_check_unused. */
int memory_open_url(url *u, traffic_backend **out);
#ifdef TRAFFIC_HAVE_SQLITE
int sqlite_open_url(url *u, traffic_backend **out);
#endif
#ifdef TRAFFIC_HAVE_REDIS
int redis_open_url(url *u, traffic_backend **out);
#endif

/* Seconds (validated: finite, >= 0, <= TRAFFIC_TTL_MAX_S) to milliseconds, rounding a positive
 * TTL up so that it never becomes 0 ("no expiry"). */
#define TRAFFIC_TTL_MAX_S 1e12
int64_t ttl_seconds_to_ms(double ttl);

/* Returns from the calling function with expr's status when it is an error (< 0). */
#define CHECK(expr)                                                                                                    \
    do {                                                                                                               \
        int rc_ = (expr);                                                                                              \
        if (rc_ < 0) return rc_;                                                                                       \
    } while (0)

#endif
