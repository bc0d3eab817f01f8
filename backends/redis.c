/*
 * redis.c — the Redis backend's operations, its entry encoding, its URLs and options.
 *
 * The one idea: every operation is one command on one key, so it is one round trip and, in a
 * cluster, touches one slot. Counters are plain Redis integers, so INCRBY does the arithmetic
 * and the overflow check; a bytes value carries a one-byte tag (RX_BYTES_TAG) in front, which
 * no integer starts with, so INCRBY refuses it and GET tells the two apart. The increment is
 * a multi-step operation (add, and set the TTL only if the add created the key), done
 * atomically by a Lua script; rate-limit decisions, the other one, are redis_limit.c's.
 * Connections, routing and retries live in redis_conn.c and redis_cluster.c; this file only
 * builds commands and reads replies.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fallback.h"
#include "limit/limit.h"
#include "redis_internal.h"

#define RX_DEFAULT_PREFIX  "traffic:"
#define RX_DEFAULT_TIMEOUT 1.0 /* seconds */
#define RX_DEFAULT_POOL    4
#define RX_STACK_VALUE     2048 /* values up to this size are tagged in a stack buffer */

/* KEYS[1] the prefixed key, ARGV[1] the amount, ARGV[2] the TTL in ms (0: none). Returns the
 * new value as text (a Lua number would lose precision above 2^53), or an error reply
 * "TRAFFIC_ETYPE …" (the value is not an integer; "TRAFFIC_ETYPE limit D" when it is a
 * rate-limit state of algorithm D, which a GET tells after INCRBY failed) or
 * "TRAFFIC_EOVERFLOW …". Any other error (OOM, READONLY after a failover, NOPERM) is passed on
 * as Redis said it, so that the usual classification sees it: READONLY makes the next
 * connect rediscover the master. INCRBY changes nothing when it fails. The value is read
 * before the TTL is set: read after a 1 ms PEXPIRE, it once came back nil (CI, Sentinel
 * suite, a loaded machine). */
static const char INCR_SCRIPT[] =
    "local existed = redis.call('EXISTS', KEYS[1])\n"
    "local r = redis.pcall('INCRBY', KEYS[1], ARGV[1])\n"
    "if type(r) == 'table' and r.err then\n"
    "  if string.find(r.err, 'overflow', 1, true) then\n"
    "    return redis.error_reply('TRAFFIC_EOVERFLOW ' .. r.err)\n"
    "  end\n"
    "  if string.find(r.err, 'not an integer', 1, true) then\n"
    "    local v = redis.call('GET', KEYS[1])\n"
    "    if v and string.byte(v, 1) == 33 then\n" /* RX_LIMIT_TAG */
    "      return redis.error_reply('TRAFFIC_ETYPE limit ' .. string.sub(v, 2, 2))\n"
    "    end\n"
    "    return redis.error_reply('TRAFFIC_ETYPE ' .. r.err)\n"
    "  end\n"
    "  if string.sub(r.err, 1, 9) == 'WRONGTYPE' then\n"
    "    return redis.error_reply('TRAFFIC_ETYPE ' .. r.err)\n"
    "  end\n"
    "  return redis.error_reply(r.err)\n"
    "end\n"
    "local v = redis.call('GET', KEYS[1])\n"
    "if existed == 0 and ARGV[2] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end\n"
    "return v\n";

static rx_handle *H(traffic_backend *b)
{
    return (rx_handle *)b;
}

/* ---- commands -------------------------------------------------------------------------- */

/* Runs "NAME rkey" for key; the reply is the caller's to free. */
static int run_key_cmd(rx_handle *h, const char *name, const char *key, size_t klen, redisReply **r)
{
    char rkey[RX_RKEY_MAX];
    size_t rklen = rx_rkey(h, key, klen, rkey);
    rx_cmd c = {.idempotent = 1};
    rx_cmd_arg(&c, name, strlen(name));
    rx_cmd_arg(&c, rkey, rklen);
    return rx_run(h, rkey, rklen, &c, r);
}

/* A reply of an unexpected type or a server error nobody handled (redis_internal.h). */
int rx_unexpected(rx_handle *h, redisReply *r, const char *what, const char *key)
{
    int rc;
    if (r->type == REDIS_REPLY_ERROR) {
        if (strncmp(r->str, "WRONGTYPE", 9) == 0)
            rc = traffic_backend_fail(&h->base, TRAFFIC_ETYPE, "%s \"%.64s\": the Redis key is not a string (%s)", what,
                                      key, r->str);
        else if (strncmp(r->str, "OOM", 3) == 0)
            rc = traffic_backend_fail(&h->base, TRAFFIC_EFULL, "%s \"%.64s\": %s", what, key, r->str);
        else if (rx_transient_error(r->str) || rx_server_full(r->str))
            rc = traffic_backend_fail(&h->base, TRAFFIC_EUNAVAILABLE, "%s \"%.64s\": redis replied: %s", what, key,
                                      r->str);
        else
            rc = traffic_backend_fail(&h->base, rx_refusal_status(r->str, TRAFFIC_EIO),
                                      "%s \"%.64s\": redis replied: %s", what, key, r->str);
    } else {
        rc = traffic_backend_fail(&h->base, TRAFFIC_EIO, "%s \"%.64s\": unexpected reply of type %d", what, key,
                                  r->type);
    }
    freeReplyObject(r);
    return rc;
}

static int not_found(rx_handle *h, const char *key)
{
    rx_count(&h->misses);
    return traffic_backend_fail(&h->base, TRAFFIC_ENOTFOUND, "\"%.64s\" not found or expired", key);
}

/* ---- operations ------------------------------------------------------------------------ */

static int r_get(traffic_backend *b, const char *key, size_t klen, void *buf, size_t cap, size_t *len)
{
    rx_handle *h = H(b);
    redisReply *r;
    int rc = run_key_cmd(h, "GET", key, klen, &r);
    if (rc) return rc;
    if (r->type == REDIS_REPLY_NIL) {
        freeReplyObject(r);
        return not_found(h, key);
    }
    if (r->type != REDIS_REPLY_STRING) return rx_unexpected(h, r, "GET", key);
    if (r->len > 0 && r->str[0] == RX_LIMIT_TAG) { /* a rate-limit state: shown as JSON */
        rc = rx_limit_json(h, key, r->str, r->len, buf, cap, len);
        freeReplyObject(r);
        if (rc != TRAFFIC_ECORRUPT) rx_count(&h->hits);
        return rc;
    }
    const char *v = r->str;
    size_t n = r->len;
    if (n > 0 && v[0] == RX_BYTES_TAG) v++, n--; /* a bytes value; else a counter's text */
    rx_count(&h->hits);
    *len = n;
    if (cap < n) {
        freeReplyObject(r);
        return traffic_backend_fail(b, TRAFFIC_ERANGE, "value of \"%.64s\" is %zu bytes, buffer holds %zu", key, n,
                                    cap);
    }
    if (n) memcpy(buf, v, n);
    freeReplyObject(r);
    return TRAFFIC_OK;
}

static int r_set(traffic_backend *b, const char *key, size_t klen, const void *val, size_t len, int64_t ttl_ms)
{
    rx_handle *h = H(b);
    if (len > TRAFFIC_REDIS_VALUE_MAX)
        return traffic_backend_fail(b, TRAFFIC_ETOOBIG, "value of %zu bytes is over the Redis backend's limit %d", len,
                                    TRAFFIC_REDIS_VALUE_MAX);
    char stackbuf[RX_STACK_VALUE], *tagged = len < sizeof stackbuf ? stackbuf : malloc(len + 1);
    if (!tagged) return traffic_backend_fail(b, TRAFFIC_ENOMEM, "out of memory for a %zu-byte value", len);
    tagged[0] = RX_BYTES_TAG;
    memcpy(tagged + 1, val, len);

    char rkey[RX_RKEY_MAX], ms[24];
    size_t rklen = rx_rkey(h, key, klen, rkey);
    rx_cmd c = {.idempotent = 1};
    rx_cmd_arg(&c, "SET", 3);
    rx_cmd_arg(&c, rkey, rklen);
    rx_cmd_arg(&c, tagged, len + 1);
    if (ttl_ms > 0) { /* SET replaces the expiry too: none without PX */
        rx_cmd_arg(&c, "PX", 2);
        rx_cmd_arg(&c, ms, (size_t)snprintf(ms, sizeof ms, "%" PRId64, ttl_ms));
    }
    redisReply *r;
    int rc = rx_run(h, rkey, rklen, &c, &r);
    if (tagged != stackbuf) free(tagged);
    if (rc) return rc;
    if (r->type != REDIS_REPLY_STATUS) return rx_unexpected(h, r, "SET", key);
    freeReplyObject(r);
    rx_count(&h->sets);
    return TRAFFIC_OK;
}

/* Runs a key command whose reply is an integer (UNLINK, EXISTS, PTTL) into *v. */
static int run_key_int(rx_handle *h, const char *name, const char *key, size_t klen, long long *v)
{
    redisReply *r;
    int rc = run_key_cmd(h, name, key, klen, &r);
    if (rc) return rc;
    if (r->type != REDIS_REPLY_INTEGER) return rx_unexpected(h, r, name, key);
    *v = r->integer;
    freeReplyObject(r);
    return TRAFFIC_OK;
}

static int r_del(traffic_backend *b, const char *key, size_t klen)
{
    rx_handle *h = H(b);
    long long n = 0;
    int rc = run_key_int(h, "UNLINK", key, klen, &n);
    if (!rc && n > 0) rx_count(&h->deletes);
    return rc;
}

static int r_exists(traffic_backend *b, const char *key, size_t klen)
{
    rx_handle *h = H(b);
    long long n = 0;
    int rc = run_key_int(h, "EXISTS", key, klen, &n);
    if (rc) return rc;
    rx_count(n > 0 ? &h->hits : &h->misses);
    return n > 0;
}

static int r_ttl(traffic_backend *b, const char *key, size_t klen, int64_t *ttl_ms)
{
    rx_handle *h = H(b);
    long long t = 0;
    int rc = run_key_int(h, "PTTL", key, klen, &t);
    if (rc) return rc;
    if (t == -2) return not_found(h, key);
    rx_count(&h->hits);
    /* -1: no expiry. 0: under a millisecond left, but still there: report the smallest TTL. */
    *ttl_ms = t < 0 ? -1 : t == 0 ? 1 : (int64_t)t;
    return TRAFFIC_OK;
}

static int increment_error(rx_handle *h, redisReply *r, const char *key, int64_t amount)
{
    int rc;
    if (strncmp(r->str, "TRAFFIC_EOVERFLOW", 17) == 0)
        rc = traffic_backend_fail(&h->base, TRAFFIC_EOVERFLOW,
                                  "incrementing \"%.64s\" by %" PRId64 " would overflow int64", key, amount);
    else if (strncmp(r->str, "TRAFFIC_ETYPE limit ", 20) == 0) {
        const char *algo = r->str[20] >= '0' && r->str[20] <= '9' ? limit_algo_name(r->str[20] - '0') : NULL;
        rc = traffic_backend_fail(&h->base, TRAFFIC_ETYPE, "\"%.64s\" holds a rate-limit state (%s), not a counter",
                                  key, algo ? algo : "unknown algorithm");
    } else if (strncmp(r->str, "TRAFFIC_ETYPE", 13) == 0)
        rc = traffic_backend_fail(&h->base, TRAFFIC_ETYPE, "\"%.64s\" holds a bytes value, not a counter (%s)", key,
                                  r->str + 14);
    else
        return rx_unexpected(h, r, "increment", key);
    freeReplyObject(r);
    return rc;
}

static int r_increment(traffic_backend *b, const char *key, size_t klen, int64_t amount, int64_t ttl_ms, int64_t *out)
{
    rx_handle *h = H(b);
    char rkey[RX_RKEY_MAX], amt[24], ms[24];
    size_t rklen = rx_rkey(h, key, klen, rkey);
    rx_cmd c = {.idempotent = 0, .script = INCR_SCRIPT};
    rx_cmd_arg(&c, "EVALSHA", 7);
    rx_cmd_arg(&c, h->incr_sha, 40);
    rx_cmd_arg(&c, "1", 1);
    rx_cmd_arg(&c, rkey, rklen);
    rx_cmd_arg(&c, amt, (size_t)snprintf(amt, sizeof amt, "%" PRId64, amount));
    rx_cmd_arg(&c, ms, (size_t)snprintf(ms, sizeof ms, "%" PRId64, ttl_ms));
    redisReply *r;
    int rc = rx_run(h, rkey, rklen, &c, &r);
    if (rc) return rc;
    if (r->type == REDIS_REPLY_ERROR) return increment_error(h, r, key, amount);
    if (r->type != REDIS_REPLY_STRING) return rx_unexpected(h, r, "increment", key);
    char *end;
    errno = 0;
    long long v = strtoll(r->str, &end, 10);
    if (errno || end == r->str || *end) return rx_unexpected(h, r, "increment (not an integer)", key);
    freeReplyObject(r);
    *out = (int64_t)v;
    rx_count(&h->increments);
    return TRAFFIC_OK;
}

/* ---- clear and stats: every master, keys under the prefix ------------------------------ */

typedef struct scan_job {
    const char *pattern;
    int unlink;    /* 1: UNLINK what the scan finds (clear); 0: only count (stats) */
    uint64_t keys; /* found */
} scan_job;

/* UNLINKs the keys of one SCAN reply, one command per key (in a cluster a node holds many
 * slots, and a multi-key UNLINK must stay within one), all sent at once. A key that moved to
 * another node meanwhile answers MOVED or ASK, which is ignored: that node's scan finds it.
 * Any other error (READONLY from a replica, NOPERM, CLUSTERDOWN, OOM...) fails the clear with
 * the first one, once every reply has been read (the connection stays in step). */
static int unlink_batch(rx_handle *h, rx_conn *c, const redisReply *keys)
{
    char *buf = NULL;
    size_t len = 0;
    int rc = TRAFFIC_OK;
    for (size_t i = 0; !rc && i < keys->elements; i++) {
        const char *argv[2] = {"UNLINK", keys->element[i]->str};
        size_t argvlen[2] = {6, keys->element[i]->len};
        rc = rx_append_cmd(h, &buf, &len, 2, argv, argvlen);
    }
    int64_t deadline = rx_now_ms() + h->cfg.timeout_ms;
    if (!rc) rc = rx_conn_send(h, c, buf, len, deadline);
    free(buf);
    redisReply *refused = NULL;
    size_t refused_at = 0;
    for (size_t i = 0; !rc && i < keys->elements; i++) {
        redisReply *r;
        if ((rc = rx_conn_read(h, c, deadline, &r))) break;
        /* (a nil or an array has no str: fuzz_redis's server answered UNLINK with one) */
        int moved = r->str && (strncmp(r->str, "MOVED ", 6) == 0 || strncmp(r->str, "ASK ", 4) == 0);
        if (r->type == REDIS_REPLY_INTEGER || refused || moved) {
            freeReplyObject(r);
            continue;
        }
        refused = r, refused_at = i;
    }
    if (refused && rc) freeReplyObject(refused);
    if (refused && !rc) {
        char key[80];
        const redisReply *k = keys->element[refused_at];
        snprintf(key, sizeof key, "%.*s", k->len < 64 ? (int)k->len : 64, k->str);
        return rx_unexpected(h, refused, "clear: UNLINK", key);
    }
    return rc;
}

static int scan_node(rx_handle *h, rx_conn *c, void *arg)
{
    scan_job *job = arg;
    rx_scan_walk w = {.cursor = "0"};
    do {
        redisReply *r;
        int rc = rx_scan_step(h, c, &w, job->pattern, &r);
        if (rc) return rc;
        redisReply *keys = r->element[1];
        job->keys += keys->elements;
        rc = job->unlink && keys->elements ? unlink_batch(h, c, keys) : TRAFFIC_OK;
        freeReplyObject(r);
        if (rc) return rc;
    } while (strcmp(w.cursor, "0") != 0);
    return TRAFFIC_OK;
}

static int r_clear(traffic_backend *b)
{
    rx_handle *h = H(b);
    scan_job job = {.pattern = rx_scan_pattern(h, NULL), .unlink = 1};
    if (!job.pattern) return traffic_backend_fail(b, TRAFFIC_ENOMEM, "out of memory");
    int rc = rx_each_master(h, scan_node, &job);
    free((char *)job.pattern);
    return rc;
}

/* The value of "name:" in an INFO reply, 0 if absent. */
static uint64_t info_field(const char *info, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = info; (p = strstr(p, name)) != NULL; p += n)
        if ((p == info || p[-1] == '\n') && p[n] == ':') return strtoull(p + n + 1, NULL, 10);
    return 0;
}

typedef struct stats_job {
    struct traffic_stats *out; /* INFO figures are added up here */
    scan_job scan;             /* counts the keys */
} stats_job;

/* INFO memory, then INFO stats: two commands, pipelined, because Redis 6 takes one section
 * per INFO ("INFO memory stats" is a syntax error there). */
static int stats_node(rx_handle *h, rx_conn *c, void *arg)
{
    stats_job *job = arg;
    struct traffic_stats *o = job->out;
    static const char *const sections[2] = {"memory", "stats"};
    char *buf = NULL;
    size_t len = 0;
    int rc = TRAFFIC_OK;
    for (int i = 0; i < 2 && !rc; i++) {
        const char *argv[2] = {"INFO", sections[i]};
        size_t argvlen[2] = {4, strlen(sections[i])};
        rc = rx_append_cmd(h, &buf, &len, 2, argv, argvlen);
    }
    int64_t deadline = rx_now_ms() + h->cfg.timeout_ms;
    if (!rc) rc = rx_conn_send(h, c, buf, len, deadline);
    free(buf);
    redisReply *r[2] = {NULL, NULL};
    for (int i = 0; i < 2 && !rc; i++)
        rc = rx_conn_read(h, c, deadline, &r[i]);
    for (int i = 0; i < 2 && !rc; i++)
        if (r[i]->type != REDIS_REPLY_STRING) {
            rc = rx_unexpected(h, r[i], "INFO", sections[i]);
            r[i] = NULL;
        }
    if (!rc) {
        o->bytes_used += info_field(r[0]->str, "used_memory");
        o->expirations += info_field(r[1]->str, "expired_keys");
        o->evictions += info_field(r[1]->str, "evicted_keys");
    }
    for (int i = 0; i < 2; i++)
        if (r[i]) freeReplyObject(r[i]);
    return rc ? rc : scan_node(h, c, &job->scan);
}

static int r_stats(traffic_backend *b, struct traffic_stats *o)
{
    rx_handle *h = H(b);
    stats_job job = {.out = o, .scan.pattern = rx_scan_pattern(h, NULL)};
    if (!job.scan.pattern) return traffic_backend_fail(b, TRAFFIC_ENOMEM, "out of memory");
    int rc = rx_each_master(h, stats_node, &job);
    free((char *)job.scan.pattern);
    if (rc) return rc;
    o->keys = job.scan.keys;
    o->hits = atomic_load_explicit(&h->hits, memory_order_relaxed);
    o->misses = atomic_load_explicit(&h->misses, memory_order_relaxed);
    o->sets = atomic_load_explicit(&h->sets, memory_order_relaxed);
    o->increments = atomic_load_explicit(&h->increments, memory_order_relaxed);
    o->deletes = atomic_load_explicit(&h->deletes, memory_order_relaxed);
    o->decisions = atomic_load_explicit(&h->decisions, memory_order_relaxed);
    o->denied = atomic_load_explicit(&h->denied, memory_order_relaxed);
    return TRAFFIC_OK;
}

/* ---- open and close -------------------------------------------------------------------- */

static void config_free(rx_config *c)
{
    for (size_t i = 0; i < c->nseeds; i++)
        free(c->seeds[i].host);
    free(c->seeds);
    free(c->path);
    free(c->master);
    free(c->user);
    free(c->password);
    free(c->prefix);
    memset(c, 0, sizeof *c);
}

static int r_close(traffic_backend *b)
{
    rx_handle *h = H(b);
    int cancel_state = rx_nocancel();
    rx_proc *p = atomic_load(&h->proc);
    if (p) rx_proc_free(h, p);
    config_free(&h->cfg);
    free(h);
    rx_cancel_restore(cancel_state);
    return TRAFFIC_OK;
}

static const traffic_backend_ops redis_ops = {
    .name = "redis",
    .close = r_close,
    .get = r_get,
    .set = r_set,
    .del = r_del,
    .exists = r_exists,
    .increment = r_increment,
    .ttl = r_ttl,
    .clear = r_clear,
    .stats = r_stats,
    .limit = rx_limit,
    /* no cleanup thread: Redis expires keys itself */
    .scan = rx_scan,
    .reap = rx_reap,
};

void redis_breaker_owned(traffic_backend *b)
{
    if (b && b->ops == &redis_ops) atomic_store_explicit(&H(b)->no_backoff, 1, memory_order_relaxed);
}

static int load_script(rx_handle *h, rx_conn *c, void *arg)
{
    (void)arg;
    const char *argv[3] = {"SCRIPT", "LOAD", INCR_SCRIPT};
    size_t argvlen[3] = {6, 4, sizeof INCR_SCRIPT - 1};
    redisReply *r;
    int rc = rx_conn_command(h, c, 3, argv, argvlen, &r);
    if (rc) return rc;
    if (r->type != REDIS_REPLY_STRING || r->len != 40) return rx_unexpected(h, r, "SCRIPT LOAD", "increment");
    memcpy(h->incr_sha, r->str, 40);
    h->incr_sha[40] = '\0';
    freeReplyObject(r);
    return rx_limit_load(h, c);
}

/* Takes ownership of cfg. Connects to every master and loads the scripts there. */
static int open_config(rx_config *cfg, traffic_backend **out)
{
    rx_handle *h = calloc(1, sizeof *h);
    if (!h) {
        config_free(cfg);
        return traffic_backend_fail(NULL, TRAFFIC_ENOMEM, "out of memory");
    }
    h->cfg = *cfg;
    traffic_backend_init(&h->base, &redis_ops);
    int rc = rx_each_master(h, load_script, NULL);
    if (rc) {
        traffic_backend_fail(NULL, rc, "%s", traffic_errmsg(&h->base));
        r_close(&h->base);
        return rc;
    }
    traffic_backend_fail(&h->base, TRAFFIC_OK, "%s", ""); /* retried failures during open are no news */
    *out = &h->base;
    return TRAFFIC_OK;
}

static int dupstr(const char *s, char **out)
{
    *out = NULL;
    if (!s) return TRAFFIC_OK;
    *out = strdup(s);
    return *out ? TRAFFIC_OK : traffic_backend_fail(NULL, TRAFFIC_ENOMEM, "out of memory");
}

/* One "host[:port]" or "[v6]:port" of a host list, s[0..len). */
static int parse_host(const char *s, size_t len, int defport, rx_addr *a)
{
    const char *host = s, *colon = NULL;
    size_t hlen = len;
    if (len && s[0] == '[') {
        const char *close = memchr(s, ']', len);
        if (!close) return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "host \"%.*s\" lacks its ']'", (int)len, s);
        host = s + 1;
        hlen = (size_t)(close - host);
        if (close + 1 < s + len) {
            if (close[1] != ':')
                return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "junk after ']' in host \"%.*s\"", (int)len, s);
            colon = close + 1;
        }
    } else if ((colon = memchr(s, ':', len)) != NULL) {
        hlen = (size_t)(colon - s);
        if (memchr(colon + 1, ':', len - hlen - 1))
            return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "host \"%.*s\": write an IPv6 address as [addr]:port",
                                        (int)len, s);
    }
    if (hlen == 0) return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "empty host in \"%.*s\"", (int)len, s);
    a->port = defport;
    if (colon) {
        char *end;
        long port = strtol(colon + 1, &end, 10);
        if (end == colon + 1 || end != s + len || port < 1 || port > 65535)
            return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "bad port in \"%.*s\" (want 1..65535)", (int)len, s);
        a->port = (int)port;
    }
    a->host = strndup(host, hlen);
    return a->host ? TRAFFIC_OK : traffic_backend_fail(NULL, TRAFFIC_ENOMEM, "out of memory");
}

static int parse_hosts(const char *s, int defport, rx_config *c)
{
    size_t n = 1;
    for (const char *p = s; *p; p++)
        n += *p == ',';
    c->seeds = calloc(n, sizeof *c->seeds);
    if (!c->seeds) return traffic_backend_fail(NULL, TRAFFIC_ENOMEM, "out of memory");
    for (const char *p = s;; p++) {
        size_t len = strcspn(p, ",");
        int rc = parse_host(p, len, defport, &c->seeds[c->nseeds]);
        if (rc) return rc;
        c->nseeds++;
        p += len;
        if (!*p) return TRAFFIC_OK;
    }
}

static int parse_db(const char *s, size_t len, unsigned *db)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (len == 0 || s[0] == '-' || errno || end != s + len || v > INT_MAX)
        return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "database \"%.*s\" is not a number", (int)len, s);
    *db = (unsigned)v;
    return TRAFFIC_OK;
}

/* Checks the typed options and copies them into a config (defaults filled in). */
static int config_from_options(const traffic_redis_options *o, rx_config *c)
{
    memset(c, 0, sizeof *c);
    if ((unsigned)o->mode > TRAFFIC_REDIS_CLUSTER)
        return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "unknown redis mode %d", (int)o->mode);
    c->mode = (rx_mode)o->mode;
    if (!(o->timeout >= 0 && o->timeout <= 3600))
        return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "timeout %g is not in [0, 3600] seconds", o->timeout);
    double t = o->timeout > 0 ? o->timeout : RX_DEFAULT_TIMEOUT;
    c->timeout_ms = t * 1000 < 1 ? 1 : (int)(t * 1000 + 0.5);
    if (o->pool_size > TRAFFIC_REDIS_POOL_MAX)
        return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "pool_size %u is over %d", o->pool_size,
                                    TRAFFIC_REDIS_POOL_MAX);
    c->pool_size = o->pool_size ? o->pool_size : RX_DEFAULT_POOL;
    const char *prefix = o->prefix ? o->prefix : RX_DEFAULT_PREFIX;
    if (strlen(prefix) > TRAFFIC_REDIS_PREFIX_MAX)
        return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "prefix of %zu bytes is over %d", strlen(prefix),
                                    TRAFFIC_REDIS_PREFIX_MAX);
    if (o->user && !o->password)
        return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "user \"%.64s\" given without a password", o->user);
    if (c->mode == RX_CLUSTER && o->db)
        return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "a Redis Cluster has only database 0, not %u", o->db);
    c->db = o->db;
    int rc;
    if ((rc = dupstr(prefix, &c->prefix)) || (rc = dupstr(o->user, &c->user)) ||
        (rc = dupstr(o->password, &c->password)))
        return rc;
    c->prefix_len = strlen(prefix);
    switch (c->mode) {
    case RX_UNIX:
        if (!o->path || !o->path[0])
            return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "a unix-socket store needs the socket's path");
        return dupstr(o->path, &c->path);
    case RX_SENTINEL:
        if (!o->master || !o->master[0])
            return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "a Sentinel store needs the master's name");
        if (!o->hosts || !o->hosts[0])
            return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "a Sentinel store needs the sentinels' addresses");
        if ((rc = dupstr(o->master, &c->master))) return rc;
        return parse_hosts(o->hosts, 26379, c);
    case RX_CLUSTER:
        if (!o->hosts || !o->hosts[0])
            return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "a Cluster store needs seed node addresses");
        return parse_hosts(o->hosts, 6379, c);
    case RX_TCP:
    default:
        rc = parse_hosts(o->hosts && o->hosts[0] ? o->hosts : "127.0.0.1", 6379, c);
        if (!rc && c->nseeds != 1)
            return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "redis:// takes one host, not %zu (Sentinel or Cluster?)",
                                        c->nseeds);
        return rc;
    }
}

int traffic_redis_open(const traffic_redis_options *o, traffic_backend **out)
{
    if (!out) return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "out is NULL");
    *out = NULL;
    traffic_redis_options def = {0};
    rx_config c;
    int rc = config_from_options(o ? o : &def, &c);
    if (rc) {
        config_free(&c);
        return rc;
    }
    return open_config(&c, out);
}

/* ---- URLs ------------------------------------------------------------------------------ */

/* The pieces of a URL's rest, decoded, in malloc'd strings the options point to. */
typedef struct url_parts {
    char *user, *password, *hosts, *path, *master;
} url_parts;

static void parts_free(url_parts *p)
{
    free(p->user);
    free(p->password);
    free(p->hosts);
    free(p->path);
    free(p->master);
}

/* Splits "[[user]:password@]" off rest (it ends before the first '/'); returns what follows. */
static int split_userinfo(const char *rest, url_parts *p, const char **after)
{
    size_t auth = strcspn(rest, "/");
    const char *at = NULL;
    for (const char *q = rest; q < rest + auth; q++)
        if (*q == '@') at = q;
    *after = rest;
    if (!at) return TRAFFIC_OK;
    *after = at + 1;
    const char *colon = memchr(rest, ':', (size_t)(at - rest));
    if (!colon)
        return traffic_backend_fail(NULL, TRAFFIC_EINVAL,
                                    "redis URL userinfo must be \"[user]:password@\" (a ':' is missing)");
    p->user = colon > rest ? strndup(rest, (size_t)(colon - rest)) : NULL;
    p->password = strndup(colon + 1, (size_t)(at - colon - 1));
    if ((colon > rest && !p->user) || !p->password) return traffic_backend_fail(NULL, TRAFFIC_ENOMEM, "out of memory");
    int rc = p->user ? url_decode(p->user) : TRAFFIC_OK;
    return rc ? rc : url_decode(p->password);
}

/* "/db" (or nothing) after the host part. */
static int parse_db_path(const char *s, unsigned *db)
{
    if (!*s) return TRAFFIC_OK;
    if (s[0] != '/') return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "unexpected \"%.32s\" in redis URL", s);
    if (!s[1]) return TRAFFIC_OK;
    return parse_db(s + 1, strlen(s + 1), db);
}

static int parse_rest(const url *u, rx_mode mode, url_parts *p, traffic_redis_options *o)
{
    const char *s;
    int rc = split_userinfo(u->rest, p, &s);
    if (rc) return rc;
    o->user = p->user;
    o->password = p->password;
    if (mode == RX_UNIX) {
        if (s[0] != '/')
            return traffic_backend_fail(NULL, TRAFFIC_EINVAL,
                                        "redis+unix:// wants an absolute socket path, got \"%.64s\"", s);
        if (!(p->path = strdup(s))) return traffic_backend_fail(NULL, TRAFFIC_ENOMEM, "out of memory");
        o->path = p->path;
        return url_decode(p->path);
    }
    size_t hlen = strcspn(s, "/");
    if (!(p->hosts = strndup(s, hlen))) return traffic_backend_fail(NULL, TRAFFIC_ENOMEM, "out of memory");
    o->hosts = p->hosts;
    s += hlen;
    if (mode == RX_SENTINEL) {
        size_t mlen = s[0] == '/' ? strcspn(s + 1, "/") : 0;
        if (mlen == 0)
            return traffic_backend_fail(NULL, TRAFFIC_EINVAL,
                                        "redis+sentinel:// needs the master's name: redis+sentinel://h:p,h:p/MASTER");
        if (!(p->master = strndup(s + 1, mlen))) return traffic_backend_fail(NULL, TRAFFIC_ENOMEM, "out of memory");
        if ((rc = url_decode(p->master))) return rc;
        o->master = p->master;
        s += 1 + mlen;
    }
    if (mode == RX_CLUSTER && *s && strcmp(s, "/") != 0 && strcmp(s, "/0") != 0)
        return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "a Redis Cluster has only database 0, not \"%.32s\"", s);
    return parse_db_path(s, &o->db);
}

static int mode_of_scheme(const char *scheme, rx_mode *mode)
{
    if (strncmp(scheme, "rediss", 6) == 0)
        return traffic_backend_fail(
            NULL, TRAFFIC_EINVAL,
            "%s:// needs TLS, which this build's hiredis (%d.%d) does not support; use redis:// "
            "over a trusted network or a TLS tunnel",
            scheme, HIREDIS_MAJOR, HIREDIS_MINOR);
    static const struct {
        const char *name;
        rx_mode mode;
    } schemes[] = {
        {"redis", RX_TCP}, {"redis+unix", RX_UNIX}, {"redis+sentinel", RX_SENTINEL}, {"redis+cluster", RX_CLUSTER}};
    for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++)
        if (strcmp(scheme, schemes[i].name) == 0) {
            *mode = schemes[i].mode;
            return TRAFFIC_OK;
        }
    return traffic_backend_fail(NULL, TRAFFIC_EINVAL,
                                "unknown redis scheme \"%s\" (want redis, redis+unix, redis+sentinel or redis+cluster)",
                                scheme);
}

int redis_open_url(url *u, traffic_backend **out)
{
    rx_mode mode = RX_TCP;
    int rc = mode_of_scheme(u->scheme, &mode);
    if (rc) return rc;
    traffic_redis_options o = {.mode = (traffic_redis_mode)mode};
    url_parts parts = {0};
    uint64_t pool = 0, db = UINT64_MAX;
    if (!(rc = parse_rest(u, mode, &parts, &o)) && !(rc = url_param_double(u, "timeout", 0.001, 3600, &o.timeout)) &&
        !(rc = url_param_u64(u, "pool_size", 1, TRAFFIC_REDIS_POOL_MAX, &pool)) &&
        !(rc = mode == RX_UNIX ? url_param_u64(u, "db", 0, INT_MAX, &db) : TRAFFIC_OK)) {
        o.prefix = url_param_get(u, "prefix");
        o.pool_size = (uint32_t)pool;
        if (db != UINT64_MAX) o.db = (uint32_t)db;
        rc = url_check_unused(u);
    }
    if (!rc) rc = traffic_redis_open(&o, out);
    parts_free(&parts);
    return rc;
}
