/* testutil.c — see testutil.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "testutil.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

const char *tu_name(const char *tag)
{
    static char buf[8][128];
    static int n;
    char *b = buf[n++ % 8];
    snprintf(b, 128, "t%d-%d-%s", (int)getpid(), n, tag);
    return b;
}

const char *tu_memory_url(const char *tag, const char *extra)
{
    static char buf[8][512];
    static int n;
    char *b = buf[n++ % 8];
    snprintf(b, 512, "memory://%s%s%s", tu_name(tag), extra ? "?" : "", extra ? extra : "");
    return b;
}

void *tu_shared(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ck_assert_ptr_ne(p, MAP_FAILED);
    return p;
}

int tu_wait(pid_t pid)
{
    int st;
    if (waitpid(pid, &st, 0) != pid) return -1;
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    return 128 + WTERMSIG(st);
}

int64_t tu_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int tu_run(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
