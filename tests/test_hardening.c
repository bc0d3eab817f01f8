/*
 * test_hardening.c — a memory table does not trust what it reads from the mapping (issue 11):
 * each test damages a table the way another process or a stray write could, and the library
 * must answer with a status, never a crash, a hang or a wrong success.
 *   - an increment that would overflow, raced by a large add on the CAS path, is refused;
 *   - on each side of the fast path's bounds and of INT64_MAX / INT64_MIN, sums are exact and
 *     overflows refused;
 *   - a header whose participant high-water mark is out of range: stats and operations work;
 *   - participant records whose mutex kind is damaged are left alone, not locked;
 *   - a record whose incarnation is spent (its tokens would repeat) is never claimed;
 *   - geometry changed in the header after attach (value_max, key_max raised) moves nothing;
 *   - probe bounds of 0xffffffff in every slot: lookups end;
 *   - a cleanup interval of 0 is refused at attach;
 *   - a sliding-log decision being written is not thrown away by another caller that judged
 *     the entry expired from the log it replaces (found in review: one admission too many);
 *   - the table's clock (shm/clock.c, the TSC calibrated in the header) keeps within 50 µs of
 *     CLOCK_MONOTONIC and never goes back, in two processes at once;
 *   - damaged clock parameters in the header (a base 10^6 s ahead with an endless span, a
 *     huge rate, a first anchor far back) are replaced within a resync period, and the
 *     clock is CLOCK_MONOTONIC again;
 *   - a decision whose clock reading runs ahead of CLOCK_MONOTONIC (as a damaged table clock
 *     did; fuzz_table found it) on an entry expired by that reading and alive by
 *     CLOCK_MONOTONIC replaces it, instead of looking it up again until the two agree;
 *   - a full /dev/shm (a 4 MiB tmpfs in a private mount namespace; needs root, as CI runs)
 *     makes operations fail with TRAFFIC_EFULL instead of killing the process with SIGBUS,
 *     and what was stored stays readable.
 * White-box: the offsets come from shm/layout.h.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../shm/layout.h"
#include "testutil.h"

static void path_of(char *buf, size_t n, const char *name)
{
    snprintf(buf, n, "/dev/shm/traffic.%s", name);
}

static void poke(const char *name, off_t off, const void *data, size_t n)
{
    char path[512];
    path_of(path, sizeof path, name);
    int fd = open(path, O_RDWR);
    ck_assert_msg(fd >= 0, "open %s", path);
    ck_assert_int_eq(pwrite(fd, data, n, off), (ssize_t)n);
    close(fd);
}

static void peek(const char *name, off_t off, void *data, size_t n)
{
    char path[512];
    path_of(path, sizeof path, name);
    int fd = open(path, O_RDONLY);
    ck_assert_msg(fd >= 0, "open %s", path);
    ck_assert_int_eq(pread(fd, data, n, off), (ssize_t)n);
    close(fd);
}

static traffic_backend *open_named(const char *name, const char *extra)
{
    char url[512];
    tu_memory_url(url, sizeof url, name, extra);
    traffic_backend *b = NULL;
    TU_OK(NULL, traffic_open(url, &b));
    return b;
}

/* Runs fn(arg) in a child under a watchdog: 0 if it exited 0 within the time. */
static int in_child(void (*fn)(const char *), const char *arg, unsigned seconds)
{
    pid_t p = fork();
    ck_assert_int_ge(p, 0);
    if (p == 0) {
        alarm(seconds);
        fn(arg);
        _exit(0);
    }
    return tu_wait(p);
}

/* ---- 1. overflow on the fast path -------------------------------------------------------- */

#define BIG   (INT64_MAX - (INT64_C(1) << 46))
#define SMALL (INT64_C(1) << 47)

struct race {
    traffic_backend *b;
    atomic_int stop;
    atomic_long wrong; /* an increment that succeeded with a negative result */
    atomic_long wrong_reads;
    atomic_long ok, refused;
};

static void *small_adder(void *arg)
{
    struct race *r = arg;
    while (!atomic_load(&r->stop)) {
        int64_t v;
        int rc = traffic_increment(r->b, "edge", SMALL, 0, &v);
        if (rc == TRAFFIC_OK && v < 0) atomic_fetch_add(&r->wrong, 1);
        if (rc == TRAFFIC_OK) atomic_fetch_add(&r->ok, 1);
        if (rc == TRAFFIC_EOVERFLOW) atomic_fetch_add(&r->refused, 1);
    }
    return NULL;
}

/* Every add is positive and the counter starts at 0, so no result may be negative. */
START_TEST(h_overflow_race_refused)
{
    struct race r = {.b = NULL};
    TU_OK(NULL, traffic_open("memory://", &r.b));
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, small_adder, &r), 0);
    int64_t end = tu_now_ms() + 1500;
    while (tu_now_ms() < end) {
        int64_t v;
        TU_OK(r.b, traffic_delete(r.b, "edge"));
        int rc = traffic_increment(r.b, "edge", BIG, 0, &v);
        if (rc == TRAFFIC_OK && v < 0) atomic_fetch_add(&r.wrong, 1);
        for (int i = 0; i < 50; i++) {
            char buf[32];
            size_t len;
            if (traffic_get(r.b, "edge", buf, sizeof buf - 1, &len) == TRAFFIC_OK) {
                buf[len] = 0;
                if (buf[0] == '-') atomic_fetch_add(&r.wrong_reads, 1);
            }
        }
    }
    atomic_store(&r.stop, 1);
    pthread_join(th, NULL);
    int64_t v = tu_counter(r.b, "edge");
    ck_assert_int_ge(v, 0);
    fprintf(stderr, "overflow race: %ld ok, %ld refused, %ld negative reads\n", atomic_load(&r.ok),
            atomic_load(&r.refused), atomic_load(&r.wrong_reads));
    ck_assert_msg(atomic_load(&r.wrong) == 0, "%ld negative results", atomic_load(&r.wrong));
    ck_assert_int_gt(atomic_load(&r.refused), 0); /* the race was really run */
    traffic_close(r.b);
}
END_TEST

/* The fast path's bounds (|counter| < 2^62, |amount| < 2^48: one fetch_add) and the CAS path
 * beyond them, one process: on each side of each bound the sum is exact, and an add past
 * INT64_MAX / INT64_MIN is refused with the counter unchanged. */
START_TEST(h_overflow_boundaries)
{
    const int64_t C = INT64_C(1) << 62, A = INT64_C(1) << 48;
    const struct {
        int64_t start, amount;
        int overflows;
    } cases[] = {
        {C - 2, 1, 0},           {C - 1, 1, 0},          {C, 1, 0},
        {C - 1, A - 1, 0},       {C - 1, A, 0},          {-C + 1, -(A - 1), 0},
        {-C, -A, 0},             {INT64_MAX - A + 1, A - 1, 0},
        {INT64_MAX - A + 2, A - 1, 1}, {INT64_MAX - 1, 1, 0}, {INT64_MAX, 1, 1},
        {INT64_MIN + A - 1, -(A - 1), 0}, {INT64_MIN + A - 2, -(A - 1), 1}, {INT64_MIN, -1, 1},
        {0, INT64_MAX, 0},       {-1, INT64_MIN, 1},     {0, INT64_MIN, 0},     {1, INT64_MAX, 1},
        {C, C - 1, 0},           {C + 1, C - 1, 1},
    };
    traffic_backend *b = open_named(tu_name("edges"), "max_size=100");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char key[16];
        snprintf(key, sizeof key, "e%zu", i);
        int64_t v = 0, got = 0;
        TU_OK(b, traffic_increment(b, key, cases[i].start, 0, &v));
        ck_assert_int_eq(v, cases[i].start);
        int rc = traffic_increment(b, key, cases[i].amount, 0, &got);
        if (cases[i].overflows) {
            ck_assert_msg(rc == TRAFFIC_EOVERFLOW, "case %zu: %lld + %lld -> %s, %lld", i, (long long)cases[i].start,
                          (long long)cases[i].amount, traffic_strerror(rc), (long long)got);
            ck_assert_int_eq(tu_counter(b, key), cases[i].start);
        } else {
            ck_assert_msg(rc == TRAFFIC_OK && got == cases[i].start + cases[i].amount, "case %zu: %lld + %lld -> %s, %lld",
                          i, (long long)cases[i].start, (long long)cases[i].amount, traffic_strerror(rc), (long long)got);
            ck_assert_int_eq(tu_counter(b, key), got);
        }
    }
    traffic_close(b);
}
END_TEST

/* ---- 2. the participant high-water mark ---------------------------------------------------- */

static void stats_and_ops(const char *name)
{
    traffic_backend *b = open_named(name, NULL);
    struct traffic_stats s;
    if (traffic_stats(b, &s) != TRAFFIC_OK) _exit(3);
    if (traffic_set(b, "a", "1", 1, 0) != TRAFFIC_OK) _exit(4);
    if (traffic_increment(b, "c", 1, 0, NULL) != TRAFFIC_OK) _exit(5);
    traffic_close(b);
}

START_TEST(h_part_hwm_out_of_range)
{
    uint32_t bad[] = {0xffffffffu, SHM_MAX_PARTS + 1, SHM_MAX_PARTS + 100};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *name = tu_name("hwm");
        traffic_backend *b = open_named(name, "max_size=100");
        TU_OK(b, traffic_set(b, "k", "v", 1, 0));
        poke(name, offsetof(struct shm_header, part_hwm), &bad[i], sizeof bad[i]);
        ck_assert_msg(in_child(stats_and_ops, name, 20) == 0, "part_hwm %#x: stats or an operation failed",
                      bad[i]);
        stats_and_ops(name); /* and in this process, attached before the damage */
        traffic_close(b);
        traffic_memory_unlink(name);
    }
}
END_TEST

/* Participant records whose mutex kind is damaged (glibc then took the elision path of
 * pthread_mutex_trylock: SIGILL on a CPU without RTM; fuzz_table found it): never locked,
 * and the table works on the records after them. */
static void create_table(const char *name)
{
    traffic_backend *b = open_named(name, "max_size=100");
    if (traffic_set(b, "k", "v", 1, 0) != TRAFFIC_OK) _exit(3);
    traffic_close(b);
}

START_TEST(h_part_mutex_kind_damaged)
{
#ifdef __GLIBC__
    const char *name = tu_name("kind");
    ck_assert_int_eq(in_child(create_table, name, 20), 0); /* nothing of this process in it */
    struct shm_header h;
    peek(name, 0, &h, sizeof h);
    int kinds[] = {0x100, 0x7fffffff, -1};
    for (int i = 0; i < 4; i++) {
        off_t at = (off_t)(h.parts_off + i * sizeof(struct shm_part) +
                           offsetof(struct shm_part, lock) + offsetof(pthread_mutex_t, __data.__kind));
        poke(name, at, &kinds[i % 3], sizeof(int));
    }
    ck_assert_msg(in_child(stats_and_ops, name, 20) == 0, "a damaged mutex kind: stats or an operation failed");
    traffic_memory_unlink(name);
#endif
}
END_TEST

/* A record whose incarnation reached TOKEN_INC_SPENT is never claimed again (its tokens would
 * repeat those of dead holders, layout.h); with every record spent, operations fail with
 * TRAFFIC_EFULL rather than reuse one. */
START_TEST(h_spent_records_not_claimed)
{
    shm_params p = {0};
    shm_table *t;
    char err[128];
    int64_t n;
    ck_assert_int_eq(shm_open_table(&p, &t, err, sizeof err), SHM_OK);
    atomic_store(&t->parts[0].incarnation, TOKEN_INC_SPENT);
    ck_assert_int_eq(shm_incr(t, "k", 1, 1, 0, &n), SHM_OK);
    ck_assert_int_eq(atomic_load(&t->parts[0].pid), 0);
    ck_assert_int_eq(atomic_load(&t->parts[1].pid), getpid());
    shm_close_table(t);

    ck_assert_int_eq(shm_open_table(&p, &t, err, sizeof err), SHM_OK);
    for (uint32_t i = 0; i < SHM_MAX_PARTS; i++) atomic_store(&t->parts[i].incarnation, TOKEN_INC_SPENT + i % 3);
    ck_assert_int_eq(shm_incr(t, "k", 1, 1, 0, &n), SHM_EFULL);
    shm_close_table(t);
}
END_TEST

/* ---- 3. geometry changed after attach ------------------------------------------------------ */

START_TEST(h_geometry_raised_after_attach)
{
    const char *name = tu_name("geom");
    traffic_backend *b = open_named(name, "max_size=100&key_max=16&value_max=64");
    uint32_t big_v = SHM_VALUE_LIMIT, big_k = SHM_KEY_LIMIT;
    poke(name, offsetof(struct shm_header, value_max), &big_v, sizeof big_v);
    poke(name, offsetof(struct shm_header, key_max), &big_k, sizeof big_k);
    /* This handle keeps the geometry it validated: a value or key past it is refused. */
    static unsigned char val[60000];
    memset(val, 'x', sizeof val);
    ck_assert_int_eq(traffic_set(b, "v", val, sizeof val, 0), TRAFFIC_ETOOBIG);
    char key[201];
    memset(key, 'k', 200);
    key[200] = 0;
    ck_assert_int_eq(traffic_set(b, key, "v", 1, 0), TRAFFIC_ETOOBIG);
    ck_assert_int_eq(traffic_increment(b, key, 1, 0, NULL), TRAFFIC_ETOOBIG);
    TU_OK(b, traffic_set(b, "fits", val, 64, 0));
    traffic_close(b);
    /* A new attach sees a header that no longer matches its layout. */
    char url[512];
    tu_memory_url(url, sizeof url, name, NULL);
    traffic_backend *b2 = NULL;
    ck_assert_int_eq(traffic_open(url, &b2), TRAFFIC_ECORRUPT);
    traffic_memory_unlink(name);
}
END_TEST

/* ---- 4. probe bounds ------------------------------------------------------------------------ */

static void get_missing(const char *name)
{
    traffic_backend *b = open_named(name, NULL);
    char buf[16];
    size_t len;
    for (int i = 0; i < 100; i++) {
        char key[16];
        snprintf(key, sizeof key, "absent%d", i);
        if (traffic_get(b, key, buf, sizeof buf, &len) != TRAFFIC_ENOTFOUND) _exit(3);
        if (traffic_exists(b, key) != 0) _exit(4);
    }
    traffic_close(b);
}

START_TEST(h_probe_max_damaged)
{
    const char *name = tu_name("probe");
    traffic_backend *b = open_named(name, "max_size=10");
    TU_OK(b, traffic_close(b));
    struct shm_header h;
    peek(name, 0, &h, offsetof(struct shm_header, epoch));
    /* Every slot a tombstone whose home says keys lie 0xffffffff slots away. */
    for (uint64_t i = 0; i < h.capacity; i++) {
        off_t at = (off_t)(h.heads_off + i * h.head_stride);
        uint64_t ctl = CTL_MAKE(ST_FREE, 0, 0, 0);
        uint32_t pm = 0xffffffffu;
        poke(name, at + (off_t)offsetof(struct shm_slot, ctl), &ctl, sizeof ctl);
        poke(name, at + (off_t)offsetof(struct shm_slot, probe_max), &pm, sizeof pm);
    }
    ck_assert_msg(in_child(get_missing, name, 20) == 0, "lookups did not end (or failed) on damaged probe bounds");
    traffic_memory_unlink(name);
}
END_TEST

/* ---- 5. the cleanup interval --------------------------------------------------------------- */

START_TEST(h_cleanup_interval_zero_refused)
{
    const char *name = tu_name("cleanup");
    traffic_backend *b = open_named(name, "max_size=10");
    TU_OK(b, traffic_close(b));
    uint64_t zero = 0;
    poke(name, offsetof(struct shm_header, cleanup_ms), &zero, sizeof zero);
    char url[512];
    tu_memory_url(url, sizeof url, name, NULL);
    traffic_backend *b2 = NULL;
    ck_assert_int_eq(traffic_open(url, &b2), TRAFFIC_ECORRUPT);
    ck_assert_ptr_null(b2);
    ck_assert(strstr(traffic_errmsg(NULL), "cleanup") != NULL);
    traffic_memory_unlink(name);
}
END_TEST

/* ---- 6. a log write is not lost to an expiry judged from the old log ----------------------- */

static void sleep_until(int64_t t0, int64_t at_ms)
{
    int64_t left = t0 + at_ms - tu_now_ms();
    if (left > 0) tu_sleep_ms(left);
}

/* sliding_window 2 per 400 ms. A at 0; D at 300 is admitted and holds the slot WRITING for
 * 200 ms; P at 430 sees the log D replaces, whose expiry (A's, 400) has passed; Q at 560.
 * D, P and Q fall within 400 ms: at most two of them may pass. Before the fix P retired D's
 * entry as expired and started a fresh log: all three passed. */
START_TEST(h_log_write_not_lost_to_expiry)
{
    traffic_rule r = {.algorithm = TRAFFIC_SLIDING_WINDOW, .limit = 2, .window = 0.4};
    for (int round = 0; round < 3; round++) {
        traffic_backend *b = NULL;
        TU_OK(NULL, traffic_open("memory://?max_size=100&value_max=64", &b));
        atomic_int *d_allowed = tu_shared(sizeof *d_allowed);
        traffic_decision a, p, q;
        int64_t t0 = tu_now_ms();
        TU_OK(b, traffic_limit(b, "log", &r, 1, &a));
        ck_assert_int_eq(a.allowed, 1);
        sleep_until(t0, 300);
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            shm_debug_set_blob_write_pause(200);
            traffic_decision d;
            if (traffic_limit(b, "log", &r, 1, &d)) _exit(2);
            atomic_store(d_allowed, d.allowed ? 1 : 2);
            _exit(0);
        }
        sleep_until(t0, 430);
        TU_OK(b, traffic_limit(b, "log", &r, 1, &p));
        sleep_until(t0, 560);
        TU_OK(b, traffic_limit(b, "log", &r, 1, &q));
        ck_assert_int_eq(tu_wait(pid), 0);
        int64_t took = tu_now_ms() - t0;
        int passed = (atomic_load(d_allowed) == 1) + p.allowed + q.allowed;
        traffic_close(b);
        if (took > 700) continue; /* the machine stalled: the schedule did not happen, try again */
        ck_assert_msg(passed <= 2, "round %d: D, P and Q within 400 ms all passed a limit of 2", round);
        return;
    }
    ck_abort_msg("the machine was too slow for the schedule three times");
}
END_TEST

/* ---- 7. the table's clock ------------------------------------------------------------------- */

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* 0 if every reading over ms lies within 50 µs of a clock_gettime bracket and none goes back. */
static int clock_check(shm_table *t, int64_t ms)
{
    int64_t end = mono_us() + ms * 1000, last = 0;
    while (mono_us() < end) {
        int64_t a = mono_us(), c = shm_clock_us(t), b = mono_us();
        if (c < a - 50 || c > b + 50) {
            fprintf(stderr, "table clock %lld us, CLOCK_MONOTONIC [%lld, %lld]\n", (long long)c, (long long)a,
                    (long long)b);
            return 1;
        }
        if (c < last) return 2;
        last = c;
    }
    return 0;
}

START_TEST(h_table_clock)
{
    shm_params p = {0};
    shm_table *t;
    char err[128];
    ck_assert_int_eq(shm_open_table(&p, &t, err, sizeof err), SHM_OK);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) _exit(clock_check(t, 1500));
    ck_assert_int_eq(clock_check(t, 1500), 0);
    ck_assert_int_eq(tu_wait(pid), 0);
    shm_close_table(t);
}
END_TEST

/* Damages the clock parameters (which: 0 base far ahead with an endless span, 1 a huge
 * rate, 2 a first anchor far back, 3 a rate of 1 with an endless span anchored now - the
 * clock stood still -, 4 a first anchor at TSC 1 a little before now - a rate a million times
 * too slow), then: 0 if within 300 ms the clock is back within 100 µs of CLOCK_MONOTONIC and
 * stays there for 200 ms. */
static int clock_heals(shm_table *t, int which)
{
    struct shm_header *h = t->h;
    /* calibrated, as a table in use is - where the clock is the TSC at all (x86 with an
     * invariant TSC; elsewhere, or with TRAFFIC_NO_TSC=1, it is clock_gettime and the
     * parameters are never set, nor read) */
    int64_t end = mono_us() + 200000, give_up = mono_us() + 1000000;
    while (mono_us() < end || (!atomic_load(&h->clk[atomic_load(&h->clk_ver) & 1].mult) && mono_us() < give_up))
        (void)shm_clock_us(t);
    for (int i = 0; i < 2; i++) {
        if (which == 0) {
            atomic_fetch_add(&h->clk[i].ns, INT64_C(1000000000000000));
            atomic_store(&h->clk[i].max_ticks, UINT64_MAX);
        } else if (which == 1) {
            atomic_store(&h->clk[i].mult, UINT64_MAX);
        } else if (which == 3) {
            atomic_store(&h->clk[i].mult, 1);
            atomic_store(&h->clk[i].max_ticks, UINT64_MAX);
            atomic_store(&h->clk[i].ns, mono_us() * 1000);
#if defined(__x86_64__) || defined(__i386__)
            atomic_store(&h->clk[i].tsc, __builtin_ia32_rdtsc());
#endif
        }
    }
    if (which == 2) atomic_fetch_sub(&h->clk_first_ns, INT64_C(1000000000000000));
    if (which == 4) {
        atomic_store(&h->clk_first_tsc, 1);
        atomic_store(&h->clk_first_ns, mono_us() * 1000 - 20000000);
    }
    int64_t deadline = mono_us() + 300000, good_since = 0;
    for (;;) {
        int64_t a = mono_us(), c = shm_clock_us(t), b = mono_us(), now = b;
        if (c >= a - 100 && c <= b + 100) {
            if (!good_since) good_since = now;
            if (now - good_since >= 200000) return 0;
        } else {
            if (good_since || now > deadline) {
                fprintf(stderr, "damage %d: table clock %lld us, CLOCK_MONOTONIC [%lld, %lld]%s\n", which,
                        (long long)c, (long long)a, (long long)b, good_since ? " after it had healed" : "");
                return 1;
            }
        }
    }
}

START_TEST(h_table_clock_damaged)
{
    for (int which = 0; which < 5; which++) {
        shm_params p = {0};
        shm_table *t;
        char err[128];
        ck_assert_int_eq(shm_open_table(&p, &t, err, sizeof err), SHM_OK);
        ck_assert_msg(clock_heals(t, which) == 0, "damage %d was not repaired", which);
        shm_close_table(t);
    }
}
END_TEST

/* ---- 8. a decision ahead of CLOCK_MONOTONIC ------------------------------------------------ */

struct ahead {
    int64_t expires_ms;
    int calls;
};

static int store_fn(void *ctx, int present, uint64_t old_word, const void *old_blob, size_t old_len, shm_update *u,
                    void *buf, size_t cap)
{
    (void)present, (void)old_word, (void)old_blob, (void)old_len;
    struct ahead *a = ctx;
    a->calls++;
    u->store = 1;
    u->expires_ms = a->expires_ms;
    if (buf && cap >= 8) {
        memset(buf, 'x', 8);
        u->len = 8;
    } else {
        u->word = 1;
    }
    return SHM_OK;
}

/* Exit status: 0, or the step that failed. */
static void decide_ahead(const char *unused)
{
    (void)unused;
    shm_params p = {0};
    shm_table *t;
    char err[128];
    if (shm_open_table(&p, &t, err, sizeof err) != SHM_OK) _exit(2);
    const unsigned types[2] = {SHM_TYPE_WORD(0), SHM_TYPE_BLOB(0)};
    for (int i = 0; i < 2; i++) {
        int64_t now = mono_us() / 1000;
        struct ahead a = {.expires_ms = now + 60000};
        if (shm_state_update(t, "k", 1 + (size_t)i, types[i], now, store_fn, &a) != SHM_OK) _exit(3);
        /* 70 s on: expired by this reading, alive for 60 s more by CLOCK_MONOTONIC */
        a = (struct ahead){.expires_ms = now + 130000};
        if (shm_state_update(t, "k", 1 + (size_t)i, types[i], now + 70000, store_fn, &a) != SHM_OK) _exit(4);
        if (a.calls > 3) _exit(5);
        unsigned ty;
        uint64_t w;
        char buf[64];
        size_t len;
        if (shm_state_get(t, "k", 1 + (size_t)i, &ty, &w, buf, sizeof buf, &len) != SHM_OK || ty != types[i]) _exit(6);
    }
    shm_close_table(t);
}

START_TEST(h_decision_ahead_of_monotonic)
{
    ck_assert_msg(in_child(decide_ahead, NULL, 10) == 0, "a decision ahead of CLOCK_MONOTONIC failed or spun");
}
END_TEST

/* ---- 9. a full /dev/shm ---------------------------------------------------------------------- */

/* In a child with its own mount namespace and a 4 MiB tmpfs on /dev/shm: a default table
 * (60 MiB of slots) filled with values and long keys until the tmpfs is full. Exit codes:
 * 0 ok, 77 no privilege to set up (skipped), others a failure. */
static int full_shm_child(void)
{
    if (unshare(CLONE_NEWNS) != 0) return 77;
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) return 77;
    if (mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=4m") != 0) return 77;
    traffic_backend *b = NULL;
    if (traffic_open("memory://full?value_max=4096", &b) != TRAFFIC_OK) return 3;
    static unsigned char val[4000];
    memset(val, 'v', sizeof val);
    char key[200];
    int stored = 0, rc = TRAFFIC_OK;
    for (int i = 0; i < 100000 && rc == TRAFFIC_OK; i++) {
        snprintf(key, sizeof key, "%s%d", i % 2 ? "value-" : "a-long-key-that-goes-past-the-head-into-the-body-"
                 "0123456789012345678901234567890123456789012345678901234567890123456789012345678901-", i);
        rc = traffic_set(b, key, val, 100 + (size_t)(i % 3900), 0);
        if (rc == TRAFFIC_OK) stored = i + 1;
    }
    if (rc != TRAFFIC_EFULL) return 4; /* the tmpfs filled up, and said so */
    if (stored < 10) return 5;
    /* everything stored stays readable; more operations answer, none kills us */
    for (int i = 0; i < stored; i++) {
        snprintf(key, sizeof key, "%s%d", i % 2 ? "value-" : "a-long-key-that-goes-past-the-head-into-the-body-"
                 "0123456789012345678901234567890123456789012345678901234567890123456789012345678901-", i);
        size_t len;
        if (traffic_get(b, key, val, sizeof val, &len) != TRAFFIC_OK || len != 100 + (size_t)(i % 3900)) return 6;
    }
    traffic_rule r = {.algorithm = TRAFFIC_TOKEN_BUCKET, .limit = 10, .window = 1};
    for (int i = 0; i < 20000; i++) {
        snprintf(key, sizeof key, "new-%d", i);
        int a = traffic_increment(b, key, 1, 0, NULL), c = traffic_limit(b, key, &r, 1, NULL);
        int e = traffic_exists(b, key);
        if ((a && a != TRAFFIC_EFULL && a != TRAFFIC_ETYPE) || (c && c != TRAFFIC_EFULL && c != TRAFFIC_ETYPE) ||
            e < 0)
            return 7;
    }
    struct traffic_stats st;
    if (traffic_stats(b, &st) != TRAFFIC_OK) return 8;
    traffic_close(b);
    return 0;
}

START_TEST(h_full_dev_shm_is_efull)
{
    pid_t p = fork();
    ck_assert_int_ge(p, 0);
    if (p == 0) _exit(full_shm_child());
    int st;
    ck_assert_int_eq(waitpid(p, &st, 0), p);
    ck_assert_msg(!WIFSIGNALED(st), "killed by signal %d (SIGBUS is 7)", WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    if (WEXITSTATUS(st) == 77) {
        fprintf(stderr, "h_full_dev_shm_is_efull: skipped, no privilege for a private mount namespace\n");
        return;
    }
    ck_assert_msg(WEXITSTATUS(st) == 0, "full /dev/shm: step %d failed", WEXITSTATUS(st));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("hardening");
    TCase *tc = tcase_create("hardening");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, h_overflow_race_refused);
    tcase_add_test(tc, h_overflow_boundaries);
    tcase_add_test(tc, h_part_hwm_out_of_range);
    tcase_add_test(tc, h_part_mutex_kind_damaged);
    tcase_add_test(tc, h_spent_records_not_claimed);
    tcase_add_test(tc, h_geometry_raised_after_attach);
    tcase_add_test(tc, h_probe_max_damaged);
    tcase_add_test(tc, h_cleanup_interval_zero_refused);
    tcase_add_test(tc, h_log_write_not_lost_to_expiry);
    tcase_add_test(tc, h_full_dev_shm_is_efull);
    tcase_add_test(tc, h_table_clock);
    tcase_add_test(tc, h_table_clock_damaged);
    tcase_add_test(tc, h_decision_ahead_of_monotonic);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
