/*
 * test_fuzz.c — what the fuzzers (fuzz/) found, kept found.
 *   - replay_*: every committed input of each fuzz target (fuzz/corpus/NAME/: the seeds, the
 *     inputs that widened coverage, and each input that once crashed) through the same
 *     target function, in this build: a target aborts when an invariant breaks, and the
 *     sanitizer builds of CI catch what it cannot see;
 *   - one test per bug a fuzzer found, saying what was wrong in the library's own terms.
 * The fuzz targets' code (the .c files of fuzz/) is compiled into this test; like the fuzzers, it is linked
 * with every Redis connect redirected to a loopback port (fuzz/fuzz_common.c).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <traffic/backend.h>

#include "../shm/layout.h"
#include "fuzz.h"
#include "testutil.h"

/* ---- replays ------------------------------------------------------------------------------ */

static void replay(const char *target, void (*init)(void), int (*one)(const uint8_t *, size_t))
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/%s", FUZZ_CORPUS, target);
    DIR *d = opendir(dir);
    ck_assert_msg(d != NULL, "no corpus at %s", dir);
    init();
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "rb");
        ck_assert_msg(f != NULL, "open %s", path);
        static uint8_t buf[1 << 20];
        size_t len = fread(buf, 1, sizeof buf, f);
        fclose(f);
        /* a copy of exactly len bytes, so that a target reading past its input is seen (ASan) */
        uint8_t *copy = malloc(len ? len : 1);
        ck_assert_ptr_nonnull(copy);
        memcpy(copy, buf, len);
        fprintf(stderr, "%s/%s\n", target, e->d_name); /* the input to blame if it dies */
        one(copy, len);
        free(copy);
        n++;
    }
    closedir(d);
    ck_assert_msg(n > 0, "the corpus %s is empty", dir);
}

START_TEST(replay_url)
{
    replay("url", fuzz_url_init, fuzz_url_one);
}
END_TEST

START_TEST(replay_limit)
{
    replay("limit", fuzz_limit_init, fuzz_limit_one);
}
END_TEST

START_TEST(replay_table)
{
    replay("table", fuzz_table_init, fuzz_table_one);
}
END_TEST

START_TEST(replay_sqlite)
{
    replay("sqlite", fuzz_sqlite_init, fuzz_sqlite_one);
}
END_TEST

START_TEST(replay_redis)
{
    replay("redis", fuzz_redis_init, fuzz_redis_one);
}
END_TEST

/* ---- fuzz_limit: states no decision can leave ---------------------------------------------- */

#define T52 (INT64_C(1) << 52)
#define T53 (INT64_C(1) << 53)
#define T62 (INT64_C(1) << 62)

static int apply(const traffic_rule *r, traffic_limit_state *st, int64_t now)
{
    traffic_decision d;
    return traffic_limit_apply(r, st, now, 1, &d);
}

/* A damaged store can hand traffic_limit_apply any numbers; its arithmetic overflowed on some
 * (UBSan: "signed integer overflow: 8589934595 * 24688118000000", a sliding window counter
 * whose window number was 2^33). Such a state is now refused, and the states decisions do
 * leave, up to the bounds, are still taken. */
START_TEST(f_limit_damaged_states)
{
    traffic_rule swc = {TRAFFIC_SLIDING_WINDOW_COUNTER, 100, 24688118, 0};
    traffic_rule fw = {TRAFFIC_FIXED_WINDOW, 100, 60, 0};
    traffic_rule tb = {TRAFFIC_TOKEN_BUCKET, 100, 60, 0};
    traffic_rule lb = {TRAFFIC_LEAKY_BUCKET, 100, 60, 5};
    traffic_rule sw = {TRAFFIC_SLIDING_WINDOW, 4, 60, 0};
    traffic_limit_entry log[4];
    struct {
        const traffic_rule *r;
        int64_t a, b, c;
        int64_t t, n; /* one log entry, for sw */
        int64_t now;
        int ok;
    } cases[] = {
        {&swc, INT64_C(8589934595), 1, 1, 0, 0, 1000, 0}, /* the one found */
        {&swc, T62 / 24688118000000 + 1, 0, 0, 0, 0, 1000, 0},
        {&swc, 5, -1, 0, 0, 0, 1000, 0},
        {&swc, 5, 0, TRAFFIC_WINDOW_LIMIT_MAX + 1, 0, 0, 1000, 0},
        {&swc, -(INT64_C(1) << 23), TRAFFIC_WINDOW_LIMIT_MAX, TRAFFIC_WINDOW_LIMIT_MAX, 0, 0, 1000, 1},
        {&swc, T52 / 24688118000000, 3, 3, 0, 0, T52 - 1, 1},
        {&fw, INT64_MAX, 1, 0, 0, 0, 1000, 0},
        {&fw, T62, 1, 0, 0, 0, 1000, 0},
        {&fw, -T62, 1, 0, 0, 0, 1000, 0},
        {&fw, 1000, TRAFFIC_WINDOW_LIMIT_MAX + 1, 0, 0, 0, 1000, 0},
        {&fw, T52 - 1000, TRAFFIC_WINDOW_LIMIT_MAX, 0, 0, 0, T52 - 1, 1},
        {&tb, INT64_MAX, 0, 0, 0, 0, 1000, 0},
        {&tb, INT64_MIN, 0, 0, 0, 0, 1000, 0},
        {&tb, T53 - 1, 0, 0, 0, 0, T52 - 1, 1},
        {&lb, T62, 0, 0, 0, 0, 1000, 0},
        {&lb, 12345, 0, 0, 0, 0, T62, 0},
        {&lb, T62 - 1, 0, 0, 0, 0, T62 - 1, 1},
        {&lb, 12345, 0, 0, 0, 0, INT64_MAX, 0},
        {&sw, 0, 0, 0, INT64_MAX - 5, 1, 1000, 0},
        {&sw, 0, 0, 0, 500, INT64_MAX, 1000, 0},
        {&sw, 0, 0, 0, 500, 0, 1000, 0},
        {&sw, 0, 0, 0, -1, 1, 1000, 0},
        {&sw, 0, 0, 0, T52 - 1, TRAFFIC_SLIDING_WINDOW_LIMIT_MAX, T52 - 1, 1},
        {&sw, 0, 0, 0, T62, 1, T62 - 1, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        traffic_limit_state st = {.a = cases[i].a, .b = cases[i].b, .c = cases[i].c, .log = log, .log_cap = 4};
        if (cases[i].r == &sw) {
            log[0] = (traffic_limit_entry){cases[i].t, cases[i].n};
            st.nlog = 1;
        }
        int rc = apply(cases[i].r, &st, cases[i].now);
        if (cases[i].ok)
            ck_assert_msg(rc == 0 || rc == 1, "case %zu: a state a decision can leave was refused (%d)", i, rc);
        else
            ck_assert_msg(rc == TRAFFIC_EINVAL, "case %zu: a damaged state was taken (%d)", i, rc);
    }
}
END_TEST

/* The same through the backends: a damaged stored state is TRAFFIC_ECORRUPT, and the other
 * keys of the store go on working. */
START_TEST(f_sqlite_damaged_state)
{
    char dir[] = "/tmp/traffic-test-fuzz.XXXXXX", path[256], url[300];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/db.db", dir);
    snprintf(url, sizeof url, "sqlite://%s", path);
    traffic_backend *b;
    TU_OK(NULL, traffic_open(url, &b));
    traffic_rule tb = {TRAFFIC_TOKEN_BUCKET, 10, 60, 0}, swc = {TRAFFIC_SLIDING_WINDOW_COUNTER, 10, 1e6, 0};
    traffic_decision d;
    TU_OK(b, traffic_limit(b, "tb", &tb, 1, &d));
    TU_OK(b, traffic_limit(b, "swc", &swc, 1, &d));
    sqlite3 *db;
    ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    /* tb: T = 2^62; swc: window number 2^40 of a 1e6 s window */
    ck_assert_int_eq(sqlite3_exec(db,
                                  "UPDATE traffic_entries SET value = x'0000000000000040' || zeroblob(16) WHERE key = "
                                  "'tb'; UPDATE traffic_entries SET value = x'0000000000010000' || zeroblob(16) "
                                  "WHERE key = 'swc';",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    TU_EXPECT_RC(b, traffic_limit(b, "tb", &tb, 1, &d), TRAFFIC_ECORRUPT);
    ck_assert(strstr(traffic_errmsg(b), "not valid") != NULL);
    TU_EXPECT_RC(b, traffic_limit(b, "swc", &swc, 1, &d), TRAFFIC_ECORRUPT);
    TU_OK(b, traffic_limit(b, "other", &tb, 1, &d));
    ck_assert_int_eq(d.allowed, 1);
    TU_OK(b, traffic_delete(b, "tb")); /* a reset repairs the key */
    TU_OK(b, traffic_limit(b, "tb", &tb, 1, &d));
    traffic_close(b);
    tu_scratch_remove(dir);
}
END_TEST

/* The slot of key in a named table (white-box: the layout of shm/layout.h). */
static struct shm_slot *slot_of(shm_table *t, const char *key)
{
    size_t klen = strlen(key);
    for (uint64_t i = 0; i < t->capacity; i++) {
        struct shm_slot *s = shm_slot_at(t, i);
        if (CTL_STATE(atomic_load(&s->ctl)) != ST_LIVE || (atomic_load(&s->meta) & 0xffff) != klen) continue;
        char k[SHM_KEY_LIMIT];
        shm_slot_key_copy(t, s, k, klen);
        if (memcmp(k, key, klen) == 0) return s;
    }
    return NULL;
}

START_TEST(f_memory_damaged_state)
{
    const char *name = tu_name("state");
    char url[256];
    tu_memory_url(url, sizeof url, name, "max_size=100");
    traffic_backend *b;
    TU_OK(NULL, traffic_open(url, &b));
    traffic_rule tb = {TRAFFIC_TOKEN_BUCKET, 10, 60, 0}, lb = {TRAFFIC_LEAKY_BUCKET, 10, 60, 0};
    traffic_decision d;
    TU_OK(b, traffic_limit(b, "tb", &tb, 1, &d));
    TU_OK(b, traffic_limit(b, "lb", &lb, 1, &d));
    shm_params p = {.name = name};
    shm_table *t;
    char err[256];
    ck_assert_int_eq(shm_open_table(&p, &t, err, sizeof err), SHM_OK);
    struct shm_slot *s = slot_of(t, "tb");
    ck_assert_ptr_nonnull(s);
    atomic_store(&s->counter, INT64_MAX); /* T far beyond any clock: T + I overflowed */
    s = slot_of(t, "lb");
    ck_assert_ptr_nonnull(s);
    atomic_store(&s->counter, INT64_MIN);
    TU_EXPECT_RC(b, traffic_limit(b, "tb", &tb, 1, &d), TRAFFIC_ECORRUPT);
    ck_assert(strstr(traffic_errmsg(b), "token_bucket state of \"tb\" is damaged") != NULL);
    TU_EXPECT_RC(b, traffic_limit(b, "lb", &lb, 1, &d), TRAFFIC_ECORRUPT);
    TU_OK(b, traffic_limit(b, "other", &tb, 1, &d));
    TU_OK(b, traffic_delete(b, "tb"));
    TU_OK(b, traffic_limit(b, "tb", &tb, 1, &d));
    ck_assert_int_eq(d.allowed, 1);
    shm_close_table(t);
    traffic_close(b);
    traffic_memory_unlink(name);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("fuzz");
    TCase *tc = tcase_create("fuzz");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, replay_url);
    tcase_add_test(tc, replay_limit);
    tcase_add_test(tc, replay_table);
    tcase_add_test(tc, replay_sqlite);
    tcase_add_test(tc, replay_redis);
    tcase_add_test(tc, f_limit_damaged_states);
    tcase_add_test(tc, f_sqlite_damaged_state);
    tcase_add_test(tc, f_memory_damaged_state);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
