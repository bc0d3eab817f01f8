/*
 * contract.c — the behaviour every backend owes its users (SPEC.md "Operations" and the
 * conventions of traffic.h), one Check test per rule, run against a fresh empty store.
 *
 * It proves: values round-trip byte for byte (NULs, empty); set replaces values and counters;
 * the key and value limits and the argument checks of every call; TTL validation, expiry and
 * "increment keeps the expiry"; short buffers; counter text, types and overflow; delete,
 * exists, clear; statistics and their JSON; status names and error messages; the cleanup
 * switch; and exact counts under concurrent threads on one handle.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "contract.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "testutil.h"

static contract_backend C; /* a copy of the suite's backend; forked tests read it */

/* ---- helpers --------------------------------------------------------------------------- */

static traffic_backend *fresh(void)
{
    traffic_backend *b = NULL;
    int rc = C.open_fresh(&b, C.ctx);
    ck_assert_msg(rc == TRAFFIC_OK && b != NULL, "open_fresh(%s) -> %s (%s)", C.name, traffic_strerror(rc),
                  traffic_errmsg(NULL));
    return b;
}

static void done(traffic_backend *b) { TU_OK(b, traffic_close(b)); }

/* A key of n bytes: "k" followed by a filler, so keys of different lengths differ. */
static char *key_of(size_t n, char fill)
{
    char *k = malloc(n + 1);
    ck_assert_ptr_nonnull(k);
    memset(k, fill, n);
    if (n) k[0] = 'k';
    k[n] = '\0';
    return k;
}

/* get(key) must succeed with exactly want[0..wlen). */
static void expect_value_at(traffic_backend *b, const char *key, const void *want, size_t wlen, int line)
{
    size_t cap = wlen + 64;
    unsigned char *buf = malloc(cap);
    ck_assert_ptr_nonnull(buf);
    size_t len = (size_t)-1;
    int rc = traffic_get(b, key, buf, cap, &len);
    ck_assert_msg(rc == TRAFFIC_OK, "line %d: get(\"%.40s\") -> %s (%s)", line, key, traffic_strerror(rc),
                  traffic_errmsg(b));
    ck_assert_msg(len == wlen, "line %d: get(\"%.40s\") length %zu, want %zu", line, key, len, wlen);
    ck_assert_msg(wlen == 0 || memcmp(buf, want, wlen) == 0, "line %d: get(\"%.40s\") returned other bytes", line,
                  key);
    free(buf);
}
#define EXPECT_VALUE(b, key, want, wlen) expect_value_at(b, key, want, wlen, __LINE__)
#define EXPECT_STR(b, key, s) expect_value_at(b, key, s, strlen(s), __LINE__)

static void expect_counter_at(traffic_backend *b, const char *key, int64_t v, int line)
{
    char want[32];
    snprintf(want, sizeof want, "%" PRId64, v);
    expect_value_at(b, key, want, strlen(want), line);
}
#define EXPECT_COUNTER(b, key, v) expect_counter_at(b, key, v, __LINE__)

static void expect_absent_at(traffic_backend *b, const char *key, int line)
{
    char buf[16];
    size_t len;
    double s;
    int rc = traffic_get(b, key, buf, sizeof buf, &len);
    ck_assert_msg(rc == TRAFFIC_ENOTFOUND, "line %d: get(\"%.40s\") -> %s, want ENOTFOUND", line, key,
                  traffic_strerror(rc));
    rc = traffic_exists(b, key);
    ck_assert_msg(rc == 0, "line %d: exists(\"%.40s\") -> %d, want 0", line, key, rc);
    rc = traffic_ttl(b, key, &s);
    ck_assert_msg(rc == TRAFFIC_ENOTFOUND, "line %d: ttl(\"%.40s\") -> %s, want ENOTFOUND", line, key,
                  traffic_strerror(rc));
}
#define EXPECT_ABSENT(b, key) expect_absent_at(b, key, __LINE__)

/* ---- values ---------------------------------------------------------------------------- */

START_TEST(c_roundtrip)
{
    traffic_backend *b = fresh();
    TU_OK(b, traffic_set(b, "plain", "hello", 5, 0));
    EXPECT_STR(b, "plain", "hello");

    static const char nul[] = {'a', '\0', 'b', '\0', '\0', 'c', '\0'};
    TU_OK(b, traffic_set(b, "nul", nul, sizeof nul, 0));
    EXPECT_VALUE(b, "nul", nul, sizeof nul);

    unsigned char all[256];
    size_t n = C.value_limit < sizeof all ? C.value_limit : sizeof all;
    for (size_t i = 0; i < n; i++) all[i] = (unsigned char)(255 - i);
    TU_OK(b, traffic_set(b, "bytes", all, n, 0));
    EXPECT_VALUE(b, "bytes", all, n);

    /* zero-length values, given as NULL and as a pointer */
    TU_OK(b, traffic_set(b, "empty-null", NULL, 0, 0));
    EXPECT_VALUE(b, "empty-null", "", 0);
    ck_assert_int_eq(traffic_exists(b, "empty-null"), 1);
    TU_OK(b, traffic_set(b, "empty-ptr", "ignored", 0, 0));
    EXPECT_VALUE(b, "empty-ptr", "", 0);

    /* a buffer of exactly the value's length is enough */
    char exact[5];
    size_t len = 0;
    TU_OK(b, traffic_get(b, "plain", exact, sizeof exact, &len));
    ck_assert_uint_eq(len, 5);
    ck_assert(memcmp(exact, "hello", 5) == 0);

    TU_EXPECT_RC(b, traffic_get(b, "absent", exact, sizeof exact, &len), TRAFFIC_ENOTFOUND);
    done(b);
}
END_TEST

START_TEST(c_set_replaces)
{
    traffic_backend *b = fresh();
    TU_OK(b, traffic_set(b, "k", "first", 5, 0));
    TU_OK(b, traffic_set(b, "k", "second-longer", 13, 0));
    EXPECT_STR(b, "k", "second-longer");
    TU_OK(b, traffic_set(b, "k", "x", 1, 0)); /* shrinking leaves nothing of the old tail */
    EXPECT_STR(b, "k", "x");
    TU_OK(b, traffic_set(b, "k", NULL, 0, 0));
    EXPECT_VALUE(b, "k", "", 0);
    TU_OK(b, traffic_set(b, "k", "back", 4, 0));
    EXPECT_STR(b, "k", "back");
    TU_OK(b, traffic_set(b, "other", "o", 1, 0)); /* a neighbour is untouched */
    EXPECT_STR(b, "k", "back");
    EXPECT_STR(b, "other", "o");
    done(b);
}
END_TEST

START_TEST(c_set_replaces_counter)
{
    traffic_backend *b = fresh();
    int64_t out = 0;
    TU_OK(b, traffic_increment(b, "c", 5, 0, &out));
    ck_assert_int_eq(out, 5);
    TU_OK(b, traffic_set(b, "c", "bytes", 5, 0));
    EXPECT_STR(b, "c", "bytes");
    out = 12345;
    TU_EXPECT_RC(b, traffic_increment(b, "c", 1, 0, &out), TRAFFIC_ETYPE);
    EXPECT_STR(b, "c", "bytes"); /* the failed increment changed nothing */
    ck_assert_int_eq(traffic_exists(b, "c"), 1);
    done(b);
}
END_TEST

START_TEST(c_keys_distinct)
{
    /* Keys are byte strings: prefixes, case, spaces, punctuation and UTF-8 are distinct keys. */
    static const char *keys[] = {"a", "ab", "A", "a ", " a", "a\x7f", "k\xc3\xa9", "with space", "a/b:c{d}", "ab\x01"};
    const size_t n = sizeof keys / sizeof keys[0];
    traffic_backend *b = fresh();
    char val[32];
    for (size_t i = 0; i < n; i++) {
        snprintf(val, sizeof val, "value-%zu", i);
        TU_OK(b, traffic_set(b, keys[i], val, strlen(val), 0));
    }
    for (size_t i = 0; i < n; i++) {
        snprintf(val, sizeof val, "value-%zu", i);
        EXPECT_STR(b, keys[i], val);
    }
    done(b);
}
END_TEST

START_TEST(c_many_keys)
{
    traffic_backend *b = fresh();
    char key[32], val[32];
    for (int i = 0; i < 500; i++) {
        snprintf(key, sizeof key, "key-%d", i);
        snprintf(val, sizeof val, "v%d", i * 7);
        TU_OK(b, traffic_set(b, key, val, strlen(val), 0));
        snprintf(key, sizeof key, "ctr-%d", i);
        TU_OK(b, traffic_increment(b, key, i, 0, NULL));
    }
    for (int i = 0; i < 500; i++) {
        snprintf(key, sizeof key, "key-%d", i);
        snprintf(val, sizeof val, "v%d", i * 7);
        EXPECT_STR(b, key, val);
        snprintf(key, sizeof key, "ctr-%d", i);
        EXPECT_COUNTER(b, key, i);
    }
    ck_assert_uint_eq(tu_stats(b).keys, 1000);
    done(b);
}
END_TEST

/* ---- keys and arguments ---------------------------------------------------------------- */

START_TEST(c_key_lengths)
{
    traffic_backend *b = fresh();
    char *k1 = key_of(1, 'x'), *k250 = key_of(250, 'x'), *k251 = key_of(251, 'x'), *k1000 = key_of(1000, 'y');
    char *c250 = key_of(250, 'c'), *c251 = key_of(251, 'c');
    char buf[16];
    size_t len;
    double s;

    /* Too long: every call that takes a key says ETOOBIG, and stores nothing (no truncation). */
    const char *longs[] = {k251, k1000};
    for (int i = 0; i < 2; i++) {
        const char *k = longs[i];
        TU_EXPECT_RC(b, traffic_set(b, k, "v", 1, 0), TRAFFIC_ETOOBIG);
        TU_EXPECT_RC(b, traffic_get(b, k, buf, sizeof buf, &len), TRAFFIC_ETOOBIG);
        TU_EXPECT_RC(b, traffic_exists(b, k), TRAFFIC_ETOOBIG);
        TU_EXPECT_RC(b, traffic_delete(b, k), TRAFFIC_ETOOBIG);
        TU_EXPECT_RC(b, traffic_increment(b, k, 1, 0, NULL), TRAFFIC_ETOOBIG);
        TU_EXPECT_RC(b, traffic_ttl(b, k, &s), TRAFFIC_ETOOBIG);
        ck_assert_str_ne(traffic_errmsg(b), "");
    }
    TU_EXPECT_RC(b, traffic_increment(b, c251, 1, 0, NULL), TRAFFIC_ETOOBIG);
    ck_assert_int_eq(traffic_exists(b, k250), 0);
    ck_assert_int_eq(traffic_exists(b, c250), 0);
    ck_assert_uint_eq(tu_stats(b).keys, 0);

    /* Empty and NULL: EINVAL everywhere. */
    const char *bad[] = {"", NULL};
    for (int i = 0; i < 2; i++) {
        const char *k = bad[i];
        TU_EXPECT_RC(b, traffic_set(b, k, "v", 1, 0), TRAFFIC_EINVAL);
        TU_EXPECT_RC(b, traffic_get(b, k, buf, sizeof buf, &len), TRAFFIC_EINVAL);
        TU_EXPECT_RC(b, traffic_exists(b, k), TRAFFIC_EINVAL);
        TU_EXPECT_RC(b, traffic_delete(b, k), TRAFFIC_EINVAL);
        TU_EXPECT_RC(b, traffic_increment(b, k, 1, 0, NULL), TRAFFIC_EINVAL);
        TU_EXPECT_RC(b, traffic_ttl(b, k, &s), TRAFFIC_EINVAL);
    }

    /* 1 and 250 bytes: every call works. */
    const char *oks[] = {k1, k250};
    for (int i = 0; i < 2; i++) {
        const char *k = oks[i];
        TU_OK(b, traffic_set(b, k, "val", 3, 0));
        EXPECT_STR(b, k, "val");
        ck_assert_int_eq(traffic_exists(b, k), 1);
        TU_OK(b, traffic_ttl(b, k, &s));
        ck_assert(s == -1.0);
        TU_OK(b, traffic_delete(b, k));
        ck_assert_int_eq(traffic_exists(b, k), 0);
    }
    int64_t out = 0;
    TU_OK(b, traffic_increment(b, c250, 3, 0, &out));
    ck_assert_int_eq(out, 3);
    EXPECT_COUNTER(b, c250, 3);
    TU_OK(b, traffic_increment(b, "c", 4, 0, &out));
    ck_assert_int_eq(out, 4);
    free(k1), free(k250), free(k251), free(k1000), free(c250), free(c251);
    done(b);
}
END_TEST

START_TEST(c_null_arguments)
{
    char buf[16];
    size_t len;
    double s;
    struct traffic_stats st;
    traffic_backend *nb = NULL;

    /* a NULL handle: EINVAL from every call (close accepts it) */
    TU_EXPECT_RC(nb, traffic_get(NULL, "k", buf, sizeof buf, &len), TRAFFIC_EINVAL);
    TU_EXPECT_RC(nb, traffic_set(NULL, "k", "v", 1, 0), TRAFFIC_EINVAL);
    TU_EXPECT_RC(nb, traffic_delete(NULL, "k"), TRAFFIC_EINVAL);
    TU_EXPECT_RC(nb, traffic_exists(NULL, "k"), TRAFFIC_EINVAL);
    TU_EXPECT_RC(nb, traffic_increment(NULL, "k", 1, 0, NULL), TRAFFIC_EINVAL);
    TU_EXPECT_RC(nb, traffic_ttl(NULL, "k", &s), TRAFFIC_EINVAL);
    TU_EXPECT_RC(nb, traffic_clear(NULL), TRAFFIC_EINVAL);
    TU_EXPECT_RC(nb, traffic_stats(NULL, &st), TRAFFIC_EINVAL);
    TU_EXPECT_RC(nb, traffic_stats_json(NULL, buf, sizeof buf), TRAFFIC_EINVAL);
    TU_EXPECT_RC(nb, traffic_start_cleanup(NULL), TRAFFIC_EINVAL);
    TU_EXPECT_RC(nb, traffic_stop_cleanup(NULL), TRAFFIC_EINVAL);
    TU_EXPECT_RC(nb, traffic_close(NULL), TRAFFIC_OK);
    TU_EXPECT_RC(nb, traffic_open("memory://", NULL), TRAFFIC_EINVAL);
    ck_assert_ptr_nonnull(traffic_errmsg(NULL));

    traffic_backend *b = fresh();
    TU_OK(b, traffic_set(b, "k", "value", 5, 0));
    TU_EXPECT_RC(b, traffic_get(b, "k", buf, sizeof buf, NULL), TRAFFIC_EINVAL);
    TU_EXPECT_RC(b, traffic_get(b, "k", NULL, 4, &len), TRAFFIC_EINVAL);
    TU_EXPECT_RC(b, traffic_ttl(b, "k", NULL), TRAFFIC_EINVAL);
    TU_EXPECT_RC(b, traffic_set(b, "k2", NULL, 3, 0), TRAFFIC_EINVAL);
    ck_assert_int_eq(traffic_exists(b, "k2"), 0);
    TU_EXPECT_RC(b, traffic_stats(b, NULL), TRAFFIC_EINVAL);
    TU_EXPECT_RC(b, traffic_stats_json(b, NULL, 8), TRAFFIC_EINVAL);
    EXPECT_STR(b, "k", "value"); /* none of that disturbed the store */

    /* out == NULL: the increment still happens */
    TU_OK(b, traffic_increment(b, "n", 2, 0, NULL));
    TU_OK(b, traffic_increment(b, "n", 3, 0, NULL));
    EXPECT_COUNTER(b, "n", 5);
    done(b);
}
END_TEST

/* ---- TTL ------------------------------------------------------------------------------- */

START_TEST(c_ttl_invalid)
{
    const double bad[] = {-1.0, -0.001, -1e-9, NAN, -NAN, INFINITY, -INFINITY, 1e13};
    traffic_backend *b = fresh();
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = traffic_set(b, "s", "v", 1, bad[i]);
        ck_assert_msg(rc == TRAFFIC_EINVAL, "set(ttl=%g) -> %s", bad[i], traffic_strerror(rc));
        ck_assert_str_ne(traffic_errmsg(b), "");
        rc = traffic_increment(b, "i", 1, bad[i], NULL);
        ck_assert_msg(rc == TRAFFIC_EINVAL, "increment(ttl=%g) -> %s", bad[i], traffic_strerror(rc));
    }
    EXPECT_ABSENT(b, "s");
    EXPECT_ABSENT(b, "i");
    /* and an existing entry is left alone by a rejected call */
    TU_OK(b, traffic_set(b, "s", "v", 1, 0));
    TU_EXPECT_RC(b, traffic_set(b, "s", "w", 1, NAN), TRAFFIC_EINVAL);
    EXPECT_STR(b, "s", "v");
    done(b);
}
END_TEST

START_TEST(c_ttl_zero_is_no_expiry)
{
    traffic_backend *b = fresh();
    double s = 0;
    TU_OK(b, traffic_set(b, "v", "x", 1, 0));
    TU_OK(b, traffic_ttl(b, "v", &s));
    ck_assert_msg(s == -1.0, "ttl of a no-expiry value is %g, want -1", s);
    TU_OK(b, traffic_increment(b, "c", 1, 0, NULL));
    s = 0;
    TU_OK(b, traffic_ttl(b, "c", &s));
    ck_assert_msg(s == -1.0, "ttl of a no-expiry counter is %g, want -1", s);
    TU_EXPECT_RC(b, traffic_ttl(b, "absent", &s), TRAFFIC_ENOTFOUND);
    done(b);
}
END_TEST

START_TEST(c_ttl_positive)
{
    traffic_backend *b = fresh();
    double s = -5;
    TU_OK(b, traffic_set(b, "v", "x", 1, 10));
    TU_OK(b, traffic_ttl(b, "v", &s));
    ck_assert_msg(s > 5 && s <= 10, "ttl after set(ttl=10) is %g", s);
    TU_OK(b, traffic_set(b, "w", "x", 1, 2.5));
    TU_OK(b, traffic_ttl(b, "w", &s));
    ck_assert_msg(s > 0 && s <= 2.5, "ttl after set(ttl=2.5) is %g", s);
    TU_OK(b, traffic_increment(b, "c", 1, 10, NULL));
    TU_OK(b, traffic_ttl(b, "c", &s));
    ck_assert_msg(s > 5 && s <= 10, "ttl after increment(ttl=10) is %g", s);
    TU_OK(b, traffic_set(b, "far", "x", 1, 1e12)); /* the largest TTL there is */
    TU_OK(b, traffic_ttl(b, "far", &s));
    ck_assert_msg(s > 1e12 - 100 && s <= 1e12, "ttl after set(ttl=1e12) is %f", s);
    /* still present well before the end of the TTL */
    EXPECT_STR(b, "v", "x");
    EXPECT_COUNTER(b, "c", 1);
    done(b);
}
END_TEST

START_TEST(c_ttl_expires)
{
    traffic_backend *b = fresh();
    TU_OK(b, traffic_set(b, "v", "x", 1, 0.2));
    TU_OK(b, traffic_increment(b, "c", 5, 0.2, NULL));
    TU_OK(b, traffic_set(b, "forever", "y", 1, 0));
    ck_assert_int_eq(traffic_exists(b, "v"), 1);
    ck_assert_int_eq(traffic_exists(b, "c"), 1);
    tu_sleep_ms(350);
    EXPECT_ABSENT(b, "v");
    EXPECT_ABSENT(b, "c");
    EXPECT_STR(b, "forever", "y");
    /* an expired counter restarts at the amount */
    int64_t out = 0;
    TU_OK(b, traffic_increment(b, "c", 2, 0, &out));
    ck_assert_int_eq(out, 2);
    /* an expired bytes value is no obstacle to a counter of the same name */
    TU_OK(b, traffic_set(b, "x", "bytes", 5, 0.2));
    tu_sleep_ms(350);
    TU_OK(b, traffic_increment(b, "x", 3, 0, &out));
    ck_assert_int_eq(out, 3);
    EXPECT_COUNTER(b, "x", 3);
    done(b);
}
END_TEST

START_TEST(c_ttl_tiny_is_not_forever)
{
    traffic_backend *b = fresh();
    double s = 0;
    TU_OK(b, traffic_set(b, "v", "x", 1, 0.0001));
    int rc = traffic_ttl(b, "v", &s);
    ck_assert_msg(rc == TRAFFIC_ENOTFOUND || (rc == TRAFFIC_OK && s > 0 && s <= 0.001),
                  "ttl right after set(ttl=0.0001) -> %s, %g", traffic_strerror(rc), s);
    TU_OK(b, traffic_increment(b, "c", 1, 1e-9, NULL));
    rc = traffic_ttl(b, "c", &s);
    ck_assert_msg(rc == TRAFFIC_ENOTFOUND || (rc == TRAFFIC_OK && s > 0 && s <= 0.001),
                  "ttl right after increment(ttl=1e-9) -> %s, %g", traffic_strerror(rc), s);
    tu_sleep_ms(50);
    EXPECT_ABSENT(b, "v");
    EXPECT_ABSENT(b, "c");
    done(b);
}
END_TEST

START_TEST(c_set_resets_ttl)
{
    traffic_backend *b = fresh();
    double s = 0;
    TU_OK(b, traffic_set(b, "v", "a", 1, 0.2));
    TU_OK(b, traffic_set(b, "v", "b", 1, 0)); /* set replaces the expiry too */
    TU_OK(b, traffic_ttl(b, "v", &s));
    ck_assert(s == -1.0);
    tu_sleep_ms(350);
    EXPECT_STR(b, "v", "b");
    TU_OK(b, traffic_set(b, "v", "c", 1, 100)); /* and gives an expiry to one that had none */
    TU_OK(b, traffic_ttl(b, "v", &s));
    ck_assert_msg(s > 50 && s <= 100, "ttl %g", s);
    done(b);
}
END_TEST

START_TEST(c_increment_keeps_ttl)
{
    traffic_backend *b = fresh();
    double s = 0;
    int64_t out = 0;
    TU_OK(b, traffic_increment(b, "c", 1, 0.4, &out));
    for (int i = 0; i < 3; i++) TU_OK(b, traffic_increment(b, "c", 1, 100, &out));
    ck_assert_int_eq(out, 4);
    TU_OK(b, traffic_ttl(b, "c", &s));
    ck_assert_msg(s > 0 && s <= 0.4, "increment(ttl=100) extended the ttl to %g", s);
    tu_sleep_ms(600);
    EXPECT_ABSENT(b, "c");
    TU_OK(b, traffic_increment(b, "c", 7, 100, &out)); /* restarts, with the new ttl */
    ck_assert_int_eq(out, 7);
    TU_OK(b, traffic_ttl(b, "c", &s));
    ck_assert_msg(s > 50 && s <= 100, "restarted counter has ttl %g, want about 100", s);

    /* a counter without expiry keeps having none */
    TU_OK(b, traffic_increment(b, "n", 1, 0, NULL));
    TU_OK(b, traffic_increment(b, "n", 1, 5, NULL));
    TU_OK(b, traffic_ttl(b, "n", &s));
    ck_assert_msg(s == -1.0, "increment(ttl=5) gave a no-expiry counter ttl %g", s);
    done(b);
}
END_TEST

/* ---- limits and buffers ---------------------------------------------------------------- */

START_TEST(c_value_limit)
{
    traffic_backend *b = fresh();
    size_t n = C.value_limit;
    unsigned char *v = malloc(n + 1);
    ck_assert_ptr_nonnull(v);
    for (size_t i = 0; i <= n; i++) v[i] = (unsigned char)(i * 31 + 7);
    v[n / 2] = 0;
    TU_OK(b, traffic_set(b, "big", v, n, 0));
    EXPECT_VALUE(b, "big", v, n);
    TU_EXPECT_RC(b, traffic_set(b, "big", v, n + 1, 0), TRAFFIC_ETOOBIG);
    ck_assert_msg(traffic_errmsg(b)[0] != '\0', "ETOOBIG without a message");
    EXPECT_VALUE(b, "big", v, n); /* the old value survives the failed set */
    TU_EXPECT_RC(b, traffic_set(b, "new", v, n + 1, 0), TRAFFIC_ETOOBIG);
    EXPECT_ABSENT(b, "new");
    free(v);
    done(b);
}
END_TEST

START_TEST(c_short_buffer)
{
    traffic_backend *b = fresh();
    unsigned char buf[32];
    size_t len = 0;
    TU_OK(b, traffic_set(b, "v", "0123456789", 10, 0));

    memset(buf, 0xAA, sizeof buf);
    TU_EXPECT_RC(b, traffic_get(b, "v", buf, 4, &len), TRAFFIC_ERANGE);
    ck_assert_uint_eq(len, 10);
    for (size_t i = 4; i < sizeof buf; i++) ck_assert_msg(buf[i] == 0xAA, "get wrote byte %zu past cap 4", i);
    len = 0;
    TU_EXPECT_RC(b, traffic_get(b, "v", buf, 9, &len), TRAFFIC_ERANGE);
    ck_assert_uint_eq(len, 10);
    len = 0;
    TU_EXPECT_RC(b, traffic_get(b, "v", NULL, 0, &len), TRAFFIC_ERANGE); /* a length query */
    ck_assert_uint_eq(len, 10);
    TU_OK(b, traffic_get(b, "v", buf, 10, &len));
    ck_assert_uint_eq(len, 10);
    ck_assert(memcmp(buf, "0123456789", 10) == 0);

    /* an empty value fits in nothing */
    TU_OK(b, traffic_set(b, "e", NULL, 0, 0));
    len = 99;
    TU_OK(b, traffic_get(b, "e", NULL, 0, &len));
    ck_assert_uint_eq(len, 0);

    /* a counter's text too */
    TU_OK(b, traffic_increment(b, "c", 12345, 0, NULL));
    len = 0;
    TU_EXPECT_RC(b, traffic_get(b, "c", NULL, 0, &len), TRAFFIC_ERANGE);
    ck_assert_uint_eq(len, 5);
    memset(buf, 0xAA, sizeof buf);
    len = 0;
    TU_EXPECT_RC(b, traffic_get(b, "c", buf, 3, &len), TRAFFIC_ERANGE);
    ck_assert_uint_eq(len, 5);
    for (size_t i = 3; i < sizeof buf; i++) ck_assert_msg(buf[i] == 0xAA, "get wrote byte %zu past cap 3", i);
    EXPECT_COUNTER(b, "c", 12345);
    done(b);
}
END_TEST

/* ---- counters -------------------------------------------------------------------------- */

START_TEST(c_counter_basics)
{
    traffic_backend *b = fresh();
    int64_t out = 0;
    TU_OK(b, traffic_increment(b, "n", 5, 0, &out));
    ck_assert_int_eq(out, 5);
    EXPECT_COUNTER(b, "n", 5);
    TU_OK(b, traffic_increment(b, "n", 3, 0, &out));
    ck_assert_int_eq(out, 8);
    TU_OK(b, traffic_increment(b, "n", -10, 0, &out));
    ck_assert_int_eq(out, -2);
    EXPECT_STR(b, "n", "-2");
    TU_OK(b, traffic_increment(b, "n", 0, 0, &out));
    ck_assert_int_eq(out, -2);

    TU_OK(b, traffic_increment(b, "neg", -5, 0, &out)); /* created at a negative amount */
    ck_assert_int_eq(out, -5);
    EXPECT_STR(b, "neg", "-5");
    TU_OK(b, traffic_increment(b, "zero", 0, 0, &out)); /* amount 0 creates a counter at 0 */
    ck_assert_int_eq(out, 0);
    EXPECT_STR(b, "zero", "0");
    ck_assert_int_eq(traffic_exists(b, "zero"), 1);

    TU_OK(b, traffic_increment(b, "max", INT64_MAX, 0, &out));
    ck_assert_int_eq(out, INT64_MAX);
    EXPECT_STR(b, "max", "9223372036854775807");
    TU_OK(b, traffic_increment(b, "min", INT64_MIN, 0, &out));
    ck_assert_int_eq(out, INT64_MIN);
    EXPECT_STR(b, "min", "-9223372036854775808");
    done(b);
}
END_TEST

START_TEST(c_counter_type)
{
    traffic_backend *b = fresh();
    int64_t out = 777;
    TU_OK(b, traffic_set(b, "b", "abc", 3, 0));
    TU_EXPECT_RC(b, traffic_increment(b, "b", 1, 0, &out), TRAFFIC_ETYPE);
    ck_assert_str_ne(traffic_errmsg(b), "");
    TU_EXPECT_RC(b, traffic_increment(b, "b", 0, 0, &out), TRAFFIC_ETYPE);
    EXPECT_STR(b, "b", "abc");
    /* A counter is what traffic_increment made: a set value that looks numeric is not one. */
    TU_OK(b, traffic_set(b, "digits", "12", 2, 0));
    TU_EXPECT_RC(b, traffic_increment(b, "digits", 1, 0, &out), TRAFFIC_ETYPE);
    EXPECT_STR(b, "digits", "12");
    TU_OK(b, traffic_set(b, "e", NULL, 0, 0));
    TU_EXPECT_RC(b, traffic_increment(b, "e", 1, 0, &out), TRAFFIC_ETYPE);
    done(b);
}
END_TEST

START_TEST(c_counter_overflow)
{
    traffic_backend *b = fresh();
    int64_t out = 0;
    TU_OK(b, traffic_increment(b, "hi", INT64_MAX - 1, 0, &out));
    TU_OK(b, traffic_increment(b, "hi", 1, 0, &out));
    ck_assert_int_eq(out, INT64_MAX);
    TU_EXPECT_RC(b, traffic_increment(b, "hi", 1, 0, &out), TRAFFIC_EOVERFLOW);
    ck_assert_str_ne(traffic_errmsg(b), "");
    EXPECT_COUNTER(b, "hi", INT64_MAX);
    TU_EXPECT_RC(b, traffic_increment(b, "hi", INT64_MAX, 0, &out), TRAFFIC_EOVERFLOW);
    EXPECT_COUNTER(b, "hi", INT64_MAX);
    TU_OK(b, traffic_increment(b, "hi", -1, 0, &out)); /* still usable */
    ck_assert_int_eq(out, INT64_MAX - 1);

    TU_OK(b, traffic_increment(b, "lo", INT64_MIN, 0, &out));
    TU_EXPECT_RC(b, traffic_increment(b, "lo", -1, 0, &out), TRAFFIC_EOVERFLOW);
    EXPECT_COUNTER(b, "lo", INT64_MIN);
    TU_EXPECT_RC(b, traffic_increment(b, "lo", INT64_MIN, 0, &out), TRAFFIC_EOVERFLOW);
    EXPECT_COUNTER(b, "lo", INT64_MIN);
    TU_OK(b, traffic_increment(b, "lo", 1, 0, &out));
    ck_assert_int_eq(out, INT64_MIN + 1);

    TU_OK(b, traffic_increment(b, "small", 1, 0, &out));
    TU_EXPECT_RC(b, traffic_increment(b, "small", INT64_MAX, 0, &out), TRAFFIC_EOVERFLOW);
    EXPECT_COUNTER(b, "small", 1);
    TU_OK(b, traffic_increment(b, "minus", -2, 0, &out));
    TU_EXPECT_RC(b, traffic_increment(b, "minus", INT64_MIN, 0, &out), TRAFFIC_EOVERFLOW);
    EXPECT_COUNTER(b, "minus", -2);
    done(b);
}
END_TEST

/* ---- delete, exists, clear ------------------------------------------------------------- */

START_TEST(c_delete_exists)
{
    traffic_backend *b = fresh();
    ck_assert_int_eq(traffic_exists(b, "v"), 0);
    TU_OK(b, traffic_delete(b, "v")); /* absent: still OK */
    TU_OK(b, traffic_set(b, "v", "x", 1, 0));
    TU_OK(b, traffic_set(b, "w", "y", 1, 0));
    ck_assert_int_eq(traffic_exists(b, "v"), 1);
    TU_OK(b, traffic_delete(b, "v"));
    EXPECT_ABSENT(b, "v");
    TU_OK(b, traffic_delete(b, "v"));
    EXPECT_STR(b, "w", "y"); /* only that key went */
    TU_OK(b, traffic_set(b, "v", "again", 5, 0));
    EXPECT_STR(b, "v", "again");

    int64_t out = 0;
    TU_OK(b, traffic_increment(b, "c", 10, 0, &out));
    ck_assert_int_eq(traffic_exists(b, "c"), 1);
    TU_OK(b, traffic_delete(b, "c"));
    EXPECT_ABSENT(b, "c");
    TU_OK(b, traffic_increment(b, "c", 1, 0, &out));
    ck_assert_int_eq(out, 1);
    done(b);
}
END_TEST

START_TEST(c_clear)
{
    traffic_backend *b = fresh();
    TU_OK(b, traffic_clear(b)); /* an empty store clears fine */
    char key[32];
    for (int i = 0; i < 20; i++) {
        snprintf(key, sizeof key, "v%d", i);
        TU_OK(b, traffic_set(b, key, "x", 1, i % 2 ? 100 : 0));
    }
    for (int i = 0; i < 5; i++) {
        snprintf(key, sizeof key, "c%d", i);
        TU_OK(b, traffic_increment(b, key, 1, 0, NULL));
    }
    ck_assert_uint_eq(tu_stats(b).keys, 25);
    TU_OK(b, traffic_clear(b));
    ck_assert_uint_eq(tu_stats(b).keys, 0);
    for (int i = 0; i < 20; i++) {
        snprintf(key, sizeof key, "v%d", i);
        EXPECT_ABSENT(b, key);
    }
    for (int i = 0; i < 5; i++) {
        snprintf(key, sizeof key, "c%d", i);
        EXPECT_ABSENT(b, key);
    }
    /* usable afterwards */
    int64_t out = 0;
    TU_OK(b, traffic_set(b, "v0", "new", 3, 0));
    TU_OK(b, traffic_increment(b, "c0", 2, 0, &out));
    ck_assert_int_eq(out, 2);
    EXPECT_STR(b, "v0", "new");
    ck_assert_uint_eq(tu_stats(b).keys, 2);
    done(b);
}
END_TEST

/* ---- stats ----------------------------------------------------------------------------- */

#define STAT_DELTA(name, want)                                                                                         \
    do {                                                                                                               \
        uint64_t d_ = s1.name - s0.name;                                                                               \
        ck_assert_msg(s1.name >= s0.name, "stats." #name " went down: %llu -> %llu", (unsigned long long)s0.name,     \
                      (unsigned long long)s1.name);                                                                    \
        if (C.stats_exact)                                                                                             \
            ck_assert_msg(d_ == (want), "stats." #name " moved by %llu, want %llu", (unsigned long long)d_,            \
                          (unsigned long long)(want));                                                                 \
        else                                                                                                           \
            ck_assert_msg(d_ >= (want), "stats." #name " moved by %llu, want at least %llu", (unsigned long long)d_,   \
                          (unsigned long long)(want));                                                                 \
    } while (0)

START_TEST(c_stats_counts)
{
    traffic_backend *b = fresh();
    struct traffic_stats s0 = tu_stats(b), s1;
    ck_assert_ptr_nonnull(s0.backend);
    ck_assert_str_eq(s0.backend, C.name);
    ck_assert_uint_eq(s0.keys, 0);
    if (s0.max_size) ck_assert_uint_ge(s0.capacity, s0.max_size);

    char buf[16];
    size_t len;
    TU_OK(b, traffic_set(b, "a", "1", 1, 0));
    TU_OK(b, traffic_set(b, "b", "2", 1, 0));
    TU_OK(b, traffic_set(b, "c", "3", 1, 0));
    s1 = tu_stats(b);
    STAT_DELTA(sets, 3);
    ck_assert_uint_eq(s1.keys, 3);

    TU_OK(b, traffic_get(b, "a", buf, sizeof buf, &len));
    TU_OK(b, traffic_get(b, "b", buf, sizeof buf, &len));
    TU_EXPECT_RC(b, traffic_get(b, "zz", buf, sizeof buf, &len), TRAFFIC_ENOTFOUND);
    ck_assert_int_eq(traffic_exists(b, "c"), 1);
    ck_assert_int_eq(traffic_exists(b, "yy"), 0);
    s1 = tu_stats(b);
    STAT_DELTA(hits, 3);
    STAT_DELTA(misses, 2);

    for (int i = 0; i < 4; i++) TU_OK(b, traffic_increment(b, "n", 1, 0, NULL));
    s1 = tu_stats(b);
    STAT_DELTA(increments, 4);
    ck_assert_uint_eq(s1.keys, 4);

    TU_OK(b, traffic_delete(b, "a"));
    TU_OK(b, traffic_delete(b, "absent")); /* removes nothing */
    s1 = tu_stats(b);
    STAT_DELTA(deletes, 1);
    ck_assert_uint_eq(s1.keys, 3);
    STAT_DELTA(sets, 3); /* the rest did not count as sets */
    ck_assert_str_eq(s1.backend, C.name);
    done(b);
}
END_TEST

static unsigned long long json_u64(const char *json, const char *field)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", field);
    const char *p = strstr(json, pat);
    ck_assert_msg(p != NULL, "stats JSON lacks %s: %s", pat, json);
    return strtoull(p + strlen(pat), NULL, 10);
}

START_TEST(c_stats_json)
{
    traffic_backend *b = fresh();
    TU_OK(b, traffic_set(b, "a", "1", 1, 0));
    TU_OK(b, traffic_increment(b, "n", 1, 0, NULL));

    int need = traffic_stats_json(b, NULL, 0);
    ck_assert_msg(need > 2, "length query returned %d (%s)", need, traffic_errmsg(b));
    char *buf = malloc((size_t)need + 1);
    ck_assert_ptr_nonnull(buf);
    int n = traffic_stats_json(b, buf, (size_t)need + 1);
    ck_assert_int_eq(n, need);
    ck_assert_uint_eq(strlen(buf), (size_t)n);

    /* looks like one JSON object: braces balanced outside strings, strings closed, no ",}" */
    ck_assert_msg(buf[0] == '{' && buf[n - 1] == '}', "not an object: %s", buf);
    int depth = 0, in_str = 0;
    for (int i = 0; i < n; i++) {
        char ch = buf[i];
        if (in_str) {
            if (ch == '\\') i++;
            else if (ch == '"') in_str = 0;
            continue;
        }
        if (ch == '"') in_str = 1;
        else if (ch == '{' || ch == '[') depth++;
        else if (ch == '}' || ch == ']') depth--;
        ck_assert_msg(depth >= 0 && (depth > 0 || i == n - 1), "unbalanced at %d: %s", i, buf);
    }
    ck_assert_msg(depth == 0 && !in_str, "unbalanced: %s", buf);
    ck_assert_msg(strstr(buf, ",}") == NULL && strstr(buf, ",,") == NULL, "stray comma: %s", buf);
    ck_assert_msg(strstr(buf, "\"keys\":") != NULL, "no \"keys\": %s", buf);
    char backend[128];
    snprintf(backend, sizeof backend, "\"backend\":\"%s\"", C.name);
    ck_assert_msg(strstr(buf, backend) != NULL, "no %s: %s", backend, buf);
    ck_assert_uint_eq(json_u64(buf, "keys"), 2);
    ck_assert_uint_eq(json_u64(buf, "keys"), tu_stats(b).keys);

    /* too small: ERANGE, whether one byte short (no room for the NUL) or tiny */
    char small[8];
    TU_EXPECT_RC(b, traffic_stats_json(b, buf, (size_t)need), TRAFFIC_ERANGE);
    TU_EXPECT_RC(b, traffic_stats_json(b, small, sizeof small), TRAFFIC_ERANGE);
    TU_EXPECT_RC(b, traffic_stats_json(b, small, 1), TRAFFIC_ERANGE);
    free(buf);
    done(b);
}
END_TEST

/* ---- statuses and messages ------------------------------------------------------------- */

START_TEST(c_strerror)
{
    static const struct {
        int code;
        const char *name;
    } codes[] = {
        {TRAFFIC_OK, "TRAFFIC_OK"},         {TRAFFIC_ENOTFOUND, "TRAFFIC_ENOTFOUND"},
        {TRAFFIC_EINVAL, "TRAFFIC_EINVAL"}, {TRAFFIC_ETOOBIG, "TRAFFIC_ETOOBIG"},
        {TRAFFIC_EFULL, "TRAFFIC_EFULL"},   {TRAFFIC_ETYPE, "TRAFFIC_ETYPE"},
        {TRAFFIC_EOVERFLOW, "TRAFFIC_EOVERFLOW"}, {TRAFFIC_EIO, "TRAFFIC_EIO"},
        {TRAFFIC_EUNAVAILABLE, "TRAFFIC_EUNAVAILABLE"}, {TRAFFIC_ETIMEDOUT, "TRAFFIC_ETIMEDOUT"},
        {TRAFFIC_ECORRUPT, "TRAFFIC_ECORRUPT"}, {TRAFFIC_ENOMEM, "TRAFFIC_ENOMEM"},
        {TRAFFIC_ERANGE, "TRAFFIC_ERANGE"}, {TRAFFIC_EPERM, "TRAFFIC_EPERM"},
        {TRAFFIC_ENOTSUP, "TRAFFIC_ENOTSUP"},
    };
    const size_t n = sizeof codes / sizeof codes[0];
    ck_assert_int_eq(n, 1 - TRAFFIC_ENOTSUP); /* every code from OK down to ENOTSUP is listed */
    for (size_t i = 0; i < n; i++) {
        const char *s = traffic_strerror(codes[i].code);
        ck_assert_msg(s != NULL && s[0] != '\0', "strerror(%d) is empty", codes[i].code);
        /* names the code: "TRAFFIC_EIO" followed by a non-identifier character or the end */
        const char *p = strstr(s, codes[i].name);
        ck_assert_msg(p != NULL, "strerror(%d) = \"%s\" does not name %s", codes[i].code, s, codes[i].name);
        char after = p[strlen(codes[i].name)];
        ck_assert_msg(after != '_' && !(after >= 'A' && after <= 'Z'), "strerror(%d) = \"%s\"", codes[i].code, s);
        for (size_t j = 0; j < i; j++)
            ck_assert_msg(strcmp(s, traffic_strerror(codes[j].code)) != 0, "strerror(%d) == strerror(%d)",
                          codes[i].code, codes[j].code);
    }
    const int unknown[] = {1, 42, -15, -999, INT32_MIN, INT32_MAX};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        const char *s = traffic_strerror(unknown[i]);
        ck_assert_msg(s != NULL && s[0] != '\0', "strerror(%d) is empty", unknown[i]);
        for (size_t j = 0; j < n; j++)
            ck_assert_msg(strcmp(s, traffic_strerror(codes[j].code)) != 0, "unknown %d named like %s", unknown[i],
                          codes[j].name);
    }
}
END_TEST

START_TEST(c_errmsg)
{
    traffic_backend *x = (traffic_backend *)&x; /* garbage, must be overwritten */
    int rc = traffic_open("no-such-scheme://somewhere", &x);
    ck_assert_int_eq(rc, TRAFFIC_EINVAL);
    ck_assert_ptr_null(x);
    const char *m = traffic_errmsg(NULL);
    ck_assert_msg(m != NULL && strstr(m, "no-such-scheme") != NULL, "errmsg(NULL) = \"%s\"", m ? m : "(null)");
    TU_EXPECT_RC(NULL, traffic_open("not a url", &x), TRAFFIC_EINVAL);
    ck_assert_ptr_null(x);
    ck_assert_str_ne(traffic_errmsg(NULL), "");

    traffic_backend *b = fresh();
    ck_assert_ptr_nonnull(traffic_errmsg(b));
    ck_assert_str_eq(traffic_errmsg(b), ""); /* no failure yet on this handle */
    char *k251 = key_of(251, 'z');
    TU_EXPECT_RC(b, traffic_set(b, k251, "v", 1, 0), TRAFFIC_ETOOBIG);
    ck_assert_str_ne(traffic_errmsg(b), "");
    TU_EXPECT_RC(b, traffic_get(b, "", NULL, 0, NULL), TRAFFIC_EINVAL);
    ck_assert_str_ne(traffic_errmsg(b), "");
    free(k251);
    done(b);
}
END_TEST

/* ---- cleanup --------------------------------------------------------------------------- */

START_TEST(c_cleanup_switch)
{
    traffic_backend *b = fresh();
    TU_OK(b, traffic_stop_cleanup(b)); /* not started: OK */
    int rc = traffic_start_cleanup(b);
    if (rc == TRAFFIC_ENOTSUP) {
        done(b);
        return;
    }
    ck_assert_msg(rc == TRAFFIC_OK, "start_cleanup -> %s (%s)", traffic_strerror(rc), traffic_errmsg(b));
    TU_OK(b, traffic_start_cleanup(b));
    TU_OK(b, traffic_set(b, "v", "x", 1, 0));
    TU_OK(b, traffic_increment(b, "c", 1, 0.05, NULL));
    EXPECT_STR(b, "v", "x");
    TU_OK(b, traffic_stop_cleanup(b));
    TU_OK(b, traffic_stop_cleanup(b));
    TU_OK(b, traffic_start_cleanup(b)); /* restartable */
    TU_OK(b, traffic_stop_cleanup(b));
    EXPECT_STR(b, "v", "x");
    done(b);

    traffic_backend *b2 = fresh(); /* closing with the cleanup running stops it */
    TU_OK(b2, traffic_start_cleanup(b2));
    TU_OK(b2, traffic_close(b2));
}
END_TEST

/* ---- threads --------------------------------------------------------------------------- */

#define THREADS 4
#define THREAD_INCRS 20000
#define THREAD_KEYS 8

struct worker {
    pthread_t tid;
    traffic_backend *b;
    int id;
    int failures;
    int first_rc;
    int64_t last[THREAD_KEYS];
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    char key[32];
    for (int i = 0; i < THREAD_INCRS; i++) {
        int k = (i + w->id) % THREAD_KEYS;
        snprintf(key, sizeof key, "thr-%d", k);
        int64_t out = 0;
        int rc = traffic_increment(w->b, key, 1, 0, &out);
        if (rc != TRAFFIC_OK) {
            if (!w->failures++) w->first_rc = rc;
        } else if (out <= w->last[k]) { /* values seen by one thread only grow */
            if (!w->failures++) w->first_rc = 1;
        } else {
            w->last[k] = out;
        }
    }
    return NULL;
}

START_TEST(c_threads)
{
    traffic_backend *b = fresh();
    struct traffic_stats s0 = tu_stats(b), s1;
    struct worker w[THREADS];
    memset(w, 0, sizeof w);
    for (int i = 0; i < THREADS; i++) {
        w[i].b = b;
        w[i].id = i;
        ck_assert_int_eq(pthread_create(&w[i].tid, NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) ck_assert_int_eq(pthread_join(w[i].tid, NULL), 0);
    for (int i = 0; i < THREADS; i++)
        ck_assert_msg(w[i].failures == 0, "thread %d: %d failures, first %d %s", i, w[i].failures, w[i].first_rc,
                      traffic_strerror(w[i].first_rc));
    char key[32];
    for (int k = 0; k < THREAD_KEYS; k++) {
        snprintf(key, sizeof key, "thr-%d", k);
        EXPECT_COUNTER(b, key, THREADS * THREAD_INCRS / THREAD_KEYS);
    }
    s1 = tu_stats(b);
    STAT_DELTA(increments, (uint64_t)THREADS * THREAD_INCRS);
    ck_assert_uint_eq(s1.keys, THREAD_KEYS);
    done(b);
}
END_TEST

/* Readers never see a torn value: writers store values whose every byte is a function of the
 * length, readers check that what they got is consistent. */
#define TV_KEYS 4
#define TV_SETS 20000

static unsigned char tv_byte(size_t len) { return (unsigned char)(len * 13 + 1); }

struct tv_thread {
    pthread_t tid;
    traffic_backend *b;
    int id;
    size_t limit;
    atomic_int *stop; /* readers run until the writers are done */
    long reads;
    int failures;
    char first[160];
};

static void tv_fail(struct tv_thread *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tv_fail(struct tv_thread *w, const char *fmt, ...)
{
    if (!w->failures++) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(w->first, sizeof w->first, fmt, ap);
        va_end(ap);
    }
}

static void *tv_writer(void *arg)
{
    struct tv_thread *w = arg;
    unsigned char *buf = malloc(w->limit);
    char key[16];
    if (!buf) {
        tv_fail(w, "malloc");
        return NULL;
    }
    for (int i = 0; i < TV_SETS; i++) {
        size_t len = 1 + ((size_t)i * 7919 + (size_t)w->id * 31) % w->limit;
        memset(buf, tv_byte(len), len);
        snprintf(key, sizeof key, "tv-%d", i % TV_KEYS);
        int rc = traffic_set(w->b, key, buf, len, 0);
        if (rc != TRAFFIC_OK) tv_fail(w, "set(%s, %zu bytes) -> %s", key, len, traffic_strerror(rc));
    }
    free(buf);
    return NULL;
}

static void *tv_reader(void *arg)
{
    struct tv_thread *w = arg;
    unsigned char *buf = malloc(w->limit);
    char key[16];
    if (!buf) {
        tv_fail(w, "malloc");
        return NULL;
    }
    for (long i = 0; !atomic_load(w->stop) || i < 1000; i++) {
        snprintf(key, sizeof key, "tv-%ld", i % TV_KEYS);
        size_t len = 0;
        int rc = traffic_get(w->b, key, buf, w->limit, &len);
        if (rc != TRAFFIC_OK) {
            tv_fail(w, "get(%s) -> %s", key, traffic_strerror(rc));
            continue;
        }
        w->reads++;
        if (len < 1 || len > w->limit) {
            tv_fail(w, "get(%s) length %zu", key, len);
            continue;
        }
        for (size_t k = 0; k < len; k++)
            if (buf[k] != tv_byte(len)) {
                tv_fail(w, "get(%s): torn value, byte %zu of %zu is %#x, want %#x", key, k, len, buf[k],
                        tv_byte(len));
                break;
            }
    }
    free(buf);
    return NULL;
}

START_TEST(c_threads_values)
{
    traffic_backend *b = fresh();
    size_t limit = C.value_limit < 1024 ? C.value_limit : 1024;
    char key[16];
    for (int k = 0; k < TV_KEYS; k++) { /* present from the start: a miss is a failure */
        snprintf(key, sizeof key, "tv-%d", k);
        unsigned char one = tv_byte(1);
        TU_OK(b, traffic_set(b, key, &one, 1, 0));
    }
    atomic_int stop = 0;
    struct tv_thread w[4];
    memset(w, 0, sizeof w);
    for (int i = 0; i < 4; i++) {
        w[i].b = b;
        w[i].id = i;
        w[i].limit = limit;
        w[i].stop = &stop;
        ck_assert_int_eq(pthread_create(&w[i].tid, NULL, i < 2 ? tv_writer : tv_reader, &w[i]), 0);
    }
    for (int i = 0; i < 2; i++) ck_assert_int_eq(pthread_join(w[i].tid, NULL), 0);
    atomic_store(&stop, 1);
    for (int i = 2; i < 4; i++) ck_assert_int_eq(pthread_join(w[i].tid, NULL), 0);
    for (int i = 0; i < 4; i++)
        ck_assert_msg(w[i].failures == 0, "%s %d: %d failures, first: %s", i < 2 ? "writer" : "reader", i,
                      w[i].failures, w[i].first);
    ck_assert_int_ge(w[2].reads + w[3].reads, 2000);
    ck_assert_uint_eq(tu_stats(b).keys, TV_KEYS);
    done(b);
}
END_TEST

/* ---- the suite ------------------------------------------------------------------------- */

Suite *contract_suite(const contract_backend *cb)
{
    static char name[128];
    C = *cb;
    snprintf(name, sizeof name, "contract-%s%s%s", cb->name, cb->variant ? "-" : "", cb->variant ? cb->variant : "");
    Suite *s = suite_create(name);

    TCase *v = tcase_create("values");
    tcase_add_test(v, c_roundtrip);
    tcase_add_test(v, c_set_replaces);
    tcase_add_test(v, c_set_replaces_counter);
    tcase_add_test(v, c_keys_distinct);
    tcase_add_test(v, c_many_keys);
    tcase_add_test(v, c_value_limit);
    tcase_add_test(v, c_short_buffer);
    suite_add_tcase(s, v);

    TCase *a = tcase_create("arguments");
    tcase_add_test(a, c_key_lengths);
    tcase_add_test(a, c_null_arguments);
    tcase_add_test(a, c_strerror);
    tcase_add_test(a, c_errmsg);
    suite_add_tcase(s, a);

    TCase *t = tcase_create("ttl");
    tcase_add_test(t, c_ttl_invalid);
    tcase_add_test(t, c_ttl_zero_is_no_expiry);
    tcase_add_test(t, c_ttl_positive);
    tcase_add_test(t, c_ttl_expires);
    tcase_add_test(t, c_ttl_tiny_is_not_forever);
    tcase_add_test(t, c_set_resets_ttl);
    tcase_add_test(t, c_increment_keeps_ttl);
    suite_add_tcase(s, t);

    TCase *c = tcase_create("counters");
    tcase_add_test(c, c_counter_basics);
    tcase_add_test(c, c_counter_type);
    tcase_add_test(c, c_counter_overflow);
    tcase_add_test(c, c_threads);
    tcase_add_test(c, c_threads_values);
    suite_add_tcase(s, c);

    TCase *o = tcase_create("store");
    tcase_add_test(o, c_delete_exists);
    tcase_add_test(o, c_clear);
    tcase_add_test(o, c_stats_counts);
    tcase_add_test(o, c_stats_json);
    tcase_add_test(o, c_cleanup_switch);
    suite_add_tcase(s, o);

    contract_limit_tcases(s, cb);
    contract_scan_tcases(s, cb);
    return s;
}
