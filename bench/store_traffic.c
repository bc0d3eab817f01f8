/*
 * store_traffic.c — any URL that is not a bench: baseline goes to the library, through the
 * public API only (include/traffic/traffic.h), exactly as a user's worker would call it.
 *
 * A memory table is opened once in the parent and inherited by every worker (the way a
 * preforking server uses it). Other backends (sqlite://, redis://) are opened by each worker
 * after fork() and by the parent around the runs, so that no connection ever crosses a fork.
 * A memory URL without max_size gets max_size=KEYS, so that the run never evicts. The store
 * is cleared (traffic_clear) before the prefill: a file or a server may hold an earlier run.
 * A named table (memory://NAME, /dev/shm/traffic.NAME) that the run created is unlinked at
 * the end; one that existed before is left in place. Under --op limit every operation is one
 * traffic_limit of cost 1 under the rule of --rule.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <traffic/traffic.h>

#include "bench.h"

struct tr {
    traffic_backend *parent; /* NULL while released around a fork */
    traffic_backend *mine;   /* a worker's own handle (non-shared backends) */
    int shared;              /* memory: inherited through fork() */
    char created[256];       /* memory://NAME that this run created: unlinked at the end */
};

/* The NAME of memory://NAME[?…] into out, or "" for an anonymous table. */
static void memory_name(const char *url, char *out, size_t cap)
{
    const char *p = url + strlen("memory:");
    while (*p == '/')
        p++;
    size_t n = strcspn(p, "?");
    if (n >= cap) n = cap - 1;
    memcpy(out, p, n);
    out[n] = '\0';
}

static double tr_ttl;
static traffic_rule tr_rule;

static int tr_fail(int rc, const char *what, const char *url, char *err, size_t n)
{
    snprintf(err, n, "%s %s: %s (%s)", what, url, traffic_strerror(rc), traffic_errmsg(NULL));
    return rc == TRAFFIC_ENOTSUP ? BENCH_SKIP : BENCH_ERR;
}

static int tr_open(struct store *s, char *err, size_t n)
{
    struct tr *t = calloc(1, sizeof *t);
    if (!t) return BENCH_ERR;
    s->priv = t;
    tr_ttl = s->cfg->ttl;
    tr_rule = s->cfg->rule;
    t->shared = strncmp(s->url, "memory:", 7) == 0;
    char tmp[32];
    size_t need = strlen(s->url) + 64;
    if (!(s->eff_url = malloc(need))) return BENCH_ERR;
    if (t->shared && !bench_url_param(s->url, "max_size", tmp, sizeof tmp))
        snprintf(s->eff_url, need, "%s%cmax_size=%u", s->url, strchr(s->url, '?') ? '&' : '?', s->cfg->keys);
    else
        snprintf(s->eff_url, need, "%s", s->url);
    char name[256] = "", path[300];
    if (t->shared) memory_name(s->url, name, sizeof name);
    snprintf(path, sizeof path, "/dev/shm/traffic.%s", name);
    int existed = name[0] && access(path, F_OK) == 0;
    int rc = traffic_open(s->eff_url, &t->parent);
    if (rc) return tr_fail(rc, "open", s->eff_url, err, n);
    if (name[0] && !existed) snprintf(t->created, sizeof t->created, "%s", name);
    s->h = t->parent;
    return BENCH_OK;
}

static void tr_release(struct store *s)
{
    struct tr *t = s->priv;
    if (t->shared || !t->parent) return;
    traffic_close(t->parent);
    t->parent = NULL;
    s->h = NULL;
}

static int tr_reacquire(struct store *s, char *err, size_t n)
{
    struct tr *t = s->priv;
    if (t->parent) return BENCH_OK;
    int rc = traffic_open(s->eff_url, &t->parent);
    if (rc) {
        tr_fail(rc, "reopen", s->eff_url, err, n);
        return BENCH_ERR;
    }
    s->h = t->parent;
    return BENCH_OK;
}

static int tr_attach(struct store *s, int w, char *err, size_t n)
{
    (void)w;
    struct tr *t = s->priv;
    if (t->shared) return BENCH_OK;
    int rc = traffic_open(s->eff_url, &t->mine);
    if (rc) {
        tr_fail(rc, "open (worker)", s->eff_url, err, n);
        return BENCH_ERR;
    }
    s->h = t->mine;
    return BENCH_OK;
}

static void tr_detach(struct store *s)
{
    struct tr *t = s->priv;
    if (t->mine) traffic_close(t->mine);
    t->mine = NULL;
}

static int tr_incr(void *h, uint32_t i, int64_t *out)
{
    return traffic_increment(h, bench_key(i), 1, tr_ttl, out);
}

static int tr_get(void *h, uint32_t i, size_t *len)
{
    char buf[64];
    return traffic_get(h, bench_key(i), buf, sizeof buf, len);
}

static int tr_set(void *h, uint32_t i, const void *val, size_t len)
{
    return traffic_set(h, bench_key(i), val, len, tr_ttl);
}

static int tr_limit(void *h, uint32_t i, int64_t *allowed)
{
    traffic_decision d;
    int rc = traffic_limit(h, bench_key(i), &tr_rule, 1, &d);
    *allowed = rc == TRAFFIC_OK && d.allowed;
    return rc;
}

static int tr_sum(struct store *s, int64_t *sum, char *err, size_t n)
{
    int64_t total = 0;
    for (uint32_t i = 0; i < s->cfg->keys; i++) {
        if (!bench_is_counter(s->cfg, i)) continue;
        char buf[32];
        size_t len;
        int rc = traffic_get(s->h, bench_key(i), buf, sizeof buf - 1, &len);
        if (rc) {
            snprintf(err, n, "get %s: %s (%s)", bench_key(i), traffic_strerror(rc), traffic_errmsg(s->h));
            return BENCH_ERR;
        }
        buf[len] = '\0';
        total += strtoll(buf, NULL, 10);
    }
    *sum = total;
    return BENCH_OK;
}

/* A store may hold entries of an earlier run (sqlite files, Redis): start empty. */
static int tr_prefill(struct store *s, char *err, size_t n)
{
    int rc = traffic_clear(s->h);
    if (rc) {
        snprintf(err, n, "clear %s: %s (%s)", s->eff_url, traffic_strerror(rc), traffic_errmsg(s->h));
        return BENCH_ERR;
    }
    int64_t allowed; /* a backend without decisions is skipped, like one that is not built */
    if (s->cfg->op == OP_LIMIT && (rc = tr_limit(s->h, 0, &allowed)) != TRAFFIC_OK) {
        snprintf(err, n, "traffic_limit on %s: %s (%s)", s->eff_url, traffic_strerror(rc), traffic_errmsg(s->h));
        return rc == TRAFFIC_ENOTSUP ? BENCH_SKIP : BENCH_ERR;
    }
    return bench_prefill_generic(s, err, n);
}

static void tr_close(struct store *s)
{
    struct tr *t = s->priv;
    if (t && t->parent) traffic_close(t->parent);
    if (t && t->created[0]) traffic_memory_unlink(t->created);
    free(t);
    s->priv = NULL;
}

const struct store_ops store_traffic = {
    .prefix = NULL,
    .open = tr_open,
    .release = tr_release,
    .reacquire = tr_reacquire,
    .attach = tr_attach,
    .detach = tr_detach,
    .incr = tr_incr,
    .get = tr_get,
    .set = tr_set,
    .limit = tr_limit,
    .prefill = tr_prefill,
    .sum = tr_sum,
    .close = tr_close,
};
