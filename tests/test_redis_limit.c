/*
 * test_redis_limit.c — the Redis backend's rate-limit decisions (backends/redis_limit.c), what
 * the backend-generic contract (contract_limit.c) cannot see:
 *   - the Lua script is traffic_limit_apply: thousands of random sequences of (time, cost,
 *     rule) per algorithm, window edges and a clock that goes back included, decided by a real
 *     redis-server with traffic_limit_at and locally by traffic_limit_apply on the state as
 *     stored, agree on every field bit for bit, and traffic_get shows the stored state exactly
 *     as limit_state_json prints the local one; denials and peeks write nothing, a write's TTL
 *     is reset_after rounded up to the millisecond;
 *   - the log of the sliding window stays compact at its largest (10^4 entries);
 *   - NOSCRIPT after SCRIPT FLUSH; the server's TIME when no instant is given; keys of every
 *     slot of a cluster; a unix socket; a Sentinel master, whose replica gets the same state;
 *   - TRAFFIC_ETYPE both ways, ECORRUPT for a damaged state, get / set / delete / ttl, stats.
 *
 * Every server is a real redis-server on a loopback port, stopped by pid (redis_harness.c).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <traffic/backend.h>

#include "limit/limit.h" /* white-box: limit_rule_derive, and limit_state_json for traffic_get */
#include "redis_harness.h"
#include "testutil.h"

/* White-box: the backend's slot function (backends/redis_cluster.c). */
unsigned rx_key_slot(const char *key, size_t len);

static rh_server S;   /* a standalone server, with a unix socket */
static rh_cluster CL; /* three cluster masters */

#define LOG_MAX  TRAFFIC_SLIDING_WINDOW_LIMIT_MAX
#define JSON_MAX (64 + 48 * LOG_MAX)

/* ---- helpers --------------------------------------------------------------------------- */

static traffic_backend *open_standalone(const char *prefix)
{
    return tu_open(rh_url("redis://127.0.0.1:%d?prefix=%s", S.port, prefix));
}

/* traffic_get as a NUL-terminated string in a static buffer (or NULL with *rc set). */
static const char *get_text(traffic_backend *b, const char *key, int *rc)
{
    static char buf[JSON_MAX + 1];
    size_t len = 0;
    *rc = traffic_get(b, key, buf, JSON_MAX, &len);
    if (*rc) return NULL;
    buf[len] = '\0';
    return buf;
}

/* Counts calls of traffic_limit that pass, out of n at the server's clock. */
static int admitted(traffic_backend *b, const char *key, const traffic_rule *r, int n)
{
    int passed = 0;
    for (int i = 0; i < n; i++) {
        traffic_decision d;
        TU_OK(b, traffic_limit(b, key, r, 1, &d));
        passed += d.allowed;
    }
    return passed;
}

/* The server's TIME in µs. */
static int64_t server_time_us(const rh_server *s)
{
    redisReply *r = rh_cmd(s, "TIME");
    ck_assert_msg(r && r->type == REDIS_REPLY_ARRAY && r->elements == 2, "TIME");
    int64_t t = strtoll(r->element[0]->str, NULL, 10) * 1000000 + strtoll(r->element[1]->str, NULL, 10);
    freeReplyObject(r);
    return t;
}

/* ---- the differential test ------------------------------------------------------------- */

/* xorshift64*: reproducible from the seed printed with a failure. */
static uint64_t rng_state;
static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ULL;
}
static int64_t below(int64_t n) /* [0, n), n >= 1 */
{
    return (int64_t)(rnd() % (uint64_t)n);
}
static int chance(int percent)
{
    return below(100) < percent;
}

static void state_copy(traffic_limit_state *dst, const traffic_limit_state *src)
{
    dst->a = src->a, dst->b = src->b, dst->c = src->c, dst->nlog = src->nlog;
    if (src->nlog) memcpy(dst->log, src->log, src->nlog * sizeof *src->log);
}

static int state_unused(const traffic_limit_state *st)
{
    return st->a == 0 && st->b == 0 && st->c == 0 && st->nlog == 0;
}

/* A random rule of algorithm a that traffic_limit_check accepts. Its figures stay where a
 * decision's integers are below 2^53 from instants below 2^51 (see the report about
 * LIMIT_NOW_MAX): windows up to a day, bucket room B I up to 2^45 µs. */
static traffic_rule random_rule(traffic_algorithm a)
{
    static const double windows[] = {0.001, 0.0015, 0.002, 0.01, 0.0123457, 0.1, 1, 2.5, 60, 3600, 86400};
    for (;;) {
        traffic_rule r = {.algorithm = a, .window = windows[below(sizeof windows / sizeof windows[0])]};
        if (chance(20)) r.window = (double)(1000 + below(10000000)) / 1e6; /* any µs */
        int64_t top = a == TRAFFIC_SLIDING_WINDOW ? 60 : 1000;
        r.limit = chance(30) ? 1 + below(5) : 1 + below(top);
        if (a == TRAFFIC_FIXED_WINDOW && chance(3)) r.limit = TRAFFIC_WINDOW_LIMIT_MAX;
        if (a == TRAFFIC_TOKEN_BUCKET || a == TRAFFIC_LEAKY_BUCKET) r.burst = chance(40) ? 0 : below(50);
        if (traffic_limit_check(&r, NULL, 0) != TRAFFIC_OK) continue;
        limit_rule lr;
        limit_rule_derive(&r, &lr);
        if (lr.interval_us && (lr.capacity + 1) * lr.interval_us > (INT64_C(1) << 45)) continue;
        return r;
    }
}

/* The next instant: mostly forward by about the rule's pace, often onto an edge of the stored
 * state or of the last decision (its retry and reset instants, one µs before them, one after),
 * sometimes back. */
static int64_t next_time(int64_t now, const limit_rule *lr, const traffic_limit_state *st, const traffic_decision *last,
                         int dense)
{
    int64_t W = lr->window_us, pace = lr->interval_us ? lr->interval_us : W / lr->limit + 1, t = now;
    int64_t wiggle = below(3) - 1;
    if (dense) { /* about the rule's pace, so that a log fills and then expires steadily */
        int d = (int)below(1000);
        int64_t back = below(3 * pace + 1);
        if (d < 985) return now + below(pace + 1); /* twice the rule's rate: it fills, then denies */
        if (d < 987 && st->nlog) return st->log[below((int64_t)st->nlog)].t_us + W + wiggle;
        if (d < 995) return now < back ? 0 : now - back;
        return now;
    }
    int k = (int)below(10);
    if (k < 3) {
        t = now + below(2 * pace + 1);
    } else if (k < 4) {
        t = now + below(3 * W + 1);
    } else if (k < 7) {
        switch (lr->algo) {
        case TRAFFIC_FIXED_WINDOW: t = st->a + W + wiggle; break;
        case TRAFFIC_SLIDING_WINDOW_COUNTER: t = (st->a + 1 + below(2)) * W + wiggle; break;
        case TRAFFIC_SLIDING_WINDOW: t = st->nlog ? st->log[below((int64_t)st->nlog)].t_us + W + wiggle : now; break;
        default: t = chance(50) ? st->a + wiggle : st->a - lr->capacity * lr->interval_us + lr->interval_us * below(3);
        }
    } else if (k < 8) {
        int64_t retry = last->retry_after > 0 ? llround(last->retry_after * 1e6) : 0;
        int64_t reset = llround(last->reset_after * 1e6);
        t = now + (chance(50) ? retry : reset) + wiggle;
    } else if (k < 9) {
        t = now - below(W + 1); /* the clock goes back */
    }
    return t < 0 ? 0 : t;
}

static int64_t random_cost(const limit_rule *lr, int dense)
{
    if (dense) return chance(90) ? 1 : chance(50) ? 0 : chance(90) ? 2 + below(4) : lr->most + 1;
    int k = (int)below(20);
    if (k < 11) return 1;
    if (k < 13) return 0;
    if (k < 17) return 1 + below(lr->most);
    if (k < 18) return lr->most;
    if (k < 19) return lr->most + 1;
    return chance(50) ? INT64_MAX / 2 : 2 + below(3);
}

static int same_double(double x, double y)
{
    return memcmp(&x, &y, sizeof x) == 0;
}

/* A raw connection to S for the test's own script (below). */
static redisContext *raw_conn;

/* Atomically: the key's PTTL, and if it has one, a TTL of an hour. A decision's key expires
 * on the real clock after ceil(reset_after) ms, reset_after counted from the simulated
 * instant; a loaded machine could let a 1 ms TTL run out between two steps whose instants are
 * closer than that, and the store would rightly forget a state the local model keeps. So each
 * step reads the TTL the decision left (checked against reset_after) and then keeps the key,
 * or learns that it is gone and forgets it too. */
static const char KEEP_SCRIPT[] = "local t = redis.call('PTTL', KEYS[1])\n"
                                  "if t >= 0 then redis.call('PEXPIRE', KEYS[1], 3600000) end\n"
                                  "return {t, redis.call('STRLEN', KEYS[1])}";
#define KEPT_MS 3600000

/* The PTTL the decision left; *strlen: the stored value's length. */
static long long keep_key(const char *rkey, long long *strlen)
{
    redisReply *r = redisCommand(raw_conn, "EVAL %s 1 %s", KEEP_SCRIPT, rkey);
    ck_assert_msg(r && r->type == REDIS_REPLY_ARRAY && r->elements == 2, "keep_key: %s",
                  r && r->str ? r->str : raw_conn->errstr);
    long long t = r->element[0]->integer;
    *strlen = r->element[1]->integer;
    freeReplyObject(r);
    return t;
}

/* prefix + key, in a rotating buffer. */
static const char *rkey_of(const char *prefix, const char *key)
{
    static char bufs[4][200];
    static int n;
    char *b = bufs[n++ % 4];
    snprintf(b, sizeof bufs[0], "%s%s", prefix, key);
    return b;
}

typedef struct diff_ctx {
    traffic_backend *b;
    const char *prefix;
    traffic_limit_state stored, work; /* the state as stored, and a scratch copy */
    uint64_t steps, writes, denials, peeks, forgotten;
    uint64_t long_steps, dead_steps; /* logs: steps that found over 4 kB stored, or dead records */
    size_t most_entries;
} diff_ctx;

#define FAIL_CTX(fmt, ...)                                                                                             \
    ck_abort_msg("seed %" PRIu64 " seq %d step %d, rule %s:%" PRId64 "/%.7gs burst %" PRId64 ", now %" PRId64          \
                 ", cost %" PRId64 ": " fmt,                                                                           \
                 seed, seq, step, traffic_algorithm_name(r.algorithm), r.limit, r.window, r.burst, now, cost,          \
                 __VA_ARGS__)

/* One sequence of decisions under rule r on a fresh key, compared step by step. */
static void diff_sequence(diff_ctx *x, uint64_t seed, int seq, traffic_rule r, int steps, int dense)
{
    traffic_algorithm a = r.algorithm;
    limit_rule lr;
    limit_rule_derive(&r, &lr);
    char key[32], rkey[200];
    snprintf(key, sizeof key, "s%d", seq);
    snprintf(rkey, sizeof rkey, "%s%s", x->prefix, key);
    TU_OK(x->b, traffic_delete(x->b, key));
    memset(&x->stored, 0, offsetof(traffic_limit_state, log));
    x->stored.nlog = 0;
    int64_t now = chance(40) ? below(10 * lr.window_us) : (INT64_C(1) << 50) + below(INT64_C(1) << 50);
    traffic_decision last = {0};
    for (int step = 0; step < steps; step++) {
        int64_t cost = random_cost(&lr, dense);
        if (step) now = next_time(now, &lr, &x->stored, &last, dense);
        state_copy(&x->work, &x->stored);
        traffic_decision want, got;
        int changed = traffic_limit_apply(&r, &x->work, now, cost, &want);
        if (changed < 0) FAIL_CTX("traffic_limit_apply -> %d", changed);
        int rc = traffic_limit_at(x->b, key, &r, cost, now, &got);
        if (rc) FAIL_CTX("traffic_limit_at -> %s (%s)", traffic_strerror(rc), traffic_errmsg(x->b));
        if (got.allowed != want.allowed || got.limit != want.limit || got.remaining != want.remaining ||
            !same_double(got.reset_after, want.reset_after) || !same_double(got.retry_after, want.retry_after) ||
            !same_double(got.delay, want.delay))
            FAIL_CTX("redis {%d, %" PRId64 ", %" PRId64 ", %.17g, %.17g, %.17g} != local {%d, %" PRId64 ", %" PRId64
                     ", %.17g, %.17g, %.17g}",
                     got.allowed, got.limit, got.remaining, got.reset_after, got.retry_after, got.delay, want.allowed,
                     want.limit, want.remaining, want.reset_after, want.retry_after, want.delay);
        if (changed) state_copy(&x->stored, &x->work);
        x->steps++, x->writes += changed, x->denials += !want.allowed, x->peeks += cost == 0;

        long long len, pttl = keep_key(rkey, &len);
        x->long_steps += len > 4096;
        x->dead_steps += a == TRAFFIC_SLIDING_WINDOW && len > 8 + 10 * (long long)x->stored.nlog;
        if (x->stored.nlog > x->most_entries) x->most_entries = x->stored.nlog;
        int64_t ttl_ms = (llround(want.reset_after * 1e6) + 999) / 1000;
        if (changed) {
            if (!(pttl == -2 || (pttl >= 0 && pttl <= (ttl_ms < 1 ? 1 : ttl_ms))))
                FAIL_CTX("written with PTTL %lld, want [0, %" PRId64 "]", pttl, ttl_ms);
        } else if (state_unused(&x->stored)) {
            if (pttl != -2) FAIL_CTX("nothing stored, yet the key has PTTL %lld", pttl);
        } else if (!(pttl == -2 || (pttl > KEPT_MS - 60000 && pttl <= KEPT_MS))) {
            FAIL_CTX("a step that changed nothing rewrote the key (PTTL %lld)", pttl);
        }
        if (pttl == -2 && !state_unused(&x->stored)) { /* expired on the real clock */
            memset(&x->stored, 0, offsetof(traffic_limit_state, log));
            x->stored.nlog = 0;
            x->forgotten++;
        }

        const char *text = get_text(x->b, key, &rc);
        if (state_unused(&x->stored)) {
            if (rc != TRAFFIC_ENOTFOUND) FAIL_CTX("get of an unused key -> %s", traffic_strerror(rc));
        } else {
            static char json[JSON_MAX + 1];
            limit_state_json(a, &x->stored, json, sizeof json);
            if (!text) FAIL_CTX("get -> %s (%s)", traffic_strerror(rc), traffic_errmsg(x->b));
            if (strcmp(text, json) != 0) FAIL_CTX("get shows %s, local state %s", text, json);
        }
        last = want;
    }
}

START_TEST(t_differential)
{
    traffic_algorithm a = (traffic_algorithm)_i;
    const char *env = getenv("TRAFFIC_LIMIT_SEED");
    uint64_t seed = env ? strtoull(env, NULL, 10) : 20240609u + (uint64_t)a;
    rng_state = seed * 0x9E3779B97F4A7C15ULL + 1;
    raw_conn = redisConnect("127.0.0.1", S.port);
    ck_assert_msg(raw_conn && !raw_conn->err, "connect");
    diff_ctx x = {.prefix = rh_prefix("diff")};
    x.b = open_standalone(x.prefix);
    x.stored.log = calloc(LOG_MAX, sizeof *x.stored.log);
    x.work.log = calloc(LOG_MAX, sizeof *x.work.log);
    x.stored.log_cap = x.work.log_cap = LOG_MAX;
    ck_assert(x.stored.log && x.work.log);
    int sequences = 700;
    for (int seq = 0; seq < sequences; seq++)
        diff_sequence(&x, seed, seq, random_rule(a), 1 + (int)below(40), 0);
    fprintf(stderr,
            "%s: %d sequences, %" PRIu64 " steps, %" PRIu64 " writes, %" PRIu64 " denials, %" PRIu64 " peeks, %" PRIu64
            " keys expired on the real clock\n",
            traffic_algorithm_name(a), sequences, x.steps, x.writes, x.denials, x.peeks, x.forgotten);
    /* the random sequences reached every outcome */
    ck_assert_uint_gt(x.writes, x.steps / 10);
    ck_assert_uint_gt(x.denials, x.steps / 20);
    ck_assert_uint_gt(x.peeks, x.steps / 40);
    free(x.stored.log);
    free(x.work.log);
    TU_OK(x.b, traffic_clear(x.b));
    TU_OK(x.b, traffic_close(x.b));
    redisFree(raw_conn);
}
END_TEST

/* The sliding window counter's rare roundings, which random sequences seldom meet: a grid of
 * (W, P, request) on fresh keys, each a window of P requests and then one request in the next
 * window, at its start for every rem = L - cost below P, and wherever P's weighted share is a
 * whole number. It holds retries whose order of operations matters: for a few of them
 * W - rem W / P rounds up to another µs than W - rem / P W would. */
START_TEST(t_swc_rounding)
{
    const char *b_prefix = rh_prefix("swc");
    traffic_backend *b = open_standalone(b_prefix);
    raw_conn = redisConnect("127.0.0.1", S.port);
    ck_assert_msg(raw_conn && !raw_conn->err, "connect");
    static const int64_t windows[] = {1000, 1500, 2000, 3000, 7000, 100000};
    const int64_t L = 40;
    int cases = 0, order_matters = 0;
    for (size_t w = 0; w < sizeof windows / sizeof windows[0]; w++)
        for (int64_t P = 2; P <= L; P++)
            for (int64_t e = 0; e < windows[w]; e++) {
                int64_t W = windows[w];
                /* e = 0: every rem below P; else only where P (W - e) / W is a whole number */
                int64_t first = e ? 0 : 1, last = e ? 0 : P - 1;
                if (e && (P * (W - e)) % W) continue;
                for (int64_t rem = first; rem <= last; rem++) {
                    traffic_rule r = {
                        .algorithm = TRAFFIC_SLIDING_WINDOW_COUNTER, .limit = L, .window = (double)W / 1e6};
                    traffic_limit_state st = {0};
                    int64_t t0 = 10 * W, t1 = 11 * W + e, c = e ? L - P * (W - e) / W : L - rem;
                    char key[64];
                    snprintf(key, sizeof key, "w%" PRId64 "p%" PRId64 "e%" PRId64 "r%" PRId64, W, P, e, rem);
                    traffic_decision want, got;
                    traffic_limit_apply(&r, &st, t0, P, &want);
                    long long len;
                    do { /* the key's TTL is 2W on the real clock: keep it for the second request */
                        TU_OK(b, traffic_delete(b, key));
                        TU_OK(b, traffic_limit_at(b, key, &r, P, t0, &got));
                    } while (keep_key(rkey_of(b_prefix, key), &len) == -2);
                    traffic_limit_apply(&r, &st, t1, c, &want);
                    TU_OK(b, traffic_limit_at(b, key, &r, c, t1, &got));
                    ck_assert_msg(got.allowed == want.allowed && got.remaining == want.remaining &&
                                      same_double(got.retry_after, want.retry_after) &&
                                      same_double(got.reset_after, want.reset_after),
                                  "W %" PRId64 " P %" PRId64 " e %" PRId64 " cost %" PRId64 ": redis {%d, %" PRId64
                                  ", %.17g, %.17g}, local {%d, %" PRId64 ", %.17g, %.17g}",
                                  W, P, e, c, got.allowed, got.remaining, got.retry_after, got.reset_after,
                                  want.allowed, want.remaining, want.retry_after, want.reset_after);
                    cases++;
                    double wd = (double)W, x = ceil(wd - (double)rem * wd / (double)P),
                           y = ceil(wd - (double)rem / (double)P * wd);
                    order_matters += !e && x != y;
                }
            }
    fprintf(stderr, "sliding_window_counter roundings: %d cases, %d where the order of operations matters\n", cases,
            order_matters);
    ck_assert_int_gt(order_matters, 0);
    TU_OK(b, traffic_clear(b));
    TU_OK(b, traffic_close(b));
    redisFree(raw_conn);
}
END_TEST

/* Sliding logs longer than the 4 kB the script reads at once: their other records are read
 * with GETRANGE, admissions append in place, expired entries are skipped by the header until
 * as many are dead as alive, and then the log is rewritten. Long sequences fill them. */
START_TEST(t_differential_long_log)
{
    uint64_t seed = 777 + (uint64_t)_i;
    rng_state = seed * 0x9E3779B97F4A7C15ULL + 1;
    raw_conn = redisConnect("127.0.0.1", S.port);
    ck_assert_msg(raw_conn && !raw_conn->err, "connect");
    diff_ctx x = {.prefix = rh_prefix("long")};
    x.b = open_standalone(x.prefix);
    x.stored.log = calloc(LOG_MAX, sizeof *x.stored.log);
    x.work.log = calloc(LOG_MAX, sizeof *x.work.log);
    x.stored.log_cap = x.work.log_cap = LOG_MAX;
    ck_assert(x.stored.log && x.work.log);
    static const int64_t limits[] = {600, 1000, 2000};
    traffic_rule r = {
        .algorithm = TRAFFIC_SLIDING_WINDOW, .limit = limits[_i], .window = 0.5 + (double)below(1000) / 1e3};
    diff_sequence(&x, seed, _i, r, 4 * (int)r.limit, 1);
    fprintf(stderr,
            "sliding_window %" PRId64 "/%gs: %" PRIu64 " steps, %" PRIu64 " writes, %" PRIu64 " denials, up to %zu "
            "entries, %" PRIu64 " steps on more than 4 kB, %" PRIu64 " with dead records\n",
            r.limit, r.window, x.steps, x.writes, x.denials, x.most_entries, x.long_steps, x.dead_steps);
    ck_assert_uint_gt(x.denials, 10);
    ck_assert_uint_gt(x.long_steps, x.steps / 8); /* the paths this test is for were taken */
    ck_assert_uint_gt(x.dead_steps, 20);
    free(x.stored.log);
    free(x.work.log);
    TU_OK(x.b, traffic_clear(x.b));
    TU_OK(x.b, traffic_close(x.b));
    redisFree(raw_conn);
}
END_TEST

/* The sliding log at its largest: 10^4 entries at distinct instants, stored in 10 bytes each,
 * still decided exactly (the denial's retry is the oldest entry's expiry). */
START_TEST(t_sliding_log_full)
{
    const char *p = rh_prefix("full");
    traffic_backend *b = open_standalone(p);
    traffic_rule r = {.algorithm = TRAFFIC_SLIDING_WINDOW, .limit = LOG_MAX, .window = 100};
    traffic_limit_state st = {.log = calloc(LOG_MAX, sizeof(traffic_limit_entry)), .log_cap = LOG_MAX};
    ck_assert_ptr_nonnull(st.log);
    int64_t now = 5000000;
    traffic_decision want, got;
    for (int i = 0; i <= LOG_MAX; i++) {
        if (i) now += 7;
        traffic_limit_apply(&r, &st, now, 1, &want);
        TU_OK(b, traffic_limit_at(b, "k", &r, 1, now, &got));
        ck_assert_int_eq(got.allowed, want.allowed);
        ck_assert_int_eq(got.remaining, want.remaining);
        ck_assert(same_double(got.reset_after, want.reset_after));
        ck_assert(same_double(got.retry_after, want.retry_after));
    }
    ck_assert_int_eq(got.allowed, 0);
    ck_assert(same_double(got.retry_after, (double)(5000000 + 100000000 - now) / 1e6));
    char rkey[200];
    snprintf(rkey, sizeof rkey, "%sk", p);
    ck_assert_int_eq(rh_int(&S, "STRLEN %s", rkey), 8 + 10 * LOG_MAX);
    int rc;
    const char *text = get_text(b, "k", &rc);
    ck_assert_ptr_nonnull(text);
    static char json[JSON_MAX + 1];
    limit_state_json(TRAFFIC_SLIDING_WINDOW, &st, json, sizeof json);
    ck_assert(strcmp(text, json) == 0);
    /* a window later the whole log has expired: the next admission stores one entry */
    now += 100000000;
    TU_OK(b, traffic_limit_at(b, "k", &r, 3, now, &got));
    ck_assert_int_eq(got.allowed, 1);
    ck_assert_int_eq(got.remaining, LOG_MAX - 3);
    ck_assert_int_eq(rh_int(&S, "STRLEN %s", rkey), 8 + 10); /* rewritten without the dead entries */
    free(st.log);
    TU_OK(b, traffic_clear(b));
    TU_OK(b, traffic_close(b));
}
END_TEST

/* ---- scripts and clocks ---------------------------------------------------------------- */

START_TEST(t_noscript)
{
    traffic_backend *b = open_standalone(rh_prefix("nos"));
    traffic_rule r = tu_rule("fixed_window:5/60s");
    traffic_decision d;
    for (int i = 0; i < 2; i++)
        TU_OK(b, traffic_limit_at(b, "k", &r, 1, 1000000, &d));
    char ok[16];
    ck_assert_int_eq(rh_str(&S, ok, sizeof ok, "SCRIPT FLUSH"), 0);
    TU_OK(b, traffic_limit_at(b, "k", &r, 1, 1000000, &d)); /* NOSCRIPT -> EVAL, which reloads it */
    ck_assert_int_eq(d.allowed, 1);
    ck_assert_int_eq(d.remaining, 2); /* the state survived: the third of five */
    for (int i = 0; i < 2; i++)
        TU_OK(b, traffic_limit_at(b, "k", &r, 1, 1000000, &d)); /* EVALSHA again */
    ck_assert_int_eq(d.remaining, 0);
    TU_OK(b, traffic_limit_at(b, "k", &r, 1, 1000000, &d));
    ck_assert_int_eq(d.allowed, 0);
    TU_OK(b, traffic_clear(b));
    TU_OK(b, traffic_close(b));
}
END_TEST

/* No instant given: the server's TIME. 5/60s admits exactly 5 of 20, the window starts at the
 * server's clock (rounded down to the ms), the key lives until the window ends. */
START_TEST(t_server_time)
{
    traffic_backend *b = open_standalone(rh_prefix("time"));
    traffic_rule r = tu_rule("fixed_window:5/60s");
    int64_t before = server_time_us(&S);
    ck_assert_int_eq(admitted(b, "k", &r, 20), 5);
    int64_t after = server_time_us(&S);
    int rc;
    const char *text = get_text(b, "k", &rc);
    ck_assert_ptr_nonnull(text);
    long long start = -1, count = -1;
    ck_assert_int_eq(
        sscanf(text, "{\"algorithm\":\"fixed_window\",\"window_start_us\":%lld,\"count\":%lld}", &start, &count), 2);
    ck_assert_int_eq(count, 5);
    ck_assert_msg(start >= before - 1000 && start <= after && start % 1000 == 0, "start %lld, TIME %lld..%lld", start,
                  (long long)before, (long long)after);
    double ttl;
    TU_OK(b, traffic_ttl(b, "k", &ttl));
    ck_assert_msg(ttl > 0 && ttl <= 60, "ttl %g", ttl);
    /* from other processes too: still 5 in all */
    TU_OK(b, traffic_delete(b, "k"));
    int *passed = tu_shared(4 * sizeof(int));
    pid_t pids[4];
    for (int i = 0; i < 4; i++) {
        pids[i] = fork();
        ck_assert_int_ge(pids[i], 0);
        if (pids[i] == 0) {
            for (int j = 0; j < 10; j++) {
                traffic_decision d;
                if (traffic_limit(b, "k", &r, 1, &d) != TRAFFIC_OK) _exit(2);
                passed[i] += d.allowed;
            }
            _exit(0);
        }
    }
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(tu_wait(pids[i]), 0);
    ck_assert_int_eq(passed[0] + passed[1] + passed[2] + passed[3], 5);
    TU_OK(b, traffic_clear(b));
    TU_OK(b, traffic_close(b));
}
END_TEST

/* ---- types, get / set / delete / ttl, stats -------------------------------------------- */

START_TEST(t_types)
{
    const char *p = rh_prefix("type");
    traffic_backend *b = open_standalone(p);
    traffic_rule fw = tu_rule("fixed_window:3/60s"), tb = tu_rule("token_bucket:10/100s,burst=4");
    traffic_decision d;
    int64_t out;

    TU_OK(b, traffic_increment(b, "counter", 7, 0, NULL));
    TU_EXPECT_RC(b, traffic_limit(b, "counter", &fw, 1, &d), TRAFFIC_ETYPE);
    ck_assert_msg(strstr(traffic_errmsg(b), "counter"), "%s", traffic_errmsg(b));
    ck_assert_int_eq(tu_counter(b, "counter"), 7);
    TU_OK(b, traffic_set(b, "bytes", "!1:5:5", 6, 0)); /* bytes that look like a state are bytes */
    TU_EXPECT_RC(b, traffic_limit(b, "bytes", &fw, 0, &d), TRAFFIC_ETYPE);
    ck_assert_msg(strstr(traffic_errmsg(b), "bytes"), "%s", traffic_errmsg(b));
    char rkey[200];
    snprintf(rkey, sizeof rkey, "%shash", p);
    redisReply *hr = rh_cmd(&S, "HSET %s f v", rkey);
    freeReplyObject(hr);
    TU_EXPECT_RC(b, traffic_limit(b, "hash", &fw, 1, &d), TRAFFIC_ETYPE);

    TU_OK(b, traffic_limit_at(b, "fw", &fw, 2, 7001234, &d));
    TU_EXPECT_RC(b, traffic_limit_at(b, "fw", &tb, 1, 7001234, &d), TRAFFIC_ETYPE); /* another algorithm's */
    ck_assert_msg(strstr(traffic_errmsg(b), "fixed_window") && strstr(traffic_errmsg(b), "token_bucket"), "%s",
                  traffic_errmsg(b));
    TU_EXPECT_RC(b, traffic_increment(b, "fw", 1, 0, &out), TRAFFIC_ETYPE); /* and the other way */
    ck_assert_msg(strstr(traffic_errmsg(b), "rate-limit state (fixed_window)"), "%s", traffic_errmsg(b));

    int rc;
    const char *text = get_text(b, "fw", &rc);
    ck_assert_ptr_nonnull(text);
    ck_assert_str_eq(text, "{\"algorithm\":\"fixed_window\",\"window_start_us\":7001000,\"count\":2}");
    char small[8];
    size_t len = 0;
    TU_EXPECT_RC(b, traffic_get(b, "fw", small, sizeof small, &len), TRAFFIC_ERANGE);
    ck_assert_uint_eq(len, strlen("{\"algorithm\":\"fixed_window\",\"window_start_us\":7001000,\"count\":2}"));
    double ttl;
    TU_OK(b, traffic_ttl(b, "fw", &ttl)); /* reset_after from the simulated instant: 59.999766 s */
    ck_assert_msg(ttl > 50 && ttl <= 60, "ttl %g", ttl);
    ck_assert_int_eq(traffic_exists(b, "fw"), 1);

    TU_OK(b, traffic_limit_at(b, "tb", &tb, 3, 2000000, &d));
    text = get_text(b, "tb", &rc);
    ck_assert_ptr_nonnull(text);
    ck_assert_str_eq(text, "{\"algorithm\":\"token_bucket\",\"tat_us\":32000000}");

    /* delete resets; set replaces the state with bytes */
    TU_OK(b, traffic_delete(b, "fw"));
    TU_OK(b, traffic_limit_at(b, "fw", &fw, 3, 7001234, &d));
    ck_assert_int_eq(d.allowed, 1);
    TU_OK(b, traffic_set(b, "fw", "plain", 5, 0));
    text = get_text(b, "fw", &rc);
    ck_assert_str_eq(text, "plain");
    TU_EXPECT_RC(b, traffic_limit(b, "fw", &fw, 1, &d), TRAFFIC_ETYPE);

    /* an empty string under the prefix is no state, and no absent key either */
    snprintf(rkey, sizeof rkey, "%sempty", p);
    hr = rh_cmd(&S, "SET %s %s", rkey, "");
    freeReplyObject(hr);
    traffic_rule swl = tu_rule("sliding_window:5/1s");
    TU_EXPECT_RC(b, traffic_limit(b, "empty", &swl, 1, &d), TRAFFIC_ETYPE);
    TU_EXPECT_RC(b, traffic_limit(b, "empty", &fw, 1, &d), TRAFFIC_ETYPE);

    /* a damaged state under the tag is reported, not guessed at */
    snprintf(rkey, sizeof rkey, "%sbad", p);
    hr = rh_cmd(&S, "SET %s %s", rkey, "!1:12:x");
    freeReplyObject(hr);
    TU_EXPECT_RC(b, traffic_limit(b, "bad", &fw, 1, &d), TRAFFIC_ECORRUPT);
    TU_EXPECT_RC(b, traffic_get(b, "bad", small, sizeof small, &len), TRAFFIC_ECORRUPT);
    hr = rh_cmd(&S, "SET %s %s", rkey, "!2abcdefg"); /* a log of 4.5 records */
    freeReplyObject(hr);
    traffic_rule sl = tu_rule("sliding_window:5/1s");
    TU_EXPECT_RC(b, traffic_limit(b, "bad", &sl, 1, &d), TRAFFIC_ECORRUPT);
    TU_EXPECT_RC(b, traffic_get(b, "bad", small, sizeof small, &len), TRAFFIC_ECORRUPT);
    TU_OK(b, traffic_clear(b));
    TU_OK(b, traffic_close(b));
}
END_TEST

START_TEST(t_stats)
{
    traffic_backend *b = open_standalone(rh_prefix("stats"));
    traffic_rule r = tu_rule("sliding_window:2/10s");
    traffic_decision d;
    for (int i = 0; i < 5; i++)
        TU_OK(b, traffic_limit_at(b, "k", &r, 1, 1000 + i, &d));
    TU_OK(b, traffic_limit_at(b, "k", &r, 0, 1000, &d)); /* a peek is a decision, here a denial */
    TU_EXPECT_RC(b, traffic_limit(b, NULL, &r, 1, &d), TRAFFIC_EINVAL);
    struct traffic_stats st = tu_stats(b);
    ck_assert_uint_eq(st.decisions, 6);
    ck_assert_uint_eq(st.denied, 4);
    char json[1024];
    ck_assert_int_gt(traffic_stats_json(b, json, sizeof json), 0);
    ck_assert_msg(strstr(json, "\"decisions\":6,\"denied\":4"), "%s", json);
    TU_OK(b, traffic_clear(b));
    TU_OK(b, traffic_close(b));
}
END_TEST

/* ---- the other shapes: unix socket, Sentinel, Cluster ---------------------------------- */

START_TEST(t_unix)
{
    traffic_backend *b = tu_open(rh_url("redis+unix://%s?db=2&prefix=%s", S.sock, rh_prefix("unix")));
    traffic_rule r = tu_rule("leaky_bucket:10/100s,burst=2");
    traffic_decision d;
    int64_t t = 3000000;
    for (int i = 0; i < 3; i++) {
        TU_OK(b, traffic_limit_at(b, "k", &r, 1, t, &d));
        ck_assert_int_eq(d.allowed, 1);
        ck_assert(same_double(d.delay, i * 10.0));
    }
    TU_OK(b, traffic_limit_at(b, "k", &r, 1, t, &d));
    ck_assert_int_eq(d.allowed, 0);
    ck_assert(same_double(d.retry_after, 10.0));
    TU_OK(b, traffic_clear(b));
    TU_OK(b, traffic_close(b));
}
END_TEST

/* Through Sentinel; the replica receives the state the script wrote (scripts replicate by
 * their effects, so reading TIME before the write is allowed). */
START_TEST(t_sentinel)
{
    rh_sentinel_set set;
    ck_assert_int_eq(rh_sentinel_start(&set, 1, NULL), 0);
    traffic_backend *b = tu_open(rh_url("redis+sentinel://127.0.0.1:%d/mymaster?prefix=sl:", set.sentinels[0].port));
    traffic_rule r = tu_rule("sliding_window_counter:4/10s");
    ck_assert_int_eq(admitted(b, "k", &r, 6), 4);
    char want[128] = "", got[128] = "";
    ck_assert_int_eq(rh_str(&set.master, want, sizeof want, "GET sl:k"), 0);
    ck_assert_msg(want[0] == '!' && want[1] == '0', "%s", want);
    int64_t deadline = tu_now_ms() + 5000;
    while ((rh_str(&set.replica, got, sizeof got, "GET sl:k") || strcmp(got, want)) && tu_now_ms() < deadline)
        tu_sleep_ms(20);
    ck_assert_str_eq(got, want);
    TU_OK(b, traffic_close(b));
    rh_sentinel_stop(&set);
}
END_TEST

/* Keys of slots on every master: each decided on its own node, NOSCRIPT included. */
START_TEST(t_cluster)
{
    const char *p = rh_prefix("cl");
    traffic_backend *b =
        tu_open(rh_url("redis+cluster://127.0.0.1:%d,127.0.0.1:%d?prefix=%s", CL.nodes[0].port, CL.nodes[1].port, p));
    traffic_rule r = tu_rule("token_bucket:3/60s");
    char key[32], rkey[200];
    int seen[RH_CLUSTER_MAX] = {0}, keys = 0;
    for (int i = 0; keys < 12 && i < 1000; i++) {
        snprintf(key, sizeof key, "k%d", i);
        snprintf(rkey, sizeof rkey, "%s%s", p, key);
        int owner = rh_cluster_owner(&CL, (int)rx_key_slot(rkey, strlen(rkey)));
        ck_assert_int_ge(owner, 0);
        if (seen[owner] >= 4) continue;
        seen[owner]++, keys++;
        if (keys == 7) { /* half way: every node forgets its scripts */
            char ok[16];
            for (int n = 0; n < CL.n; n++)
                ck_assert_int_eq(rh_str(&CL.nodes[n], ok, sizeof ok, "SCRIPT FLUSH"), 0);
        }
        ck_assert_int_eq(admitted(b, key, &r, 5), 3);
        char raw[64];
        ck_assert_int_eq(rh_str(&CL.nodes[owner], raw, sizeof raw, "GET %s", rkey), 0);
        ck_assert_msg(strncmp(raw, "!3:", 3) == 0, "%s on node %d: %s", rkey, owner, raw);
        int rc;
        const char *text = get_text(b, key, &rc);
        ck_assert_ptr_nonnull(text);
        ck_assert_msg(strncmp(text, "{\"algorithm\":\"token_bucket\",\"tat_us\":", 37) == 0, "%s", text);
    }
    for (int n = 0; n < CL.n; n++)
        ck_assert_int_eq(seen[n], 4);
    TU_OK(b, traffic_clear(b));
    TU_OK(b, traffic_close(b));
}
END_TEST

/* ---- the suite ------------------------------------------------------------------------- */

int main(void)
{
    S.unixsocket = 1;
    if (rh_start(&S, NULL) || rh_cluster_start(&CL, 3)) return EXIT_FAILURE;

    Suite *s = suite_create("redis_limit");
    TCase *d = tcase_create("differential");
    tcase_add_loop_test(d, t_differential, TRAFFIC_SLIDING_WINDOW_COUNTER, TRAFFIC_LEAKY_BUCKET + 1);
    tcase_add_test(d, t_swc_rounding);
    suite_add_tcase(s, d);
    TCase *l = tcase_create("log");
    tcase_add_loop_test(l, t_differential_long_log, 0, 3);
    tcase_add_test(l, t_sliding_log_full);
    suite_add_tcase(s, l);

    TCase *e = tcase_create("standalone");
    tcase_add_test(e, t_noscript);
    tcase_add_test(e, t_server_time);
    tcase_add_test(e, t_types);
    tcase_add_test(e, t_stats);
    tcase_add_test(e, t_unix);
    suite_add_tcase(s, e);

    TCase *c = tcase_create("sentinel and cluster");
    tcase_add_test(c, t_sentinel);
    tcase_add_test(c, t_cluster);
    suite_add_tcase(s, c);

    int rc = tu_run(s);
    rh_cluster_stop(&CL);
    rh_kill(&S);
    return rc;
}
