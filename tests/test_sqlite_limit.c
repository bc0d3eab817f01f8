/*
 * test_sqlite_limit.c — rate-limit decisions (traffic_limit) on the SQLite backend, with real
 * files and real processes: how a state is stored in the file, processes deciding on one key
 * at once (exactly the quota, no SQLITE_BUSY), SIGKILL in the middle of decisions and between
 * a decision's write and its commit, reopening, the busy timeout, and a differential test of
 * traffic_limit_at against traffic_limit_apply computed here. The backend-generic behaviour
 * (every algorithm's answers, ETYPE, delete, get's JSON) is the contract's (tests/contract.c).
 *
 * Every test works in its own directory under one mkdtemp() directory per run, removed at
 * the end by the unchecked fixture.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "limit/limit.h"
#include "sqlite_testutil.h"
#include "testutil.h"

/* White-box hook of backends/sqlite_limit.c: nonzero makes a decision that has written its
 * state SIGKILL its own process before COMMIT. */
extern _Atomic int sqlite_debug_limit_crash;

/* ---- scratch directories ----------------------------------------------------------------- */

/* The suite's scratch directory, and the helpers on it: sqlite_testutil.h. */
static void base_setup(void)
{
    tsq_setup("sqlite-limit");
}

static void base_teardown(void)
{
    tsq_teardown();
}

/* traffic_get's text of key (static buffer), or NULL when the key is absent. */
static const char *get_text(traffic_backend *b, const char *key)
{
    static char buf[4096];
    size_t len = 0;
    int rc = traffic_get(b, key, buf, sizeof buf - 1, &len);
    if (rc == TRAFFIC_ENOTFOUND) return NULL;
    ck_assert_msg(rc == TRAFFIC_OK, "get %s: %s (%s)", key, traffic_strerror(rc), traffic_errmsg(b));
    buf[len] = 0;
    return buf;
}

static int64_t wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---- the stored form ------------------------------------------------------------------- */

/* A state is a kind-0 row marked by counter = 1 + the algorithm, its value the integers
 * a, b, c (and the log) as little-endian int64, its expiry the wall clock + reset_after
 * (with the slack of sqlite_limit.c). */
START_TEST(limit_row_format)
{
    const char *p = tsq_db("format");
    traffic_backend *b = tsq_open(p, NULL);
    traffic_rule tb = tu_rule("token_bucket:10/10s"), sw = tu_rule("sliding_window:5/60s");
    traffic_decision d;
    int64_t before = wall_us();
    TU_OK(b, traffic_limit(b, "tb", &tb, 3, &d));
    int64_t after = wall_us();
    ck_assert(d.allowed && d.remaining == 7 && d.reset_after == 3.0);
    ck_assert_int_eq(tsq_raw_int(p, "SELECT kind FROM traffic_entries WHERE key = 'tb'"), 0);
    ck_assert_int_eq(tsq_raw_int(p, "SELECT counter FROM traffic_entries WHERE key = 'tb'"), 1 + TRAFFIC_TOKEN_BUCKET);
    ck_assert_int_eq(tsq_raw_int(p, "SELECT length(value) FROM traffic_entries WHERE key = 'tb'"), 24);
    long long e = tsq_raw_int(p, "SELECT expires FROM traffic_entries WHERE key = 'tb'");
    /* at least reset_after, and at most an eighth more (+1 ms): the slack of sqlite_limit.c */
    ck_assert_msg(e >= (before + 3000000) / 1000 && e <= (after + 3000000 + 999) / 1000 + 3000 / 8 + 2,
                  "expires %lld, before %lld us", e, (long long)before);
    /* the value: tat_us, little-endian, then two zero words */
    long long tat = 0;
    ck_assert_int_eq(sscanf(get_text(b, "tb"), "{\"algorithm\":\"token_bucket\",\"tat_us\":%lld}", &tat), 1);
    ck_assert(tat >= before + 3000000 && tat <= after + 3000000);
    char hex[64];
    for (int i = 0; i < 8; i++)
        snprintf(hex + 2 * i, 3, "%02X", (unsigned)((unsigned long long)tat >> (8 * i)) & 0xff);
    snprintf(hex + 16, sizeof hex - 16, "%032d", 0);
    ck_assert_str_eq(tsq_raw_text(p, "SELECT hex(value) FROM traffic_entries WHERE key = 'tb'"), hex);
    /* the sliding log: 24 bytes, then 16 per entry */
    TU_OK(b, traffic_limit_at(b, "sw", &sw, 1, 1000, &d));
    TU_OK(b, traffic_limit_at(b, "sw", &sw, 2, 2000, &d));
    ck_assert_int_eq(tsq_raw_int(p, "SELECT counter FROM traffic_entries WHERE key = 'sw'"), 1 + TRAFFIC_SLIDING_WINDOW);
    ck_assert_str_eq(tsq_raw_text(p, "SELECT hex(value) FROM traffic_entries WHERE key = 'sw'"),
                     "000000000000000000000000000000000000000000000000"
                     "E8030000000000000100000000000000D0070000000000000200000000000000");
    ck_assert_str_eq(get_text(b, "sw"), "{\"algorithm\":\"sliding_window\",\"log\":[[1000,1],[2000,2]]}");
    /* increment names what the key holds; a bytes value is still told apart */
    ck_assert_int_eq(traffic_increment(b, "tb", 1, 0, NULL), TRAFFIC_ETYPE);
    ck_assert_ptr_nonnull(strstr(traffic_errmsg(b), "token_bucket rate-limit state"));
    TU_OK(b, traffic_set(b, "v", "", 0, 0));
    ck_assert_int_eq(traffic_limit(b, "v", &tb, 1, &d), TRAFFIC_ETYPE);
    ck_assert_ptr_nonnull(strstr(traffic_errmsg(b), "bytes"));
    ck_assert_int_eq(traffic_limit(b, "sw", &tb, 1, &d), TRAFFIC_ETYPE);
    ck_assert_ptr_nonnull(strstr(traffic_errmsg(b), "sliding_window rate-limit state"));
    /* a damaged state is reported, not decided on */
    sqlite3 *db = tsq_raw_open(p);
    ck_assert_int_eq(sqlite3_exec(db, "UPDATE traffic_entries SET value = x'0102' WHERE key = 'tb'", 0, 0, 0),
                     SQLITE_OK);
    sqlite3_close(db);
    ck_assert_int_eq(traffic_limit(b, "tb", &tb, 1, &d), TRAFFIC_ECORRUPT);
    size_t len;
    char buf[64];
    ck_assert_int_eq(traffic_get(b, "tb", buf, sizeof buf, &len), TRAFFIC_ECORRUPT);
    struct traffic_stats st = tu_stats(b);
    ck_assert_uint_eq(st.decisions, 3);
    ck_assert_uint_eq(st.denied, 0);
    TU_OK(b, traffic_close(b));
    ck_assert_int_eq(tsq_raw_int(p, "PRAGMA user_version"), 1); /* no schema change */
}
END_TEST

/* Expired rows act as absent, whatever they held, though still in the file. */
START_TEST(limit_expired_is_absent)
{
    const char *p = tsq_db("expired");
    traffic_backend *b = tsq_open(p, NULL);
    traffic_rule fw = tu_rule("fixed_window:2/500ms"), tb = tu_rule("token_bucket:5/1s");
    traffic_decision d;
    TU_OK(b, traffic_limit(b, "k", &fw, 1, &d));
    TU_OK(b, traffic_limit(b, "k", &fw, 1, &d));
    TU_OK(b, traffic_limit(b, "k", &fw, 1, &d));
    ck_assert_int_eq(d.allowed, 0);
    TU_OK(b, traffic_increment(b, "c", 1, 0.5, NULL));
    TU_OK(b, traffic_set(b, "v", "x", 1, 0.5));
    tu_sleep_ms(700);
    ck_assert_int_eq(tsq_raw_int(p, "SELECT count(*) FROM traffic_entries"), 3); /* not swept */
    ck_assert_int_eq(traffic_exists(b, "k"), 0);
    ck_assert_ptr_null(get_text(b, "k"));
    const char *keys[] = {"k", "c", "v"};
    for (int i = 0; i < 3; i++) {
        TU_OK(b, traffic_limit(b, keys[i], &tb, 1, &d)); /* another algorithm, a counter, bytes: gone */
        ck_assert(d.allowed && d.remaining == 4);
    }
    struct traffic_stats st = tu_stats(b);
    ck_assert_uint_eq(st.decisions, 6);
    ck_assert_uint_eq(st.denied, 1);
    TU_OK(b, traffic_close(b));
}
END_TEST

/* ---- processes --------------------------------------------------------------------------- */

#define PROCS           6
#define PROC_DECISIONS  300
#define PROC_FIXED_TIME 1000000000 /* µs: the instant of the traffic_limit_at runs */

typedef struct proc_case {
    const char *rule;
    int64_t quota;
    int at;            /* 1: traffic_limit_at(PROC_FIXED_TIME); 0: traffic_limit, the wall clock */
    int64_t refill_ms; /* one more may pass per refill_ms of the run (0: none) */
} proc_case;

static const proc_case proc_cases[] = {
    {"fixed_window:100/60s", 100, 0, 0},
    {"sliding_window:50/60s", 50, 0, 0},
    {"token_bucket:100/60s", 100, 1, 0},
    {"token_bucket:100/60s", 100, 0, 600}, /* on the wall clock it refills while the test runs */
};

/* PROCS processes, each with its own handle, decide PROC_DECISIONS times on one key, all
 * starting together: exactly the quota passes, and no call fails (no SQLITE_BUSY). */
START_TEST(limit_procs_exact_quota)
{
    for (size_t k = 0; k < sizeof proc_cases / sizeof *proc_cases; k++) {
        const proc_case *pc = &proc_cases[k];
        const char *p = tsq_db("procs");
        traffic_backend *b = tsq_open(p, NULL);
        TU_OK(b, traffic_close(b));
        traffic_rule r = tu_rule(pc->rule);
        uint64_t *sh = tu_shared(4096), *ready = sh, *go = sh + 1, *allowed = sh + 2, *errs = sh + 3, *retries = sh + 4,
                 *first_err = sh + 5;
        pid_t pids[PROCS];
        for (int w = 0; w < PROCS; w++) {
            if ((pids[w] = fork()) == 0) {
                traffic_backend *c = NULL;
                if (traffic_open(tsq_url(p, NULL), &c) != TRAFFIC_OK) _exit(1);
                __atomic_add_fetch(ready, 1, __ATOMIC_SEQ_CST);
                while (!__atomic_load_n(go, __ATOMIC_SEQ_CST)) {
                }
                for (int i = 0; i < PROC_DECISIONS; i++) {
                    traffic_decision d;
                    int rc = pc->at ? traffic_limit_at(c, "k", &r, 1, PROC_FIXED_TIME, &d)
                                    : traffic_limit(c, "k", &r, 1, &d);
                    if (rc != TRAFFIC_OK) {
                        __atomic_add_fetch(errs, 1, __ATOMIC_RELAXED);
                        __atomic_store_n(first_err, (uint64_t)-rc, __ATOMIC_RELAXED);
                    } else if (d.allowed) {
                        __atomic_add_fetch(allowed, 1, __ATOMIC_RELAXED);
                    }
                }
                struct traffic_stats st;
                traffic_stats(c, &st);
                __atomic_add_fetch(retries, st.busy_retries, __ATOMIC_RELAXED);
                traffic_close(c);
                _exit(0);
            }
        }
        while (__atomic_load_n(ready, __ATOMIC_SEQ_CST) < PROCS)
            tu_sleep_ms(1);
        int64_t t0 = tu_now_ms();
        __atomic_store_n(go, 1, __ATOMIC_SEQ_CST);
        for (int w = 0; w < PROCS; w++)
            ck_assert_int_eq(tu_wait(pids[w]), 0);
        int64_t took = tu_now_ms() - t0;
        ck_assert_msg(*errs == 0, "%s: %llu calls failed (last %s)", pc->rule, (unsigned long long)*errs,
                      traffic_strerror(-(int)*first_err));
        int64_t most = pc->quota + (pc->refill_ms ? took / pc->refill_ms + 1 : 0);
        ck_assert_msg((int64_t)*allowed >= pc->quota && (int64_t)*allowed <= most, "%s: %llu allowed, want %lld..%lld",
                      pc->rule, (unsigned long long)*allowed, (long long)pc->quota, (long long)most);
        ck_assert_str_eq(tsq_raw_text(p, "PRAGMA integrity_check"), "ok");
        printf("limit_procs_exact_quota: %s%s: %d x %d decisions, %llu allowed, %llu busy retries, %lld ms\n", pc->rule,
               pc->at ? " (fixed instant)" : "", PROCS, PROC_DECISIONS, (unsigned long long)*allowed,
               (unsigned long long)*retries, (long long)took);
        munmap(sh, 4096);
    }
}
END_TEST

/* Workers decide on one key (fixed_window 1000/60s; the three that live make 1200 requests)
 * and publish each acknowledged admission; one is SIGKILLed in the middle, in several rounds
 * at different moments. The others finish without an error, the file passes integrity_check, the
 * acknowledged admissions never exceed the rule, and the stored count is the quota: every
 * acknowledged admission is in it, plus at most the killed worker's decision in flight. */
#define KILL_WORKERS   4
#define KILL_DECISIONS 400
#define KILL_QUOTA     1000

static void kill_worker(const char *p, int w, volatile uint64_t *done, volatile uint64_t *acked, uint64_t *errs)
{
    traffic_backend *c = NULL;
    if (traffic_open(tsq_url(p, NULL), &c) != TRAFFIC_OK) _exit(1);
    traffic_rule r = {.algorithm = TRAFFIC_FIXED_WINDOW, .limit = KILL_QUOTA, .window = 60};
    for (int i = 0; i < (w == 0 ? 10 * KILL_DECISIONS : KILL_DECISIONS); i++) { /* 0 is killed before its end */
        traffic_decision d;
        if (traffic_limit(c, "k", &r, 1, &d) != TRAFFIC_OK)
            __atomic_add_fetch(errs, 1, __ATOMIC_RELAXED);
        else if (d.allowed)
            acked[w]++;
        done[w]++;
    }
    traffic_close(c);
    _exit(0);
}

START_TEST(limit_sigkill_mid_decisions)
{
    for (int round = 0; round < 5; round++) {
        const char *p = tsq_db("kill");
        traffic_backend *b = tsq_open(p, NULL);
        TU_OK(b, traffic_close(b));
        uint64_t *sh = tu_shared(4096), *errs = sh + 64;
        volatile uint64_t *done = sh, *acked = sh + 16;
        pid_t pids[KILL_WORKERS];
        for (int w = 0; w < KILL_WORKERS; w++)
            if ((pids[w] = fork()) == 0) kill_worker(p, w, done, acked, errs);
        for (int ms = 0; done[0] < (uint64_t)(20 + round * 70); ms++) {
            ck_assert_msg(ms < 60000, "worker 0 made no progress");
            tu_sleep_ms(1);
        }
        kill(pids[0], SIGKILL);
        ck_assert_int_eq(tu_wait(pids[0]), 128 + SIGKILL);
        for (int w = 1; w < KILL_WORKERS; w++)
            ck_assert_int_eq(tu_wait(pids[w]), 0);
        ck_assert_uint_eq(*errs, 0);
        ck_assert_str_eq(tsq_raw_text(p, "PRAGMA integrity_check"), "ok");
        uint64_t total = 0;
        for (int w = 0; w < KILL_WORKERS; w++)
            total += acked[w];
        b = tsq_open(p, NULL);
        long long start = 0, count = 0;
        ck_assert_int_eq(sscanf(get_text(b, "k"),
                                "{\"algorithm\":\"fixed_window\",\"window_start_us\":%lld,\"count\":%lld}", &start,
                                &count),
                         2);
        ck_assert_msg(total <= KILL_QUOTA && count == KILL_QUOTA && total + 1 >= (uint64_t)count,
                      "round %d: %llu acknowledged, %lld stored, quota %d", round, (unsigned long long)total, count,
                      KILL_QUOTA);
        TU_OK(b, traffic_close(b));
        munmap(sh, 4096);
    }
}
END_TEST

/* A process killed after its decision wrote the new state and before COMMIT: nothing of
 * that decision remains, the file is sound, and the next decision goes ahead at once. */
START_TEST(limit_crash_before_commit)
{
    const char *p = tsq_db("crash");
    traffic_backend *b = tsq_open(p, NULL);
    traffic_rule r = tu_rule("fixed_window:10/60s");
    traffic_decision d;
    for (int i = 0; i < 3; i++)
        TU_OK(b, traffic_limit_at(b, "k", &r, 1, 5000000, &d));
    char before[256];
    snprintf(before, sizeof before, "%s", get_text(b, "k"));
    for (int round = 0; round < 3; round++) {
        pid_t pid = fork();
        if (pid == 0) {
            traffic_backend *c = NULL;
            if (traffic_open(tsq_url(p, NULL), &c) != TRAFFIC_OK) _exit(1);
            sqlite_debug_limit_crash = 1;
            traffic_limit_at(c, "k", &r, 2, 5000000, &d); /* does not return */
            _exit(2);
        }
        ck_assert_int_eq(tu_wait(pid), 128 + SIGKILL);
        ck_assert_str_eq(get_text(b, "k"), before);
    }
    ck_assert_str_eq(tsq_raw_text(p, "PRAGMA integrity_check"), "ok");
    TU_OK(b, traffic_limit_at(b, "k", &r, 1, 5000000, &d)); /* ETIMEDOUT if the lock outlived its holder */
    ck_assert(d.allowed && d.remaining == 6);
    ck_assert_str_eq(get_text(b, "k"), "{\"algorithm\":\"fixed_window\",\"window_start_us\":5000000,\"count\":4}");
    TU_OK(b, traffic_close(b));
}
END_TEST

/* The state survives closing the file, and another process reads and continues it. */
START_TEST(limit_reopen_keeps_state)
{
    const char *p = tsq_db("reopen");
    traffic_backend *b = tsq_open(p, NULL);
    traffic_rule r = tu_rule("leaky_bucket:10/1h,burst=4");
    traffic_decision d;
    int64_t t = 7000000000;
    for (int i = 0; i < 3; i++)
        TU_OK(b, traffic_limit_at(b, "lb", &r, 1, t, &d));
    ck_assert(d.allowed && d.remaining == 2);
    char before[256];
    snprintf(before, sizeof before, "%s", get_text(b, "lb"));
    ck_assert_str_eq(before, "{\"algorithm\":\"leaky_bucket\",\"tat_us\":8080000000}"); /* t + 3 I, I = 360 s */
    TU_OK(b, traffic_close(b));
    b = tsq_open(p, NULL);
    ck_assert_str_eq(get_text(b, "lb"), before);
    double ttl;
    TU_OK(b, traffic_ttl(b, "lb", &ttl));
    ck_assert_msg(ttl > 1079 && ttl <= 1080 + 1080 / 8 + 0.002, "ttl %f", ttl); /* reset_after 3 I, + slack */
    pid_t pid = fork();
    if (pid == 0) {
        traffic_backend *c = NULL;
        traffic_decision e;
        if (traffic_open(tsq_url(p, NULL), &c) != TRAFFIC_OK) _exit(1);
        if (traffic_limit_at(c, "lb", &r, 1, t, &e) != TRAFFIC_OK || !e.allowed || e.remaining != 1) _exit(2);
        traffic_close(c);
        _exit(0);
    }
    ck_assert_int_eq(tu_wait(pid), 0);
    TU_OK(b, traffic_limit_at(b, "lb", &r, 0, t, &d)); /* a peek */
    ck_assert(d.allowed && d.remaining == 1 && d.delay == 4 * 360.0);
    ck_assert_str_eq(get_text(b, "lb"), "{\"algorithm\":\"leaky_bucket\",\"tat_us\":8440000000}");
    TU_OK(b, traffic_close(b));
}
END_TEST

/* Another connection holds the write lock: a decision waits the handle's timeout and then
 * fails with TRAFFIC_ETIMEDOUT, never earlier; once the lock is free it goes through. */
START_TEST(limit_busy_timeout)
{
    const char *p = tsq_db("busy");
    traffic_backend *b = tsq_open(p, "timeout=0.3");
    traffic_rule r = tu_rule("token_bucket:5/1s");
    traffic_decision d;
    TU_OK(b, traffic_limit(b, "k", &r, 1, &d));
    sqlite3 *db = tsq_raw_open(p);
    ck_assert_int_eq(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    int64_t t0 = tu_now_ms();
    ck_assert_int_eq(traffic_limit(b, "k", &r, 1, &d), TRAFFIC_ETIMEDOUT);
    int64_t waited = tu_now_ms() - t0;
    ck_assert_msg(waited >= 290, "gave up after %lld ms", (long long)waited);
    ck_assert_ptr_nonnull(strstr(traffic_errmsg(b), "locked"));
    ck_assert_int_eq(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    TU_OK(b, traffic_limit(b, "k", &r, 1, &d));
    ck_assert_int_eq(d.allowed, 1);
    struct traffic_stats st = tu_stats(b);
    ck_assert_uint_eq(st.decisions, 2); /* the failed call is not a decision */
    TU_OK(b, traffic_close(b));
}
END_TEST

/* ---- differential: the store against traffic_limit_apply here ---------------------------- *
 *
 * Random rules and random sequences of (time step, cost, sometimes a delete) on one key per
 * sequence: each decision of traffic_limit_at must equal traffic_limit_apply's on a state kept
 * here (written back only when apply returns 1, as the store must), field by field, and
 * traffic_get must show that state. The simulated instant is the wall clock plus an offset
 * that grows by at least DIFF_MIN_STEP_US a step, so simulated time runs faster than the real
 * time the store's expiry runs on (by more than the few µs between the test's reading of the
 * clock and the store's): a row can only have expired once the state it held has aged back
 * to unused, where both sides decide alike. */

#define DIFF_SEQS        12 /* per algorithm */
#define DIFF_STEPS       80
#define DIFF_MIN_STEP_US 5000

typedef struct model {
    traffic_limit_state st;
    traffic_limit_entry log[64];
    int present;             /* written since the last delete */
    int64_t wrote_before_us; /* the wall clock just before the call that last wrote */
    int64_t reset_us;        /* its reset_after */
} model;

static uint64_t rng_state;

static uint64_t rnd(uint64_t n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return n ? rng_state % n : 0;
}

static traffic_rule random_rule(traffic_algorithm a)
{
    static const double windows[] = {0.05, 0.25, 1, 7.5, 60, 3600};
    traffic_rule r = {.algorithm = a, .limit = 1 + (int64_t)rnd(a == TRAFFIC_SLIDING_WINDOW ? 40 : 200)};
    r.window = windows[rnd(sizeof windows / sizeof *windows)];
    if (a == TRAFFIC_TOKEN_BUCKET || a == TRAFFIC_LEAKY_BUCKET) r.burst = rnd(3) ? 0 : (int64_t)rnd(50);
    while (traffic_limit_check(&r, NULL, 0) != TRAFFIC_OK)
        r.window *= 10; /* a bucket faster than 1 per µs */
    return r;
}

static int64_t random_cost(const traffic_rule *r)
{
    switch (rnd(10)) {
    case 0: return 0; /* a peek */
    case 1: return 2 + (int64_t)rnd(5);
    case 2: return r->limit + (int64_t)rnd(3); /* at or over what can ever pass */
    default: return 1;
    }
}

static void check_get(traffic_backend *b, const char *key, const model *m, traffic_algorithm a, uint64_t seed)
{
    char want[4096];
    limit_state_json(a, &m->st, want, sizeof want);
    const char *got = get_text(b, key);
    int64_t after = wall_us();
    if (got) {
        ck_assert_msg(m->present && strcmp(got, want) == 0, "seed %llu %s: get %s, want %s", (unsigned long long)seed,
                      key, got, m->present ? want : "absent");
    } else { /* absent: deleted, or expired, which needs reset_after of real time since the write */
        ck_assert_msg(!m->present || after - m->wrote_before_us >= m->reset_us,
                      "seed %llu %s: absent %lld us after a write with reset_after %lld us", (unsigned long long)seed,
                      key, (long long)(after - m->wrote_before_us), (long long)m->reset_us);
    }
}

static void diff_sequence(traffic_backend *b, traffic_algorithm a, int seq, uint64_t seed)
{
    traffic_rule r = random_rule(a);
    char key[32];
    snprintf(key, sizeof key, "d%d-%d", (int)a, seq);
    model m = {.st = {.log_cap = 64}};
    m.st.log = m.log;
    int64_t offset = 0, W = limit_window_us(r.window);
    for (int step = 0; step < DIFF_STEPS; step++) {
        offset += DIFF_MIN_STEP_US;
        switch (rnd(8)) { /* how much further simulated time moves */
        case 0: offset += (int64_t)rnd((uint64_t)W * 3); break;
        case 1: offset += (int64_t)rnd((uint64_t)W / 4 + 1); break;
        default: break;
        }
        if (rnd(40) == 0) {
            TU_OK(b, traffic_delete(b, key));
            memset(&m.st, 0, sizeof m.st);
            m.st.log = m.log;
            m.st.log_cap = 64;
            m.present = 0;
            continue;
        }
        int64_t cost = random_cost(&r), before = wall_us(), now = before + offset;
        traffic_limit_state next = m.st;
        traffic_limit_entry next_log[64];
        memcpy(next_log, m.log, sizeof next_log);
        next.log = next_log;
        traffic_decision want, got;
        int changed = traffic_limit_apply(&r, &next, now, cost, &want);
        ck_assert_int_ge(changed, 0);
        int rc = traffic_limit_at(b, key, &r, cost, now, &got);
        ck_assert_msg(rc == TRAFFIC_OK, "seed %llu: %s (%s)", (unsigned long long)seed, traffic_strerror(rc),
                      traffic_errmsg(b));
        ck_assert_msg(got.allowed == want.allowed && got.limit == want.limit && got.remaining == want.remaining &&
                          got.reset_after == want.reset_after && got.retry_after == want.retry_after &&
                          got.delay == want.delay,
                      "seed %llu, %s %s limit %lld window %g burst %lld, step %d at %lld cost %lld: "
                      "store {%d %lld %lld %.6f %.6f %.6f} apply {%d %lld %lld %.6f %.6f %.6f}",
                      (unsigned long long)seed, key, traffic_algorithm_name(a), (long long)r.limit, r.window,
                      (long long)r.burst, step, (long long)now, (long long)cost, got.allowed, (long long)got.limit,
                      (long long)got.remaining, got.reset_after, got.retry_after, got.delay, want.allowed,
                      (long long)want.limit, (long long)want.remaining, want.reset_after, want.retry_after, want.delay);
        if (changed) {
            m.st = next;
            memcpy(m.log, next_log, sizeof m.log);
            m.st.log = m.log;
            m.present = 1;
            m.wrote_before_us = before;
            m.reset_us = llround(want.reset_after * 1e6);
        }
        check_get(b, key, &m, a, seed);
    }
}

START_TEST(limit_differential)
{
    const char *env = getenv("TRAFFIC_TEST_SEED"); /* to replay a failure */
    uint64_t seed = env ? strtoull(env, NULL, 10) : (uint64_t)wall_us() | 1;
    rng_state = seed;
    const char *p = tsq_db("diff");
    traffic_backend *b = tsq_open(p, NULL);
    for (int a = 0; a <= TRAFFIC_LEAKY_BUCKET; a++)
        for (int seq = 0; seq < DIFF_SEQS; seq++)
            diff_sequence(b, (traffic_algorithm)a, seq, seed);
    struct traffic_stats st = tu_stats(b);
    printf("limit_differential: seed %llu, %llu decisions, %llu denied\n", (unsigned long long)seed,
           (unsigned long long)st.decisions, (unsigned long long)st.denied);
    ck_assert_uint_gt(st.denied, 0);
    TU_OK(b, traffic_close(b));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sqlite_limit");
    TCase *tc = tcase_create("sqlite_limit");
    tcase_add_unchecked_fixture(tc, base_setup, base_teardown);
    tcase_add_test(tc, limit_row_format);
    tcase_add_test(tc, limit_expired_is_absent);
    tcase_add_test(tc, limit_procs_exact_quota);
    tcase_add_test(tc, limit_sigkill_mid_decisions);
    tcase_add_test(tc, limit_crash_before_commit);
    tcase_add_test(tc, limit_reopen_keeps_state);
    tcase_add_test(tc, limit_busy_timeout);
    tcase_add_test(tc, limit_differential);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
