/*
 * worker.c — what runs in each forked worker: a closed loop of operations on pre-generated
 * key numbers, timed by the TSC, recorded in a log-linear histogram.
 *
 * Nothing is computed inside the loop that the store does not need: the key sequence (which
 * key, which operation) is generated before the run into an array of SEQ_LEN entries that
 * the loop walks round; keys are pre-formatted strings. What the loop adds to every
 * operation — one array load, an indirect call, one rdtsc, one histogram increment — is
 * measured by running the same loop on bench:null, and is *included* in every figure.
 *
 * Timing (every operation, the default): one rdtsc per operation; the difference between
 * consecutive reads is that operation's latency, bookkeeping included, so the latencies sum
 * exactly to the elapsed time. --sample M times one operation in M (an rdtsc on each side,
 * the untimed ones run bare) and --sample 0 none: throughput without timer cost.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#define HAVE_RDTSC 1
#else
#define HAVE_RDTSC 0
#endif

#include "bench.h"

/* Operations between two looks at the phase word (a shared line that changes 3 times). */
#define BATCH 16
/* Sequence entry op codes: a get knows whether it reads a counter or a bytes value. */
enum { SEQ_INCR = 0, SEQ_GETB = 1, SEQ_SET = 2, SEQ_GETC = 3, SEQ_LIMIT = 4 };
#define BENCH_EBADLEN (-100) /* a get returned a value of the wrong length */

char *bench_keys;
volatile uint32_t bench_sink; /* keeps the pre-run reads of the sequence */
int bench_use_tsc;
double bench_ns_per_tick = 1.0;

int bench_is_counter(const struct bench_cfg *cfg, uint32_t i)
{
    return cfg->op == OP_INCR || (cfg->op == OP_MIXED && !(i & 1));
}

/* ---- timer -------------------------------------------------------------------------------- */

uint64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline uint64_t ticks(void)
{
#if HAVE_RDTSC
    if (bench_use_tsc) return __rdtsc();
#endif
    return bench_now_ns();
}

static int tsc_invariant(void)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return 0;
    char line[4096];
    int ok = 0;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "flags", 5) == 0) {
            ok = strstr(line, " constant_tsc") && strstr(line, " nonstop_tsc");
            break;
        }
    fclose(f);
    return ok;
}

#if HAVE_RDTSC /* only the TSC calibration sorts (elsewhere -Wunused-function fails the build) */
static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
#endif

/* Uses the TSC when it is invariant (constant rate, not stopped in idle), calibrated against
 * CLOCK_MONOTONIC over three 30 ms busy windows (the median is kept). */
int bench_timer_init(int force_clock)
{
    bench_use_tsc = 0;
    bench_ns_per_tick = 1.0;
    if (!HAVE_RDTSC || force_clock || !tsc_invariant()) return 0;
#if HAVE_RDTSC
    double r[3];
    for (int k = 0; k < 3; k++) {
        uint64_t t0 = bench_now_ns(), c0 = __rdtsc(), t1, c1;
        do {
            t1 = bench_now_ns();
            c1 = __rdtsc();
        } while (t1 - t0 < 30000000u);
        r[k] = (double)(t1 - t0) / (double)(c1 - c0);
    }
    qsort(r, 3, sizeof r[0], cmp_double);
    bench_ns_per_tick = r[1];
    bench_use_tsc = 1;
#endif
    return 1;
}

/* ---- histogram ---------------------------------------------------------------------------- */

void hist_merge(struct hist *into, const struct hist *from)
{
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        into->b[i] += from->b[i];
    into->count += from->count;
    if (from->max > into->max) into->max = from->max;
}

static void bucket_range(unsigned i, double *lo, double *width)
{
    if (i < 2 * HIST_SUB) {
        *lo = i;
        *width = 1;
        return;
    }
    unsigned shift = i / HIST_SUB - 1;
    *lo = (double)((uint64_t)(HIST_SUB + i % HIST_SUB) << shift);
    *width = (double)(1ull << shift);
}

double hist_quantile(const struct hist *h, double q)
{
    if (!h->count) return 0;
    uint64_t want = (uint64_t)ceil(q * (double)h->count), seen = 0;
    if (want < 1) want = 1;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= want) {
            double lo, w;
            bucket_range(i, &lo, &w);
            double mid = w > 1 ? lo + w / 2 : lo;
            return mid > (double)h->max ? (double)h->max : mid;
        }
    }
    return (double)h->max;
}

/* ---- key sequences ------------------------------------------------------------------------ */

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint32_t below(uint64_t *rng, uint32_t n)
{
    return (uint32_t)(((splitmix(rng) >> 32) * (uint64_t)n) >> 32);
}

/* Zipf over ranks 0..n-1 (P(r) proportional to 1/(r+1)^s): a cumulative table, searched. */
static double *zipf_cdf;
static uint32_t zipf_n;
static double zipf_s_built;

static int zipf_build(uint32_t n, double s)
{
    if (zipf_cdf && zipf_n == n && zipf_s_built == s) return 0;
    free(zipf_cdf);
    zipf_cdf = malloc((size_t)n * sizeof *zipf_cdf);
    if (!zipf_cdf) return -1;
    double sum = 0;
    for (uint32_t r = 0; r < n; r++)
        zipf_cdf[r] = (sum += pow((double)r + 1.0, -s));
    for (uint32_t r = 0; r < n; r++)
        zipf_cdf[r] /= sum;
    zipf_n = n;
    zipf_s_built = s;
    return 0;
}

void bench_zipf_free(void)
{
    free(zipf_cdf);
    zipf_cdf = NULL;
}

static uint32_t zipf_rank(uint64_t *rng)
{
    double u = (double)(splitmix(rng) >> 11) * 0x1p-53;
    uint32_t lo = 0, hi = zipf_n - 1;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (zipf_cdf[mid] < u)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Spreads ranks over the key numbers (hot keys are not neighbours): r -> r * P mod n, a
 * bijection since the prime P exceeds n. */
static uint32_t scatter(uint32_t r, uint32_t n)
{
    return (uint32_t)(((uint64_t)r * 4294967291ull) % n);
}

void bench_make_seq(const struct bench_cfg *cfg, int w, int nprocs, uint32_t *seq)
{
    uint64_t rng = 0x5eed0000ull + (uint64_t)w * 7919u + (uint64_t)nprocs * 104729u;
    uint32_t lo = 0, span = cfg->keys;
    if (cfg->disjoint && nprocs > 1) { /* worker w's own block, even-sized and even-aligned */
        span = (cfg->keys / (uint32_t)nprocs) & ~1u;
        lo = (uint32_t)w * span;
    }
    if (cfg->dist == DIST_ZIPF && zipf_build(span, cfg->zipf_s) < 0) {
        fprintf(stderr, "traffic-bench: out of memory for the zipf table\n");
        exit(1);
    }
    for (uint32_t n = 0; n < SEQ_LEN; n++) {
        uint32_t r = cfg->dist == DIST_ZIPF ? scatter(zipf_rank(&rng), span) : below(&rng, span);
        uint32_t i = lo + r, op;
        switch (cfg->op) {
        case OP_INCR: op = SEQ_INCR; break;
        case OP_GET: op = SEQ_GETB; break;
        case OP_SET: op = SEQ_SET; break;
        case OP_LIMIT: op = SEQ_LIMIT; break;
        default: { /* mixed: 60 % get, 30 % increment, 10 % set */
            uint32_t dice = below(&rng, 100);
            if (dice < 60) {
                op = (i & 1) ? SEQ_GETB : SEQ_GETC;
            } else if (dice < 90) {
                op = SEQ_INCR;
                i &= ~1u;
            } else {
                op = SEQ_SET;
                i |= 1u;
                if (i >= lo + span) i -= 2;
            }
        }
        }
        seq[n] = op << SEQ_OP_SHIFT | i;
    }
}

/* ---- the loop ------------------------------------------------------------------------------ */

struct loop {
    const struct store_ops *o;
    void *h;
    const uint32_t *seq;
    uint32_t pos;
    int key_ahead; /* prefetch key strings (stores that read them) */
    char val[VALUE_LEN];
    uint64_t incrs, allowed, errors;
    int64_t first_error;
};

/* How far ahead the loop brings the key string of a coming operation into the cache. A
 * server's key was just built from the request and is hot; without this, with 1M keys the
 * loop would charge every string-keyed store a cache miss on a random place of the 16 MB key
 * array before its first instruction (measured: see README, "the harness"). */
#define KEY_AHEAD 8

static inline void one(struct loop *l)
{
    if (l->key_ahead) __builtin_prefetch(bench_key(l->seq[(l->pos + KEY_AHEAD) & (SEQ_LEN - 1)] & SEQ_IDX_MASK));
    uint32_t e = l->seq[l->pos++ & (SEQ_LEN - 1)], i = e & SEQ_IDX_MASK;
    int64_t out;
    size_t len;
    int rc;
    switch (e >> SEQ_OP_SHIFT) {
    case SEQ_INCR:
        l->incrs++;
        rc = l->o->incr(l->h, i, &out);
        break;
    case SEQ_GETB:
        rc = l->o->get(l->h, i, &len);
        if (rc == 0 && len != VALUE_LEN) rc = BENCH_EBADLEN;
        break;
    case SEQ_SET: rc = l->o->set(l->h, i, l->val, VALUE_LEN); break;
    case SEQ_LIMIT:
        rc = l->o->limit(l->h, i, &out);
        l->allowed += rc == 0 && out;
        break;
    default: /* SEQ_GETC */
        rc = l->o->get(l->h, i, &len);
        if (rc == 0 && (len == 0 || len > 20)) rc = BENCH_EBADLEN;
        break;
    }
    if (__builtin_expect(rc != 0, 0)) {
        if (!l->errors) l->first_error = rc;
        l->errors++;
    }
}

static inline int phase_is(struct control *c, int p)
{
    return atomic_load_explicit(&c->phase, memory_order_relaxed) == p;
}

static uint64_t run_untimed(struct loop *l, struct control *c, int phase)
{
    uint64_t n = 0;
    while (phase_is(c, phase)) {
        for (int j = 0; j < BATCH; j++)
            one(l);
        n += BATCH;
    }
    return n;
}

static uint64_t run_timed_every(struct loop *l, struct control *c, struct hist *hi)
{
    uint64_t n = 0, t0 = ticks();
    while (phase_is(c, PHASE_MEASURE)) {
        for (int j = 0; j < BATCH; j++) {
            one(l);
            uint64_t t1 = ticks();
            hist_add(hi, t1 - t0);
            t0 = t1;
        }
        n += BATCH;
    }
    return n;
}

static uint64_t run_timed_sampled(struct loop *l, struct control *c, struct hist *hi, int every)
{
    uint64_t n = 0;
    int k = 0;
    while (phase_is(c, PHASE_MEASURE)) {
        for (int j = 0; j < BATCH; j++) {
            if (++k == every) {
                k = 0;
                uint64_t t0 = ticks();
                one(l);
                hist_add(hi, ticks() - t0);
            } else {
                one(l);
            }
        }
        n += BATCH;
    }
    return n;
}

static void read_rss(uint64_t *hwm, uint64_t *rss)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    *hwm = *rss = 0;
    if (!f) return;
    while (fgets(line, sizeof line, f)) {
        unsigned long long v;
        if (sscanf(line, "VmHWM: %llu kB", &v) == 1)
            *hwm = v;
        else if (sscanf(line, "VmRSS: %llu kB", &v) == 1)
            *rss = v;
    }
    fclose(f);
}

static void say(int fd, char c)
{
    while (write(fd, &c, 1) < 0 && errno == EINTR) {
    }
}

void bench_worker(struct store *s, int w, const uint32_t *seq, struct control *ctl, int ready_fd, int go_fd,
                  struct worker_result *r)
{
    memset(r, 0, sizeof *r); /* also faults the histogram in before the run */
    if (s->ops->attach && s->ops->attach(s, w, r->msg, sizeof r->msg) != BENCH_OK) {
        r->status = BENCH_ERR;
        say(ready_fd, 'e');
        return;
    }
    struct loop l = {
        .o = s->ops, .h = s->h, .seq = seq, .pos = (uint32_t)w * (SEQ_LEN / 7), .key_ahead = !s->ops->numbered_keys};
    char tmp[32];
    snprintf(tmp, sizeof tmp, "w%03d-%011u", w % 1000, (unsigned)getpid());
    memcpy(l.val, tmp, VALUE_LEN);
    uint32_t touch = 0; /* fault the sequence in before the run */
    for (uint32_t n = 0; n < SEQ_LEN; n += 1024)
        touch += seq[n];
    bench_sink = touch;
    say(ready_fd, 'r');
    char go;
    while (read(go_fd, &go, 1) < 0 && errno == EINTR) {
    }

    run_untimed(&l, ctl, PHASE_WARMUP);
    l.allowed = 0; /* of the measured decisions only */
    uint64_t t0 = bench_now_ns(), n;
    struct hist *hi = &r->hist;
    if (s->cfg->sample == 1)
        n = run_timed_every(&l, ctl, hi);
    else if (s->cfg->sample > 1)
        n = run_timed_sampled(&l, ctl, hi, s->cfg->sample);
    else
        n = run_untimed(&l, ctl, PHASE_MEASURE);
    r->elapsed_ns = bench_now_ns() - t0;
    r->ops = n;
    r->incrs = l.incrs;
    r->allowed = l.allowed;
    r->errors = l.errors;
    r->first_error = l.first_error;
    read_rss(&r->hwm_kb, &r->rss_kb);
    if (s->ops->detach) s->ops->detach(s);
}
