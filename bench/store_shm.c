/*
 * store_shm.c — the in-memory baselines, which exist only in this harness (the library never
 * uses them). Both live in one MAP_SHARED anonymous mapping made by the parent before fork(),
 * as the memory backend's table does, so the only differences are what each one does per
 * operation:
 *
 *   bench:null          does nothing: the cost of the harness itself (loop, call, timer).
 *   bench:raw-atomic    key i is a counter at a fixed offset, pre-resolved: one fetch_add.
 *                       The physical floor of a shared counter. ?stride=64 (default: each
 *                       counter on its own cache line) or 8 (packed, neighbours share lines),
 *                       or larger: 256 spreads 1M counters over as many bytes as the memory
 *                       backend's 1M-key table. ?serial=1: the address of each increment or
 *                       get waits for the previous one's result, so no two misses overlap - the
 *                       latency of one access, where the default measures the throughput of
 *                       the several a core keeps in flight (issue 15, bench/README.md).
 *   bench:mutex-table   an open-addressing, linear-probing hash table with one record per
 *                       slot (a hash, the key in key_max bytes, a counter, an expiry and a
 *                       value buffer of value_max) guarded by ONE process-shared
 *                       pthread mutex: the design of nginx/OpenResty shared dicts, APCu and
 *                       uWSGI's cache. The hash is computed outside the lock, as they do.
 *                       ?key_max=250&value_max=256 (the library's defaults), ?robust=1 for a
 *                       robust mutex.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "bench.h"

#define E_NOTFOUND (-1)
#define E_TYPE     (-5)
#define E_FULL     (-4)

static void *shared_map(size_t size, char *err, size_t n)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        snprintf(err, n, "mmap of %zu bytes: %s", size, strerror(errno));
        return NULL;
    }
    return p;
}

static uint64_t param_u64(const struct store *s, const char *name, uint64_t def)
{
    char v[32];
    return bench_url_param(s->url, name, v, sizeof v) ? strtoull(v, NULL, 0) : def;
}

/* ---- bench:null ------------------------------------------------------------------------------ */

static int null_open(struct store *s, char *err, size_t n)
{
    (void)s, (void)err, (void)n;
    return BENCH_OK;
}
static int null_incr(void *h, uint32_t i, int64_t *out)
{
    (void)h, (void)i;
    *out = 1;
    return 0;
}
static int null_get(void *h, uint32_t i, size_t *len)
{
    (void)h, (void)i;
    *len = VALUE_LEN;
    return 0;
}
static int null_set(void *h, uint32_t i, const void *val, size_t len)
{
    (void)h, (void)i, (void)val, (void)len;
    return 0;
}
static int null_limit(void *h, uint32_t i, int64_t *allowed)
{
    (void)h, (void)i;
    *allowed = 1;
    return 0;
}
static void null_close(struct store *s)
{
    (void)s;
}

const struct store_ops store_null = {
    .numbered_keys = 1,
    .prefix = "bench:null",
    .open = null_open,
    .incr = null_incr,
    .get = null_get,
    .set = null_set,
    .limit = null_limit,
    .close = null_close,
};

/* ---- bench:raw-atomic ------------------------------------------------------------------------ */

struct ra {
    unsigned char *base;
    unsigned shift;
    size_t size;
    int serial;
    int64_t last; /* this process's last result (serial) */
};

static inline _Atomic int64_t *ra_at(const struct ra *r, uint32_t i)
{
    return (_Atomic int64_t *)(r->base + ((size_t)i << r->shift));
}

static int ra_open(struct store *s, char *err, size_t n)
{
    uint64_t stride = param_u64(s, "stride", 64);
    if (stride < 8 || stride > 4096 || (stride & (stride - 1))) {
        snprintf(err, n, "stride %llu is not a power of two in [8, 4096]", (unsigned long long)stride);
        return BENCH_ERR;
    }
    struct ra *r = calloc(1, sizeof *r);
    if (!r) return BENCH_ERR;
    r->shift = (unsigned)__builtin_ctzll(stride);
    r->serial = param_u64(s, "serial", 0) != 0;
    r->size = (size_t)s->cfg->keys << r->shift;
    if (!(r->base = shared_map(r->size, err, n))) {
        free(r);
        return BENCH_ERR;
    }
    s->priv = s->h = r;
    return BENCH_OK;
}

/* serial: the key xor the sign bit of the last result - always 0 (counters stay small and
 * positive), which neither the compiler nor the CPU can know, so the address depends on it. */
static inline uint32_t ra_key(const struct ra *r, uint32_t i)
{
    return r->serial ? i ^ (uint32_t)((uint64_t)r->last >> 63) : i;
}

static int ra_incr(void *h, uint32_t i, int64_t *out)
{
    struct ra *r = h;
    *out = r->last = atomic_fetch_add_explicit(ra_at(r, ra_key(r, i)), 1, memory_order_relaxed) + 1;
    return 0;
}

static int ra_get(void *h, uint32_t i, size_t *len)
{
    struct ra *r = h;
    int64_t v = r->last = atomic_load_explicit(ra_at(r, ra_key(r, i)), memory_order_relaxed);
    (void)v;
    *len = VALUE_LEN; /* one load stands for reading the value */
    return 0;
}

static int ra_set(void *h, uint32_t i, const void *val, size_t len)
{
    int64_t v = 0;
    memcpy(&v, val, len < 8 ? len : 8); /* one store stands for writing the value */
    atomic_store_explicit(ra_at(h, i), v, memory_order_relaxed);
    return 0;
}

static int ra_sum(struct store *s, int64_t *sum, char *err, size_t n)
{
    (void)err, (void)n;
    int64_t t = 0;
    for (uint32_t i = 0; i < s->cfg->keys; i++)
        if (bench_is_counter(s->cfg, i)) t += atomic_load_explicit(ra_at(s->h, i), memory_order_relaxed);
    *sum = t;
    return BENCH_OK;
}

static void ra_close(struct store *s)
{
    struct ra *r = s->priv;
    if (r) munmap(r->base, r->size);
    free(r);
    s->priv = s->h = NULL;
}

const struct store_ops store_raw_atomic = {
    .numbered_keys = 1,
    .prefix = "bench:raw-atomic",
    .open = ra_open,
    .incr = ra_incr,
    .get = ra_get,
    .set = ra_set,
    .sum = ra_sum,
    .close = ra_close,
};

/* ---- bench:mutex-table ------------------------------------------------------------------------
 * Slots: a fixed part, then the key (key_max rounded up to 8), then the value (value_max
 * rounded up to 8), the whole rounded up to 64 bytes. Capacity: a power of two >= 1.5 x keys,
 * like the memory backend's. Every field is read and written under the one mutex. */

enum { MT_EMPTY = 0, MT_COUNTER = 1, MT_BYTES = 2 };

struct mt_head {
    pthread_mutex_t mu;
};

struct mt_slot {
    uint64_t hash;
    uint32_t klen, type;
    int64_t counter;
    int64_t expires; /* ms of CLOCK_MONOTONIC, 0: never */
    uint32_t vlen, pad;
};

struct mt {
    unsigned char *base;
    size_t map_size;
    struct mt_head *hd;
    unsigned char *slots;
    uint64_t mask, seed;
    uint32_t slot_size, key_off, val_off, value_max;
    int64_t ttl_ms;
};

static inline struct mt_slot *mt_at(const struct mt *m, uint64_t i)
{
    return (struct mt_slot *)(m->slots + (size_t)(i & m->mask) * m->slot_size);
}

/* Word-at-a-time multiply/xor-shift hash; its own constants (not the library's). */
static uint64_t mt_hash(uint64_t seed, const char *k, size_t n)
{
    uint64_t h = seed ^ (n * 0x2545f4914f6cdd1dull);
    for (; n >= 8; k += 8, n -= 8) {
        uint64_t w;
        memcpy(&w, k, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
    }
    uint64_t w = 0;
    memcpy(&w, k, n);
    h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 29;
    return h;
}

static int64_t coarse_ms(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int mt_expired(int64_t expires)
{
    return expires != 0 && coarse_ms(CLOCK_MONOTONIC_COARSE) >= expires;
}

static void mt_lock(struct mt *m)
{
    if (pthread_mutex_lock(&m->hd->mu) == EOWNERDEAD) pthread_mutex_consistent(&m->hd->mu);
}
static void mt_unlock(struct mt *m)
{
    pthread_mutex_unlock(&m->hd->mu);
}

/* Under the lock: the slot of key, or the empty slot that ends its probe (create), or NULL. */
static struct mt_slot *mt_find(struct mt *m, uint64_t h, const char *key, size_t klen, int create)
{
    for (uint64_t d = 0; d <= m->mask; d++) {
        struct mt_slot *s = mt_at(m, h + d);
        if (s->type == MT_EMPTY) {
            if (!create) return NULL;
            s->hash = h;
            s->klen = (uint32_t)klen;
            memcpy((unsigned char *)s + m->key_off, key, klen);
            return s;
        }
        if (s->hash == h && s->klen == klen && memcmp((unsigned char *)s + m->key_off, key, klen) == 0) return s;
    }
    return NULL;
}

static int mt_open(struct store *s, char *err, size_t n)
{
    uint64_t key_max = param_u64(s, "key_max", 250), value_max = param_u64(s, "value_max", 256);
    int robust = (int)param_u64(s, "robust", 0);
    if (key_max < KEY_LEN || key_max > 250 || value_max < VALUE_LEN || value_max > 65536) {
        snprintf(err, n, "key_max must be in [%d, 250] and value_max in [%d, 65536]", KEY_LEN, VALUE_LEN);
        return BENCH_ERR;
    }
    struct mt *m = calloc(1, sizeof *m);
    if (!m) return BENCH_ERR;
    uint64_t want = (uint64_t)s->cfg->keys + s->cfg->keys / 2, cap = 64;
    while (cap < want)
        cap <<= 1;
    m->key_off = (uint32_t)sizeof(struct mt_slot);
    m->val_off = m->key_off + (uint32_t)((key_max + 7) & ~7ull);
    m->slot_size = (uint32_t)((m->val_off + ((value_max + 7) & ~7ull) + 63) & ~63ull);
    m->value_max = (uint32_t)value_max;
    m->mask = cap - 1;
    m->seed = 0x7f4a7c15u ^ (uint64_t)(uintptr_t)m;
    m->ttl_ms = s->cfg->ttl > 0 ? (int64_t)(s->cfg->ttl * 1000.0 + 0.999) : 0;
    m->map_size = 4096 + (size_t)cap * m->slot_size;
    if (!(m->base = shared_map(m->map_size, err, n))) {
        free(m);
        return BENCH_ERR;
    }
    m->hd = (struct mt_head *)m->base;
    m->slots = m->base + 4096;
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    if (robust) pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(&m->hd->mu, &a);
    pthread_mutexattr_destroy(&a);
    s->priv = s->h = m;
    return BENCH_OK;
}

static int mt_incr(void *h, uint32_t i, int64_t *out)
{
    struct mt *m = h;
    const char *key = bench_key(i);
    uint64_t hv = mt_hash(m->seed, key, KEY_LEN);
    int rc = 0;
    mt_lock(m);
    struct mt_slot *s = mt_find(m, hv, key, KEY_LEN, 1);
    if (!s) {
        rc = E_FULL;
    } else if (s->type == MT_BYTES && !mt_expired(s->expires)) {
        rc = E_TYPE;
    } else if (s->type == MT_EMPTY || mt_expired(s->expires)) {
        s->type = MT_COUNTER;
        s->counter = 1;
        s->expires = m->ttl_ms ? coarse_ms(CLOCK_MONOTONIC) + m->ttl_ms : 0;
        *out = 1;
    } else {
        *out = ++s->counter;
    }
    mt_unlock(m);
    return rc;
}

static int mt_get(void *h, uint32_t i, size_t *len)
{
    struct mt *m = h;
    const char *key = bench_key(i);
    uint64_t hv = mt_hash(m->seed, key, KEY_LEN);
    char buf[64];
    int rc = 0, counter = 0;
    int64_t v = 0;
    mt_lock(m);
    struct mt_slot *s = mt_find(m, hv, key, KEY_LEN, 0);
    if (!s || mt_expired(s->expires)) {
        rc = E_NOTFOUND;
    } else if (s->type == MT_COUNTER) {
        counter = 1;
        v = s->counter;
    } else {
        *len = s->vlen;
        memcpy(buf, (unsigned char *)s + m->val_off, s->vlen < sizeof buf ? s->vlen : sizeof buf);
    }
    mt_unlock(m);
    if (counter) *len = (size_t)snprintf(buf, sizeof buf, "%lld", (long long)v); /* as a counter reads */
    return rc;
}

static int mt_set(void *h, uint32_t i, const void *val, size_t len)
{
    struct mt *m = h;
    const char *key = bench_key(i);
    uint64_t hv = mt_hash(m->seed, key, KEY_LEN);
    if (len > m->value_max) return -3;
    int rc = 0;
    mt_lock(m);
    struct mt_slot *s = mt_find(m, hv, key, KEY_LEN, 1);
    if (!s) {
        rc = E_FULL;
    } else {
        s->type = MT_BYTES;
        s->counter = 0;
        memcpy((unsigned char *)s + m->val_off, val, len);
        s->vlen = (uint32_t)len;
        s->expires = m->ttl_ms ? coarse_ms(CLOCK_MONOTONIC) + m->ttl_ms : 0;
    }
    mt_unlock(m);
    return rc;
}

static int mt_sum(struct store *s, int64_t *sum, char *err, size_t n)
{
    struct mt *m = s->priv;
    int64_t t = 0;
    mt_lock(m);
    for (uint32_t i = 0; i < s->cfg->keys; i++) {
        if (!bench_is_counter(s->cfg, i)) continue;
        struct mt_slot *sl = mt_find(m, mt_hash(m->seed, bench_key(i), KEY_LEN), bench_key(i), KEY_LEN, 0);
        if (!sl || sl->type != MT_COUNTER) {
            mt_unlock(m);
            snprintf(err, n, "%s is missing or not a counter", bench_key(i));
            return BENCH_ERR;
        }
        t += sl->counter;
    }
    mt_unlock(m);
    *sum = t;
    return BENCH_OK;
}

static void mt_close(struct store *s)
{
    struct mt *m = s->priv;
    if (m) {
        pthread_mutex_destroy(&m->hd->mu);
        munmap(m->base, m->map_size);
    }
    free(m);
    s->priv = s->h = NULL;
}

const struct store_ops store_mutex_table = {
    .prefix = "bench:mutex-table",
    .open = mt_open,
    .incr = mt_incr,
    .get = mt_get,
    .set = mt_set,
    .sum = mt_sum,
    .close = mt_close,
};
