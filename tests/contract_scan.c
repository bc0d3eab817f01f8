/*
 * contract_scan.c — traffic_scan and traffic_reap as every backend owes them (SPEC.md
 * "Listing keys"), run by contract_suite against a fresh empty store.
 *
 * It proves: each key comes once with its kind (bytes, counter, each algorithm's state) and
 * its TTL; globs select as Redis's MATCH does; fn stops the scan and its value comes back;
 * fn may delete the keys it is shown; expired keys never come; a key live for the whole scan
 * comes exactly once (Redis: at least once) while another process inserts and deletes other
 * keys all along, scan after scan; the argument checks; and what traffic_reap does.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "contract.h"
#include "testutil.h"

static contract_backend S; /* a copy of the suite's backend; forked tests read it */

static traffic_backend *fresh(void)
{
    traffic_backend *b = NULL;
    int rc = S.open_fresh(&b, S.ctx);
    ck_assert_msg(rc == TRAFFIC_OK && b != NULL, "open_fresh(%s) -> %s (%s)", S.name, traffic_strerror(rc),
                  traffic_errmsg(NULL));
    return b;
}

/* Redis promises "at least once", the others exactly once. */
static int at_least_once(void)
{
    return strcmp(S.name, "redis") == 0;
}

/* ---- collecting what a scan reports ------------------------------------------------------ */

#define SEEN_MAX 4096

typedef struct seen {
    size_t n;
    struct {
        char key[TRAFFIC_KEY_MAX + 1];
        int kind;
        double ttl;
    } e[SEEN_MAX];
} seen;

static int collect(void *ctx, const char *key, size_t klen, int kind, double ttl)
{
    seen *s = ctx;
    ck_assert_msg(klen >= 1 && klen <= TRAFFIC_KEY_MAX && strlen(key) == klen, "key of %zu bytes", klen);
    ck_assert_msg(s->n < SEEN_MAX, "more than %d keys reported", SEEN_MAX);
    memcpy(s->e[s->n].key, key, klen + 1);
    s->e[s->n].kind = kind;
    s->e[s->n].ttl = ttl;
    s->n++;
    return 0;
}

static seen *scan_all(traffic_backend *b, const char *glob)
{
    seen *s = calloc(1, sizeof *s);
    ck_assert_ptr_nonnull(s);
    TU_OK(b, traffic_scan(b, glob, collect, s));
    return s;
}

/* How often key was reported (the last report in *at). */
static int times(const seen *s, const char *key, size_t *at)
{
    int n = 0;
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->e[i].key, key) == 0) {
            n++;
            if (at) *at = i;
        }
    return n;
}

/* The keys reported for glob are exactly want (a NULL-terminated list), each once. */
static void expect_keys_at(traffic_backend *b, const char *glob, const char *const *want, int line)
{
    seen *s = scan_all(b, glob);
    size_t nwant = 0;
    for (; want[nwant]; nwant++) {
        int n = times(s, want[nwant], NULL);
        ck_assert_msg(n == 1 || (n > 1 && at_least_once()), "line %d: glob \"%s\": \"%s\" reported %d times", line,
                      glob ? glob : "(null)", want[nwant], n);
    }
    for (size_t i = 0; i < s->n; i++) {
        int wanted = 0;
        for (size_t j = 0; j < nwant; j++)
            wanted |= strcmp(s->e[i].key, want[j]) == 0;
        ck_assert_msg(wanted, "line %d: glob \"%s\" reported \"%s\"", line, glob ? glob : "(null)", s->e[i].key);
    }
    free(s);
}
#define EXPECT_KEYS(b, glob, ...)                                                                                      \
    do {                                                                                                               \
        const char *const want_[] = {__VA_ARGS__, NULL};                                                               \
        expect_keys_at(b, glob, want_, __LINE__);                                                                      \
    } while (0)

/* ---- kinds, TTLs, globs ------------------------------------------------------------------- */

START_TEST(s_kinds_and_ttls)
{
    traffic_backend *b = fresh();
    TU_OK(b, traffic_set(b, "bytes", "v\0w", 3, 60));
    TU_OK(b, traffic_set(b, "forever", "x", 1, 0));
    TU_OK(b, traffic_increment(b, "counter", 5, 0, NULL));
    TU_OK(b, traffic_increment(b, "counter-ttl", 1, 30, NULL));
    static const char *const rules[] = {"sliding_window_counter:10/60s", "fixed_window:10/60s", "sliding_window:3/60s",
                                        "token_bucket:10/60s", "leaky_bucket:10/60s"};
    for (int a = 0; a < 5; a++) {
        traffic_rule r;
        char key[32];
        ck_assert_int_eq(traffic_rule_parse(rules[a], &r, NULL, 0), TRAFFIC_OK);
        ck_assert_int_eq((int)r.algorithm, a);
        snprintf(key, sizeof key, "limit-%d", a);
        TU_OK(b, traffic_limit(b, key, &r, 1, NULL));
    }
    seen *s = scan_all(b, NULL);
    ck_assert_msg(s->n == 9 || (s->n > 9 && at_least_once()), "%zu keys reported, want 9", s->n);
    size_t at;
    ck_assert_int_ge(times(s, "bytes", &at), 1);
    ck_assert_int_eq(s->e[at].kind, TRAFFIC_KIND_BYTES);
    ck_assert_msg(s->e[at].ttl > 50 && s->e[at].ttl <= 60, "bytes: ttl %g", s->e[at].ttl);
    ck_assert_int_ge(times(s, "forever", &at), 1);
    ck_assert_int_eq(s->e[at].kind, TRAFFIC_KIND_BYTES);
    ck_assert(s->e[at].ttl == -1);
    ck_assert_int_ge(times(s, "counter", &at), 1);
    ck_assert_int_eq(s->e[at].kind, TRAFFIC_KIND_COUNTER);
    ck_assert(s->e[at].ttl == -1);
    ck_assert_int_ge(times(s, "counter-ttl", &at), 1);
    ck_assert_int_eq(s->e[at].kind, TRAFFIC_KIND_COUNTER);
    ck_assert_msg(s->e[at].ttl > 20 && s->e[at].ttl <= 30, "counter-ttl: ttl %g", s->e[at].ttl);
    for (int a = 0; a < 5; a++) {
        char key[32];
        snprintf(key, sizeof key, "limit-%d", a);
        ck_assert_int_ge(times(s, key, &at), 1);
        int k = s->e[at].kind;
        ck_assert_msg(TRAFFIC_KIND_IS_LIMIT(k) && TRAFFIC_KIND_ALGORITHM(k) == (traffic_algorithm)a,
                      "%s: kind %d, want the state of %s", key, k, traffic_algorithm_name((traffic_algorithm)a));
        ck_assert_str_eq(traffic_kind_name(k), "limit");
        /* Each state lives until its reset point, at most two windows plus the slack. */
        ck_assert_msg(s->e[at].ttl > 0 && s->e[at].ttl <= 2 * 60 * 1.125 + 1, "%s: ttl %g", key, s->e[at].ttl);
    }
    ck_assert_str_eq(traffic_kind_name(TRAFFIC_KIND_BYTES), "bytes");
    ck_assert_str_eq(traffic_kind_name(TRAFFIC_KIND_COUNTER), "counter");
    ck_assert_ptr_null(traffic_kind_name(0));
    ck_assert_ptr_null(traffic_kind_name(TRAFFIC_KIND_LIMIT + 9));
    free(s);
    traffic_close(b);
}
END_TEST

START_TEST(s_globs)
{
    traffic_backend *b = fresh();
    static const char *const keys[] = {"user:1", "user:2", "user:10", "users", "admin:1", "a*b",
                                       "a?b",    "a[b",    "ab",      "x\\y",  "aXb",     "\xc3\xa9t\xc3\xa9"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        TU_OK(b, traffic_increment(b, keys[i], 1, 0, NULL));
    EXPECT_KEYS(b, NULL, "user:1", "user:2", "user:10", "users", "admin:1", "a*b", "a?b", "a[b", "ab", "x\\y", "aXb",
                "\xc3\xa9t\xc3\xa9");
    EXPECT_KEYS(b, "*", "user:1", "user:2", "user:10", "users", "admin:1", "a*b", "a?b", "a[b", "ab", "x\\y", "aXb",
                "\xc3\xa9t\xc3\xa9");
    EXPECT_KEYS(b, "user:*", "user:1", "user:2", "user:10");
    EXPECT_KEYS(b, "user*", "user:1", "user:2", "user:10", "users");
    EXPECT_KEYS(b, "user:?", "user:1", "user:2");
    EXPECT_KEYS(b, "user:[12]", "user:1", "user:2");
    EXPECT_KEYS(b, "user:[^1]*", "user:2");
    EXPECT_KEYS(b, "*:1", "user:1", "admin:1");
    EXPECT_KEYS(b, "a\\*b", "a*b");
    EXPECT_KEYS(b, "a\\?b", "a?b");
    EXPECT_KEYS(b, "a\\[b", "a[b");
    EXPECT_KEYS(b, "a?b", "a*b", "a?b", "a[b", "aXb");
    EXPECT_KEYS(b, "a[A-Z]b", "aXb");
    EXPECT_KEYS(b, "x\\\\y", "x\\y");
    EXPECT_KEYS(b, "user:1*", "user:1", "user:10");
    EXPECT_KEYS(b, "\xc3\xa9*", "\xc3\xa9t\xc3\xa9");
    EXPECT_KEYS(b, "[ux]*[0s]", "user:10", "users");
    const char *none[] = {NULL};
    expect_keys_at(b, "nothing*", none, __LINE__);
    expect_keys_at(b, "", none, __LINE__);
    expect_keys_at(b, "user", none, __LINE__);
    traffic_close(b);
}
END_TEST

/* ---- stopping, and fn using the store ----------------------------------------------------- */

typedef struct stopper {
    int calls, stop_after, ret;
} stopper;

static int stop_fn(void *ctx, const char *key, size_t klen, int kind, double ttl)
{
    (void)key, (void)klen, (void)kind, (void)ttl;
    stopper *s = ctx;
    return ++s->calls == s->stop_after ? s->ret : 0;
}

START_TEST(s_stop)
{
    traffic_backend *b = fresh();
    for (int i = 0; i < 50; i++) {
        char key[16];
        snprintf(key, sizeof key, "k%d", i);
        TU_OK(b, traffic_increment(b, key, 1, 0, NULL));
    }
    stopper s = {.stop_after = 3, .ret = 42};
    ck_assert_int_eq(traffic_scan(b, NULL, stop_fn, &s), 42);
    ck_assert_int_eq(s.calls, 3);
    stopper neg = {.stop_after = 1, .ret = -1234};
    ck_assert_int_eq(traffic_scan(b, "k*", stop_fn, &neg), -1234);
    ck_assert_int_eq(neg.calls, 1);
    stopper all = {.stop_after = -1};
    TU_OK(b, traffic_scan(b, NULL, stop_fn, &all));
    ck_assert_msg(all.calls == 50 || (all.calls > 50 && at_least_once()), "%d calls", all.calls);
    traffic_close(b);
}
END_TEST

typedef struct deleter {
    traffic_backend *b;
    seen *s;
} deleter;

static int delete_fn(void *ctx, const char *key, size_t klen, int kind, double ttl)
{
    deleter *d = ctx;
    collect(d->s, key, klen, kind, ttl);
    TU_OK(d->b, traffic_delete(d->b, key));
    /* and a write that makes a new key while the scan goes on */
    char other[TRAFFIC_KEY_MAX + 8];
    snprintf(other, sizeof other, "new-%s", key);
    TU_OK(d->b, traffic_set(d->b, other, "n", 1, 0));
    return 0;
}

START_TEST(s_fn_uses_the_store)
{
    traffic_backend *b = fresh();
    enum { N = 300 };
    for (int i = 0; i < N; i++) {
        char key[16];
        snprintf(key, sizeof key, "old-%03d", i);
        TU_OK(b, traffic_set(b, key, "v", 1, 0));
    }
    deleter d = {.b = b, .s = calloc(1, sizeof(seen))};
    ck_assert_ptr_nonnull(d.s);
    TU_OK(b, traffic_scan(b, "old-*", delete_fn, &d));
    for (int i = 0; i < N; i++) {
        char key[16];
        snprintf(key, sizeof key, "old-%03d", i);
        int n = times(d.s, key, NULL);
        ck_assert_msg(n == 1 || (n > 1 && at_least_once()), "%s reported %d times", key, n);
    }
    free(d.s);
    const char *none[] = {NULL};
    expect_keys_at(b, "old-*", none, __LINE__);
    seen *s = scan_all(b, "new-old-*");
    ck_assert_int_ge((int)s->n, N);
    free(s);
    traffic_close(b);
}
END_TEST

START_TEST(s_expired_never_listed)
{
    traffic_backend *b = fresh();
    TU_OK(b, traffic_set(b, "short", "v", 1, 0.05));
    TU_OK(b, traffic_increment(b, "short-counter", 1, 0.05, NULL));
    TU_OK(b, traffic_set(b, "long", "v", 1, 60));
    tu_sleep_ms(120);
    EXPECT_KEYS(b, NULL, "long");
    traffic_close(b);
}
END_TEST

START_TEST(s_bad_arguments)
{
    traffic_backend *b = fresh();
    seen s = {0};
    TU_EXPECT_RC(b, traffic_scan(NULL, NULL, collect, &s), TRAFFIC_EINVAL);
    TU_EXPECT_RC(b, traffic_scan(b, NULL, NULL, &s), TRAFFIC_EINVAL);
    char *glob = malloc(TRAFFIC_GLOB_MAX + 2);
    memset(glob, '*', TRAFFIC_GLOB_MAX + 1);
    glob[TRAFFIC_GLOB_MAX + 1] = '\0';
    TU_EXPECT_RC(b, traffic_scan(b, glob, collect, &s), TRAFFIC_EINVAL);
    ck_assert_msg(strstr(traffic_errmsg(b), "glob"), "message: %s", traffic_errmsg(b));
    glob[TRAFFIC_GLOB_MAX] = '\0'; /* the longest accepted */
    TU_OK(b, traffic_scan(b, glob, collect, &s));
    free(glob);
    TU_EXPECT_RC(b, traffic_reap(NULL, NULL), TRAFFIC_EINVAL);
    traffic_close(b);
}
END_TEST

/* Reap removes what expired, on the stores that reap; Redis expires keys itself. */
START_TEST(s_reap)
{
    traffic_backend *b = fresh();
    for (int i = 0; i < 20; i++) {
        char key[16];
        snprintf(key, sizeof key, "e%d", i);
        TU_OK(b, traffic_set(b, key, "v", 1, 0.05));
    }
    TU_OK(b, traffic_set(b, "stays", "v", 1, 0));
    tu_sleep_ms(120);
    uint64_t removed = 12345;
    int rc = traffic_reap(b, &removed);
    if (strcmp(S.name, "redis") == 0) {
        ck_assert_int_eq(rc, TRAFFIC_ENOTSUP);
        ck_assert_msg(strstr(traffic_errmsg(b), "expires keys itself"), "message: %s", traffic_errmsg(b));
    } else {
        TU_OK(b, rc);
        ck_assert_msg(removed == 20, "reap removed %llu, want 20", (unsigned long long)removed);
        ck_assert_uint_eq(tu_stats(b).keys, 1);
        TU_OK(b, traffic_reap(b, &removed));
        ck_assert_uint_eq(removed, 0);
        TU_OK(b, traffic_reap(b, NULL));
    }
    EXPECT_KEYS(b, NULL, "stays");
    traffic_close(b);
}
END_TEST

/* ---- exactly once while others write --------------------------------------------------- */

enum { STABLE = 1000, CHURN_LIVE = 40, SCANS = 4 };

typedef struct churn_shared {
    _Atomic int stop;
    _Atomic long ops;
    _Atomic int failed;
} churn_shared;

/* Inserts and deletes other keys until told to stop: counters, values and states, each
 * deleted CHURN_LIVE writes later, so that the store's size stays put (no eviction). */
static void churn(traffic_backend *b, churn_shared *sh, int who)
{
    traffic_rule r = {.algorithm = TRAFFIC_TOKEN_BUCKET, .limit = 10, .window = 60};
    for (long i = 0; !atomic_load(&sh->stop); i++) {
        char key[40], old[40];
        snprintf(key, sizeof key, "churn:%d:%ld", who, i);
        snprintf(old, sizeof old, "churn:%d:%ld", who, i - CHURN_LIVE);
        int rc = i % 3 == 0   ? traffic_increment(b, key, 1, 0, NULL)
                 : i % 3 == 1 ? traffic_set(b, key, "v", 1, 0)
                              : traffic_limit(b, key, &r, 1, NULL);
        if (rc == TRAFFIC_OK && i >= CHURN_LIVE) rc = traffic_delete(b, old);
        if (rc != TRAFFIC_OK) {
            fprintf(stderr, "churn %d: %s (%s)\n", who, traffic_strerror(rc), traffic_errmsg(b));
            atomic_store(&sh->failed, 1);
            return;
        }
        atomic_fetch_add(&sh->ops, 1);
    }
}

typedef struct tally {
    int count[STABLE];
    long churn_seen, reported;
    churn_shared *sh;
    long ops_at_start;
} tally;

/* Waits (up to 10 s) until the writers have done `more` operations since the scan began. */
static void wait_for_writes(const tally *t, long more)
{
    for (int i = 0; i < 10000 && atomic_load(&t->sh->ops) < t->ops_at_start + more && !atomic_load(&t->sh->failed); i++)
        usleep(1000);
}

static int tally_fn(void *ctx, const char *key, size_t klen, int kind, double ttl)
{
    (void)ttl;
    tally *t = ctx;
    int i;
    char tail;
    if (sscanf(key, "stable:%d%c", &i, &tail) == 1) {
        ck_assert_msg(i >= 0 && i < STABLE && strlen(key) == klen, "bad key \"%s\"", key);
        ck_assert_int_eq(kind, TRAFFIC_KIND_COUNTER);
        t->count[i]++;
    } else {
        ck_assert_msg(strncmp(key, "churn:", 6) == 0, "a key never written: \"%s\"", key);
        t->churn_seen++;
    }
    /* Twice in the scan, let the writers get on: whatever the machine's load, keys are then
     * inserted and deleted between the scan's batches. */
    if (++t->reported == STABLE / 3) wait_for_writes(t, 100);
    if (t->reported == 2 * STABLE / 3) wait_for_writes(t, 300);
    return 0;
}

START_TEST(s_exactly_once_under_writers)
{
    traffic_backend *b = fresh();
    for (int i = 0; i < STABLE; i++) {
        char key[32];
        snprintf(key, sizeof key, "stable:%d", i);
        TU_OK(b, traffic_increment(b, key, 1, 0, NULL));
    }
    churn_shared *sh = tu_shared(sizeof *sh);
    pid_t kids[2];
    for (int k = 0; k < 2; k++) {
        kids[k] = fork();
        ck_assert_int_ge(kids[k], 0);
        if (kids[k] == 0) {
            churn(b, sh, k);
            _exit(atomic_load(&sh->failed) ? 1 : 0);
        }
    }
    while (atomic_load(&sh->ops) < 200 && !atomic_load(&sh->failed))
        usleep(1000);
    for (int pass = 0; pass < SCANS; pass++) {
        tally *t = calloc(1, sizeof *t);
        ck_assert_ptr_nonnull(t);
        t->sh = sh;
        t->ops_at_start = atomic_load(&sh->ops);
        int rc = traffic_scan(b, NULL, tally_fn, t);
        long during = atomic_load(&sh->ops) - t->ops_at_start;
        if (rc != TRAFFIC_OK) atomic_store(&sh->stop, 1);
        TU_OK(b, rc);
        for (int i = 0; i < STABLE; i++)
            ck_assert_msg(t->count[i] == 1 || (t->count[i] > 1 && at_least_once()),
                          "pass %d: stable:%d reported %d times (%ld writes during the scan)", pass, i, t->count[i],
                          during);
        ck_assert_msg(during >= 300, "pass %d: %ld writes during the scan", pass, during);
        free(t);
    }
    atomic_store(&sh->stop, 1);
    for (int k = 0; k < 2; k++)
        ck_assert_int_eq(tu_wait(kids[k]), 0);
    ck_assert_int_eq(atomic_load(&sh->failed), 0);
    traffic_close(b);
}
END_TEST

void contract_scan_tcases(Suite *s, const contract_backend *cb)
{
    S = *cb;
    TCase *k = tcase_create("scan");
    tcase_add_test(k, s_kinds_and_ttls);
    tcase_add_test(k, s_globs);
    tcase_add_test(k, s_stop);
    tcase_add_test(k, s_fn_uses_the_store);
    tcase_add_test(k, s_expired_never_listed);
    tcase_add_test(k, s_bad_arguments);
    tcase_add_test(k, s_reap);
    tcase_add_test(k, s_exactly_once_under_writers);
    suite_add_tcase(s, k);
}
