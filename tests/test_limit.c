/*
 * test_limit.c — the rate-limit arithmetic alone, without a store: traffic_limit_check's
 * bounds, traffic_rule_parse, traffic_limit_apply's argument checks, and the promises of
 * traffic.h checked on random sequences of every algorithm (the clock going back included).
 *
 * The backends' numbers are checked against hand-written tables and against this function in
 * contract_limit.c; here the function is held to what its numbers mean. After every call:
 * remaining is how many cost-1 requests really pass next at that instant; a denied request
 * really passes at now + retry_after and not a µs before; at now + reset_after the key really
 * behaves as unused and not a µs before; a peek answers as a cost-1 request would; a denial
 * or a peek never asks to be stored. None of it needs a monotonic clock.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <traffic/backend.h>

#include "limit_model.h"
#include "testutil.h"

#define N_ALGOS 5
#define BASE    INT64_C(1000000000000)

/* ---- traffic_limit_check ------------------------------------------------------------------ */

static const struct {
    traffic_rule r;
    int ok;
} bounds[] = {
    {{TRAFFIC_FIXED_WINDOW, 1, TRAFFIC_WINDOW_MIN_S, 0}, 1},
    {{TRAFFIC_FIXED_WINDOW, 1, TRAFFIC_WINDOW_MAX_S, 0}, 1},
    {{TRAFFIC_FIXED_WINDOW, 1, 0.000999, 0}, 0},
    {{TRAFFIC_FIXED_WINDOW, 1, TRAFFIC_WINDOW_MAX_S * 1.001, 0}, 0},
    {{TRAFFIC_FIXED_WINDOW, TRAFFIC_WINDOW_LIMIT_MAX, 1, 0}, 1},
    {{TRAFFIC_FIXED_WINDOW, TRAFFIC_WINDOW_LIMIT_MAX + 1, 1, 0}, 0},
    {{TRAFFIC_FIXED_WINDOW, INT64_MAX, 1, 0}, 0},
    {{TRAFFIC_SLIDING_WINDOW_COUNTER, TRAFFIC_WINDOW_LIMIT_MAX, 1, 0}, 1},
    {{TRAFFIC_SLIDING_WINDOW_COUNTER, TRAFFIC_WINDOW_LIMIT_MAX + 1, 1, 0}, 0},
    {{TRAFFIC_SLIDING_WINDOW, TRAFFIC_SLIDING_WINDOW_LIMIT_MAX, 1, 0}, 1},
    {{TRAFFIC_SLIDING_WINDOW, TRAFFIC_SLIDING_WINDOW_LIMIT_MAX + 1, 1, 0}, 0},
    {{TRAFFIC_FIXED_WINDOW, 1, 1, 1}, 0}, /* burst on a window algorithm */
    {{TRAFFIC_SLIDING_WINDOW_COUNTER, 1, 1, 1}, 0},
    {{TRAFFIC_SLIDING_WINDOW, 1, 1, 1}, 0},
    {{TRAFFIC_TOKEN_BUCKET, 1000, 0.001, 0}, 1}, /* one per µs: the fastest */
    {{TRAFFIC_TOKEN_BUCKET, 1001, 0.001, 0}, 0},
    {{TRAFFIC_LEAKY_BUCKET, 1000, 0.001, 0}, 1},
    {{TRAFFIC_LEAKY_BUCKET, 1001, 0.001, 0}, 0},
    {{TRAFFIC_TOKEN_BUCKET, INT64_MAX, 1, 0}, 0},
    {{TRAFFIC_TOKEN_BUCKET, 1, 1e8, 22}, 1}, /* I = 1e14 µs: B I = 2.2e15 <= 2^51 */
    {{TRAFFIC_TOKEN_BUCKET, 1, 1e8, 23}, 0},
    {{TRAFFIC_LEAKY_BUCKET, 1, 1e8, 21}, 1}, /* (Q + 1) I = 2.2e15 */
    {{TRAFFIC_LEAKY_BUCKET, 1, 1e8, 22}, 0},
    {{TRAFFIC_TOKEN_BUCKET, 1, 1, -1}, 0},
    {{TRAFFIC_LEAKY_BUCKET, 1, 1, -1}, 0},
    {{TRAFFIC_TOKEN_BUCKET, 0, 1, 0}, 0},
    {{TRAFFIC_LEAKY_BUCKET, -5, 1, 0}, 0},
    {{TRAFFIC_TOKEN_BUCKET, 1, NAN, 0}, 0},
    {{TRAFFIC_TOKEN_BUCKET, 1, INFINITY, 0}, 0},
    {{TRAFFIC_TOKEN_BUCKET, 1, -INFINITY, 0}, 0},
    {{TRAFFIC_TOKEN_BUCKET, 1, 0, 0}, 0},
    {{TRAFFIC_TOKEN_BUCKET, 1, -1, 0}, 0},
    {{(traffic_algorithm)5, 1, 1, 0}, 0},
    {{(traffic_algorithm)7, 1, 1, 0}, 0},
    {{(traffic_algorithm)-1, 1, 1, 0}, 0},
};

START_TEST(p_check_bounds)
{
    char msg[256];
    for (size_t i = 0; i < sizeof bounds / sizeof bounds[0]; i++) {
        const traffic_rule *r = &bounds[i].r;
        msg[0] = '\0';
        int rc = traffic_limit_check(r, msg, sizeof msg);
        ck_assert_msg(rc == (bounds[i].ok ? TRAFFIC_OK : TRAFFIC_EINVAL), "rule %zu (%d, %lld, %g, %lld) -> %s %s", i,
                      (int)r->algorithm, (long long)r->limit, r->window, (long long)r->burst, traffic_strerror(rc),
                      msg);
        if (!bounds[i].ok) ck_assert_msg(msg[0] != '\0', "rule %zu: EINVAL without a reason", i);
        ck_assert_int_eq(traffic_limit_check(r, NULL, 0), rc); /* no message wanted */
        ck_assert_int_eq(traffic_limit_check(r, NULL, 100), rc);
        char tiny[6];
        memset(tiny, 'x', sizeof tiny);
        ck_assert_int_eq(traffic_limit_check(r, tiny, sizeof tiny), rc);
        if (!bounds[i].ok) ck_assert_msg(memchr(tiny, '\0', sizeof tiny) != NULL, "rule %zu: msg not terminated", i);
    }
    ck_assert_int_eq(traffic_limit_check(NULL, msg, sizeof msg), TRAFFIC_EINVAL);
    ck_assert_str_ne(msg, "");
}
END_TEST

/* burst + 1 (the leaky bucket's most) must not wrap around to pass the bound. */
START_TEST(p_check_burst_overflow)
{
    char msg[256] = "";
    const traffic_rule rules[] = {
        {TRAFFIC_LEAKY_BUCKET, 1, 1, INT64_MAX},
        {TRAFFIC_LEAKY_BUCKET, 1000, 0.001, INT64_MAX},
        {TRAFFIC_TOKEN_BUCKET, 1, 1, INT64_MAX},
        {TRAFFIC_LEAKY_BUCKET, 1, 1, INT64_MAX - 1},
    };
    for (size_t i = 0; i < sizeof rules / sizeof rules[0]; i++) {
        int rc = traffic_limit_check(&rules[i], msg, sizeof msg);
        ck_assert_msg(rc == TRAFFIC_EINVAL, "%s burst %lld -> %s", traffic_algorithm_name(rules[i].algorithm),
                      (long long)rules[i].burst, traffic_strerror(rc));
    }
}
END_TEST

START_TEST(p_names)
{
    static const char *names[N_ALGOS] = {"sliding_window_counter", "fixed_window", "sliding_window", "token_bucket",
                                         "leaky_bucket"};
    for (int a = 0; a < N_ALGOS; a++)
        ck_assert_str_eq(traffic_algorithm_name((traffic_algorithm)a), names[a]);
    ck_assert_ptr_null(traffic_algorithm_name((traffic_algorithm)5));
    ck_assert_ptr_null(traffic_algorithm_name((traffic_algorithm)-1));
}
END_TEST

/* ---- traffic_rule_parse ------------------------------------------------------------------- */

#define STR(x)  #x
#define XSTR(x) STR(x)

START_TEST(p_parse_good)
{
    static const struct {
        const char *text;
        traffic_rule r;
    } good[] = {
        {"token_bucket:100/60s,burst=20", {TRAFFIC_TOKEN_BUCKET, 100, 60, 20}},
        {"fixed_window:5/1m", {TRAFFIC_FIXED_WINDOW, 5, 60, 0}},
        {"10/1s", {TRAFFIC_SLIDING_WINDOW_COUNTER, 10, 1, 0}},
        {"10/30", {TRAFFIC_SLIDING_WINDOW_COUNTER, 10, 30, 0}},
        {"sliding_window_counter:1/1d", {TRAFFIC_SLIDING_WINDOW_COUNTER, 1, 86400, 0}},
        {"sliding_window:7/250ms", {TRAFFIC_SLIDING_WINDOW, 7, 0.25, 0}},
        {"leaky_bucket:3/2h", {TRAFFIC_LEAKY_BUCKET, 3, 7200, 0}},
        {"leaky_bucket:3/2h,burst=0", {TRAFFIC_LEAKY_BUCKET, 3, 7200, 0}},
        {"token_bucket:5/0.5s", {TRAFFIC_TOKEN_BUCKET, 5, 0.5, 0}},
        {"token_bucket:5/.5", {TRAFFIC_TOKEN_BUCKET, 5, 0.5, 0}},
        {"fixed_window:1/1ms", {TRAFFIC_FIXED_WINDOW, 1, 0.001, 0}},
        {"fixed_window:" XSTR(TRAFFIC_WINDOW_LIMIT_MAX) "/1s", {TRAFFIC_FIXED_WINDOW, TRAFFIC_WINDOW_LIMIT_MAX, 1, 0}},
        {"fixed_window:5/1s,burst=0", {TRAFFIC_FIXED_WINDOW, 5, 1, 0}},
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        traffic_rule r;
        char msg[256] = "";
        memset(&r, 0x55, sizeof r);
        int rc = traffic_rule_parse(good[i].text, &r, msg, sizeof msg);
        ck_assert_msg(rc == TRAFFIC_OK, "parse(\"%s\") -> %s: %s", good[i].text, traffic_strerror(rc), msg);
        ck_assert_msg(r.algorithm == good[i].r.algorithm && r.limit == good[i].r.limit &&
                          fabs(r.window - good[i].r.window) <= 1e-12 * good[i].r.window && r.burst == good[i].r.burst,
                      "parse(\"%s\") = (%d, %lld, %.17g, %lld)", good[i].text, (int)r.algorithm, (long long)r.limit,
                      r.window, (long long)r.burst);
        ck_assert_int_eq(traffic_rule_parse(good[i].text, &r, NULL, 0), TRAFFIC_OK);
    }
}
END_TEST

START_TEST(p_parse_bad)
{
    static const char *bad[] = {
        "",
        "token_bucket",
        "token_bucket:",
        "nope:1/1s",
        ":5/1s",
        "Token_Bucket:5/1s",
        "fixed_window:0/1s",
        "fixed_window:-1/1s",
        "fixed_window:+5/1s",
        "fixed_window: 5/1s",
        "fixed_window:5",
        "fixed_window:5/",
        "fixed_window:5/s",
        "fixed_window:5/1x",
        "fixed_window:5/1sec",
        "fixed_window:5/0s",
        "fixed_window:5/-1s",
        "fixed_window:5/0.5ms",
        "fixed_window:5/nan",
        "fixed_window:5/inf",
        "fixed_window:5/1e400",
        "fixed_window:5/1s ",
        "fixed_window:5/1s,",
        "fixed_window:5/1s,burst=2",
        "fixed_window:99999999/1s", /* over TRAFFIC_WINDOW_LIMIT_MAX */
        "sliding_window:10001/1s",
        "token_bucket:5/1s,burst=-1",
        "token_bucket:5/1s,burst=x",
        "token_bucket:5/1s,burst=",
        "token_bucket:5/1s,burst=2x",
        "token_bucket:5/1s,rate=3",
        "token_bucket:5/1s,burst=2,burst=3",
        "token_bucket:2000/1ms",
        "fixed_window:99999999999999999999/1s",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        traffic_rule r, before;
        char msg[256] = "";
        memset(&r, 0x55, sizeof r);
        before = r;
        int rc = traffic_rule_parse(bad[i], &r, msg, sizeof msg);
        ck_assert_msg(rc == TRAFFIC_EINVAL, "parse(\"%s\") -> %s, want EINVAL", bad[i], traffic_strerror(rc));
        ck_assert_msg(msg[0] != '\0', "parse(\"%s\"): no reason", bad[i]);
        ck_assert_msg(memcmp(&r, &before, sizeof r) == 0, "parse(\"%s\") wrote *out on failure", bad[i]);
        ck_assert_int_eq(traffic_rule_parse(bad[i], &r, NULL, 0), TRAFFIC_EINVAL);
    }
    traffic_rule r;
    ck_assert_int_eq(traffic_rule_parse(NULL, &r, NULL, 0), TRAFFIC_EINVAL);
    ck_assert_int_eq(traffic_rule_parse("10/1s", NULL, NULL, 0), TRAFFIC_EINVAL);
}
END_TEST

/* ---- traffic_limit_apply's arguments ---------------------------------------------------- */

START_TEST(p_apply_args)
{
    traffic_rule fw = {TRAFFIC_FIXED_WINDOW, 3, 1, 0}, bad = {TRAFFIC_FIXED_WINDOW, 0, 1, 0};
    traffic_limit_state st = {0}, before;
    traffic_decision d;
    ck_assert_int_eq(traffic_limit_apply(&fw, &st, BASE, 1, &d), 1);
    before = st;
    ck_assert_int_eq(traffic_limit_apply(NULL, &st, BASE, 1, &d), TRAFFIC_EINVAL);
    ck_assert_int_eq(traffic_limit_apply(&bad, &st, BASE, 1, &d), TRAFFIC_EINVAL);
    ck_assert_int_eq(traffic_limit_apply(&fw, NULL, BASE, 1, &d), TRAFFIC_EINVAL);
    ck_assert_int_eq(traffic_limit_apply(&fw, &st, BASE, 1, NULL), TRAFFIC_EINVAL);
    ck_assert_int_eq(traffic_limit_apply(&fw, &st, BASE, -1, &d), TRAFFIC_EINVAL);
    ck_assert_int_eq(traffic_limit_apply(&fw, &st, -1, 1, &d), TRAFFIC_EINVAL);
    ck_assert(memcmp(&st, &before, sizeof st) == 0);

    /* the log needs room for limit entries */
    traffic_rule sw = {TRAFFIC_SLIDING_WINDOW, 4, 1, 0};
    traffic_limit_entry log[4] = {{0}};
    traffic_limit_state ls = {.log = NULL, .log_cap = 0};
    ck_assert_int_eq(traffic_limit_apply(&sw, &ls, BASE, 1, &d), TRAFFIC_EINVAL);
    ls.log = log;
    ls.log_cap = 3;
    ck_assert_int_eq(traffic_limit_apply(&sw, &ls, BASE, 1, &d), TRAFFIC_EINVAL);
    ck_assert_uint_eq(ls.nlog, 0);
    ls.log_cap = 4;
    ck_assert_int_eq(traffic_limit_apply(&sw, &ls, BASE, 1, &d), 1);
    ck_assert_uint_eq(ls.nlog, 1);
    ls.nlog = 5; /* more entries than room: a corrupt state */
    ck_assert_int_eq(traffic_limit_apply(&sw, &ls, BASE, 1, &d), TRAFFIC_EINVAL);
}
END_TEST

/* ---- what the numbers mean -------------------------------------------------------------- */

/* ck_assert_msg for the hot loops below: a passing ck_assert records its line through Check's
 * pipe, a system call per check, which would be most of this test's time. */
#define REQUIRE(cond, ...)                                                                                             \
    do {                                                                                                               \
        if (!(cond)) ck_abort_msg(__VA_ARGS__);                                                                        \
    } while (0)

#define LOG_CAP 64

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

/* The decision of `cost` at `now` on a copy of *p (which is left alone). */
static traffic_decision at(const traffic_rule *r, const lm_pstate *p, int64_t now, int64_t cost, int *rc)
{
    static lm_pstate tmp;
    traffic_decision d;
    int x = lm_at(r, p, &tmp, now, cost, &d);
    if (x < 0) ck_abort_msg("traffic_limit_apply -> %d", x);
    if (rc) *rc = x;
    return d;
}

/* How many cost-1 requests in a row pass at now from *p (stops counting past `cap`). */
static int64_t passes_in_a_row(const traffic_rule *r, const lm_pstate *p, int64_t now, int64_t cap)
{
    static lm_pstate tmp;
    int64_t n = lm_passes_in_a_row(r, p, &tmp, now, cap);
    if (n < 0) ck_abort_msg("traffic_limit_apply refused cost 1");
    return n;
}

static traffic_rule random_rule(uint64_t *s, traffic_algorithm a)
{
    static const double windows[] = {0.001, 0.0025, 0.25, 1, 7.5, 10, 60, 3600, 1e8};
    static const int64_t limits[] = {1, 2, 3, 5, 7, 10, 100, 1000, TRAFFIC_WINDOW_LIMIT_MAX};
    static const int64_t bursts[] = {0, 0, 1, 2, 5, 40};
    for (;;) {
        traffic_rule r = {a, limits[below(s, 9)], windows[below(s, 9)], 0};
        if (a == TRAFFIC_SLIDING_WINDOW) r.limit = 1 + below(s, LOG_CAP);
        if (lm_is_bucket(a)) r.burst = bursts[below(s, 6)];
        if (traffic_limit_check(&r, NULL, 0) == TRAFFIC_OK) return r;
    }
}

/* The instants stay below what the memory backend takes (2^40 ms), far within the 2^53 µs of
 * traffic_limit_at, so that every time a bucket computes is exact in a double. */
#define TIME_MAX (INT64_C(1) << 50)

/* Forward by a little or to the last decision's edges, far ahead, and back by up to 3 W. */
static int64_t clamp_time(int64_t t)
{
    return t < 0 ? 0 : t > TIME_MAX ? TIME_MAX : t;
}

static int64_t random_time(uint64_t *s, int64_t t, const traffic_decision *last, int64_t w, int64_t unit)
{
    int64_t p = below(s, 100), retry = lm_to_us(last->retry_after), reset = lm_to_us(last->reset_after);
    if (p < 25) return t;
    if (p < 45) return clamp_time(t + below(s, unit + 1));
    if (p < 60) return clamp_time(t + below(s, w + 1));
    if (p < 70 && retry > 0) return clamp_time(t + retry - 1 + below(s, 3));
    if (p < 80 && reset > 0) return clamp_time(t + reset - 1 + below(s, 3));
    if (p < 85) return clamp_time(t + w * (1 + below(s, 5)));
    if (p < 97) return clamp_time(t - below(s, 3 * w + 1));
    return below(s, 1000); /* far back, near 0 */
}

#define CTX_FMT "%s %lld/%.9gs burst %lld, seq %d step %d, now %lld, cost %lld: "
#define CTX_ARGS                                                                                                       \
    traffic_algorithm_name(r.algorithm), (long long)r.limit, r.window, (long long)r.burst, seq, step, (long long)now,  \
        (long long)cost

/* The sliding window counter's estimate is a double (traffic.h): its remaining and retry_after
 * come from formulas whose rounding can differ from the estimate's by one request or a µs or
 * two (see p_swc_exact, which holds them to the letter); here they get that much room. */
#define SWC_RETRY_SLACK_US 2

/* _i: the algorithm. */
START_TEST(p_apply_meaning)
{
    traffic_algorithm a = (traffic_algorithm)_i;
    int swc = a == TRAFFIC_SLIDING_WINDOW_COUNTER;
    uint64_t seed = UINT64_C(0xfeed0000) + (uint64_t)_i;
    static lm_pstate stored, work, zero;
    lm_pzero(&zero);
    for (int seq = 0; seq < 2000; seq++) {
        traffic_rule r = random_rule(&seed, a);
        int64_t w = lm_to_us(r.window), most = lm_most_of(&r);
        int64_t unit = lm_is_bucket(a) ? (w + r.limit - 1) / r.limit : w / r.limit;
        int64_t now = BASE + below(&seed, 2 * w);
        traffic_decision d = {0};
        lm_pzero(&stored);
        for (int step = 0; step < 40; step++) {
            if (step) now = random_time(&seed, now, &d, w, unit);
            int64_t p = below(&seed, 100);
            int64_t cost = p < 15 ? 0 : p < 60 ? 1 : p < 90 ? 1 + below(&seed, most) : most + below(&seed, 3);
            int64_t c = cost ? cost : 1;
            lm_pcopy(&work, &stored);
            int rc = traffic_limit_apply(&r, &work.st, now, cost, &d);

            /* sane numbers */
            REQUIRE(rc == (d.allowed && cost > 0), CTX_FMT "returned %d for " LM_DEC_FMT, CTX_ARGS, rc, LM_DEC_ARGS(d));
            REQUIRE(d.limit == most, CTX_FMT "limit %lld, want %lld", CTX_ARGS, (long long)d.limit, (long long)most);
            REQUIRE(d.remaining >= 0 && d.remaining <= most, CTX_FMT LM_DEC_FMT, CTX_ARGS, LM_DEC_ARGS(d));
            REQUIRE(d.reset_after >= 0 && lm_whole_us(d.reset_after), CTX_FMT LM_DEC_FMT, CTX_ARGS, LM_DEC_ARGS(d));
            REQUIRE(d.delay >= 0 && lm_whole_us(d.delay) && (d.delay == 0 || (a == TRAFFIC_LEAKY_BUCKET && d.allowed)),
                    CTX_FMT LM_DEC_FMT, CTX_ARGS, LM_DEC_ARGS(d));
            if (d.allowed)
                REQUIRE(d.retry_after == 0 && c <= most, CTX_FMT LM_DEC_FMT, CTX_ARGS, LM_DEC_ARGS(d));
            else if (c > most)
                REQUIRE(d.retry_after == -1, CTX_FMT LM_DEC_FMT, CTX_ARGS, LM_DEC_ARGS(d));
            else
                REQUIRE(d.retry_after > 0 && lm_whole_us(d.retry_after), CTX_FMT LM_DEC_FMT, CTX_ARGS, LM_DEC_ARGS(d));
            if (rc == 1) lm_pcopy(&stored, &work); /* what a store keeps */

            /* a peek answers as a request of cost 1 would (from the same state, at the same now) */
            if (cost == 0) {
                traffic_decision one = at(&r, &stored, now, 1, NULL);
                REQUIRE(one.allowed == d.allowed && one.retry_after == d.retry_after && one.delay == d.delay,
                        CTX_FMT "peek " LM_DEC_FMT ", cost 1 " LM_DEC_FMT, CTX_ARGS, LM_DEC_ARGS(d), LM_DEC_ARGS(one));
            }
            /* remaining: that many cost-1 requests pass now, and no more */
            if (d.remaining < 100) {
                int64_t n = passes_in_a_row(&r, &stored, now, 100);
                REQUIRE(n == d.remaining || (swc && llabs(n - d.remaining) <= 1),
                        CTX_FMT "remaining %lld, but %lld pass in a row", CTX_ARGS, (long long)d.remaining,
                        (long long)n);
            } else {
                traffic_decision all = at(&r, &stored, now, d.remaining, NULL);
                REQUIRE(all.allowed && (all.remaining == 0 || (swc && all.remaining == 1)),
                        CTX_FMT "remaining %lld, but that cost gets " LM_DEC_FMT, CTX_ARGS, (long long)d.remaining,
                        LM_DEC_ARGS(all));
            }
            /* retry_after: the same request passes then, and not a µs before */
            if (!d.allowed && d.retry_after > 0) {
                int64_t t = now + lm_to_us(d.retry_after);
                traffic_decision then = at(&r, &stored, t, c, NULL), before = at(&r, &stored, t - 1, c, NULL);
                for (int64_t k = 1; swc && !then.allowed && k <= SWC_RETRY_SLACK_US; k++)
                    then = at(&r, &stored, t + k, c, NULL);
                if (swc) before.allowed = 0;
                REQUIRE(then.allowed && !before.allowed,
                        CTX_FMT "retry %.6f, but then " LM_DEC_FMT " and a µs before " LM_DEC_FMT, CTX_ARGS, d.retry_after,
                        LM_DEC_ARGS(then), LM_DEC_ARGS(before));
            }
            /* reset_after: the key behaves as unused then, and not a µs before */
            int64_t t = now + lm_to_us(d.reset_after), k = 1 + below(&seed, most);
            traffic_decision s1 = at(&r, &stored, t, k, NULL), z1 = at(&r, &zero, t, k, NULL);
            REQUIRE(lm_same_decision(&s1, &z1),
                    CTX_FMT "reset %.6f, but then cost %lld gets " LM_DEC_FMT " where an unused key gets " LM_DEC_FMT,
                    CTX_ARGS, d.reset_after, (long long)k, LM_DEC_ARGS(s1), LM_DEC_ARGS(z1));
            if (d.reset_after > 0) {
                traffic_decision s0 = at(&r, &stored, t - 1, 0, NULL), z0 = at(&r, &zero, t - 1, 0, NULL);
                REQUIRE(!lm_same_decision(&s0, &z0), CTX_FMT "reset %.6f, but a µs before the key looks unused", CTX_ARGS,
                        d.reset_after);
            }
        }
    }
}
END_TEST

/* Cases where the sliding window counter's remaining or retry_after disagree with its own
 * estimate (found by p_apply_meaning's random sequences): traffic.h defines remaining as the
 * cost-1 requests that pass and retry_after as the first instant at which the request passes,
 * with est computed in doubles, and these hold it to that. */
START_TEST(p_swc_exact)
{
    static const struct {
        int64_t limit;
        double window;
        int64_t i, p, c; /* the state: window index, previous and current counts */
        int64_t now, cost;
    } cases[] = {
        /* P's share 75 x 0.68 is 51.000000000000007: remaining floor(100 - 51.000..07) = 48,
         * but 49 requests of cost 1 pass */
        {100, 0.0025, 400000000, 75, 0, BASE + 800, 0},
        /* est' = 32 + 1e-14 rounds to a tie: remaining 68, but 67 pass */
        {100, 1e8, 3, 1, 32, 4 * INT64_C(100000000000000) - 1, 0},
        /* the retry formula in doubles loses a fraction of a µs, and ceil lands a µs early:
         * the request is still denied then */
        {1048575, 1e8, 3, 762493, 868539, INT64_C(325228523827367), 203305},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        traffic_rule r = {TRAFFIC_SLIDING_WINDOW_COUNTER, cases[k].limit, cases[k].window, 0};
        static lm_pstate st;
        lm_pzero(&st);
        st.st.a = cases[k].i;
        st.st.b = cases[k].p;
        st.st.c = cases[k].c;
        int64_t now = cases[k].now, c = cases[k].cost ? cases[k].cost : 1;
        traffic_decision d = at(&r, &st, now, cases[k].cost, NULL);
        int64_t n = passes_in_a_row(&r, &st, now, cases[k].limit);
        ck_assert_msg(n == d.remaining, "case %zu: remaining %lld, but %lld requests of cost 1 pass", k,
                      (long long)d.remaining, (long long)n);
        if (!d.allowed) {
            int64_t t = now + lm_to_us(d.retry_after);
            traffic_decision then = at(&r, &st, t, c, NULL), before = at(&r, &st, t - 1, c, NULL);
            ck_assert_msg(then.allowed && !before.allowed,
                          "case %zu: retry %.6f, but then " LM_DEC_FMT " and a µs before " LM_DEC_FMT, k, d.retry_after,
                          LM_DEC_ARGS(then), LM_DEC_ARGS(before));
        }
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("limit");
    TCase *c = tcase_create("check");
    tcase_add_test(c, p_check_bounds);
    tcase_add_test(c, p_check_burst_overflow);
    tcase_add_test(c, p_names);
    suite_add_tcase(s, c);
    TCase *p = tcase_create("parse");
    tcase_add_test(p, p_parse_good);
    tcase_add_test(p, p_parse_bad);
    suite_add_tcase(s, p);
    TCase *a = tcase_create("apply");
    tcase_add_test(a, p_apply_args);
    tcase_add_loop_test(a, p_apply_meaning, 0, N_ALGOS);
    tcase_add_test(a, p_swc_exact);
    suite_add_tcase(s, a);
    return tu_run(s);
}
