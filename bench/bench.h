/*
 * bench.h — what the parts of traffic-bench share: the configuration, the key set, the
 * latency histogram and timer, and the small vtable every store under test implements.
 *
 * The one idea: every store — the library behind any URL, and the baselines that exist only
 * here (bench:raw-atomic, bench:mutex-table, bench:raw-sqlite, bench:raw-hiredis, bench:null)
 * — is driven by the same worker loop through the same three calls (incr, get, set on key
 * number i), so the figures differ only by what the store does. Rate-limit decisions (limit)
 * exist only in the library, and bench:null, which measures the harness.
 */
#ifndef TRAFFIC_BENCH_H
#define TRAFFIC_BENCH_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <traffic/traffic.h>

/* ---- configuration ------------------------------------------------------------------------- */

#define BENCH_MAX_URLS    16
#define BENCH_MAX_PROCS   16 /* entries of a --procs list */
#define BENCH_PROCS_LIMIT 256

enum bench_op { OP_INCR = 0, OP_GET = 1, OP_SET = 2, OP_MIXED = 3, OP_LIMIT = 4 };
enum bench_dist { DIST_UNIFORM, DIST_ZIPF };

struct bench_cfg {
    const char *urls[BENCH_MAX_URLS];
    int nurls;
    int procs[BENCH_MAX_PROCS];
    int nprocs;
    int max_procs;
    uint32_t keys;
    enum bench_dist dist;
    double zipf_s;
    enum bench_op op;
    double seconds; /* measured time per URL and process count, over all rounds */
    int rounds;
    double warmup; /* seconds of unmeasured operations before each measured round */
    double ttl;
    const char *rule_text; /* --op limit: the rule, as given and as parsed */
    traffic_rule rule;
    int sample;   /* time one operation in `sample` (1: every one, 0: none) */
    int disjoint; /* worker w uses only its own block of keys */
    const char *json;
    const char *plot;
};

/* ---- keys -----------------------------------------------------------------------------------
 * Key i is "key:%010u" (14 bytes, like a short client address), stored NUL-terminated at a
 * fixed stride so that no operation formats a key. Under --op mixed, counters live on even
 * key numbers and byte values on odd ones (an increment never meets a bytes value). */
#define KEY_LEN    14
#define KEY_STRIDE 16
#define VALUE_LEN  16 /* bytes written by set, and expected back from get on a bytes key */

extern char *bench_keys;
static inline const char *bench_key(uint32_t i)
{
    return bench_keys + (size_t)i * KEY_STRIDE;
}
/* Does key i hold a counter (else a bytes value) under the configured operation? */
int bench_is_counter(const struct bench_cfg *cfg, uint32_t i);

/* ---- timer ----------------------------------------------------------------------------------
 * Ticks of the TSC (rdtsc, unserialised: ~20 cycles) when it is invariant, else nanoseconds of
 * clock_gettime(CLOCK_MONOTONIC). bench_ns_per_tick converts. */
extern int bench_use_tsc;
extern double bench_ns_per_tick;
int bench_timer_init(int force_clock);
uint64_t bench_now_ns(void); /* CLOCK_MONOTONIC */

/* ---- latency histogram ----------------------------------------------------------------------
 * Log-linear (HDR-style): values below 32 ticks exactly, above that 16 sub-buckets per power
 * of two, so every value is known within 1/16 (6.25 %) and 1024 counters cover 64 bits. */
#define HIST_SUB_BITS 4
#define HIST_SUB      (1u << HIST_SUB_BITS)
#define HIST_BUCKETS  1024

struct hist {
    uint64_t count;
    uint64_t max; /* exact, in ticks */
    uint64_t b[HIST_BUCKETS];
};

static inline unsigned hist_index(uint64_t v)
{
    if (v < 2 * HIST_SUB) return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - HIST_SUB_BITS;
    return (shift + 1) * HIST_SUB + (unsigned)((v >> shift) & (HIST_SUB - 1));
}

static inline void hist_add(struct hist *h, uint64_t v)
{
    h->b[hist_index(v)]++;
    h->count++;
    if (v > h->max) h->max = v;
}

void hist_merge(struct hist *into, const struct hist *from);
/* The q-quantile (0 < q <= 1) in ticks: the middle of the bucket holding it. */
double hist_quantile(const struct hist *h, double q);

/* ---- stores ---------------------------------------------------------------------------------
 * A store is one URL under test. open() runs once in the parent; attach() in every worker
 * after fork(). The operation calls take the handle attach() left in s->h (the parent's own
 * for stores shared through the fork). Operations return 0 or a negative code. */
enum { BENCH_OK = 0, BENCH_SKIP = 1, BENCH_ERR = -1 };

struct store;
struct store_ops {
    const char *prefix; /* "bench:raw-atomic", …; NULL for the library (any other URL) */
    int numbered_keys;  /* 1: uses key numbers only, never the key strings (raw-atomic, null) */
    int (*open)(struct store *s, char *err, size_t errlen);
    /* optional: the parent lets go of per-process state before fork() and takes it back after */
    void (*release)(struct store *s);
    int (*reacquire)(struct store *s, char *err, size_t errlen);
    int (*attach)(struct store *s, int worker, char *err, size_t errlen);
    void (*detach)(struct store *s);
    int (*incr)(void *h, uint32_t i, int64_t *out);
    int (*get)(void *h, uint32_t i, size_t *len);
    int (*set)(void *h, uint32_t i, const void *val, size_t len);
    /* one decision of cost 1 under cfg->rule; *allowed = 1 or 0. NULL: no decisions (--op limit
     * refuses the store) */
    int (*limit)(void *h, uint32_t i, int64_t *allowed);
    /* optional fast paths for the parent (the generic versions loop over incr / set / get) */
    int (*prefill)(struct store *s, char *err, size_t errlen);
    int (*sum)(struct store *s, int64_t *sum, char *err, size_t errlen);
    void (*close)(struct store *s);
};

struct store {
    const struct store_ops *ops;
    const char *url; /* as given */
    char *eff_url;   /* as opened (the library: with max_size added), malloc'd */
    const struct bench_cfg *cfg;
    void *h;    /* what the operations receive */
    void *priv; /* the driver's own state */
};

extern const struct store_ops store_traffic, store_null, store_raw_atomic, store_mutex_table, store_raw_sqlite,
    store_raw_hiredis;

/* Loads every key through the store's own incr (counters) and set (bytes values), or under
 * --op limit makes one decision on each. */
int bench_prefill_generic(struct store *s, char *err, size_t errlen);

/* The value of query parameter name in url ("?a=1&b=2"), copied into out; 1 if present. */
int bench_url_param(const char *url, const char *name, char *out, size_t cap);

/* ---- the worker loop (worker.c) ------------------------------------------------------------- */
enum { PHASE_WAIT = 0, PHASE_WARMUP = 1, PHASE_MEASURE = 2, PHASE_STOP = 3 };

struct worker_result {
    uint64_t ops;        /* measured operations */
    uint64_t incrs;      /* increments done, warm-up included (for the check) */
    uint64_t allowed;    /* --op limit: measured decisions that allowed */
    uint64_t errors;     /* failed operations, and gets of a bytes key with a wrong length */
    uint64_t elapsed_ns; /* measured time */
    uint64_t hwm_kb, rss_kb;
    int status; /* 0, or BENCH_ERR with msg */
    char msg[256];
    int64_t first_error;
    struct hist hist;
};

struct control {
    _Atomic int phase;
    char pad[60];
};

/* Key-sequence entries: op << SEQ_OP_SHIFT | key number. */
#define SEQ_BITS     20
#define SEQ_LEN      (1u << SEQ_BITS)
#define SEQ_OP_SHIFT 29
#define SEQ_IDX_MASK ((1u << SEQ_OP_SHIFT) - 1)

/* Fills seq (SEQ_LEN entries) for worker w of nprocs. */
void bench_make_seq(const struct bench_cfg *cfg, int w, int nprocs, uint32_t *seq);
void bench_zipf_free(void);
/* Runs in the forked worker: attach, wait for go, loop, detach; fills *r. */
void bench_worker(struct store *s, int w, const uint32_t *seq, struct control *ctl, int ready_fd, int go_fd,
                  struct worker_result *r);

/* ---- reporting (report.c) ------------------------------------------------------------------- */
struct result {
    const char *url;
    int procs;
    int skipped; /* 1: skipped (not built), 2: failed */
    char reason[256];
    double ops_per_sec, ns_per_op, p50, p99, p999, max_ns;
    uint64_t rss_kb;
    uint64_t ops, errors;
    uint64_t allowed; /* --op limit: of ops, the decisions that allowed */
    int check;
    char check_msg[256];
    double ratio;               /* ops/s against the first URL's at the same process count */
    double open_ms, prefill_ms; /* the parent's open and prefill of the store */
};

struct machine {
    char cpu[128];
    int ncpu;
    char kernel[128];
    double load1;
    const char *timer;
    double tsc_ghz;
    double empty_op_ns; /* the harness alone: bench:null measured the same way */
};

void report_table(const struct bench_cfg *cfg, const struct result *r, int n, const struct machine *m);
int report_json(const char *path, const struct bench_cfg *cfg, const struct result *r, int n, const struct machine *m);
int report_svg(const char *path, const struct bench_cfg *cfg, const struct result *r, int n);

#endif
