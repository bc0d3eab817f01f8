/*
 * main.c — traffic-bench: forks N workers per URL that hammer one shared store in a closed
 * loop, and reports throughput, latency percentiles, memory and a correctness check per URL,
 * with ratios against the first URL.
 *
 * The one idea: on a shared, noisy machine absolute figures drift from run to run, so URLs
 * are never measured one after the other in long stretches. Each URL's time (--seconds) is
 * cut into --rounds short rounds, the rounds of all URLs alternate (round r starts with URL
 * r mod n), and each figure reported is the median over that URL's rounds. Every store is
 * opened and prefilled once, before any round; the check after each round compares the sum
 * of all counters with the increments every worker reports having done (warm-up included).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <traffic/traffic.h>

#include "bench.h"

#define READY_TIMEOUT_MS 60000 /* workers must attach within this */
#define STOP_GRACE_MS    30000 /* a worker still running this long after STOP is killed */

static void usage(FILE *f)
{
    fprintf(f, "usage: traffic-bench --url URL [--url URL ...] [options]\n"
               "  --url URL        a store: any traffic URL (memory://, memory://NAME, sqlite://PATH, redis://…)\n"
               "                   or a baseline: bench:raw-atomic[?stride=64|8|...][&serial=1], bench:mutex-table[?robust=1],\n"
               "                   bench:raw-sqlite?path=FILE, bench:raw-hiredis?url=redis://HOST:PORT | ?unix=PATH,\n"
               "                   bench:null (the harness alone). Ratios are against the first URL.\n"
               "  --procs N[,M..]  worker processes (a list sweeps them; default 1)\n"
               "  --keys K         keys, all prefilled (default 1000)\n"
               "  --dist D         uniform | zipf (default uniform)\n"
               "  --zipf-s S       zipf exponent (default 0.99)\n"
               "  --op OP          incr | get | set | mixed (60%% get, 30%% incr, 10%% set) | limit (default incr)\n"
               "  --rule RULE      --op limit: the rule of every decision, ALGO:LIMIT/WINDOW[,burst=N],\n"
               "                   e.g. token_bucket:100/1s or fixed_window:1000/1m (library URLs only)\n"
               "  --seconds S      measured seconds per URL and process count (default 3)\n"
               "  --rounds R       alternating rounds those seconds are cut into; medians reported (default 3)\n"
               "  --warmup S       unmeasured seconds before each round (default 0.2)\n"
               "  --ttl T          TTL in seconds passed to increment / set (default 0: none)\n"
               "  --disjoint       worker w uses only its own block of keys (default: all share all keys)\n"
               "  --sample M       time 1 operation in M (default 16; 1: every one; 0: none)\n"
               "  --timer T        tsc | clock (default tsc when the TSC is invariant)\n"
               "  --json FILE      write the results as JSON\n"
               "  --plot FILE      write an SVG chart of ops/s and p99 against the process count\n");
}

/* ---- small helpers ------------------------------------------------------------------------- */

int bench_url_param(const char *url, const char *name, char *out, size_t cap)
{
    const char *q = strchr(url, '?');
    size_t nl = strlen(name);
    while (q) {
        q++;
        if (strncmp(q, name, nl) == 0 && (q[nl] == '=' || q[nl] == '&' || q[nl] == '\0')) {
            const char *v = q[nl] == '=' ? q + nl + 1 : q + nl;
            size_t vl = strcspn(v, "&");
            if (vl >= cap) vl = cap - 1;
            memcpy(out, v, vl);
            out[vl] = '\0';
            return 1;
        }
        q = strchr(q, '&');
    }
    return 0;
}

static void die(const char *fmt, const char *arg)
{
    fprintf(stderr, "traffic-bench: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    exit(2);
}

static double num_arg(const char *opt, const char *s, double lo, double hi)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || v < lo || v > hi) die("bad value for %s", opt);
    return v;
}

static void sleep_s(double s)
{
    if (s <= 0) return;
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* ---- options ----------------------------------------------------------------------------- */

static void parse_procs(struct bench_cfg *c, const char *s)
{
    char *copy = strdup(s), *save = NULL;
    c->nprocs = 0;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (c->nprocs == BENCH_MAX_PROCS) die("at most 16 process counts in %s", s);
        int p = (int)num_arg("--procs", t, 1, BENCH_PROCS_LIMIT);
        c->procs[c->nprocs++] = p;
        if (p > c->max_procs) c->max_procs = p;
    }
    free(copy);
    if (!c->nprocs) die("--procs %s is empty", s);
}

static const struct store_ops *store_for(const char *url);

/* --op limit needs a rule, and only the library makes decisions: the baselines have none to
 * compare (bench:null, the harness alone, excepted). */
static void check_limit_args(struct bench_cfg *c)
{
    if (c->op != OP_LIMIT) {
        if (c->rule_text) die("--rule %s applies to --op limit only", c->rule_text);
        return;
    }
    if (!c->rule_text) die("--op limit needs --rule ALGO:LIMIT/WINDOW[,burst=N], e.g. token_bucket:100/1s%s", "");
    char msg[256];
    if (traffic_rule_parse(c->rule_text, &c->rule, msg, sizeof msg) != TRAFFIC_OK) die("--rule: %s", msg);
    for (int i = 0; i < c->nurls; i++)
        if (store_for(c->urls[i]) && !store_for(c->urls[i])->limit)
            die("--op limit: %s is a baseline without rate-limit decisions; give library URLs (memory://, "
                "sqlite://, redis://...)",
                c->urls[i]);
}

static void parse_args(int argc, char **argv, struct bench_cfg *c, int *force_clock)
{
    static const struct option lo[] = {
        {"url", 1, 0, 'u'},    {"procs", 1, 0, 'p'}, {"keys", 1, 0, 'k'},     {"dist", 1, 0, 'd'},
        {"zipf-s", 1, 0, 'z'}, {"op", 1, 0, 'o'},    {"seconds", 1, 0, 's'},  {"rounds", 1, 0, 'r'},
        {"warmup", 1, 0, 'w'}, {"ttl", 1, 0, 't'},   {"disjoint", 0, 0, 'D'}, {"sample", 1, 0, 'S'},
        {"timer", 1, 0, 'T'},  {"json", 1, 0, 'j'},  {"plot", 1, 0, 'P'},     {"help", 0, 0, 'h'},
        {"rule", 1, 0, 'R'},   {0, 0, 0, 0}};
    *c = (struct bench_cfg){.keys = 1000,
                            .dist = DIST_UNIFORM,
                            .zipf_s = 0.99,
                            .op = OP_INCR,
                            .seconds = 3,
                            .rounds = 3,
                            .warmup = 0.2,
                            .sample = 16};
    parse_procs(c, "1");
    int ch;
    while ((ch = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (ch) {
        case 'u':
            if (c->nurls == BENCH_MAX_URLS) die("at most 16 --url (%s)", optarg);
            c->urls[c->nurls++] = optarg;
            break;
        case 'p':
            c->max_procs = 0;
            parse_procs(c, optarg);
            break;
        case 'k': c->keys = (uint32_t)num_arg("--keys", optarg, 2, SEQ_IDX_MASK); break;
        case 'd':
            if (strcmp(optarg, "uniform") == 0)
                c->dist = DIST_UNIFORM;
            else if (strcmp(optarg, "zipf") == 0)
                c->dist = DIST_ZIPF;
            else
                die("--dist %s: want uniform or zipf", optarg);
            break;
        case 'z': c->zipf_s = num_arg("--zipf-s", optarg, 0, 10); break;
        case 'o':
            if (strcmp(optarg, "incr") == 0)
                c->op = OP_INCR;
            else if (strcmp(optarg, "get") == 0)
                c->op = OP_GET;
            else if (strcmp(optarg, "set") == 0)
                c->op = OP_SET;
            else if (strcmp(optarg, "mixed") == 0)
                c->op = OP_MIXED;
            else if (strcmp(optarg, "limit") == 0)
                c->op = OP_LIMIT;
            else
                die("--op %s: want incr, get, set, mixed or limit", optarg);
            break;
        case 'R': c->rule_text = optarg; break;
        case 's': c->seconds = num_arg("--seconds", optarg, 0.01, 86400); break;
        case 'r': c->rounds = (int)num_arg("--rounds", optarg, 1, 1000); break;
        case 'w': c->warmup = num_arg("--warmup", optarg, 0, 3600); break;
        case 't': c->ttl = num_arg("--ttl", optarg, 0, 1e9); break;
        case 'D': c->disjoint = 1; break;
        case 'S': c->sample = (int)num_arg("--sample", optarg, 0, 1e9); break;
        case 'T':
            if (strcmp(optarg, "clock") == 0)
                *force_clock = 1;
            else if (strcmp(optarg, "tsc") != 0)
                die("--timer %s: want tsc or clock", optarg);
            break;
        case 'j': c->json = optarg; break;
        case 'P': c->plot = optarg; break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (optind < argc) die("unexpected argument %s", argv[optind]);
    if (!c->nurls) {
        usage(stderr);
        exit(2);
    }
    if (c->disjoint && c->keys / (uint32_t)c->max_procs < 2) die("--disjoint needs at least 2 keys per process%s", "");
    check_limit_args(c);
}

/* ---- machine --------------------------------------------------------------------------------- */

static void machine_info(struct machine *m)
{
    memset(m, 0, sizeof *m);
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    snprintf(m->cpu, sizeof m->cpu, "unknown");
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "model name", 10) == 0) {
            char *v = strchr(line, ':');
            if (v) snprintf(m->cpu, sizeof m->cpu, "%.*s", (int)strcspn(v + 2, "\n"), v + 2);
            break;
        }
    if (f) fclose(f);
    m->ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    struct utsname u;
    if (uname(&u) == 0) snprintf(m->kernel, sizeof m->kernel, "%.20s %.60s %.20s", u.sysname, u.release, u.machine);
    if ((f = fopen("/proc/loadavg", "r"))) {
        if (fscanf(f, "%lf", &m->load1) != 1) m->load1 = -1;
        fclose(f);
    }
    m->timer = bench_use_tsc ? "rdtsc" : "clock_gettime(CLOCK_MONOTONIC)";
    m->tsc_ghz = bench_use_tsc ? 1.0 / bench_ns_per_tick : 0;
}

/* ---- stores ---------------------------------------------------------------------------------- */

#ifndef BENCH_HAVE_HIREDIS
static int nohiredis_open(struct store *s, char *err, size_t n)
{
    (void)s;
    snprintf(err, n, "traffic-bench was built without hiredis (pkg-config hiredis not found)");
    return BENCH_SKIP;
}
const struct store_ops store_raw_hiredis = {.prefix = "bench:raw-hiredis", .open = nohiredis_open};
#endif

static const struct store_ops *store_for(const char *url)
{
    static const struct store_ops *const builtin[] = {&store_null, &store_raw_atomic, &store_mutex_table,
                                                      &store_raw_sqlite, &store_raw_hiredis};
    for (size_t i = 0; i < sizeof builtin / sizeof builtin[0]; i++) {
        size_t n = strlen(builtin[i]->prefix);
        if (strncmp(url, builtin[i]->prefix, n) == 0 && (url[n] == '\0' || url[n] == '?')) return builtin[i];
    }
    return strncmp(url, "bench:", 6) == 0 ? NULL : &store_traffic;
}

int bench_prefill_generic(struct store *s, char *err, size_t n)
{
    static const char val[VALUE_LEN + 1] = "prefill-value-16";
    for (uint32_t i = 0; i < s->cfg->keys; i++) {
        int64_t out;
        int rc = s->cfg->op == OP_LIMIT        ? s->ops->limit(s->h, i, &out)
                 : bench_is_counter(s->cfg, i) ? s->ops->incr(s->h, i, &out)
                                               : s->ops->set(s->h, i, val, VALUE_LEN);
        if (rc) {
            snprintf(err, n, "prefill of %s: status %d%s%s", bench_key(i), rc, s->ops == &store_traffic ? " " : "",
                     s->ops == &store_traffic ? traffic_strerror(rc) : "");
            return BENCH_ERR;
        }
    }
    return BENCH_OK;
}

/* Every bytes key reads back a value of VALUE_LEN bytes. */
static int verify_values(struct store *s, char *err, size_t n)
{
    for (uint32_t i = 0; i < s->cfg->keys; i++) {
        if (bench_is_counter(s->cfg, i)) continue;
        size_t len = 0;
        int rc = s->ops->get(s->h, i, &len);
        if (rc || len != VALUE_LEN) {
            snprintf(err, n, "%s reads back status %d, %zu bytes", bench_key(i), rc, len);
            return BENCH_ERR;
        }
    }
    return BENCH_OK;
}

/* ---- one round: fork, run, collect ------------------------------------------------------------ */

struct bench {
    struct bench_cfg cfg;
    struct control *ctl;
    struct worker_result *res; /* shared, one per worker */
    uint32_t *seq;             /* max_procs x SEQ_LEN, inherited */
};

struct round {
    int ok;
    char msg[256];
    double ops_per_sec, ns_per_op, p50, p99, p999, max_ns;
    uint64_t rss_kb, ops, errors, incrs, allowed;
    int64_t first_error;
};

struct urlstate {
    struct store s;
    int state; /* 0 ready, 1 skipped, 2 failed */
    char reason[256];
    int64_t base; /* sum of counters expected now */
    int check_ok;
    char check_msg[256];
    double open_ms, prefill_ms;
};

static void set_phase(struct bench *B, int p)
{
    atomic_store_explicit(&B->ctl->phase, p, memory_order_release);
}

static int wait_ready(int fd, int want, char *msg, size_t n)
{
    int got = 0, bad = 0;
    while (got < want) {
        struct pollfd p = {fd, POLLIN, 0};
        int pr = poll(&p, 1, READY_TIMEOUT_MS);
        if (pr < 0 && errno == EINTR) continue;
        if (pr <= 0) {
            snprintf(msg, n, "workers did not start within %d s", READY_TIMEOUT_MS / 1000);
            return -1;
        }
        char c;
        ssize_t r = read(fd, &c, 1);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            snprintf(msg, n, "a worker died while starting");
            return -1;
        }
        got++;
        bad |= c != 'r';
    }
    return bad ? -1 : 0;
}

/* Waits for every worker; kills the ones still running STOP_GRACE_MS after the stop. */
static int reap_workers(pid_t *pids, int n, char *msg, size_t len)
{
    int bad = 0, left = n;
    uint64_t deadline = bench_now_ns() + (uint64_t)STOP_GRACE_MS * 1000000u;
    while (left > 0) {
        for (int i = 0; i < n; i++) {
            if (!pids[i]) continue;
            int st;
            pid_t r = waitpid(pids[i], &st, WNOHANG);
            if (r == 0) continue;
            if (r < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
                if (!bad)
                    snprintf(msg, len, "worker %d ended abnormally (%s %d)", i,
                             r > 0 && WIFSIGNALED(st) ? "signal" : "status",
                             r > 0 && WIFSIGNALED(st) ? WTERMSIG(st)
                             : r > 0                  ? WEXITSTATUS(st)
                                                      : -1);
                bad = 1;
            }
            pids[i] = 0;
            left--;
        }
        if (left == 0) break;
        if (bench_now_ns() > deadline) {
            for (int i = 0; i < n; i++)
                if (pids[i]) kill(pids[i], SIGKILL);
            if (!bad) snprintf(msg, len, "workers did not stop within %d s and were killed", STOP_GRACE_MS / 1000);
            bad = 1;
            deadline = UINT64_MAX;
        }
        sleep_s(0.002);
    }
    return bad ? -1 : 0;
}

static void collect(struct bench *B, int nprocs, struct round *r)
{
    static struct hist all;
    memset(&all, 0, sizeof all);
    double sum_rate = 0, sum_ns = 0;
    for (int w = 0; w < nprocs; w++) {
        struct worker_result *x = &B->res[w];
        if (x->status != 0) {
            r->ok = 0;
            snprintf(r->msg, sizeof r->msg, "worker %d: %.200s", w, x->msg);
            return;
        }
        if (x->ops && x->elapsed_ns) {
            sum_rate += (double)x->ops * 1e9 / (double)x->elapsed_ns;
            sum_ns += (double)x->elapsed_ns / (double)x->ops;
        }
        r->ops += x->ops;
        r->incrs += x->incrs;
        r->allowed += x->allowed;
        if (x->errors && !r->errors) r->first_error = x->first_error;
        r->errors += x->errors;
        r->rss_kb += x->hwm_kb;
        hist_merge(&all, &x->hist);
    }
    r->ops_per_sec = sum_rate;
    r->ns_per_op = sum_ns / nprocs;
    r->p50 = hist_quantile(&all, 0.50) * bench_ns_per_tick;
    r->p99 = hist_quantile(&all, 0.99) * bench_ns_per_tick;
    r->p999 = hist_quantile(&all, 0.999) * bench_ns_per_tick;
    r->max_ns = (double)all.max * bench_ns_per_tick;
}

static void run_round(struct bench *B, struct store *s, int nprocs, double secs, struct round *r)
{
    memset(r, 0, sizeof *r);
    r->ok = 1;
    if (s->ops->release) s->ops->release(s);
    int ready[2], go[2];
    if (pipe(ready) < 0 || pipe(go) < 0) {
        r->ok = 0;
        snprintf(r->msg, sizeof r->msg, "pipe: %s", strerror(errno));
        return;
    }
    set_phase(B, PHASE_WAIT);
    pid_t pids[BENCH_PROCS_LIMIT];
    int started = 0;
    fflush(NULL);
    for (int w = 0; w < nprocs; w++) {
        pid_t pid = fork();
        if (pid == 0) {
            close(ready[0]);
            close(go[1]);
            bench_worker(s, w, B->seq + (size_t)w * SEQ_LEN, B->ctl, ready[1], go[0], &B->res[w]);
            _exit(0);
        }
        if (pid < 0) {
            snprintf(r->msg, sizeof r->msg, "fork: %s", strerror(errno));
            r->ok = 0;
            break;
        }
        pids[started++] = pid;
    }
    close(ready[1]);
    close(go[0]);
    if (wait_ready(ready[0], started, r->msg, sizeof r->msg) < 0) r->ok = 0;
    set_phase(B, r->ok ? PHASE_WARMUP : PHASE_STOP);
    static const char gobytes[BENCH_PROCS_LIMIT] = {0};
    if (write(go[1], gobytes, (size_t)started) != started) r->ok = 0;
    if (r->ok) {
        sleep_s(B->cfg.warmup);
        set_phase(B, PHASE_MEASURE);
        sleep_s(secs);
        set_phase(B, PHASE_STOP);
    }
    close(go[1]);
    close(ready[0]);
    char msg[256] = "";
    if (reap_workers(pids, started, msg, sizeof msg) < 0 && r->ok) {
        r->ok = 0;
        snprintf(r->msg, sizeof r->msg, "%s", msg);
    }
    if (s->ops->reacquire && s->ops->reacquire(s, msg, sizeof msg) != BENCH_OK && r->ok) {
        r->ok = 0;
        snprintf(r->msg, sizeof r->msg, "%s", msg);
    }
    if (!r->ok) {
        /* a worker's own reason, if it gave one, says more than "died while starting" */
        for (int w = 0; w < started; w++)
            if (B->res[w].status != 0) snprintf(r->msg, sizeof r->msg, "worker %d: %.200s", w, B->res[w].msg);
        return;
    }
    collect(B, nprocs, r);
}

/* After a round: the counters must have grown by exactly the increments done, no operation
 * may have failed, and (set, mixed) every bytes key must read back whole. */
static void check_round(struct urlstate *u, const struct round *r)
{
    char err[256] = "";
    struct store *s = &u->s;
    int ok = 1;
    if (r->errors) {
        ok = 0;
        snprintf(err, sizeof err, "%llu operations failed (first: status %lld%s%s)", (unsigned long long)r->errors,
                 (long long)r->first_error, s->ops == &store_traffic ? " " : "",
                 s->ops == &store_traffic ? traffic_strerror((int)r->first_error) : "");
    }
    if (s->ops->sum) {
        int64_t now = 0;
        if (s->ops->sum(s, &now, err, sizeof err) != BENCH_OK) {
            ok = 0;
        } else if (now != u->base + (int64_t)r->incrs) {
            if (ok)
                snprintf(err, sizeof err, "counters sum to %lld, expected %lld (+%llu increments)", (long long)now,
                         (long long)(u->base + (int64_t)r->incrs), (unsigned long long)r->incrs);
            ok = 0;
        }
        u->base = now;
    }
    if (ok && (s->cfg->op == OP_SET || s->cfg->op == OP_MIXED) && verify_values(s, err, sizeof err) != BENCH_OK) ok = 0;
    if (!ok && u->check_ok) {
        u->check_ok = 0;
        snprintf(u->check_msg, sizeof u->check_msg, "%s", err);
    }
}

static void summarize(const struct round *rs, int n, struct result *out)
{
    double v[6][n];
    int k = 0;
    out->check = 1;
    for (int i = 0; i < n; i++) {
        if (!rs[i].ok) {
            out->skipped = 2;
            snprintf(out->reason, sizeof out->reason, "%s", rs[i].msg);
            return;
        }
        v[0][k] = rs[i].ops_per_sec;
        v[1][k] = rs[i].ns_per_op;
        v[2][k] = rs[i].p50;
        v[3][k] = rs[i].p99;
        v[4][k] = rs[i].p999;
        if (rs[i].max_ns > out->max_ns) out->max_ns = rs[i].max_ns;
        if (rs[i].rss_kb > out->rss_kb) out->rss_kb = rs[i].rss_kb;
        out->ops += rs[i].ops;
        out->allowed += rs[i].allowed;
        out->errors += rs[i].errors;
        k++;
    }
    out->ops_per_sec = median(v[0], k);
    out->ns_per_op = median(v[1], k);
    out->p50 = median(v[2], k);
    out->p99 = median(v[3], k);
    out->p999 = median(v[4], k);
}

/* ---- main ------------------------------------------------------------------------------------ */

static void *map_shared(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) die("mmap: %s", strerror(errno));
    return p;
}

static void make_keys(uint32_t n)
{
    if (!(bench_keys = malloc((size_t)n * KEY_STRIDE))) die("out of memory for the keys%s", "");
    for (uint32_t i = 0; i < n; i++)
        snprintf(bench_keys + (size_t)i * KEY_STRIDE, KEY_STRIDE, "key:%010u", i);
}

static void make_seqs(struct bench *B, int nprocs)
{
    for (int w = 0; w < nprocs; w++)
        bench_make_seq(&B->cfg, w, nprocs, B->seq + (size_t)w * SEQ_LEN);
}

/* The harness alone: bench:null at one process, timed like the real runs. */
static double empty_op_ns(struct bench *B)
{
    struct store s = {.ops = &store_null, .url = "bench:null", .cfg = &B->cfg};
    struct round r;
    double saved = B->cfg.warmup;
    B->cfg.warmup = 0.05;
    run_round(B, &s, 1, 0.3, &r);
    B->cfg.warmup = saved;
    return r.ok ? r.ns_per_op : -1;
}

/* Opens, prefills and sums one store; a failure marks it skipped (1) or failed (2). */
static void open_store(struct urlstate *u, const struct bench_cfg *cfg, const char *url)
{
    u->s = (struct store){.ops = store_for(url), .url = url, .cfg = cfg};
    u->check_ok = 1;
    if (!u->s.ops) {
        u->state = 2;
        snprintf(u->reason, sizeof u->reason,
                 "unknown baseline (want bench:null, bench:raw-atomic, "
                 "bench:mutex-table, bench:raw-sqlite, bench:raw-hiredis)");
        return;
    }
    uint64_t t0 = bench_now_ns();
    int rc = u->s.ops->open(&u->s, u->reason, sizeof u->reason);
    uint64_t t1 = bench_now_ns();
    if (rc == BENCH_OK)
        rc = u->s.ops->prefill ? u->s.ops->prefill(&u->s, u->reason, sizeof u->reason)
                               : bench_prefill_generic(&u->s, u->reason, sizeof u->reason);
    u->open_ms = (double)(t1 - t0) / 1e6;
    u->prefill_ms = (double)(bench_now_ns() - t1) / 1e6;
    if (rc == BENCH_OK && u->s.ops->sum) rc = u->s.ops->sum(&u->s, &u->base, u->reason, sizeof u->reason);
    if (rc != BENCH_OK) {
        u->state = rc == BENCH_SKIP ? 1 : 2;
        fprintf(stderr, "traffic-bench: %s %s: %s\n", rc == BENCH_SKIP ? "skip" : "error", url, u->reason);
    }
}

/* The results of one process count: medians of each URL's rounds, ratios to the first. */
static void results_for(const struct bench_cfg *cfg, int P, struct urlstate *us, const struct round *rounds,
                        struct result *res)
{
    double first = 0;
    for (int ui = 0; ui < cfg->nurls; ui++) {
        struct result *o = &res[ui];
        o->url = cfg->urls[ui];
        o->procs = P;
        o->open_ms = us[ui].open_ms;
        o->prefill_ms = us[ui].prefill_ms;
        if (us[ui].state) {
            o->skipped = us[ui].state;
            snprintf(o->reason, sizeof o->reason, "%s", us[ui].reason);
            continue;
        }
        summarize(&rounds[ui * cfg->rounds], cfg->rounds, o);
        o->check = us[ui].check_ok && !o->skipped;
        snprintf(o->check_msg, sizeof o->check_msg, "%s", us[ui].check_msg);
        if (o->skipped) continue;
        if (first == 0) first = o->ops_per_sec;
        o->ratio = first > 0 ? o->ops_per_sec / first : 0;
    }
}

/* Every process count: the URLs' rounds interleaved (round r starts with URL r mod n). */
static void run_all(struct bench *B, struct urlstate *us, struct result *res, struct machine *m)
{
    struct bench_cfg *cfg = &B->cfg;
    struct round *rounds = calloc((size_t)cfg->rounds * cfg->nurls, sizeof *rounds);
    if (!rounds) die("out of memory%s", "");
    for (int pi = 0; pi < cfg->nprocs; pi++) {
        int P = cfg->procs[pi];
        make_seqs(B, P);
        if (pi == 0) m->empty_op_ns = empty_op_ns(B);
        for (int r = 0; r < cfg->rounds; r++)
            for (int k = 0; k < cfg->nurls; k++) {
                int ui = (k + r) % cfg->nurls;
                if (us[ui].state) continue;
                struct round *rd = &rounds[ui * cfg->rounds + r];
                run_round(B, &us[ui].s, P, cfg->seconds / cfg->rounds, rd);
                if (rd->ok) check_round(&us[ui], rd);
            }
        results_for(cfg, P, us, rounds, &res[pi * cfg->nurls]);
    }
    free(rounds);
}

int main(int argc, char **argv)
{
    struct bench B;
    int force_clock = 0;
    parse_args(argc, argv, &B.cfg, &force_clock);
    struct bench_cfg *cfg = &B.cfg;
    signal(SIGPIPE, SIG_IGN);
    bench_timer_init(force_clock);
    struct machine m;
    machine_info(&m);
    make_keys(cfg->keys);
    B.ctl = map_shared(sizeof *B.ctl);
    B.res = map_shared((size_t)cfg->max_procs * sizeof *B.res);
    B.seq = mmap(NULL, (size_t)cfg->max_procs * SEQ_LEN * sizeof *B.seq, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (B.seq == MAP_FAILED) die("mmap: %s", strerror(errno));

    int nres = cfg->nprocs * cfg->nurls;
    struct urlstate *us = calloc((size_t)cfg->nurls, sizeof *us);
    struct result *res = calloc((size_t)nres, sizeof *res);
    if (!us || !res) die("out of memory%s", "");
    for (int i = 0; i < cfg->nurls; i++)
        open_store(&us[i], cfg, cfg->urls[i]);
    run_all(&B, us, res, &m);
    bench_zipf_free();

    report_table(cfg, res, nres, &m);
    int status = 0;
    if (cfg->json && report_json(cfg->json, cfg, res, nres, &m) < 0) status = 1;
    if (cfg->plot && report_svg(cfg->plot, cfg, res, nres) < 0) status = 1;
    for (int i = 0; i < nres; i++)
        if (res[i].skipped == 2 || (!res[i].skipped && !res[i].check)) status = 1;
    for (int i = 0; i < cfg->nurls; i++) {
        if (us[i].s.ops && us[i].s.ops->close) us[i].s.ops->close(&us[i].s);
        free(us[i].s.eff_url);
    }
    free(us);
    free(res);
    free(bench_keys);
    return status;
}
