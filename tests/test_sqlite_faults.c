/*
 * test_sqlite_faults.c — the SQLite backend under the faults of issue 16: threads cancelled
 * inside a call, a UTF-16 database, a file with our marks and the wrong tables, calls that
 * wait for the pool and the lock, TTLs of writes that waited, -wal and -shm files this
 * process may not write, a SQLite library too old.
 *
 * Real files, real processes and threads; each test in its own directory under one mkdtemp()
 * directory per run, removed at the end by the unchecked fixture. One test case per test:
 * CK_RUN_CASE=name runs one.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sys/syscall.h>

#include "sqlite_testutil.h"
#include "testutil.h"

/* ---- a wall clock that this thread alone sees stepped ---------------------------------- *
 *
 * This executable's clock_gettime takes the place of libc's for the library linked into it:
 * in a thread that sets realtime_skew_ns, CLOCK_REALTIME reads that much off, which to an
 * absolute CLOCK_REALTIME deadline computed from it looks like the wall clock stepped by as
 * much during the wait. The kernel's own clocks are not touched. */
static _Thread_local long long realtime_skew_ns;

int clock_gettime(clockid_t id, struct timespec *ts)
{
    int rc = (int)syscall(SYS_clock_gettime, id, ts);
    if (rc == 0 && id == CLOCK_REALTIME && realtime_skew_ns) {
        long long ns = (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec + realtime_skew_ns;
        ts->tv_sec = (time_t)(ns / 1000000000LL);
        ts->tv_nsec = (long)(ns % 1000000000LL);
    }
    return rc;
}

/* ---- a SQLite library that says it is older ------------------------------------------- *
 *
 * Likewise this executable's sqlite3_libversion_number answers for the library linked into
 * it: fake_sqlite_version when set, else the version of the header it was built with. */
static atomic_int fake_sqlite_version;

int sqlite3_libversion_number(void)
{
    int v = atomic_load(&fake_sqlite_version);
    return v ? v : SQLITE_VERSION_NUMBER;
}

/* ---- scratch directories --------------------------------------------------------------- */

/* The suite's scratch directory, and the helpers on it: sqlite_testutil.h. */
static void base_setup(void)
{
    tsq_setup("sqlite-faults");
}

static void base_teardown(void)
{
    tsq_teardown();
}

static int try_open(const char *path, traffic_backend **b)
{
    char url[800];
    snprintf(url, sizeof url, "sqlite://%s", path);
    *b = NULL;
    return traffic_open(url, b);
}

/* Joins t, waiting at most ms; 0 if it ended. */
static int join_within(pthread_t t, int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    return pthread_timedjoin_np(t, NULL, &ts);
}

/* ---- 10. cancellation ------------------------------------------------------------------ */

struct cancel_call {
    traffic_backend *b;
    int op; /* TU_INCR or TU_GET */
    int rc;
    atomic_int done;
};

static void *cancel_main(void *arg)
{
    struct cancel_call *t = arg;
    if (t->op == TU_INCR) {
        t->rc = traffic_increment(t->b, "k", 1, 0, NULL);
    } else {
        char buf[32];
        size_t len;
        t->rc = traffic_get(t->b, "k", buf, sizeof buf, &len);
    }
    atomic_store(&t->done, 1);
    pthread_testcancel(); /* a cancel that waited for the call to end acts here */
    return NULL;
}

static void *fork_main(void *arg)
{
    (void)arg;
    pid_t pid = fork();
    if (pid == 0) _exit(0);
    waitpid(pid, NULL, 0);
    return NULL;
}

START_TEST(t_cancel_inside_calls)
{
#if defined(__SANITIZE_ADDRESS__)
    /* GCC 12's ASan reports its own sigaltstack bookkeeping as a stack-use-after-scope when a
     * thread is cancelled: this test runs in the plain and TSan-free builds only. */
    fprintf(stderr, "t_cancel_inside_calls: skipped under AddressSanitizer\n");
    return;
#endif
    /* Thread A waits for the write lock (another connection holds it) with the only pooled
     * connection; thread B waits for that connection. Both are cancelled. Before: B died in
     * pthread_cond_timedwait holding the pool's mutex (every later call hung), and A died in
     * the busy handler's sleep with the connection checked out and the fork count raised (the
     * next fork() hung). A cancel must wait until the call is over. */
    char path[512];
    tsq_db_into("cancel", path, sizeof path);
    traffic_backend *b = tsq_open(path, "timeout=5&pool_size=1");
    TU_OK(b, traffic_increment(b, "k", 1, 0, NULL));
    sqlite3 *db = tsq_raw_open(path);
    ck_assert_int_eq(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    struct cancel_call a = {.b = b, .op = TU_INCR}, g = {.b = b, .op = TU_GET};
    pthread_t ta, tb;
    ck_assert_int_eq(pthread_create(&ta, NULL, cancel_main, &a), 0);
    tu_sleep_ms(200); /* A holds the connection, in the busy handler */
    ck_assert_int_eq(pthread_create(&tb, NULL, cancel_main, &g), 0);
    tu_sleep_ms(200); /* B waits for the pool */
    ck_assert_int_eq(pthread_cancel(tb), 0);
    ck_assert_int_eq(pthread_cancel(ta), 0);
    tu_sleep_ms(200);
    ck_assert_int_eq(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    ck_assert_msg(join_within(ta, 10000) == 0, "the cancelled increment never ended");
    ck_assert_msg(join_within(tb, 10000) == 0, "the cancelled get never ended");
    ck_assert_msg(atomic_load(&a.done) && a.rc == TRAFFIC_OK, "the increment was cut short (%d)", a.rc);
    ck_assert_msg(atomic_load(&g.done) && g.rc == TRAFFIC_OK, "the get was cut short (%d)", g.rc);

    /* the handle still works, from another thread, and fork() does not wait for a ghost */
    tu_timed after = {.b = b, .op = TU_INCR, .key = "k"};
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, tu_timed_call, &after), 0);
    ck_assert_msg(join_within(t, 10000) == 0, "a call after the cancellations hung");
    TU_OK(b, after.rc);
    ck_assert_int_eq(tu_counter(b, "k"), 3); /* 1, A's, and this one: each once */
    ck_assert_int_eq(pthread_create(&t, NULL, fork_main, NULL), 0);
    ck_assert_msg(join_within(t, 10000) == 0, "fork() after the cancellations hung");
    TU_OK(b, traffic_close(b));
}
END_TEST

/* ---- 11. the encoding ------------------------------------------------------------------ */

static int exists(const char *path, const char *suffix)
{
    char name[600];
    snprintf(name, sizeof name, "%s%s", path, suffix);
    return access(name, F_OK) == 0;
}

START_TEST(t_utf16_database_refused)
{
    /* An empty database whose encoding is UTF-16. Before: accepted, and the keys, bound as
     * text, were converted to UTF-16 with every invalid UTF-8 sequence turned into U+FFFD:
     * five distinct keys read back one shared counter. */
    char path[512];
    tsq_db_into("utf16", path, sizeof path);
    tsq_raw_exec(path, "PRAGMA encoding = 'UTF-16le'; CREATE TABLE t (x); DROP TABLE t;");
    size_t n0, n1;
    char *before = tsq_slurp(path, &n0);
    traffic_backend *b;
    int rc = try_open(path, &b);
    ck_assert_msg(rc == TRAFFIC_ECORRUPT, "open of a UTF-16 database -> %s (%s)", traffic_strerror(rc),
                  traffic_errmsg(NULL));
    ck_assert_msg(strstr(traffic_errmsg(NULL), "UTF-16"), "message: %s", traffic_errmsg(NULL));
    char *after = tsq_slurp(path, &n1);
    ck_assert_msg(n0 == n1 && memcmp(before, after, n0) == 0, "the file was changed");
    ck_assert_msg(!exists(path, "-wal") && !exists(path, "-turn"), "files were created next to it");
    free(before);
    free(after);

    /* our own databases are UTF-8: keys that are not valid UTF-8 stay distinct */
    char fresh[512];
    b = tsq_open(tsq_db_into("utf8", fresh, sizeof fresh), NULL);
    static const char *const keys[] = {"\xff", "\xfe", "\xc3", "\x80x", "\xed\xa0\x80"};
    for (int i = 0; i < 5; i++)
        TU_OK(b, traffic_increment(b, keys[i], i + 1, 0, NULL));
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(tu_counter(b, keys[i]), i + 1);
    TU_OK(b, traffic_close(b));
}
END_TEST

/* ---- 12. our marks, the wrong tables --------------------------------------------------- */

START_TEST(t_wrong_tables_untouched)
{
    /* A rollback-journal file with our application_id and user_version but other tables.
     * Before: switched to WAL (bytes 18-19 of the header, and a -wal file), then refused. */
    char path[512];
    tsq_db_into("wrongtables", path, sizeof path);
    tsq_raw_exec(path, "PRAGMA application_id = 1414678083; PRAGMA user_version = 1;"
                   "CREATE TABLE traffic_entries (x); CREATE TABLE traffic_lease (y);");
    size_t n0, n1;
    char *before = tsq_slurp(path, &n0);
    ck_assert_int_eq(before[18], 1); /* legacy (rollback) file format */
    traffic_backend *b;
    int rc = try_open(path, &b);
    ck_assert_msg(rc == TRAFFIC_ECORRUPT, "open -> %s (%s)", traffic_strerror(rc), traffic_errmsg(NULL));
    ck_assert_msg(strstr(traffic_errmsg(NULL), "schema"), "message: %s", traffic_errmsg(NULL));
    char *after = tsq_slurp(path, &n1);
    ck_assert_msg(after[18] == 1 && after[19] == 1, "the file was switched to WAL (%d, %d)", after[18], after[19]);
    ck_assert_msg(n0 == n1 && memcmp(before, after, n0) == 0, "the file was changed");
    ck_assert_msg(!exists(path, "-wal") && !exists(path, "-turn"), "files were created next to it");
    free(before);
    free(after);
}
END_TEST

/* ---- 13. deadlines, TTLs, permissions, the library's version --------------------------- */

struct slow_call {
    traffic_backend *b;
    int op;
    long long skew_ns; /* CLOCK_REALTIME of this thread runs this much ahead */
    int rc;
    int64_t took;
};

static void *slow_main(void *arg)
{
    struct slow_call *t = arg;
    realtime_skew_ns = t->skew_ns;
    int64_t t0 = tu_now_ms();
    char buf[32];
    size_t len;
    t->rc = t->op == TU_INCR ? traffic_increment(t->b, "k", 1, 0, NULL) : traffic_get(t->b, "k", buf, sizeof buf, &len);
    t->took = tu_now_ms() - t0;
    return NULL;
}

START_TEST(t_pool_wait_deadline)
{
    /* Another program holds the database exclusively (locking_mode EXCLUSIVE): a connection
     * cannot even read its schema. With pool_size 1, the first call opens the only
     * connection and waits; the second waits for the pool, then, when the first gives up,
     * opens its own. Before: that open started a fresh timeout (~2 x `timeout` in all). */
    char path[512];
    tsq_db_into("poolopen", path, sizeof path);
    traffic_backend *b = tsq_open(path, "timeout=2&pool_size=1");
    TU_OK(b, traffic_increment(b, "k", 1, 0, NULL));
    TU_OK(b, traffic_close(b));
    b = tsq_open(path, "timeout=2&pool_size=1"); /* no connection open yet */
    sqlite3 *db = tsq_raw_open(path);
    ck_assert_int_eq(sqlite3_exec(db, "PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE;", NULL, NULL, NULL),
                     SQLITE_OK);
    struct slow_call first = {.b = b, .op = TU_GET}, second = {.b = b, .op = TU_GET};
    pthread_t t1, t2;
    ck_assert_int_eq(pthread_create(&t1, NULL, slow_main, &first), 0);
    tu_sleep_ms(300);
    ck_assert_int_eq(pthread_create(&t2, NULL, slow_main, &second), 0);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    ck_assert_int_eq(first.rc, TRAFFIC_ETIMEDOUT);
    ck_assert_int_eq(second.rc, TRAFFIC_ETIMEDOUT);
    /* ~2 s; before ~3.7 s (1.7 s for the pool, 2 more for its own open) */
    ck_assert_msg(second.took < 3000, "the second call gave up after %lld ms", (long long)second.took);
    ck_assert_int_eq(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db); /* leaves exclusive mode */
    ck_assert_int_eq(tu_counter(b, "k"), 1);
    TU_OK(b, traffic_close(b));
}
END_TEST

START_TEST(t_pool_wait_monotonic)
{
    /* The wait for a pooled connection ran on CLOCK_REALTIME: a wall clock stepped forward
     * (here: read an hour behind by the waiting thread, so that its deadline is an hour
     * early) ended it at once, while the connection came back within the call's timeout. */
    char path[512];
    tsq_db_into("poolclock", path, sizeof path);
    traffic_backend *b = tsq_open(path, "timeout=1&pool_size=1");
    TU_OK(b, traffic_increment(b, "k", 1, 0, NULL));
    sqlite3 *db = tsq_raw_open(path);
    ck_assert_int_eq(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    struct slow_call first = {.b = b, .op = TU_INCR}, second = {.b = b, .op = TU_GET, .skew_ns = -3600000000000LL};
    pthread_t t1, t2;
    ck_assert_int_eq(pthread_create(&t1, NULL, slow_main, &first), 0);
    tu_sleep_ms(200); /* the first holds the only connection, waiting for the lock */
    ck_assert_int_eq(pthread_create(&t2, NULL, slow_main, &second), 0);
    pthread_join(t1, NULL);
    ck_assert_int_eq(first.rc, TRAFFIC_ETIMEDOUT);
    int ended = join_within(t2, 10000) == 0;
    ck_assert_int_eq(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    ck_assert_msg(ended, "the wait for the pool followed the wall clock");
    TU_OK(b, second.rc); /* it got the connection when the first call gave up */
    TU_OK(b, traffic_close(b));
}
END_TEST

struct ttl_write {
    traffic_backend *b;
    int incr;
    int rc;
};

static void *ttl_write_main(void *arg)
{
    struct ttl_write *w = arg;
    w->rc = w->incr ? traffic_increment(w->b, "k", 1, 1.0, NULL) : traffic_set(w->b, "s", "v", 1, 1.0);
    return NULL;
}

START_TEST(t_ttl_counts_from_the_write)
{
    /* A write with a TTL of 1 s waits 1.5 s for the write lock. Before: its expiry was
     * counted from the start of the call, so the key was born expired. */
    char path[512];
    tsq_db_into("ttlwait", path, sizeof path);
    traffic_backend *b = tsq_open(path, "timeout=5");
    TU_OK(b, traffic_set(b, "warm", "v", 1, 0));
    sqlite3 *db = tsq_raw_open(path);
    ck_assert_int_eq(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    struct ttl_write w[2] = {{.b = b, .incr = 1}, {.b = b, .incr = 0}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(pthread_create(&t[i], NULL, ttl_write_main, &w[i]), 0);
    tu_sleep_ms(1500);
    ck_assert_int_eq(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
        TU_OK(b, w[i].rc);
    }
    double left = 0;
    int rc = traffic_ttl(b, "k", &left);
    ck_assert_msg(rc == TRAFFIC_OK && left > 0.5, "the increment's key: %s, %.3f s left", traffic_strerror(rc), left);
    ck_assert_int_eq(tu_counter(b, "k"), 1);
    rc = traffic_ttl(b, "s", &left);
    ck_assert_msg(rc == TRAFFIC_OK && left > 0.5, "the set's key: %s, %.3f s left", traffic_strerror(rc), left);
    /* and a counter's expiry still resets only once it has passed */
    tu_sleep_ms(1100);
    TU_OK(b, traffic_increment(b, "k", 5, 1.0, NULL));
    ck_assert_int_eq(tu_counter(b, "k"), 5);
    TU_OK(b, traffic_close(b));
}
END_TEST

START_TEST(t_wal_files_of_another_user)
{
    /* The database is writable by this process but its -wal and -shm, made by another user
     * (here root, mode 0644) are not. Before: open succeeded and every write then failed
     * with TRAFFIC_EPERM. Open must say so. */
    char path[512];
    tsq_db_into("walperm", path, sizeof path);
    traffic_backend *b = tsq_open(path, NULL);
    TU_OK(b, traffic_increment(b, "k", 1, 0, NULL));
    TU_OK(b, traffic_close(b));
    sqlite3 *db = tsq_raw_open(path); /* keeps -wal and -shm in place */
    ck_assert_int_eq(sqlite3_exec(db, "UPDATE traffic_entries SET counter = counter", NULL, NULL, NULL), SQLITE_OK);
    char dir[512], wal[600], shm[600];
    snprintf(dir, sizeof dir, "%.*s", (int)(strrchr(path, '/') - path), path);
    snprintf(wal, sizeof wal, "%s-wal", path);
    snprintf(shm, sizeof shm, "%s-shm", path);
    ck_assert_int_eq(access(wal, F_OK), 0);
    ck_assert_int_eq(access(shm, F_OK), 0);
    chmod(dir, 0777);
    chmod(path, 0666);
    chmod(wal, 0644);
    chmod(shm, 0644);
    pid_t pid = fork();
    if (pid == 0) {
        if (geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0)) _exit(77);
        if (geteuid() == 0 || access(wal, W_OK) == 0) _exit(77);
        traffic_backend *c = NULL;
        int rc = try_open(path, &c);
        if (rc == TRAFFIC_OK) { /* what the caller then met */
            int w = traffic_increment(c, "k", 1, 0, NULL);
            fprintf(stderr, "open succeeded; an increment then -> %s (%s)\n", traffic_strerror(w), traffic_errmsg(c));
            _exit(1);
        }
        if (rc != TRAFFIC_EPERM) {
            fprintf(stderr, "open -> %s (%s)\n", traffic_strerror(rc), traffic_errmsg(NULL));
            _exit(2);
        }
        if (!strstr(traffic_errmsg(NULL), "-wal") && !strstr(traffic_errmsg(NULL), "-shm")) {
            fprintf(stderr, "message: %s\n", traffic_errmsg(NULL));
            _exit(3);
        }
        _exit(0);
    }
    int st = tu_wait(pid);
    sqlite3_close(db);
    if (st == 77) {
        printf("wal_files_of_another_user: skipped, could not run as another user\n");
        return;
    }
    ck_assert_msg(st == 0, "child failed at step %d", st);
}
END_TEST

START_TEST(t_sqlite_too_old)
{
    /* INSERT ... RETURNING needs SQLite 3.35. Before: no check, and an older library failed
     * to prepare the statements, reported as TRAFFIC_ECORRUPT ("the traffic schema does not
     * match"), which invites deleting a healthy database. */
    char path[512];
    tsq_db_into("old", path, sizeof path);
    traffic_backend *b = tsq_open(path, NULL);
    TU_OK(b, traffic_close(b));
    atomic_store(&fake_sqlite_version, 3034001);
    int rc = try_open(path, &b);
    atomic_store(&fake_sqlite_version, 0);
    ck_assert_msg(rc == TRAFFIC_ENOTSUP, "open with SQLite 3.34.1 -> %s (%s)", traffic_strerror(rc),
                  traffic_errmsg(NULL));
    ck_assert_msg(strstr(traffic_errmsg(NULL), "3.34.1") && strstr(traffic_errmsg(NULL), "3.35"), "message: %s",
                  traffic_errmsg(NULL));
    b = tsq_open(path, NULL);
    TU_OK(b, traffic_close(b));
}
END_TEST

/* ---- the suite ------------------------------------------------------------------------- */

int main(void)
{
    const tu_case cases[] = {
        {"cancel", t_cancel_inside_calls},
        {"utf16", t_utf16_database_refused},
        {"wrong_tables", t_wrong_tables_untouched},
        {"pool_wait_deadline", t_pool_wait_deadline},
        {"pool_wait_monotonic", t_pool_wait_monotonic},
        {"ttl_from_the_write", t_ttl_counts_from_the_write},
        {"wal_files_of_another_user", t_wal_files_of_another_user},
        {"sqlite_too_old", t_sqlite_too_old},
    };
    return tu_run_cases("sqlite_faults", cases, sizeof cases / sizeof cases[0], base_setup, base_teardown);
}
