/*
 * store_sqlite.c — bench:raw-sqlite?path=FILE: the same operations written directly against
 * sqlite3, the way an application would without this library, to show what the sqlite://
 * backend's own layer costs.
 *
 * One table bench_kv(k TEXT PRIMARY KEY, n INTEGER, v BLOB, e INTEGER) in FILE (created if
 * absent, emptied at the start), journal_mode=WAL, synchronous=NORMAL, busy_timeout 5 s.
 * Each worker opens its own connection after fork() and prepares three statements once:
 *   increment  INSERT … VALUES (?1, 1, ?2) ON CONFLICT (k) DO UPDATE SET n = n + 1 RETURNING n
 *   get        SELECT n, v FROM bench_kv WHERE k = ?1
 *   set        INSERT … ON CONFLICT (k) DO UPDATE SET v = excluded.v, e = excluded.e
 * each one autocommit transaction. The TTL is stored, not enforced (raw: no expiry logic).
 * The parent closes its own connection around every fork, so no connection (and none of
 * SQLite's per-process lock bookkeeping) is ever inherited.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sqlite3.h>

#include "bench.h"

struct sq {
    sqlite3 *db;
    sqlite3_stmt *incr, *get, *set;
    int64_t ttl_ms;
};

struct sq_store {
    char path[1024];
    struct sq parent, worker;
};

static int sq_err(sqlite3 *db, const char *what, char *err, size_t n)
{
    snprintf(err, n, "%s: %s", what, db ? sqlite3_errmsg(db) : "out of memory");
    return BENCH_ERR;
}

static void sq_disconnect(struct sq *c)
{
    sqlite3_finalize(c->incr);
    sqlite3_finalize(c->get);
    sqlite3_finalize(c->set);
    sqlite3_close(c->db);
    memset(c, 0, sizeof *c);
}

static int sq_connect(struct sq_store *st, struct sq *c, double ttl, char *err, size_t n)
{
    memset(c, 0, sizeof *c);
    c->ttl_ms = ttl > 0 ? (int64_t)(ttl * 1000.0 + 0.999) : 0;
    if (sqlite3_open_v2(st->path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != SQLITE_OK) goto fail;
    sqlite3_busy_timeout(c->db, 5000);
    if (sqlite3_exec(c->db,
                     "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;"
                     "CREATE TABLE IF NOT EXISTS bench_kv (k TEXT PRIMARY KEY, n INTEGER NOT NULL DEFAULT 0,"
                     " v BLOB, e INTEGER NOT NULL DEFAULT 0);",
                     NULL, NULL, NULL) != SQLITE_OK)
        goto fail;
    if (sqlite3_prepare_v2(c->db,
                           "INSERT INTO bench_kv (k, n, e) VALUES (?1, 1, ?2)"
                           " ON CONFLICT (k) DO UPDATE SET n = n + 1 RETURNING n",
                           -1, &c->incr, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(c->db, "SELECT n, v FROM bench_kv WHERE k = ?1", -1, &c->get, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(c->db,
                           "INSERT INTO bench_kv (k, n, v, e) VALUES (?1, 0, ?2, ?3)"
                           " ON CONFLICT (k) DO UPDATE SET n = 0, v = excluded.v, e = excluded.e",
                           -1, &c->set, NULL) != SQLITE_OK)
        goto fail;
    return BENCH_OK;
fail:
    sq_err(c->db, st->path, err, n);
    sq_disconnect(c);
    return BENCH_ERR;
}

static int64_t expiry(const struct sq *c)
{
    if (!c->ttl_ms) return 0;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + c->ttl_ms;
}

/* Steps a prepared statement to its end; returns 0 or the SQLite code negated. */
static int run(sqlite3_stmt *st, int64_t *first_col)
{
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        if (first_col) *first_col = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : -rc;
}

static int sq_incr(void *h, uint32_t i, int64_t *out)
{
    struct sq *c = h;
    sqlite3_bind_text(c->incr, 1, bench_key(i), KEY_LEN, SQLITE_STATIC);
    sqlite3_bind_int64(c->incr, 2, expiry(c));
    return run(c->incr, out);
}

static int sq_get(void *h, uint32_t i, size_t *len)
{
    struct sq *c = h;
    sqlite3_bind_text(c->get, 1, bench_key(i), KEY_LEN, SQLITE_STATIC);
    int rc = sqlite3_step(c->get), out = -1;
    if (rc == SQLITE_ROW) {
        if (sqlite3_column_type(c->get, 1) != SQLITE_NULL) {
            (void)sqlite3_column_blob(c->get, 1);
            *len = (size_t)sqlite3_column_bytes(c->get, 1);
        } else {
            (void)sqlite3_column_text(c->get, 0); /* a counter reads as its decimal text */
            *len = (size_t)sqlite3_column_bytes(c->get, 0);
        }
        out = 0;
    } else if (rc != SQLITE_DONE) {
        out = -rc;
    }
    sqlite3_reset(c->get);
    return out;
}

static int sq_set(void *h, uint32_t i, const void *val, size_t len)
{
    struct sq *c = h;
    sqlite3_bind_text(c->set, 1, bench_key(i), KEY_LEN, SQLITE_STATIC);
    sqlite3_bind_blob(c->set, 2, val, (int)len, SQLITE_STATIC);
    sqlite3_bind_int64(c->set, 3, expiry(c));
    return run(c->set, NULL);
}

static int sq_open(struct store *s, char *err, size_t n)
{
    struct sq_store *st = calloc(1, sizeof *st);
    if (!st) return BENCH_ERR;
    s->priv = st;
    if (!bench_url_param(s->url, "path", st->path, sizeof st->path) || !st->path[0]) {
        snprintf(err, n, "bench:raw-sqlite needs ?path=FILE");
        return BENCH_ERR;
    }
    if (sq_connect(st, &st->parent, s->cfg->ttl, err, n)) return BENCH_ERR;
    s->h = &st->parent;
    return BENCH_OK;
}

static void sq_release(struct store *s)
{
    struct sq_store *st = s->priv;
    sq_disconnect(&st->parent);
    s->h = NULL;
}

static int sq_reacquire(struct store *s, char *err, size_t n)
{
    struct sq_store *st = s->priv;
    if (sq_connect(st, &st->parent, s->cfg->ttl, err, n)) return BENCH_ERR;
    s->h = &st->parent;
    return BENCH_OK;
}

static int sq_attach(struct store *s, int w, char *err, size_t n)
{
    (void)w;
    struct sq_store *st = s->priv;
    if (sq_connect(st, &st->worker, s->cfg->ttl, err, n)) return BENCH_ERR;
    s->h = &st->worker;
    return BENCH_OK;
}

static void sq_detach(struct store *s)
{
    struct sq_store *st = s->priv;
    sq_disconnect(&st->worker);
}

/* Empties the table and loads every key in one transaction. */
static int sq_prefill(struct store *s, char *err, size_t n)
{
    struct sq *c = s->h;
    if (sqlite3_exec(c->db, "DELETE FROM bench_kv; BEGIN", NULL, NULL, NULL) != SQLITE_OK)
        return sq_err(c->db, "prefill", err, n);
    static const char val[VALUE_LEN + 1] = "prefill-value-16";
    for (uint32_t i = 0; i < s->cfg->keys; i++) {
        int rc = bench_is_counter(s->cfg, i) ? sq_incr(c, i, &(int64_t){0}) : sq_set(c, i, val, VALUE_LEN);
        if (rc) {
            sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
            return sq_err(c->db, "prefill", err, n);
        }
    }
    if (sqlite3_exec(c->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) return sq_err(c->db, "prefill", err, n);
    return BENCH_OK;
}

static int sq_sum(struct store *s, int64_t *sum, char *err, size_t n)
{
    struct sq *c = s->h;
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(c->db, "SELECT coalesce(sum(n), 0) FROM bench_kv WHERE v IS NULL", -1, &st, NULL))
        return sq_err(c->db, "sum", err, n);
    int rc = run(st, sum);
    sqlite3_finalize(st);
    return rc ? sq_err(c->db, "sum", err, n) : BENCH_OK;
}

static void sq_close(struct store *s)
{
    struct sq_store *st = s->priv;
    if (st) sq_disconnect(&st->parent);
    free(st);
    s->priv = s->h = NULL;
}

const struct store_ops store_raw_sqlite = {
    .prefix = "bench:raw-sqlite",
    .open = sq_open,
    .release = sq_release,
    .reacquire = sq_reacquire,
    .attach = sq_attach,
    .detach = sq_detach,
    .incr = sq_incr,
    .get = sq_get,
    .set = sq_set,
    .prefill = sq_prefill,
    .sum = sq_sum,
    .close = sq_close,
};
