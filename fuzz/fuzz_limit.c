/*
 * fuzz_limit.c — traffic_rule_parse and traffic_limit_apply, the rate-limit arithmetic every
 * backend decides with.
 *
 * The first byte picks one of three games:
 *   0  text: the rest is a rule for traffic_rule_parse; one it accepts must pass
 *      traffic_limit_check and then play game 1's sequence;
 *   1  meaning: a rule from the input's numbers (refused by traffic_limit_check → apply must
 *      refuse it too) and up to FUZZ_STEPS decisions from the unused state, at times that move
 *      forward, jump, or go back (0 <= now < 2^52, what traffic_limit_at takes), with costs
 *      around the rule's size. Each decision must mean what traffic.h says, checked as
 *      tests/test_limit.c's p_apply_meaning checks it: sane numbers, a peek answers as cost 1,
 *      `remaining` cost-1 requests pass and no more, the request passes at retry_after and not
 *      a µs before, the key acts unused at reset_after and not a µs before;
 *   2  damage: any rule, any state (a, b, c and a log of any entries, as a damaged store could
 *      hand over), any now and cost: apply returns 0, 1 or TRAFFIC_EINVAL, with no undefined
 *      behaviour (the fuzz build runs UBSan) and finite numbers.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <traffic/backend.h>

#include "fuzz.h"
#include "../tests/limit_model.h"

#define FUZZ_STEPS 24
#define REMAINING_COUNTED 2048 /* remaining figures checked one request at a time */
#define TIME_END   (INT64_C(1) << 52) /* traffic_limit_at takes 0 <= now < 2^52 */

static lm_pstate stored, work, tmp, zero;

void fuzz_limit_init(void)
{
}

#define CTX_FMT "%s %lld/%.17gs burst %lld, step %d, now %lld, cost %lld: "
#define CTX_ARGS                                                                                                       \
    traffic_algorithm_name(r->algorithm), (long long)r->limit, r->window, (long long)r->burst, step, (long long)now,   \
        (long long)cost
#define REQUIRE(cond, ...)                                                                                             \
    do {                                                                                                               \
        if (!(cond)) fuzz_fail(__VA_ARGS__);                                                                           \
    } while (0)

/* The decision of cost at now on a copy of *p (left alone). */
static traffic_decision at(const traffic_rule *r, const lm_pstate *p, int64_t now, int64_t cost)
{
    traffic_decision d;
    int x = lm_at(r, p, &tmp, now, cost, &d);
    if (x < 0) fuzz_fail("traffic_limit_apply -> %d on a state it made (now %lld, cost %lld)", x, (long long)now,
                         (long long)cost);
    return d;
}

static int64_t passes_in_a_row(const traffic_rule *r, const lm_pstate *p, int64_t now, int64_t cap)
{
    int64_t n = lm_passes_in_a_row(r, p, &tmp, now, cap);
    if (n < 0) fuzz_fail("traffic_limit_apply refused cost 1");
    return n;
}

/* A rule's window: often a whole number of ms or s, sometimes any double. */
static double fuzz_window(fuzz_in *in)
{
    uint8_t sel = fuzz_u8(in);
    uint64_t v = fuzz_uint(in, 4);
    switch (sel % 4) {
    case 0: return (double)(v % 100000 + 1) / 1000.0; /* 1 ms .. 100 s in ms */
    case 1: return (double)(v % 100000001);            /* whole seconds up to the bound */
    case 2: return (double)v / 1e6;                     /* any µs count up to ~71 min */
    default: {
        double d;
        uint64_t bits = v | fuzz_uint(in, 4) << 32;
        memcpy(&d, &bits, sizeof d);
        return d;
    }
    }
}

static void fuzz_rule(fuzz_in *in, traffic_rule *r)
{
    uint8_t a = fuzz_u8(in);
    r->algorithm = (traffic_algorithm)(a < 250 ? a % 5 : (int)(int8_t)a);
    uint8_t sel = fuzz_u8(in);
    r->limit = sel < 128 ? 1 + (int64_t)(fuzz_uint(in, 2) % (sel < 64 ? 64 : 10000)) : fuzz_i64(in);
    r->window = fuzz_window(in);
    sel = fuzz_u8(in);
    r->burst = !lm_is_bucket(r->algorithm) && sel < 200 ? 0 : sel < 128 ? (int64_t)fuzz_uint(in, 2) % 100 : fuzz_i64(in);
}

/* The next instant: stay, step forward, jump to the last decision's edges, far ahead, or back. */
static int64_t next_time(fuzz_in *in, int64_t now, const traffic_decision *d, int64_t w)
{
    uint8_t sel = fuzz_u8(in);
    int64_t t = now, retry = lm_to_us(d->retry_after), reset = lm_to_us(d->reset_after);
    int64_t x = (int64_t)fuzz_uint(in, 3);
    switch (sel % 8) {
    case 0: break;
    case 1: t = now + x % (w + 1); break;
    case 2: t = retry > 0 ? now + retry - 1 + x % 3 : now + x; break;
    case 3: t = reset > 0 ? now + reset - 1 + x % 3 : now + x; break;
    case 4: t = now + w * (1 + x % 5); break;
    case 5: t = now - x % (3 * w + 1); break;
    case 6: t = (int64_t)fuzz_uint(in, 7); break;
    default: t = now + x; break;
    }
    return t < 0 ? 0 : t >= TIME_END ? TIME_END - 1 : t;
}

static void check_decision(const traffic_rule *r, int step, int64_t now, int64_t cost, int rc,
                           const traffic_decision *dp)
{
    traffic_decision d = *dp;
    traffic_algorithm a = r->algorithm;
    int64_t most = lm_most_of(r), c = cost ? cost : 1;
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
}

/* What the decision d promises about `stored` (the state after it), tried on copies. */
static void check_meaning(const traffic_rule *r, int step, int64_t now, int64_t cost, const traffic_decision *dp)
{
    traffic_decision d = *dp;
    int swc = r->algorithm == TRAFFIC_SLIDING_WINDOW_COUNTER;
    int64_t most = lm_most_of(r), c = cost ? cost : 1;
    if (cost == 0) {
        traffic_decision one = at(r, &stored, now, 1);
        REQUIRE(one.allowed == d.allowed && one.retry_after == d.retry_after && one.delay == d.delay,
                CTX_FMT "peek " LM_DEC_FMT ", cost 1 " LM_DEC_FMT, CTX_ARGS, LM_DEC_ARGS(d), LM_DEC_ARGS(one));
    }
    /* remaining: that many cost-1 requests pass now, and no more. Counted one by one up to
     * REMAINING_COUNTED; beyond, one request of that cost must pass instead, which for the
     * sliding window counter is not the same sum in doubles (P * weight + C + 1 + 1 ... against
     * P * weight + cost: a sub-ulp weight rounds differently), so it is not asked there. */
    if (d.remaining <= REMAINING_COUNTED) {
        int64_t n = passes_in_a_row(r, &stored, now, REMAINING_COUNTED + 1);
        REQUIRE(n == d.remaining || (swc && llabs(n - d.remaining) <= 1),
                CTX_FMT "remaining %lld, but %lld pass in a row", CTX_ARGS, (long long)d.remaining, (long long)n);
    } else if (!swc) {
        traffic_decision all = at(r, &stored, now, d.remaining);
        REQUIRE(all.allowed && all.remaining == 0, CTX_FMT "remaining %lld, but that cost gets " LM_DEC_FMT, CTX_ARGS,
                (long long)d.remaining, LM_DEC_ARGS(all));
    }
    if (!d.allowed && d.retry_after > 0 && now + lm_to_us(d.retry_after) + 2 < TIME_END) {
        int64_t t = now + lm_to_us(d.retry_after);
        traffic_decision then = at(r, &stored, t, c), before = at(r, &stored, t - 1, c);
        for (int64_t k = 1; swc && !then.allowed && k <= 2; k++)
            then = at(r, &stored, t + k, c);
        if (swc) before.allowed = 0;
        REQUIRE(then.allowed && !before.allowed,
                CTX_FMT "retry %.6f, but then " LM_DEC_FMT " and a µs before " LM_DEC_FMT, CTX_ARGS, d.retry_after,
                LM_DEC_ARGS(then), LM_DEC_ARGS(before));
    }
    int64_t t = now + lm_to_us(d.reset_after);
    if (t >= TIME_END) return;
    for (int64_t k = 1; k <= most && k <= 3; k++) {
        int64_t kk = k == 3 ? most : k;
        traffic_decision s1 = at(r, &stored, t, kk), z1 = at(r, &zero, t, kk);
        REQUIRE(lm_same_decision(&s1, &z1),
                CTX_FMT "reset %.6f, but then cost %lld gets " LM_DEC_FMT " where an unused key gets " LM_DEC_FMT, CTX_ARGS,
                d.reset_after, (long long)kk, LM_DEC_ARGS(s1), LM_DEC_ARGS(z1));
    }
    if (d.reset_after > 0) {
        traffic_decision s0 = at(r, &stored, t - 1, 0), z0 = at(r, &zero, t - 1, 0);
        REQUIRE(!lm_same_decision(&s0, &z0), CTX_FMT "reset %.6f, but a µs before the key looks unused", CTX_ARGS,
                d.reset_after);
    }
}

/* Game 1 on a rule: decisions from the unused state. */
static void play(const traffic_rule *r, fuzz_in *in)
{
    lm_pzero(&stored);
    lm_pzero(&zero);
    lm_pzero(&work);
    if (traffic_limit_check(r, NULL, 0) != TRAFFIC_OK) {
        traffic_decision d;
        int rc = traffic_limit_apply(r, &work.st, 0, 1, &d);
        if (rc != TRAFFIC_EINVAL) fuzz_fail("apply took a rule that check refused: %d", rc);
        return;
    }
    if (r->algorithm == TRAFFIC_SLIDING_WINDOW && r->limit > TRAFFIC_SLIDING_WINDOW_LIMIT_MAX)
        fuzz_fail("a log rule over the bound passed");
    int64_t w = (int64_t)(r->window * 1e6 + 0.5), most = lm_most_of(r);
    int64_t now = (int64_t)fuzz_uint(in, 6);
    traffic_decision d = {0};
    for (int step = 0; step < FUZZ_STEPS && in->n; step++) {
        if (step) now = next_time(in, now, &d, w);
        uint8_t sel = fuzz_u8(in);
        int64_t cost = sel < 40 ? 0 : sel < 140 ? 1 : sel < 220 ? 1 + (int64_t)(fuzz_uint(in, 3) % (uint64_t)most)
                       : sel < 250                                 ? most + (int64_t)(fuzz_u8(in) % 3)
                                   : llabs(fuzz_i64(in) / 2);
        lm_pcopy(&work, &stored);
        int rc = traffic_limit_apply(r, &work.st, now, cost, &d);
        check_decision(r, step, now, cost, rc, &d);
        if (rc == 1) lm_pcopy(&stored, &work); /* what a store keeps */
        check_meaning(r, step, now, cost, &d);
    }
}

/* Game 2: anything a damaged store could hold. */
static void damage(fuzz_in *in)
{
    traffic_rule r;
    fuzz_rule(in, &r);
    lm_pzero(&work);
    work.st.a = fuzz_i64(in);
    work.st.b = fuzz_i64(in);
    work.st.c = fuzz_i64(in);
    size_t n = fuzz_u8(in);
    if (n > 200) n = (size_t)fuzz_uint(in, 2) % (LM_LOG_CAP + 1);
    for (size_t i = 0; i < n; i++) {
        uint8_t sel = fuzz_u8(in);
        work.log[i].t_us = sel & 1 ? fuzz_i64(in) : (int64_t)fuzz_uint(in, 6);
        work.log[i].n = sel & 2 ? fuzz_i64(in) : (int64_t)(fuzz_u8(in) % 8);
    }
    work.st.nlog = n;
    uint8_t sel = fuzz_u8(in);
    if (sel & 1) work.st.log_cap = (size_t)fuzz_uint(in, 2) % (LM_LOG_CAP + 1);
    if (work.st.log_cap < work.st.nlog) work.st.log_cap = work.st.nlog; /* the array's true room: never past it */
    int64_t now = sel & 2 ? fuzz_i64(in) : (int64_t)fuzz_uint(in, 6);
    int64_t cost = sel & 4 ? fuzz_i64(in) : (int64_t)fuzz_u8(in);
    traffic_decision d;
    int rc = traffic_limit_apply(&r, &work.st, now, cost, &d);
    if (rc != 0 && rc != 1 && rc != TRAFFIC_EINVAL) fuzz_fail("traffic_limit_apply returned %d", rc);
    if (rc >= 0 && (!isfinite(d.reset_after) || !isfinite(d.retry_after) || !isfinite(d.delay)))
        fuzz_fail("a decision with a non-finite figure: " LM_DEC_FMT, LM_DEC_ARGS(d));
    if (work.st.nlog > work.st.log_cap) fuzz_fail("the log grew past its room");
}

int fuzz_limit_one(const uint8_t *data, size_t size)
{
    fuzz_in in = {data, size};
    uint8_t game = fuzz_u8(&in) % 3;
    if (game == 0) {
        char text[512], msg[256] = "";
        size_t n = fuzz_bytes(&in, text, sizeof text - 1);
        text[n] = '\0';
        traffic_rule r = {.algorithm = (traffic_algorithm)7, .limit = -5};
        int rc = traffic_rule_parse(text, &r, msg, sizeof msg);
        if (rc == TRAFFIC_OK) {
            if (traffic_limit_check(&r, NULL, 0) != TRAFFIC_OK) fuzz_fail("parsed \"%s\" but check refuses it", text);
            fuzz_in none = {(const uint8_t *)"\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a", 10};
            play(&r, &none);
        } else if (rc != TRAFFIC_EINVAL || !msg[0]) {
            fuzz_fail("traffic_rule_parse(\"%s\") returned %d with message \"%s\"", text, rc, msg);
        }
    } else if (game == 1) {
        traffic_rule r;
        fuzz_rule(&in, &r);
        play(&r, &in);
    } else {
        damage(&in);
    }
    return 0;
}
