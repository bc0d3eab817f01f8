/* test_smoke.c — the library opens a memory table, counts, reads back and closes. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdlib.h>
#include <string.h>

#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../backends/pid.h"
#include "testutil.h"

START_TEST(smoke_memory)
{
    traffic_backend *b;
    TU_OK(NULL, traffic_open("memory://", &b));
    int64_t n = 0;
    for (int i = 1; i <= 1000; i++) {
        TU_OK(b, traffic_increment(b, "k", 1, 0, &n));
        ck_assert_int_eq(n, i);
    }
    char buf[32];
    size_t len;
    TU_OK(b, traffic_get(b, "k", buf, sizeof buf, &len));
    ck_assert_int_eq(len, 4);
    ck_assert(memcmp(buf, "1000", 4) == 0);
    TU_OK(b, traffic_set(b, "v", "hello", 5, 0));
    TU_OK(b, traffic_get(b, "v", buf, sizeof buf, &len));
    ck_assert_int_eq(len, 5);
    ck_assert(memcmp(buf, "hello", 5) == 0);
    ck_assert_int_eq(traffic_exists(b, "v"), 1);
    TU_OK(b, traffic_delete(b, "v"));
    ck_assert_int_eq(traffic_exists(b, "v"), 0);
    TU_OK(b, traffic_close(b));
}
END_TEST

/* Keys are hashed and compared as words built from whole loads (shm/table.c key_tail):
 * keys of every length that differ in exactly one byte, at every position, stay distinct. */
START_TEST(keys_of_every_length_distinct)
{
    traffic_backend *b;
    TU_OK(NULL, traffic_open("memory://?max_size=40000", &b));
    char key[TRAFFIC_KEY_MAX + 1];
    for (int len = 1; len <= TRAFFIC_KEY_MAX; len++) {
        memset(key, 'a', (size_t)len);
        key[len] = '\0';
        TU_OK(b, traffic_increment(b, key, 1000, 0, NULL));
        for (int pos = 0; pos < len; pos++) {
            key[pos] = 'b';
            TU_OK(b, traffic_increment(b, key, pos + 1, 0, NULL));
            key[pos] = 'a';
        }
    }
    for (int len = 1; len <= TRAFFIC_KEY_MAX; len++) {
        char buf[32];
        size_t n;
        memset(key, 'a', (size_t)len);
        key[len] = '\0';
        TU_OK(b, traffic_get(b, key, buf, sizeof buf - 1, &n));
        buf[n] = '\0';
        ck_assert_str_eq(buf, "1000");
        for (int pos = 0; pos < len; pos++) {
            key[pos] = 'b';
            TU_OK(b, traffic_get(b, key, buf, sizeof buf - 1, &n));
            buf[n] = '\0';
            ck_assert_int_eq(atoi(buf), pos + 1);
            key[pos] = 'a';
        }
    }
    struct traffic_stats st;
    TU_OK(b, traffic_stats(b, &st));
    ck_assert_uint_eq(st.keys, TRAFFIC_KEY_MAX + TRAFFIC_KEY_MAX * (TRAFFIC_KEY_MAX + 1) / 2);
    TU_OK(b, traffic_close(b));
}
END_TEST

/* tr_pid (backends/pid.h), which the SQLite and Redis backends use to tell a forked child from
 * its parent, is right in a child of fork(), of _Fork() (no atfork handlers run) and of a
 * raw clone(): each asks the kernel once. Exit status of a child: 0 if right. */
static int child_pid_ok(void)
{
    return tr_pid() == getpid() && tr_pid() == getpid() ? 0 : 1;
}

START_TEST(pid_in_children)
{
    ck_assert_int_eq(tr_pid(), getpid());
    pid_t c = fork();
    if (c == 0) _exit(child_pid_ok());
    ck_assert_int_eq(tu_wait(c), 0);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 34)
    c = _Fork();
    if (c == 0) _exit(child_pid_ok());
    ck_assert_int_eq(tu_wait(c), 0);
#endif
    c = (pid_t)syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
    if (c == 0) _exit(child_pid_ok());
    ck_assert_int_eq(tu_wait(c), 0);
    ck_assert_int_eq(tr_pid(), getpid());
}
END_TEST

int main(void)
{
    Suite *s = suite_create("smoke");
    TCase *tc = tcase_create("smoke");
    tcase_add_test(tc, smoke_memory);
    tcase_add_test(tc, keys_of_every_length_distinct);
    tcase_add_test(tc, pid_in_children);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
