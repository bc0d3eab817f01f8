/*
 * test_scan.c — traffic_scan where the backends differ (the common contract is
 * contract_scan.c): what a scan must not hold while fn runs, the SQLite range reads, Redis's
 * prefix and foreign keys, the glob matcher against Redis's own MATCH, the fallback= pair,
 * and 100k keys listed on each store (the time is printed, not asserted).
 *
 * "Holds nothing while fn runs" is shown by what others can do meanwhile, not by timing:
 *   memory  another process inserts and deletes 3000 keys in a 64-key table, which needs
 *           tombstones reused and so the reclamation epoch to move: a scan that kept its pin
 *           would hold the epoch back, and the inserts would fail with TRAFFIC_EFULL;
 *   sqlite  a checkpoint TRUNCATE empties the WAL (it cannot while a read transaction is
 *           open), and fn's own delete works on a handle of pool_size=1 (it would wait for the
 *           only connection, then time out, if the scan kept it).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <traffic/backend.h>

#include "redis_harness.h"
#include "testutil.h"

static int count_fn(void *ctx, const char *key, size_t klen, int kind, double ttl)
{
    (void)key, (void)klen, (void)kind, (void)ttl;
    ++*(long *)ctx;
    return 0;
}

/* A set of keys, as a scan reports them (sorted, duplicates kept). */
typedef struct keyset {
    size_t n, cap;
    char **k;
} keyset;

static int keyset_fn(void *ctx, const char *key, size_t klen, int kind, double ttl)
{
    (void)kind, (void)ttl;
    keyset *s = ctx;
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 64;
        s->k = realloc(s->k, s->cap * sizeof *s->k);
        ck_assert_ptr_nonnull(s->k);
    }
    s->k[s->n] = strndup(key, klen);
    ck_assert_ptr_nonnull(s->k[s->n]);
    s->n++;
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static keyset scan_set(traffic_backend *b, const char *glob, int unique)
{
    keyset s = {0};
    TU_OK(b, traffic_scan(b, glob, keyset_fn, &s));
    if (s.n) qsort(s.k, s.n, sizeof *s.k, cmp_str); /* an empty set has no array: qsort(NULL) is UB */
    if (unique) { /* Redis may report a key twice */
        size_t w = 0;
        for (size_t i = 0; i < s.n; i++)
            if (w == 0 || strcmp(s.k[w - 1], s.k[i]) != 0)
                s.k[w++] = s.k[i];
            else
                free(s.k[i]);
        s.n = w;
    }
    return s;
}

static void keyset_free(keyset *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->k[i]);
    free(s->k);
    memset(s, 0, sizeof *s);
}

static int keyset_has(const keyset *s, const char *key)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->k[i], key) == 0) return 1;
    return 0;
}

/* ---- memory: no pin held while fn runs ----------------------------------------------------- */

typedef struct pin_probe {
    traffic_backend *b;
    int called, child_status;
    uint64_t epoch_before, epoch_after;
} pin_probe;

/* Inserts and deletes 3000 distinct keys: in a 64-key table the slots run out of EMPTY ones
 * at once, and each insert needs a tombstone whose grace period has passed. */
static int churn_small_table(traffic_backend *b)
{
    for (int i = 0; i < 3000; i++) {
        char key[32];
        snprintf(key, sizeof key, "churn-%d", i);
        int rc = traffic_increment(b, key, 1, 0, NULL);
        if (rc == TRAFFIC_OK) rc = traffic_delete(b, key);
        if (rc != TRAFFIC_OK) {
            fprintf(stderr, "churn-%d: %s (%s)\n", i, traffic_strerror(rc), traffic_errmsg(b));
            return 1;
        }
    }
    return 0;
}

static int pin_probe_fn(void *ctx, const char *key, size_t klen, int kind, double ttl)
{
    (void)key, (void)klen, (void)kind, (void)ttl;
    pin_probe *p = ctx;
    if (p->called++) return 0;
    p->epoch_before = tu_stats(p->b).epoch;
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) _exit(churn_small_table(p->b));
    p->child_status = tu_wait(pid);
    p->epoch_after = tu_stats(p->b).epoch;
    return 0;
}

START_TEST(t_memory_fn_holds_no_pin)
{
    traffic_backend *b = tu_open("memory://?max_size=64");
    for (int i = 0; i < 10; i++) {
        char key[16];
        snprintf(key, sizeof key, "k%d", i);
        TU_OK(b, traffic_increment(b, key, 1, 0, NULL));
    }
    pin_probe p = {.b = b};
    TU_OK(b, traffic_scan(b, NULL, pin_probe_fn, &p));
    ck_assert_int_eq(p.called, 10);
    ck_assert_msg(p.child_status == 0, "the writer failed while the scan sat in fn (status %d)", p.child_status);
    ck_assert_msg(p.epoch_after >= p.epoch_before + 2, "epoch %llu -> %llu while the scan sat in fn",
                  (unsigned long long)p.epoch_before, (unsigned long long)p.epoch_after);
    traffic_close(b);
}
END_TEST

/* ---- sqlite: no transaction, no connection held while fn runs ------------------------------- */

typedef struct sq_probe {
    traffic_backend *b;
    const char *path;
    int called, ckpt_busy, ckpt_log;
    long wal_after;
} sq_probe;

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static int sq_probe_fn(void *ctx, const char *key, size_t klen, int kind, double ttl)
{
    (void)klen, (void)kind, (void)ttl;
    sq_probe *p = ctx;
    /* fn uses the handle whose only connection the scan would hold */
    TU_OK(p->b, traffic_delete(p->b, key));
    if (p->called++) return 0;
    sqlite3 *db;
    ck_assert_int_eq(sqlite3_open_v2(p->path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    sqlite3_stmt *st;
    ck_assert_int_eq(sqlite3_prepare_v2(db, "PRAGMA wal_checkpoint(TRUNCATE)", -1, &st, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    p->ckpt_busy = sqlite3_column_int(st, 0);
    p->ckpt_log = sqlite3_column_int(st, 1);
    sqlite3_finalize(st);
    sqlite3_close(db);
    char wal[600];
    snprintf(wal, sizeof wal, "%s-wal", p->path);
    p->wal_after = file_size(wal);
    return 0;
}

START_TEST(t_sqlite_fn_holds_nothing)
{
    char dir[] = "/tmp/traffic-scan-XXXXXX", path[600], url[700];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/s.db", dir);
    snprintf(url, sizeof url, "sqlite://%s?pool_size=1&timeout=2", path);
    traffic_backend *b = tu_open(url);
    for (int i = 0; i < 600; i++) { /* more than two batches */
        char key[16];
        snprintf(key, sizeof key, "k%04d", i);
        TU_OK(b, traffic_set(b, key, "v", 1, 0));
    }
    sq_probe p = {.b = b, .path = path};
    TU_OK(b, traffic_scan(b, NULL, sq_probe_fn, &p));
    ck_assert_int_eq(p.called, 600);
    ck_assert_msg(p.ckpt_busy == 0 && p.ckpt_log == 0 && p.wal_after == 0,
                  "checkpoint TRUNCATE inside fn: busy %d, log %d, WAL %ld bytes after", p.ckpt_busy, p.ckpt_log,
                  p.wal_after);
    long n = 0;
    TU_OK(b, traffic_scan(b, NULL, count_fn, &n));
    ck_assert_int_eq(n, 0);
    traffic_close(b);
    tu_scratch_remove(dir);
}
END_TEST

/* Globs whose literal prefix ends in 0xff bytes: the range read must end where it should. */
START_TEST(t_sqlite_prefix_ranges)
{
    char dir[] = "/tmp/traffic-scan-XXXXXX", url[700];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(url, sizeof url, "sqlite://%s/r.db", dir);
    traffic_backend *b = tu_open(url);
    static const char *const keys[] = {"a",        "a\xff", "a\xff\xff", "a\xff\x62", "b",    "\xff",
                                       "\xff\xff", "ab",    "abc",       "ac",        "a\x01"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        TU_OK(b, traffic_set(b, keys[i], "v", 1, 0));
    static const struct {
        const char *glob;
        int n;
    } cases[] = {{"a\xff*", 3}, {"\xff*", 2}, {"\xff\xff*", 1}, {"ab*", 2}, {"a*", 8}, {"a", 1},
                 {"ab", 1},     {"b*", 1},    {"a\xff", 1},     {"a?", 4},  {"c*", 0}, {"\xff\xff\xff*", 0}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        keyset s = scan_set(b, cases[i].glob, 0);
        ck_assert_msg((int)s.n == cases[i].n, "glob #%zu: %zu keys, want %d", i, s.n, cases[i].n);
        for (size_t j = 0; j < s.n; j++)
            ck_assert(traffic_glob_match(cases[i].glob, s.k[j], strlen(s.k[j])));
        keyset_free(&s);
    }
    traffic_close(b);
    tu_scratch_remove(dir);
}
END_TEST

/* ---- the matcher itself ---------------------------------------------------------------------- */

START_TEST(t_glob_match)
{
    static const struct {
        const char *glob, *s;
        int want;
    } cases[] = {
        {"*", "abc", 1},
        {"a*", "a", 1},
        {"*a", "a", 1},
        {"a*c", "abbbc", 1},
        {"a*c", "abcb", 0},
        {"a?c", "abc", 1},
        {"a?c", "ac", 0},
        {"[abc]", "b", 1},
        {"[abc]", "d", 0},
        {"[^abc]", "d", 1},
        {"[^abc]", "a", 0},
        {"[a-c]x", "bx", 1},
        {"[c-a]x", "bx", 1},
        {"[a-c]", "d", 0},
        {"a\\*", "a*", 1},
        {"a\\*", "ab", 0},
        {"\\", "\\", 1},
        {"a\\", "a\\", 1},
        {"[\\]]", "]", 1},
        {"[abc", "b", 1},
        {"[abc", "bc", 0},
        {"[a-]", "]", 1},
        {"[a-]", "-", 0},
        {"[", "[", 0},
        {"a[", "ab", 0},
        {"[^", "x", 1},
        {"**b", "ab", 1},
        {"a**", "a", 1},
        {"*?", "a", 1},
        {"a*?", "a", 0},
        {"", "a", 0},
        {"abc", "abc", 1},
        {"abc", "abcd", 0},
        {"?*?", "ab", 1},
        {"?*?", "a", 0},
        {"[\xe0-\xff]", "\xe9", 1},
        {"h*llo", "hello world", 0},
        {"*o*o*", "foo", 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        ck_assert_msg(traffic_glob_match(cases[i].glob, cases[i].s, strlen(cases[i].s)) == cases[i].want,
                      "glob \"%s\" on \"%s\": want %d", cases[i].glob, cases[i].s, cases[i].want);
    ck_assert(traffic_glob_match(NULL, "x", 1));
    ck_assert(traffic_glob_match("a?c", "a\0c", 3)); /* bytes, NULs included */
    /* an abusive pattern ends (no match beyond 1000 nested stars, as in Redis) */
    char glob[4100], s[2100];
    for (int i = 0; i < 2048; i++)
        glob[2 * i] = '*', glob[2 * i + 1] = 'a';
    glob[4096] = 'b';
    glob[4097] = '\0';
    memset(s, 'a', 2048);
    ck_assert_int_eq(traffic_glob_match(glob, s, 2048), 0);
}
END_TEST

/* Random globs over random keys, from a small alphabet full of special characters: the keys
 * traffic_glob_match selects are the ones Redis's MATCH selects. */
START_TEST(t_glob_vs_redis)
{
    rh_server srv = {0};
    ck_assert_int_eq(rh_start(&srv, NULL), 0);
    traffic_backend *r = tu_open(rh_url("redis://127.0.0.1:%d?prefix=g*[1]:", srv.port));
    traffic_backend *m = tu_open("memory://");
    static const char alpha[] = "ab:*?[]\\-^";
    unsigned seed = 12345;
    enum { NKEYS = 300, NGLOBS = 400 };
    for (int i = 0; i < NKEYS; i++) {
        char key[8];
        int len = 1 + (int)(rand_r(&seed) % 5);
        for (int j = 0; j < len; j++)
            key[j] = alpha[rand_r(&seed) % (sizeof alpha - 1)];
        key[len] = '\0';
        TU_OK(r, traffic_increment(r, key, 1, 0, NULL));
        TU_OK(m, traffic_increment(m, key, 1, 0, NULL));
    }
    for (int i = 0; i < NGLOBS; i++) {
        char glob[10];
        int len = 1 + (int)(rand_r(&seed) % 7);
        for (int j = 0; j < len; j++)
            glob[j] = alpha[rand_r(&seed) % (sizeof alpha - 1)];
        glob[len] = '\0';
        keyset a = scan_set(r, glob, 1), b = scan_set(m, glob, 0);
        ck_assert_msg(a.n == b.n, "glob \"%s\": redis %zu keys, memory %zu", glob, a.n, b.n);
        for (size_t j = 0; j < a.n; j++)
            ck_assert_msg(strcmp(a.k[j], b.k[j]) == 0, "glob \"%s\": redis \"%s\", memory \"%s\"", glob, a.k[j],
                          b.k[j]);
        keyset_free(&a);
        keyset_free(&b);
    }
    traffic_close(r);
    traffic_close(m);
    rh_kill(&srv);
}
END_TEST

/* ---- redis: the prefix, and keys this library did not write ---------------------------------- */

typedef struct kinds {
    int n, bytes, counter, other, limit;
    double ttl_other;
} kinds;

static int kinds_fn(void *ctx, const char *key, size_t klen, int kind, double ttl)
{
    kinds *k = ctx;
    ck_assert_msg(strncmp(key, "p*[x]:", 6) != 0 && strlen(key) == klen, "key with its prefix: %s", key);
    k->n++;
    k->bytes += kind == TRAFFIC_KIND_BYTES;
    k->counter += kind == TRAFFIC_KIND_COUNTER;
    k->limit += TRAFFIC_KIND_IS_LIMIT(kind);
    if (kind == TRAFFIC_KIND_OTHER) {
        k->other++;
        k->ttl_other = ttl;
    }
    return 0;
}

START_TEST(t_redis_prefix_and_foreign_keys)
{
    rh_server srv = {0};
    ck_assert_int_eq(rh_start(&srv, NULL), 0);
    /* a prefix full of glob characters: escaped, it matches only itself */
    traffic_backend *b = tu_open(rh_url("redis://127.0.0.1:%d?prefix=p*[x]:", srv.port));
    TU_OK(b, traffic_set(b, "v", "1", 1, 0));
    TU_OK(b, traffic_increment(b, "c", 1, 0, NULL));
    traffic_rule r = {.algorithm = TRAFFIC_FIXED_WINDOW, .limit = 5, .window = 60};
    TU_OK(b, traffic_limit(b, "l", &r, 1, NULL));
    /* written by other clients */
    ck_assert_int_eq(rh_int(&srv, "HSET p*[x]:hash f 1"), 1);
    ck_assert_int_eq(rh_int(&srv, "PEXPIRE p*[x]:hash 50000"), 1);
    ck_assert_int_eq(rh_int(&srv, "INCR p*[x]:raw"), 1);
    char ok[8];
    ck_assert_int_eq(rh_str(&srv, ok, sizeof ok, "SET pZZx:v 1"), 0);    /* the unescaped prefix would match */
    ck_assert_int_eq(rh_str(&srv, ok, sizeof ok, "SET p*[x]: bare"), 0); /* the prefix alone: no key */
    ck_assert_int_eq(rh_str(&srv, ok, sizeof ok, "SET other:v 1"), 0);
    kinds k = {0};
    TU_OK(b, traffic_scan(b, NULL, kinds_fn, &k));
    ck_assert_int_eq(k.n, 5);
    ck_assert_int_eq(k.bytes, 1);
    ck_assert_int_eq(k.counter, 2);
    ck_assert_int_eq(k.limit, 1);
    ck_assert_int_eq(k.other, 1);
    ck_assert_msg(k.ttl_other > 40 && k.ttl_other <= 50, "hash ttl %g", k.ttl_other);
    keyset s = scan_set(b, "*a*", 1);
    ck_assert_int_eq((int)s.n, 2); /* hash, raw */
    ck_assert(keyset_has(&s, "hash") && keyset_has(&s, "raw"));
    keyset_free(&s);
    traffic_close(b);
    rh_kill(&srv);
}
END_TEST

/* ---- fallback=: the serving store; no mixing after a failure mid-scan ----------------------- */

static int kill_on_first(void *ctx, const char *key, size_t klen, int kind, double ttl)
{
    (void)klen, (void)kind, (void)ttl;
    void **a = ctx;
    long *n = a[1];
    ck_assert_msg(strncmp(key, "p-", 2) == 0, "a key of the fallback in the primary's scan: %s", key);
    if ((*n)++ == 0) rh_kill(a[0]);
    return 0;
}

START_TEST(t_fallback)
{
    rh_server srv = {0};
    ck_assert_int_eq(rh_start(&srv, NULL), 0);
    const char *fb = tu_name("fb");
    char fb_url[256];
    tu_memory_url(fb_url, sizeof fb_url, fb, NULL);
    traffic_backend *direct = tu_open(fb_url);
    TU_OK(direct, traffic_set(direct, "f-only", "x", 1, 0));
    traffic_backend *b = tu_open(rh_url("redis://127.0.0.1:%d?timeout=0.3&fallback=%s", srv.port, fb_url));
    for (int i = 0; i < 3000; i++) { /* several SCAN steps */
        char key[16];
        snprintf(key, sizeof key, "p-%d", i);
        TU_OK(b, traffic_increment(b, key, 1, 0, NULL));
    }
    keyset s = scan_set(b, "[pf]-*", 1);
    ck_assert_int_eq((int)s.n, 3000);
    keyset_free(&s);
    /* the primary dies after the first key: the scan fails, and is not finished on the fallback */
    long n = 0;
    void *arg[2] = {&srv, &n};
    int rc = traffic_scan(b, "[pf]-*", kill_on_first, arg);
    ck_assert_msg(rc == TRAFFIC_EUNAVAILABLE || rc == TRAFFIC_ETIMEDOUT, "scan -> %s (%s)", traffic_strerror(rc),
                  traffic_errmsg(b));
    ck_assert_int_ge(n, 1);
    /* with the primary down, a new scan lists the fallback's keys */
    s = scan_set(b, "[pf]-*", 0);
    ck_assert_int_eq((int)s.n, 1);
    ck_assert_str_eq(s.k[0], "f-only");
    keyset_free(&s);
    TU_OK(direct, traffic_set(direct, "old", "x", 1, 0.02));
    tu_sleep_ms(50);
    uint64_t removed = 0;
    TU_OK(b, traffic_reap(b, &removed)); /* the fallback's table; Redis has no pass */
    ck_assert_uint_eq(removed, 1);
    traffic_close(b);
    traffic_close(direct);
    TU_OK(NULL, traffic_memory_unlink(fb));
}
END_TEST

/* ---- 100k keys ------------------------------------------------------------------------------- */

enum { BIG = 100000 };

static double scan_seconds(traffic_backend *b, long *n)
{
    struct timespec t0, t1;
    *n = 0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    TU_OK(b, traffic_scan(b, NULL, count_fn, n));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
}

START_TEST(t_100k_memory)
{
    traffic_backend *b = tu_open("memory://?max_size=200000");
    for (int i = 0; i < BIG; i++) {
        char key[32];
        snprintf(key, sizeof key, "key:%d", i);
        TU_OK(b, traffic_increment(b, key, 1, 0, NULL));
    }
    long n;
    double s = scan_seconds(b, &n);
    ck_assert_int_eq(n, BIG);
    printf("scan: memory, %d keys in %.3f s\n", BIG, s);
    traffic_close(b);
}
END_TEST

START_TEST(t_100k_sqlite)
{
    char dir[] = "/tmp/traffic-scan-XXXXXX", path[600], url[700];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/big.db", dir);
    snprintf(url, sizeof url, "sqlite://%s", path);
    traffic_backend *b = tu_open(url); /* creates the schema */
    sqlite3 *db;
    ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
    /* one transaction: 100k rows as the backend writes counters (sqlite.c's schema) */
    ck_assert_int_eq(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_stmt *st;
    ck_assert_int_eq(sqlite3_prepare_v2(db,
                                        "INSERT INTO traffic_entries (key, kind, counter, value, expires)"
                                        " VALUES ('key:' || ?1, 1, 1, NULL, 0)",
                                        -1, &st, NULL),
                     SQLITE_OK);
    for (int i = 0; i < BIG; i++) {
        sqlite3_bind_int(st, 1, i);
        ck_assert_int_eq(sqlite3_step(st), SQLITE_DONE);
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    ck_assert_int_eq(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    long n;
    double s = scan_seconds(b, &n);
    ck_assert_int_eq(n, BIG);
    printf("scan: sqlite, %d keys in %.3f s\n", BIG, s);
    traffic_close(b);
    tu_scratch_remove(dir);
}
END_TEST

START_TEST(t_100k_redis)
{
    rh_server srv = {0};
    ck_assert_int_eq(rh_start(&srv, NULL), 0);
    ck_assert_int_eq(rh_int(&srv, "EVAL %s 0",
                            "for i = 1, 100000 do redis.call('SET', 'traffic:key:' .. i, i) end "
                            "return 1"),
                     1);
    traffic_backend *b = tu_open(rh_url("redis://127.0.0.1:%d", srv.port));
    keyset s = scan_set(b, NULL, 1);
    ck_assert_int_eq((int)s.n, BIG);
    keyset_free(&s);
    long n;
    double sec = scan_seconds(b, &n);
    ck_assert_int_ge(n, BIG);
    printf("scan: redis, %d keys in %.3f s\n", BIG, sec);
    traffic_close(b);
    rh_kill(&srv);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("scan");
    TCase *m = tcase_create("memory");
    tcase_add_test(m, t_memory_fn_holds_no_pin);
    tcase_add_test(m, t_glob_match);
    tcase_add_test(m, t_100k_memory);
    suite_add_tcase(s, m);
    TCase *q = tcase_create("sqlite");
    tcase_add_test(q, t_sqlite_fn_holds_nothing);
    tcase_add_test(q, t_sqlite_prefix_ranges);
    tcase_add_test(q, t_100k_sqlite);
    suite_add_tcase(s, q);
    TCase *r = tcase_create("redis");
    tcase_add_test(r, t_glob_vs_redis);
    tcase_add_test(r, t_redis_prefix_and_foreign_keys);
    tcase_add_test(r, t_fallback);
    tcase_add_test(r, t_100k_redis);
    suite_add_tcase(s, r);
    return tu_run(s);
}
