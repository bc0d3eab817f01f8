/*
 * store_hiredis.c — bench:raw-hiredis?url=redis://HOST:PORT[/DB] or ?unix=/PATH: the same
 * operations as plain hiredis calls against a redis-server, one blocking round trip each, no
 * pipelining (INCR, GET, SET [PX ms]), to show what the redis:// backend's own layer costs
 * and what a network hop costs against shared memory.
 *
 * INCR ignores --ttl (a bare INCR, as the reference figures were taken). The keys are
 * "key:%010u" in the selected database: point it at a scratch server, the prefill overwrites
 * them. Each worker connects after fork(); the parent disconnects around every fork. The
 * prefill and the check pipeline their commands (they are not measured).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "bench.h"

#define PIPE_CHUNK 512

struct rh_store {
    char host[256], unix_path[512];
    int port, db;
    long long ttl_ms;
    redisContext *parent, *worker;
};

static long long rh_ttl_ms;

/* redis://[user:password@]host[:port][/db]; a password is not supported here. */
static int rh_parse(struct rh_store *st, const char *url, char *err, size_t n)
{
    if (strncmp(url, "redis://", 8) != 0) {
        snprintf(err, n, "url=%s: want redis://HOST:PORT[/DB]", url);
        return BENCH_ERR;
    }
    const char *p = url + 8, *at = strchr(p, '@');
    if (at) p = at + 1;
    size_t hl = strcspn(p, ":/");
    if (hl == 0 || hl >= sizeof st->host) {
        snprintf(err, n, "url=%s: no host", url);
        return BENCH_ERR;
    }
    memcpy(st->host, p, hl);
    st->host[hl] = '\0';
    p += hl;
    st->port = 6379;
    if (*p == ':') st->port = (int)strtol(p + 1, (char **)&p, 10);
    if (*p == '/') st->db = atoi(p + 1);
    return BENCH_OK;
}

static redisContext *rh_connect(struct rh_store *st, char *err, size_t n)
{
    struct timeval tv = {5, 0};
    redisContext *c = st->unix_path[0] ? redisConnectUnixWithTimeout(st->unix_path, tv)
                                       : redisConnectWithTimeout(st->host, st->port, tv);
    if (!c || c->err) {
        char where[600];
        if (st->unix_path[0])
            snprintf(where, sizeof where, "unix:%s", st->unix_path);
        else
            snprintf(where, sizeof where, "%s:%d", st->host, st->port);
        snprintf(err, n, "connect to %s: %s", where, c ? c->errstr : "out of memory");
        if (c) redisFree(c);
        return NULL;
    }
    if (st->db) {
        redisReply *r = redisCommand(c, "SELECT %d", st->db);
        int ok = r && r->type == REDIS_REPLY_STATUS;
        if (r) freeReplyObject(r);
        if (!ok) {
            snprintf(err, n, "SELECT %d failed", st->db);
            redisFree(c);
            return NULL;
        }
    }
    return c;
}

static int rh_open(struct store *s, char *err, size_t n)
{
    struct rh_store *st = calloc(1, sizeof *st);
    if (!st) return BENCH_ERR;
    s->priv = st;
    char url[512];
    if (bench_url_param(s->url, "unix", st->unix_path, sizeof st->unix_path)) {
        if (!st->unix_path[0]) {
            snprintf(err, n, "unix= is empty");
            return BENCH_ERR;
        }
    } else if (!bench_url_param(s->url, "url", url, sizeof url) || rh_parse(st, url, err, n)) {
        if (!err[0]) snprintf(err, n, "bench:raw-hiredis needs ?url=redis://HOST:PORT or ?unix=/PATH");
        return BENCH_ERR;
    }
    rh_ttl_ms = s->cfg->ttl > 0 ? (long long)(s->cfg->ttl * 1000.0 + 0.999) : 0;
    if (!(st->parent = rh_connect(st, err, n))) return BENCH_ERR;
    s->h = st->parent;
    return BENCH_OK;
}

static void rh_release(struct store *s)
{
    struct rh_store *st = s->priv;
    if (st->parent) redisFree(st->parent);
    st->parent = NULL;
    s->h = NULL;
}

static int rh_reacquire(struct store *s, char *err, size_t n)
{
    struct rh_store *st = s->priv;
    if (!(st->parent = rh_connect(st, err, n))) return BENCH_ERR;
    s->h = st->parent;
    return BENCH_OK;
}

static int rh_attach(struct store *s, int w, char *err, size_t n)
{
    (void)w;
    struct rh_store *st = s->priv;
    if (!(st->worker = rh_connect(st, err, n))) return BENCH_ERR;
    s->h = st->worker;
    return BENCH_OK;
}

static void rh_detach(struct store *s)
{
    struct rh_store *st = s->priv;
    if (st->worker) redisFree(st->worker);
    st->worker = NULL;
}

/* 0 if the reply has the wanted type, else -1 (a NULL reply: the connection failed). */
static int rh_done(redisReply *r, int type)
{
    int rc = r && r->type == type ? 0 : -1;
    if (r) freeReplyObject(r);
    return rc;
}

static int rh_incr(void *h, uint32_t i, int64_t *out)
{
    redisReply *r = redisCommand(h, "INCR %b", bench_key(i), (size_t)KEY_LEN);
    if (r && r->type == REDIS_REPLY_INTEGER) *out = r->integer;
    return rh_done(r, REDIS_REPLY_INTEGER);
}

static int rh_get(void *h, uint32_t i, size_t *len)
{
    redisReply *r = redisCommand(h, "GET %b", bench_key(i), (size_t)KEY_LEN);
    if (r && r->type == REDIS_REPLY_STRING) *len = r->len;
    return rh_done(r, REDIS_REPLY_STRING);
}

static int rh_set(void *h, uint32_t i, const void *val, size_t len)
{
    redisReply *r = rh_ttl_ms ? redisCommand(h, "SET %b %b PX %lld", bench_key(i), (size_t)KEY_LEN, val, len, rh_ttl_ms)
                              : redisCommand(h, "SET %b %b", bench_key(i), (size_t)KEY_LEN, val, len);
    return rh_done(r, REDIS_REPLY_STATUS);
}

/* Runs one command per key, PIPE_CHUNK at a time: cmd ("GET %b") on the counter keys
 * (counters == 1), or with cmd NULL the prefill's SET on every key (counters == -1); fn sees
 * each reply and returns non-zero to fail. */
typedef int (*rh_each)(redisContext *c, uint32_t i, redisReply *r, void *arg);

static int rh_pipeline(struct store *s, int counters, const char *cmd, rh_each fn, void *arg, char *err, size_t n)
{
    redisContext *c = s->h;
    static const char val[VALUE_LEN + 1] = "prefill-value-16";
    for (uint32_t from = 0; from < s->cfg->keys; from += PIPE_CHUNK) {
        uint32_t to = from + PIPE_CHUNK < s->cfg->keys ? from + PIPE_CHUNK : s->cfg->keys;
        for (uint32_t i = from; i < to; i++) {
            if (counters >= 0 && bench_is_counter(s->cfg, i) != counters) continue;
            if (cmd)
                redisAppendCommand(c, cmd, bench_key(i), (size_t)KEY_LEN);
            else if (bench_is_counter(s->cfg, i))
                redisAppendCommand(c, "SET %b 1", bench_key(i), (size_t)KEY_LEN);
            else
                redisAppendCommand(c, "SET %b %b", bench_key(i), (size_t)KEY_LEN, val, (size_t)VALUE_LEN);
        }
        for (uint32_t i = from; i < to; i++) {
            if (counters >= 0 && bench_is_counter(s->cfg, i) != counters) continue;
            redisReply *r = NULL;
            if (redisGetReply(c, (void **)&r) != REDIS_OK || !r || fn(c, i, r, arg)) {
                snprintf(err, n, "pipelined %s of %s: %s", cmd ? cmd : "SET", bench_key(i),
                         r && r->type == REDIS_REPLY_ERROR ? r->str : c->errstr);
                if (r) freeReplyObject(r);
                return BENCH_ERR;
            }
            freeReplyObject(r);
        }
    }
    return BENCH_OK;
}

static int want_status(redisContext *c, uint32_t i, redisReply *r, void *arg)
{
    (void)c, (void)i, (void)arg;
    return r->type != REDIS_REPLY_STATUS;
}

static int add_integer(redisContext *c, uint32_t i, redisReply *r, void *arg)
{
    (void)c, (void)i;
    if (r->type != REDIS_REPLY_STRING) return -1;
    *(int64_t *)arg += strtoll(r->str, NULL, 10);
    return 0;
}

static int rh_prefill(struct store *s, char *err, size_t n)
{
    return rh_pipeline(s, -1, NULL, want_status, NULL, err, n);
}

static int rh_sum(struct store *s, int64_t *sum, char *err, size_t n)
{
    *sum = 0;
    return rh_pipeline(s, 1, "GET %b", add_integer, sum, err, n);
}

static void rh_close(struct store *s)
{
    struct rh_store *st = s->priv;
    if (st && st->parent) redisFree(st->parent);
    free(st);
    s->priv = s->h = NULL;
}

const struct store_ops store_raw_hiredis = {
    .prefix = "bench:raw-hiredis",
    .open = rh_open,
    .release = rh_release,
    .reacquire = rh_reacquire,
    .attach = rh_attach,
    .detach = rh_detach,
    .incr = rh_incr,
    .get = rh_get,
    .set = rh_set,
    .prefill = rh_prefill,
    .sum = rh_sum,
    .close = rh_close,
};
