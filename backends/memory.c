/*
 * memory.c — the memory backend: adapts the shared-memory table (shm/) to the vtable.
 *
 * This file owns what the table does not know about: URLs and their parameters, the public
 * status codes and messages, and the typed opener. Every operation is a direct call into
 * shm/, whose statuses are numerically the public ones (asserted below).
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../shm/shm.h"
#include "internal.h"
#include "limit/limit.h"

_Static_assert(SHM_ENOTFOUND == TRAFFIC_ENOTFOUND && SHM_EINVAL == TRAFFIC_EINVAL && SHM_ETOOBIG == TRAFFIC_ETOOBIG &&
                   SHM_EFULL == TRAFFIC_EFULL && SHM_ETYPE == TRAFFIC_ETYPE && SHM_EOVERFLOW == TRAFFIC_EOVERFLOW &&
                   SHM_EIO == TRAFFIC_EIO && SHM_ETIMEDOUT == TRAFFIC_ETIMEDOUT && SHM_ECORRUPT == TRAFFIC_ECORRUPT &&
                   SHM_ENOMEM == TRAFFIC_ENOMEM &&
                   SHM_ERANGE == TRAFFIC_ERANGE && SHM_EPERM == TRAFFIC_EPERM,
               "shm statuses must equal the public ones");
_Static_assert(SHM_KEY_LIMIT == TRAFFIC_KEY_MAX && SHM_VALUE_LIMIT == TRAFFIC_MEMORY_VALUE_MAX_LIMIT,
               "shm limits must equal the public ones");

typedef struct memory_backend {
    traffic_backend base;
    shm_table *t;
} memory_backend;

static shm_table *T(traffic_backend *b)
{
    return ((memory_backend *)b)->t;
}

/* Explains the statuses an operation can produce beyond the obvious. */
static int explain(traffic_backend *b, int rc, const char *key, size_t klen, size_t vlen)
{
    switch (rc) {
    case SHM_ETOOBIG:
        if (klen > shm_key_max(T(b)))
            return traffic_backend_fail(b, rc, "key of %zu bytes is over this table's key_max %u", klen,
                                        shm_key_max(T(b)));
        return traffic_backend_fail(b, rc, "value of %zu bytes is over this table's value_max %u", vlen,
                                    shm_value_max(T(b)));
    case SHM_EFULL:
        return traffic_backend_fail(b, rc,
                                    "no room for \"%.64s\": nothing evictable, the probe window is full, or %u "
                                    "threads are attached already",
                                    key, TRAFFIC_MEMORY_MAX_PARTICIPANTS);
    case SHM_ETYPE:
        return traffic_backend_fail(b, rc,
                                    "\"%.64s\" holds another kind of entry (a bytes value, a counter, or another "
                                    "algorithm's rate-limit state)",
                                    key);
    case SHM_EOVERFLOW: return traffic_backend_fail(b, rc, "incrementing \"%.64s\" would overflow int64", key);
    case SHM_ENOTFOUND: return traffic_backend_fail(b, rc, "\"%.64s\" not found or expired", key);
    case SHM_ETIMEDOUT:
        return traffic_backend_fail(b, rc,
                                    "\"%.64s\": a live process has held its home latch or its slot for 2 s "
                                    "(stopped, or a damaged participant record)",
                                    key);
    default: return rc;
    }
}

static int m_get_state(traffic_backend *b, const char *key, size_t klen, void *buf, size_t cap, size_t *len);

static int m_get(traffic_backend *b, const char *key, size_t klen, void *buf, size_t cap, size_t *len)
{
    int rc = shm_get(T(b), key, klen, buf, cap, len);
    /* A state is read in a second lookup; if the key changed kind in between, read again. */
    for (int tries = 0; rc == SHM_ESTATE && tries < 8; tries++) {
        rc = m_get_state(b, key, klen, buf, cap, len);
        if (rc == SHM_ETYPE) rc = shm_get(T(b), key, klen, buf, cap, len);
    }
    if (rc == SHM_ESTATE) rc = SHM_ENOTFOUND; /* changing kind all the time: say it is gone */
    if (rc == SHM_ERANGE)
        return traffic_backend_fail(b, rc, "value of \"%.64s\" is %zu bytes, buffer holds %zu", key, *len, cap);
    return rc ? explain(b, rc, key, klen, 0) : rc;
}

static int m_set(traffic_backend *b, const char *key, size_t klen, const void *val, size_t len, int64_t ttl_ms)
{
    int rc = shm_set(T(b), key, klen, val, len, ttl_ms);
    return rc ? explain(b, rc, key, klen, len) : rc;
}

static int m_del(traffic_backend *b, const char *key, size_t klen)
{
    int rc = shm_del(T(b), key, klen);
    return rc ? explain(b, rc, key, klen, 0) : rc;
}

static int m_exists(traffic_backend *b, const char *key, size_t klen)
{
    int rc = shm_exists(T(b), key, klen);
    return rc < 0 ? explain(b, rc, key, klen, 0) : rc;
}

static int m_increment(traffic_backend *b, const char *key, size_t klen, int64_t amount, int64_t ttl_ms, int64_t *out)
{
    int rc = shm_incr(T(b), key, klen, amount, ttl_ms, out);
    return rc ? explain(b, rc, key, klen, 0) : rc;
}

static int m_ttl(traffic_backend *b, const char *key, size_t klen, int64_t *ttl_ms)
{
    int rc = shm_ttl(T(b), key, klen, ttl_ms);
    return rc ? explain(b, rc, key, klen, 0) : rc;
}

static int m_clear(traffic_backend *b)
{
    return shm_clear(T(b));
}

static int m_stats(traffic_backend *b, struct traffic_stats *o)
{
    shm_stats s;
    int rc = shm_stats_get(T(b), &s);
    if (rc) return rc;
    o->keys = s.keys;
    o->capacity = s.capacity;
    o->max_size = s.max_size;
    o->bytes_used = s.map_bytes;
    o->bytes_resident = s.resident_bytes;
    o->huge_bytes = s.huge_bytes;
    o->hits = s.hits;
    o->misses = s.misses;
    o->sets = s.sets;
    o->increments = s.increments;
    o->deletes = s.deletes;
    o->evictions = s.evictions;
    o->expirations = s.expirations;
    o->attached = s.attached;
    o->recovered = s.recovered;
    o->epoch = s.epoch;
    o->reaper_pid = s.reaper_pid;
    o->reaper_runs = s.reaper_runs;
    o->decisions = s.decisions;
    o->denied = s.denied;
    return TRAFFIC_OK;
}

static int m_start_cleanup(traffic_backend *b)
{
    int rc = shm_reaper_start(T(b));
    return rc ? traffic_backend_fail(b, rc, "could not start the reaper thread") : rc;
}

static int m_stop_cleanup(traffic_backend *b)
{
    return shm_reaper_stop(T(b));
}

static int m_close(traffic_backend *b)
{
    shm_close_table(T(b));
    free(b);
    return TRAFFIC_OK;
}

/* ---- rate-limit decisions ------------------------------------------------------------------
 * Each algorithm's state is one kind of shm state entry (shm.h): the four whose state fits a
 * word are SHM_TYPE_WORD(algorithm), changed by one compare-and-swap; the sliding log is
 * SHM_TYPE_BLOB(algorithm), changed by the slot's versioned write. The decision itself is
 * limit_apply, run by shm_state_update's callback on the state it read, as many times as it
 * loses a race. The words (all times CLOCK_MONOTONIC µs):
 *   fixed window            bits 0-43 S / 1000 (S is whole ms, below 2^53 µs), 44-63 N
 *   sliding window counter  bits 0-23 i mod 2^24, 24-43 P, 44-63 C (counts < 2^20: the
 *                           bound TRAFFIC_WINDOW_LIMIT_MAX exists for this word)
 *   token, leaky bucket     T itself
 * The log: a u64 base (the oldest entry's time), then one u64 per entry: bits 0-39 its time
 * minus base (a log spans less than a window: windows below 2^40 µs), 40-63 its cost. */
#define FW_START_BITS 44
#define SWC_IDX_MASK  ((UINT64_C(1) << 24) - 1)
#define COUNT_MASK    ((UINT64_C(1) << 20) - 1)
#define LOG_OFF_MASK  ((UINT64_C(1) << 40) - 1)

static unsigned state_type(traffic_algorithm a)
{
    return a == TRAFFIC_SLIDING_WINDOW ? SHM_TYPE_BLOB(a) : SHM_TYPE_WORD(a);
}

static uint64_t word_pack(const limit_rule *r, const traffic_limit_state *st)
{
    switch (r->algo) {
    case TRAFFIC_FIXED_WINDOW: return (uint64_t)(st->a / 1000) | (uint64_t)st->b << FW_START_BITS;
    case TRAFFIC_SLIDING_WINDOW_COUNTER:
        return ((uint64_t)st->a & SWC_IDX_MASK) | (uint64_t)st->b << 24 | (uint64_t)st->c << 44;
    default: return (uint64_t)st->a;
    }
}

static void word_unpack(const limit_rule *r, uint64_t w, int64_t now, traffic_limit_state *st)
{
    switch (r->algo) {
    case TRAFFIC_FIXED_WINDOW:
        st->a = (int64_t)(w & ((UINT64_C(1) << FW_START_BITS) - 1)) * 1000;
        st->b = (int64_t)(w >> FW_START_BITS);
        break;
    case TRAFFIC_SLIDING_WINDOW_COUNTER: {
        /* The stored window is the one nearest to now's with those low 24 bits: up to 2^23
         * windows back, or ahead (a clock that went back, simulated time only). */
        int64_t i = now / r->window_us;
        uint64_t d = ((uint64_t)i - w) & SWC_IDX_MASK;
        st->a = d < (UINT64_C(1) << 23) ? i - (int64_t)d : i + (int64_t)((SWC_IDX_MASK + 1) - d);
        st->b = (int64_t)((w >> 24) & COUNT_MASK);
        st->c = (int64_t)(w >> 44);
        break;
    }
    default: st->a = (int64_t)w; break;
    }
}

static int log_unpack(const void *blob, size_t len, traffic_limit_state *st)
{
    const unsigned char *p = blob;
    if (len < 16 || (len - 8) % 8 || (len - 8) / 8 > st->log_cap) return SHM_ECORRUPT;
    uint64_t base, e;
    memcpy(&base, p, 8);
    st->nlog = (len - 8) / 8;
    for (size_t i = 0; i < st->nlog; i++) {
        memcpy(&e, p + 8 + 8 * i, 8);
        st->log[i].t_us = (int64_t)(base + (e & LOG_OFF_MASK));
        st->log[i].n = (int64_t)(e >> 40);
    }
    return SHM_OK;
}

/* 0, or SHM_EINVAL when an entry lies 2^40 µs or more after the oldest (simulated time). */
static int log_pack(const traffic_limit_state *st, void *blob, size_t cap, size_t *len)
{
    unsigned char *p = blob;
    uint64_t base = (uint64_t)st->log[0].t_us;
    if (8 + 8 * st->nlog > cap) return SHM_ETOOBIG;
    memcpy(p, &base, 8);
    for (size_t i = 0; i < st->nlog; i++) {
        uint64_t off = (uint64_t)st->log[i].t_us - base;
        if (off > LOG_OFF_MASK) return SHM_EINVAL;
        uint64_t e = off | (uint64_t)st->log[i].n << 40;
        memcpy(p + 8 + 8 * i, &e, 8);
    }
    *len = 8 + 8 * st->nlog;
    return SHM_OK;
}

struct decide {
    limit_rule r;
    int64_t now_us;  /* the instant decided at */
    int64_t real_us; /* the clock now: expiries run on it */
    int64_t cost;
    traffic_decision *d;
    traffic_limit_entry *log;
    size_t log_cap;
};

static int decide_fn(void *ctx, int present, uint64_t old_word, const void *old_blob, size_t old_len, shm_update *u,
                     void *buf, size_t cap)
{
    struct decide *x = ctx;
    traffic_limit_state st = {.log = x->log, .log_cap = x->log_cap};
    if (present) {
        if (x->r.algo == TRAFFIC_SLIDING_WINDOW) {
            int rc = log_unpack(old_blob, old_len, &st);
            if (rc) return rc;
        } else {
            word_unpack(&x->r, old_word, x->now_us, &st);
        }
    }
    int64_t reset_us;
    int changed = limit_apply(&x->r, &st, x->now_us, x->cost, x->d, &reset_us);
    if (changed < 0) return SHM_ECORRUPT; /* the rule and now are checked: only the stored state is refused */
    u->denied = !x->d->allowed;
    if (changed) {
        u->store = 1;
        /* + 1 ms: decisions read the table's TSC clock (shm_clock_us), which keeps within
         * µs of the CLOCK_MONOTONIC that expiry checks read */
        u->expires_ms = (x->real_us + reset_us + 999) / 1000 + 1;
        if (x->r.algo == TRAFFIC_SLIDING_WINDOW) return log_pack(&st, buf, cap, &u->len);
        u->word = word_pack(&x->r, &st);
    }
    return SHM_OK;
}

#define LOG_STACK 64 /* log entries decided on the stack; more are allocated */

static int m_limit(traffic_backend *b, const char *key, size_t klen, const traffic_rule *rule, int64_t cost,
                   int64_t now_us, traffic_decision *out)
{
    struct decide x = {.r = *limit_rule_cached(rule), .cost = cost, .d = out};
    traffic_limit_entry stack[LOG_STACK], *heap = NULL;
    if (x.r.algo == TRAFFIC_SLIDING_WINDOW) {
        uint32_t vmax = shm_value_max(T(b));
        size_t most = vmax < 16 ? 0 : (vmax - 8) / 8;
        if ((size_t)x.r.limit > most)
            return traffic_backend_fail(b, TRAFFIC_EINVAL,
                                        "sliding_window: limit %lld needs value_max >= %lld bytes (8 per request); "
                                        "this table's value_max is %u (memory://?value_max=N, at most %d)",
                                        (long long)x.r.limit, 8 + 8 * (long long)x.r.limit, vmax,
                                        TRAFFIC_MEMORY_VALUE_MAX_LIMIT);
        if (x.r.window_us > (int64_t)LOG_OFF_MASK)
            return traffic_backend_fail(b, TRAFFIC_EINVAL,
                                        "sliding_window: window %g s is over the memory backend's 2^40 us (12.7 days)",
                                        rule->window);
        x.log_cap = most; /* room for a log written under a larger limit, too */
        x.log = stack;
        if (most > LOG_STACK && !(x.log = heap = malloc(most * sizeof *heap)))
            return traffic_backend_fail(b, TRAFFIC_ENOMEM, "no memory for a log of %zu entries", most);
    }
    x.real_us = shm_clock_us(T(b));
    x.now_us = now_us >= 0 ? now_us : x.real_us;
    int rc = shm_state_update(T(b), key, klen, state_type(x.r.algo), x.real_us / 1000, decide_fn, &x);
    free(heap);
    if (rc == SHM_EINVAL)
        return traffic_backend_fail(b, rc, "sliding_window: \"%.64s\" would log requests 2^40 us apart", key);
    if (rc == SHM_ECORRUPT)
        return traffic_backend_fail(b, rc, "the %s state of \"%.64s\" is damaged", limit_algo_name(x.r.algo), key);
    return rc ? explain(b, rc, key, klen, 0) : rc;
}

/* traffic_get of a rate-limit state: its JSON text (limit_state_json). */
static int m_get_state(traffic_backend *b, const char *key, size_t klen, void *buf, size_t cap, size_t *len)
{
    uint32_t vmax = shm_value_max(T(b));
    unsigned char *blob = malloc(vmax + 1);
    size_t most = vmax < 16 ? 1 : (vmax - 8) / 8;
    traffic_limit_entry *log = malloc(most * sizeof *log);
    char *text = NULL;
    int rc = SHM_ENOMEM;
    unsigned type;
    uint64_t word;
    size_t blen;
    if (!blob || !log) goto out;
    rc = shm_state_get(T(b), key, klen, &type, &word, blob, vmax, &blen);
    if (rc) goto out;
    traffic_limit_state st = {.log = log, .log_cap = most};
    int algo;
    if (type >= SHM_TYPE_BLOB(0)) {
        algo = (int)(type - SHM_TYPE_BLOB(0));
        if ((rc = log_unpack(blob, blen, &st))) goto out;
    } else {
        algo = (int)(type - SHM_TYPE_WORD(0));
        limit_rule r = {.algo = (traffic_algorithm)algo, .window_us = 1};
        /* The word alone: a sliding window counter's number is shown modulo 2^24. */
        word_unpack(&r, word, (int64_t)(word & SWC_IDX_MASK), &st);
    }
    size_t need = limit_state_json(algo, &st, NULL, 0);
    *len = need;
    if (need > cap) {
        rc = SHM_ERANGE;
        goto out;
    }
    if (!(text = malloc(need + 1))) {
        rc = SHM_ENOMEM;
        goto out;
    }
    limit_state_json(algo, &st, text, need + 1);
    memcpy(buf, text, need);
    rc = SHM_OK;
out:
    free(text);
    free(log);
    free(blob);
    if (rc == SHM_ERANGE)
        return traffic_backend_fail(b, rc, "value of \"%.64s\" is %zu bytes, buffer holds %zu", key, *len, cap);
    if (rc == SHM_ENOMEM) return traffic_backend_fail(b, rc, "no memory to read the state of \"%.64s\"", key);
    return rc;
}

/* ---- listing keys, cleanup on demand --------------------------------------------------------
 * shm_scan_batch copies a batch of entries while pinned; the glob and fn run here, unpinned
 * (shm.h), so that fn may take its time and call the table itself. */

static int kind_of(unsigned type)
{
    if (type == SHM_TYPE_BYTES) return TRAFFIC_KIND_BYTES;
    if (type == SHM_TYPE_COUNTER) return TRAFFIC_KIND_COUNTER;
    /* state_type: the kind of a state entry is its algorithm */
    if (type >= SHM_TYPE_WORD(0) && type < SHM_TYPE_WORD(SHM_STATE_KINDS))
        return TRAFFIC_KIND_LIMIT + (int)(type - SHM_TYPE_WORD(0));
    if (type >= SHM_TYPE_BLOB(0) && type < SHM_TYPE_BLOB(SHM_STATE_KINDS))
        return TRAFFIC_KIND_LIMIT + (int)(type - SHM_TYPE_BLOB(0));
    return TRAFFIC_KIND_OTHER;
}

static int m_scan(traffic_backend *b, const char *glob, traffic_scan_fn fn, void *ctx)
{
    shm_scan_entry *batch = malloc(SHM_SCAN_BATCH * sizeof *batch);
    if (!batch) return traffic_backend_fail(b, TRAFFIC_ENOMEM, "no memory for a scan batch");
    uint64_t cursor = 0;
    int rc = 0, done = 0;
    while (!rc && !done) {
        size_t n = 0;
        done = shm_scan_batch(T(b), &cursor, batch, &n);
        if (done < 0) {
            rc = traffic_backend_fail(b, done, "scan: %u threads are attached to this table already",
                                      TRAFFIC_MEMORY_MAX_PARTICIPANTS);
            break;
        }
        for (size_t i = 0; i < n && !rc; i++) {
            const shm_scan_entry *e = &batch[i];
            if (traffic_glob_match(glob, e->key, e->klen))
                rc = fn(ctx, e->key, e->klen, kind_of(e->type), e->ttl_ms < 0 ? -1.0 : (double)e->ttl_ms / 1000.0);
        }
    }
    free(batch);
    return rc;
}

static int m_reap(traffic_backend *b, uint64_t *removed)
{
    uint64_t n = 0;
    int rc = shm_reap_pass(T(b), &n);
    *removed += n;
    return rc ? traffic_backend_fail(b, rc, "reap: %u threads are attached to this table already",
                                     TRAFFIC_MEMORY_MAX_PARTICIPANTS)
              : rc;
}

static const traffic_backend_ops memory_ops = {
    .name = "memory",
    .close = m_close,
    .get = m_get,
    .set = m_set,
    .del = m_del,
    .exists = m_exists,
    .increment = m_increment,
    .ttl = m_ttl,
    .clear = m_clear,
    .stats = m_stats,
    .start_cleanup = m_start_cleanup,
    .stop_cleanup = m_stop_cleanup,
    .limit = m_limit,
    .scan = m_scan,
    .reap = m_reap,
};

int traffic_memory_open(const traffic_memory_options *o, traffic_backend **out)
{
    if (!out) return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "out is NULL");
    *out = NULL;
    traffic_memory_options def = {0};
    if (!o) o = &def;
    if (o->cleanup_interval < 0 || o->cleanup_interval != o->cleanup_interval || o->cleanup_interval > 1e7)
        return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "cleanup_interval %g is not in [0, 1e7] seconds",
                                    o->cleanup_interval);
    if (o->value_max > TRAFFIC_MEMORY_VALUE_MAX_LIMIT)
        return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "value_max %u is over %d", o->value_max,
                                    TRAFFIC_MEMORY_VALUE_MAX_LIMIT);
    if (o->key_max > TRAFFIC_KEY_MAX)
        return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "key_max %u is over %d", o->key_max, TRAFFIC_KEY_MAX);
    shm_params p = {
        .name = o->name && o->name[0] ? o->name : NULL,
        .max_size = o->max_size,
        .key_max = o->key_max,
        .value_max = o->value_max,
        .mode = o->mode,
        .cleanup_ms = o->cleanup_interval > 0 ? (uint64_t)(o->cleanup_interval * 1000.0 + 0.5) : 0,
    };
    if (o->cleanup_interval > 0 && p.cleanup_ms == 0) p.cleanup_ms = 1;
    memory_backend *m = calloc(1, sizeof *m);
    if (!m) return traffic_backend_fail(NULL, TRAFFIC_ENOMEM, "out of memory");
    char err[256];
    int rc = shm_open_table(&p, &m->t, err, sizeof err);
    if (rc) {
        free(m);
        return traffic_backend_fail(NULL, rc, "%s", err);
    }
    traffic_backend_init(&m->base, &memory_ops);
    *out = &m->base;
    return TRAFFIC_OK;
}

int traffic_memory_unlink(const char *name)
{
    char err[256];
    int rc = shm_unlink_table(name, err, sizeof err);
    return rc ? traffic_backend_fail(NULL, rc, "%s", err) : rc;
}

int memory_open_url(url *u, traffic_backend **out)
{
    traffic_memory_options o = {0};
    uint64_t max_size = 0, key_max = 0, value_max = 0;
    int rc;
    if (u->rest[0] && !shm_name_valid(u->rest))
        return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "memory table name \"%.210s\" is not 1-200 of [A-Za-z0-9._-]",
                                    u->rest);
    o.name = u->rest;
    if ((rc = url_param_u64(u, "max_size", 1, SHM_MAX_SIZE_LIMIT, &max_size)) ||
        (rc = url_param_double(u, "cleanup_interval", 0.001, 1e7, &o.cleanup_interval)) ||
        (rc = url_param_u64(u, "key_max", 1, TRAFFIC_KEY_MAX, &key_max)) ||
        (rc = url_param_u64(u, "value_max", 1, TRAFFIC_MEMORY_VALUE_MAX_LIMIT, &value_max)) ||
        (rc = url_param_octal(u, "mode", 0777, &o.mode)) || (rc = url_check_unused(u)))
        return rc;
    o.max_size = max_size;
    o.key_max = (uint32_t)key_max;
    o.value_max = (uint32_t)value_max;
    return traffic_memory_open(&o, out);
}
