/*
 * fallback.h — the composite store behind fallback=URL (fallback.c), as the dispatch (api.c)
 * builds it from a parsed URL. fallback.c itself sees only the public vtable (backend.h): it
 * is a custom backend made of two other handles.
 */
#ifndef TRAFFIC_BACKENDS_FALLBACK_H
#define TRAFFIC_BACKENDS_FALLBACK_H

#include "traffic/backend.h"

#define FALLBACK_BACKOFF_S     0.05 /* default first interval between probes (fallback_backoff) */
#define FALLBACK_BACKOFF_MAX_S 5.0  /* default longest interval (fallback_backoff_max) */

typedef struct fallback_options {
    double backoff_s;     /* the first back-off interval, seconds */
    double backoff_max_s; /* the cap, seconds (>= backoff_s) */
} fallback_options;

/* Makes the composite of primary (NULL: it could not be reached at open, and is opened from
 * primary_url when a probe finds it back) and fallback, and takes both handles, on failure
 * too (closing them). primary_url: the primary's URL without fallback= and its companions;
 * its text up to '?' names the breaker. TRAFFIC_OK with *out; TRAFFIC_EINVAL when the
 * breaker's keys do not fit the fallback table; TRAFFIC_ENOMEM; a memory table's failures. */
int fallback_create(const char *primary_url, traffic_backend *primary, traffic_backend *fallback,
                    const fallback_options *o, traffic_backend **out);

#ifdef TRAFFIC_HAVE_REDIS
/* Defined by the Redis backend (redis.c): b, if a Redis handle, is the primary of a pair, so
 * its calls connect whenever they need to instead of failing at once during its own
 * reconnect back-off; the pair's circuit breaker spaces the attempts already, and closes on
 * a probe that another process may have made. Any other handle: nothing. */
void redis_breaker_owned(traffic_backend *b);
#endif

#endif
