/*
 * api.c — the public calls of traffic.h: argument validation done once for every backend,
 * URL dispatch, status names, per-thread error messages and the stats JSON.
 *
 * Error messages are per thread and per handle: each thread keeps a few (handle id, message)
 * pairs, so a failure in one thread never overwrites what another thread is about to read.
 * Handle ids come from a process-wide counter and are never reused, so a message cannot leak
 * from a closed handle to a new one allocated at the same address.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fallback.h"
#include "internal.h"
#include "limit/limit.h"
#include "traffic/backend.h"

/* ---- status names ---------------------------------------------------------------------- */

const char *traffic_strerror(int status)
{
    switch (status) {
    case TRAFFIC_OK: return "TRAFFIC_OK: success";
    case TRAFFIC_ENOTFOUND: return "TRAFFIC_ENOTFOUND: key not found or expired";
    case TRAFFIC_EINVAL: return "TRAFFIC_EINVAL: invalid argument or URL";
    case TRAFFIC_ETOOBIG: return "TRAFFIC_ETOOBIG: key or value too big for this store";
    case TRAFFIC_EFULL: return "TRAFFIC_EFULL: store full and nothing could be evicted";
    case TRAFFIC_ETYPE: return "TRAFFIC_ETYPE: entry is not a counter";
    case TRAFFIC_EOVERFLOW: return "TRAFFIC_EOVERFLOW: counter would overflow int64";
    case TRAFFIC_EIO: return "TRAFFIC_EIO: input/output error";
    case TRAFFIC_EUNAVAILABLE: return "TRAFFIC_EUNAVAILABLE: server unavailable";
    case TRAFFIC_ETIMEDOUT: return "TRAFFIC_ETIMEDOUT: operation timed out";
    case TRAFFIC_ECORRUPT: return "TRAFFIC_ECORRUPT: store failed validation";
    case TRAFFIC_ENOMEM: return "TRAFFIC_ENOMEM: out of memory";
    case TRAFFIC_ERANGE: return "TRAFFIC_ERANGE: buffer too small";
    case TRAFFIC_EPERM: return "TRAFFIC_EPERM: permission denied";
    case TRAFFIC_ENOTSUP: return "TRAFFIC_ENOTSUP: not supported by this build or backend";
    default: return "TRAFFIC_E?: unknown status";
    }
}

/* ---- per-thread error messages --------------------------------------------------------- */

#define ERRMSG_SLOTS 4 /* handles whose last message a thread remembers */
#define ERRMSG_LEN   256

struct errmsg_slot {
    uint64_t id; /* 0: traffic_open and friends (no handle yet) */
    uint64_t age;
    char msg[ERRMSG_LEN];
};
static _Thread_local struct errmsg_slot errmsg_tls[ERRMSG_SLOTS + 1];
static _Thread_local uint64_t errmsg_clock;
static _Atomic uint64_t handle_ids = 1;

static struct errmsg_slot *errmsg_find(uint64_t id, int create)
{
    if (id == 0) return &errmsg_tls[ERRMSG_SLOTS]; /* the open slot never gets evicted */
    struct errmsg_slot *oldest = &errmsg_tls[0];
    for (int i = 0; i < ERRMSG_SLOTS; i++) {
        if (errmsg_tls[i].id == id) return &errmsg_tls[i];
        if (errmsg_tls[i].age < oldest->age) oldest = &errmsg_tls[i];
    }
    if (!create) return NULL;
    oldest->id = id;
    return oldest;
}

int traffic_backend_vfail(const traffic_backend *b, int status, const char *fmt, va_list ap)
{
    struct errmsg_slot *s = errmsg_find(b ? b->id : 0, 1);
    s->age = ++errmsg_clock;
    vsnprintf(s->msg, sizeof s->msg, fmt, ap);
    return status;
}

int traffic_backend_fail(const traffic_backend *b, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    traffic_backend_vfail(b, status, fmt, ap);
    va_end(ap);
    return status;
}

const char *traffic_errmsg(const traffic_backend *b)
{
    struct errmsg_slot *s = errmsg_find(b ? b->id : 0, 0);
    return s ? s->msg : "";
}

void traffic_backend_init(traffic_backend *b, const traffic_backend_ops *ops)
{
    b->ops = ops;
    b->id = atomic_fetch_add_explicit(&handle_ids, 1, memory_order_relaxed);
}

/* ---- shared validation ----------------------------------------------------------------- */

int64_t ttl_seconds_to_ms(double ttl)
{
    if (ttl == 0) return 0;
    double ms = ceil(ttl * 1000.0);
    return ms < 1 ? 1 : (int64_t)ms;
}

static int check_handle(const traffic_backend *b)
{
    if (!b || !b->ops) return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "handle is NULL");
    return TRAFFIC_OK;
}

static int check_key(const traffic_backend *b, const char *key, size_t *klen)
{
    if (!key) return traffic_backend_fail(b, TRAFFIC_EINVAL, "key is NULL");
    size_t n = strnlen(key, TRAFFIC_KEY_MAX + 1);
    if (n == 0) return traffic_backend_fail(b, TRAFFIC_EINVAL, "key is empty");
    if (n > TRAFFIC_KEY_MAX)
        return traffic_backend_fail(b, TRAFFIC_ETOOBIG, "key is longer than %d bytes", TRAFFIC_KEY_MAX);
    *klen = n;
    return TRAFFIC_OK;
}

static int check_ttl(const traffic_backend *b, double ttl, int64_t *ms)
{
    if (isnan(ttl) || isinf(ttl) || ttl < 0 || ttl > TRAFFIC_TTL_MAX_S)
        return traffic_backend_fail(b, TRAFFIC_EINVAL, "ttl %g is not 0 or a finite number of seconds in (0, %g]", ttl,
                                    TRAFFIC_TTL_MAX_S);
    *ms = ttl_seconds_to_ms(ttl);
    return TRAFFIC_OK;
}

/* ---- opening --------------------------------------------------------------------------- */

/* Opens the backend of a parsed URL; its scheme's opener consumes the parameters. */
static int open_parsed(url *u, traffic_backend **out)
{
    if (strcmp(u->scheme, "memory") == 0) return memory_open_url(u, out);
#ifdef TRAFFIC_HAVE_SQLITE
    if (strcmp(u->scheme, "sqlite") == 0) return sqlite_open_url(u, out);
#endif
#ifdef TRAFFIC_HAVE_REDIS
    if (strncmp(u->scheme, "redis", 5) == 0) return redis_open_url(u, out);
#endif
    if (strcmp(u->scheme, "sqlite") == 0 || strncmp(u->scheme, "redis", 5) == 0)
        return traffic_backend_fail(NULL, TRAFFIC_ENOTSUP, "the %s backend is not built into this library", u->scheme);
    return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "unknown URL scheme \"%s\" (want memory, sqlite or redis)",
                                u->scheme);
}

/* ---- fallback= --------------------------------------------------------------------------
 * The parameters of the pair are consumed here, before the primary's opener checks its own;
 * the value of fallback= is a URL of its own (decoded once already by url_parse), opened
 * like any other except that it may not have a fallback itself. traffic.h, "When the store
 * is down", says why and how it is written. */

/* Re-records the last open failure with what it concerned in front. */
static int open_fail_about(int rc, const char *what)
{
    char msg[ERRMSG_LEN];
    snprintf(msg, sizeof msg, "%s", traffic_errmsg(NULL));
    return traffic_backend_fail(NULL, rc, "%s: %s", what, msg);
}

static int fallback_params(url *u, const char **text, fallback_options *o)
{
    *text = url_param_get(u, "fallback");
    *o = (fallback_options){.backoff_s = FALLBACK_BACKOFF_S, .backoff_max_s = FALLBACK_BACKOFF_MAX_S};
    CHECK(url_param_double(u, "fallback_backoff", 0.001, 3600, &o->backoff_s));
    CHECK(url_param_double(u, "fallback_backoff_max", 0.001, 86400, &o->backoff_max_s));
    if (o->backoff_s > o->backoff_max_s)
        return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "fallback_backoff %g is above fallback_backoff_max %g",
                                    o->backoff_s, o->backoff_max_s);
    if (!**text) return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "fallback= is empty: want the URL of a store");
    return TRAFFIC_OK;
}

static int open_fallback(url *primary, const char *text, traffic_backend **out)
{
    url f;
    int rc = url_parse(text, &f);
    if (rc) return open_fail_about(rc, "fallback URL");
    if (url_param_get(&f, "fallback"))
        rc = traffic_backend_fail(NULL, TRAFFIC_EINVAL,
                                  "the fallback %s://%.64s has a fallback of its own: one level only (a chain would "
                                  "add up the timeouts of its stores)",
                                  f.scheme, f.rest);
    else if (strcmp(f.scheme, primary->scheme) == 0 && strcmp(f.rest, primary->rest) == 0)
        rc = traffic_backend_fail(NULL, TRAFFIC_EINVAL, "the fallback %s://%.64s is the primary store itself", f.scheme,
                                  f.rest);
    else if ((rc = open_parsed(&f, out)))
        rc = open_fail_about(rc, "fallback");
    url_free(&f);
    return rc;
}

static int open_with_fallback(const char *text, url *u, traffic_backend **out)
{
    static const char *const pair_params[] = {"fallback", "fallback_backoff", "fallback_backoff_max", NULL};
    const char *fb_text;
    fallback_options o;
    traffic_backend *primary = NULL, *fallback = NULL;
    char *primary_text = NULL;
    CHECK(fallback_params(u, &fb_text, &o));
    CHECK(open_fallback(u, fb_text, &fallback));
    int rc = url_text_without(text, pair_params, &primary_text);
    if (!rc) rc = open_parsed(u, &primary);
    /* Down now: the pair opens on its fallback and opens the primary when it is back. */
    if (rc == TRAFFIC_EUNAVAILABLE || rc == TRAFFIC_ETIMEDOUT) {
        primary = NULL;
        rc = TRAFFIC_OK;
    }
    if (rc)
        traffic_close(fallback);
    else
        rc = fallback_create(primary_text, primary, fallback, &o, out);
    free(primary_text);
    return rc;
}

int traffic_open(const char *url_text, traffic_backend **out)
{
    if (!out) return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "out is NULL");
    *out = NULL;
    url u;
    CHECK(url_parse(url_text, &u));
    int rc = url_param_get(&u, "fallback") ? open_with_fallback(url_text, &u, out) : open_parsed(&u, out);
    url_free(&u);
    return rc;
}

int traffic_close(traffic_backend *b)
{
    if (!b) return TRAFFIC_OK;
    if (!b->ops) return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "handle is not open");
    return b->ops->close(b);
}

/* ---- operations ------------------------------------------------------------------------ */

int traffic_get(traffic_backend *b, const char *key, void *buf, size_t cap, size_t *len)
{
    size_t klen = 0;
    CHECK(check_handle(b));
    CHECK(check_key(b, key, &klen));
    if (!len) return traffic_backend_fail(b, TRAFFIC_EINVAL, "len is NULL");
    if (!buf && cap) return traffic_backend_fail(b, TRAFFIC_EINVAL, "buf is NULL but cap is %zu", cap);
    return b->ops->get(b, key, klen, buf, cap, len);
}

int traffic_set(traffic_backend *b, const char *key, const void *val, size_t len, double ttl)
{
    size_t klen = 0;
    int64_t ms = 0;
    CHECK(check_handle(b));
    CHECK(check_key(b, key, &klen));
    if (!val && len) return traffic_backend_fail(b, TRAFFIC_EINVAL, "val is NULL but len is %zu", len);
    CHECK(check_ttl(b, ttl, &ms));
    return b->ops->set(b, key, klen, val ? val : "", len, ms);
}

int traffic_delete(traffic_backend *b, const char *key)
{
    size_t klen = 0;
    CHECK(check_handle(b));
    CHECK(check_key(b, key, &klen));
    return b->ops->del(b, key, klen);
}

int traffic_exists(traffic_backend *b, const char *key)
{
    size_t klen = 0;
    CHECK(check_handle(b));
    CHECK(check_key(b, key, &klen));
    return b->ops->exists(b, key, klen);
}

int traffic_increment(traffic_backend *b, const char *key, int64_t amount, double ttl, int64_t *out)
{
    size_t klen = 0;
    int64_t ms = 0, scratch;
    CHECK(check_handle(b));
    CHECK(check_key(b, key, &klen));
    CHECK(check_ttl(b, ttl, &ms));
    return b->ops->increment(b, key, klen, amount, ms, out ? out : &scratch);
}

int traffic_ttl(traffic_backend *b, const char *key, double *seconds)
{
    size_t klen = 0;
    int64_t ms = 0;
    CHECK(check_handle(b));
    CHECK(check_key(b, key, &klen));
    if (!seconds) return traffic_backend_fail(b, TRAFFIC_EINVAL, "seconds is NULL");
    CHECK(b->ops->ttl(b, key, klen, &ms));
    *seconds = ms < 0 ? -1.0 : (double)ms / 1000.0;
    return TRAFFIC_OK;
}

static int limit_call(traffic_backend *b, const char *key, const traffic_rule *rule, int64_t cost, int64_t now_us,
                      traffic_decision *out)
{
    size_t klen = 0;
    traffic_decision scratch;
    char msg[200];
    CHECK(check_handle(b));
    CHECK(check_key(b, key, &klen));
    if (!limit_rule_accept(rule, msg, sizeof msg)) return traffic_backend_fail(b, TRAFFIC_EINVAL, "%s", msg);
    if (cost < 0) return traffic_backend_fail(b, TRAFFIC_EINVAL, "cost %lld is negative", (long long)cost);
    if (!b->ops->limit)
        return traffic_backend_fail(b, TRAFFIC_ENOTSUP, "the %s backend has no rate-limit decisions", b->ops->name);
    return b->ops->limit(b, key, klen, rule, cost, now_us, out ? out : &scratch);
}

int traffic_limit(traffic_backend *b, const char *key, const traffic_rule *rule, int64_t cost, traffic_decision *out)
{
    return limit_call(b, key, rule, cost, -1, out);
}

/* 2^52 µs (142 years): with B I <= 2^51 too, every time a backend computes stays below 2^53,
 * exact in Lua's doubles. */

int traffic_limit_at(traffic_backend *b, const char *key, const traffic_rule *rule, int64_t cost, int64_t now_us,
                     traffic_decision *out)
{
    CHECK(check_handle(b));
    if (now_us < 0 || now_us >= LIMIT_NOW_MAX)
        return traffic_backend_fail(b, TRAFFIC_EINVAL, "now_us %lld is not in [0, 2^52)", (long long)now_us);
    return limit_call(b, key, rule, cost, now_us, out);
}

int traffic_clear(traffic_backend *b)
{
    CHECK(check_handle(b));
    return b->ops->clear(b);
}

int traffic_stats(traffic_backend *b, struct traffic_stats *out)
{
    CHECK(check_handle(b));
    if (!out) return traffic_backend_fail(b, TRAFFIC_EINVAL, "out is NULL");
    memset(out, 0, sizeof *out);
    out->backend = b->ops->name;
    return b->ops->stats(b, out);
}

/* The stats struct may grow only into its reserved words: its size is part of the ABI. */
_Static_assert(sizeof(struct traffic_stats) == sizeof(const char *) + 28 * sizeof(uint64_t),
               "struct traffic_stats changed size");

int traffic_stats_json(traffic_backend *b, char *buf, size_t cap)
{
    struct traffic_stats s;
    CHECK(traffic_stats(b, &s));
    if (!buf && cap) return traffic_backend_fail(b, TRAFFIC_EINVAL, "buf is NULL but cap is %zu", cap);
    const char *serving = s.serving == TRAFFIC_SERVING_PRIMARY    ? "\"primary\""
                          : s.serving == TRAFFIC_SERVING_FALLBACK ? "\"fallback\""
                                                                  : "null";
#define U(f) (unsigned long long)s.f
    int n = snprintf(buf, cap,
                     "{\"backend\":\"%s\",\"keys\":%llu,\"capacity\":%llu,\"max_size\":%llu,\"bytes_used\":%llu,"
                     "\"bytes_resident\":%llu,\"hits\":%llu,\"misses\":%llu,\"sets\":%llu,\"increments\":%llu,"
                     "\"deletes\":%llu,\"evictions\":%llu,\"expirations\":%llu,\"attached\":%llu,"
                     "\"recovered\":%llu,\"epoch\":%llu,\"reaper_pid\":%lld,\"reaper_runs\":%llu,"
                     "\"expired_pending\":%llu,\"wal_bytes\":%llu,\"busy_retries\":%llu,\"decisions\":%llu,"
                     "\"denied\":%llu,\"serving\":%s,\"serving_since_ms\":%llu,\"switches\":%llu,\"probes\":%llu,"
                     "\"primary_failures\":%llu,\"huge_bytes\":%llu}",
                     s.backend ? s.backend : "", U(keys), U(capacity), U(max_size), U(bytes_used), U(bytes_resident),
                     U(hits), U(misses), U(sets), U(increments), U(deletes), U(evictions), U(expirations), U(attached),
                     U(recovered), U(epoch), (long long)s.reaper_pid, U(reaper_runs), U(expired_pending), U(wal_bytes),
                     U(busy_retries), U(decisions), U(denied), serving, U(serving_since_ms), U(switches), U(probes),
                     U(primary_failures), U(huge_bytes));
#undef U
    if (n < 0) return traffic_backend_fail(b, TRAFFIC_EIO, "formatting stats failed");
    if ((size_t)n >= cap && buf)
        return traffic_backend_fail(b, TRAFFIC_ERANGE, "stats JSON needs %d bytes plus the NUL, cap is %zu", n, cap);
    return n;
}

int traffic_start_cleanup(traffic_backend *b)
{
    CHECK(check_handle(b));
    if (!b->ops->start_cleanup)
        return traffic_backend_fail(b, TRAFFIC_ENOTSUP, "the %s backend has no background cleanup", b->ops->name);
    return b->ops->start_cleanup(b);
}

int traffic_stop_cleanup(traffic_backend *b)
{
    CHECK(check_handle(b));
    return b->ops->stop_cleanup ? b->ops->stop_cleanup(b) : TRAFFIC_OK;
}
