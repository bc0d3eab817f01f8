/*
 * contract_limit.c — rate-limit decisions (SPEC.md "Rate limits", traffic.h) as every backend
 * owes them, part of the contract suite (contract_suite() adds these test cases).
 *
 * The idea that makes it exact: traffic_limit_at lets the test drive the store's clock, so a
 * backend's decisions can be compared number for number. First with values written here by
 * hand from the formulas of traffic.h (which checks traffic_limit_apply as well as the
 * backend), then with traffic_limit_apply itself over long random sequences. Only a key's
 * storage TTL still runs on the real clock (reset_after from the simulated instant): the
 * hand-written tables keep every stored state's reset_after at seconds, so that no real-time
 * expiry can come between two steps, and the random sequences accept a key that vanished only
 * when the real time since it was stored allowed that.
 *
 * It proves: each algorithm's numbers at exact instants (window edges, costs above 1, peeks,
 * refills, leaky delays, the weighted estimate, costs that can never pass) and the state that
 * traffic_get shows; bad rules, keys, costs and instants are TRAFFIC_EINVAL and change nothing;
 * a key holds one kind of state (bytes, a counter, one algorithm) and get, delete, ttl, exists,
 * clear and expiry treat a limit key as a key; forked processes x threads on one key admit
 * exactly the quota; the statistics count decisions and denials.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "contract.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <traffic/backend.h>

#include "limit_model.h"
#include "testutil.h"

static contract_backend L; /* a copy of the suite's backend; forked tests read it */

/* The simulated instants start here (µs of the store's clock, about 11.6 days): far from 0
 * and from 2^53, and a multiple of the 10 s windows of the sliding window counter's tables. */
#define BASE INT64_C(1000000000000)

#define N_ALGOS 5

/* ---- helpers --------------------------------------------------------------------------- */

static traffic_backend *lfresh(void)
{
    traffic_backend *b = NULL;
    int rc = L.open_fresh(&b, L.ctx);
    ck_assert_msg(rc == TRAFFIC_OK && b != NULL, "open_fresh(%s) -> %s (%s)", L.name, traffic_strerror(rc),
                  traffic_errmsg(NULL));
    return b;
}

static void ldone(traffic_backend *b)
{
    TU_OK(b, traffic_close(b));
}

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Whole µs as the decision's seconds: the division is correctly rounded, so a backend that
 * computes in µs and divides by 1e6 gives exactly this double. */
static double secs(int64_t us)
{
    return (double)us / 1e6;
}

static int64_t to_us(double s)
{
    return (int64_t)llround(s * 1e6);
}

static traffic_rule rule_of(traffic_algorithm a, int64_t limit, double window, int64_t burst)
{
    traffic_rule r = {.algorithm = a, .limit = limit, .window = window, .burst = burst};
    return r;
}

/* The largest sliding_window limit this store keeps: the memory backend stores the log as one
 * value, 8 + 8 L bytes (traffic.h). */
static int64_t log_limit_max(void)
{
    int64_t n = ((int64_t)L.value_limit - 8) / 8;
    return n < TRAFFIC_SLIDING_WINDOW_LIMIT_MAX ? n : TRAFFIC_SLIDING_WINDOW_LIMIT_MAX;
}

/* traffic_get's text of key, NUL-terminated; returns the status. */
static int get_text(traffic_backend *b, const char *key, char *buf, size_t cap)
{
    size_t len = 0;
    int rc = traffic_get(b, key, buf, cap - 1, &len);
    buf[rc == TRAFFIC_OK ? len : 0] = '\0';
    return rc;
}

static void expect_absent_at(traffic_backend *b, const char *key, int line)
{
    double s;
    int rc = traffic_exists(b, key);
    ck_assert_msg(rc == 0, "line %d: exists(\"%s\") -> %d, want 0", line, key, rc);
    rc = traffic_ttl(b, key, &s);
    ck_assert_msg(rc == TRAFFIC_ENOTFOUND, "line %d: ttl(\"%s\") -> %s, want ENOTFOUND", line, key,
                  traffic_strerror(rc));
}
#define EXPECT_ABSENT(b, key) expect_absent_at(b, key, __LINE__)

/* traffic_limit_at that must succeed. */
static traffic_decision decide_at(traffic_backend *b, const char *key, const traffic_rule *r, int64_t cost, int64_t at,
                                  int line)
{
    traffic_decision d;
    memset(&d, 0x55, sizeof d);
    int rc = traffic_limit_at(b, key, r, cost, at, &d);
    ck_assert_msg(rc == TRAFFIC_OK, "line %d: limit_at(\"%s\", %s, cost %lld, %lld) -> %s (%s)", line, key,
                  traffic_algorithm_name(r->algorithm), (long long)cost, (long long)at, traffic_strerror(rc),
                  traffic_errmsg(b));
    return d;
}
#define DECIDE_AT(b, key, r, cost, at) decide_at(b, key, r, cost, at, __LINE__)

/* traffic_limit (the store's clock) that must succeed. */
static traffic_decision decide(traffic_backend *b, const char *key, const traffic_rule *r, int64_t cost, int line)
{
    traffic_decision d;
    memset(&d, 0x55, sizeof d);
    int rc = traffic_limit(b, key, r, cost, &d);
    ck_assert_msg(rc == TRAFFIC_OK, "line %d: limit(\"%s\", %s, cost %lld) -> %s (%s)", line, key,
                  traffic_algorithm_name(r->algorithm), (long long)cost, traffic_strerror(rc), traffic_errmsg(b));
    return d;
}
#define DECIDE(b, key, r, cost) decide(b, key, r, cost, __LINE__)

/* The state as traffic_get shows it, written from the format traffic.h documents
 * ({"algorithm":"token_bucket","tat_us":1234}, ...; a sliding window counter's "window" is its
 * number modulo 2^24) rather than taken from the library, so that a change of a format users
 * may parse shows up here. */
static void state_json(traffic_algorithm a, const traffic_limit_state *st, char *buf, size_t cap)
{
    const char *name = traffic_algorithm_name(a);
    size_t n = 0;
    switch (a) {
    case TRAFFIC_FIXED_WINDOW:
        snprintf(buf, cap, "{\"algorithm\":\"%s\",\"window_start_us\":%lld,\"count\":%lld}", name, (long long)st->a,
                 (long long)st->b);
        return;
    case TRAFFIC_SLIDING_WINDOW_COUNTER:
        snprintf(buf, cap, "{\"algorithm\":\"%s\",\"window\":%lld,\"previous\":%lld,\"current\":%lld}", name,
                 (long long)(st->a % (1 << 24)), (long long)st->b, (long long)st->c);
        return;
    case TRAFFIC_TOKEN_BUCKET:
    case TRAFFIC_LEAKY_BUCKET:
        snprintf(buf, cap, "{\"algorithm\":\"%s\",\"tat_us\":%lld}", name, (long long)st->a);
        return;
    case TRAFFIC_SLIDING_WINDOW:
        n += (size_t)snprintf(buf, cap, "{\"algorithm\":\"%s\",\"log\":[", name);
        for (size_t i = 0; i < st->nlog && n < cap; i++)
            n += (size_t)snprintf(buf + n, cap - n, "%s[%lld,%lld]", i ? "," : "", (long long)st->log[i].t_us,
                                  (long long)st->log[i].n);
        if (n < cap) snprintf(buf + n, cap - n, "]}");
        ck_assert_msg(n + 2 < cap, "state_json: buffer of %zu too small", cap);
        return;
    }
    ck_abort_msg("state_json: algorithm %d", (int)a);
}

/* ---- the formulas at exact instants ----------------------------------------------------- */

/* One call and what it must answer. Times in µs after BASE; reset, retry, delay in µs (the
 * decision's seconds are these / 1e6, compared exactly); retry -1: never. */
typedef struct lstep {
    int64_t at; /* -1 ends a case */
    int64_t cost;
    int allowed;
    int64_t remaining, reset, retry, delay;
} lstep;

typedef struct lcase {
    const char *name; /* also the key */
    traffic_rule rule;
    int64_t most;     /* decision.limit */
    const char *json; /* traffic_get after the last step */
    lstep steps[16];
} lcase;

/* Every expected number below is worked out from traffic.h's formulas, in the comments. The
 * windows are seconds long, so that a stored state outlives the real time between steps. */
static const lcase cases[] = {
    /* Fixed window, L = 3, W = 10 s. The window opens at the first consuming request, rounded
     * down to the ms: S = BASE. remaining = L - N, reset = retry = S + W - now. */
    {"fw-basic",
     {TRAFFIC_FIXED_WINDOW, 3, 10, 0},
     3,
     "{\"algorithm\":\"fixed_window\",\"window_start_us\":1000010000000,\"count\":3}",
     {
         {500, 1, 1, 2, 9999500, 0, 0},            /* S = BASE, N = 1 */
         {1000, 1, 1, 1, 9999000, 0, 0},           /* N = 2 */
         {2000, 0, 1, 1, 9998000, 0, 0},           /* peek: a cost-1 request would pass; N stays 2 */
         {2000, 1, 1, 0, 9998000, 0, 0},           /* N = 3 */
         {3000, 1, 0, 0, 9997000, 9997000, 0},     /* full: retry at S + W */
         {3000, 0, 0, 0, 9997000, 9997000, 0},     /* a peek says the same */
         {9999999, 1, 0, 0, 1, 1, 0},              /* one µs before S + W */
         {10000000, 1, 1, 2, 10000000, 0, 0},      /* exactly S + W: a new window, S = BASE + W */
         {10000005, 3, 0, 2, 9999995, 9999995, 0}, /* 1 + 3 > 3: denied, consumes nothing */
         {10000005, 2, 1, 0, 9999995, 0, 0},       /* 1 + 2 = 3 */
         {10000006, 4, 0, 0, 9999994, -1, 0},      /* 4 > L: never */
         {-1},
     }},
    /* Fixed window, L = 5, W = 15 s, first hit 123456 µs in: S rounds down to BASE + 123000. */
    {"fw-edges",
     {TRAFFIC_FIXED_WINDOW, 5, 15, 0},
     5,
     "{\"algorithm\":\"fixed_window\",\"window_start_us\":1000015123000,\"count\":1}",
     {
         {123456, 6, 0, 5, 0, -1, 0},         /* 6 > L on an unused key: never; nothing stored */
         {123456, 0, 1, 5, 0, 0, 0},          /* a peek on an unused key */
         {123456, 5, 1, 0, 14999544, 0, 0},   /* cost L at once; reset 123000 + 15e6 - 123456 */
         {15122999, 1, 0, 0, 1, 1, 0},        /* one µs before S + W */
         {15123000, 1, 1, 4, 15000000, 0, 0}, /* S + W: the next window */
         {-1},
     }},
    /* Sliding window counter, L = 10, W = 10 s; BASE is the start of window i0 = 100000.
     * est = P (W - e) / W + C; remaining = floor(L - est'). */
    {"swc-basic",
     {TRAFFIC_SLIDING_WINDOW_COUNTER, 10, 10, 0},
     10,
     "{\"algorithm\":\"sliding_window_counter\",\"window\":100003,\"previous\":0,\"current\":1}",
     {
         {0, 4, 1, 6, 20000000, 0, 0},       /* C = 4; reset (i + 2) W - now */
         {5000000, 6, 1, 0, 15000000, 0, 0}, /* est 4 + 6 = 10 <= 10; C = 10 */
         /* est 10 + 1 > 10 and L - 1 - C < 0: window i + 1 at e = W - (L - 1) W / C = 1e6 */
         {5000000, 1, 0, 0, 15000000, 6000000, 0},
         {9999999, 1, 0, 0, 10000001, 1000001, 0}, /* one µs before the window's end */
         /* exactly the next window: P = 10 weighs fully; e = W - (L - 1 - 0) W / P = 1e6;
          * only P > 0: reset (i + 1) W - now */
         {10000000, 1, 0, 0, 10000000, 1000000, 0},
         {11000000, 1, 1, 0, 19000000, 0, 0},      /* est 10 x 0.9 = 9; C = 1, est' 10 */
         {17500000, 0, 1, 6, 12500000, 0, 0},      /* est 10 x 0.25 + 1 = 3.5: remaining 6 (a fixed window: 9) */
         {17500000, 6, 1, 0, 12500000, 0, 0},      /* C = 7, est' 9.5, floor(0.5) = 0 */
         {17500000, 1, 0, 0, 12500000, 500000, 0}, /* e = W - (10 - 1 - 7) W / 10 = 8e6 */
         {18000000, 1, 1, 0, 12000000, 0, 0},      /* est 10 x 0.2 + 7 = 9; C = 8 */
         {18000000, 11, 0, 0, 12000000, -1, 0},    /* 11 > L: never */
         {30000000, 1, 1, 9, 20000000, 0, 0},      /* two windows later: both counts gone */
         {-1},
     }},
    /* Sliding window counter, L = 10, W = 10 s: a retry that falls between two µs rounds up. */
    {"swc-rounding",
     {TRAFFIC_SLIDING_WINDOW_COUNTER, 10, 10, 0},
     10,
     "{\"algorithm\":\"sliding_window_counter\",\"window\":100001,\"previous\":3,\"current\":8}",
     {
         {0, 3, 1, 7, 20000000, 0, 0},
         {10000000, 6, 1, 1, 20000000, 0, 0}, /* P = 3 weighs fully: est 3 + 6 = 9 */
         /* 9 + 2 > 10: e = W - (10 - 2 - 6) W / 3 = 3333333.33.. -> 3333334 */
         {10000000, 2, 0, 1, 20000000, 3333334, 0},
         /* one µs before: est 3 x 0.6666667 + 6 = 8.0000001, floor(1.9999999) = 1 */
         {13333333, 2, 0, 1, 16666667, 1, 0},
         {13333334, 2, 1, 0, 16666666, 0, 0}, /* est 7.9999998 + 2 <= 10; C = 8 */
         /* peek: e = W - (10 - 1 - 8) W / 3 = 6666666.67 -> 6666667, 3333333 from now */
         {13333334, 0, 0, 0, 16666666, 3333333, 0},
         {-1},
     }},
    /* Sliding window (log), L = 3, W = 10 s. An entry at t leaves at t + W. */
    {"sw-basic",
     {TRAFFIC_SLIDING_WINDOW, 3, 10, 0},
     3,
     "{\"algorithm\":\"sliding_window\",\"log\":[[1000010000000,1],[1000014000000,2]]}",
     {
         {0, 1, 1, 2, 10000000, 0, 0},
         {2000000, 1, 1, 1, 10000000, 0, 0},
         {4000000, 0, 1, 1, 8000000, 0, 0},       /* peek; reset = t_last + W - now */
         {4000000, 2, 0, 1, 8000000, 6000000, 0}, /* needs the entry at 0 gone: 0 + W - now */
         {4000000, 1, 1, 0, 10000000, 0, 0},
         {9999999, 1, 0, 0, 4000001, 1, 0},         /* one µs before the first entry leaves */
         {10000000, 1, 1, 0, 10000000, 0, 0},       /* exactly t + W: it left */
         {10000000, 2, 0, 0, 10000000, 4000000, 0}, /* needs two gone: the one at 4e6 */
         {10000000, 4, 0, 0, 10000000, -1, 0},      /* 4 > L: never */
         {14000000, 2, 1, 0, 10000000, 0, 0},       /* the entries at 2e6 and 4e6 left */
         {14000000, 1, 0, 0, 10000000, 6000000, 0},
         {14000000, 0, 0, 0, 10000000, 6000000, 0},
         {-1},
     }},
    /* Sliding window (log), L = 5, W = 20 s: requests of one instant share an entry. */
    {"sw-merge",
     {TRAFFIC_SLIDING_WINDOW, 5, 20, 0},
     5,
     "{\"algorithm\":\"sliding_window\",\"log\":[[1000000000005,2],[1000020000000,1]]}",
     {
         {0, 2, 1, 3, 20000000, 0, 0},
         {0, 1, 1, 2, 20000000, 0, 0},        /* (BASE, 3) */
         {5, 2, 1, 0, 20000000, 0, 0},        /* (BASE + 5, 2) */
         {6, 1, 0, 0, 19999999, 19999994, 0}, /* the entry of 3 must go, at BASE + W */
         {20000000, 1, 1, 2, 20000000, 0, 0}, /* it went */
         {-1},
     }},
    /* Token bucket, L = 10 per 100 s: I = 10 s; B = 5 (BI = 50 s). T' = max(T, now) + cost I. */
    {"tb-basic",
     {TRAFFIC_TOKEN_BUCKET, 10, 100, 5},
     5,
     "{\"algorithm\":\"token_bucket\",\"tat_us\":1000170000000}",
     {
         {0, 1, 1, 4, 10000000, 0, 0}, /* T = 10 s; remaining floor((BI - (T - now)) / I) */
         {0, 3, 1, 1, 40000000, 0, 0},
         {0, 2, 0, 1, 40000000, 10000000, 0}, /* T' - now = 60 s > 50 s: retry T' - BI - now */
         {0, 0, 1, 1, 40000000, 0, 0},        /* peek */
         {0, 1, 1, 0, 50000000, 0, 0},        /* empty */
         {0, 1, 0, 0, 50000000, 10000000, 0},
         {9999999, 1, 0, 0, 40000001, 1, 0},   /* one µs before a token is back */
         {10000000, 1, 1, 0, 50000000, 0, 0},  /* it is */
         {30000000, 0, 1, 2, 30000000, 0, 0},  /* two more refilled */
         {30000000, 6, 0, 2, 30000000, -1, 0}, /* 6 > B: never */
         {120000000, 5, 1, 0, 50000000, 0, 0}, /* idle long enough: full, B at once */
         {145000000, 0, 1, 2, 25000000, 0, 0}, /* 2.5 tokens back: remaining 2 */
         {-1},
     }},
    /* Token bucket, burst 0 = L = 4 per 40 s: I = 10 s. */
    {"tb-burst0",
     {TRAFFIC_TOKEN_BUCKET, 4, 40, 0},
     4,
     "{\"algorithm\":\"token_bucket\",\"tat_us\":1000040000000}",
     {
         {0, 4, 1, 0, 40000000, 0, 0},
         {0, 1, 0, 0, 40000000, 10000000, 0},
         {0, 5, 0, 0, 40000000, -1, 0},
         {-1},
     }},
    /* Token bucket, L = 3 per 100 s: I = ceil(1e8 / 3) = 33333334 µs (rounded up). */
    {"tb-interval",
     {TRAFFIC_TOKEN_BUCKET, 3, 100, 0},
     3,
     "{\"algorithm\":\"token_bucket\",\"tat_us\":1000133333336}",
     {
         {0, 1, 1, 2, 33333334, 0, 0},
         {0, 2, 1, 0, 100000002, 0, 0},
         {33333333, 1, 0, 0, 66666669, 1, 0},
         {33333334, 1, 1, 0, 100000002, 0, 0},
         {-1},
     }},
    /* Leaky bucket, L = 10 per 100 s: I = 10 s; Q = 2 wait (most 3). delay = T' - I - now. */
    {"lb-basic",
     {TRAFFIC_LEAKY_BUCKET, 10, 100, 2},
     3,
     "{\"algorithm\":\"leaky_bucket\",\"tat_us\":1000140000000}",
     {
         {0, 1, 1, 2, 10000000, 0, 0},        /* delay 0: the first of an idle key */
         {0, 1, 1, 1, 20000000, 0, 10000000}, /* I */
         {0, 0, 1, 1, 20000000, 0, 20000000}, /* peek: the delay a request would get, 2I */
         {0, 1, 1, 0, 30000000, 0, 20000000}, /* 2I */
         {0, 1, 0, 0, 30000000, 10000000, 0}, /* beyond the burst: retry T + (1 - 1 - Q) I - now */
         {9999999, 1, 0, 0, 20000001, 1, 0},
         {10000000, 1, 1, 0, 30000000, 0, 20000000},
         {10000000, 4, 0, 0, 30000000, -1, 0},        /* 4 > Q + 1: never */
         {100000000, 3, 1, 0, 30000000, 0, 20000000}, /* idle: 3 at once, the last held 2I */
         {105000000, 0, 0, 0, 25000000, 5000000, 0},  /* peek, denied */
         {110000000, 1, 1, 0, 30000000, 0, 20000000},
         {-1},
     }},
    /* Leaky bucket, burst 0 = L = 2 per 200 s: I = 100 s, Q = 2. */
    {"lb-burst0",
     {TRAFFIC_LEAKY_BUCKET, 2, 200, 0},
     3,
     "{\"algorithm\":\"leaky_bucket\",\"tat_us\":1000300000000}",
     {
         {0, 1, 1, 2, 100000000, 0, 0},
         {0, 1, 1, 1, 200000000, 0, 100000000},
         {0, 1, 1, 0, 300000000, 0, 200000000},
         {0, 1, 0, 0, 300000000, 100000000, 0},
         {-1},
     }},
};

/* A step that stores a state with a reset_after under this, read again by a later step before
 * that state's end, could meet a key that its real-clock TTL already removed: a table error. */
#define TABLE_SAFE_US 2000000

static void run_case(traffic_backend *b, const lcase *c)
{
    for (int k = 0; c->steps[k].at >= 0; k++) {
        const lstep *s = &c->steps[k];
        if (s->allowed && s->cost > 0 && s->reset < TABLE_SAFE_US)
            for (int j = k + 1; c->steps[j].at >= 0; j++)
                ck_assert_msg(c->steps[j].at >= s->at + s->reset, "table %s: step %d reads step %d's short state",
                              c->name, j, k);
        traffic_decision d = DECIDE_AT(b, c->name, &c->rule, s->cost, BASE + s->at);
        traffic_decision want = {.allowed = s->allowed,
                                 .limit = c->most,
                                 .remaining = s->remaining,
                                 .reset_after = secs(s->reset),
                                 .retry_after = s->retry < 0 ? -1.0 : secs(s->retry),
                                 .delay = secs(s->delay)};
        ck_assert_msg(lm_same_decision(&d, &want), "%s step %d (BASE + %lld, cost %lld): got " LM_DEC_FMT ", want " LM_DEC_FMT,
                      c->name, k + 1, (long long)s->at, (long long)s->cost, LM_DEC_ARGS(d), LM_DEC_ARGS(want));
    }
    char text[512];
    int rc = get_text(b, c->name, text, sizeof text);
    ck_assert_msg(rc == TRAFFIC_OK, "%s: get -> %s (%s)", c->name, traffic_strerror(rc), traffic_errmsg(b));
    ck_assert_msg(strcmp(text, c->json) == 0, "%s: get shows %s, want %s", c->name, text, c->json);
}

/* _i: the algorithm whose cases run. */
START_TEST(l_formulas)
{
    traffic_backend *b = lfresh();
    int ran = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if ((int)cases[i].rule.algorithm == _i) {
            run_case(b, &cases[i]);
            ran++;
        }
    ck_assert_int_ge(ran, 1);
    ldone(b);
}
END_TEST

/* ---- bad input ------------------------------------------------------------------------- */

static const struct bad_rule {
    const char *why;
    traffic_rule r;
} bad_rules[] = {
    {"limit 0", {TRAFFIC_FIXED_WINDOW, 0, 10, 0}},
    {"limit -1", {TRAFFIC_TOKEN_BUCKET, -1, 10, 0}},
    {"window 0", {TRAFFIC_FIXED_WINDOW, 5, 0, 0}},
    {"window -1", {TRAFFIC_SLIDING_WINDOW_COUNTER, 5, -1, 0}},
    {"window NaN", {TRAFFIC_SLIDING_WINDOW, 5, NAN, 0}},
    {"window +inf", {TRAFFIC_TOKEN_BUCKET, 5, INFINITY, 0}},
    {"window -inf", {TRAFFIC_LEAKY_BUCKET, 5, -INFINITY, 0}},
    {"window below 1 ms", {TRAFFIC_FIXED_WINDOW, 1, 0.0009, 0}},
    {"window below 1 ms (bucket)", {TRAFFIC_TOKEN_BUCKET, 1, 0.0005, 0}},
    {"window over TRAFFIC_WINDOW_MAX_S", {TRAFFIC_SLIDING_WINDOW_COUNTER, 1, 2e8, 0}},
    {"burst -1 (token)", {TRAFFIC_TOKEN_BUCKET, 5, 10, -1}},
    {"burst -1 (leaky)", {TRAFFIC_LEAKY_BUCKET, 5, 10, -1}},
    {"burst on fixed_window", {TRAFFIC_FIXED_WINDOW, 5, 10, 2}},
    {"burst on sliding_window_counter", {TRAFFIC_SLIDING_WINDOW_COUNTER, 5, 10, 1}},
    {"burst on sliding_window", {TRAFFIC_SLIDING_WINDOW, 5, 10, 5}},
    {"algorithm 7", {(traffic_algorithm)7, 5, 10, 0}},
    {"algorithm 5", {(traffic_algorithm)5, 5, 10, 0}},
    {"algorithm -1", {(traffic_algorithm)-1, 5, 10, 0}},
    {"token bucket faster than 1/µs", {TRAFFIC_TOKEN_BUCKET, 1001, 0.001, 0}},
    {"leaky bucket faster than 1/µs", {TRAFFIC_LEAKY_BUCKET, 2000000, 1, 0}},
    {"sliding_window limit over the max", {TRAFFIC_SLIDING_WINDOW, TRAFFIC_SLIDING_WINDOW_LIMIT_MAX + 1, 10, 0}},
    {"fixed_window limit over the max", {TRAFFIC_FIXED_WINDOW, TRAFFIC_WINDOW_LIMIT_MAX + 1, 10, 0}},
    {"sliding_window_counter limit over the max",
     {TRAFFIC_SLIDING_WINDOW_COUNTER, TRAFFIC_WINDOW_LIMIT_MAX + 1, 10, 0}},
    {"token bucket B I over 2^52 us", {TRAFFIC_TOKEN_BUCKET, 1, 1e8, 100}},
    {"leaky bucket (Q + 1) I over 2^52 us", {TRAFFIC_LEAKY_BUCKET, 1, 1e8, 100}},
};

/* Every call on key must be TRAFFIC_EINVAL with a message, and leave key as `before` shows it
 * (NULL: absent). */
static void expect_einval_at(traffic_backend *b, int rc, const char *what, const char *key, const char *before,
                             int line)
{
    ck_assert_msg(rc == TRAFFIC_EINVAL, "line %d: %s -> %s, want EINVAL", line, what, traffic_strerror(rc));
    ck_assert_msg(traffic_errmsg(b)[0] != '\0', "line %d: %s: EINVAL without a message", line, what);
    if (!before) {
        expect_absent_at(b, key, line);
        return;
    }
    char text[512];
    rc = get_text(b, key, text, sizeof text);
    ck_assert_msg(rc == TRAFFIC_OK && strcmp(text, before) == 0, "line %d: %s changed \"%s\": %s -> %s", line, what,
                  key, before, text);
}
#define EXPECT_EINVAL(b, expr, key, before) expect_einval_at(b, (expr), #expr, key, before, __LINE__)

START_TEST(l_bad_input)
{
    traffic_backend *b = lfresh();
    const traffic_rule fw = rule_of(TRAFFIC_FIXED_WINDOW, 5, 10, 0);
    traffic_decision d;
    char held[512], msg[256];
    DECIDE_AT(b, "held", &fw, 2, BASE);
    TU_OK(b, get_text(b, "held", held, sizeof held));

    for (size_t i = 0; i < sizeof bad_rules / sizeof bad_rules[0]; i++) {
        const traffic_rule *r = &bad_rules[i].r;
        snprintf(msg, sizeof msg, "limit(%s)", bad_rules[i].why);
        expect_einval_at(b, traffic_limit(b, "new", r, 1, &d), msg, "new", NULL, __LINE__);
        expect_einval_at(b, traffic_limit_at(b, "new", r, 1, BASE, &d), msg, "new", NULL, __LINE__);
        expect_einval_at(b, traffic_limit_at(b, "new", r, 0, BASE, &d), msg, "new", NULL, __LINE__);
        expect_einval_at(b, traffic_limit_at(b, "held", r, 1, BASE + 1, &d), msg, "held", held, __LINE__);
        expect_einval_at(b, traffic_limit(b, "held", r, 1, &d), msg, "held", held, __LINE__);
    }

    EXPECT_EINVAL(b, traffic_limit(b, "new", NULL, 1, &d), "new", NULL);
    EXPECT_EINVAL(b, traffic_limit_at(b, "held", NULL, 1, BASE, &d), "held", held);
    EXPECT_EINVAL(b, traffic_limit(b, NULL, &fw, 1, &d), "held", held);
    EXPECT_EINVAL(b, traffic_limit(b, "", &fw, 1, &d), "held", held);
    EXPECT_EINVAL(b, traffic_limit_at(b, NULL, &fw, 1, BASE, &d), "held", held);
    EXPECT_EINVAL(b, traffic_limit_at(b, "", &fw, 1, BASE, &d), "held", held);
    EXPECT_EINVAL(b, traffic_limit(b, "new", &fw, -1, &d), "new", NULL);
    EXPECT_EINVAL(b, traffic_limit(b, "held", &fw, -1, &d), "held", held);
    EXPECT_EINVAL(b, traffic_limit_at(b, "held", &fw, INT64_MIN, BASE, &d), "held", held);
    EXPECT_EINVAL(b, traffic_limit_at(b, "new", &fw, 1, -1, &d), "new", NULL);
    EXPECT_EINVAL(b, traffic_limit_at(b, "held", &fw, 1, -1, &d), "held", held);
    EXPECT_EINVAL(b, traffic_limit_at(b, "held", &fw, 1, INT64_MIN, &d), "held", held);
    EXPECT_EINVAL(b, traffic_limit_at(b, "held", &fw, 1, INT64_C(1) << 53, &d), "held", held);
    TU_EXPECT_RC(NULL, traffic_limit(NULL, "held", &fw, 1, &d), TRAFFIC_EINVAL);
    TU_EXPECT_RC(NULL, traffic_limit_at(NULL, "held", &fw, 1, BASE, &d), TRAFFIC_EINVAL);

    char *k251 = malloc(252);
    ck_assert_ptr_nonnull(k251);
    memset(k251, 'k', 251);
    k251[251] = '\0';
    TU_EXPECT_RC(b, traffic_limit(b, k251, &fw, 1, &d), TRAFFIC_ETOOBIG);
    TU_EXPECT_RC(b, traffic_limit_at(b, k251, &fw, 1, BASE, &d), TRAFFIC_ETOOBIG);
    k251[250] = '\0'; /* 250 bytes: fine */
    d = DECIDE_AT(b, k251, &fw, 1, BASE);
    ck_assert_int_eq(d.remaining, 4);
    free(k251);

    /* none of it counted: "held" still has 2 of 5 used, and only the two keys exist */
    d = DECIDE_AT(b, "held", &fw, 0, BASE + 2);
    ck_assert_int_eq(d.remaining, 3);
    ck_assert_uint_eq(tu_stats(b).keys, 2);
    ldone(b);
}
END_TEST

/* ---- kinds of keys --------------------------------------------------------------------- */

/* One rule per algorithm with room for a few requests and seconds-long state. */
static traffic_rule plain_rule(int a)
{
    return rule_of((traffic_algorithm)a, 5, 60, 0);
}

START_TEST(l_kind_bytes_counter)
{
    traffic_backend *b = lfresh();
    traffic_decision d;
    int64_t out = 0;
    char text[512];
    TU_OK(b, traffic_set(b, "bytes", "abc", 3, 0));
    TU_OK(b, traffic_increment(b, "ctr", 5, 0, NULL));
    for (int a = 0; a < N_ALGOS; a++) {
        traffic_rule r = plain_rule(a);
        TU_EXPECT_RC(b, traffic_limit(b, "bytes", &r, 1, &d), TRAFFIC_ETYPE);
        ck_assert_str_ne(traffic_errmsg(b), "");
        TU_EXPECT_RC(b, traffic_limit_at(b, "bytes", &r, 0, BASE, &d), TRAFFIC_ETYPE);
        TU_EXPECT_RC(b, traffic_limit(b, "ctr", &r, 1, &d), TRAFFIC_ETYPE);
        ck_assert_str_ne(traffic_errmsg(b), "");
        TU_EXPECT_RC(b, traffic_limit_at(b, "ctr", &r, 0, BASE, &d), TRAFFIC_ETYPE);
    }
    TU_OK(b, get_text(b, "bytes", text, sizeof text));
    ck_assert_str_eq(text, "abc");
    ck_assert_int_eq(tu_counter(b, "ctr"), 5);

    /* and the other way round: a limit key is no counter; traffic_set replaces it with bytes */
    for (int a = 0; a < N_ALGOS; a++) {
        traffic_rule r = plain_rule(a);
        char key[16], before[512];
        snprintf(key, sizeof key, "lim%d", a);
        DECIDE_AT(b, key, &r, 1, BASE);
        TU_OK(b, get_text(b, key, before, sizeof before));
        TU_EXPECT_RC(b, traffic_increment(b, key, 1, 0, &out), TRAFFIC_ETYPE);
        ck_assert_str_ne(traffic_errmsg(b), "");
        TU_OK(b, get_text(b, key, text, sizeof text));
        ck_assert_str_eq(text, before);
        TU_OK(b, traffic_set(b, key, "now bytes", 9, 0));
        TU_EXPECT_RC(b, traffic_limit_at(b, key, &r, 1, BASE, &d), TRAFFIC_ETYPE);
        TU_OK(b, get_text(b, key, text, sizeof text));
        ck_assert_str_eq(text, "now bytes");
    }
    ldone(b);
}
END_TEST

START_TEST(l_kind_algorithms)
{
    traffic_backend *b = lfresh();
    traffic_decision d;
    char key[16], before[512], text[512];
    for (int a = 0; a < N_ALGOS; a++)
        for (int o = 0; o < N_ALGOS; o++) {
            if (o == a) continue;
            traffic_rule ra = plain_rule(a), ro = plain_rule(o);
            snprintf(key, sizeof key, "k%d-%d", a, o);
            DECIDE_AT(b, key, &ra, 1, BASE);
            TU_OK(b, get_text(b, key, before, sizeof before));
            int rc = traffic_limit_at(b, key, &ro, 1, BASE + 1, &d);
            ck_assert_msg(rc == TRAFFIC_ETYPE, "%s on a %s key -> %s, want ETYPE", traffic_algorithm_name(o),
                          traffic_algorithm_name(a), traffic_strerror(rc));
            ck_assert_str_ne(traffic_errmsg(b), "");
            TU_EXPECT_RC(b, traffic_limit_at(b, key, &ro, 0, BASE + 1, &d), TRAFFIC_ETYPE);
            TU_EXPECT_RC(b, traffic_limit(b, key, &ro, 1, &d), TRAFFIC_ETYPE);
            TU_OK(b, get_text(b, key, text, sizeof text));
            ck_assert_msg(strcmp(text, before) == 0, "a refused %s changed a %s key: %s -> %s",
                          traffic_algorithm_name(o), traffic_algorithm_name(a), before, text);
        }
    /* The same algorithm under another rule is the same kind: the state is reinterpreted. */
    for (int a = 0; a < N_ALGOS; a++) {
        traffic_rule r1 = plain_rule(a), r2 = rule_of((traffic_algorithm)a, 7, 30, 0);
        snprintf(key, sizeof key, "re%d", a);
        DECIDE_AT(b, key, &r1, 1, BASE);
        d = DECIDE_AT(b, key, &r2, 1, BASE + 1);
        ck_assert_int_eq(d.allowed, 1);
        ck_assert_int_eq(d.limit, lm_most_of(&r2));
    }
    ldone(b);
}
END_TEST

START_TEST(l_kind_get)
{
    traffic_backend *b = lfresh();
    char key[16], text[512], want[64];
    for (int a = 0; a < N_ALGOS; a++) {
        traffic_rule r = plain_rule(a);
        snprintf(key, sizeof key, "g%d", a);
        DECIDE(b, key, &r, 1);
        TU_OK(b, get_text(b, key, text, sizeof text));
        size_t n = strlen(text);
        ck_assert_msg(n > 2 && text[0] == '{' && text[n - 1] == '}', "get(%s) is no JSON object: %s", key, text);
        snprintf(want, sizeof want, "{\"algorithm\":\"%s\",", traffic_algorithm_name((traffic_algorithm)a));
        ck_assert_msg(strncmp(text, want, strlen(want)) == 0, "get(%s) = %s, want it to start %s", key, text, want);
        /* the length query works on it like on any value */
        size_t len = 0;
        TU_EXPECT_RC(b, traffic_get(b, key, NULL, 0, &len), TRAFFIC_ERANGE);
        ck_assert_uint_eq(len, n);
    }
    ldone(b);
}
END_TEST

START_TEST(l_kind_delete)
{
    traffic_backend *b = lfresh();
    char key[16];
    for (int a = 0; a < N_ALGOS; a++) {
        traffic_rule r = plain_rule(a);
        int64_t most = lm_most_of(&r);
        snprintf(key, sizeof key, "del%d", a);
        traffic_decision d = DECIDE(b, key, &r, most);
        ck_assert_int_eq(d.allowed, 1);
        d = DECIDE(b, key, &r, 1);
        ck_assert_msg(d.allowed == 0, "%s: allowed past the quota", key);
        ck_assert_int_eq(traffic_exists(b, key), 1);
        TU_OK(b, traffic_delete(b, key));
        EXPECT_ABSENT(b, key);
        d = DECIDE(b, key, &r, most);
        ck_assert_msg(d.allowed == 1 && d.remaining == 0, "%s after delete: " LM_DEC_FMT, key, LM_DEC_ARGS(d));
    }
    ldone(b);
}
END_TEST

START_TEST(l_kind_ttl)
{
    traffic_backend *b = lfresh();
    const struct {
        traffic_rule r;
        int64_t cost;
    } t[] = {
        {{TRAFFIC_FIXED_WINDOW, 5, 60, 0}, 1},           /* reset ~60 s */
        {{TRAFFIC_SLIDING_WINDOW_COUNTER, 5, 60, 0}, 1}, /* (i + 2) W - now: 60..120 s */
        {{TRAFFIC_SLIDING_WINDOW, 5, 60, 0}, 1},         /* 60 s */
        {{TRAFFIC_TOKEN_BUCKET, 10, 100, 0}, 3},         /* 3 I = 30 s */
        {{TRAFFIC_LEAKY_BUCKET, 10, 100, 0}, 2},         /* 2 I = 20 s */
    };
    char key[16];
    double s = 0;
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        snprintf(key, sizeof key, "ttl%zu", i);
        traffic_decision d = DECIDE(b, key, &t[i].r, t[i].cost);
        ck_assert_msg(d.allowed && d.reset_after >= 20 && d.reset_after <= 120, "%s: " LM_DEC_FMT, key, LM_DEC_ARGS(d));
        ck_assert_int_eq(traffic_exists(b, key), 1);
        TU_OK(b, traffic_ttl(b, key, &s));
        /* at least reset_after; a backend may keep it up to an eighth longer (traffic.h) */
        ck_assert_msg(s >= d.reset_after - 1 && s <= d.reset_after * 1.125 + 1, "%s: ttl %g s, reset_after %g s", key,
                      s, d.reset_after);
    }
    /* at a simulated instant too: the TTL counts reset_after on the real clock */
    traffic_rule fw = rule_of(TRAFFIC_FIXED_WINDOW, 5, 10, 0);
    traffic_decision d = DECIDE_AT(b, "sim", &fw, 1, BASE + 500);
    ck_assert(d.reset_after == secs(9999500));
    TU_OK(b, traffic_ttl(b, "sim", &s));
    ck_assert_msg(s >= d.reset_after - 1 && s <= d.reset_after * 1.125 + 1, "sim: ttl %g s, reset_after %g s", s,
                  d.reset_after);
    ldone(b);
}
END_TEST

START_TEST(l_kind_clear)
{
    traffic_backend *b = lfresh();
    char key[16];
    for (int a = 0; a < N_ALGOS; a++) {
        traffic_rule r = plain_rule(a);
        snprintf(key, sizeof key, "c%d", a);
        DECIDE(b, key, &r, 2);
    }
    TU_OK(b, traffic_set(b, "bytes", "x", 1, 0));
    ck_assert_uint_eq(tu_stats(b).keys, N_ALGOS + 1);
    TU_OK(b, traffic_clear(b));
    ck_assert_uint_eq(tu_stats(b).keys, 0);
    for (int a = 0; a < N_ALGOS; a++) {
        traffic_rule r = plain_rule(a);
        snprintf(key, sizeof key, "c%d", a);
        EXPECT_ABSENT(b, key);
        traffic_decision d = DECIDE(b, key, &r, 1); /* starts afresh */
        ck_assert_msg(d.allowed && d.remaining == lm_most_of(&r) - 1, "%s after clear: " LM_DEC_FMT, key, LM_DEC_ARGS(d));
    }
    ldone(b);
}
END_TEST

START_TEST(l_kind_expires)
{
    traffic_backend *b = lfresh();
    const traffic_rule rules[N_ALGOS + 1] = {
        {TRAFFIC_SLIDING_WINDOW_COUNTER, 1, 0.1, 0}, /* (i + 2) W - now <= 0.2 s */
        {TRAFFIC_FIXED_WINDOW, 1, 0.2, 0},           {TRAFFIC_SLIDING_WINDOW, 1, 0.2, 0},
        {TRAFFIC_TOKEN_BUCKET, 1, 0.2, 0},           {TRAFFIC_LEAKY_BUCKET, 1, 0.2, 0},
        {TRAFFIC_FIXED_WINDOW, 1, 0.2, 0}, /* at a simulated instant */
    };
    char key[16];
    double longest = 0;
    for (int i = 0; i <= N_ALGOS; i++) {
        snprintf(key, sizeof key, "e%d", i);
        int64_t t0 = mono_us();
        traffic_decision d = i < N_ALGOS ? DECIDE(b, key, &rules[i], 1) : DECIDE_AT(b, key, &rules[i], 1, BASE);
        ck_assert_msg(d.allowed && d.reset_after > 0 && d.reset_after <= 0.2, "%s: " LM_DEC_FMT, key, LM_DEC_ARGS(d));
        int e = traffic_exists(b, key);
        /* present, unless the real time since the decision allowed it to go already */
        ck_assert_msg(e == 1 || (e == 0 && mono_us() - t0 >= to_us(d.reset_after)), "%s: exists -> %d", key, e);
        if (d.reset_after > longest) longest = d.reset_after;
    }
    tu_sleep_ms((long)(longest * 1000) + 250);
    for (int i = 0; i <= N_ALGOS; i++) {
        snprintf(key, sizeof key, "e%d", i);
        EXPECT_ABSENT(b, key);
    }
    ldone(b);
}
END_TEST

/* Denied requests and peeks consume nothing and store nothing; out may be NULL. */
START_TEST(l_denied_stores_nothing)
{
    traffic_backend *b = lfresh();
    char key[16], before[512], text[512];
    for (int a = 0; a < N_ALGOS; a++) {
        traffic_rule r = rule_of((traffic_algorithm)a, 3, 60, 0);
        int64_t most = lm_most_of(&r);
        snprintf(key, sizeof key, "p%d", a);
        traffic_decision d = DECIDE_AT(b, key, &r, 0, BASE);
        ck_assert_msg(d.allowed == 1 && d.remaining == most && d.reset_after == 0 && d.retry_after == 0,
                      "peek on an unused %s key: " LM_DEC_FMT, traffic_algorithm_name(r.algorithm), LM_DEC_ARGS(d));
        EXPECT_ABSENT(b, key);
        d = DECIDE_AT(b, key, &r, most + 1, BASE);
        ck_assert_msg(d.allowed == 0 && d.retry_after == -1 && d.remaining == most && d.reset_after == 0,
                      "cost %lld on an unused %s key: " LM_DEC_FMT, (long long)(most + 1),
                      traffic_algorithm_name(r.algorithm), LM_DEC_ARGS(d));
        EXPECT_ABSENT(b, key);

        /* a full key: denials and peeks leave its state as it was */
        snprintf(key, sizeof key, "f%d", a);
        d = DECIDE_AT(b, key, &r, most, BASE);
        ck_assert_int_eq(d.allowed, 1);
        TU_OK(b, get_text(b, key, before, sizeof before));
        for (int k = 0; k < 3; k++) {
            d = DECIDE_AT(b, key, &r, k == 2 ? 0 : 1 + k, BASE + 1000 * k);
            ck_assert_msg(d.allowed == 0, "%s: " LM_DEC_FMT, key, LM_DEC_ARGS(d));
            TU_OK(b, get_text(b, key, text, sizeof text));
            ck_assert_msg(strcmp(text, before) == 0, "%s: a denial changed %s to %s", key, before, text);
        }

        /* out == NULL: the decision still counts */
        snprintf(key, sizeof key, "n%d", a);
        TU_OK(b, traffic_limit_at(b, key, &r, most - 1, BASE, NULL));
        TU_OK(b, traffic_limit(b, "n-real", &r, 1, NULL));
        ck_assert_int_eq(traffic_exists(b, "n-real"), 1);
        d = DECIDE_AT(b, key, &r, 0, BASE);
        ck_assert_msg(d.remaining == 1, "%s after a decision with out NULL: " LM_DEC_FMT, key, LM_DEC_ARGS(d));
        TU_OK(b, traffic_delete(b, "n-real"));
    }
    ldone(b);
}
END_TEST

/* ---- statistics ------------------------------------------------------------------------ */

static unsigned long long json_field(const char *json, const char *field)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", field);
    const char *p = strstr(json, pat);
    ck_assert_msg(p != NULL, "stats JSON lacks %s: %s", pat, json);
    return strtoull(p + strlen(pat), NULL, 10);
}

START_TEST(l_stats)
{
    traffic_backend *b = lfresh();
    traffic_rule fw = rule_of(TRAFFIC_FIXED_WINDOW, 2, 60, 0), bad = rule_of(TRAFFIC_FIXED_WINDOW, 0, 60, 0);
    traffic_decision d;
    TU_OK(b, traffic_set(b, "bytes", "x", 1, 0));
    struct traffic_stats s0 = tu_stats(b);
    if (L.stats_exact) { /* a fresh store has decided nothing */
        ck_assert_uint_eq(s0.decisions, 0);
        ck_assert_uint_eq(s0.denied, 0);
    }

    int want_denied = 0, want_decisions = 0;
    const int64_t costs[] = {1, 0, 1, 1, 1, 5}; /* pass, peek (passes), pass, deny, deny, deny (never) */
    for (size_t i = 0; i < sizeof costs / sizeof costs[0]; i++) {
        d = DECIDE_AT(b, "s", &fw, costs[i], BASE + (int64_t)i);
        want_decisions++;
        want_denied += !d.allowed;
    }
    ck_assert_int_eq(want_denied, 3);
    d = DECIDE(b, "s-real", &fw, 1);
    want_decisions++;
    /* calls that fail are no decisions */
    TU_EXPECT_RC(b, traffic_limit(b, "s", &bad, 1, &d), TRAFFIC_EINVAL);
    TU_EXPECT_RC(b, traffic_limit(b, "bytes", &fw, 1, &d), TRAFFIC_ETYPE);

    struct traffic_stats s1 = tu_stats(b);
    uint64_t dd = s1.decisions - s0.decisions, dn = s1.denied - s0.denied;
    if (L.stats_exact) {
        ck_assert_msg(dd == (uint64_t)want_decisions, "stats.decisions moved by %llu, want %d", (unsigned long long)dd,
                      want_decisions);
        ck_assert_msg(dn == (uint64_t)want_denied, "stats.denied moved by %llu, want %d", (unsigned long long)dn,
                      want_denied);
    } else {
        ck_assert_msg(dd >= (uint64_t)want_decisions, "stats.decisions moved by %llu, want at least %d",
                      (unsigned long long)dd, want_decisions);
        ck_assert_msg(dn >= (uint64_t)want_denied, "stats.denied moved by %llu, want at least %d",
                      (unsigned long long)dn, want_denied);
    }
    ck_assert_uint_eq(s1.keys, 3);

    char json[4096];
    int n = traffic_stats_json(b, json, sizeof json);
    ck_assert_msg(n > 0, "stats_json -> %d (%s)", n, traffic_errmsg(b));
    ck_assert_uint_eq(json_field(json, "decisions"), s1.decisions);
    ck_assert_uint_eq(json_field(json, "denied"), s1.denied);
    ldone(b);
}
END_TEST

/* ---- differential: the backend against traffic_limit_apply ---------------------------- */

#define DIFF_DECISIONS 2000 /* per algorithm; two round trips each on Redis */
#define DIFF_STEPS     40   /* decisions per key */
#define DIFF_LOG_MAX   20   /* sliding_window limits drawn up to this */
/* A key whose state was stored at real time t with reset_after r may be gone from t + r on
 * (its TTL); the stores keep expiries in ms, so allow one of rounding. */
#define EXPIRY_SLACK_US 2000

static uint64_t rnd(uint64_t *s)
{
    uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static int64_t below(uint64_t *s, int64_t n)
{
    return n <= 0 ? 0 : (int64_t)(rnd(s) % (uint64_t)n);
}

static traffic_rule random_rule(uint64_t *s, traffic_algorithm a)
{
    static const double windows[] = {0.001, 0.0025, 0.25, 1, 7.5, 10, 60, 3600};
    static const int64_t limits[] = {1, 2, 3, 5, 10, 100, 1000, TRAFFIC_WINDOW_LIMIT_MAX};
    static const int64_t bursts[] = {0, 0, 1, 2, 5, 40};
    int64_t log_max = log_limit_max() < DIFF_LOG_MAX ? log_limit_max() : DIFF_LOG_MAX;
    for (;;) {
        traffic_rule r = rule_of(a, limits[below(s, 8)], windows[below(s, 8)], 0);
        if (a == TRAFFIC_SLIDING_WINDOW) r.limit = 1 + below(s, log_max);
        if (lm_is_bucket(a)) r.burst = bursts[below(s, 6)];
        if (traffic_limit_check(&r, NULL, 0) == TRAFFIC_OK) return r;
    }
}

static int64_t random_cost(uint64_t *s, int64_t most)
{
    int64_t p = below(s, 100);
    if (p < 15) return 0;
    if (p < 65) return 1;
    if (p < 90) return 1 + below(s, most);
    if (p < 95) return most;
    return most + 1 + below(s, 3);
}

/* The next instant: mostly forward by a little, often exactly at (or a µs around) the last
 * decision's retry or reset instant, sometimes far ahead, sometimes back. */
static int64_t random_time(uint64_t *s, int64_t t, const traffic_decision *last, int64_t w, int64_t unit)
{
    int64_t p = below(s, 100), retry = to_us(last->retry_after), reset = to_us(last->reset_after);
    if (p < 30) return t;
    if (p < 55) return t + below(s, unit + 1);
    if (p < 70) return t + below(s, w + 1);
    if (p < 80 && retry > 0) return t + retry - 1 + below(s, 3);
    if (p < 90 && reset > 0) return t + reset - 1 + below(s, 3);
    if (p < 95) return t + w * (1 + below(s, 5));
    return t - below(s, w + 1);
}

/* A local copy of one key's state: what the store should hold. */
typedef struct dkey {
    traffic_limit_state st;
    int stored;          /* 0: the store should not have the key */
    int64_t store_real;  /* mono_us() before the call that stored it */
    int64_t store_reset; /* that call's reset_after, µs */
} dkey;

static void state_copy(traffic_limit_state *dst, const traffic_limit_state *src)
{
    traffic_limit_entry *log = dst->log;
    size_t cap = dst->log_cap;
    *dst = *src;
    dst->log = log;
    dst->log_cap = cap;
    if (src->nlog) memcpy(log, src->log, src->nlog * sizeof *log);
}

static void state_zero(traffic_limit_state *st)
{
    st->a = st->b = st->c = 0;
    st->nlog = 0;
}

static int may_have_expired(const dkey *k, int64_t real_now)
{
    return k->stored && real_now - k->store_real >= k->store_reset - EXPIRY_SLACK_US;
}

/* _i: the algorithm. Each decision of the backend (traffic_limit_at) must equal
 * traffic_limit_apply's on the state the key should hold, field for field, and traffic_get
 * must show that state; the only other answer accepted is the unused state's, when the key's
 * real-clock TTL could have run out. */
START_TEST(l_differential)
{
    traffic_algorithm a = (traffic_algorithm)_i;
    traffic_backend *b = lfresh();
    uint64_t seed = UINT64_C(0x5eed0000) + (uint64_t)_i;
    traffic_limit_entry *bufs[2];
    for (int i = 0; i < 2; i++) {
        bufs[i] = calloc(DIFF_LOG_MAX, sizeof **bufs);
        ck_assert_ptr_nonnull(bufs[i]);
    }
    dkey k = {.st = {.log = bufs[0], .log_cap = DIFF_LOG_MAX}};
    traffic_limit_state work = {.log = bufs[1], .log_cap = DIFF_LOG_MAX};
    char key[32], want_json[1024], got_json[1024];
    int expiries = 0;

    for (int seq = 0; seq < DIFF_DECISIONS / DIFF_STEPS; seq++) {
        traffic_rule r = random_rule(&seed, a);
        int64_t w = to_us(r.window), most = lm_most_of(&r);
        int64_t unit = lm_is_bucket(a) ? (w + r.limit - 1) / r.limit : w / r.limit;
        int64_t t = BASE + below(&seed, 2 * w);
        traffic_decision last = {0};
        snprintf(key, sizeof key, "d%d", seq);
        state_zero(&k.st);
        k.stored = 0;
        for (int step = 0; step < DIFF_STEPS; step++) {
            if (step) t = random_time(&seed, t, &last, w, unit);
            int64_t cost = random_cost(&seed, most);
            traffic_decision got, want;
            memset(&got, 0x55, sizeof got);
            int64_t real0 = mono_us();
            int rc = traffic_limit_at(b, key, &r, cost, t, &got);
            int64_t real1 = mono_us();
            ck_assert_msg(rc == TRAFFIC_OK, "seq %d step %d: limit_at -> %s (%s)", seq, step, traffic_strerror(rc),
                          traffic_errmsg(b));
            state_copy(&work, &k.st);
            int changed = traffic_limit_apply(&r, &work, t, cost, &want);
            ck_assert_int_ge(changed, 0);
            if (!lm_same_decision(&got, &want)) {
                traffic_decision fresh_want = want;
                int ok = may_have_expired(&k, real1);
                if (ok) {
                    state_zero(&work);
                    changed = traffic_limit_apply(&r, &work, t, cost, &fresh_want);
                    ok = lm_same_decision(&got, &fresh_want);
                }
                ck_assert_msg(ok,
                              "seq %d step %d, rule %s %lld/%gs burst %lld, at BASE%+lld, cost %lld:\n"
                              "  backend " LM_DEC_FMT "\n  want    " LM_DEC_FMT,
                              seq, step, traffic_algorithm_name(a), (long long)r.limit, r.window, (long long)r.burst,
                              (long long)(t - BASE), (long long)cost, LM_DEC_ARGS(got), LM_DEC_ARGS(want));
                want = fresh_want;
                expiries++;
            }
            if (changed == 1) {
                state_copy(&k.st, &work);
                k.stored = 1;
                k.store_real = real0;
                k.store_reset = to_us(want.reset_after);
            }
            last = want;

            rc = get_text(b, key, got_json, sizeof got_json);
            if (rc == TRAFFIC_ENOTFOUND) {
                ck_assert_msg(!k.stored || may_have_expired(&k, mono_us()),
                              "seq %d step %d: the key is gone %lld µs after a store with reset_after %lld µs", seq,
                              step, (long long)(mono_us() - k.store_real), (long long)k.store_reset);
                state_zero(&k.st);
                k.stored = 0;
                continue;
            }
            ck_assert_msg(rc == TRAFFIC_OK, "seq %d step %d: get -> %s (%s)", seq, step, traffic_strerror(rc),
                          traffic_errmsg(b));
            ck_assert_msg(k.stored, "seq %d step %d: the key exists but no decision stored a state: %s", seq, step,
                          got_json);
            state_json(a, &k.st, want_json, sizeof want_json);
            ck_assert_msg(strcmp(got_json, want_json) == 0,
                          "seq %d step %d (BASE%+lld, cost %lld): get shows %s, want %s", seq, step,
                          (long long)(t - BASE), (long long)cost, got_json, want_json);
        }
    }
    if (expiries)
        fprintf(stderr, "%s: %d decisions met a key its TTL had removed\n", traffic_algorithm_name(a), expiries);
    free(bufs[0]);
    free(bufs[1]);
    ldone(b);
}
END_TEST

/* ---- concurrency: processes x threads on one key ---------------------------------------- */

#define CONC_PROCS   6
#define CONC_THREADS 2
#define CONC_CALLS   60 /* per thread: 720 calls in all, over twice every quota below */
#define CONC_N       (CONC_PROCS * CONC_THREADS)
#define CONC_WAIT_US (30 * INT64_C(1000000)) /* the most anyone waits for the start */

struct conc_thread {
    int calls, allowed, failures, first_rc;
    int64_t remaining[CONC_CALLS]; /* of each allowed call */
};

/* MAP_SHARED: the children write, the parent reads. The start is a gate rather than a
 * barrier so that nobody can wait for it forever: a thread that is not let through within
 * CONC_WAIT_US gives up (and its missing calls fail the test), so no child outlives it. */
struct conc_area {
    atomic_int ready; /* threads at the gate */
    atomic_int go;    /* 1: start; -1: give up */
    struct conc_thread th[CONC_N];
};

struct conc_arg {
    traffic_backend *b;
    const traffic_rule *r;
    struct conc_area *area;
    struct conc_thread *t;
};

static void *conc_main(void *p)
{
    struct conc_arg *c = p;
    int64_t deadline = mono_us() + CONC_WAIT_US;
    atomic_fetch_add(&c->area->ready, 1);
    while (atomic_load(&c->area->go) == 0 && mono_us() < deadline)
        sched_yield(); /* all start at once */
    if (atomic_load(&c->area->go) != 1) return NULL;
    for (int i = 0; i < CONC_CALLS; i++) {
        traffic_decision d;
        int rc = traffic_limit(c->b, "conc", c->r, 1, &d);
        c->t->calls++;
        if (rc != TRAFFIC_OK) {
            if (!c->t->failures++) c->t->first_rc = rc;
        } else if (d.allowed) {
            c->t->remaining[c->t->allowed++] = d.remaining;
        }
    }
    return NULL;
}

static void conc_child(traffic_backend *b, const traffic_rule *r, struct conc_area *area, int proc)
{
    pthread_t tid[CONC_THREADS];
    struct conc_arg args[CONC_THREADS];
    int started[CONC_THREADS] = {0};
    for (int i = 0; i < CONC_THREADS; i++) {
        args[i] = (struct conc_arg){b, r, area, &area->th[proc * CONC_THREADS + i]};
        started[i] = pthread_create(&tid[i], NULL, conc_main, &args[i]) == 0;
    }
    for (int i = 0; i < CONC_THREADS; i++)
        if (started[i]) pthread_join(tid[i], NULL);
    _exit(0);
}

static int cmp_i64(const void *x, const void *y)
{
    int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
    return (a > b) - (a < b);
}

/* _i: 0 fixed window, 1 sliding window (log), 2 token bucket. The store's clock runs: the
 * quota is exact as long as the calls take less than what the rule needs to admit one more
 * (the window; for the bucket one interval I), and the test says so when they took longer. */
START_TEST(l_concurrent)
{
    int64_t log_limit = log_limit_max() < 200 ? log_limit_max() : 200;
    const traffic_rule rules[3] = {
        {TRAFFIC_FIXED_WINDOW, 300, 60, 0},
        {TRAFFIC_SLIDING_WINDOW, log_limit, 60, 0},
        {TRAFFIC_TOKEN_BUCKET, 300, 3600, 0}, /* I = 12 s */
    };
    const traffic_rule *r = &rules[_i];
    int64_t quota = lm_most_of(r), w = to_us(r->window);
    /* how long the calls may take for the quota to be exact, and how much more passes per
     * that much time after it */
    int64_t exact_us = r->algorithm == TRAFFIC_TOKEN_BUCKET   ? (w + r->limit - 1) / r->limit
                       : r->algorithm == TRAFFIC_FIXED_WINDOW ? w - 1000 /* S rounds down to the ms */
                                                              : w;
    int64_t more_per = r->algorithm == TRAFFIC_TOKEN_BUCKET ? 1 : quota;

    traffic_backend *b = lfresh();
    struct conc_area *area = tu_shared(sizeof *area);
    pid_t pids[CONC_PROCS];
    for (int p = 0; p < CONC_PROCS; p++) {
        pids[p] = fork();
        if (pids[p] == 0) conc_child(b, r, area, p);
        if (pids[p] < 0) {
            atomic_store(&area->go, -1);
            for (int q = 0; q < p; q++)
                tu_wait(pids[q]);
            ck_abort_msg("fork: %s", strerror(errno));
        }
    }
    int64_t deadline = mono_us() + CONC_WAIT_US;
    while (atomic_load(&area->ready) < CONC_N && mono_us() < deadline)
        tu_sleep_ms(1);
    int ready = atomic_load(&area->ready);
    int64_t t_go = mono_us();
    atomic_store(&area->go, ready == CONC_N ? 1 : -1);
    for (int p = 0; p < CONC_PROCS; p++)
        ck_assert_int_eq(tu_wait(pids[p]), 0);
    int64_t took = mono_us() - t_go;
    ck_assert_msg(ready == CONC_N, "only %d of %d threads came to the start", ready, CONC_N);

    int64_t allowed = 0, *rem = malloc(sizeof(int64_t) * CONC_N * CONC_CALLS);
    ck_assert_ptr_nonnull(rem);
    for (int i = 0; i < CONC_N; i++) {
        const struct conc_thread *t = &area->th[i];
        ck_assert_msg(t->failures == 0, "thread %d: %d calls failed, the first with %d %s", i, t->failures, t->first_rc,
                      traffic_strerror(t->first_rc));
        ck_assert_int_eq(t->calls, CONC_CALLS);
        memcpy(rem + allowed, t->remaining, sizeof(int64_t) * (size_t)t->allowed);
        allowed += t->allowed;
    }
    if (took < exact_us) {
        ck_assert_msg(allowed == quota, "%s: %lld of %d calls passed, the quota is %lld",
                      traffic_algorithm_name(r->algorithm), (long long)allowed, CONC_N * CONC_CALLS, (long long)quota);
        if (r->algorithm != TRAFFIC_TOKEN_BUCKET) {
            /* one at a time, the k-th admitted call leaves quota - k: each value exactly once */
            qsort(rem, (size_t)allowed, sizeof *rem, cmp_i64);
            for (int64_t i = 0; i < allowed; i++)
                ck_assert_msg(rem[i] == i, "%s: the admitted calls' remaining, sorted, has %lld at %lld",
                              traffic_algorithm_name(r->algorithm), (long long)rem[i], (long long)i);
        }
    } else {
        int64_t bound = quota + more_per * (took / exact_us + 1);
        fprintf(stderr, "l_concurrent(%s): the calls took %lld µs, more than %lld; checking %lld <= allowed <= %lld\n",
                traffic_algorithm_name(r->algorithm), (long long)took, (long long)exact_us, (long long)quota,
                (long long)bound);
        ck_assert_msg(allowed >= quota && allowed <= bound, "%s: %lld passed, want %lld..%lld",
                      traffic_algorithm_name(r->algorithm), (long long)allowed, (long long)quota, (long long)bound);
    }
    free(rem);
    ldone(b);
}
END_TEST

/* ---- the test cases -------------------------------------------------------------------- */

void contract_limit_tcases(Suite *s, const contract_backend *cb)
{
    L = *cb;

    TCase *f = tcase_create("limit-formulas");
    tcase_add_loop_test(f, l_formulas, 0, N_ALGOS);
    tcase_add_test(f, l_denied_stores_nothing);
    suite_add_tcase(s, f);

    TCase *a = tcase_create("limit-arguments");
    tcase_add_test(a, l_bad_input);
    suite_add_tcase(s, a);

    TCase *k = tcase_create("limit-kinds");
    tcase_add_test(k, l_kind_bytes_counter);
    tcase_add_test(k, l_kind_algorithms);
    tcase_add_test(k, l_kind_get);
    tcase_add_test(k, l_kind_delete);
    tcase_add_test(k, l_kind_ttl);
    tcase_add_test(k, l_kind_clear);
    tcase_add_test(k, l_kind_expires);
    tcase_add_test(k, l_stats);
    suite_add_tcase(s, k);

    TCase *d = tcase_create("limit-differential");
    tcase_add_loop_test(d, l_differential, 0, N_ALGOS);
    suite_add_tcase(s, d);

    TCase *c = tcase_create("limit-concurrency");
    tcase_add_loop_test(c, l_concurrent, 0, 3);
    suite_add_tcase(s, c);
}
