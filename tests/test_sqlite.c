/*
 * test_sqlite.c — the SQLite backend on real files with real processes: the operations and
 * their error codes, the file's identity (foreign, garbage and damaged files), reopening,
 * processes and threads writing at once, SIGKILL in the middle of writes, fork safety, the
 * cleanup thread and its election, the busy timeout, and the busy handler's latency.
 *
 * Every test works in its own directory under one mkdtemp() directory per run, removed at
 * the end by the unchecked fixture (which runs in the runner process, so it also cleans up
 * after a failed test).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sqlite_testutil.h"
#include "testutil.h"

/* White-box hook of backends/sqlite.c: nonzero makes new connections use SQLite's own busy
 * handler (sqlite3_busy_timeout) and auto-checkpoint, without the turnstile, for the latency
 * comparison. */
extern _Atomic int sqlite_debug_default_busy;

/* ---- scratch directories ---------------------------------------------------------------- */

/* The suite's scratch directory, and the helpers on it: sqlite_testutil.h. */
static void base_setup(void)
{
    tsq_setup("sqlite");
}

static void base_teardown(void)
{
    tsq_teardown();
}

/* Starts the cleanup thread and lets it get going before the caller forks: under GCC 12's
 * AddressSanitizer (no fork handler in its allocator), a fork() that races a new thread's
 * start-up can leave the child's allocator locked for ever. Plain builds do not need this. */
static void start_cleanup_settled(traffic_backend *b)
{
    TU_OK(b, traffic_start_cleanup(b));
    tu_sleep_ms(50);
}

/* ---- operations ------------------------------------------------------------------------ */

START_TEST(ops_values)
{
    const char *dir = tsq_dir("ops");
    traffic_backend *b = tsq_open(tsq_in_dir(dir, "t.db"), NULL);
    char buf[64];
    size_t len = 0;
    ck_assert_int_eq(traffic_get(b, "absent", buf, sizeof buf, &len), TRAFFIC_ENOTFOUND);
    ck_assert_int_eq(traffic_exists(b, "absent"), 0);
    TU_OK(b, traffic_set(b, "v", "he\0llo", 6, 0));
    TU_OK(b, traffic_get(b, "v", buf, sizeof buf, &len));
    ck_assert_uint_eq(len, 6);
    ck_assert(memcmp(buf, "he\0llo", 6) == 0);
    ck_assert_int_eq(traffic_get(b, "v", buf, 3, &len), TRAFFIC_ERANGE);
    ck_assert_uint_eq(len, 6);
    ck_assert_int_eq(traffic_get(b, "v", NULL, 0, &len), TRAFFIC_ERANGE); /* a length query */
    ck_assert_uint_eq(len, 6);
    TU_OK(b, traffic_set(b, "empty", "", 0, 0));
    TU_OK(b, traffic_get(b, "empty", buf, sizeof buf, &len));
    ck_assert_uint_eq(len, 0);
    ck_assert_int_eq(traffic_exists(b, "empty"), 1);
    TU_OK(b, traffic_set(b, "v", "x", 1, 0)); /* replaces */
    TU_OK(b, traffic_get(b, "v", buf, sizeof buf, &len));
    ck_assert(len == 1 && buf[0] == 'x');
    TU_OK(b, traffic_delete(b, "v"));
    TU_OK(b, traffic_delete(b, "v")); /* absent: still OK */
    ck_assert_int_eq(traffic_exists(b, "v"), 0);
    char key[251];
    memset(key, 'k', 250);
    key[250] = 0;
    TU_OK(b, traffic_set(b, key, "long", 4, 0));
    ck_assert_int_eq(traffic_exists(b, key), 1);
    TU_OK(b, traffic_clear(b));
    ck_assert_int_eq(traffic_exists(b, key), 0);
    ck_assert_int_eq(traffic_exists(b, "empty"), 0);
    TU_OK(b, traffic_close(b));
}
END_TEST

START_TEST(ops_value_limit)
{
    const char *dir = tsq_dir("limit");
    traffic_backend *b = tsq_open(tsq_in_dir(dir, "t.db"), NULL);
    size_t n = TRAFFIC_SQLITE_VALUE_MAX;
    unsigned char *v = malloc(n + 1), *r = malloc(n + 1);
    for (size_t i = 0; i <= n; i++)
        v[i] = (unsigned char)(i * 31 + 7);
    TU_OK(b, traffic_set(b, "big", v, n, 0));
    size_t len = 0;
    TU_OK(b, traffic_get(b, "big", r, n, &len));
    ck_assert_uint_eq(len, n);
    ck_assert(memcmp(v, r, n) == 0);
    ck_assert_int_eq(traffic_set(b, "big", v, n + 1, 0), TRAFFIC_ETOOBIG);
    ck_assert_ptr_nonnull(strstr(traffic_errmsg(b), "1048576"));
    TU_OK(b, traffic_get(b, "big", r, n, &len)); /* unchanged */
    ck_assert_uint_eq(len, n);
    free(v);
    free(r);
    TU_OK(b, traffic_close(b));
}
END_TEST

START_TEST(ops_counters)
{
    const char *dir = tsq_dir("counters");
    traffic_backend *b = tsq_open(tsq_in_dir(dir, "t.db"), NULL);
    int64_t n = 0;
    TU_OK(b, traffic_increment(b, "c", 5, 0, &n));
    ck_assert_int_eq(n, 5);
    TU_OK(b, traffic_increment(b, "c", -12, 0, &n));
    ck_assert_int_eq(n, -7);
    TU_OK(b, traffic_increment(b, "c", 0, 0, NULL));
    char buf[32];
    size_t len;
    TU_OK(b, traffic_get(b, "c", buf, sizeof buf, &len)); /* decimal text */
    ck_assert_uint_eq(len, 2);
    ck_assert(memcmp(buf, "-7", 2) == 0);
    ck_assert_int_eq(traffic_get(b, "c", buf, 1, &len), TRAFFIC_ERANGE);
    ck_assert_uint_eq(len, 2);
    /* increment on bytes: ETYPE, value untouched */
    TU_OK(b, traffic_set(b, "bytes", "abc", 3, 0));
    ck_assert_int_eq(traffic_increment(b, "bytes", 1, 0, &n), TRAFFIC_ETYPE);
    ck_assert_ptr_nonnull(strstr(traffic_errmsg(b), "bytes"));
    TU_OK(b, traffic_get(b, "bytes", buf, sizeof buf, &len));
    ck_assert(len == 3 && memcmp(buf, "abc", 3) == 0);
    /* set replaces a counter with bytes */
    TU_OK(b, traffic_set(b, "c", "zz", 2, 0));
    ck_assert_int_eq(traffic_increment(b, "c", 1, 0, &n), TRAFFIC_ETYPE);
    TU_OK(b, traffic_delete(b, "c"));
    TU_OK(b, traffic_increment(b, "c", 1, 0, &n));
    ck_assert_int_eq(n, 1);
    /* overflow both ways: EOVERFLOW, counter unchanged */
    TU_OK(b, traffic_increment(b, "max", INT64_MAX, 0, &n));
    ck_assert_int_eq(traffic_increment(b, "max", 1, 0, &n), TRAFFIC_EOVERFLOW);
    ck_assert_int_eq(tu_counter(b, "max"), INT64_MAX);
    TU_OK(b, traffic_increment(b, "max", -1, 0, &n));
    ck_assert_int_eq(n, INT64_MAX - 1);
    TU_OK(b, traffic_increment(b, "min", INT64_MIN, 0, &n));
    ck_assert_int_eq(traffic_increment(b, "min", -1, 0, &n), TRAFFIC_EOVERFLOW);
    ck_assert_int_eq(traffic_increment(b, "min", INT64_MIN, 0, &n), TRAFFIC_EOVERFLOW);
    ck_assert_int_eq(tu_counter(b, "min"), INT64_MIN);
    TU_OK(b, traffic_increment(b, "min", INT64_MAX, 0, &n));
    ck_assert_int_eq(n, -1);
    TU_OK(b, traffic_close(b));
}
END_TEST

START_TEST(ops_expiry)
{
    const char *dir = tsq_dir("expiry");
    traffic_backend *b = tsq_open(tsq_in_dir(dir, "t.db"), NULL);
    int64_t n;
    double ttl;
    char buf[32];
    size_t len;
    TU_OK(b, traffic_set(b, "v", "x", 1, 0.15));
    TU_OK(b, traffic_increment(b, "c", 1, 0.15, &n));
    TU_OK(b, traffic_increment(b, "c", 1, 100, &n)); /* keeps its expiry */
    ck_assert_int_eq(n, 2);
    TU_OK(b, traffic_ttl(b, "c", &ttl));
    ck_assert_msg(ttl > 0 && ttl <= 0.15, "ttl %f", ttl);
    TU_OK(b, traffic_set(b, "forever", "x", 1, 0));
    TU_OK(b, traffic_ttl(b, "forever", &ttl));
    ck_assert(ttl == -1.0);
    ck_assert_int_eq(traffic_ttl(b, "absent", &ttl), TRAFFIC_ENOTFOUND);
    tu_sleep_ms(200);
    /* expired: never returned, reaper or not */
    ck_assert_int_eq(traffic_get(b, "v", buf, sizeof buf, &len), TRAFFIC_ENOTFOUND);
    ck_assert_int_eq(traffic_get(b, "c", buf, sizeof buf, &len), TRAFFIC_ENOTFOUND);
    ck_assert_int_eq(traffic_exists(b, "v"), 0);
    ck_assert_int_eq(traffic_ttl(b, "c", &ttl), TRAFFIC_ENOTFOUND);
    struct traffic_stats st;
    TU_OK(b, traffic_stats(b, &st));
    ck_assert_uint_eq(st.keys, 3);
    ck_assert_uint_eq(st.expired_pending, 2);
    /* an expired counter restarts at amount with the new TTL; expired bytes become a counter */
    TU_OK(b, traffic_increment(b, "c", 7, 100, &n));
    ck_assert_int_eq(n, 7);
    TU_OK(b, traffic_ttl(b, "c", &ttl));
    ck_assert_msg(ttl > 99 && ttl <= 100, "ttl %f", ttl);
    TU_OK(b, traffic_increment(b, "v", 3, 0, &n));
    ck_assert_int_eq(n, 3);
    TU_OK(b, traffic_ttl(b, "v", &ttl));
    ck_assert(ttl == -1.0);
    /* the expiry column holds wall-clock milliseconds */
    long long e = tsq_raw_int(tsq_in_dir(dir, "t.db"), "SELECT expires FROM traffic_entries WHERE key = 'c'");
    long long now = (long long)time(NULL) * 1000;
    ck_assert_msg(e > now + 95000 && e < now + 102000, "expires %lld now %lld", e, now);
    TU_OK(b, traffic_close(b));
}
END_TEST

START_TEST(ops_stats)
{
    const char *dir = tsq_dir("stats");
    traffic_backend *b = tsq_open(tsq_in_dir(dir, "t.db"), NULL);
    char buf[32];
    size_t len;
    TU_OK(b, traffic_set(b, "a", "1", 1, 0));
    TU_OK(b, traffic_set(b, "e", "1", 1, 0.05));
    TU_OK(b, traffic_increment(b, "c", 1, 0, NULL));
    TU_OK(b, traffic_increment(b, "c", 1, 0, NULL));
    TU_OK(b, traffic_get(b, "a", buf, sizeof buf, &len));
    ck_assert_int_eq(traffic_get(b, "zz", buf, sizeof buf, &len), TRAFFIC_ENOTFOUND);
    ck_assert_int_eq(traffic_exists(b, "c"), 1);
    ck_assert_int_eq(traffic_exists(b, "zz"), 0);
    TU_OK(b, traffic_delete(b, "a"));
    TU_OK(b, traffic_delete(b, "a"));
    tu_sleep_ms(80);
    TU_OK(b, traffic_delete(b, "e")); /* had expired: an expiration, not a delete */
    struct traffic_stats st;
    TU_OK(b, traffic_stats(b, &st));
    ck_assert_str_eq(st.backend, "sqlite");
    ck_assert_uint_eq(st.keys, 1);
    ck_assert_uint_eq(st.hits, 2);
    ck_assert_uint_eq(st.misses, 2);
    ck_assert_uint_eq(st.sets, 2);
    ck_assert_uint_eq(st.increments, 2);
    ck_assert_uint_eq(st.deletes, 1);
    ck_assert_uint_eq(st.expirations, 1);
    ck_assert_uint_eq(st.expired_pending, 0);
    ck_assert_uint_gt(st.bytes_used, 0);
    ck_assert_uint_gt(st.wal_bytes, 0);
    char json[1024];
    int n = traffic_stats_json(b, json, sizeof json);
    ck_assert_int_gt(n, 0);
    ck_assert_ptr_nonnull(strstr(json, "\"backend\":\"sqlite\""));
    ck_assert_ptr_nonnull(strstr(json, "\"wal_bytes\":"));
    TU_OK(b, traffic_close(b));
}
END_TEST

/* ---- opening: URL, options, paths ------------------------------------------------------ */

START_TEST(open_url_and_options)
{
    const char *dir = tsq_dir("url");
    const char *p = tsq_in_dir(dir, "t.db");
    traffic_backend *b = NULL;
    ck_assert_int_eq(traffic_open(tsq_url(p, "bogus=1"), &b), TRAFFIC_EINVAL);
    ck_assert_ptr_nonnull(strstr(traffic_errmsg(NULL), "bogus"));
    ck_assert_int_eq(traffic_open(tsq_url(p, "pool_size=0"), &b), TRAFFIC_EINVAL);
    ck_assert_int_eq(traffic_open(tsq_url(p, "pool_size=65"), &b), TRAFFIC_EINVAL);
    ck_assert_int_eq(traffic_open(tsq_url(p, "cleanup_interval=-1"), &b), TRAFFIC_EINVAL);
    ck_assert_int_eq(traffic_open(tsq_url(p, "timeout=abc"), &b), TRAFFIC_EINVAL);
    ck_assert_int_eq(traffic_open("sqlite://", &b), TRAFFIC_EINVAL);
    ck_assert_int_eq(traffic_open("sqlite://:memory:", &b), TRAFFIC_EINVAL);
    ck_assert_int_eq(traffic_open(tsq_url(dir, NULL), &b), TRAFFIC_EINVAL); /* a directory */
    ck_assert_ptr_null(b);
    ck_assert_int_eq(access(p, F_OK), -1); /* nothing created by the failures */
    b = tsq_open(p, "pool_size=2&cleanup_interval=0.5&timeout=2");
    TU_OK(b, traffic_increment(b, "k", 1, 0, NULL));
    TU_OK(b, traffic_close(b));
    /* percent-decoded path */
    b = tsq_open(tsq_in_dir(dir, "with%20space.db"), NULL);
    TU_OK(b, traffic_close(b));
    ck_assert_int_eq(access(tsq_in_dir(dir, "with space.db"), F_OK), 0);
    /* typed opener */
    traffic_sqlite_options o = {.path = p, .pool_size = 3, .timeout = 1};
    TU_OK(NULL, traffic_sqlite_open(&o, &b));
    ck_assert_int_eq(tu_counter(b, "k"), 1);
    TU_OK(b, traffic_close(b));
    o.pool_size = 100;
    ck_assert_int_eq(traffic_sqlite_open(&o, &b), TRAFFIC_EINVAL);
    o.pool_size = 0;
    o.timeout = -1;
    ck_assert_int_eq(traffic_sqlite_open(&o, &b), TRAFFIC_EINVAL);
    ck_assert_int_eq(traffic_sqlite_open(NULL, &b), TRAFFIC_EINVAL);
    o = (traffic_sqlite_options){0};
    ck_assert_int_eq(traffic_sqlite_open(&o, &b), TRAFFIC_EINVAL);
}
END_TEST

/* A relative path is resolved at open: a later chdir() changes nothing. */
START_TEST(open_relative_path)
{
    const char *dir = tsq_dir("rel");
    char cwd[512];
    ck_assert_ptr_nonnull(getcwd(cwd, sizeof cwd));
    ck_assert_int_eq(chdir(dir), 0);
    traffic_backend *b = NULL;
    TU_OK(NULL, traffic_open("sqlite://rel.db", &b));
    ck_assert_int_eq(chdir("/"), 0);
    TU_OK(b, traffic_increment(b, "k", 1, 0, NULL)); /* the pool opens its first connection now */
    TU_OK(b, traffic_close(b));
    ck_assert_int_eq(access(tsq_in_dir(dir, "rel.db"), F_OK), 0);
    ck_assert_int_eq(access("/rel.db", F_OK), -1);
    ck_assert_int_eq(chdir(cwd), 0);
}
END_TEST

START_TEST(open_missing_directory)
{
    const char *dir = tsq_dir("missing");
    const char *p = tsq_in_dir(dir, "no/such/dir/t.db");
    traffic_backend *b = NULL;
    ck_assert_int_eq(traffic_open(tsq_url(p, NULL), &b), TRAFFIC_EIO);
    ck_assert_ptr_null(b);
    ck_assert_ptr_nonnull(strstr(traffic_errmsg(NULL), "no/such/dir"));
    ck_assert_ptr_nonnull(strstr(traffic_errmsg(NULL), "No such file"));
}
END_TEST

/* In a child that is not root (root ignores directory permissions): opening a new file, or
 * an existing one, in a read-only directory is TRAFFIC_EPERM naming the directory. */
START_TEST(open_readonly_directory)
{
    const char *dir = tsq_dir("ro");
    const char *existing = tsq_in_dir(dir, "old.db");
    traffic_backend *b = tsq_open(existing, NULL);
    TU_OK(b, traffic_increment(b, "k", 1, 0, NULL));
    TU_OK(b, traffic_close(b));
    chmod(existing, 0666);
    ck_assert_int_eq(chmod(dir, 0555), 0);
    pid_t pid = fork();
    if (pid == 0) {
        if (geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0)) _exit(77);
        traffic_backend *c = NULL;
        int rc1 = traffic_open(tsq_url(tsq_in_dir(dir, "new.db"), NULL), &c);
        int m1 = strstr(traffic_errmsg(NULL), "not writable") != NULL && strstr(traffic_errmsg(NULL), dir) != NULL;
        int rc2 = traffic_open(tsq_url(existing, NULL), &c);
        int m2 = strstr(traffic_errmsg(NULL), "not writable") != NULL;
        if (rc1 != TRAFFIC_EPERM || !m1) _exit(1);
        if (rc2 != TRAFFIC_EPERM || !m2) _exit(2);
        _exit(0);
    }
    int st = tu_wait(pid);
    chmod(dir, 0755);
    if (st == 77) { /* cannot drop root here: nothing to test */
        printf("open_readonly_directory: skipped, could not drop root privileges\n");
        return;
    }
    ck_assert_msg(st == 0, "child failed at step %d", st);
}
END_TEST

/* ---- the file's identity --------------------------------------------------------------- */

START_TEST(schema_marks_and_reopen)
{
    const char *dir = tsq_dir("reopen");
    const char *p = tsq_in_dir(dir, "t.db");
    traffic_backend *b = tsq_open(p, NULL);
    TU_OK(b, traffic_set(b, "v", "value", 5, 100));
    TU_OK(b, traffic_increment(b, "c", 41, 0, NULL));
    TU_OK(b, traffic_increment(b, "short", 1, 0.2, NULL));
    TU_OK(b, traffic_close(b));
    ck_assert_int_eq(tsq_raw_int(p, "PRAGMA application_id"), 0x54524643);
    ck_assert_int_eq(tsq_raw_int(p, "PRAGMA user_version"), 1);
    ck_assert_str_eq(tsq_raw_text(p, "PRAGMA journal_mode"), "wal");
    tu_sleep_ms(250);
    b = tsq_open(p, NULL);
    char buf[16];
    size_t len;
    TU_OK(b, traffic_get(b, "v", buf, sizeof buf, &len));
    ck_assert(len == 5 && memcmp(buf, "value", 5) == 0);
    double ttl;
    TU_OK(b, traffic_ttl(b, "v", &ttl));
    ck_assert_msg(ttl > 99 && ttl <= 100, "ttl %f", ttl);
    int64_t n;
    TU_OK(b, traffic_increment(b, "c", 1, 0, &n));
    ck_assert_int_eq(n, 42);
    ck_assert_int_eq(traffic_exists(b, "short"), 0); /* expired while closed */
    TU_OK(b, traffic_close(b));
}
END_TEST

static void expect_corrupt(const char *path, const char *what)
{
    traffic_backend *b = NULL;
    int rc = traffic_open(tsq_url(path, NULL), &b);
    ck_assert_msg(rc == TRAFFIC_ECORRUPT, "%s: %s (%s)", what, traffic_strerror(rc), traffic_errmsg(NULL));
    ck_assert_ptr_null(b);
    ck_assert_ptr_nonnull(strstr(traffic_errmsg(NULL), path));
}

START_TEST(foreign_garbage_file)
{
    const char *dir = tsq_dir("garbage");
    const char *p = tsq_in_dir(dir, "g.db");
    FILE *f = fopen(p, "wb");
    for (int i = 0; i < 20000; i++)
        fputc((i * 7919) & 0xff, f);
    fclose(f);
    size_t n0, n1;
    char *before = tsq_slurp(p, &n0);
    expect_corrupt(p, "garbage");
    char *after = tsq_slurp(p, &n1);
    ck_assert(n0 == n1 && memcmp(before, after, n0) == 0); /* untouched */
    ck_assert_int_eq(access(tsq_in_dir(dir, "g.db-wal"), F_OK), -1);
    ck_assert_int_eq(access(tsq_in_dir(dir, "g.db-turn"), F_OK), -1);
    free(before);
    free(after);
    /* text that is not SQLite either */
    const char *q = tsq_in_dir(dir, "text.db");
    f = fopen(q, "w");
    fputs("hello, this is a config file\n", f);
    fclose(f);
    expect_corrupt(q, "text");
}
END_TEST

START_TEST(foreign_sqlite_databases)
{
    const char *dir = tsq_dir("foreign");
    /* another application's database: refused, its data, mode and marks unchanged */
    const char *p = tsq_in_dir(dir, "app.db");
    tsq_raw_exec(p, "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO users VALUES (1, 'ann');");
    expect_corrupt(p, "another app");
    ck_assert_ptr_nonnull(strstr(traffic_errmsg(NULL), "not a traffic database"));
    ck_assert_str_eq(tsq_raw_text(p, "SELECT name FROM users"), "ann");
    ck_assert_str_eq(tsq_raw_text(p, "PRAGMA journal_mode"), "delete");
    ck_assert_int_eq(tsq_raw_int(p, "SELECT count(*) FROM sqlite_schema"), 1);
    ck_assert_int_eq(access(tsq_in_dir(dir, "app.db-turn"), F_OK), -1);
    /* an empty database marked by another application */
    const char *q = tsq_in_dir(dir, "marked.db");
    tsq_raw_exec(q, "PRAGMA application_id = 1234; PRAGMA user_version = 7;");
    expect_corrupt(q, "marked");
    /* ours, but a schema version this library does not know */
    const char *r = tsq_in_dir(dir, "future.db");
    traffic_backend *b = tsq_open(r, NULL);
    TU_OK(b, traffic_close(b));
    tsq_raw_exec(r, "PRAGMA user_version = 2;");
    expect_corrupt(r, "future version");
    ck_assert_ptr_nonnull(strstr(traffic_errmsg(NULL), "version 2"));
    /* our marks on tables that are not ours */
    const char *t = tsq_in_dir(dir, "fake.db");
    tsq_raw_exec(t, "CREATE TABLE traffic_entries (x); PRAGMA application_id = 1414678083; PRAGMA user_version = 1;");
    expect_corrupt(t, "fake schema");
    /* an empty file (touch) is an empty database: it becomes ours */
    const char *e = tsq_in_dir(dir, "empty.db");
    close(open(e, O_CREAT | O_WRONLY, 0644));
    b = tsq_open(e, NULL);
    TU_OK(b, traffic_increment(b, "k", 1, 0, NULL));
    TU_OK(b, traffic_close(b));
}
END_TEST

/* A traffic database damaged after the fact: a broken header is refused at open; a broken
 * data page makes the operations that read it fail with TRAFFIC_ECORRUPT (never a crash,
 * never a wrong success for the damaged keys). */
START_TEST(damaged_files)
{
    const char *dir = tsq_dir("damaged");
    const char *p = tsq_in_dir(dir, "t.db");
    traffic_backend *b = tsq_open(p, NULL);
    char val[300], key[32];
    memset(val, 'v', sizeof val);
    for (int i = 0; i < 3000; i++) {
        snprintf(key, sizeof key, "key-%d", i);
        TU_OK(b, traffic_set(b, key, val, sizeof val, 0));
    }
    TU_OK(b, traffic_close(b)); /* last connection: checkpointed into the main file */
    struct stat st;
    ck_assert_int_eq(stat(p, &st), 0);
    ck_assert_int_gt(st.st_size, 40 * 4096);
    char junk[4096];
    memset(junk, 0xAB, sizeof junk);
    int fd = open(p, O_WRONLY);
    for (int page = 10; page < 40; page += 3)
        ck_assert_int_eq(pwrite(fd, junk, sizeof junk, (off_t)page * 4096), 4096);
    close(fd);
    b = tsq_open(p, NULL);
    int corrupt = 0;
    for (int i = 0; i < 3000; i++) {
        snprintf(key, sizeof key, "key-%d", i);
        char buf[400];
        size_t len;
        int rc = traffic_get(b, key, buf, sizeof buf, &len);
        ck_assert_msg(rc == TRAFFIC_OK || rc == TRAFFIC_ECORRUPT || rc == TRAFFIC_ENOTFOUND, "%s",
                      traffic_strerror(rc));
        if (rc == TRAFFIC_OK) ck_assert(len == sizeof val && memcmp(buf, val, len) == 0);
        corrupt += rc == TRAFFIC_ECORRUPT;
    }
    ck_assert_int_gt(corrupt, 0);
    TU_OK(b, traffic_close(b));
    /* the header */
    fd = open(p, O_WRONLY);
    ck_assert_int_eq(pwrite(fd, "SQLite format 9", 15, 0), 15);
    close(fd);
    expect_corrupt(p, "damaged header");
}
END_TEST

/* ---- many processes -------------------------------------------------------------------- */

#define PROCS      6
#define PROC_INCRS 1500
#define PROC_KEYS  3

/* Each child opens its own handle (as unrelated processes would) and increments PROC_KEYS
 * shared keys round robin; every failure is counted in shared memory. */
START_TEST(procs_exact_totals)
{
    const char *dir = tsq_dir("procs");
    const char *p = tsq_in_dir(dir, "t.db");
    traffic_backend *b = tsq_open(p, NULL);
    TU_OK(b, traffic_close(b));
    uint64_t *errs = tu_shared(4096), *retries = errs + 64;
    pid_t pids[PROCS];
    for (int w = 0; w < PROCS; w++) {
        if ((pids[w] = fork()) == 0) {
            traffic_backend *c = NULL;
            if (traffic_open(tsq_url(p, "timeout=10"), &c) != TRAFFIC_OK) _exit(1);
            char key[8];
            for (int i = 0; i < PROC_INCRS; i++) {
                snprintf(key, sizeof key, "k%d", i % PROC_KEYS);
                if (traffic_increment(c, key, 1, 0, NULL) != TRAFFIC_OK) __atomic_add_fetch(errs, 1, __ATOMIC_RELAXED);
            }
            struct traffic_stats st;
            traffic_stats(c, &st);
            retries[w] = st.busy_retries;
            traffic_close(c);
            _exit(0);
        }
    }
    uint64_t total_retries = 0;
    for (int w = 0; w < PROCS; w++) {
        ck_assert_int_eq(tu_wait(pids[w]), 0);
        total_retries += retries[w];
    }
    ck_assert_uint_eq(*errs, 0);
    b = tsq_open(p, NULL);
    for (int k = 0; k < PROC_KEYS; k++) {
        char key[8];
        snprintf(key, sizeof key, "k%d", k);
        ck_assert_int_eq(tu_counter(b, key), PROCS * PROC_INCRS / PROC_KEYS);
    }
    TU_OK(b, traffic_close(b));
    ck_assert_str_eq(tsq_raw_text(p, "PRAGMA integrity_check"), "ok");
    printf("procs_exact_totals: %d processes x %d increments, %llu busy retries\n", PROCS, PROC_INCRS,
           (unsigned long long)total_retries);
}
END_TEST

/* Two processes create the same new file at the same instant: one schema, both work. */
START_TEST(procs_create_race)
{
    const char *dir = tsq_dir("race");
    for (int round = 0; round < 40; round++) {
        char name[32];
        snprintf(name, sizeof name, "r%d.db", round);
        const char *p = tsq_in_dir(dir, name);
        pid_t pids[4];
        for (int w = 0; w < 4; w++)
            if ((pids[w] = fork()) == 0) {
                traffic_backend *c = NULL;
                if (traffic_open(tsq_url(p, NULL), &c) != TRAFFIC_OK) _exit(1);
                if (traffic_increment(c, "k", 1, 0, NULL) != TRAFFIC_OK) _exit(2);
                traffic_close(c);
                _exit(0);
            }
        for (int w = 0; w < 4; w++)
            ck_assert_int_eq(tu_wait(pids[w]), 0);
        ck_assert_int_eq(tsq_raw_int(p, "SELECT counter FROM traffic_entries WHERE key = 'k'"), 4);
        ck_assert_int_eq(tsq_raw_int(p, "SELECT count(*) FROM sqlite_schema"), 4); /* 2 tables, 2 indexes */
    }
}
END_TEST

/* Workers increment one key and publish, after each TRAFFIC_OK, how many they got. One is
 * SIGKILLed in the middle; the others must finish without an error, the file must pass
 * integrity_check, and the total must hold every acknowledged increment (plus at most the
 * one the killed worker had in flight). Several rounds, killed at different moments. */
#define KILL_WORKERS 4
#define KILL_INCRS   3000

static void kill_worker(const char *p, int w, volatile uint64_t *acked, uint64_t *errs)
{
    traffic_backend *c = NULL;
    if (traffic_open(tsq_url(p, "timeout=10"), &c) != TRAFFIC_OK) _exit(1);
    char val[2048];
    memset(val, 'a' + w, sizeof val);
    for (int i = 0; i < KILL_INCRS; i++) {
        if (traffic_increment(c, "hits", 1, 0, NULL) != TRAFFIC_OK) {
            __atomic_add_fetch(errs, 1, __ATOMIC_RELAXED);
            continue;
        }
        acked[w]++;
        if (i % 8 == 0 && traffic_set(c, "blob", val, sizeof val, 0) != TRAFFIC_OK) /* bigger writes too */
            __atomic_add_fetch(errs, 1, __ATOMIC_RELAXED);
    }
    traffic_close(c);
    _exit(0);
}

START_TEST(crash_sigkill_mid_writes)
{
    const char *dir = tsq_dir("kill");
    for (int round = 0; round < 4; round++) {
        char name[32];
        snprintf(name, sizeof name, "k%d.db", round);
        const char *p = tsq_in_dir(dir, name);
        traffic_backend *b = tsq_open(p, NULL);
        TU_OK(b, traffic_close(b));
        uint64_t *shared = tu_shared(4096), *errs = shared + 32;
        volatile uint64_t *acked = shared;
        pid_t pids[KILL_WORKERS];
        for (int w = 0; w < KILL_WORKERS; w++)
            if ((pids[w] = fork()) == 0) kill_worker(p, w, acked, errs);
        while (acked[0] < (uint64_t)(200 + round * 400))
            tu_sleep_ms(1);
        kill(pids[0], SIGKILL);
        ck_assert_int_eq(tu_wait(pids[0]), 128 + SIGKILL);
        for (int w = 1; w < KILL_WORKERS; w++)
            ck_assert_int_eq(tu_wait(pids[w]), 0);
        ck_assert_uint_eq(*errs, 0);
        ck_assert_str_eq(tsq_raw_text(p, "PRAGMA integrity_check"), "ok");
        b = tsq_open(p, NULL);
        int64_t total = tu_counter(b, "hits");
        uint64_t others = (uint64_t)(KILL_WORKERS - 1) * KILL_INCRS;
        ck_assert_msg((uint64_t)total >= others + acked[0] && (uint64_t)total <= others + acked[0] + 1,
                      "total %lld, acknowledged %llu + %llu", (long long)total, (unsigned long long)others,
                      (unsigned long long)acked[0]);
        TU_OK(b, traffic_close(b));
        munmap((void *)shared, 4096);
    }
}
END_TEST

/* ---- fork -------------------------------------------------------------------------------- */

#define FORK_CHILDREN 4
#define FORK_INCRS    500

/* A handle opened AND used in the parent keeps working in forked children, while the
 * parent keeps using it too. */
START_TEST(fork_children_share_handle)
{
    const char *dir = tsq_dir("fork");
    traffic_backend *b = tsq_open(tsq_in_dir(dir, "t.db"), "pool_size=2");
    TU_OK(b, traffic_increment(b, "k", 1, 0, NULL));
    start_cleanup_settled(b);
    pid_t pids[FORK_CHILDREN];
    for (int w = 0; w < FORK_CHILDREN; w++)
        if ((pids[w] = fork()) == 0) {
            alarm(120);
            for (int i = 0; i < FORK_INCRS; i++)
                if (traffic_increment(b, "k", 1, 0, NULL) != TRAFFIC_OK) _exit(1);
            if (traffic_stop_cleanup(b) != TRAFFIC_OK) _exit(2); /* not ours: a no-op */
            if (traffic_close(b) != TRAFFIC_OK) _exit(3);
            _exit(0);
        }
    for (int i = 0; i < FORK_INCRS; i++)
        TU_OK(b, traffic_increment(b, "k", 1, 0, NULL));
    for (int w = 0; w < FORK_CHILDREN; w++)
        ck_assert_int_eq(tu_wait(pids[w]), 0);
    ck_assert_int_eq(tu_counter(b, "k"), 1 + (FORK_CHILDREN + 1) * FORK_INCRS);
    TU_OK(b, traffic_close(b));
}
END_TEST

/* The parent used the handle, forks, then closes it while the child goes on writing, and an
 * unrelated process opens the file in between. Without the atfork handler the child's SQLite
 * believes it holds the parent's locks, the parent's last close deletes the WAL under it, and
 * the child's later increments vanish. */
START_TEST(fork_parent_closes)
{
    const char *dir = tsq_dir("forkclose");
    const char *p = tsq_in_dir(dir, "t.db");
    traffic_backend *b = tsq_open(p, NULL);
    TU_OK(b, traffic_increment(b, "k", 1, 0, NULL));
    int go[2], done[2];
    ck_assert_int_eq(pipe(go), 0);
    ck_assert_int_eq(pipe(done), 0);
    pid_t pid = fork();
    if (pid == 0) {
        char ch;
        alarm(60);
        for (int i = 0; i < 10; i++)
            if (traffic_increment(b, "k", 1, 0, NULL)) _exit(1);
        if (write(done[1], "x", 1) != 1 || read(go[0], &ch, 1) != 1) _exit(2);
        for (int i = 0; i < 10; i++)
            if (traffic_increment(b, "k", 1, 0, NULL)) _exit(3);
        traffic_close(b);
        _exit(0);
    }
    char ch;
    ck_assert_int_eq(read(done[0], &ch, 1), 1);
    TU_OK(b, traffic_close(b));
    pid_t third = fork();
    if (third == 0) {
        traffic_backend *c = NULL;
        if (traffic_open(tsq_url(p, NULL), &c) || traffic_increment(c, "k", 100, 0, NULL)) _exit(1);
        traffic_close(c);
        _exit(0);
    }
    ck_assert_int_eq(tu_wait(third), 0);
    ck_assert_int_eq(write(go[1], "x", 1), 1);
    ck_assert_int_eq(tu_wait(pid), 0);
    b = tsq_open(p, NULL);
    ck_assert_int_eq(tu_counter(b, "k"), 1 + 20 + 100);
    TU_OK(b, traffic_close(b));
    ck_assert_str_eq(tsq_raw_text(p, "PRAGMA integrity_check"), "ok");
}
END_TEST

/* fork() while other threads of the parent are in the middle of operations: the children
 * must neither hang on a lock held by a thread that does not exist in them nor lose
 * increments. */
struct hammer {
    traffic_backend *b;
    _Atomic int stop;
    uint64_t done, errors;
};

static void *hammer_main(void *arg)
{
    struct hammer *h = arg;
    while (!h->stop) {
        if (traffic_increment(h->b, "k", 1, 0, NULL) == TRAFFIC_OK)
            __atomic_add_fetch(&h->done, 1, __ATOMIC_RELAXED);
        else
            __atomic_add_fetch(&h->errors, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

START_TEST(fork_while_threads_write)
{
#if TU_ASAN
    return; /* forks while threads allocate: not under this ASan (testutil.h) */
#endif
    const char *dir = tsq_dir("forkthreads");
    struct hammer h = {.b = tsq_open(tsq_in_dir(dir, "t.db"), "pool_size=2")};
    pthread_t th[3];
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(pthread_create(&th[i], NULL, hammer_main, &h), 0);
    tu_sleep_ms(50); /* see start_cleanup_settled */
    int children = 0;
    for (int round = 0; round < 20; round++) {
        tu_sleep_ms(5);
        pid_t pid = fork();
        if (pid == 0) {
            alarm(30);
            for (int i = 0; i < 20; i++)
                if (traffic_increment(h.b, "k", 1, 0, NULL)) _exit(1);
            _exit(0);
        }
        ck_assert_int_eq(tu_wait(pid), 0);
        children++;
    }
    h.stop = 1;
    for (int i = 0; i < 3; i++)
        pthread_join(th[i], NULL);
    ck_assert_uint_eq(h.errors, 0);
    ck_assert_int_eq(tu_counter(h.b, "k"), (int64_t)h.done + children * 20);
    TU_OK(h.b, traffic_close(h.b));
}
END_TEST

/* ---- threads ----------------------------------------------------------------------------- */

#define THREADS      8
#define THREAD_INCRS 1000

struct tjob {
    traffic_backend *b;
    int id;
    int errors;
};

static void *thread_main(void *arg)
{
    struct tjob *j = arg;
    char key[16], buf[32];
    size_t len;
    for (int i = 0; i < THREAD_INCRS; i++) {
        j->errors += traffic_increment(j->b, "shared", 1, 0, NULL) != TRAFFIC_OK;
        snprintf(key, sizeof key, "own%d", j->id);
        j->errors += traffic_increment(j->b, key, 1, 60, NULL) != TRAFFIC_OK;
        j->errors += traffic_get(j->b, "shared", buf, sizeof buf, &len) != TRAFFIC_OK;
    }
    return NULL;
}

START_TEST(threads_share_handle)
{
    const char *dir = tsq_dir("threads");
    traffic_backend *b = tsq_open(tsq_in_dir(dir, "t.db"), "pool_size=3");
    TU_OK(b, traffic_increment(b, "shared", 0, 0, NULL));
    pthread_t th[THREADS];
    struct tjob jobs[THREADS];
    for (int i = 0; i < THREADS; i++) {
        jobs[i] = (struct tjob){.b = b, .id = i};
        ck_assert_int_eq(pthread_create(&th[i], NULL, thread_main, &jobs[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        ck_assert_int_eq(jobs[i].errors, 0);
    }
    ck_assert_int_eq(tu_counter(b, "shared"), THREADS * THREAD_INCRS);
    for (int i = 0; i < THREADS; i++) {
        char key[16];
        snprintf(key, sizeof key, "own%d", i);
        ck_assert_int_eq(tu_counter(b, key), THREAD_INCRS);
    }
    TU_OK(b, traffic_close(b));
}
END_TEST

/* ---- cleanup ----------------------------------------------------------------------------- */

START_TEST(cleanup_sweeps_expired)
{
    const char *dir = tsq_dir("cleanup");
    const char *p = tsq_in_dir(dir, "t.db");
    traffic_backend *b = tsq_open(p, "cleanup_interval=0.05");
    char key[32];
    for (int i = 0; i < 2000; i++) {
        snprintf(key, sizeof key, "gone-%d", i);
        TU_OK(b, traffic_increment(b, key, 1, 0.05, NULL));
    }
    for (int i = 0; i < 10; i++) {
        snprintf(key, sizeof key, "stays-%d", i);
        TU_OK(b, traffic_set(b, key, "x", 1, i ? 0 : 600));
    }
    tu_sleep_ms(100);
    ck_assert_uint_eq(tu_stats(b).expired_pending, 2000);
    TU_OK(b, traffic_start_cleanup(b));
    TU_OK(b, traffic_start_cleanup(b)); /* twice: OK */
    int64_t t0 = tu_now_ms();
    /* the pass counts itself after its last batch: wait for both (a loaded machine showed the
     * keys gone and reaper_runs still 0) */
    struct traffic_stats st;
    while (((st = tu_stats(b)).keys > 10 || st.reaper_runs == 0) && tu_now_ms() - t0 < 10000)
        tu_sleep_ms(10);
    st = tu_stats(b);
    ck_assert_uint_eq(st.keys, 10);
    ck_assert_uint_eq(st.expired_pending, 0);
    ck_assert_uint_eq(st.expirations, 2000);
    ck_assert_uint_gt(st.reaper_runs, 0);
    ck_assert_int_eq(st.reaper_pid, getpid());
    TU_OK(b, traffic_stop_cleanup(b));
    TU_OK(b, traffic_stop_cleanup(b));           /* not running: OK */
    ck_assert_int_eq(tu_stats(b).reaper_pid, 0); /* the lease was handed back */
    ck_assert_int_eq(tsq_raw_int(p, "SELECT count(*) FROM traffic_entries"), 10);
    TU_OK(b, traffic_close(b));
}
END_TEST

/* Two processes run cleanup threads: one holds the lease at a time; when it is SIGKILLed,
 * the other takes over once the lease (2 intervals + 1 s) has run out. */
START_TEST(cleanup_one_reaper_and_takeover)
{
    const char *dir = tsq_dir("lease");
    const char *p = tsq_in_dir(dir, "t.db");
    traffic_backend *b = tsq_open(p, "cleanup_interval=0.1");
    int ready[2];
    ck_assert_int_eq(pipe(ready), 0);
    pid_t child = fork();
    if (child == 0) {
        traffic_backend *c = NULL;
        if (traffic_open(tsq_url(p, "cleanup_interval=0.1"), &c) || traffic_start_cleanup(c)) _exit(1);
        struct traffic_stats st;
        do
            tu_sleep_ms(5);
        while (traffic_stats(c, &st) == 0 && st.reaper_pid != getpid());
        if (write(ready[1], "x", 1) != 1) _exit(2);
        for (;;)
            pause();
    }
    char ch;
    ck_assert_int_eq(read(ready[0], &ch, 1), 1);
    TU_OK(b, traffic_start_cleanup(b));
    for (int i = 0; i < 10; i++) { /* the child keeps renewing: the parent never gets it */
        tu_sleep_ms(50);
        ck_assert_int_eq(tu_stats(b).reaper_pid, child);
    }
    TU_OK(b, traffic_increment(b, "gone", 1, 0.01, NULL));
    kill(child, SIGKILL);
    ck_assert_int_eq(tu_wait(child), 128 + SIGKILL);
    int64_t t0 = tu_now_ms();
    while (tu_stats(b).reaper_pid != getpid() && tu_now_ms() - t0 < 5000)
        tu_sleep_ms(20);
    ck_assert_int_eq(tu_stats(b).reaper_pid, getpid());
    while (tu_stats(b).keys > 0 && tu_now_ms() - t0 < 8000)
        tu_sleep_ms(20);
    ck_assert_uint_eq(tu_stats(b).keys, 0);
    TU_OK(b, traffic_close(b));
}
END_TEST

/* ---- waiting for other writers ------------------------------------------------------------ */

/* A new database (directory tag) opened with params, counter "k" at 1, and a raw connection
 * that holds its write lock (returned; COMMIT and close it). */
static sqlite3 *locked_by_another(const char *tag, const char *params, traffic_backend **b)
{
    const char *p = tsq_in_dir(tsq_dir(tag), "t.db");
    *b = tsq_open(p, params);
    TU_OK(*b, traffic_increment(*b, "k", 1, 0, NULL));
    sqlite3 *db = tsq_raw_open(p);
    ck_assert_int_eq(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    return db;
}

/* Another connection holds the write lock: reads go on (WAL), a write waits `timeout` and
 * then fails with TRAFFIC_ETIMEDOUT, and works again once the lock is released. */
START_TEST(busy_timeout_reported)
{
    traffic_backend *b;
    sqlite3 *db = locked_by_another("busy", "timeout=0.3", &b);
    ck_assert_int_eq(tu_counter(b, "k"), 1);
    int64_t t0 = tu_now_ms();
    ck_assert_int_eq(traffic_increment(b, "k", 1, 0, NULL), TRAFFIC_ETIMEDOUT);
    int64_t waited = tu_now_ms() - t0;
    ck_assert_msg(waited >= 290 && waited < 2000, "waited %lld ms", (long long)waited);
    ck_assert_ptr_nonnull(strstr(traffic_errmsg(b), "locked"));
    ck_assert_uint_gt(tu_stats(b).busy_retries, 0);
    ck_assert_int_eq(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    TU_OK(b, traffic_increment(b, "k", 1, 0, NULL));
    ck_assert_int_eq(tu_counter(b, "k"), 2);
    TU_OK(b, traffic_close(b));
}
END_TEST

/* A call's `timeout` covers all its waiting: one that first waits for the only pooled
 * connection (held by a call stuck on the lock) and then meets the lock itself gives up when
 * its own timeout is over, not a whole timeout after it got the connection. */
START_TEST(busy_timeout_counts_the_pool_wait)
{
    traffic_backend *b;
    sqlite3 *db = locked_by_another("poolwait", "timeout=1&pool_size=1", &b);
    tu_timed first = {.b = b, .op = TU_INCR, .key = "k"};
    pthread_t tid;
    ck_assert_int_eq(pthread_create(&tid, NULL, tu_timed_call, &first), 0);
    tu_sleep_ms(200); /* the first call holds the connection, waiting for the lock */
    tu_timed second = {.b = b, .op = TU_INCR, .key = "k"};
    tu_timed_call(&second);
    pthread_join(tid, NULL);
    ck_assert_int_eq(first.rc, TRAFFIC_ETIMEDOUT);
    ck_assert_int_eq(second.rc, TRAFFIC_ETIMEDOUT);
    /* ~800 ms: the pool until the first call gave up, then nothing left. (A fresh timeout
     * for the lock made it ~1800 ms; the bound leaves room for a loaded machine.) */
    ck_assert_msg(second.took < 1400, "the second call gave up after %lld ms", (long long)second.took);
    ck_assert_int_eq(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    TU_OK(b, traffic_increment(b, "k", 1, 0, NULL));
    TU_OK(b, traffic_close(b));
}
END_TEST

/* The turnstile's claimant is stuck (here: this process holds the OFD lock on PATH-turn and
 * never writes, as a stopped claimant would): writers hold back at most ~20 ms each and then
 * go ahead; nothing fails. Released, writes no longer hold back. */
START_TEST(busy_turnstile_claimant_stuck)
{
    const char *dir = tsq_dir("turn");
    const char *p = tsq_in_dir(dir, "t.db");
    traffic_backend *b = tsq_open(p, NULL);
    TU_OK(b, traffic_increment(b, "k", 1, 0, NULL)); /* the pool's connection creates PATH-turn */
    int fd = open(tsq_in_dir(dir, "t.db-turn"), O_RDWR);
    ck_assert_int_ge(fd, 0);
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
    ck_assert_int_eq(fcntl(fd, F_OFD_SETLK, &fl), 0);
    int64_t t0 = tu_now_ms();
    for (int i = 0; i < 10; i++)
        TU_OK(b, traffic_increment(b, "k", 1, 0, NULL));
    int64_t held = tu_now_ms() - t0;
    ck_assert_msg(held >= 150 && held < 2000, "10 writes behind a stuck claimant took %lld ms", (long long)held);
    fl.l_type = F_UNLCK;
    ck_assert_int_eq(fcntl(fd, F_OFD_SETLK, &fl), 0);
    close(fd);
    t0 = tu_now_ms();
    for (int i = 0; i < 10; i++)
        TU_OK(b, traffic_increment(b, "k", 1, 0, NULL));
    ck_assert_msg(tu_now_ms() - t0 < held / 2, "writes still held back after the release");
    ck_assert_int_eq(tu_counter(b, "k"), 21);
    TU_OK(b, traffic_close(b));
}
END_TEST

/* The latency of an increment with W writer processes on one file, with the backend's busy
 * handler and with SQLite's default (sqlite3_busy_timeout), in two loads: "paced" (each
 * writer waits 100 us between increments, like a server doing request work) and
 * "saturated" (back to back: the write lock is never free for long, and being unfair, can
 * pass a waiter over many times). The parent holds a handle running the cleanup thread, as a
 * server's master would. Prints the figures; asserts that no call failed, the exact total,
 * and (as a guard against a handler that sleeps for seconds) a worst case under 2 s. */
#define LAT_MAX_WRITERS 4

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* errs[0] counts failed calls; errs[1] gets the largest WAL size a worker saw at its end. */
static void latency_worker(const char *p, int n, int pace_us, uint64_t *lat, uint64_t *errs)
{
    traffic_backend *c = NULL;
    if (traffic_open(tsq_url(p, "timeout=30"), &c) != TRAFFIC_OK) _exit(1);
    struct timespec a, z, pause = {0, pace_us * 1000L};
    for (int i = 0; i < n; i++) {
        clock_gettime(CLOCK_MONOTONIC, &a);
        if (traffic_increment(c, "hot", 1, 0, NULL) != TRAFFIC_OK) __atomic_add_fetch(errs, 1, __ATOMIC_RELAXED);
        clock_gettime(CLOCK_MONOTONIC, &z);
        lat[i] = (uint64_t)((z.tv_sec - a.tv_sec) * 1000000000LL + (z.tv_nsec - a.tv_nsec));
        if (pace_us) nanosleep(&pause, NULL);
    }
    struct traffic_stats st;
    uint64_t cur = __atomic_load_n(&errs[1], __ATOMIC_RELAXED);
    if (traffic_stats(c, &st) == TRAFFIC_OK)
        while (cur < st.wal_bytes &&
               !__atomic_compare_exchange_n(&errs[1], &cur, st.wal_bytes, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
        }
    traffic_close(c);
    _exit(0);
}

static void latency_run(const char *dir, int writers, int pace_us, int sqlite_default)
{
    int per = pace_us ? 3000 : 5000;
    char name[48];
    snprintf(name, sizeof name, "lat-%d-%d-%d.db", writers, pace_us, sqlite_default);
    const char *p = tsq_in_dir(dir, name);
    traffic_backend *master = tsq_open(p, "cleanup_interval=60");
    start_cleanup_settled(master);
    size_t bytes = sizeof(uint64_t) * ((size_t)LAT_MAX_WRITERS * (size_t)per + 8);
    uint64_t *lat = tu_shared(bytes), *errs = lat + (size_t)LAT_MAX_WRITERS * (size_t)per;
    sqlite_debug_default_busy = sqlite_default;
    pid_t pids[LAT_MAX_WRITERS];
    for (int w = 0; w < writers; w++)
        if ((pids[w] = fork()) == 0) latency_worker(p, per, pace_us, lat + (size_t)w * (size_t)per, errs);
    for (int w = 0; w < writers; w++)
        ck_assert_int_eq(tu_wait(pids[w]), 0);
    sqlite_debug_default_busy = 0;
    ck_assert_uint_eq(*errs, 0);
    size_t n = (size_t)writers * (size_t)per;
    qsort(lat, n, sizeof *lat, cmp_u64);
    printf("busy latency: %d writers, %-9s, %-14s: p50 %6.1f us  p99 %7.1f us  p99.9 %7.1f us  max %7.2f ms  "
           "(WAL %.1f MiB)\n",
           writers, pace_us ? "paced" : "saturated", sqlite_default ? "sqlite default" : "traffic", lat[n / 2] / 1e3,
           lat[n * 99 / 100] / 1e3, lat[n * 999 / 1000] / 1e3, lat[n - 1] / 1e6, errs[1] / 1048576.0);
    fflush(stdout);
    if (!sqlite_default) {
        ck_assert_msg(lat[n - 1] < 2000000000ull, "an increment took %.0f ms", lat[n - 1] / 1e6);
        ck_assert_msg(errs[1] < 64u << 20, "the WAL grew to %llu bytes", (unsigned long long)errs[1]);
    }
    ck_assert_int_eq(tu_counter(master, "hot"), (int64_t)n);
    TU_OK(master, traffic_close(master));
    munmap(lat, bytes);
}

START_TEST(busy_latency)
{
    const char *dir = tsq_dir("latency");
    for (int pace = 100; pace >= 0; pace -= 100)
        for (int writers = 2; writers <= LAT_MAX_WRITERS; writers += 2) {
            latency_run(dir, writers, pace, 0);
            latency_run(dir, writers, pace, 1);
        }
}
END_TEST

/* A long-lived reader (a backup, an admin shell in a transaction) keeps the WAL from
 * starting over, so it grows past the size where checkpoints become RESTART ones. Those must
 * never wait for the reader: one used to, holding the writer lock, so every write of every
 * process stalled for the timeout and other writers failed with TRAFFIC_ETIMEDOUT. */
START_TEST(long_reader_does_not_stall_writers)
{
    char path[512];
    snprintf(path, sizeof path, "%s/reader.db", tsq_dir("reader"));
    traffic_sqlite_options o = {.path = path, .timeout = 0.3};
    traffic_backend *b;
    TU_OK(NULL, traffic_sqlite_open(&o, &b));
    TU_OK(b, traffic_set(b, "seed", "x", 1, 0));
    sqlite3 *db;
    ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
    ck_assert_int_eq(sqlite3_exec(db, "BEGIN; SELECT count(*) FROM traffic_entries;", NULL, NULL, NULL), SQLITE_OK);
    char v[600];
    memset(v, 'a', sizeof v);
    for (int i = 0; i < 4200; i++) { /* about 12000 WAL frames: past the RESTART size */
        char k[32];
        snprintf(k, sizeof k, "k%d", i);
        TU_OK(b, traffic_set(b, k, v, sizeof v, 0));
    }
    /* Both processes now write enough to cross checkpoint points (every 1000 frames) while
     * the other writes. The child waits for locks at most 0.1 s: a checkpoint of the parent
     * that waited for the reader (0.3 s, holding the writer lock) would fail its writes. */
    pid_t p = fork();
    if (p == 0) {
        traffic_sqlite_options oc = {.path = path, .timeout = 0.1};
        traffic_backend *c;
        if (traffic_sqlite_open(&oc, &c) != TRAFFIC_OK) _exit(100);
        int failed = 0;
        for (int i = 0; i < 1500; i++) {
            char k[32];
            snprintf(k, sizeof k, "c%d", i);
            failed += traffic_set(c, k, v, sizeof v, 0) != TRAFFIC_OK;
        }
        traffic_close(c);
        /* a few late writes are a loaded machine (seen under ASan with tests side by side); a
         * checkpoint that waits for the reader fails a dozen or more (the mutant: 13) */
        _exit(failed > 3 ? (failed > 99 ? 99 : failed) : 0);
    }
    int failed = 0;
    for (int i = 0; i < 1500; i++) {
        char k[32];
        snprintf(k, sizeof k, "p%d", i);
        failed += traffic_set(b, k, v, sizeof v, 0) != TRAFFIC_OK;
    }
    ck_assert_int_eq(tu_wait(p), 0);
    ck_assert_int_eq(failed, 0);
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    sqlite3_close(db);
    TU_OK(b, traffic_close(b));
}
END_TEST


int main(void)
{
    Suite *s = suite_create("sqlite");
    TCase *tc = tcase_create("sqlite");
    tcase_add_unchecked_fixture(tc, base_setup, base_teardown);
    tcase_add_test(tc, ops_values);
    tcase_add_test(tc, ops_value_limit);
    tcase_add_test(tc, ops_counters);
    tcase_add_test(tc, ops_expiry);
    tcase_add_test(tc, ops_stats);
    tcase_add_test(tc, open_url_and_options);
    tcase_add_test(tc, open_relative_path);
    tcase_add_test(tc, open_missing_directory);
    tcase_add_test(tc, open_readonly_directory);
    tcase_add_test(tc, schema_marks_and_reopen);
    tcase_add_test(tc, foreign_garbage_file);
    tcase_add_test(tc, foreign_sqlite_databases);
    tcase_add_test(tc, damaged_files);
    tcase_add_test(tc, procs_exact_totals);
    tcase_add_test(tc, procs_create_race);
    tcase_add_test(tc, crash_sigkill_mid_writes);
    tcase_add_test(tc, fork_children_share_handle);
    tcase_add_test(tc, fork_parent_closes);
    tcase_add_test(tc, fork_while_threads_write);
    tcase_add_test(tc, threads_share_handle);
    tcase_add_test(tc, cleanup_sweeps_expired);
    tcase_add_test(tc, cleanup_one_reaper_and_takeover);
    tcase_add_test(tc, busy_timeout_reported);
    tcase_add_test(tc, busy_timeout_counts_the_pool_wait);
    tcase_add_test(tc, busy_turnstile_claimant_stuck);
    tcase_add_test(tc, busy_latency);
    tcase_add_test(tc, long_reader_does_not_stall_writers);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
