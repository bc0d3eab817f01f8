/*
 * test_sqlite_fs.c — the SQLite backend when the file system under it fails, and two of its
 * mechanisms that nothing else would notice missing (issue 11):
 *   - a disk that fills up (a 2 MiB tmpfs in a private mount namespace; needs root, as CI
 *     runs, and is skipped with a message otherwise): writes fail with TRAFFIC_EIO naming
 *     "disk full", reads keep working, the file passes PRAGMA integrity_check, no write that
 *     returned TRAFFIC_OK is lost, and writes work again on the same handle once space returns
 *     (the cleanup thread checkpoints all along, so checkpoints meet the full disk too);
 *   - a file system that turns read-only under an open handle: writes fail with TRAFFIC_EIO
 *     naming "read-only file system", reads work, writes resume when it is writable again;
 *   - the turnstile: a writer passed over for 2 ms claims it, and the writers that arrive while
 *     it waits let it go first;
 *   - WAL checkpoints: writer processes that never pause keep the WAL bounded.
 *
 * Real files and processes. A read-only remount cannot be made under an open handle: the
 * kernel refuses MS_REMOUNT|MS_RDONLY with EBUSY while any file of the mount is open for
 * writing (the database, -wal and -shm are), and only forces one itself (an ext4 error with
 * errors=remount-ro, an emergency remount), after which every write through the open
 * descriptors fails with EROFS. So this executable stands in for that kernel at the write
 * calls SQLite makes (pwrite64, write, ftruncate64, fdatasync): while ro_prefix is set, those
 * on a file under it fail with EROFS, as the kernel's would. The calls themselves go to the
 * kernel through syscall(), as test_sqlite_faults.c does for its clock.
 *
 * One test case per test: CK_RUN_CASE=name runs one.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sqlite_testutil.h"
#include "testutil.h"

/* ---- a file system that turned read-only under open descriptors ------------------------ */

static _Atomic(const char *) ro_prefix; /* files under it: writes fail with EROFS */

static int ro_refused(int fd)
{
    const char *prefix = atomic_load(&ro_prefix);
    if (!prefix) return 0;
    char link[64], target[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n <= 0) return 0;
    target[n] = 0;
    if (strncmp(target, prefix, strlen(prefix)) != 0) return 0;
    errno = EROFS;
    return 1;
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off)
{
    return ro_refused(fd) ? -1 : syscall(SYS_pwrite64, fd, buf, n, off);
}

ssize_t write(int fd, const void *buf, size_t n)
{
    return ro_refused(fd) ? -1 : syscall(SYS_write, fd, buf, n);
}

int ftruncate64(int fd, off_t len)
{
    return ro_refused(fd) ? -1 : (int)syscall(SYS_ftruncate, fd, len);
}

int fdatasync(int fd)
{
    return ro_refused(fd) ? -1 : (int)syscall(SYS_fdatasync, fd);
}

/* ---- scratch directories ---------------------------------------------------------------- */

/* The suite's scratch directory, and the helpers on it: sqlite_testutil.h. */
static void base_setup(void)
{
    tsq_setup("sqlite-fs");
}

static void base_teardown(void)
{
    tsq_teardown();
}

static traffic_backend *open_url(const char *path, const char *params)
{
    char url[800];
    snprintf(url, sizeof url, "sqlite://%s%s%s", path, params ? "?" : "", params ? params : "");
    traffic_backend *b = NULL;
    return traffic_open(url, &b) == TRAFFIC_OK ? b : NULL;
}

/* PRAGMA integrity_check from a connection of our own: 1 when it says "ok". */
static int integrity_ok(const char *path)
{
    sqlite3 *db;
    sqlite3_stmt *st = NULL;
    int ok = 0;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK) {
        sqlite3_busy_timeout(db, 5000);
        if (sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL) == SQLITE_OK &&
            sqlite3_step(st) == SQLITE_ROW)
            ok = strcmp((const char *)sqlite3_column_text(st, 0), "ok") == 0;
        if (!ok) fprintf(stderr, "integrity_check of %s: %s\n", path, st ? (const char *)sqlite3_column_text(st, 0) : sqlite3_errmsg(db));
        sqlite3_finalize(st);
    }
    sqlite3_close(db);
    return ok;
}

/* ---- a ledger of acknowledged writes ------------------------------------------------------ *
 *
 * Write number i is a set of a new key (i % 3 == 0), an increment of one of LEDGER_COUNTERS
 * counters (1), or an admitted fixed-window decision on one key (2). Each that returns
 * TRAFFIC_OK is recorded; ledger_check reads every one of them back: the values, the exact
 * counts (a failed increment must not have counted either) and the decisions' remaining. */
#define LEDGER_MAX      30000
#define LEDGER_COUNTERS 16
#define LEDGER_LIMIT    1000000

typedef struct ledger {
    unsigned char set[LEDGER_MAX]; /* set number i returned TRAFFIC_OK */
    int64_t counts[LEDGER_COUNTERS];
    int64_t admitted;
    int next, failed;
} ledger;

static const traffic_rule ledger_rule = {.algorithm = TRAFFIC_FIXED_WINDOW, .limit = LEDGER_LIMIT, .window = 3600};

static size_t value_of(int i, unsigned char *v)
{
    size_t n = 300 + (size_t)(i * 37 % 1200);
    memset(v, 'a' + i % 26, n);
    memcpy(v, &i, sizeof i);
    return n;
}

/* The next write; returns its status. A failure must be TRAFFIC_EIO whose message names
 * `reason`, else this returns 1000 + the status (a test failure). */
static int ledger_write(traffic_backend *b, ledger *l, const char *reason)
{
    int i = l->next++;
    char key[32];
    unsigned char v[1600];
    int rc;
    if (i % 3 == 0) {
        snprintf(key, sizeof key, "v%d", i);
        if ((rc = traffic_set(b, key, v, value_of(i, v), 0)) == TRAFFIC_OK) l->set[i] = 1;
    } else if (i % 3 == 1) {
        snprintf(key, sizeof key, "c%d", i % LEDGER_COUNTERS);
        if ((rc = traffic_increment(b, key, 1, 0, NULL)) == TRAFFIC_OK) l->counts[i % LEDGER_COUNTERS]++;
    } else {
        traffic_decision d;
        if ((rc = traffic_limit(b, "L", &ledger_rule, 1, &d)) == TRAFFIC_OK) l->admitted += d.allowed;
    }
    if (rc == TRAFFIC_OK) return rc;
    l->failed++;
    if (rc != TRAFFIC_EIO || !strstr(traffic_errmsg(b), reason)) {
        fprintf(stderr, "write %d: %s (%s); want TRAFFIC_EIO naming \"%s\"\n", i, traffic_strerror(rc),
                traffic_errmsg(b), reason);
        return 1000 - rc;
    }
    return rc;
}

/* 0 when every acknowledged write reads back, else the number of the first that does not. */
static int ledger_check(traffic_backend *b, const ledger *l)
{
    unsigned char v[1600], want[1600];
    char key[32];
    for (int i = 0; i < l->next; i += 3) {
        if (!l->set[i]) continue;
        size_t len, n = value_of(i, want);
        snprintf(key, sizeof key, "v%d", i);
        int rc = traffic_get(b, key, v, sizeof v, &len);
        if (rc != TRAFFIC_OK || len != n || memcmp(v, want, n) != 0) {
            fprintf(stderr, "set %d lost: %s (%s)\n", i, traffic_strerror(rc), traffic_errmsg(b));
            return i + 1;
        }
    }
    for (int j = 0; j < LEDGER_COUNTERS; j++) {
        snprintf(key, sizeof key, "c%d", j);
        int64_t got = l->counts[j] ? tu_counter(b, key) : 0;
        if (got != l->counts[j]) {
            fprintf(stderr, "counter %s is %lld, acknowledged %lld\n", key, (long long)got, (long long)l->counts[j]);
            return 1;
        }
    }
    traffic_decision d;
    if (traffic_limit(b, "L", &ledger_rule, 0, &d) != TRAFFIC_OK || d.remaining != LEDGER_LIMIT - l->admitted) {
        fprintf(stderr, "decisions: remaining %lld, acknowledged %lld admitted\n", (long long)d.remaining,
                (long long)l->admitted);
        return 1;
    }
    return 0;
}

/* Runs child(dir) in a forked process and checks its exit: 0 passes, 77 skips (no privilege
 * for a private mount namespace), anything else is the step that failed. */
static void run_child(const char *name, int (*child)(const char *), const char *dir)
{
    pid_t p = fork();
    ck_assert_int_ge(p, 0);
    if (p == 0) _exit(child(dir));
    int st;
    ck_assert_int_eq(waitpid(p, &st, 0), p);
    ck_assert_msg(!WIFSIGNALED(st), "%s: killed by signal %d", name, WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    if (WEXITSTATUS(st) == 77) {
        fprintf(stderr, "%s: skipped, no privilege for a private mount namespace\n", name);
        return;
    }
    ck_assert_msg(WEXITSTATUS(st) == 0, "%s: step %d failed", name, WEXITSTATUS(st));
}

/* ---- 1. a disk that fills up -------------------------------------------------------------- */

/* Fills what is left of the file system holding dir with dir/filler. */
static int fill_up(const char *dir)
{
    char path[512];
    static char chunk[4096];
    snprintf(path, sizeof path, "%s/filler", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return -1;
    while (syscall(SYS_write, fd, chunk, sizeof chunk) > 0) {
    }
    int e = errno;
    close(fd);
    return e == ENOSPC ? 0 : -1;
}

static int disk_full_child(const char *dir)
{
    if (unshare(CLONE_NEWNS) != 0) return 77;
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) return 77;
    if (mount("tmpfs", dir, "tmpfs", MS_NOSUID | MS_NODEV, "size=2m") != 0) return 77;
    char path[512], filler[512];
    snprintf(path, sizeof path, "%s/t.db", dir);
    snprintf(filler, sizeof filler, "%s/filler", dir);
    /* the cleanup thread checkpoints every 50 ms: while the disk is full, checkpoints that
     * need the database file to grow fail, and must lose nothing */
    traffic_backend *b = open_url(path, "cleanup_interval=0.05");
    if (!b || traffic_start_cleanup(b) != TRAFFIC_OK) return 2;
    ledger *l = calloc(1, sizeof *l);
    for (int i = 0; i < 60; i++)
        if (ledger_write(b, l, "-") != TRAFFIC_OK) return 3;
    if (fill_up(dir) != 0) return 4;
    /* Write until well past the first refusal: new keys grow the WAL (and later the
     * database), so the disk stays full; each failure is TRAFFIC_EIO, "disk full". */
    int rc, first_failure = -1;
    while (l->next < LEDGER_MAX / 2 && (first_failure < 0 || l->next < first_failure + 300)) {
        if ((rc = ledger_write(b, l, "disk full")) >= 1000) return 5;
        if (rc != TRAFFIC_OK && first_failure < 0) first_failure = l->next;
    }
    if (first_failure < 0 || l->failed < 100) return 6; /* the disk never filled */
    tu_sleep_ms(200); /* checkpoints of the cleanup thread meet the full disk */
    if (ledger_check(b, l) != 0) return 7;
    if (!integrity_ok(path)) return 8;
    struct traffic_stats st;
    if (traffic_stats(b, &st) != TRAFFIC_OK) return 9;
    /* space returns: the same handle writes again, at once */
    if (unlink(filler) != 0) return 10;
    for (int i = 0; i < 300; i++) { /* paced: 300 frames at once would fill the 2 MiB again */
        if (ledger_write(b, l, "(none)") != TRAFFIC_OK) return 11;
        tu_sleep_ms(1);
    }
    tu_sleep_ms(200); /* and its checkpoints now complete */
    if (ledger_check(b, l) != 0) return 12;
    if (!integrity_ok(path)) return 13;
    /* closed (the last connection checkpoints the WAL into the file) and reopened */
    traffic_close(b);
    if (!(b = open_url(path, NULL))) return 14;
    if (ledger_check(b, l) != 0) return 15;
    if (!integrity_ok(path)) return 16;
    traffic_close(b);
    free(l);
    return 0;
}

START_TEST(t_disk_full)
{
    char dir[512];
    run_child("t_disk_full", disk_full_child, tsq_dir_into("full", dir, sizeof dir));
}
END_TEST

/* ---- 2. a file system that turns read-only ------------------------------------------------ */

static int read_only_child(const char *dir)
{
    char path[512];
    snprintf(path, sizeof path, "%s/t.db", dir);
    traffic_backend *b = open_url(path, "cleanup_interval=0.05");
    if (!b || traffic_start_cleanup(b) != TRAFFIC_OK) return 2;
    ledger *l = calloc(1, sizeof *l);
    for (int i = 0; i < 300; i++)
        if (ledger_write(b, l, "-") != TRAFFIC_OK) return 3;
    atomic_store(&ro_prefix, dir); /* the "remount": read-only from here */
    for (int i = 0; i < 300; i++)
        if (ledger_write(b, l, "read-only file system") != TRAFFIC_EIO) return 4;
    if (traffic_delete(b, "v0") != TRAFFIC_EIO || !strstr(traffic_errmsg(b), "read-only file system")) return 5;
    if (traffic_clear(b) != TRAFFIC_EIO || !strstr(traffic_errmsg(b), "read-only file system")) return 6;
    tu_sleep_ms(200); /* the cleanup thread's checkpoints fail too */
    if (ledger_check(b, l) != 0) return 7; /* reads work */
    if (!integrity_ok(path)) return 8;
    atomic_store(&ro_prefix, NULL); /* writable again: the same handle writes at once */
    for (int i = 0; i < 300; i++)
        if (ledger_write(b, l, "(none)") != TRAFFIC_OK) return 9;
    if (ledger_check(b, l) != 0) return 10;
    if (!integrity_ok(path)) return 11;
    traffic_close(b);
    if (!(b = open_url(path, NULL))) return 12;
    if (ledger_check(b, l) != 0) return 13;
    traffic_close(b);
    free(l);
    return 0;
}

START_TEST(t_read_only_fs)
{
    char dir[512];
    run_child("t_read_only_fs", read_only_child, tsq_dir_into("ro", dir, sizeof dir));
}
END_TEST

/* ---- 3. the turnstile --------------------------------------------------------------------- *
 *
 * Another connection holds the write lock; writer A waits for it. Once A has waited 2 ms it
 * claims the turnstile (byte 0 of PATH-turn, an OFD lock this test can see). Then TURN_LATE
 * writers arrive, and the lock comes free: A must write first (its increment returns 1 more
 * than before). Without the turnstile the late writers win: fresh waiters poll every few
 * tens of µs, while A, 30 ms into its wait, sleeps a millisecond or two between attempts. */
#define TURN_LATE   3
#define TURN_ROUNDS 10
#define TURN_FIRSTS 8 /* rounds A must win: a thread descheduled past the 20 ms can lose one */

typedef struct turn_call {
    traffic_backend *b;
    int64_t got;
    int rc;
} turn_call;

static void *turn_incr(void *arg)
{
    turn_call *c = arg;
    c->rc = traffic_increment(c->b, "seq", 1, 0, &c->got);
    return NULL;
}

/* Is byte 0 of fd's file locked by another open file description? */
static int turn_claimed(int fd)
{
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
    ck_assert_int_eq(fcntl(fd, F_OFD_GETLK, &fl), 0);
    return fl.l_type != F_UNLCK;
}

START_TEST(t_turnstile_starving_writer_goes_first)
{
    char dir[512], path[600], turn[700];
    snprintf(path, sizeof path, "%s/t.db", tsq_dir_into("turn", dir, sizeof dir));
    snprintf(turn, sizeof turn, "%s-turn", path);
    traffic_backend *b = open_url(path, "pool_size=8&timeout=10");
    ck_assert_ptr_nonnull(b);
    TU_OK(b, traffic_increment(b, "seq", 1, 0, NULL)); /* creates PATH-turn */
    int fd = open(turn, O_RDWR);
    ck_assert_int_ge(fd, 0);
    sqlite3 *db;
    ck_assert_int_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    int64_t before = 1;
    int claims = 0, firsts = 0;
    for (int round = 0; round < TURN_ROUNDS; round++) {
        ck_assert_int_eq(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
        turn_call a = {.b = b}, late[TURN_LATE];
        pthread_t ta, tl[TURN_LATE];
        ck_assert_int_eq(pthread_create(&ta, NULL, turn_incr, &a), 0);
        int64_t until = tu_now_ms() + 500;
        while (!turn_claimed(fd) && tu_now_ms() < until)
            tu_sleep_ms(1);
        claims += turn_claimed(fd);
        tu_sleep_ms(30);
        for (int i = 0; i < TURN_LATE; i++) {
            late[i] = (turn_call){.b = b};
            ck_assert_int_eq(pthread_create(&tl[i], NULL, turn_incr, &late[i]), 0);
        }
        tu_sleep_ms(3); /* the late writers are waiting (they hold back for 20 ms at most) */
        ck_assert_int_eq(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
        pthread_join(ta, NULL);
        for (int i = 0; i < TURN_LATE; i++)
            pthread_join(tl[i], NULL);
        TU_OK(b, a.rc);
        for (int i = 0; i < TURN_LATE; i++)
            TU_OK(b, late[i].rc);
        firsts += a.got == before + 1;
        ck_assert_msg(!turn_claimed(fd), "round %d: the turnstile is still claimed after the write", round);
        before += 1 + TURN_LATE;
    }
    printf("t_turnstile: the starving writer went first in %d of %d rounds\n", firsts, TURN_ROUNDS);
    ck_assert_msg(firsts >= TURN_FIRSTS, "the starving writer went first in %d of %d rounds", firsts, TURN_ROUNDS);
    ck_assert_int_eq(claims, TURN_ROUNDS);
    ck_assert_int_eq(tu_counter(b, "seq"), before);
    sqlite3_close(db);
    close(fd);
    TU_OK(b, traffic_close(b));
}
END_TEST

/* ---- 4. WAL checkpoints ------------------------------------------------------------------- *
 *
 * WAL_WRITERS processes write back to back (values of 8 KiB: three WAL frames each), with no
 * cleanup thread. The WAL only starts over when a checkpoint has copied all of it and the next
 * writer finds nobody reading it, a moment a steady stream of writers from several processes
 * rarely leaves; the backend's checkpoints (sqlite.c, "checkpoints": passive every 1000
 * frames, RESTART past 10000) make one. Each writer samples the WAL's size; the largest must
 * stay below 13000 frames: 10000 and the RESTARTs that found the lock taken (one try per 1000
 * frames). The writers' total is 96000 frames. Measured (6 runs each): 39.7-43.9 MiB with
 * the checkpoints; without sq_wal_hook (SQLite's auto-checkpoint) 46-117 MB, and with
 * passive checkpoints only 60-85 MB: the test failed 2 runs in 3 of each of those mutants
 * (3 runs each), as SQLite itself restarts the WAL now and then. */
#define WAL_WRITERS 4
#define WAL_WRITES  8000
#define WAL_FRAME   (4096 + 24)
#define WAL_BOUND   (13000LL * WAL_FRAME)

static void wal_writer(const char *path, int w, uint64_t *max_wal)
{
    traffic_backend *b = open_url(path, "timeout=30");
    if (!b) _exit(2);
    static unsigned char v[8192];
    char key[32], wal[700];
    snprintf(wal, sizeof wal, "%s-wal", path);
    for (int i = 0; i < WAL_WRITES; i++) {
        memset(v, 'a' + i % 26, sizeof v);
        snprintf(key, sizeof key, "w%d-%d", w, i % 64);
        if (traffic_set(b, key, v, sizeof v, 0) != TRAFFIC_OK) _exit(3);
        struct stat st;
        if (i % 50 == 0 && stat(wal, &st) == 0) {
            uint64_t cur = __atomic_load_n(max_wal, __ATOMIC_RELAXED);
            while (cur < (uint64_t)st.st_size &&
                   !__atomic_compare_exchange_n(max_wal, &cur, (uint64_t)st.st_size, 0, __ATOMIC_RELAXED,
                                                __ATOMIC_RELAXED)) {
            }
        }
    }
    traffic_close(b);
    _exit(0);
}

START_TEST(t_wal_stays_bounded)
{
    char dir[512], path[600];
    snprintf(path, sizeof path, "%s/t.db", tsq_dir_into("wal", dir, sizeof dir));
    traffic_backend *b = open_url(path, NULL);
    ck_assert_ptr_nonnull(b);
    uint64_t *max_wal = tu_shared(sizeof *max_wal);
    pid_t pids[WAL_WRITERS];
    for (int w = 0; w < WAL_WRITERS; w++)
        if ((pids[w] = fork()) == 0) wal_writer(path, w, max_wal);
    for (int w = 0; w < WAL_WRITERS; w++)
        ck_assert_int_eq(tu_wait(pids[w]), 0);
    printf("t_wal_stays_bounded: the WAL reached %.1f MiB (bound %.1f MiB)\n", *max_wal / 1048576.0,
           WAL_BOUND / 1048576.0);
    ck_assert_msg(*max_wal < (uint64_t)WAL_BOUND, "the WAL grew to %llu bytes", (unsigned long long)*max_wal);
    ck_assert_msg(*max_wal > 0, "no WAL was seen");
    TU_OK(b, traffic_close(b));
    munmap(max_wal, sizeof *max_wal);
}
END_TEST

int main(void)
{
    const tu_case cases[] = {
        {"disk_full", t_disk_full},
        {"read_only_fs", t_read_only_fs},
        {"turnstile", t_turnstile_starving_writer_goes_first},
        {"wal_bounded", t_wal_stays_bounded},
    };
    return tu_run_cases("sqlite_fs", cases, sizeof cases / sizeof cases[0], base_setup, base_teardown);
}
