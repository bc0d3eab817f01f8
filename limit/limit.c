/*
 * limit.c — the five algorithms as pure functions of (state, now, rule, cost).
 *
 * The formulas are written in traffic.h ("Rate limits"); this file is their one
 * implementation. Everything is integer microseconds except the sliding window counter's
 * estimate, which is IEEE double arithmetic in a fixed order (built with -ffp-contract=off so
 * that no compiler fuses a multiply-add): backends/redis_limit.lua-style scripts repeat the same
 * operations on Lua's doubles and get bit-identical results. Every integer that a script also
 * computes stays below 2^53, where Lua's doubles are exact: the rule bounds of traffic.h see
 * to it (now below 2^52 µs and B I at most 2^51: a bucket's T, at most the latest now + B I,
 * plus cost I stays below 2^53).
 */
#include "limit.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const algo_names[] = {"sliding_window_counter", "fixed_window", "sliding_window", "token_bucket",
                                         "leaky_bucket"};
#define N_ALGOS 5

const char *limit_algo_name(int algo)
{
    return algo >= 0 && algo < N_ALGOS ? algo_names[algo] : NULL;
}

const char *traffic_algorithm_name(traffic_algorithm a)
{
    return limit_algo_name((int)a);
}

int limit_algo_parse(const char *name, size_t len)
{
    for (int i = 0; i < N_ALGOS; i++)
        if (strlen(algo_names[i]) == len && memcmp(algo_names[i], name, len) == 0) return i;
    return -1;
}

int64_t limit_window_us(double window)
{
    /* Half up: windows are positive and below 2^52 µs, where adding 0.5 is exact enough
     * (llround's half away from zero, without its library call). */
    return (int64_t)(window * 1e6 + 0.5);
}

static int is_bucket(traffic_algorithm a)
{
    return a == TRAFFIC_TOKEN_BUCKET || a == TRAFFIC_LEAKY_BUCKET;
}

static int bad(char *msg, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int bad(char *msg, size_t len, const char *fmt, ...)
{
    if (msg && len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, len, fmt, ap);
        va_end(ap);
    }
    return TRAFFIC_EINVAL;
}

int traffic_limit_check(const traffic_rule *r, char *msg, size_t len)
{
    if (!r) return bad(msg, len, "rule is NULL");
    if ((int)r->algorithm < 0 || (int)r->algorithm >= N_ALGOS)
        return bad(msg, len, "unknown algorithm %d (want 0..4, TRAFFIC_SLIDING_WINDOW_COUNTER..TRAFFIC_LEAKY_BUCKET)",
                   (int)r->algorithm);
    const char *name = algo_names[r->algorithm];
    if (r->limit < 1) return bad(msg, len, "%s: limit %lld is not >= 1", name, (long long)r->limit);
    if (isnan(r->window) || isinf(r->window) || r->window < TRAFFIC_WINDOW_MIN_S || r->window > TRAFFIC_WINDOW_MAX_S)
        return bad(msg, len, "%s: window %g s is not a number of seconds in [%g, %g]", name, r->window,
                   TRAFFIC_WINDOW_MIN_S, TRAFFIC_WINDOW_MAX_S);
    if (r->burst < 0) return bad(msg, len, "%s: burst %lld is negative", name, (long long)r->burst);
    int64_t w = limit_window_us(r->window);
    switch (r->algorithm) {
    case TRAFFIC_FIXED_WINDOW:
    case TRAFFIC_SLIDING_WINDOW_COUNTER:
    case TRAFFIC_SLIDING_WINDOW: {
        if (r->burst != 0)
            return bad(msg, len, "%s: burst %lld applies only to token_bucket and leaky_bucket (give 0)", name,
                       (long long)r->burst);
        int64_t max = r->algorithm == TRAFFIC_SLIDING_WINDOW ? TRAFFIC_SLIDING_WINDOW_LIMIT_MAX
                                                             : TRAFFIC_WINDOW_LIMIT_MAX;
        if (r->limit > max)
            return bad(msg, len, "%s: limit %lld is over the largest this algorithm keeps exactly, %lld", name,
                       (long long)r->limit, (long long)max);
        return TRAFFIC_OK;
    }
    default: {
        if (r->limit > w)
            return bad(msg, len, "%s: limit %lld per %g s is faster than one per microsecond", name,
                       (long long)r->limit, r->window);
        int64_t i = (w + r->limit - 1) / r->limit;
        int64_t cap = r->burst ? r->burst : r->limit;
        if (cap > TRAFFIC_BUCKET_MAX_US) cap = TRAFFIC_BUCKET_MAX_US; /* over the bound anyway; no overflow below */
        if (r->algorithm == TRAFFIC_LEAKY_BUCKET) cap += 1;
        if (cap > TRAFFIC_BUCKET_MAX_US / i)
            return bad(msg, len, "%s: burst %lld x interval %lld us is over 2^51 us (71 years)", name,
                       (long long)cap, (long long)i);
        return TRAFFIC_OK;
    }
    }
}

void limit_rule_derive(const traffic_rule *r, limit_rule *lr)
{
    lr->algo = r->algorithm;
    lr->limit = r->limit;
    lr->window_us = limit_window_us(r->window);
    lr->interval_us = 0;
    lr->capacity = r->limit;
    lr->most = r->limit;
    if (is_bucket(r->algorithm)) {
        lr->interval_us = (lr->window_us + r->limit - 1) / r->limit;
        lr->capacity = r->burst ? r->burst : r->limit; /* B, or Q */
        lr->most = r->algorithm == TRAFFIC_LEAKY_BUCKET ? lr->capacity + 1 : lr->capacity;
    }
}

/* The calling thread's last accepted rule and its derived form: a server decides under a few
 * rules, and checking and deriving one (three divisions) costs a fifth of a memory decision.
 * initial-exec: a general-dynamic access from this shared library is a __tls_get_addr call;
 * the block is small (the static TLS surplus that dlopen draws on is a few hundred bytes). */
static _Thread_local __attribute__((tls_model("initial-exec"))) struct {
    traffic_rule seen;
    limit_rule derived;
    int valid;
} rule_cache;

static int rule_cached(const traffic_rule *r)
{
    const traffic_rule *s = &rule_cache.seen;
    return rule_cache.valid && s->algorithm == r->algorithm && s->limit == r->limit && s->window == r->window &&
           s->burst == r->burst;
}

const limit_rule *limit_rule_accept(const traffic_rule *r, char *msg, size_t msglen)
{
    if (r && rule_cached(r)) return &rule_cache.derived;
    if (traffic_limit_check(r, msg, msglen) != TRAFFIC_OK) return NULL;
    limit_rule_derive(r, &rule_cache.derived);
    rule_cache.seen = *r;
    rule_cache.valid = 1;
    return &rule_cache.derived;
}

const limit_rule *limit_rule_cached(const traffic_rule *r)
{
    if (!rule_cached(r)) {
        limit_rule_derive(r, &rule_cache.derived);
        rule_cache.seen = *r;
        rule_cache.valid = 1;
    }
    return &rule_cache.derived;
}

static double secs(int64_t us)
{
    return (double)us / 1e6;
}

static int64_t max64(int64_t a, int64_t b)
{
    return a > b ? a : b;
}

/* The outcome before it is written to *out, in µs. */
struct outcome {
    int allowed, changed;
    int64_t remaining, reset_us, retry_us, delay_us; /* retry_us -1: never */
};

/* ---- fixed window: (S, N) ------------------------------------------------------------------ */
static void fixed_window(const limit_rule *r, traffic_limit_state *st, int64_t now, int64_t cost, int peek,
                         struct outcome *o)
{
    int64_t W = r->window_us, L = r->limit;
    if (st->b <= 0 || now >= st->a + W) { /* no open window: the next consuming request opens one */
        st->a = now - now % 1000;
        st->b = 0;
    }
    int64_t c = peek ? 1 : cost;
    if (c > L) {
        o->retry_us = -1;
    } else if (st->b + c <= L) {
        o->allowed = 1;
        if (!peek) {
            st->b += c;
            o->changed = 1;
        }
    } else {
        o->retry_us = st->a + W - now;
    }
    o->remaining = L - st->b;
    o->reset_us = st->b > 0 ? st->a + W - now : 0;
}

/* ---- sliding window counter: (i, P, C) ---------------------------------------------------------- */
static double swc_estimate(int64_t W, int64_t e, int64_t P, int64_t C)
{
    double weight = (double)(W - e) / (double)W;
    return (double)P * weight + (double)C;
}

/* Would a request of cost c pass at t, after the state (i, P, C) and no other traffic? */
static int swc_admits(int64_t W, int64_t L, int64_t i, int64_t P, int64_t C, int64_t t, int64_t c)
{
    int64_t j = t / W, e = t - j * W, p = j == i ? P : j == i + 1 ? C : 0, q = j == i ? C : 0;
    if (j < i) { /* before the state's window (a clock that went back): its start */
        e = 0;
        p = P;
        q = C;
    }
    return swc_estimate(W, e, p, q) + (double)c <= (double)L;
}

static void sliding_counter(const limit_rule *r, traffic_limit_state *st, int64_t now, int64_t cost, int peek,
                            struct outcome *o)
{
    int64_t W = r->window_us, L = r->limit;
    int64_t i = now / W, e = now - i * W;
    if (st->a > i) { /* the clock went back: stay in the stored window, at its start */
        i = st->a;
        e = 0;
    }
    int64_t P, C;
    if (st->a == i) {
        P = st->b;
        C = st->c;
    } else if (st->a == i - 1) {
        P = st->c;
        C = 0;
    } else {
        P = 0;
        C = 0;
    }
    st->a = i;
    st->b = P;
    st->c = C;
    int64_t c = peek ? 1 : cost;
    double est = swc_estimate(W, e, P, C);
    if (c > L) {
        o->retry_us = -1;
    } else if (est + (double)c <= (double)L) {
        o->allowed = 1;
        if (!peek) {
            st->c = C += c;
            est = swc_estimate(W, e, P, C);
            o->changed = 1;
        }
    } else {
        int64_t rem = L - c - C, t;
        if (rem >= 0) { /* P > 0 here: P's share must fall to rem within window i */
            double es = (double)W - (double)rem * (double)W / (double)P;
            t = i * W + (int64_t)ceil(es);
        } else { /* window i + 1, where C weighs as P (and C > L - c: e > 0 there) */
            double es = (double)W - (double)(L - c) * (double)W / (double)C;
            t = (i + 1) * W + (int64_t)ceil(es);
        }
        /* the formula in doubles may land a µs or so off the estimate's own first instant */
        while (t - 1 > now && swc_admits(W, L, i, P, C, t - 1, c)) t--;
        while (!swc_admits(W, L, i, P, C, t, c)) t++;
        o->retry_us = t > now ? t - now : 1;
    }
    /* floor(L - est) may be one off what the estimate admits (each rounds its own way):
     * count as the admissions do */
    double left = floor((double)L - est);
    int64_t k = left < 0 ? 0 : (int64_t)left;
    while (k > 0 && swc_estimate(W, e, P, C + k - 1) + 1.0 > (double)L) k--;
    while (swc_estimate(W, e, P, C + k) + 1.0 <= (double)L) k++;
    o->remaining = k;
    o->reset_us = C > 0 ? (i + 2) * W - now : P > 0 ? (i + 1) * W - now : 0;
}

/* ---- sliding window (log) ------------------------------------------------------------------------ */
static int sliding_log(const limit_rule *r, traffic_limit_state *st, int64_t now, int64_t cost, int peek,
                       struct outcome *o)
{
    int64_t W = r->window_us, L = r->limit;
    if (st->log_cap < (size_t)L || (st->nlog && !st->log) || st->nlog > st->log_cap) return TRAFFIC_EINVAL;
    size_t k = 0;
    while (k < st->nlog && st->log[k].t_us + W <= now)
        k++;
    if (k) {
        memmove(st->log, st->log + k, (st->nlog - k) * sizeof *st->log);
        st->nlog -= k;
    }
    int64_t used = 0;
    for (size_t j = 0; j < st->nlog; j++)
        used += st->log[j].n;
    int64_t c = peek ? 1 : cost;
    if (c > L) {
        o->retry_us = -1;
    } else if (used + c <= L) {
        o->allowed = 1;
        if (!peek) {
            /* An entry is never older than the one before it (a clock that went back records
             * at the latest time seen), so the log stays sorted. */
            int64_t t = st->nlog ? max64(now, st->log[st->nlog - 1].t_us) : now;
            if (st->nlog && st->log[st->nlog - 1].t_us == t) {
                st->log[st->nlog - 1].n += c;
            } else {
                st->log[st->nlog].t_us = t; /* nlog < L <= log_cap: every entry holds >= 1 */
                st->log[st->nlog].n = c;
                st->nlog++;
            }
            used += c;
            o->changed = 1;
        }
    } else {
        int64_t need = used + c - L, freed = 0;
        size_t j = 0;
        while (j < st->nlog && (freed += st->log[j].n) < need)
            j++;
        o->retry_us = st->log[j].t_us + W - now;
    }
    o->remaining = L - used;
    o->reset_us = st->nlog ? st->log[st->nlog - 1].t_us + W - now : 0;
    return TRAFFIC_OK;
}

/* ---- token bucket (GCRA) ------------------------------------------------------------------------- */
static void token_bucket(const limit_rule *r, traffic_limit_state *st, int64_t now, int64_t cost, int peek,
                         struct outcome *o)
{
    int64_t I = r->interval_us, cap = r->capacity * I;
    int64_t c = peek ? 1 : cost;
    int64_t t0 = max64(st->a, now);
    if (c > r->capacity) {
        o->retry_us = -1;
    } else if (t0 + c * I - now <= cap) {
        o->allowed = 1;
        if (!peek && c > 0) {
            st->a = t0 + c * I;
            o->changed = 1;
        }
    } else {
        o->retry_us = t0 + c * I - cap - now;
    }
    int64_t left = now + cap - max64(st->a, now);
    o->remaining = left < 0 ? 0 : left / I;
    o->reset_us = max64(st->a - now, 0);
}

/* ---- leaky bucket (nginx limit_req) ---------------------------------------------------------------- */
static void leaky_bucket(const limit_rule *r, traffic_limit_state *st, int64_t now, int64_t cost, int peek,
                         struct outcome *o)
{
    int64_t I = r->interval_us, Q = r->capacity;
    int64_t c = peek ? 1 : cost;
    int64_t t0 = max64(st->a, now);
    if (c > Q + 1) {
        o->retry_us = -1;
    } else if (t0 + c * I - I - now <= Q * I) {
        o->allowed = 1;
        o->delay_us = t0 + (c - 1) * I - now;
        if (!peek && c > 0) {
            st->a = t0 + c * I;
            o->changed = 1;
        }
    } else {
        o->retry_us = t0 + (c - 1 - Q) * I - now;
    }
    int64_t left = now + (Q + 1) * I - max64(st->a, now);
    o->remaining = left < 0 ? 0 : left / I;
    o->reset_us = max64(st->a - now, 0);
}

/* Could decisions have left this state? A state comes from a store, and a store can be
 * damaged (a SQLite row rewritten, a shared mapping scribbled on): the arithmetic above adds
 * and multiplies its numbers, and overflowed on some of them (found by fuzz/fuzz_limit.c: a
 * sliding window counter's window number of 2^33). Refused are the numbers no decision
 * leaves and that the arithmetic cannot take: times of a magnitude of LIMIT_TIME_MAX or more
 * (decisions store times below 2^53), window counts outside [0, TRAFFIC_WINDOW_LIMIT_MAX]
 * (N + cost <= L; kept when a rule's limit is lowered), log entries of fewer than 1 or more
 * than TRAFFIC_SLIDING_WINDOW_LIMIT_MAX requests, and a sliding window counter's window
 * number whose window ends beyond LIMIT_TIME_MAX. That number may be negative: the memory
 * backend reads a stored one as the nearest to now's, which can lie before window 0. */
static int state_sane(const limit_rule *r, const traffic_limit_state *st)
{
    switch (r->algo) {
    case TRAFFIC_FIXED_WINDOW:
        return st->a > -LIMIT_TIME_MAX && st->a < LIMIT_TIME_MAX && st->b >= 0 && st->b <= TRAFFIC_WINDOW_LIMIT_MAX;
    case TRAFFIC_SLIDING_WINDOW_COUNTER:
        return st->a > -LIMIT_TIME_MAX && st->a < LIMIT_TIME_MAX / r->window_us && st->b >= 0 &&
               st->b <= TRAFFIC_WINDOW_LIMIT_MAX && st->c >= 0 && st->c <= TRAFFIC_WINDOW_LIMIT_MAX;
    case TRAFFIC_SLIDING_WINDOW:
        if (st->nlog > st->log_cap || (st->nlog && !st->log)) return 0;
        for (size_t i = 0; i < st->nlog; i++)
            if (st->log[i].t_us < 0 || st->log[i].t_us >= LIMIT_TIME_MAX || st->log[i].n < 1 ||
                st->log[i].n > TRAFFIC_SLIDING_WINDOW_LIMIT_MAX)
                return 0;
        return 1;
    default: return st->a > -LIMIT_TIME_MAX && st->a < LIMIT_TIME_MAX; /* the buckets' T */
    }
}

int traffic_limit_apply(const traffic_rule *rule, traffic_limit_state *st, int64_t now, int64_t cost,
                        traffic_decision *out)
{
    if (traffic_limit_check(rule, NULL, 0) != TRAFFIC_OK || !st || !out || cost < 0) return TRAFFIC_EINVAL;
    limit_rule r;
    limit_rule_derive(rule, &r);
    return limit_apply(&r, st, now, cost, out, NULL);
}

int limit_apply(const limit_rule *rp, traffic_limit_state *st, int64_t now, int64_t cost, traffic_decision *out,
                int64_t *reset_us)
{
    const limit_rule r = *rp;
    if (now < 0 || now >= LIMIT_TIME_MAX || !state_sane(&r, st)) return TRAFFIC_EINVAL;
    struct outcome o = {0};
    int peek = cost == 0;
    switch (r.algo) {
    case TRAFFIC_FIXED_WINDOW: fixed_window(&r, st, now, cost, peek, &o); break;
    case TRAFFIC_SLIDING_WINDOW_COUNTER: sliding_counter(&r, st, now, cost, peek, &o); break;
    case TRAFFIC_SLIDING_WINDOW:
        if (sliding_log(&r, st, now, cost, peek, &o) != TRAFFIC_OK) return TRAFFIC_EINVAL;
        break;
    case TRAFFIC_TOKEN_BUCKET: token_bucket(&r, st, now, cost, peek, &o); break;
    case TRAFFIC_LEAKY_BUCKET: leaky_bucket(&r, st, now, cost, peek, &o); break;
    }
    out->allowed = o.allowed;
    out->limit = r.most;
    out->remaining = o.remaining;
    out->reset_after = secs(o.reset_us);
    out->retry_after = o.allowed ? 0 : o.retry_us < 0 ? -1.0 : secs(o.retry_us);
    out->delay = o.allowed ? secs(o.delay_us) : 0;
    if (reset_us) *reset_us = o.reset_us;
    return o.changed;
}

size_t limit_state_json(int algo, const traffic_limit_state *st, char *buf, size_t cap)
{
    const char *name = limit_algo_name(algo);
    int n;
    switch (algo) {
    case TRAFFIC_FIXED_WINDOW:
        n = snprintf(buf, cap, "{\"algorithm\":\"%s\",\"window_start_us\":%lld,\"count\":%lld}", name,
                     (long long)st->a, (long long)st->b);
        break;
    case TRAFFIC_SLIDING_WINDOW_COUNTER:
        /* The window's number modulo 2^24: all the memory backend keeps of it. */
        n = snprintf(buf, cap, "{\"algorithm\":\"%s\",\"window\":%lld,\"previous\":%lld,\"current\":%lld}", name,
                     (long long)(st->a & 0xffffff), (long long)st->b, (long long)st->c);
        break;
    case TRAFFIC_TOKEN_BUCKET:
    case TRAFFIC_LEAKY_BUCKET:
        n = snprintf(buf, cap, "{\"algorithm\":\"%s\",\"tat_us\":%lld}", name, (long long)st->a);
        break;
    case TRAFFIC_SLIDING_WINDOW: {
        size_t used = 0;
        n = snprintf(buf, cap, "{\"algorithm\":\"%s\",\"log\":[", name);
        used = (size_t)n;
        for (size_t i = 0; i < st->nlog; i++) {
            n = snprintf(buf ? buf + (used < cap ? used : cap) : NULL, used < cap ? cap - used : 0, "%s[%lld,%lld]",
                         i ? "," : "", (long long)st->log[i].t_us, (long long)st->log[i].n);
            used += (size_t)n;
        }
        n = snprintf(buf ? buf + (used < cap ? used : cap) : NULL, used < cap ? cap - used : 0, "]}");
        return used + (size_t)n;
    }
    default: n = snprintf(buf, cap, "{\"algorithm\":null}"); break;
    }
    return n < 0 ? 0 : (size_t)n;
}

int traffic_rule_parse(const char *text, traffic_rule *out, char *msg, size_t msglen)
{
    if (!text || !out) return bad(msg, msglen, "rule text or out is NULL");
    traffic_rule r = {.algorithm = TRAFFIC_SLIDING_WINDOW_COUNTER};
    const char *p = text, *colon = strchr(text, ':');
    if (colon) {
        int a = limit_algo_parse(text, (size_t)(colon - text));
        if (a < 0)
            return bad(msg, msglen,
                       "rule \"%.80s\": unknown algorithm \"%.*s\" (want sliding_window_counter, fixed_window, "
                       "sliding_window, token_bucket or leaky_bucket)",
                       text, (int)(colon - text < 40 ? colon - text : 40), text);
        r.algorithm = (traffic_algorithm)a;
        p = colon + 1;
    }
    char *end;
    errno = 0;
    long long limit = strtoll(p, &end, 10);
    if (end == p || errno || *end != '/' || !(*p >= '0' && *p <= '9'))
        return bad(msg, msglen, "rule \"%.80s\": want ALGO:LIMIT/WINDOW[,burst=N], e.g. token_bucket:100/60s,burst=20",
                   text);
    r.limit = limit;
    p = end + 1;
    double w = strtod(p, &end);
    if (end == p || (!(*p >= '0' && *p <= '9') && *p != '.'))
        return bad(msg, msglen, "rule \"%.80s\": the window is not a number of seconds", text);
    double unit = 1;
    const char *u = end;
    size_t ulen = strcspn(u, ",");
    if (ulen == 0 || (ulen == 1 && *u == 's')) unit = 1;
    else if (ulen == 2 && memcmp(u, "ms", 2) == 0) unit = 0.001;
    else if (ulen == 1 && *u == 'm') unit = 60;
    else if (ulen == 1 && *u == 'h') unit = 3600;
    else if (ulen == 1 && *u == 'd') unit = 86400;
    else return bad(msg, msglen, "rule \"%.80s\": unknown window unit \"%.*s\" (want ms, s, m, h or d)", text,
                    (int)(ulen < 20 ? ulen : 20), u);
    r.window = w * unit;
    p = u + ulen;
    if (*p == ',') {
        p++;
        if (strncmp(p, "burst=", 6) != 0)
            return bad(msg, msglen, "rule \"%.80s\": unknown option \"%.20s\" (want burst=N)", text, p);
        p += 6;
        errno = 0;
        long long bu = strtoll(p, &end, 10);
        if (end == p || errno || *end != '\0' || !(*p >= '0' && *p <= '9'))
            return bad(msg, msglen, "rule \"%.80s\": burst is not a whole number", text);
        r.burst = bu;
    } else if (*p != '\0') {
        return bad(msg, msglen, "rule \"%.80s\": unexpected \"%.20s\"", text, p);
    }
    int rc = traffic_limit_check(&r, msg, msglen);
    if (rc == TRAFFIC_OK) *out = r;
    return rc;
}
