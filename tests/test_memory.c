/*
 * test_memory.c — what only the memory backend promises, beyond the shared contract:
 *
 *   - memory:// URLs: every parameter accepted, unknown or malformed ones rejected by name,
 *     bad table names and schemes rejected; the slot geometry (key_max, value_max up to 64 KiB);
 *   - named tables in /dev/shm: shared with processes that did not inherit the handle (a
 *     forked child and a freshly exec'd program open the name themselves), file mode, unlink,
 *     close keeps the data, geometry mismatch, corruption detected (never a crash, never a
 *     silent reset);
 *   - the typed opener and its options as traffic_stats reports them;
 *   - an anonymous table inherited across fork(): exact counts and statistics over processes;
 *   - the reaper removes expired entries on its own, and a child does not inherit it.
 *
 * Named tables come from tu_name (testutil.h), whose leftovers tu_run removes.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

/* ---- helpers --------------------------------------------------------------------------- */

static void path_of(char *buf, size_t n, const char *name) { snprintf(buf, n, "/dev/shm/traffic.%s", name); }

static int file_mode(const char *name)
{
    char path[512];
    struct stat st;
    path_of(path, sizeof path, name);
    if (stat(path, &st) < 0) return -errno;
    return (int)(st.st_mode & 07777);
}

static traffic_backend *open_ok(const char *url)
{
    traffic_backend *b = NULL;
    int rc = traffic_open(url, &b);
    ck_assert_msg(rc == TRAFFIC_OK && b, "open(%s) -> %s (%s)", url, traffic_strerror(rc), traffic_errmsg(NULL));
    return b;
}

/* traffic_open(url) must fail with want, leave *out NULL, and explain itself mentioning word. */
static void open_fails_at(const char *url, int want, const char *word, int line)
{
    traffic_backend *b = (traffic_backend *)&b;
    int rc = traffic_open(url, &b);
    const char *m = traffic_errmsg(NULL);
    if (!url) url = "(null)";
    ck_assert_msg(rc == want, "line %d: open(%.120s) -> %s, want %s (%s)", line, url, traffic_strerror(rc),
                  traffic_strerror(want), rc < 0 ? m : "");
    ck_assert_msg(b == NULL, "line %d: open(%.120s) failed but set *out", line, url);
    ck_assert_msg(m[0] != '\0', "line %d: open(%.120s) failed without a message", line, url);
    if (word) ck_assert_msg(strstr(m, word), "line %d: message \"%s\" does not mention \"%s\"", line, m, word);
}
#define OPEN_FAILS(url, want, word) open_fails_at(url, want, word, __LINE__)

static void expect_str_at(traffic_backend *b, const char *key, const char *want, int line)
{
    char buf[256];
    size_t len = 0;
    int rc = traffic_get(b, key, buf, sizeof buf, &len);
    ck_assert_msg(rc == TRAFFIC_OK, "line %d: get(%s) -> %s (%s)", line, key, traffic_strerror(rc), traffic_errmsg(b));
    ck_assert_msg(len == strlen(want) && memcmp(buf, want, len) == 0, "line %d: get(%s) = \"%.*s\", want \"%s\"", line,
                  key, (int)len, buf, want);
}
#define EXPECT_STR(b, key, want) expect_str_at(b, key, want, __LINE__)

static void unlink_ok(const char *name)
{
    int rc = traffic_memory_unlink(name);
    ck_assert_msg(rc == TRAFFIC_OK, "unlink(%s) -> %s (%s)", name, traffic_strerror(rc), traffic_errmsg(NULL));
}

/* Runs fn(arg) in a child process and returns its pid; the child's exit status is fn's result. */
static pid_t spawn(int (*fn)(void *), void *arg)
{
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) _exit(fn(arg));
    return pid;
}

static void wait_ok(pid_t pid, const char *what)
{
    int st = tu_wait(pid);
    ck_assert_msg(st == 0, "%s: child exited with %d (a failed check number, or 128+signal)", what, st);
}

/* ---- URLs ------------------------------------------------------------------------------ */

START_TEST(m_url_params_accepted)
{
    traffic_backend *b = open_ok("memory://?max_size=5&cleanup_interval=2.5&key_max=10&value_max=16");
    struct traffic_stats s = tu_stats(b);
    ck_assert_uint_eq(s.max_size, 5);
    ck_assert_uint_ge(s.capacity, 5);
    TU_OK(b, traffic_close(b));

    char url[512];
    const char *name = tu_name("params");
    tu_memory_url(url, sizeof url, name, "max_size=50&cleanup_interval=1&key_max=20&value_max=32&mode=0600");
    b = open_ok(url);
    ck_assert_uint_eq(tu_stats(b).max_size, 50);
    ck_assert_int_eq(file_mode(name), 0600);
    TU_OK(b, traffic_close(b));
    unlink_ok(name);

    b = open_ok("MEMORY://"); /* schemes are case-insensitive */
    TU_OK(b, traffic_close(b));
}
END_TEST

START_TEST(m_url_unknown_param)
{
    OPEN_FAILS("memory://?max_sise=5", TRAFFIC_EINVAL, "max_sise");
    OPEN_FAILS("memory://?max_size=5&colour=blue", TRAFFIC_EINVAL, "colour");
    OPEN_FAILS("memory://?prefix=x", TRAFFIC_EINVAL, "prefix"); /* a redis parameter */
    OPEN_FAILS("memory://?pool_size=2", TRAFFIC_EINVAL, "pool_size");
    char url[512];
    const char *name = tu_name("unknown");
    tu_memory_url(url, sizeof url, name, "max_sise=5");
    OPEN_FAILS(url, TRAFFIC_EINVAL, "max_sise");
    ck_assert_int_eq(file_mode(name), -ENOENT); /* rejected before anything was created */
}
END_TEST

START_TEST(m_url_bad_values)
{
    static const struct {
        const char *query, *param;
    } bad[] = {
        {"max_size=abc", "max_size"},          {"max_size=0", "max_size"},
        {"max_size=-1", "max_size"},           {"max_size=", "max_size"},
        {"max_size=12x", "max_size"},          {"max_size=99999999999999999999", "max_size"},
        {"value_max=70000", "value_max"},      {"value_max=65537", "value_max"},
        {"value_max=0", "value_max"},          {"key_max=251", "key_max"},
        {"key_max=0", "key_max"},              {"mode=999", "mode"},
        {"mode=1777", "mode"},                 {"mode=abc", "mode"},
        {"mode=-600", "mode"},                 {"cleanup_interval=-1", "cleanup_interval"},
        {"cleanup_interval=abc", "cleanup_interval"}, {"cleanup_interval=nan", "cleanup_interval"},
        {"cleanup_interval=inf", "cleanup_interval"}, {"cleanup_interval=-0.5", "cleanup_interval"},
        {"max_size=5&max_size=6", "max_size"}, {"max_size", "max_size"},
    };
    char url[512];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(url, sizeof url, "memory://?%s", bad[i].query);
        OPEN_FAILS(url, TRAFFIC_EINVAL, bad[i].param);
    }
    /* the upper bounds themselves are fine */
    traffic_backend *b = open_ok("memory://?key_max=250&value_max=65536&max_size=1");
    TU_OK(b, traffic_close(b));
}
END_TEST

START_TEST(m_url_bad_names)
{
    OPEN_FAILS("memory://a/b", TRAFFIC_EINVAL, NULL);
    OPEN_FAILS("memory://a b", TRAFFIC_EINVAL, NULL);
    OPEN_FAILS("memory://na%2Fme", TRAFFIC_EINVAL, NULL);
    OPEN_FAILS("memory://caf\xc3\xa9", TRAFFIC_EINVAL, NULL);

    char name[256], url[512];
    int n = snprintf(name, sizeof name, "%s-", tu_name("long"));
    memset(name + n, 'x', 201 - (size_t)n);
    name[201] = '\0';
    tu_memory_url(url, sizeof url, name, NULL);
    OPEN_FAILS(url, TRAFFIC_EINVAL, NULL);
    ck_assert_int_eq(file_mode(name), -ENOENT);

    name[200] = '\0'; /* 200 characters is the longest name */
    tu_memory_url(url, sizeof url, name, "max_size=10");
    traffic_backend *b = open_ok(url);
    TU_OK(b, traffic_set(b, "k", "v", 1, 0));
    TU_OK(b, traffic_close(b));
    ck_assert_int_eq(file_mode(name), 0600);
    unlink_ok(name);
}
END_TEST

START_TEST(m_url_schemes)
{
    /* sqlite and redis may or may not be built: either they work or say ENOTSUP, never crash. */
    char dir[] = "/tmp/traffic-test-XXXXXX", url[512], path[512];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(url, sizeof url, "sqlite://%s/t.db", dir);
    traffic_backend *b = NULL;
    int rc = traffic_open(url, &b);
    ck_assert_msg(rc == TRAFFIC_OK || rc == TRAFFIC_ENOTSUP, "open(%s) -> %s (%s)", url, traffic_strerror(rc),
                  traffic_errmsg(NULL));
    if (rc == TRAFFIC_OK) {
        TU_OK(b, traffic_set(b, "k", "v", 1, 0));
        TU_OK(b, traffic_close(b));
    } else {
        ck_assert_ptr_null(b);
        ck_assert_str_ne(traffic_errmsg(NULL), "");
    }
    DIR *d = opendir(dir); /* the database and whatever files SQLite kept beside it */
    ck_assert_ptr_nonnull(d);
    for (struct dirent *e; (e = readdir(d));) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    ck_assert_int_eq(rmdir(dir), 0);

    /* Nothing listens on port 1: a built redis backend may still open lazily (OK) or report
     * the server unreachable; an unbuilt one says ENOTSUP. */
    b = NULL;
    rc = traffic_open("redis://127.0.0.1:1?timeout=0.2", &b);
    ck_assert_msg(rc == TRAFFIC_OK || rc == TRAFFIC_ENOTSUP || rc == TRAFFIC_EUNAVAILABLE || rc == TRAFFIC_ETIMEDOUT,
                  "open(redis://127.0.0.1:1) -> %s (%s)", traffic_strerror(rc), traffic_errmsg(NULL));
    if (rc == TRAFFIC_OK) TU_OK(b, traffic_close(b));
    else ck_assert_ptr_null(b);

    OPEN_FAILS("ftp://example.com/x", TRAFFIC_EINVAL, "ftp");
    OPEN_FAILS("nonsense", TRAFFIC_EINVAL, NULL);
    OPEN_FAILS("", TRAFFIC_EINVAL, NULL);
    OPEN_FAILS("://x", TRAFFIC_EINVAL, NULL);
    OPEN_FAILS("memory:/", TRAFFIC_EINVAL, NULL);
    OPEN_FAILS(NULL, TRAFFIC_EINVAL, NULL);
}
END_TEST

/* ---- geometry -------------------------------------------------------------------------- */

START_TEST(m_key_max)
{
    traffic_backend *b = open_ok("memory://?key_max=10");
    const char *k10 = "kkkkkkkkkk", *k11 = "kkkkkkkkkkk";
    char buf[16];
    size_t len;
    double s;
    TU_OK(b, traffic_set(b, k10, "v", 1, 0));
    EXPECT_STR(b, k10, "v");
    TU_OK(b, traffic_increment(b, "cccccccccc", 1, 0, NULL));
    TU_EXPECT_RC(b, traffic_set(b, k11, "v", 1, 0), TRAFFIC_ETOOBIG);
    ck_assert_msg(strstr(traffic_errmsg(b), "key_max"), "message: %s", traffic_errmsg(b));
    TU_EXPECT_RC(b, traffic_get(b, k11, buf, sizeof buf, &len), TRAFFIC_ETOOBIG);
    TU_EXPECT_RC(b, traffic_exists(b, k11), TRAFFIC_ETOOBIG);
    TU_EXPECT_RC(b, traffic_increment(b, k11, 1, 0, NULL), TRAFFIC_ETOOBIG);
    TU_EXPECT_RC(b, traffic_ttl(b, k11, &s), TRAFFIC_ETOOBIG);
    TU_EXPECT_RC(b, traffic_delete(b, k11), TRAFFIC_ETOOBIG);
    ck_assert_uint_eq(tu_stats(b).keys, 2);
    TU_OK(b, traffic_close(b));
}
END_TEST

START_TEST(m_value_max)
{
    traffic_backend *b = open_ok("memory://?value_max=16");
    TU_OK(b, traffic_set(b, "v", "0123456789abcdef", 16, 0));
    EXPECT_STR(b, "v", "0123456789abcdef");
    TU_EXPECT_RC(b, traffic_set(b, "v", "0123456789abcdefg", 17, 0), TRAFFIC_ETOOBIG);
    ck_assert_msg(strstr(traffic_errmsg(b), "value_max"), "message: %s", traffic_errmsg(b));
    EXPECT_STR(b, "v", "0123456789abcdef");
    /* counters are not bytes values: a 20-digit counter is fine in a 16-byte table */
    TU_OK(b, traffic_increment(b, "c", INT64_MIN, 0, NULL));
    EXPECT_STR(b, "c", "-9223372036854775808");
    TU_OK(b, traffic_close(b));
}
END_TEST

START_TEST(m_value_max_64k)
{
    const size_t n = 65536;
    traffic_backend *b = open_ok("memory://?value_max=65536&max_size=10");
    unsigned char *v = malloc(n + 1), *got = malloc(n + 16);
    ck_assert(v && got);
    for (int round = 0; round < 3; round++) { /* each round replaces the value in place */
        for (size_t i = 0; i <= n; i++) v[i] = (unsigned char)((i * 131 + (size_t)round * 17) >> 3);
        TU_OK(b, traffic_set(b, "big", v, n, 0));
        size_t len = 0;
        TU_OK(b, traffic_get(b, "big", got, n + 16, &len));
        ck_assert_uint_eq(len, n);
        ck_assert_msg(memcmp(got, v, n) == 0, "round %d: 64 KiB value came back different", round);
    }
    TU_EXPECT_RC(b, traffic_set(b, "big", v, n + 1, 0), TRAFFIC_ETOOBIG);
    size_t len = 0;
    TU_EXPECT_RC(b, traffic_get(b, "big", got, 100, &len), TRAFFIC_ERANGE);
    ck_assert_uint_eq(len, n);
    free(v);
    free(got);
    TU_OK(b, traffic_close(b));
}
END_TEST

/* Key of length len for the head/body test: distinct for each (len, variant); variants share
 * their first 128 bytes and differ after them, where a slot's key continues in its body. */
static void split_key(char *k, int len, int variant)
{
    for (int i = 0; i < len; i++)
        k[i] = (char)('a' + (i * 7 + len) % 26);
    if (len > 128) k[128 + (variant * 13) % (len - 128)] = (char)('A' + variant);
    k[len] = 0;
}

/* A slot keeps the first 128 key bytes in its head and the rest in its body (shm/layout.h):
 * every key length up to key_max, written by one process and read by another. */
START_TEST(m_keys_across_head_and_body)
{
    /* heads 1 KiB apart; 1 KiB, no key in the body; 1 KiB; 512 bytes (map.c); 256 bytes */
    const char *urls[] = {"memory://?max_size=1000", "memory://?max_size=1000&key_max=128",
                          "memory://?max_size=1000&key_max=129&value_max=8", "memory://?max_size=10000&value_max=64",
                          "memory://?max_size=100000&value_max=64"};
    for (size_t u = 0; u < sizeof urls / sizeof urls[0]; u++) {
        traffic_backend *b = open_ok(urls[u]);
        int key_max = u == 1 ? 128 : u == 2 ? 129 : 250;
        pid_t c = fork();
        if (c == 0) {
            char k[256], v[16];
            for (int len = 1; len <= key_max; len++)
                for (int var = 0; var < (len > 128 ? 3 : 1); var++) {
                    split_key(k, len, var);
                    snprintf(v, sizeof v, "%d.%d", len % 100, var);
                    int rc =
                        len % 2 ? traffic_set(b, k, v, strlen(v), 0) : traffic_increment(b, k, len * 10 + var, 0, NULL);
                    if (rc != TRAFFIC_OK) _exit(1);
                }
            _exit(0);
        }
        ck_assert_int_eq(tu_wait(c), 0);
        char k[256], v[16], got[16];
        for (int len = 1; len <= key_max; len++)
            for (int var = 0; var < (len > 128 ? 3 : 1); var++) {
                split_key(k, len, var);
                if (len % 2) {
                    size_t n = 0;
                    snprintf(v, sizeof v, "%d.%d", len % 100, var);
                    TU_OK(b, traffic_get(b, k, got, sizeof got, &n));
                    ck_assert_msg(n == strlen(v) && memcmp(got, v, n) == 0, "%s: key of %d bytes", urls[u], len);
                } else {
                    ck_assert_int_eq(tu_counter(b, k), len * 10 + var);
                }
            }
        if (key_max > 128) { /* deleting a variant that differs past byte 128 leaves the others */
            split_key(k, key_max, 1);
            TU_OK(b, traffic_delete(b, k));
            ck_assert_int_eq(traffic_exists(b, k), 0);
            split_key(k, key_max, 0);
            ck_assert_int_eq(traffic_exists(b, k), 1);
            split_key(k, key_max, 2);
            ck_assert_int_eq(traffic_exists(b, k), 1);
        }
        TU_OK(b, traffic_close(b));
    }
}
END_TEST

/* Bodies sit back to back: a value buffer that ran past its body would overwrite the next
 * slot's key or values. 64 KiB values (so no 4x headroom: 200 keys in 512 slots, many of
 * them neighbours), keys that continue in the body, every value rewritten so that both
 * buffers of each slot get used; then every key must read back its own last value. */
START_TEST(m_neighbours_keep_their_values)
{
    enum { KEYS = 200, VLEN = 65536 };
    traffic_backend *b = open_ok("memory://?max_size=200&value_max=65536");
    unsigned char *v = malloc(VLEN), *got = malloc(VLEN);
    ck_assert(v && got);
    char key[256];
    for (int round = 0; round < 3; round++)
        for (int i = 0; i < KEYS; i++) {
            snprintf(key, sizeof key, "nb:%04d:%0180d", i, i);
            memset(v, (i * 3 + round) & 0xff, VLEN);
            TU_OK(b, traffic_set(b, key, v, VLEN, 0));
        }
    for (int i = 0; i < KEYS; i++) {
        snprintf(key, sizeof key, "nb:%04d:%0180d", i, i);
        size_t n = 0;
        TU_OK(b, traffic_get(b, key, got, VLEN, &n));
        memset(v, (i * 3 + 2) & 0xff, VLEN);
        ck_assert_msg(n == VLEN && memcmp(got, v, VLEN) == 0, "key %d: value changed", i);
    }
    free(v);
    free(got);
    TU_OK(b, traffic_close(b));
}
END_TEST

/* Counters with short keys live in the slots' heads only: 100k of them in a table with the
 * default 256-byte values leave the bodies (where the value buffers are) untouched. With key,
 * counter and values in one 896-byte slot, as before the split, they touched ~200 MB. */
START_TEST(m_counters_leave_bodies_untouched)
{
    traffic_backend *b = open_ok("memory://?max_size=100000");
    char key[32];
    for (int i = 0; i < 100000; i++) {
        snprintf(key, sizeof key, "rl:%d", i);
        TU_OK(b, traffic_increment(b, key, 1, 0, NULL));
    }
    struct traffic_stats st = tu_stats(b);
    ck_assert_uint_eq(st.keys, 100000);
    ck_assert_uint_gt(st.bytes_used, 200ull << 20);                       /* heads and bodies mapped... */
    ck_assert_msg(st.bytes_resident < (st.capacity * 256 + (4ull << 20)), /* ...heads resident */
                  "%llu bytes resident for %llu slots", (unsigned long long)st.bytes_resident,
                  (unsigned long long)st.capacity);
    TU_OK(b, traffic_close(b));
}
END_TEST

/* ---- named tables ---------------------------------------------------------------------- */

/* What a process that attaches by name does: check the parent's data, add its own. Returns 0
 * or the number of the first failed check. */
static int named_visitor(const char *url, const char *tag)
{
    traffic_backend *b = NULL;
    if (traffic_open(url, &b) != TRAFFIC_OK) return 10;
    char buf[64];
    size_t len = 0;
    if (traffic_get(b, "from-parent", buf, sizeof buf, &len) != TRAFFIC_OK) return 11;
    if (len != 3 || memcmp(buf, "P\0x", 3) != 0) return 12;
    int64_t out = 0;
    if (traffic_increment(b, "shared", 10, 0, &out) != TRAFFIC_OK || out < 15) return 13;
    if (traffic_set(b, tag, tag, strlen(tag), 0) != TRAFFIC_OK) return 14;
    if (traffic_close(b) != TRAFFIC_OK) return 15;
    return 0;
}

struct visit {
    const char *url;
};

static int fork_visitor(void *arg)
{
    /* The inherited handle of the parent is not touched: this opens the name afresh. */
    return named_visitor(((struct visit *)arg)->url, "from-fork");
}

static int exec_visitor(void *arg)
{
    /* A new program image: nothing at all is inherited but the name. */
    execl("/proc/self/exe", "test_memory", "--named-visitor", ((struct visit *)arg)->url, (char *)NULL);
    return 127;
}

START_TEST(m_named_shared)
{
    char url[512];
    const char *name = tu_name("shared");
    tu_memory_url(url, sizeof url, name, NULL);
    traffic_backend *b = open_ok(url);
    TU_OK(b, traffic_set(b, "from-parent", "P\0x", 3, 0));
    TU_OK(b, traffic_increment(b, "shared", 5, 0, NULL));

    struct visit v = {url};
    wait_ok(spawn(fork_visitor, &v), "forked visitor");
    int exec = !tu_skip(tu_emulated(), "m_named_shared's exec'd visitor", TU_WHY_NO_EXEC);
    if (exec) wait_ok(spawn(exec_visitor, &v), "exec'd visitor");

    EXPECT_STR(b, "from-fork", "from-fork");
    if (exec) EXPECT_STR(b, "from-exec", "from-exec");
    EXPECT_STR(b, "shared", exec ? "25" : "15");
    TU_OK(b, traffic_close(b));
    unlink_ok(name);
}
END_TEST

START_TEST(m_named_mode)
{
    char url[512];
    const char *a = tu_name("mode-default"), *c = tu_name("mode-0640");
    tu_memory_url(url, sizeof url, a, "max_size=10");
    traffic_backend *b = open_ok(url);
    ck_assert_int_eq(file_mode(a), 0600);
    TU_OK(b, traffic_close(b));

    mode_t old = umask(077); /* the requested mode wins over a strict umask */
    tu_memory_url(url, sizeof url, c, "max_size=10&mode=0640");
    b = open_ok(url);
    umask(old);
    ck_assert_int_eq(file_mode(c), 0640);
    TU_OK(b, traffic_close(b));
    /* reopening an existing table does not change its mode */
    tu_memory_url(url, sizeof url, c, "mode=0600");
    b = open_ok(url);
    ck_assert_int_eq(file_mode(c), 0640);
    TU_OK(b, traffic_close(b));
    unlink_ok(a);
    unlink_ok(c);
}
END_TEST

START_TEST(m_named_unlink)
{
    char url[512];
    const char *name = tu_name("unlink");
    tu_memory_url(url, sizeof url, name, "max_size=10");
    traffic_backend *b = open_ok(url);
    TU_OK(b, traffic_set(b, "k", "v", 1, 0));
    unlink_ok(name);
    ck_assert_int_eq(file_mode(name), -ENOENT);
    /* an open handle keeps its table after the unlink */
    EXPECT_STR(b, "k", "v");
    TU_OK(b, traffic_set(b, "k2", "w", 1, 0));
    EXPECT_STR(b, "k2", "w");
    /* the name now makes a new, empty table */
    traffic_backend *b2 = open_ok(url);
    ck_assert_int_eq(traffic_exists(b2, "k"), 0);
    TU_OK(b2, traffic_close(b2));
    TU_OK(b, traffic_close(b));
    unlink_ok(name);

    TU_EXPECT_RC(NULL, traffic_memory_unlink(name), TRAFFIC_ENOTFOUND);
    ck_assert_str_ne(traffic_errmsg(NULL), "");
    TU_EXPECT_RC(NULL, traffic_memory_unlink(""), TRAFFIC_EINVAL);
    TU_EXPECT_RC(NULL, traffic_memory_unlink(NULL), TRAFFIC_EINVAL);
    TU_EXPECT_RC(NULL, traffic_memory_unlink("a/b"), TRAFFIC_EINVAL);
    TU_EXPECT_RC(NULL, traffic_memory_unlink("../traffic.x"), TRAFFIC_EINVAL);
    ck_assert_str_ne(traffic_errmsg(NULL), "");
}
END_TEST

START_TEST(m_named_close_keeps_data)
{
    char url[512];
    const char *name = tu_name("keep");
    tu_memory_url(url, sizeof url, name, "max_size=100");
    traffic_backend *b = open_ok(url);
    TU_OK(b, traffic_set(b, "v", "kept", 4, 0));
    TU_OK(b, traffic_increment(b, "c", 41, 0, NULL));
    TU_OK(b, traffic_set(b, "t", "ttl", 3, 100));
    TU_OK(b, traffic_close(b));

    b = open_ok(url);
    EXPECT_STR(b, "v", "kept");
    int64_t out = 0;
    TU_OK(b, traffic_increment(b, "c", 1, 0, &out));
    ck_assert_int_eq(out, 42);
    double s = 0;
    TU_OK(b, traffic_ttl(b, "t", &s));
    ck_assert_msg(s > 50 && s <= 100, "ttl after reopen %g", s);
    ck_assert_uint_eq(tu_stats(b).keys, 3);
    TU_OK(b, traffic_close(b));
    unlink_ok(name);
}
END_TEST

START_TEST(m_named_geometry_mismatch)
{
    char url[512];
    const char *name = tu_name("geometry");
    tu_memory_url(url, sizeof url, name, "max_size=100&key_max=50&value_max=64");
    traffic_backend *b = open_ok(url);
    TU_OK(b, traffic_set(b, "k", "v", 1, 0));

    tu_memory_url(url, sizeof url, name, "max_size=200");
    OPEN_FAILS(url, TRAFFIC_EINVAL, "max_size");
    tu_memory_url(url, sizeof url, name, "key_max=60");
    OPEN_FAILS(url, TRAFFIC_EINVAL, "key_max");
    tu_memory_url(url, sizeof url, name, "value_max=256");
    OPEN_FAILS(url, TRAFFIC_EINVAL, "value_max");
    traffic_memory_options o = {.name = name, .max_size = 200};
    traffic_backend *x = NULL;
    TU_EXPECT_RC(NULL, traffic_memory_open(&o, &x), TRAFFIC_EINVAL);
    ck_assert_ptr_null(x);

    /* no geometry: whatever the table has; the same geometry: fine */
    tu_memory_url(url, sizeof url, name, NULL);
    traffic_backend *b2 = open_ok(url);
    struct traffic_stats s = tu_stats(b2);
    ck_assert_uint_eq(s.max_size, 100);
    EXPECT_STR(b2, "k", "v");
    TU_OK(b2, traffic_close(b2));
    tu_memory_url(url, sizeof url, name, "max_size=100&value_max=64");
    b2 = open_ok(url);
    TU_OK(b2, traffic_close(b2));
    EXPECT_STR(b, "k", "v"); /* the failed opens did not disturb the table */
    TU_OK(b, traffic_close(b));
    unlink_ok(name);
}
END_TEST

/* ---- corruption ------------------------------------------------------------------------ */

static void make_table(const char *name)
{
    char url[512];
    tu_memory_url(url, sizeof url, name, "max_size=10");
    traffic_backend *b = open_ok(url);
    TU_OK(b, traffic_set(b, "k", "v", 1, 0));
    TU_OK(b, traffic_close(b));
}

static void write_at(const char *name, off_t off, const void *data, size_t n)
{
    char path[512];
    path_of(path, sizeof path, name);
    int fd = open(path, O_RDWR);
    ck_assert_msg(fd >= 0, "open %s: %s", path, strerror(errno));
    ck_assert_int_eq(pwrite(fd, data, n, off), (ssize_t)n);
    close(fd);
}

static void read_at(const char *name, off_t off, void *data, size_t n)
{
    char path[512];
    path_of(path, sizeof path, name);
    int fd = open(path, O_RDONLY);
    ck_assert_msg(fd >= 0, "open %s: %s", path, strerror(errno));
    ck_assert_int_eq(pread(fd, data, n, off), (ssize_t)n);
    close(fd);
}

static void expect_corrupt_at(const char *name, int line)
{
    char url[512];
    tu_memory_url(url, sizeof url, name, NULL);
    open_fails_at(url, TRAFFIC_ECORRUPT, NULL, line);
    traffic_memory_options o = {.name = name};
    traffic_backend *b = NULL;
    int rc = traffic_memory_open(&o, &b);
    ck_assert_msg(rc == TRAFFIC_ECORRUPT && b == NULL, "line %d: typed open -> %s", line, traffic_strerror(rc));
}
#define EXPECT_CORRUPT(name) expect_corrupt_at(name, __LINE__)

START_TEST(m_corrupt_header)
{
    const char *name = tu_name("scribbled");
    make_table(name);
    unsigned char junk[64], back[64];
    memset(junk, 0x5A, sizeof junk);
    write_at(name, 0, junk, sizeof junk);
    EXPECT_CORRUPT(name);
    read_at(name, 0, back, sizeof back); /* refused, and not "repaired" by reinitialising */
    ck_assert(memcmp(back, junk, sizeof junk) == 0);
    unlink_ok(name);
}
END_TEST

START_TEST(m_corrupt_small_files)
{
    char path[512];
    const char *name = tu_name("garbage");
    path_of(path, sizeof path, name);
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, "0123456789", 10), 10);
    close(fd);
    EXPECT_CORRUPT(name);
    unsigned char back[10];
    read_at(name, 0, back, sizeof back);
    ck_assert(memcmp(back, "0123456789", 10) == 0);
    unlink_ok(name);

    const char *empty = tu_name("empty");
    path_of(path, sizeof path, empty);
    fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
    ck_assert_int_ge(fd, 0);
    close(fd);
    EXPECT_CORRUPT(empty);
    unlink_ok(empty);

    /* a real table cut short */
    const char *cut = tu_name("truncated");
    make_table(cut);
    path_of(path, sizeof path, cut);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq(truncate(path, st.st_size / 2), 0);
    EXPECT_CORRUPT(cut);
    unlink_ok(cut);
}
END_TEST

START_TEST(m_corrupt_format_and_layout)
{
    /* bytes 8..15 hold the format version and the layout word: any change is refused */
    for (off_t off = 8; off < 16; off++) {
        char tag[32];
        snprintf(tag, sizeof tag, "flip%d", (int)off);
        const char *name = tu_name(tag);
        make_table(name);
        unsigned char byte;
        read_at(name, off, &byte, 1);
        byte ^= 0x41;
        write_at(name, off, &byte, 1);
        EXPECT_CORRUPT(name);
        unlink_ok(name);
    }
}
END_TEST

/* A table of the previous format (4: 256-byte heads) is refused, never misread, and the
 * message names both formats and what to do. */
START_TEST(m_old_format_refused)
{
    const char *name = tu_name("format4");
    make_table(name);
    uint32_t four = 4;
    write_at(name, 8, &four, sizeof four); /* the header's format field */
    char url[512];
    tu_memory_url(url, sizeof url, name, NULL);
    traffic_backend *b = (traffic_backend *)&b;
    ck_assert_int_eq(traffic_open(url, &b), TRAFFIC_ECORRUPT);
    ck_assert_ptr_null(b);
    const char *msg = traffic_errmsg(NULL);
    ck_assert_msg(strstr(msg, "format version 4 (256-byte slot heads)") && strstr(msg, "reads format 5") &&
                      strstr(msg, "traffic_memory_unlink"),
                  "message: %s", msg);
    unlink_ok(name);
}
END_TEST

/* ---- typed opener ---------------------------------------------------------------------- */

START_TEST(m_typed_open)
{
    traffic_backend *b = NULL;
    TU_OK(NULL, traffic_memory_open(NULL, &b));
    struct traffic_stats s = tu_stats(b);
    ck_assert_str_eq(s.backend, "memory");
    ck_assert_uint_eq(s.max_size, 10000);
    ck_assert_uint_ge(s.capacity, 10000);
    unsigned char v[257] = {0};
    TU_OK(b, traffic_set(b, "v", v, 256, 0));
    TU_EXPECT_RC(b, traffic_set(b, "v", v, 257, 0), TRAFFIC_ETOOBIG);
    TU_OK(b, traffic_close(b));

    traffic_memory_options o = {.max_size = 500, .key_max = 20, .value_max = 1000, .cleanup_interval = 0.5};
    TU_OK(NULL, traffic_memory_open(&o, &b));
    s = tu_stats(b);
    ck_assert_uint_eq(s.max_size, 500);
    ck_assert_uint_ge(s.capacity, 500);
    ck_assert_uint_eq(s.keys, 0);
    TU_OK(b, traffic_set(b, "kkkkkkkkkkkkkkkkkkkk", "v", 1, 0));
    TU_EXPECT_RC(b, traffic_set(b, "kkkkkkkkkkkkkkkkkkkkk", "v", 1, 0), TRAFFIC_ETOOBIG);
    unsigned char big[1001] = {0};
    TU_OK(b, traffic_set(b, "big", big, 1000, 0));
    TU_EXPECT_RC(b, traffic_set(b, "big", big, 1001, 0), TRAFFIC_ETOOBIG);
    TU_OK(b, traffic_close(b));

    /* named, with a mode; the URL opener then sees the same table */
    const char *name = tu_name("typed");
    traffic_memory_options on = {.name = name, .max_size = 300, .mode = 0640};
    TU_OK(NULL, traffic_memory_open(&on, &b));
    ck_assert_int_eq(file_mode(name), 0640);
    TU_OK(b, traffic_set(b, "k", "typed", 5, 0));
    char url[512];
    tu_memory_url(url, sizeof url, name, NULL);
    traffic_backend *b2 = open_ok(url);
    ck_assert_uint_eq(tu_stats(b2).max_size, 300);
    EXPECT_STR(b2, "k", "typed");
    TU_OK(b2, traffic_close(b2));
    TU_OK(b, traffic_close(b));
    unlink_ok(name);

    /* an empty name means anonymous */
    traffic_memory_options oe = {.name = ""};
    TU_OK(NULL, traffic_memory_open(&oe, &b));
    TU_OK(b, traffic_close(b));
}
END_TEST

START_TEST(m_typed_open_invalid)
{
    traffic_backend *b = (traffic_backend *)&b;
    TU_EXPECT_RC(NULL, traffic_memory_open(NULL, NULL), TRAFFIC_EINVAL);
    const traffic_memory_options bad[] = {
        {.value_max = 70000},       {.key_max = 251},       {.cleanup_interval = -1},
        {.cleanup_interval = NAN},  {.cleanup_interval = INFINITY}, {.mode = 01000},
        {.name = "a/b"},            {.max_size = (1ull << 31) + 1},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        b = (traffic_backend *)&b;
        int rc = traffic_memory_open(&bad[i], &b);
        ck_assert_msg(rc == TRAFFIC_EINVAL, "options #%zu -> %s", i, traffic_strerror(rc));
        ck_assert_msg(b == NULL, "options #%zu failed but set *out", i);
        ck_assert_str_ne(traffic_errmsg(NULL), "");
    }
}
END_TEST

/* ---- processes ------------------------------------------------------------------------- */

static traffic_backend *inherited; /* the handle children use after fork() */

static int count_child(void *arg)
{
    (void)arg;
    for (int i = 0; i < 1000; i++)
        if (traffic_increment(inherited, "k", 1, 0, NULL) != TRAFFIC_OK) return 1;
    return 0;
}

START_TEST(m_anonymous_inherited)
{
    inherited = open_ok("memory://");
    TU_OK(inherited, traffic_increment(inherited, "k", 0, 0, NULL)); /* the parent is attached before fork */
    pid_t kids[3];
    for (int i = 0; i < 3; i++) kids[i] = spawn(count_child, NULL);
    for (int i = 0; i < 3; i++) wait_ok(kids[i], "counting child");
    EXPECT_STR(inherited, "k", "3000");
    int64_t out = 0;
    TU_OK(inherited, traffic_increment(inherited, "k", 1, 0, &out));
    ck_assert_int_eq(out, 3001);
    TU_OK(inherited, traffic_close(inherited));
}
END_TEST

static int stats_child(void *arg)
{
    int id = *(int *)arg;
    char buf[16], key[32];
    size_t len;
    for (int i = 0; i < 10; i++)
        if (traffic_get(inherited, "p", buf, sizeof buf, &len) != TRAFFIC_OK) return 1;
    for (int i = 0; i < 5; i++) {
        snprintf(key, sizeof key, "absent-%d-%d", id, i);
        if (traffic_get(inherited, key, buf, sizeof buf, &len) != TRAFFIC_ENOTFOUND) return 2;
    }
    for (int i = 0; i < 7; i++)
        if (traffic_increment(inherited, "n", 1, 0, NULL) != TRAFFIC_OK) return 3;
    if (traffic_exists(inherited, "p") != 1) return 4;
    return 0;
}

START_TEST(m_stats_across_processes)
{
    inherited = open_ok("memory://");
    TU_OK(inherited, traffic_set(inherited, "p", "x", 1, 0));
    int ids[2] = {1, 2};
    pid_t kids[2];
    for (int i = 0; i < 2; i++) kids[i] = spawn(stats_child, &ids[i]);
    for (int i = 0; i < 2; i++) wait_ok(kids[i], "stats child");
    struct traffic_stats s = tu_stats(inherited);
    ck_assert_uint_eq(s.hits, 2 * (10 + 1));
    ck_assert_uint_eq(s.misses, 2 * 5);
    ck_assert_uint_eq(s.increments, 2 * 7);
    ck_assert_uint_eq(s.sets, 1);
    ck_assert_uint_eq(s.keys, 2);
    /* the children are gone; only this thread is attached */
    if (!tu_skip(!tu_robust_futexes(), "m_stats_across_processes's attached count", TU_WHY_NO_ROBUST))
        ck_assert_uint_eq(s.attached, 1);
    EXPECT_STR(inherited, "n", "14");
    TU_OK(inherited, traffic_close(inherited));
}
END_TEST

/* ---- the reaper ------------------------------------------------------------------------ */

START_TEST(m_reaper_reclaims)
{
    traffic_backend *b = open_ok("memory://?cleanup_interval=0.05");
    char key[32];
    for (int i = 0; i < 30; i++) {
        snprintf(key, sizeof key, "short-%d", i);
        TU_OK(b, traffic_set(b, key, "x", 1, 0.05));
    }
    for (int i = 0; i < 5; i++) {
        snprintf(key, sizeof key, "long-%d", i);
        TU_OK(b, traffic_increment(b, key, 1, 0, NULL));
    }
    ck_assert_uint_eq(tu_stats(b).keys, 35);
    TU_OK(b, traffic_start_cleanup(b));
    struct traffic_stats s = tu_stats(b);
    for (int i = 0; i < 100 && s.keys != 5; i++) { /* up to 5 s; normally a few passes */
        tu_sleep_ms(50);
        s = tu_stats(b);
    }
    ck_assert_msg(s.keys == 5, "the reaper left %llu keys, want 5", (unsigned long long)s.keys);
    ck_assert_uint_eq(s.expirations, 30);
    ck_assert_uint_ge(s.reaper_runs, 1);
    ck_assert_int_eq(s.reaper_pid, getpid());
    for (int i = 0; i < 5; i++) {
        snprintf(key, sizeof key, "long-%d", i);
        EXPECT_STR(b, key, "1");
    }
    TU_OK(b, traffic_stop_cleanup(b));
    ck_assert_int_eq(tu_stats(b).reaper_pid, 0); /* it stepped down */
    TU_OK(b, traffic_close(b));
}
END_TEST

static int reaper_child(void *arg)
{
    (void)arg;
    /* The parent's reaper thread does not exist here: stopping is a no-op, starting works. */
    if (traffic_stop_cleanup(inherited) != TRAFFIC_OK) return 1;
    if (traffic_increment(inherited, "c", 1, 0, NULL) != TRAFFIC_OK) return 2;
    if (traffic_start_cleanup(inherited) != TRAFFIC_OK) return 3;
    if (traffic_stop_cleanup(inherited) != TRAFFIC_OK) return 4;
    return 0;
}

START_TEST(m_reaper_not_inherited)
{
    if (tu_skip(tu_emulated(), "m_reaper_not_inherited", TU_WHY_FORK_THREAD)) return;
    inherited = open_ok("memory://?cleanup_interval=0.05");
    TU_OK(inherited, traffic_start_cleanup(inherited));
    /* Fork only once the reaper has made a pass: a new thread's start-up and its first pass
     * allocate, and GCC 12's AddressSanitizer has no fork handler for its allocator, so a fork
     * racing them can leave the child's allocator locked for ever (seen in CI). glibc's malloc
     * locks its arenas around fork(); plain builds do not need this. */
    for (int i = 0; i < 500 && tu_stats(inherited).reaper_runs == 0; i++) tu_sleep_ms(10);
    ck_assert_uint_ge(tu_stats(inherited).reaper_runs, 1);
    wait_ok(spawn(reaper_child, NULL), "reaper child");
    EXPECT_STR(inherited, "c", "1");
    TU_OK(inherited, traffic_set(inherited, "t", "x", 1, 0.05));
    struct traffic_stats s = tu_stats(inherited);
    for (int i = 0; i < 100 && s.keys != 1; i++) { /* the parent's reaper still works */
        tu_sleep_ms(50);
        s = tu_stats(inherited);
    }
    ck_assert_uint_eq(s.keys, 1);
    TU_OK(inherited, traffic_stop_cleanup(inherited));
    TU_OK(inherited, traffic_close(inherited));
}
END_TEST

/* ---- main ------------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--named-visitor") == 0) return named_visitor(argv[2], "from-exec");

    Suite *s = suite_create("memory");
    TCase *u = tcase_create("url");
    tcase_add_test(u, m_url_params_accepted);
    tcase_add_test(u, m_url_unknown_param);
    tcase_add_test(u, m_url_bad_values);
    tcase_add_test(u, m_url_bad_names);
    tcase_add_test(u, m_url_schemes);
    suite_add_tcase(s, u);

    TCase *g = tcase_create("geometry");
    tcase_add_test(g, m_key_max);
    tcase_add_test(g, m_value_max);
    tcase_add_test(g, m_value_max_64k);
    tcase_add_test(g, m_keys_across_head_and_body);
    tcase_add_test(g, m_counters_leave_bodies_untouched);
    tcase_add_test(g, m_neighbours_keep_their_values);
    tcase_add_test(g, m_typed_open);
    tcase_add_test(g, m_typed_open_invalid);
    suite_add_tcase(s, g);

    TCase *n = tcase_create("named");
    tcase_add_test(n, m_named_shared);
    tcase_add_test(n, m_named_mode);
    tcase_add_test(n, m_named_unlink);
    tcase_add_test(n, m_named_close_keeps_data);
    tcase_add_test(n, m_named_geometry_mismatch);
    tcase_add_test(n, m_corrupt_header);
    tcase_add_test(n, m_corrupt_small_files);
    tcase_add_test(n, m_corrupt_format_and_layout);
    tcase_add_test(n, m_old_format_refused);
    suite_add_tcase(s, n);

    TCase *p = tcase_create("processes");
    tcase_add_test(p, m_anonymous_inherited);
    tcase_add_test(p, m_stats_across_processes);
    tcase_add_test(p, m_reaper_reclaims);
    tcase_add_test(p, m_reaper_not_inherited);
    suite_add_tcase(s, p);

    return tu_run(s); /* which removes the tables failed tests left in /dev/shm */
}
