/*
 * memory.c — the memory backend: adapts the shared-memory table (shm/) to the vtable.
 *
 * This file owns what the table does not know about: URLs and their parameters, the public
 * status codes and messages, and the typed opener. Every operation is a direct call into
 * shm/, whose statuses are numerically the public ones (asserted below).
 */
#include <stdlib.h>
#include <string.h>

#include "../shm/shm.h"
#include "internal.h"

_Static_assert(SHM_ENOTFOUND == TRAFFIC_ENOTFOUND && SHM_EINVAL == TRAFFIC_EINVAL && SHM_ETOOBIG == TRAFFIC_ETOOBIG &&
                   SHM_EFULL == TRAFFIC_EFULL && SHM_ETYPE == TRAFFIC_ETYPE && SHM_EOVERFLOW == TRAFFIC_EOVERFLOW &&
                   SHM_EIO == TRAFFIC_EIO && SHM_ECORRUPT == TRAFFIC_ECORRUPT && SHM_ENOMEM == TRAFFIC_ENOMEM &&
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
    case SHM_ETYPE: return traffic_backend_fail(b, rc, "\"%.64s\" holds a bytes value, not a counter", key);
    case SHM_EOVERFLOW: return traffic_backend_fail(b, rc, "incrementing \"%.64s\" would overflow int64", key);
    case SHM_ENOTFOUND: return traffic_backend_fail(b, rc, "\"%.64s\" not found or expired", key);
    default: return rc;
    }
}

static int m_get(traffic_backend *b, const char *key, size_t klen, void *buf, size_t cap, size_t *len)
{
    int rc = shm_get(T(b), key, klen, buf, cap, len);
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
