/*
 * testutil.h — helpers shared by the Check suites: unique table names, a shared scratch
 * mapping for counting what children did, and waiting for children.
 */
#ifndef TRAFFIC_TESTUTIL_H
#define TRAFFIC_TESTUTIL_H

#include <check.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <traffic/traffic.h>

/* 1 when built with AddressSanitizer. GCC 12's libasan does not hold its allocator's locks
 * across fork(), unlike glibc's malloc: a child forked while another thread of the parent is
 * inside malloc can block forever on the copied lock (seen: t_fork_parent_handle hung in CI).
 * Tests that fork while their own threads allocate do so only without it. */
#if defined(__SANITIZE_ADDRESS__)
#define TU_ASAN 1
#else
#define TU_ASAN 0
#endif

/* Running under a user-mode emulator (qemu-user: scripts/cross-aarch64.sh runs the aarch64 tests
 * on an x86-64 machine). Two of its limits are not the library's and cannot be worked around in
 * it, so the few tests that meet them skip themselves with a line on stderr:
 *   tu_robust_futexes(): 0 where the kernel keeps no robust futex list for this process. qemu-user
 *     answers set_robust_list with ENOSYS (it cannot walk a guest's list at thread exit), so a
 *     dead holder's robust mutex never reports EOWNERDEAD and a dead process's participant
 *     records look held forever: nothing that needs a dead process noticed can pass there.
 *   tu_emulated(): 1 when the kernel runs another architecture than this program's (read from
 *     /proc/sys/kernel/arch, which qemu-user passes through). Without binfmt_misc such a program
 *     cannot exec itself (ENOEXEC), and qemu 7.2 aborts a child forked from a threaded parent as
 *     soon as the child starts a thread (its TCG plugin hook asserts). */
int tu_robust_futexes(void);
int tu_emulated(void);
/* Prints "name: skipped, why" on stderr when skip is true; returns skip. */
int tu_skip(int skip, const char *name, const char *why);
#define TU_WHY_NO_ROBUST   "no robust futex list (qemu-user): a dead process is never noticed"
#define TU_WHY_NO_EXEC     "a foreign-architecture program cannot exec itself (qemu-user, no binfmt_misc)"
#define TU_WHY_FORK_THREAD "qemu-user aborts a thread started in the child of a threaded parent"

/* "t<pid>-<counter>-<tag>": unique per test process and call. */
const char *tu_name(const char *tag);
/* memory://NAME?extra into buf; extra may be NULL. */
void tu_memory_url(char *buf, size_t n, const char *name, const char *extra);
/* A zeroed MAP_SHARED|MAP_ANONYMOUS area that forked children write and the parent reads. */
void *tu_shared(size_t bytes);
/* A new directory /tmp/traffic-TAG-XXXXXX into buf (mode 0755: tests run children as
 * nobody), or NULL. */
char *tu_scratch_make(char *buf, size_t cap, const char *tag);
/* Removes a directory tree, first making its directories writable again (a test may leave
 * read-only ones behind). */
void tu_scratch_remove(const char *dir);
/* Waits for pid; returns its exit status, or 128+signal. */
int tu_wait(pid_t pid);
/* Asserts rc == TRAFFIC_OK, printing the status and message otherwise. */
#define TU_OK(b, expr)                                                                                                 \
    do {                                                                                                               \
        int tu_rc_ = (expr);                                                                                           \
        ck_assert_msg(tu_rc_ == TRAFFIC_OK, "%s -> %s (%s)", #expr, traffic_strerror(tu_rc_), traffic_errmsg(b));      \
    } while (0)
/* Asserts that expr returns want, naming both statuses and the handle's message. */
#define TU_EXPECT_RC(b, expr, want)                                                                                    \
    do {                                                                                                               \
        int rc_ = (expr);                                                                                              \
        ck_assert_msg(rc_ == (want), "%s -> %d %s, want %s (%s)", #expr, rc_, traffic_strerror(rc_),                   \
                      traffic_strerror(want), rc_ < 0 ? traffic_errmsg(b) : "");                                       \
    } while (0)
/* The value of counter key, or INT64_MIN (after a line on stderr) when it cannot be read.
 * Asserts nothing, so forked children may use it too. */
int64_t tu_counter(traffic_backend *b, const char *key);
/* One call, timed: fill in b, op and key, then run tu_timed_call directly or as a thread
 * (pthread_create(&t, NULL, tu_timed_call, &c)); rc and took (ms) come back.
 * op: TU_GET (a get into a small buffer), TU_SET (sets "v"), TU_INCR (adds 1). */
enum { TU_GET, TU_SET, TU_INCR };
typedef struct tu_timed {
    traffic_backend *b;
    int op;
    char key[32];
    int rc;
    int64_t took;
} tu_timed;
void *tu_timed_call(void *arg);
/* A handle on url, asserting that it opens (the message names the URL and the error). */
traffic_backend *tu_open(const char *url);
/* The rule text parses to, asserting that it does. */
traffic_rule tu_rule(const char *text);
/* The handle's statistics, asserting that the call works. */
struct traffic_stats tu_stats(traffic_backend *b);
/* Sleeps ms milliseconds, through signals. */
void tu_sleep_ms(long ms);
/* Monotonic milliseconds. */
int64_t tu_now_ms(void);
/* Runs the suite; returns the process exit status for main(). */
int tu_run(Suite *s);
/* A suite of one test case per named test (CK_RUN_CASE=name runs one), each with the
 * unchecked fixture setup/teardown when given (may be NULL), run by tu_run. */
typedef struct tu_case {
    const char *name;
    const TTest *test;
} tu_case;
int tu_run_cases(const char *suite, const tu_case *cases, size_t n, SFun setup, SFun teardown);

#endif
