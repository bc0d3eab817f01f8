/*
 * test_evict.c — the table stays within max_size by evicting approximately least recently
 * used keys, prefers expired ones, never fails a set while something can be evicted, and a
 * huge table costs memory for the keys used, not for its capacity.
 */
#include <stdio.h>
#include <time.h>

#include "testutil.h"

START_TEST(max_size_holds_recent_and_hot_survive)
{
    traffic_backend *b;
    TU_OK(NULL, traffic_open("memory://?max_size=1000", &b));
    char key[32];
    for (int i = 0; i < 20000; i++) {
        snprintf(key, sizeof key, "k:%d", i);
        TU_OK(b, traffic_set(b, key, "v", 1, 0));
        if (i % 50 == 0) /* ten hot keys, used all along */
            for (int h = 0; h < 10; h++) {
                snprintf(key, sizeof key, "hot:%d", h);
                TU_OK(b, traffic_increment(b, key, 1, 0, NULL));
            }
    }
    struct traffic_stats st;
    TU_OK(b, traffic_stats(b, &st));
    ck_assert_uint_le(st.keys, 1000);
    ck_assert_uint_ge(st.evictions, 20000 + 10 - 1000);
    int present = 0;
    for (int i = 0; i < 20000; i++) {
        snprintf(key, sizeof key, "k:%d", i);
        present += traffic_exists(b, key) == 1;
    }
    ck_assert_int_le(present + 10, 1000);
    for (int h = 0; h < 10; h++) {
        snprintf(key, sizeof key, "hot:%d", h);
        ck_assert_msg(traffic_exists(b, key) == 1, "hot key %s was evicted", key);
    }
    for (int i = 20000 - 100; i < 20000; i++) { /* the most recent keys survive */
        snprintf(key, sizeof key, "k:%d", i);
        ck_assert_msg(traffic_exists(b, key) == 1, "recent key %s was evicted", key);
    }
    /* and the oldest are the ones that went */
    int old_present = 0;
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof key, "k:%d", i);
        old_present += traffic_exists(b, key) == 1;
    }
    ck_assert_int_lt(old_present, 50);
    TU_OK(b, traffic_close(b));
}
END_TEST

START_TEST(counters_evicted_too_and_increment_never_fails)
{
    traffic_backend *b;
    TU_OK(NULL, traffic_open("memory://?max_size=100", &b));
    char key[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof key, "c:%d", i);
        TU_OK(b, traffic_increment(b, key, 1, 0, NULL));
    }
    struct traffic_stats st;
    TU_OK(b, traffic_stats(b, &st));
    ck_assert_uint_le(st.keys, 100);
    ck_assert_uint_ge(st.evictions, 4900);
    TU_OK(b, traffic_close(b));
}
END_TEST

START_TEST(expired_keys_go_first)
{
    traffic_backend *b;
    TU_OK(NULL, traffic_open("memory://?max_size=200", &b));
    char key[32];
    for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof key, "keep:%d", i);
        TU_OK(b, traffic_set(b, key, "v", 1, 0));
    }
    for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof key, "short:%d", i);
        TU_OK(b, traffic_set(b, key, "v", 1, 0.05));
    }
    struct timespec ts = {0, 150 * 1000000};
    nanosleep(&ts, NULL);
    /* 100 new keys: the room comes from the expired ones, not from the older live ones */
    for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof key, "new:%d", i);
        TU_OK(b, traffic_set(b, key, "v", 1, 0));
    }
    int kept = 0;
    for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof key, "keep:%d", i);
        kept += traffic_exists(b, key) == 1;
    }
    ck_assert_int_ge(kept, 80); /* plain LRU would evict these oldest keys first */
    struct traffic_stats st;
    TU_OK(b, traffic_stats(b, &st));
    ck_assert_uint_ge(st.expirations, 80);
    TU_OK(b, traffic_close(b));
}
END_TEST

START_TEST(huge_table_memory_follows_keys_used)
{
    traffic_backend *b;
    TU_OK(NULL, traffic_open("memory://?max_size=10000000&value_max=64", &b));
    struct traffic_stats st;
    TU_OK(b, traffic_stats(b, &st));
    ck_assert_uint_ge(st.capacity, 10000000);
    ck_assert_uint_gt(st.bytes_used, 1ull << 30);      /* over a GiB mapped... */
    ck_assert_uint_lt(st.bytes_resident, 16ull << 20); /* ...a few MiB resident */
    char key[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof key, "k:%d", i);
        TU_OK(b, traffic_increment(b, key, 1, 0, NULL));
    }
    TU_OK(b, traffic_clear(b)); /* clear visits touched pages only */
    TU_OK(b, traffic_stats(b, &st));
    ck_assert_uint_eq(st.keys, 0);
    ck_assert_uint_lt(st.bytes_resident, 32ull << 20);
    TU_OK(b, traffic_close(b));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("evict");
    TCase *tc = tcase_create("evict");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, max_size_holds_recent_and_hot_survive);
    tcase_add_test(tc, counters_evicted_too_and_increment_never_fails);
    tcase_add_test(tc, expired_keys_go_first);
    tcase_add_test(tc, huge_table_memory_follows_keys_used);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
