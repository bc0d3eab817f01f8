/*
 * limit_model.h — what the checks of traffic_limit_apply share: tests/test_limit.c (random
 * sequences), tests/contract_limit.c (every backend against the function) and
 * fuzz/fuzz_limit.c (the same promises under a fuzzer). Header-only and free of the check
 * framework, so that the fuzz build takes it too; each includer reports failures its own way.
 */
#ifndef TRAFFIC_LIMIT_MODEL_H
#define TRAFFIC_LIMIT_MODEL_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <traffic/backend.h>

static inline int lm_is_bucket(traffic_algorithm a)
{
    return a == TRAFFIC_TOKEN_BUCKET || a == TRAFFIC_LEAKY_BUCKET;
}

/* decision.limit: L for the windows, B for the token bucket, Q + 1 for the leaky bucket. */
static inline int64_t lm_most_of(const traffic_rule *r)
{
    int64_t cap = r->burst ? r->burst : r->limit;
    return r->algorithm == TRAFFIC_LEAKY_BUCKET ? cap + 1 : lm_is_bucket(r->algorithm) ? cap : r->limit;
}

static inline int lm_same_decision(const traffic_decision *x, const traffic_decision *y)
{
    return x->allowed == y->allowed && x->limit == y->limit && x->remaining == y->remaining &&
           x->reset_after == y->reset_after && x->retry_after == y->retry_after && x->delay == y->delay;
}

#define LM_DEC_FMT "{allowed %d, limit %lld, remaining %lld, reset %.9f, retry %.9f, delay %.9f}"
#define LM_DEC_ARGS(d)                                                                                                 \
    (d).allowed, (long long)(d).limit, (long long)(d).remaining, (d).reset_after, (d).retry_after, (d).delay

/* The whole µs that a decision's seconds were divided from: s * 1e6 rounds a second time, so
 * far from 0 the nearest integer can be one off. -1 if s is no whole number of µs (or not a
 * number of a size a decision gives). */
static inline int64_t lm_to_us(double s)
{
    if (!(fabs(s) < 1e12)) return -1;
    int64_t us = (int64_t)llround(s * 1e6);
    for (int64_t k = us - 1; k <= us + 1; k++)
        if ((double)k / 1e6 == s) return k;
    return -1;
}

static inline int lm_whole_us(double s)
{
    return s == 0 || lm_to_us(s) > 0;
}

/* A state with a log array of its own, so that copies do not share entries. LM_LOG_CAP may
 * be defined before the include; the default holds any sliding_window limit. */
#ifndef LM_LOG_CAP
#define LM_LOG_CAP TRAFFIC_SLIDING_WINDOW_LIMIT_MAX
#endif
typedef struct lm_pstate {
    traffic_limit_state st;
    traffic_limit_entry log[LM_LOG_CAP];
} lm_pstate;

static inline void lm_pcopy(lm_pstate *dst, const lm_pstate *src)
{
    dst->st = src->st;
    dst->st.log = dst->log;
    dst->st.log_cap = LM_LOG_CAP;
    memcpy(dst->log, src->log, src->st.nlog * sizeof *dst->log);
}

static inline void lm_pzero(lm_pstate *p)
{
    memset(&p->st, 0, sizeof p->st);
    p->st.log = p->log;
    p->st.log_cap = LM_LOG_CAP;
}

/* The decision of cost at now on a copy of *p in *scratch (*p is left alone): apply's result
 * (0, 1, or negative: refused), the decision in *d. */
static inline int lm_at(const traffic_rule *r, const lm_pstate *p, lm_pstate *scratch, int64_t now, int64_t cost,
                        traffic_decision *d)
{
    lm_pcopy(scratch, p);
    return traffic_limit_apply(r, &scratch->st, now, cost, d);
}

/* How many cost-1 requests in a row pass at now from *p (on a copy in *scratch), counting up
 * to cap + 1 at the most; -1 if apply refused one. */
static inline int64_t lm_passes_in_a_row(const traffic_rule *r, const lm_pstate *p, lm_pstate *scratch, int64_t now,
                                         int64_t cap)
{
    lm_pcopy(scratch, p);
    int64_t n = 0;
    traffic_decision d;
    while (n <= cap) {
        if (traffic_limit_apply(r, &scratch->st, now, 1, &d) < 0) return -1;
        if (!d.allowed) break;
        n++;
    }
    return n;
}

#endif
