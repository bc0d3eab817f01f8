/*
 * test_procs.c — one limit for the whole server: real forked processes (and an unrelated
 * program started with posix_spawn) share one memory table.
 *   - 4 workers x 100k increments over 16 hot keys give exact totals;
 *   - a named table is opened by name by a separately executed process;
 *   - an expiry is seen by every process at once, and an expired counter restarts;
 *   - among several processes with a reaper, one is elected, stays elected while alive,
 *     and another takes over when it is SIGKILLed; expired keys are reaped without access.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

extern char **environ;
static char self_exe[4096];

#define WORKERS    4
#define PER_WORKER 100000
#define HOT        16

START_TEST(workers_exact_totals)
{
    traffic_backend *b;
    TU_OK(NULL, traffic_open("memory://", &b));
    pid_t pids[WORKERS];
    for (int w = 0; w < WORKERS; w++) {
        pids[w] = fork();
        if (pids[w] == 0) {
            char key[16];
            for (int i = 0; i < PER_WORKER; i++) {
                snprintf(key, sizeof key, "hot:%d", (i + w) % HOT);
                if (traffic_increment(b, key, 1, 0, NULL) != TRAFFIC_OK) _exit(1);
            }
            _exit(0);
        }
    }
    for (int w = 0; w < WORKERS; w++)
        ck_assert_int_eq(tu_wait(pids[w]), 0);
    int64_t total = 0;
    for (int k = 0; k < HOT; k++) {
        char key[16];
        snprintf(key, sizeof key, "hot:%d", k);
        int64_t v = tu_counter(b, key);
        ck_assert_int_eq(v, (int64_t)WORKERS * PER_WORKER / HOT);
        total += v;
    }
    ck_assert_int_eq(total, (int64_t)WORKERS * PER_WORKER);
    struct traffic_stats st;
    TU_OK(b, traffic_stats(b, &st));
    ck_assert_uint_ge(st.increments, (uint64_t)WORKERS * PER_WORKER);
    TU_OK(b, traffic_close(b));
}
END_TEST

/* The "unrelated process": this same test binary, executed anew with --child. */
static int child_main(const char *name)
{
    char url[300];
    tu_memory_url(url, sizeof url, name, NULL);
    traffic_backend *b;
    if (traffic_open(url, &b)) return 10;
    char buf[64];
    size_t len;
    if (traffic_get(b, "greeting", buf, sizeof buf, &len) || len != 11 || memcmp(buf, "from parent", 11)) return 11;
    if (tu_counter(b, "visits") != 41) return 12;
    int64_t n;
    if (traffic_increment(b, "visits", 1, 0, &n) || n != 42) return 13;
    if (traffic_set(b, "reply", "from child", 10, 0)) return 14;
    traffic_close(b);
    return 0;
}

START_TEST(named_table_unrelated_process)
{
    if (tu_skip(tu_emulated(), "named_table_unrelated_process", TU_WHY_NO_EXEC)) return;
    const char *name = tu_name("named");
    char url[300];
    tu_memory_url(url, sizeof url, name, NULL);
    traffic_backend *b;
    TU_OK(NULL, traffic_open(url, &b));
    TU_OK(b, traffic_set(b, "greeting", "from parent", 11, 0));
    TU_OK(b, traffic_increment(b, "visits", 41, 0, NULL));
    pid_t pid;
    char *argv[] = {self_exe, "--child", (char *)name, NULL};
    ck_assert_int_eq(posix_spawn(&pid, self_exe, NULL, NULL, argv, environ), 0);
    ck_assert_int_eq(tu_wait(pid), 0);
    ck_assert_int_eq(tu_counter(b, "visits"), 42);
    char buf[64];
    size_t len;
    TU_OK(b, traffic_get(b, "reply", buf, sizeof buf, &len));
    ck_assert(len == 10 && memcmp(buf, "from child", 10) == 0);
    TU_OK(b, traffic_close(b));
    TU_OK(NULL, traffic_memory_unlink(name));
}
END_TEST

START_TEST(expiry_seen_by_all_processes)
{
    traffic_backend *b;
    TU_OK(NULL, traffic_open("memory://", &b));
    TU_OK(b, traffic_set(b, "session", "abc", 3, 0.3));
    TU_OK(b, traffic_increment(b, "window", 5, 0.3, NULL));
    pid_t pids[3];
    for (int c = 0; c < 3; c++) {
        pids[c] = fork();
        if (pids[c] == 0) {
            if (traffic_exists(b, "session") != 1 || tu_counter(b, "window") != 5) _exit(1);
            tu_sleep_ms(600);
            char buf[8];
            size_t len;
            if (traffic_get(b, "session", buf, sizeof buf, &len) != TRAFFIC_ENOTFOUND) _exit(2);
            if (traffic_exists(b, "window") != 0) _exit(3);
            double ttl;
            if (traffic_ttl(b, "session", &ttl) != TRAFFIC_ENOTFOUND) _exit(4);
            _exit(0);
        }
    }
    for (int c = 0; c < 3; c++)
        ck_assert_int_eq(tu_wait(pids[c]), 0);
    /* an expired counter starts again from the amount, with the new TTL */
    int64_t n;
    TU_OK(b, traffic_increment(b, "window", 1, 10, &n));
    ck_assert_int_eq(n, 1);
    double ttl;
    TU_OK(b, traffic_ttl(b, "window", &ttl));
    ck_assert(ttl > 9 && ttl <= 10);
    TU_OK(b, traffic_close(b));
}
END_TEST

static int64_t reaper_pid(traffic_backend *b)
{
    struct traffic_stats st;
    if (traffic_stats(b, &st)) return -1;
    return st.reaper_pid;
}

START_TEST(reaper_elected_and_taken_over)
{
    if (tu_skip(!tu_robust_futexes(), "reaper_elected_and_taken_over", TU_WHY_NO_ROBUST)) return;
    const char *name = tu_name("reaper");
    char url[300];
    tu_memory_url(url, sizeof url, name, "cleanup_interval=0.05");
    traffic_backend *b;
    TU_OK(NULL, traffic_open(url, &b));
    pid_t pids[3];
    for (int c = 0; c < 3; c++) {
        pids[c] = fork();
        if (pids[c] == 0) {
            traffic_backend *cb;
            if (traffic_open(url, &cb) || traffic_start_cleanup(cb)) _exit(1);
            for (;;)
                pause();
        }
    }
    /* one of them is elected... */
    int64_t elected = 0;
    for (int i = 0; i < 200 && elected <= 0; i++, tu_sleep_ms(20))
        elected = reaper_pid(b);
    int idx = -1;
    for (int c = 0; c < 3; c++)
        if (pids[c] == elected) idx = c;
    ck_assert_msg(idx >= 0, "reaper_pid %lld is none of the children", (long long)elected);
    /* ...and stays elected while it lives, working every interval */
    struct traffic_stats st0, st1;
    TU_OK(b, traffic_stats(b, &st0));
    for (int i = 0; i < 25; i++, tu_sleep_ms(20))
        ck_assert_int_eq(reaper_pid(b), elected);
    TU_OK(b, traffic_stats(b, &st1));
    ck_assert_uint_gt(st1.reaper_runs, st0.reaper_runs);

    /* expired keys disappear without anybody touching them */
    for (int i = 0; i < 100; i++) {
        char key[16];
        snprintf(key, sizeof key, "e:%d", i);
        TU_OK(b, traffic_set(b, key, "x", 1, 0.05));
    }
    for (int i = 0; i < 100; i++, tu_sleep_ms(20)) {
        TU_OK(b, traffic_stats(b, &st1));
        if (st1.keys == 0) break;
    }
    ck_assert_uint_eq(st1.keys, 0);
    ck_assert_uint_ge(st1.expirations, 100);

    /* kill the elected one: another child takes over */
    kill(pids[idx], SIGKILL);
    tu_wait(pids[idx]);
    int64_t next = 0;
    for (int i = 0; i < 300; i++, tu_sleep_ms(20)) {
        next = reaper_pid(b);
        if (next > 0 && next != elected) break;
    }
    ck_assert_msg(next > 0 && next != elected, "no reaper took over (reaper_pid %lld)", (long long)next);
    for (int c = 0; c < 3; c++)
        if (c != idx) {
            ck_assert(next == pids[c] || next == pids[3 - idx - c]);
            kill(pids[c], SIGKILL);
            tu_wait(pids[c]);
        }
    TU_OK(b, traffic_close(b));
    TU_OK(NULL, traffic_memory_unlink(name));
}
END_TEST

START_TEST(attached_counts_processes_and_recovers_dead)
{
    if (tu_skip(!tu_robust_futexes(), "attached_counts_processes_and_recovers_dead", TU_WHY_NO_ROBUST)) return;
    traffic_backend *b;
    TU_OK(NULL, traffic_open("memory://", &b));
    TU_OK(b, traffic_increment(b, "k", 1, 0, NULL)); /* attaches this thread */
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    pid_t pids[3];
    for (int c = 0; c < 3; c++) {
        pids[c] = fork();
        if (pids[c] == 0) {
            traffic_increment(b, "k", 1, 0, NULL);
            char x;
            (void)!read(fds[0], &x, 1); /* wait until told to die */
            for (;;)
                pause();
        }
    }
    struct traffic_stats st;
    for (int i = 0; i < 100; i++, tu_sleep_ms(10)) {
        TU_OK(b, traffic_stats(b, &st));
        if (st.attached == 4) break;
    }
    ck_assert_uint_eq(st.attached, 4);
    for (int c = 0; c < 3; c++) {
        kill(pids[c], SIGKILL);
        tu_wait(pids[c]);
    }
    TU_OK(b, traffic_stats(b, &st));
    ck_assert_uint_eq(st.attached, 1);
    ck_assert_uint_ge(st.recovered, 3);
    TU_OK(b, traffic_close(b));
}
END_TEST

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--child") == 0) return child_main(argv[2]);
    ssize_t n = readlink("/proc/self/exe", self_exe, sizeof self_exe - 1);
    if (n > 0) self_exe[n] = '\0';
    Suite *s = suite_create("procs");
    TCase *tc = tcase_create("procs");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, workers_exact_totals);
    tcase_add_test(tc, named_table_unrelated_process);
    tcase_add_test(tc, expiry_seen_by_all_processes);
    tcase_add_test(tc, reaper_elected_and_taken_over);
    tcase_add_test(tc, attached_counts_processes_and_recovers_dead);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
