/*
 * test_recovery.c — white-box recovery cases the random SIGKILLs of test_crash rarely hit,
 * forced with the library's test-only crash points (shm_debug_set_crash_point):
 *   - a process killed between reserving room and claiming a slot leaves the occupancy count
 *     too high: inserts still succeed, and a reaper pass repairs the count;
 *   - a dead inserter's latch token comes back as the token of a later holder of the same
 *     participant record (incarnations wrap): that holder takes the stale latch over instead
 *     of waiting for itself forever;
 *   - a key revives its own tombstone at once only for an entry of the same type;
 *   - a process killed holding the insert latch of a slot in a page no entry ever used: a
 *     reaper pass (which visits used pages only) still clears it;
 *   - a dead inserter's latch cleared by a reaper pass still makes the next inserter distrust
 *     the home's probe bound;
 *   - every stored key byte is compared, in the slot's head and in its body, even when the
 *     hashes are equal (a stored byte is flipped behind the table's back);
 *   - an expired counter or rate-limit state is replaced in its own slot, with no change of
 *     occupancy, and a process killed in the middle of that leaves the key absent, the count
 *     right and nothing owned by the dead.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../shm/layout.h"
#include "testutil.h"

/* A child that SIGKILLs itself at `point` inside an increment of key, or, given a rule text,
 * inside a decision on key. */
static pid_t crash_child(const char *url, int point, const char *key, const char *rule_text)
{
    pid_t p = fork();
    if (p == 0) {
        traffic_backend *b;
        traffic_rule rule;
        traffic_decision d;
        if (traffic_open(url, &b) || (rule_text && traffic_rule_parse(rule_text, &rule, NULL, 0))) _exit(1);
        shm_debug_set_crash_point(point);
        if (rule_text)
            traffic_limit(b, key, &rule, 1, &d);
        else
            traffic_increment(b, key, 1, 0, NULL);
        _exit(2); /* not reached when the crash point fires */
    }
    return p;
}

START_TEST(reserve_leak_is_repaired)
{
    if (tu_skip(!tu_robust_futexes(), "reserve_leak_is_repaired", TU_WHY_NO_ROBUST)) return;
    const char *name = tu_name("leak");
    char url[256];
    tu_memory_url(url, sizeof url, name, "max_size=50");
    traffic_backend *b;
    TU_OK(NULL, traffic_open(url, &b));
    for (int i = 0; i < 60; i++) { /* more kills than max_size */
        char key[32];
        snprintf(key, sizeof key, "doomed:%d", i);
        ck_assert_int_eq(tu_wait(crash_child(url, SHM_CRASH_AFTER_RESERVE, key, NULL)), 128 + SIGKILL);
    }
    struct traffic_stats st;
    TU_OK(b, traffic_stats(b, &st));
    ck_assert_uint_ge(st.keys, 60); /* the count drifted: nothing is really stored */
    /* the table is empty, whatever the count says: inserts work (the inflated count makes
     * them evict early until the reaper repairs it) */
    for (int i = 0; i < 40; i++) {
        char key[32];
        snprintf(key, sizeof key, "early:%d", i);
        TU_OK(b, traffic_increment(b, key, 1, 0, NULL));
    }
    shm_params p = {.name = name};
    shm_table *t;
    char err[256];
    ck_assert_int_eq(shm_open_table(&p, &t, err, sizeof err), SHM_OK);
    ck_assert_int_eq(shm_reap_pass(t, NULL), SHM_OK);
    shm_check_report r;
    ck_assert_int_eq(shm_check(t, &r), SHM_OK);
    ck_assert_int_eq(r.live_counter, (int64_t)r.live); /* repaired */
    TU_OK(b, traffic_clear(b));
    /* full capacity again: 50 keys fit without eviction */
    for (int i = 0; i < 50; i++) {
        char key[32];
        snprintf(key, sizeof key, "real:%d", i);
        TU_OK(b, traffic_increment(b, key, 1, 0, NULL));
    }
    for (int i = 0; i < 50; i++) {
        char key[32];
        snprintf(key, sizeof key, "real:%d", i);
        ck_assert_int_eq(traffic_exists(b, key), 1);
    }
    TU_OK(b, traffic_stats(b, &st));
    ck_assert_uint_eq(st.keys, 50);
    ck_assert_uint_eq(st.evictions, 39); /* the early inserts, each but the first, and no more */
    shm_close_table(t);
    TU_OK(b, traffic_close(b));
    TU_OK(NULL, traffic_memory_unlink(name));
}
END_TEST

/* A child of a new named table `name` (URL parameters `params`, may be NULL) dies holding the
 * home latch of key; returns the table, opened here through shm/ (url gets its URL). */
static shm_table *table_after_latch_crash(const char *name, const char *params, const char *key, char *url,
                                          size_t urlcap)
{
    tu_memory_url(url, urlcap, name, params);
    ck_assert_int_eq(tu_wait(crash_child(url, SHM_CRASH_HOLDING_LATCH, key, NULL)), 128 + SIGKILL);
    shm_params p = {.name = name};
    shm_table *t;
    char err[256];
    ck_assert_msg(shm_open_table(&p, &t, err, sizeof err) == SHM_OK, "%s", err);
    return t;
}

START_TEST(own_stale_latch_token_is_taken_over)
{
    if (tu_skip(!tu_robust_futexes(), "own_stale_latch_token_is_taken_over", TU_WHY_NO_ROBUST)) return;
    const char *name = tu_name("wrap");
    char url[256];
    /* A child dies holding the home latch of "victim". This process does no operation of its
     * own before the last step, so it holds no participant record. */
    shm_table *t = table_after_latch_crash(name, NULL, "victim", url, sizeof url);
    uint32_t stale = 0;
    for (uint64_t i = 0; i < t->h->capacity && !stale; i++)
        stale = atomic_load(&shm_slot_at(t, i)->latch);
    ck_assert_uint_ne(stale, 0);
    /* Recover the dead holder's record, then wind its incarnation back as if 65536 deaths had
     * wrapped it: the next holder of the record gets exactly the stale token. */
    ck_assert_int_eq(shm_token_alive(t, stale), 0);
    struct shm_part *part = &t->parts[TOKEN_IDX(stale)];
    atomic_store(&part->incarnation, TOKEN_INC(stale));
    pid_t c = fork();
    if (c == 0) {
        alarm(10); /* without the own-token rule this increment waits for itself forever */
        traffic_backend *b;
        int64_t n = 0;
        if (traffic_open(url, &b) || traffic_increment(b, "victim", 1, 0, &n) || n != 1) _exit(1);
        _exit(0);
    }
    ck_assert_int_eq(tu_wait(c), 0);
    shm_close_table(t);
    TU_OK(NULL, traffic_memory_unlink(name));
}
END_TEST

/* The index of the slot holding key live, or -1. */
static int64_t live_slot_of(shm_table *t, const char *key)
{
    size_t klen = strlen(key);
    for (uint64_t i = 0; i < t->h->capacity; i++) {
        struct shm_slot *s = shm_slot_at(t, i);
        char k[SHM_KEY_LIMIT];
        if (CTL_STATE(atomic_load(&s->ctl)) != ST_LIVE || (atomic_load(&s->meta) & 0xffff) != klen) continue;
        shm_slot_key_copy(t, s, k, klen);
        if (memcmp(k, key, klen) == 0) return (int64_t)i;
    }
    return -1;
}

/* A key may take its own tombstone back at once only for an entry of the same type: a stale
 * reader of the old entry must never read the new one's fields as its own. (Nothing here
 * advances the epoch, so a slot reused at all was revived.) */
START_TEST(revival_only_for_the_same_type)
{
    shm_params p = {.max_size = 100};
    shm_table *t;
    char err[256];
    int64_t n;
    ck_assert_int_eq(shm_open_table(&p, &t, err, sizeof err), SHM_OK);
    ck_assert_int_eq(shm_incr(t, "k", 1, 5, 0, &n), SHM_OK);
    int64_t first = live_slot_of(t, "k");
    ck_assert_int_ge(first, 0);
    ck_assert_int_eq(shm_del(t, "k", 1), SHM_OK);
    ck_assert_int_eq(shm_incr(t, "k", 1, 7, 0, &n), SHM_OK); /* counter again: revived */
    ck_assert_int_eq(live_slot_of(t, "k"), first);
    ck_assert_int_eq(shm_del(t, "k", 1), SHM_OK);
    ck_assert_int_eq(shm_set(t, "k", 1, "bytes", 5, 0), SHM_OK); /* bytes now: another slot */
    int64_t second = live_slot_of(t, "k");
    ck_assert_int_ge(second, 0);
    ck_assert_int_ne(second, first);
    ck_assert_int_eq(shm_del(t, "k", 1), SHM_OK);
    ck_assert_int_eq(shm_set(t, "k", 1, "again", 5, 0), SHM_OK); /* bytes again: revived */
    ck_assert_int_eq(live_slot_of(t, "k"), second);
    shm_close_table(t);
}
END_TEST

/* The first insert of a fresh table dies holding its home's latch, before any slot of that
 * page was claimed: the page must still be one that reaper passes visit. */
START_TEST(dead_latch_in_unused_page_is_cleared)
{
    if (tu_skip(!tu_robust_futexes(), "dead_latch_in_unused_page_is_cleared", TU_WHY_NO_ROBUST)) return;
    const char *name = tu_name("latchpage");
    char url[256];
    shm_table *t = table_after_latch_crash(name, "max_size=100000", "first-key", url, sizeof url);
    shm_check_report r;
    ck_assert_int_eq(shm_check(t, &r), SHM_OK);
    ck_assert_uint_eq(r.dead_owned, 1); /* the latch, and nothing else */
    ck_assert_int_eq(shm_reap_pass(t, NULL), SHM_OK);
    ck_assert_int_eq(shm_check(t, &r), SHM_OK);
    ck_assert_uint_eq(r.dead_owned, 0);
    shm_close_table(t);
    TU_OK(NULL, traffic_memory_unlink(name));
}
END_TEST

/* A dead inserter's latch that a reaper pass clears must still tell the next inserter that
 * the home's probe_max may be stale (nothing ordered the dead owner's last store to it before
 * the reaper's CAS, in the C11 model). Simulated: a key K placed beyond its home H, H's
 * probe_max wound back to 0 (the store "not seen"), H's latch holding a dead token. After a
 * reaper pass, a set of K must find and replace the K beyond the bound, not add a second K. */
START_TEST(orphaned_latch_distrusts_probe_max)
{
    shm_params p = {.max_size = 64};
    shm_table *t;
    char err[256], key[32];
    ck_assert_int_eq(shm_open_table(&p, &t, err, sizeof err), SHM_OK);
    int64_t at = -1;
    for (int i = 0; i < 64 && at < 0; i++) {
        int n = snprintf(key, sizeof key, "k%d", i);
        ck_assert_int_eq(shm_set(t, key, (size_t)n, "v", 1, 0), SHM_OK);
        int64_t slot = live_slot_of(t, key);
        ck_assert_int_ge(slot, 0);
        uint64_t h = atomic_load(&shm_slot_at(t, (uint64_t)slot)->hash);
        if ((h & t->mask) != (uint64_t)slot) at = slot;
    }
    ck_assert_msg(at >= 0, "no key was placed beyond its home");
    struct shm_slot *home = shm_slot_at(t, atomic_load(&shm_slot_at(t, (uint64_t)at)->hash));
    atomic_store(&home->probe_max, 0);
    struct shm_part *rec = &t->parts[7];
    atomic_store(&home->latch, TOKEN_MAKE(7, atomic_load(&rec->incarnation) + 1)); /* dead: wrong incarnation */
    ck_assert_int_eq(shm_reap_pass(t, NULL), SHM_OK);
    ck_assert_uint_eq(atomic_load(&home->latch), LATCH_ORPHANED);
    ck_assert_int_eq(shm_set(t, key, strlen(key), "w", 1, 0), SHM_OK);
    shm_check_report r;
    ck_assert_int_eq(shm_check(t, &r), SHM_OK);
    ck_assert_uint_eq(r.duplicates, 0);
    ck_assert_uint_eq(r.dead_owned, 0);
    ck_assert_uint_eq(atomic_load(&home->latch), 0);
    shm_close_table(t);
}
END_TEST

/* Flips one stored key word of a live 200-byte key (head and body, layout.h) and expects the
 * key to be gone; puts it back and expects it again. The hash still matches, so only the
 * comparison of that word can tell. */
START_TEST(every_key_word_is_compared)
{
    shm_params p = {.max_size = 100};
    shm_table *t;
    char err[256], key[201];
    int64_t n;
    ck_assert_int_eq(shm_open_table(&p, &t, err, sizeof err), SHM_OK);
    for (int i = 0; i < 200; i++) key[i] = (char)('a' + i % 26);
    key[200] = 0;
    ck_assert_int_eq(shm_incr(t, key, 200, 1, 0, &n), SHM_OK);
    int64_t i = live_slot_of(t, key);
    ck_assert_int_ge(i, 0);
    struct shm_slot *s = shm_slot_at(t, (uint64_t)i);
    const size_t words[] = {0, 7, 8, 15, SHM_KEY_INLINE_WORDS, 24}; /* line 0; line 1; body */
    for (size_t w = 0; w < sizeof words / sizeof words[0]; w++) {
        _Atomic uint64_t *kw = shm_slot_key_word(t, s, words[w]);
        atomic_fetch_xor(kw, 1ull << 9);
        ck_assert_msg(!shm_exists(t, key, 200), "key found with word %zu changed", words[w]);
        atomic_fetch_xor(kw, 1ull << 9);
        ck_assert_int_eq(shm_exists(t, key, 200), 1);
    }
    shm_close_table(t);
}
END_TEST

/* An expired counter, and an expired token bucket, come back in their own slot when their key
 * is used again: the insert replaces the entry in place (table.c, replace_expired), so neither
 * the occupancy count nor the insert count moves (`inserts` is what tells a replacement from a
 * retire followed by a revival of the same slot). A child killed in the middle of a
 * replacement leaves its slot INSERTING by a dead owner and the key absent; the next use of
 * the key recovers it, and the count matches the slots. (Decisions racing replacements, and
 * kills anywhere in them, are test_crash's 20 ms rules.) */
START_TEST(expired_entry_replaced_in_place)
{
    if (tu_skip(!tu_robust_futexes(), "expired_entry_replaced_in_place", TU_WHY_NO_ROBUST)) return;
    const char *name = tu_name("replace");
    char url[256], err[256];
    tu_memory_url(url, sizeof url, name, "max_size=1000");
    traffic_backend *b;
    TU_OK(NULL, traffic_open(url, &b));
    shm_params p = {.name = name};
    shm_table *t;
    ck_assert_msg(shm_open_table(&p, &t, err, sizeof err) == SHM_OK, "%s", err);
    const char *rule_text = "token_bucket:1000/1s,burst=5"; /* lapses 1 ms after a token is taken */
    traffic_rule rule;
    ck_assert_int_eq(traffic_rule_parse(rule_text, &rule, NULL, 0), TRAFFIC_OK);
    traffic_decision d;
    int64_t n = 0;

    /* A counter that expires, and a bucket that lapses. */
    TU_OK(b, traffic_increment(b, "ctr", 3, 0.001, &n));
    int64_t slot = live_slot_of(t, "ctr");
    ck_assert_int_ge(slot, 0);
    TU_OK(b, traffic_limit(b, "tb", &rule, 2, &d));
    ck_assert_int_eq(d.remaining, 3);
    int64_t tslot = live_slot_of(t, "tb");
    ck_assert_int_ge(tslot, 0);
    usleep(20 * 1000);
    struct traffic_stats st0, st1;
    TU_OK(b, traffic_stats(b, &st0));
    uint64_t ins0 = atomic_load(&t->h->inserts);
    int64_t live0 = atomic_load(&t->h->live);
    TU_OK(b, traffic_increment(b, "ctr", 4, 0, &n));
    ck_assert_int_eq(n, 4); /* afresh, not 7 */
    TU_OK(b, traffic_limit(b, "tb", &rule, 1, &d));
    ck_assert_int_eq(d.allowed, 1);
    ck_assert_int_eq(d.remaining, 4); /* a full bucket, less this one */
    ck_assert_int_eq(live_slot_of(t, "ctr"), slot);
    ck_assert_int_eq(live_slot_of(t, "tb"), tslot);
    ck_assert_uint_eq(atomic_load(&t->h->inserts), ins0); /* replaced, not inserted */
    ck_assert_int_eq(atomic_load(&t->h->live), live0);
    TU_OK(b, traffic_stats(b, &st1));
    ck_assert_uint_eq(st1.expirations, st0.expirations + 2);
    shm_check_report r;
    ck_assert_int_eq(shm_check(t, &r), SHM_OK);
    ck_assert_int_eq(r.live_counter, (int64_t)r.live);

    /* Killed mid-replacement, a counter and a bucket: each slot is left INSERTING by the dead
     * child, and neither key is there. */
    TU_OK(b, traffic_increment(b, "ctr2", 5, 0.001, &n));
    int64_t slot2 = live_slot_of(t, "ctr2");
    ck_assert_int_ge(slot2, 0);
    usleep(20 * 1000);
    ck_assert_int_eq(tu_wait(crash_child(url, SHM_CRASH_REPLACING, "ctr2", NULL)), 128 + SIGKILL);
    ck_assert_int_eq(tu_wait(crash_child(url, SHM_CRASH_REPLACING, "tb", rule_text)), 128 + SIGKILL);
    const int64_t killed[2] = {slot2, tslot};
    for (int i = 0; i < 2; i++) {
        uint64_t c = atomic_load(&shm_slot_at(t, (uint64_t)killed[i])->ctl);
        ck_assert_uint_eq(CTL_STATE(c), ST_INSERTING);
        ck_assert_int_eq(shm_token_alive(t, CTL_OWNER(c)), 0);
    }
    ck_assert_int_eq(live_slot_of(t, "ctr2"), -1);
    ck_assert_int_eq(live_slot_of(t, "tb"), -1);
    ck_assert_int_eq(traffic_exists(b, "ctr2"), 0);
    TU_OK(b, traffic_stats(b, &st0));
    TU_OK(b, traffic_increment(b, "ctr2", 1, 0, &n)); /* recovers what it meets on its way */
    ck_assert_int_eq(n, 1);
    TU_OK(b, traffic_limit(b, "tb", &rule, 1, &d));
    ck_assert_int_eq(d.remaining, 4);
    ck_assert_int_eq(shm_reap_pass(t, NULL), SHM_OK);
    TU_OK(b, traffic_stats(b, &st1));
    ck_assert_uint_ge(st1.recovered, st0.recovered + 2); /* at least the two slots */
    ck_assert_int_eq(shm_check(t, &r), SHM_OK);
    ck_assert_uint_eq(r.dead_owned, 0);
    ck_assert_uint_eq(r.duplicates, 0);
    ck_assert_int_eq(r.live_counter, (int64_t)r.live);
    shm_close_table(t);
    TU_OK(b, traffic_close(b));
    TU_OK(NULL, traffic_memory_unlink(name));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("recovery");
    TCase *tc = tcase_create("recovery");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, reserve_leak_is_repaired);
    tcase_add_test(tc, own_stale_latch_token_is_taken_over);
    tcase_add_test(tc, revival_only_for_the_same_type);
    tcase_add_test(tc, dead_latch_in_unused_page_is_cleared);
    tcase_add_test(tc, every_key_word_is_compared);
    tcase_add_test(tc, orphaned_latch_distrusts_probe_max);
    tcase_add_test(tc, expired_entry_replaced_in_place);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
