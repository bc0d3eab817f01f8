/*
 * backend.h — the vtable behind every traffic_backend handle.
 *
 * The built-in backends (memory, sqlite, redis) implement this interface, and so can a user's
 * own backend. The public calls of traffic.h validate their arguments before they reach a
 * backend, so an implementation can rely on:
 *   - key is non-NULL and 1..TRAFFIC_KEY_MAX bytes long, klen is strlen(key);
 *   - ttl_ms is 0 (no expiry) or a positive number of milliseconds;
 *   - out-pointers are non-NULL (traffic_increment passes a scratch when the user gave NULL);
 *   - val is non-NULL (an empty value is passed as a pointer to a zero-length buffer).
 * Backend-specific limits (a smaller key_max, the value limit) are the backend's to check.
 *
 * A backend allocates a struct whose first member is `traffic_backend base`, calls
 * traffic_backend_init(&self->base, &ops) and hands &self->base to the user. traffic_close
 * calls ops->close, which frees everything. Failures return a TRAFFIC_E… status and should
 * leave a message with traffic_backend_fail.
 */
#ifndef TRAFFIC_BACKEND_H
#define TRAFFIC_BACKEND_H

#include "traffic.h"

#include <stdarg.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct traffic_backend_ops {
    const char *name; /* "memory", "sqlite", "redis", ... */
    int (*close)(traffic_backend *b);
    int (*get)(traffic_backend *b, const char *key, size_t klen, void *buf, size_t cap, size_t *len);
    int (*set)(traffic_backend *b, const char *key, size_t klen, const void *val, size_t len, int64_t ttl_ms);
    int (*del)(traffic_backend *b, const char *key, size_t klen);
    int (*exists)(traffic_backend *b, const char *key, size_t klen); /* 1, 0 or < 0 */
    int (*increment)(traffic_backend *b, const char *key, size_t klen, int64_t amount, int64_t ttl_ms, int64_t *out);
    /* remaining TTL in milliseconds, -1 for none */
    int (*ttl)(traffic_backend *b, const char *key, size_t klen, int64_t *ttl_ms);
    int (*clear)(traffic_backend *b);
    int (*stats)(traffic_backend *b, struct traffic_stats *out); /* out is zeroed by the caller */
    int (*start_cleanup)(traffic_backend *b);                    /* may be NULL: TRAFFIC_ENOTSUP */
    int (*stop_cleanup)(traffic_backend *b);                     /* may be NULL: TRAFFIC_OK */
    /* Reserved for the rate-limit algorithms of SPEC.md ("Next"): compare-and-swap of the
     * entry's 64-bit word, creating it with ttl_ms when absent and expected == 0.
     * May be NULL until a backend supports it. */
    int (*cas)(traffic_backend *b, const char *key, size_t klen, uint64_t expected, uint64_t desired, int64_t ttl_ms,
               uint64_t *actual);
} traffic_backend_ops;

struct traffic_backend {
    const traffic_backend_ops *ops;
    uint64_t id; /* unique per handle in this process; keys the per-thread error messages */
};

/* Fills in the common part of a new handle. */
TRAFFIC_API void traffic_backend_init(traffic_backend *b, const traffic_backend_ops *ops);

/* Records a message for the calling thread's last failure on b (b may be NULL while opening)
 * and returns status, so that `return traffic_backend_fail(b, TRAFFIC_EINVAL, "...", ...);`
 * reads naturally. */
TRAFFIC_API int traffic_backend_fail(const traffic_backend *b, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
TRAFFIC_API int traffic_backend_vfail(const traffic_backend *b, int status, const char *fmt, va_list ap);

#ifdef __cplusplus
}
#endif
#endif /* TRAFFIC_BACKEND_H */
