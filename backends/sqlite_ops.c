/*
 * sqlite_ops.c — the SQLite backend's operations: get, set, delete, exists, increment, ttl,
 * clear, stats. Each is ONE statement in autocommit mode on a connection checked out of the
 * process's pool (sqlite.c), so the only lock it takes is SQLite's write lock, for the length
 * of that statement.
 *
 * Every read filters `expires = 0 OR expires > now`, so an expired row is never
 * returned whether or not the sweeper has run. increment is one
 *     INSERT … ON CONFLICT(key) DO UPDATE … WHERE <expired, or a counter that will not
 *     overflow> RETURNING counter
 * which creates the key with its TTL, resets an expired row (new TTL), or adds to a live
 * counter (expiry kept). When the WHERE refuses (a live bytes value, or an overflow) nothing
 * is written and nothing returned; a read then names the reason (ETYPE / EOVERFLOW), or
 * finds that the row changed in between and the upsert runs again.
 */
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "sqlite_internal.h"

/* ---- operations ------------------------------------------------------------------------ */

/* Copies the current row of ST_GET (kind, counter, value) out; a counter as decimal text, a
 * rate-limit state as JSON text. */
static int copy_value(const sqlite_backend *s, sq_conn *c, sqlite3_stmt *st, const char *key, void *buf, size_t cap,
                      size_t *len)
{
    char digits[24];
    const void *src = digits;
    size_t n;
    if (sqlite3_column_int(st, 0) == SQ_KIND_BYTES && sqlite3_column_int64(st, 1) != 0)
        return sq_limit_show(s, c, st, key, buf, cap, len);
    if (sqlite3_column_int(st, 0) == SQ_KIND_COUNTER) {
        n = (size_t)snprintf(digits, sizeof digits, "%lld", (long long)sqlite3_column_int64(st, 1));
    } else {
        src = sqlite3_column_blob(st, 2);
        n = (size_t)sqlite3_column_bytes(st, 2);
    }
    *len = n;
    if (n > cap)
        return traffic_backend_fail(EB(s), TRAFFIC_ERANGE, "value of \"%.64s\" is %zu bytes, buffer holds %zu", key, n,
                                    cap);
    if (n) memcpy(buf, src, n);
    return TRAFFIC_OK;
}

int sq_get(traffic_backend *b, const char *key, size_t klen, void *buf, size_t cap, size_t *len)
{
    sqlite_backend *s = S(b);
    sq_conn *c;
    CHECK(sq_pool_get(s, &c));
    int rc = sq_lookup(s, c, ST_GET, key, klen, "get");
    if (rc == 1)
        rc = copy_value(s, c, c->st[ST_GET], key, buf, cap, len);
    else if (rc == 0)
        rc = sq_not_found(s, key);
    sq_reset(c->st[ST_GET]);
    sq_pool_put(s, c);
    if (rc == TRAFFIC_OK || rc == TRAFFIC_ERANGE)
        COUNT(s, hits);
    else if (rc == TRAFFIC_ENOTFOUND)
        COUNT(s, misses);
    return rc;
}

int sq_exists(traffic_backend *b, const char *key, size_t klen)
{
    sqlite_backend *s = S(b);
    sq_conn *c;
    CHECK(sq_pool_get(s, &c));
    int rc = sq_lookup(s, c, ST_EXISTS, key, klen, "exists");
    sq_reset(c->st[ST_EXISTS]);
    sq_pool_put(s, c);
    if (rc == 1)
        COUNT(s, hits);
    else if (rc == 0)
        COUNT(s, misses);
    return rc;
}

int sq_ttl(traffic_backend *b, const char *key, size_t klen, int64_t *ttl_ms)
{
    sqlite_backend *s = S(b);
    sq_conn *c;
    CHECK(sq_pool_get(s, &c));
    int64_t now = sq_wall_ms();
    sqlite3_stmt *st = c->st[ST_TTL];
    sq_bind_key(st, key, klen);
    sqlite3_bind_int64(st, 2, now);
    int rc = sq_step(s, c, st, "ttl");
    if (rc == 1) {
        int64_t e = sqlite3_column_int64(st, 0);
        *ttl_ms = e == 0 ? -1 : e - now; /* e > now: the statement's filter */
        rc = TRAFFIC_OK;
    } else if (rc == 0) {
        rc = sq_not_found(s, key);
    }
    sq_reset(st);
    sq_pool_put(s, c);
    if (rc == TRAFFIC_OK)
        COUNT(s, hits);
    else if (rc == TRAFFIC_ENOTFOUND)
        COUNT(s, misses);
    return rc;
}

int sq_set(traffic_backend *b, const char *key, size_t klen, const void *val, size_t len, int64_t ttl_ms)
{
    sqlite_backend *s = S(b);
    if (len > TRAFFIC_SQLITE_VALUE_MAX)
        return traffic_backend_fail(b, TRAFFIC_ETOOBIG, "value of %zu bytes is over the sqlite limit of %d", len,
                                    TRAFFIC_SQLITE_VALUE_MAX);
    sq_conn *c;
    CHECK(sq_pool_get(s, &c));
    sqlite3_stmt *st = c->st[ST_SET];
    sq_bind_key(st, key, klen);
    int rc = sqlite3_bind_blob(st, 2, val, (int)len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, ttl_ms); /* counted from the write: traffic_now_ms() */
    if (rc != SQLITE_OK)
        rc = sq_fail(s, c->db, rc, "set");
    else
        rc = sq_write(s, c, st, "set");
    sq_reset(st);
    sqlite3_bind_null(st, 2); /* drop the reference to the caller's buffer */
    sq_pool_put(s, c);
    if (rc < 0) return rc;
    COUNT(s, sets);
    return TRAFFIC_OK;
}

/* The upsert of the banner: 1 and *out set when it wrote, 0 when its WHERE refused. */
static int incr_upsert(const sqlite_backend *s, sq_conn *c, const char *key, size_t klen, int64_t amount,
                       int64_t ttl_ms, int64_t *out)
{
    sqlite3_stmt *st = c->st[ST_INCR];
    sq_bind_key(st, key, klen);
    sqlite3_bind_int64(st, 2, amount);
    sqlite3_bind_int64(st, 3, ttl_ms); /* counted from the write: traffic_now_ms() */
    sqlite3_bind_int64(st, 4, amount < 0 ? INT64_MIN - amount : INT64_MIN);
    sqlite3_bind_int64(st, 5, amount > 0 ? INT64_MAX - amount : INT64_MAX);
    int rc = sq_write(s, c, st, "increment");
    if (rc != 1) {
        sq_reset(st);
        return rc;
    }
    *out = sqlite3_column_int64(st, 0);
    int end = sq_end(s, c, st, "increment");
    return end ? end : 1;
}

/* Why did the upsert refuse? TRAFFIC_ETYPE, TRAFFIC_EOVERFLOW, or 0: the row changed since
 * (deleted, expired, set to a counter that fits), so the upsert should run again. */
static int incr_refusal(const sqlite_backend *s, sq_conn *c, const char *key, size_t klen, int64_t amount)
{
    sqlite3_stmt *st = c->st[ST_GET];
    int rc = sq_lookup(s, c, ST_GET, key, klen, "increment");
    int64_t sum;
    char what[SQ_WHAT_LEN];
    if (rc == 1 && sqlite3_column_int(st, 0) != SQ_KIND_COUNTER)
        rc = traffic_backend_fail(EB(s), TRAFFIC_ETYPE, "\"%.64s\" holds %s, not a counter", key,
                                  sq_row_what(sqlite3_column_int(st, 0), sqlite3_column_int64(st, 1), what));
    else if (rc == 1 && __builtin_add_overflow(sqlite3_column_int64(st, 1), amount, &sum))
        rc = traffic_backend_fail(EB(s), TRAFFIC_EOVERFLOW, "incrementing \"%.64s\" would overflow int64", key);
    else if (rc > 0)
        rc = 0;
    sq_reset(st);
    return rc;
}

int sq_increment(traffic_backend *b, const char *key, size_t klen, int64_t amount, int64_t ttl_ms, int64_t *out)
{
    sqlite_backend *s = S(b);
    sq_conn *c;
    CHECK(sq_pool_get(s, &c));
    int rc = 0;
    for (int i = 0; i < SQ_INCR_RETRIES && rc == 0; i++) {
        rc = incr_upsert(s, c, key, klen, amount, ttl_ms, out);
        if (rc == 0) rc = incr_refusal(s, c, key, klen, amount);
    }
    sq_pool_put(s, c);
    if (rc == 0)
        return traffic_backend_fail(b, TRAFFIC_ETIMEDOUT, "\"%.64s\" kept changing type under %d increments", key,
                                    SQ_INCR_RETRIES);
    if (rc < 0) return rc;
    COUNT(s, increments);
    return TRAFFIC_OK;
}

int sq_del(traffic_backend *b, const char *key, size_t klen)
{
    sqlite_backend *s = S(b);
    sq_conn *c;
    CHECK(sq_pool_get(s, &c));
    sqlite3_stmt *st = c->st[ST_DEL];
    sq_bind_key(st, key, klen);
    int rc = sq_write(s, c, st, "delete");
    int64_t e = rc == 1 ? sqlite3_column_int64(st, 0) : 0;
    if (rc == 1) {
        int end = sq_end(s, c, st, "delete");
        rc = end ? end : 1;
    }
    sq_reset(st);
    sq_pool_put(s, c);
    if (rc < 0) return rc;
    if (rc == 1 && e != 0 && e <= sq_wall_ms())
        COUNT(s, expirations); /* it had expired already */
    else if (rc == 1)
        COUNT(s, deletes);
    return TRAFFIC_OK;
}

int sq_clear(traffic_backend *b)
{
    sqlite_backend *s = S(b);
    sq_conn *c;
    CHECK(sq_pool_get(s, &c));
    int rc = sq_write(s, c, c->st[ST_CLEAR], "clear");
    sq_reset(c->st[ST_CLEAR]);
    sq_pool_put(s, c);
    return rc < 0 ? rc : TRAFFIC_OK;
}

/* ---- stats ----------------------------------------------------------------------------- */

static uint64_t file_size(const char *path, const char *suffix)
{
    char name[PATH_MAX + 8];
    struct stat st;
    snprintf(name, sizeof name, "%s%s", path, suffix);
    return stat(name, &st) == 0 ? (uint64_t)st.st_size : 0;
}

int sq_stats(traffic_backend *b, struct traffic_stats *o)
{
    sqlite_backend *s = S(b);
    sq_conn *c;
    CHECK(sq_pool_get(s, &c));
    sqlite3_stmt *st = c->st[ST_STATS];
    sqlite3_bind_int64(st, 1, sq_wall_ms());
    int rc = sq_step(s, c, st, "stats");
    if (rc == 1) {
        o->keys = (uint64_t)sqlite3_column_int64(st, 0);
        o->expired_pending = (uint64_t)sqlite3_column_int64(st, 1);
        o->reaper_pid = sqlite3_column_int64(st, 2);
    }
    sq_reset(st);
    sq_pool_put(s, c);
    if (rc < 0) return rc;
#define N(f) atomic_load_explicit(&s->n.f, memory_order_relaxed)
    o->hits = N(hits);
    o->misses = N(misses);
    o->sets = N(sets);
    o->increments = N(increments);
    o->deletes = N(deletes);
    o->expirations = N(expirations);
    o->busy_retries = N(busy_retries);
    o->reaper_runs = N(reaper_runs);
    o->decisions = N(decisions);
    o->denied = N(denied);
#undef N
    o->bytes_used = file_size(s->path, "");
    o->wal_bytes = file_size(s->path, "-wal");
    return TRAFFIC_OK;
}
