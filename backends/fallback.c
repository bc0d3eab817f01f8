/*
 * fallback.c — a store that answers from a second store while the first is down (fallback=).
 *
 * A custom backend on the public vtable, made of two handles: every call goes to the
 * primary, and one that the primary fails with TRAFFIC_EUNAVAILABLE / TRAFFIC_ETIMEDOUT is
 * answered by the fallback. What makes it worth having is the circuit breaker in front of
 * the primary, and where that breaker lives: in a memory table that every process of the
 * host maps (the fallback itself when it is one). Each call reads the breaker's state with
 * one lookup, so the first process that sees the primary fail sends every process to the
 * fallback, and one call per back-off interval - for the whole host - goes to the primary to
 * see whether it is back. The state is changed only by the holder of a lease (a counter key
 * that one increment at a time finds at 1), so that no two processes probe, trip or close
 * at once; a holder killed mid-call is replaced when the lease's TTL runs out.
 *
 * Nothing here knows what the two stores are: the table is reached through its vtable like
 * any store, and a primary that could not be reached when the handle was opened is opened
 * again, from its URL, by the first probe that finds it back.
 */
#include "fallback.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- tuning ----------------------------------------------------------------------------
 * The lease must outlast the longest call of the primary (Redis: about 4 x its timeout for
 * a call that opens a connection); a prober killed mid-call holds it this long. */
#define LEASE_MS          10000
#define BREAKER_MAGIC     0x31424654u /* "TFB1": a state key written by this file */
#define PRIVATE_TABLE_MAX 64          /* keys of the private table of a non-memory fallback */
#define KEY_LEN           64

/* The breaker, as stored in the table (host-local: native byte order). Written only by the
 * lease holder, read by every call. open_until == 0 is closed; otherwise the primary is
 * skipped until open_until, then probed. fails is kept when the breaker closes, so that a
 * primary that comes and goes backs off further each time, and forgotten once the primary
 * has served for 2 x the cap (see breaker_trip). */
typedef struct breaker_state {
    uint32_t magic;
    uint32_t fails;     /* failures in a row: the back-off's exponent */
    int64_t open_until; /* CLOCK_MONOTONIC µs (shared by the host's processes); 0: closed */
    int64_t since_ms;   /* CLOCK_REALTIME ms of the last switch, for the stats */
} breaker_state;

typedef struct fallback_backend {
    traffic_backend base;
    /* NULL until the primary could be opened; set once (release), read with acquire. */
    _Atomic(traffic_backend *) primary;
    /* The pid of the thread's process opening the primary now, 0 if none: one opener per
     * process, and a pid left by a parent that forked mid-open is taken over by the child. */
    _Atomic int opener;
    traffic_backend *fallback;
    traffic_backend *table; /* where the breaker lives: the fallback, or a private table */
    char *primary_url;
    int64_t backoff_us, backoff_max_us;
    int64_t opened_ms;                 /* "serving since" before the state key exists */
    _Atomic uint64_t primary_failures; /* this handle's; relaxed: a statistic */
    /* The open_until this process last read, or 0. Until then the breaker cannot close (only
     * a probe closes it, and none starts before open_until), so calls of this process go to
     * the fallback without reading the table. Relaxed: a stale value is an earlier, shorter
     * interval, after which the table is read again. */
    _Atomic int64_t open_until_seen;
    char k_state[KEY_LEN], k_lease[KEY_LEN], k_switches[KEY_LEN], k_probes[KEY_LEN];
    size_t l_state, l_lease, l_switches, l_probes;
} fallback_backend;

#define FB(b)   ((fallback_backend *)(b))
#define FB_BUSY 1 /* the primary is being opened by another thread: use the fallback */

static int is_outage(int rc)
{
    return rc == TRAFFIC_EUNAVAILABLE || rc == TRAFFIC_ETIMEDOUT;
}

static int64_t clock_us(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* A number in [0, 1) for the jitter: splitmix64 of the clock, the pid and a per-thread
 * count, so that processes forked from one parent do not draw the same sequence. */
static double jitter_unit(void)
{
    static _Thread_local uint64_t n;
    uint64_t x = (uint64_t)clock_us(CLOCK_MONOTONIC) ^ ((uint64_t)getpid() << 40) ^ (++n * 0x9e3779b97f4a7c15ull);
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    x ^= x >> 31;
    return (double)(x >> 11) / 9007199254740992.0;
}

/* ---- the breaker's state in the table ---------------------------------------------------- */

/* 1 and *s when the state key holds a state, 0 when it is absent or unreadable (then the
 * breaker counts as closed: the primary is tried, as without a breaker). */
static int state_read(fallback_backend *f, breaker_state *s)
{
    size_t len = 0;
    int rc = f->table->ops->get(f->table, f->k_state, f->l_state, s, sizeof *s, &len);
    return rc == TRAFFIC_OK && len == sizeof *s && s->magic == BREAKER_MAGIC;
}

static int state_write(fallback_backend *f, breaker_state *s)
{
    s->magic = BREAKER_MAGIC;
    return f->table->ops->set(f->table, f->k_state, f->l_state, s, sizeof *s, 0);
}

static void count(fallback_backend *f, const char *key, size_t klen)
{
    int64_t v;
    f->table->ops->increment(f->table, key, klen, 1, 0, &v);
}

static uint64_t counter(fallback_backend *f, const char *key, size_t klen)
{
    char buf[32];
    size_t len = 0;
    if (f->table->ops->get(f->table, key, klen, buf, sizeof buf - 1, &len) != TRAFFIC_OK) return 0;
    buf[len] = '\0';
    return strtoull(buf, NULL, 10);
}

/* The lease: the increment that finds the counter at 1 holds it, until it deletes the key or
 * the TTL runs out. An increment fails only when the table does (then nobody changes the
 * state through this process: the primary is tried by every call, as without a breaker). */
static int lease_take(fallback_backend *f)
{
    int64_t n = 0;
    return f->table->ops->increment(f->table, f->k_lease, f->l_lease, 1, LEASE_MS, &n) == TRAFFIC_OK && n == 1;
}

static void lease_give(fallback_backend *f)
{
    f->table->ops->del(f->table, f->k_lease, f->l_lease);
}

/* The n-th interval: min(cap, base 2^(n-1)) times a factor in [0.5, 1). */
static int64_t backoff_us(const fallback_backend *f, uint32_t fails)
{
    double b = (double)f->backoff_us * ldexp(1.0, fails > 41 ? 40 : (int)fails - 1);
    if (b > (double)f->backoff_max_us) b = (double)f->backoff_max_us;
    return (int64_t)(b * (0.5 + 0.5 * jitter_unit()));
}

enum route { TO_PRIMARY, TO_FALLBACK, TO_PROBE };

/* Where a call goes. TO_PROBE: the interval is over and this call holds the lease; it must
 * end with breaker_probed. */
static enum route breaker_route(fallback_backend *f)
{
    breaker_state s;
    int64_t seen = atomic_load_explicit(&f->open_until_seen, memory_order_relaxed);
    if (seen && clock_us(CLOCK_MONOTONIC) < seen) return TO_FALLBACK;
    if (!state_read(f, &s) || !s.open_until) return TO_PRIMARY;
    if (clock_us(CLOCK_MONOTONIC) < s.open_until) {
        atomic_store_explicit(&f->open_until_seen, s.open_until, memory_order_relaxed);
        return TO_FALLBACK;
    }
    if (!lease_take(f)) return TO_FALLBACK; /* another call probes */
    /* Ours to change now; someone may have closed or re-armed it before we took the lease. */
    if (!state_read(f, &s) || !s.open_until) {
        lease_give(f);
        return TO_PRIMARY;
    }
    if (clock_us(CLOCK_MONOTONIC) < s.open_until) {
        lease_give(f);
        return TO_FALLBACK;
    }
    count(f, f->k_probes, f->l_probes);
    return TO_PROBE;
}

/* A call that found the breaker closed failed on the primary: open it, unless another call
 * did already (or is doing it now: then its state is written before its lease goes). */
static void breaker_trip(fallback_backend *f)
{
    breaker_state s;
    if (state_read(f, &s) && s.open_until) return;
    if (!lease_take(f)) return;
    int have = state_read(f, &s);
    if (!have || !s.open_until) {
        int64_t now_ms = clock_us(CLOCK_REALTIME) / 1000;
        int recent = have && s.fails && now_ms - s.since_ms < 2 * f->backoff_max_us / 1000;
        s.fails = recent ? s.fails + 1 : 1;
        s.open_until = clock_us(CLOCK_MONOTONIC) + backoff_us(f, s.fails);
        s.since_ms = now_ms;
        if (state_write(f, &s) == TRAFFIC_OK) count(f, f->k_switches, f->l_switches);
    }
    lease_give(f);
}

/* The probe's answer (the lease is held): the primary is back if it answered anything but
 * an outage; else the next, longer, interval begins. */
static void breaker_probed(fallback_backend *f, int rc)
{
    breaker_state s;
    if (rc != FB_BUSY && state_read(f, &s)) {
        if (is_outage(rc)) {
            s.fails++;
            s.open_until = clock_us(CLOCK_MONOTONIC) + backoff_us(f, s.fails);
            state_write(f, &s);
        } else {
            s.open_until = 0;
            s.since_ms = clock_us(CLOCK_REALTIME) / 1000;
            if (state_write(f, &s) == TRAFFIC_OK) count(f, f->k_switches, f->l_switches);
        }
    }
    lease_give(f);
}

/* ---- calls ------------------------------------------------------------------------------- */

enum op { OP_GET, OP_SET, OP_DEL, OP_EXISTS, OP_INCR, OP_TTL, OP_CLEAR, OP_STATS, OP_LIMIT, OP_SCAN };

/* One call of the vtable, replayable on either store. */
typedef struct call {
    enum op op;
    const char *key;
    size_t klen;
    void *buf;
    size_t cap, *len;
    const void *val;
    size_t vlen;
    int64_t ttl_ms, amount, *out;
    const traffic_rule *rule;
    int64_t cost, now_us;
    traffic_decision *dec;
    struct traffic_stats *stats;
    const char *glob; /* OP_SCAN */
    traffic_scan_fn fn;
    void *ctx;
    uint64_t reported; /* OP_SCAN: keys passed to fn so far */
    int by_fallback;   /* set by dispatch: which store answered */
} call;

/* OP_SCAN's fn, counting what the caller was shown. */
static int scan_relay(void *ctx, const char *key, size_t klen, int kind, double ttl)
{
    call *c = ctx;
    c->reported++;
    return c->fn(c->ctx, key, klen, kind, ttl);
}

static int run(traffic_backend *t, call *c)
{
    switch (c->op) {
    case OP_GET: return t->ops->get(t, c->key, c->klen, c->buf, c->cap, c->len);
    case OP_SET: return t->ops->set(t, c->key, c->klen, c->val, c->vlen, c->ttl_ms);
    case OP_DEL: return t->ops->del(t, c->key, c->klen);
    case OP_EXISTS: return t->ops->exists(t, c->key, c->klen);
    case OP_INCR: return t->ops->increment(t, c->key, c->klen, c->amount, c->ttl_ms, c->out);
    case OP_TTL: return t->ops->ttl(t, c->key, c->klen, c->out);
    case OP_CLEAR: return t->ops->clear(t);
    case OP_STATS: return traffic_stats(t, c->stats);
    case OP_LIMIT:
        if (!t->ops->limit)
            return traffic_backend_fail(t, TRAFFIC_ENOTSUP, "the %s backend has no rate-limit decisions", t->ops->name);
        return t->ops->limit(t, c->key, c->klen, c->rule, c->cost, c->now_us, c->dec);
    case OP_SCAN:
        if (!t->ops->scan)
            return traffic_backend_fail(t, TRAFFIC_ENOTSUP, "the %s backend cannot list its keys", t->ops->name);
        return t->ops->scan(t, c->glob, scan_relay, (void *)c);
    }
    return traffic_backend_fail(t, TRAFFIC_EINVAL, "unknown operation %d", (int)c->op);
}

/* The inner handle's message, on this handle (where the caller will look). */
static int relay(fallback_backend *f, traffic_backend *t, int rc, const char *what)
{
    if (rc >= 0) return rc;
    return traffic_backend_fail(&f->base, rc, "%s%s", what, traffic_errmsg(t));
}

/* The breaker decides when the primary is tried: a Redis primary's own reconnect back-off
 * would fail at once a call that the breaker sends to it right after a probe (perhaps of
 * another process) found it back, and open the breaker again for nothing. */
static void primary_adopt(traffic_backend *p)
{
#ifdef TRAFFIC_HAVE_REDIS
    redis_breaker_owned(p);
#else
    (void)p;
#endif
}

/* The primary handle, opening it if the open found it unreachable: TRAFFIC_OK and *out, the
 * open's failure, or FB_BUSY while another thread of this process opens it. */
static int primary_get(fallback_backend *f, traffic_backend **out)
{
    traffic_backend *p = atomic_load_explicit(&f->primary, memory_order_acquire);
    *out = p;
    if (p) return TRAFFIC_OK;
    int me = (int)getpid(), cur = atomic_load_explicit(&f->opener, memory_order_relaxed);
    if (cur == me ||
        !atomic_compare_exchange_strong_explicit(&f->opener, &cur, me, memory_order_acquire, memory_order_relaxed))
        return FB_BUSY;
    /* A thread that saw opener == 0 after we publish p sees p too (it was stored first). */
    int rc = traffic_open(f->primary_url, &p);
    if (rc == TRAFFIC_OK) {
        primary_adopt(p);
        atomic_store_explicit(&f->primary, p, memory_order_release);
    } else {
        traffic_backend_fail(&f->base, rc, "opening the primary: %s", traffic_errmsg(NULL));
    }
    atomic_store_explicit(&f->opener, 0, memory_order_release);
    *out = p;
    return rc;
}

static int on_fallback(fallback_backend *f, call *c)
{
    c->by_fallback = 1;
    breaker_state s;
    int keep = c->op == OP_CLEAR && f->table == f->fallback && state_read(f, &s);
    int rc = run(f->fallback, c);
    if (keep) state_write(f, &s); /* the clear took the breaker's keys too: put its state back */
    return relay(f, f->fallback, rc, "fallback: ");
}

static int dispatch(fallback_backend *f, call *c)
{
    enum route r = breaker_route(f);
    if (r == TO_FALLBACK) return on_fallback(f, c);
    traffic_backend *p;
    int rc = primary_get(f, &p);
    if (p) rc = run(p, c);
    if (r == TO_PROBE)
        breaker_probed(f, rc);
    else if (is_outage(rc))
        breaker_trip(f);
    if (rc == FB_BUSY) return on_fallback(f, c);
    /* A scan that showed the caller some of the primary's keys is not replayed on the fallback:
     * the caller would get the keys of two stores mixed. */
    if (!is_outage(rc) || c->reported) return p ? relay(f, p, rc, "") : rc;
    atomic_fetch_add_explicit(&f->primary_failures, 1, memory_order_relaxed);
    return on_fallback(f, c);
}

/* ---- the vtable -------------------------------------------------------------------------- */

static int fb_get(traffic_backend *b, const char *key, size_t klen, void *buf, size_t cap, size_t *len)
{
    call c = {.op = OP_GET, .key = key, .klen = klen, .buf = buf, .cap = cap, .len = len};
    return dispatch(FB(b), &c);
}

static int fb_set(traffic_backend *b, const char *key, size_t klen, const void *val, size_t len, int64_t ttl_ms)
{
    call c = {.op = OP_SET, .key = key, .klen = klen, .val = val, .vlen = len, .ttl_ms = ttl_ms};
    return dispatch(FB(b), &c);
}

static int fb_del(traffic_backend *b, const char *key, size_t klen)
{
    call c = {.op = OP_DEL, .key = key, .klen = klen};
    return dispatch(FB(b), &c);
}

static int fb_exists(traffic_backend *b, const char *key, size_t klen)
{
    call c = {.op = OP_EXISTS, .key = key, .klen = klen};
    return dispatch(FB(b), &c);
}

static int fb_increment(traffic_backend *b, const char *key, size_t klen, int64_t amount, int64_t ttl_ms, int64_t *out)
{
    call c = {.op = OP_INCR, .key = key, .klen = klen, .amount = amount, .ttl_ms = ttl_ms, .out = out};
    return dispatch(FB(b), &c);
}

static int fb_ttl(traffic_backend *b, const char *key, size_t klen, int64_t *ttl_ms)
{
    call c = {.op = OP_TTL, .key = key, .klen = klen, .out = ttl_ms};
    return dispatch(FB(b), &c);
}

static int fb_clear(traffic_backend *b)
{
    call c = {.op = OP_CLEAR};
    return dispatch(FB(b), &c);
}

static int fb_limit(traffic_backend *b, const char *key, size_t klen, const traffic_rule *rule, int64_t cost,
                    int64_t now_us, traffic_decision *out)
{
    call c = {.op = OP_LIMIT, .key = key, .klen = klen, .rule = rule, .cost = cost, .now_us = now_us, .dec = out};
    return dispatch(FB(b), &c);
}

static int fb_scan(traffic_backend *b, const char *glob, traffic_scan_fn fn, void *ctx)
{
    call c = {.op = OP_SCAN, .glob = glob, .fn = fn, .ctx = ctx};
    return dispatch(FB(b), &c);
}

/* A cleanup pass in each store that has one, as the cleanup threads (below). */
static int fb_reap(traffic_backend *b, uint64_t *removed)
{
    fallback_backend *f = FB(b);
    traffic_backend *t[2] = {f->fallback, atomic_load_explicit(&f->primary, memory_order_acquire)};
    int reaped = 0;
    for (int i = 0; i < 2; i++) {
        if (!t[i] || !t[i]->ops->reap) continue;
        int rc = t[i]->ops->reap(t[i], removed);
        if (rc == TRAFFIC_ENOTSUP) continue;
        if (rc) return relay(f, t[i], rc, i ? "" : "fallback: ");
        reaped = 1;
    }
    return reaped ? TRAFFIC_OK : traffic_backend_fail(b, TRAFFIC_ENOTSUP, "neither store has a cleanup pass");
}

/* The serving store's figures (it names itself in out->backend), then the breaker's. */
static int fb_stats(traffic_backend *b, struct traffic_stats *out)
{
    fallback_backend *f = FB(b);
    call c = {.op = OP_STATS, .stats = out};
    int rc = dispatch(f, &c);
    if (rc < 0) return rc;
    breaker_state s;
    int have = state_read(f, &s);
    out->serving = c.by_fallback || (have && s.open_until) ? TRAFFIC_SERVING_FALLBACK : TRAFFIC_SERVING_PRIMARY;
    out->serving_since_ms = (uint64_t)(have ? s.since_ms : f->opened_ms);
    out->switches = counter(f, f->k_switches, f->l_switches);
    out->probes = counter(f, f->k_probes, f->l_probes);
    out->primary_failures = atomic_load_explicit(&f->primary_failures, memory_order_relaxed);
    return TRAFFIC_OK;
}

/* Cleanup runs in each store that has it: the fallback's table needs it during an outage as
 * much as the primary does otherwise. */
static int fb_start_cleanup(traffic_backend *b)
{
    fallback_backend *f = FB(b);
    traffic_backend *t[2] = {f->fallback, atomic_load_explicit(&f->primary, memory_order_acquire)};
    int started = 0;
    for (int i = 0; i < 2; i++) {
        if (!t[i] || !t[i]->ops->start_cleanup) continue;
        int rc = t[i]->ops->start_cleanup(t[i]);
        if (rc == TRAFFIC_ENOTSUP) continue;
        if (rc) return relay(f, t[i], rc, i ? "" : "fallback: ");
        started = 1;
    }
    return started ? TRAFFIC_OK : traffic_backend_fail(b, TRAFFIC_ENOTSUP, "neither store has a background cleanup");
}

static int fb_stop_cleanup(traffic_backend *b)
{
    fallback_backend *f = FB(b);
    traffic_backend *t[2] = {f->fallback, atomic_load_explicit(&f->primary, memory_order_acquire)};
    int rc = TRAFFIC_OK;
    for (int i = 0; i < 2; i++)
        if (t[i] && t[i]->ops->stop_cleanup) {
            int r = t[i]->ops->stop_cleanup(t[i]);
            if (r && !rc) rc = relay(f, t[i], r, i ? "" : "fallback: ");
        }
    return rc;
}

static void destroy(fallback_backend *f)
{
    traffic_close(atomic_load_explicit(&f->primary, memory_order_relaxed));
    if (f->table != f->fallback) traffic_close(f->table);
    traffic_close(f->fallback);
    free(f->primary_url);
    free(f);
}

static int fb_close(traffic_backend *b)
{
    destroy(FB(b));
    return TRAFFIC_OK;
}

static const traffic_backend_ops fallback_ops = {
    .name = "fallback",
    .close = fb_close,
    .get = fb_get,
    .set = fb_set,
    .del = fb_del,
    .exists = fb_exists,
    .increment = fb_increment,
    .ttl = fb_ttl,
    .clear = fb_clear,
    .stats = fb_stats,
    .start_cleanup = fb_start_cleanup,
    .stop_cleanup = fb_stop_cleanup,
    .limit = fb_limit,
    .scan = fb_scan,
    .reap = fb_reap,
};

/* ---- opening ----------------------------------------------------------------------------- */

/* FNV-1a 64 of the URL up to its query: the breaker's name. */
static uint64_t url_hash(const char *url)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (const char *p = url; *p && *p != '?'; p++)
        h = (h ^ (unsigned char)*p) * 0x100000001b3ull;
    return h;
}

static size_t key_name(char *buf, uint64_t h, const char *what)
{
    return (size_t)snprintf(buf, KEY_LEN, "traffic:breaker:%016llx:%s", (unsigned long long)h, what);
}

/* Writes a closed state when the table has none, so that "serving since" is the host's
 * first open, and finds out now - not during an outage - whether the table can hold it. */
static int state_init(fallback_backend *f)
{
    breaker_state s;
    size_t len;
    int rc = f->table->ops->get(f->table, f->k_state, f->l_state, &s, sizeof s, &len);
    if (rc == TRAFFIC_ERANGE) rc = TRAFFIC_OK; /* not a state: the first trip overwrites it */
    if (rc == TRAFFIC_ENOTFOUND) {
        rc = TRAFFIC_OK;
        if (lease_take(f)) {
            if (!state_read(f, &s)) {
                s = (breaker_state){.since_ms = f->opened_ms};
                rc = state_write(f, &s);
            }
            lease_give(f);
        }
    }
    if (rc == TRAFFIC_ETOOBIG)
        return traffic_backend_fail(NULL, TRAFFIC_EINVAL,
                                    "the fallback table cannot hold the breaker's state (key \"%s\", %zu bytes of "
                                    "value): raise its key_max or value_max",
                                    f->k_state, sizeof s);
    if (rc)
        return traffic_backend_fail(NULL, rc, "the breaker's state in the fallback table: %s",
                                    traffic_errmsg(f->table));
    return TRAFFIC_OK;
}

int fallback_create(const char *primary_url, traffic_backend *primary, traffic_backend *fallback,
                    const fallback_options *o, traffic_backend **out)
{
    fallback_backend *f = calloc(1, sizeof *f);
    char *url = strdup(primary_url);
    if (!f || !url) {
        free(f);
        free(url);
        traffic_close(primary);
        traffic_close(fallback);
        return traffic_backend_fail(NULL, TRAFFIC_ENOMEM, "out of memory opening a fallback store");
    }
    traffic_backend_init(&f->base, &fallback_ops);
    if (primary) primary_adopt(primary);
    atomic_init(&f->primary, primary);
    atomic_init(&f->opener, 0);
    atomic_init(&f->primary_failures, 0);
    atomic_init(&f->open_until_seen, 0);
    f->fallback = fallback;
    f->primary_url = url;
    f->backoff_us = (int64_t)ceil(o->backoff_s * 1e6);
    f->backoff_max_us = (int64_t)ceil(o->backoff_max_s * 1e6);
    f->opened_ms = clock_us(CLOCK_REALTIME) / 1000;
    uint64_t h = url_hash(primary_url);
    f->l_state = key_name(f->k_state, h, "state");
    f->l_lease = key_name(f->k_lease, h, "probe");
    f->l_switches = key_name(f->k_switches, h, "switches");
    f->l_probes = key_name(f->k_probes, h, "probes");
    int rc = TRAFFIC_OK;
    if (strcmp(fallback->ops->name, "memory") == 0) {
        f->table = fallback;
    } else {
        traffic_memory_options mo = {.max_size = PRIVATE_TABLE_MAX};
        rc = traffic_memory_open(&mo, &f->table);
    }
    if (!rc) rc = state_init(f);
    if (rc) {
        destroy(f);
        return rc;
    }
    if (!primary) breaker_trip(f); /* unreachable at open: start on the fallback */
    *out = &f->base;
    return TRAFFIC_OK;
}
