/* test_smoke.c — the library opens a memory table, counts, reads back and closes. */
#include <string.h>

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

int main(void)
{
    Suite *s = suite_create("smoke");
    TCase *tc = tcase_create("smoke");
    tcase_add_test(tc, smoke_memory);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
