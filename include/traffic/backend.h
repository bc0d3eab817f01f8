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
    /* One rate-limit decision (traffic_limit). May be NULL: TRAFFIC_ENOTSUP. The dispatch has
     * validated rule (see traffic_limit_check) and cost (>= 0). now_us is the instant to
     * decide at in the store's clock, or -1 for "read the clock". A backend must:
     *   - make each decision on a key linearizable with every other decision, delete, set and
     *     clear of that key, across all processes and hosts that share the store, and never
     *     apply a decision twice or half (a crash applies all of it or nothing);
     *   - compute it with traffic_limit_apply on the key's state (or the same arithmetic),
     *     storing the new state only when that returns 1, with a TTL of at least
     *     reset_after from the moment of the store;
     *   - answer TRAFFIC_ETYPE for a key holding bytes, a counter or another algorithm's state. */
    int (*limit)(traffic_backend *b, const char *key, size_t klen, const traffic_rule *rule, int64_t cost,
                 int64_t now_us, traffic_decision *out);
    /* Lists keys (traffic_scan). May be NULL: TRAFFIC_ENOTSUP. glob is NULL (every key) or a
     * pattern of at most TRAFFIC_GLOB_MAX bytes; fn is non-NULL. A backend must:
     *   - call fn once for each key live for the whole scan whose name matches glob as
     *     traffic_glob_match says (at least once if the store cannot promise more, as Redis),
     *     never for a key that was not live at some moment of the scan, never for an expired
     *     one; with the kind and the remaining TTL that traffic_ttl would have given;
     *   - stop as soon as fn returns non-zero, and return that value;
     *   - call fn holding nothing that a writer of the store, or a call of fn on this handle,
     *     could wait for (a lock, a read transaction, a pinned epoch, a pooled connection),
     *     and hold any of them only for a bounded batch of work. */
    int (*scan)(traffic_backend *b, const char *glob, traffic_scan_fn fn, void *ctx);
    /* One cleanup pass now (traffic_reap). May be NULL: TRAFFIC_ENOTSUP. removed is non-NULL
     * and 0 on entry: add the entries reclaimed. */
    int (*reap)(traffic_backend *b, uint64_t *removed);
} traffic_backend_ops;

struct traffic_backend {
    const traffic_backend_ops *ops;
    uint64_t id; /* unique per handle in this process; keys the per-thread error messages */
};

/* ---- the algorithms' pure function --------------------------------------------------------
 * The state of one key under one algorithm (the formulas are in traffic.h, "Rate limits"):
 *   fixed window            a = S (window start, µs), b = N (count)
 *   sliding window counter  a = i (window index),     b = P, c = C (counts)
 *   token / leaky bucket    a = T (µs)
 *   sliding window          log[0..nlog): admitted (t_us, cost), oldest first; log_cap is the
 *                           room of the array (traffic_limit_apply never writes beyond it and
 *                           needs log_cap >= limit)
 * All zero (and nlog 0) is the unused state. */
typedef struct traffic_limit_entry {
    int64_t t_us, n;
} traffic_limit_entry;
typedef struct traffic_limit_state {
    int64_t a, b, c;
    traffic_limit_entry *log;
    size_t nlog, log_cap;
} traffic_limit_state;

/* Checks a rule against the bounds of traffic.h. TRAFFIC_OK, or TRAFFIC_EINVAL with the reason
 * in msg (msg may be NULL). */
TRAFFIC_API int traffic_limit_check(const traffic_rule *rule, char *msg, size_t msglen);

/* Decides a request of `cost` at now_us on state *st under a checked rule: fills *out and
 * updates *st. Returns 1 if *st changed and must be stored, 0 if not (a denial, a peek or a
 * state that only aged), or TRAFFIC_EINVAL: a log state with log_cap < limit, now_us outside
 * [0, 2^62), or a state that no decision could have left, as a damaged store may hand over
 * (a time outside (-2^62, 2^62), a window count outside [0, TRAFFIC_WINDOW_LIMIT_MAX], a log
 * entry of fewer than 1 or more than TRAFFIC_SLIDING_WINDOW_LIMIT_MAX requests; a backend
 * reports it as TRAFFIC_ECORRUPT). */
TRAFFIC_API int traffic_limit_apply(const traffic_rule *rule, traffic_limit_state *st, int64_t now_us, int64_t cost,
                                    traffic_decision *out);

/* 1 if the bytes s[0..len) match glob (NUL-terminated; traffic_scan's syntax, which is
 * Redis's MATCH), else 0. The matcher of the memory and SQLite backends' scans, for custom
 * backends to share. */
TRAFFIC_API int traffic_glob_match(const char *glob, const char *s, size_t len);

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
