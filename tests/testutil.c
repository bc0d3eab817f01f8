/* testutil.c — see testutil.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "testutil.h"

#include <dirent.h>
#include <ftw.h>
#include <sys/stat.h>
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static pid_t main_pid;

int tu_robust_futexes(void)
{
    void *head;
    size_t len;
    return syscall(SYS_get_robust_list, 0, &head, &len) == 0;
}

int tu_emulated(void)
{
#if defined(__x86_64__)
    const char *mine = "x86_64";
#elif defined(__aarch64__)
    const char *mine = "aarch64";
#else
    const char *mine = NULL; /* not told apart: taken as native */
#endif
    char arch[64] = "";
    FILE *f = fopen("/proc/sys/kernel/arch", "r"); /* Linux 6.1 and later */
    if (!f) return 0;
    if (!fgets(arch, sizeof arch, f)) arch[0] = '\0';
    fclose(f);
    arch[strcspn(arch, "\n")] = '\0';
    return mine && arch[0] && strcmp(arch, mine) != 0;
}

int tu_skip(int skip, const char *name, const char *why)
{
    if (skip) fprintf(stderr, "%s: skipped, %s\n", name, why);
    return skip;
}

const char *tu_name(const char *tag)
{
    static char buf[8][128];
    static int n;
    char *b = buf[n++ % 8];
    snprintf(b, 128, "t%d-%d-%d-%s", (int)(main_pid ? main_pid : getpid()), (int)getpid(), n, tag);
    return b;
}

/* Named tables of this run that a failed test could not unlink. */
static void remove_leftovers(void)
{
    char prefix[64];
    snprintf(prefix, sizeof prefix, "traffic.t%d-", (int)main_pid);
    DIR *d = opendir("/dev/shm");
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0) traffic_memory_unlink(e->d_name + strlen("traffic."));
    closedir(d);
}

void tu_memory_url(char *buf, size_t n, const char *name, const char *extra)
{
    snprintf(buf, n, "memory://%s%s%s", name, extra ? "?" : "", extra ? extra : "");
}

void *tu_shared(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ck_assert_ptr_ne(p, MAP_FAILED);
    return p;
}

char *tu_scratch_make(char *buf, size_t cap, const char *tag)
{
    snprintf(buf, cap, "/tmp/traffic-%s-XXXXXX", tag);
    if (!mkdtemp(buf)) return NULL;
    chmod(buf, 0755);
    return buf;
}

static int scratch_chmod(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)ftw;
    if (flag == FTW_D || (st && S_ISDIR(st->st_mode))) chmod(path, 0700);
    return 0;
}

static int scratch_rm(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

void tu_scratch_remove(const char *dir)
{
    nftw(dir, scratch_chmod, 16, FTW_PHYS);
    nftw(dir, scratch_rm, 16, FTW_DEPTH | FTW_PHYS);
}

int tu_wait(pid_t pid)
{
    int st;
    if (waitpid(pid, &st, 0) != pid) return -1;
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    return 128 + WTERMSIG(st);
}

int64_t tu_counter(traffic_backend *b, const char *key)
{
    char buf[32];
    size_t len;
    int rc = traffic_get(b, key, buf, sizeof buf - 1, &len);
    if (rc) {
        fprintf(stderr, "tu_counter(%s): %s (%s)\n", key, traffic_strerror(rc), traffic_errmsg(b));
        return INT64_MIN;
    }
    buf[len] = '\0';
    return strtoll(buf, NULL, 10);
}

void *tu_timed_call(void *arg)
{
    tu_timed *c = arg;
    char buf[32];
    size_t len;
    int64_t t0 = tu_now_ms();
    c->rc = c->op == TU_GET   ? traffic_get(c->b, c->key, buf, sizeof buf, &len)
            : c->op == TU_SET ? traffic_set(c->b, c->key, "v", 1, 0)
                              : traffic_increment(c->b, c->key, 1, 0, NULL);
    c->took = tu_now_ms() - t0;
    return NULL;
}

struct traffic_stats tu_stats(traffic_backend *b)
{
    struct traffic_stats st;
    TU_OK(b, traffic_stats(b, &st));
    return st;
}

void tu_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

int64_t tu_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int tu_run(Suite *s)
{
    main_pid = getpid();
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    remove_leftovers();
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

int tu_run_cases(const char *suite, const tu_case *cases, size_t n, SFun setup, SFun teardown)
{
    Suite *s = suite_create(suite);
    for (size_t i = 0; i < n; i++) {
        TCase *tc = tcase_create(cases[i].name);
        if (setup || teardown) tcase_add_unchecked_fixture(tc, setup, teardown);
        tcase_add_test(tc, cases[i].test);
        suite_add_tcase(s, tc);
    }
    return tu_run(s);
}

traffic_backend *tu_open(const char *url)
{
    traffic_backend *b = NULL;
    int rc = traffic_open(url, &b);
    ck_assert_msg(rc == TRAFFIC_OK && b, "open(%s) -> %s (%s)", url, traffic_strerror(rc), traffic_errmsg(NULL));
    return b;
}

traffic_rule tu_rule(const char *text)
{
    traffic_rule r;
    char msg[200];
    ck_assert_msg(traffic_rule_parse(text, &r, msg, sizeof msg) == TRAFFIC_OK, "%s: %s", text, msg);
    return r;
}
