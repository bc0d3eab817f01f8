/*
 * redis_scan.c — the Redis backend's traffic_scan (and its traffic_reap, which Redis does not
 * need): SCAN with MATCH over this handle's prefix, on every master.
 *
 * Each master (the one server; each node of a Cluster) is scanned with its own cursor,
 *     SCAN cursor MATCH <escaped prefix><glob> COUNT RX_SCAN_COUNT
 * and the kind and TTL of each step's keys come from one pipelined round trip of
 * GETRANGE key 0 1 (the tag bytes: '=' bytes, '!' and a digit a rate-limit state, anything
 * else a counter, as traffic_get reads them) and PTTL key. The pattern is the prefix with its
 * glob characters escaped, then the caller's glob: the server filters, and since the escaped
 * prefix matches only itself, <prefix><glob> selects exactly the keys under the prefix whose
 * rest matches the glob. SCAN reports each key present for the whole scan at least once
 * (possibly twice, when the server rehashes meanwhile); a key gone between the SCAN step and
 * its PTTL (-2) is skipped. A key whose slot moves to another node meanwhile answers ASK or
 * MOVED and is skipped too: the other node's scan may or may not have seen it.
 *
 * The connection is taken for one step and given back before fn runs, so fn may take its
 * time and use the handle (pool_size=1 included).
 *
 * A walk's steps (rx_scan_step, which clear and stats use too) check the reply and that the
 * walk is going to end: see "A walk that ends".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "redis_internal.h"

#define RX_SCAN_COUNT "1000" /* COUNT: keys a SCAN step looks at */
/* Steps a walk may take before DBSIZE is asked: see "A walk that ends" below. */
#define RX_SCAN_FREE_STEPS 16384

/* The escaped prefix, then glob (NULL: "*"), malloc'd. */
char *rx_scan_pattern(const rx_handle *h, const char *glob)
{
    if (!glob) glob = "*";
    size_t gl = strlen(glob);
    char *p = malloc(2 * h->cfg.prefix_len + gl + 1), *w = p;
    if (!p) return NULL;
    for (size_t i = 0; i < h->cfg.prefix_len; i++) {
        char ch = h->cfg.prefix[i];
        if (ch == '*' || ch == '?' || ch == '[' || ch == ']' || ch == '\\') *w++ = '\\';
        *w++ = ch;
    }
    memcpy(w, glob, gl + 1);
    return p;
}

/* ---- A walk that ends --------------------------------------------------------------------
 *
 * A SCAN walk ends when the server answers cursor 0. One that never does (the fuzzer's lying
 * server; a proxy or fork of Redis with a bug) would keep clear, stats and scan looping for
 * ever, each step within the timeout. A deadline cannot bound the walk (clearing millions of
 * keys takes many timeouts, legitimately), so two checks do, and either fails the call with
 * TRAFFIC_EIO:
 *   - a cursor returned twice. Redis's cursor runs through a table in reverse-binary order and
 *     each step moves its bit-reversed value strictly up, a table resized meanwhile included
 *     (Redis 8's per-slot tables carry the slot, which only grows, in the low bits), so a real
 *     walk never repeats one; a server that repeats one goes round for ever. Brent's cycle
 *     finding keeps one cursor and catches any cycle of length L entered after M steps within
 *     about 2 max(M, L) + L steps, in constant memory.
 *   - too many steps for the server's size. A step looks at COUNT entries, or at 10 COUNT empty
 *     buckets, so a walk over K keys in B buckets takes about K / COUNT + B / (10 COUNT) steps.
 *     After RX_SCAN_FREE_STEPS steps (160 million empty buckets, or 16 million keys) DBSIZE is
 *     asked, and the walk may take one more step per key it reports - a thousand times what
 *     those keys need - asking again when it gets there (the server may have grown). This
 *     catches cursors that never repeat; a server that lies about DBSIZE too is not caught.
 * A real walk pays a string comparison per step, and one DBSIZE if it gets that long. */

/* After a step that answered cursor cur (not "0"): TRAFFIC_OK if the walk may go on. */
static int walk_check(rx_handle *h, rx_conn *c, rx_scan_walk *w, const char *pattern, const char *cur)
{
    if (w->seen[0] && strcmp(cur, w->seen) == 0)
        return traffic_backend_fail(&h->base, TRAFFIC_EIO,
                                    "SCAN %s on %s: cursor %s came back after %llu steps (a scan that never ends)",
                                    pattern, c->addr, cur, (unsigned long long)w->steps);
    if (++w->lap >= w->lap_len) { /* Brent: remember this one, and look twice as far ahead */
        snprintf(w->seen, sizeof w->seen, "%s", cur);
        w->lap_len = w->lap_len ? 2 * w->lap_len : 1;
        w->lap = 0;
    }
    if (!w->allowed) w->allowed = RX_SCAN_FREE_STEPS;
    if (w->steps < w->allowed) return TRAFFIC_OK;
    const char *argv[1] = {"DBSIZE"};
    size_t argvlen[1] = {6};
    redisReply *r;
    int rc = rx_conn_command(h, c, 1, argv, argvlen, &r);
    if (rc) return rc;
    if (r->type != REDIS_REPLY_INTEGER || r->integer < 0) return rx_unexpected(h, r, "DBSIZE", pattern);
    long long keys = r->integer;
    freeReplyObject(r);
    w->allowed = RX_SCAN_FREE_STEPS + (uint64_t)keys;
    if (w->steps < w->allowed) return TRAFFIC_OK;
    return traffic_backend_fail(&h->base, TRAFFIC_EIO,
                                "SCAN %s on %s: no end after %llu steps, on a server of %lld keys (a scan that "
                                "never ends)",
                                pattern, c->addr, (unsigned long long)w->steps, keys);
}

int rx_scan_step(rx_handle *h, rx_conn *c, rx_scan_walk *w, const char *pattern, redisReply **out)
{
    const char *argv[6] = {"SCAN", w->cursor, "MATCH", pattern, "COUNT", RX_SCAN_COUNT};
    size_t argvlen[6] = {4, strlen(w->cursor), 5, strlen(pattern), 5, strlen(RX_SCAN_COUNT)};
    redisReply *r;
    int rc = rx_conn_command(h, c, 6, argv, argvlen, &r);
    if (rc) return rc;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || r->element[0]->type != REDIS_REPLY_STRING ||
        r->element[1]->type != REDIS_REPLY_ARRAY)
        return rx_unexpected(h, r, "SCAN", pattern);
    const redisReply *cur = r->element[0], *keys = r->element[1];
    for (size_t i = 0; !rc && i < keys->elements; i++)
        if (keys->element[i]->type != REDIS_REPLY_STRING)
            rc = traffic_backend_fail(&h->base, TRAFFIC_EIO, "SCAN %s: a key of type %d", pattern,
                                      keys->element[i]->type);
    if (!rc && (cur->len == 0 || cur->len >= RX_CURSOR_LEN || strlen(cur->str) != cur->len))
        rc = traffic_backend_fail(&h->base, TRAFFIC_EIO, "SCAN %s: a cursor of %zu bytes", pattern, cur->len);
    if (!rc) {
        w->steps++;
        memcpy(w->cursor, cur->str, cur->len + 1);
        if (strcmp(w->cursor, "0") != 0) rc = walk_check(h, c, w, pattern, w->cursor);
    }
    if (rc) {
        freeReplyObject(r);
        return rc;
    }
    *out = r;
    return TRAFFIC_OK;
}

/* The kind of a string that starts with tag[0..n) (GETRANGE 0 1). */
static int value_kind(const char *tag, size_t n)
{
    if (n >= 1 && tag[0] == RX_BYTES_TAG) return TRAFFIC_KIND_BYTES;
    if (n >= 1 && tag[0] == RX_LIMIT_TAG) {
        int a = n >= 2 ? tag[1] - '0' : -1;
        return a >= 0 && a <= 9 && traffic_algorithm_name((traffic_algorithm)a) ? TRAFFIC_KIND_LIMIT + a
                                                                                : TRAFFIC_KIND_OTHER;
    }
    return TRAFFIC_KIND_COUNTER; /* untagged: read as a counter's text (traffic.h) */
}

/* One step's keys, their kinds and TTLs. */
typedef struct step {
    redisReply *scan; /* the SCAN reply: owns the key strings */
    redisReply *keys; /* its element 1 */
    int *kind;        /* 0: skip this key */
    int64_t *ttl_ms;
} step;

static void step_free(step *s)
{
    if (s->scan) freeReplyObject(s->scan);
    free(s->kind);
    free(s->ttl_ms);
    memset(s, 0, sizeof *s);
}

/* GETRANGE and PTTL of every key of s, pipelined. */
static int step_describe(rx_handle *h, rx_conn *c, step *s)
{
    size_t n = s->keys->elements, len = 0;
    char *buf = NULL;
    int rc = TRAFFIC_OK;
    s->kind = calloc(n, sizeof *s->kind);
    s->ttl_ms = calloc(n, sizeof *s->ttl_ms);
    if (!s->kind || !s->ttl_ms) return traffic_backend_fail(&h->base, TRAFFIC_ENOMEM, "out of memory in a scan");
    for (size_t i = 0; !rc && i < n; i++) {
        const redisReply *k = s->keys->element[i];
        const char *a1[4] = {"GETRANGE", k->str, "0", "1"}, *a2[2] = {"PTTL", k->str};
        size_t l1[4] = {8, k->len, 1, 1}, l2[2] = {4, k->len};
        rc = rx_append_cmd(h, &buf, &len, 4, a1, l1);
        if (!rc) rc = rx_append_cmd(h, &buf, &len, 2, a2, l2);
    }
    /* one timeout for the pipelined round trip, as redis.c's batches */
    int64_t deadline = rx_now_ms() + h->cfg.timeout_ms;
    if (!rc) rc = rx_conn_send(h, c, buf, len, deadline);
    free(buf);
    for (size_t i = 0; !rc && i < n; i++) {
        redisReply *tag = NULL, *ttl = NULL;
        if ((rc = rx_conn_read(h, c, deadline, &tag)) || (rc = rx_conn_read(h, c, deadline, &ttl))) {
            if (tag) freeReplyObject(tag);
            break;
        }
        /* PTTL -2: gone since the SCAN step. An error (ASK, MOVED): the slot is moving. */
        if (ttl->type == REDIS_REPLY_INTEGER && ttl->integer != -2) {
            s->ttl_ms[i] = ttl->integer < 0 ? -1 : ttl->integer;
            if (tag->type == REDIS_REPLY_STRING)
                s->kind[i] = value_kind(tag->str, tag->len);
            else if (tag->type == REDIS_REPLY_ERROR && strncmp(tag->str, "WRONGTYPE", 9) == 0)
                s->kind[i] = TRAFFIC_KIND_OTHER; /* a hash, a list, ... */
        }
        freeReplyObject(tag);
        freeReplyObject(ttl);
    }
    return rc;
}

/* One step of w on node n, with its keys described, on a connection held for the step
 * only. */
static int step_run(rx_handle *h, rx_proc *p, rx_node *n, const char *pattern, rx_scan_walk *w, step *s)
{
    rx_conn *c;
    int rc = rx_conn_acquire(h, p, n, rx_now_ms() + h->cfg.timeout_ms, &c);
    if (rc) return rc;
    rc = rx_scan_step(h, c, w, pattern, &s->scan);
    if (!rc) {
        s->keys = s->scan->element[1];
        if (s->keys->elements) rc = step_describe(h, c, s);
    }
    int healthy = c->ctx && c->ctx->err == 0;
    rx_conn_release(c, healthy);
    if (!healthy && h->cfg.mode == RX_SENTINEL) { /* ask the sentinels again (as redis_conn.c does) */
        pthread_mutex_lock(&n->mu);
        n->stale = 1;
        pthread_mutex_unlock(&n->mu);
    }
    return rc;
}

/* Reports one step's keys without the prefix: fn's value, or 0. */
static int step_report(const rx_handle *h, const step *s, traffic_scan_fn fn, void *ctx)
{
    size_t pl = h->cfg.prefix_len;
    for (size_t i = 0; s->keys && i < s->keys->elements; i++) {
        const redisReply *k = s->keys->element[i];
        if (!s->kind[i] || k->len <= pl) continue; /* skipped, or the bare prefix: no key */
        int rc = fn(ctx, k->str + pl, k->len - pl, s->kind[i], s->ttl_ms[i] < 0 ? -1.0 : (double)s->ttl_ms[i] / 1000.0);
        if (rc) return rc;
    }
    return 0;
}

static int scan_node(rx_handle *h, rx_proc *p, rx_node *n, const char *pattern, traffic_scan_fn fn, void *ctx)
{
    rx_scan_walk w = {.cursor = "0"};
    int rc;
    do {
        step s = {0};
        rc = step_run(h, p, n, pattern, &w, &s);
        if (!rc) rc = step_report(h, &s, fn, ctx);
        step_free(&s);
    } while (!rc && strcmp(w.cursor, "0") != 0);
    return rc;
}

int rx_scan(traffic_backend *b, const char *glob, traffic_scan_fn fn, void *ctx)
{
    rx_handle *h = (rx_handle *)b;
    rx_proc *p;
    int rc = rx_proc_get(h, &p);
    if (rc) return rc;
    rx_node *one[1] = {p->master}, **nodes = one;
    size_t n = 1;
    if (h->cfg.mode == RX_CLUSTER && (rc = rx_cluster_masters(h, p, rx_now_ms() + h->cfg.timeout_ms, &nodes, &n)))
        return rc;
    char *pattern = rx_scan_pattern(h, glob);
    if (!pattern) rc = traffic_backend_fail(b, TRAFFIC_ENOMEM, "out of memory");
    for (size_t i = 0; !rc && i < n; i++)
        rc = scan_node(h, p, nodes[i], pattern, fn, ctx);
    free(pattern);
    if (nodes != one) free(nodes);
    return rc;
}

int rx_reap(traffic_backend *b, uint64_t *removed)
{
    (void)removed;
    return traffic_backend_fail(
        b, TRAFFIC_ENOTSUP, "redis expires keys itself (on access, and in its active expire cycle): nothing to reap");
}
