/*
 * sqlite.c — the SQLite backend: rate-limit state in one database file that every process of
 * the host opens, and that survives restarts.
 *
 * The one idea: every operation is ONE SQL statement run in autocommit mode, so the only lock
 * is SQLite's WAL write lock, held for the length of one statement (a rate-limit decision:
 * one short transaction of a read and at most one write, sqlite_limit.c). Readers never
 * block (WAL snapshots); writers queue on the write lock through a busy handler of our own.
 *
 * File format. Table traffic_entries holds one row per key: kind 0 (bytes, in `value`; or,
 * marked by a nonzero `counter`, a rate-limit state: see SQ_LIMIT_MARK) or 1 (counter, in
 * `counter`, the entry's 64-bit word), and `expires`, the absolute expiry as
 * WALL-CLOCK milliseconds since the epoch (CLOCK_REALTIME), 0 for none. Wall clock and not
 * CLOCK_MONOTONIC, because the file outlives processes and reboots and the monotonic clock
 * restarts at boot; the price is that stepping the wall clock moves every expiry (traffic.h
 * says so). Table traffic_lease holds the one row electing the process that sweeps. The file
 * is marked with PRAGMA application_id SQ_APPLICATION_ID and PRAGMA user_version
 * SQ_SCHEMA_VERSION; open refuses (TRAFFIC_ECORRUPT, file untouched) anything else that is
 * not an empty database.
 *
 * Connections. Each process keeps a pool of up to pool_size connections (opened lazily);
 * a thread checks one out for one operation, so no two threads ever use a connection at
 * once, and each connection prepares its statements once. WAL, synchronous=NORMAL.
 *
 * Busy handling. SQLite's default handler (sqlite3_busy_timeout) sleeps 1, 2, 5, 10 … 100 ms
 * between attempts, so a writer that just missed the lock stalls for milliseconds while the
 * lock is free again within microseconds; and under a steady stream of writes a waiter can
 * be passed over again and again (the lock has no queue). Ours (sq_busy) yields the CPU a
 * few times, then polls every 20..250 us with jitter until the handle's timeout, and a
 * waiter that has waited 2 ms claims a turnstile (an OFD lock on PATH-turn) that makes
 * the other writers of every process let it go first. A caller sees SQLITE_BUSY (as
 * TRAFFIC_ETIMEDOUT) only after waiting `timeout`. tests/test_sqlite.c, busy_latency,
 * measures both handlers.
 *
 * fork(). A pool belongs to the process that made it (pool->pid). An operation first compares
 * the pid: in a child it installs a fresh, empty pool and abandons the parent's — its
 * connections are never used, nor sqlite3_close()d, in the child, since they share the
 * parent's locks and file offsets. And a pthread_atfork handler makes each fork() happen
 * with no connection of ours open, so that the child inherits no SQLite lock bookkeeping
 * (the section "fork" below says why that matters). Connections are opened lazily, so the
 * parent reopens its own on next use.
 *
 * The operations are in sqlite_ops.c, the cleanup thread in sqlite_cleanup.c; what the files
 * share is in sqlite_internal.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "pid.h"
#include "sqlite_internal.h"

/* ---- format and tuning ----------------------------------------------------------------- */

#define SQ_APPLICATION_ID 0x54524643 /* "TRFC": PRAGMA application_id of a traffic database */
#define SQ_SCHEMA_VERSION 1          /* PRAGMA user_version of the schema below */

/* The oldest SQLite this backend runs on: INSERT ... RETURNING came with 3.35.0. An older
 * library cannot prepare the statements, which would read as a foreign schema
 * (TRAFFIC_ECORRUPT) and invite deleting a healthy database; open says what is wrong
 * instead. The headers built against must be as new (traffic_now_ms also needs
 * SQLITE_DIRECTONLY, 3.31). */
#define SQ_SQLITE_MIN 3035000
#if SQLITE_VERSION_NUMBER < SQ_SQLITE_MIN
#error "the SQLite backend needs SQLite 3.35.0 or newer (INSERT ... RETURNING)"
#endif

#define SQ_DEFAULT_POOL      4     /* connections per process */
#define SQ_DEFAULT_CLEANUP_S 300.0 /* seconds between cleanup passes */
#define SQ_DEFAULT_TIMEOUT_S 5.0   /* seconds a call waits for other writers */
#define SQ_TIMEOUT_MAX_S     86400.0

/* The busy handler. A writer holds the lock for one short statement (~10 us with
 * synchronous=NORMAL: no fsync at commit), so the first retries only give the CPU away;
 * then sleeps start at SQ_BUSY_SLEEP_MIN_US and double up to SQ_BUSY_SLEEP_MAX_US, so that a
 * waiter notices a free lock within a fraction of a millisecond, jittered so that waiters do
 * not wake in lock-step. A wait that goes on (a long clear(), another program's transaction)
 * lets the sleep grow to 1/SQ_BUSY_SLEEP_SHARE of the time waited so far, at most
 * SQ_BUSY_SLEEP_CEIL_US: the polling cost stays bounded and the latency added by polling
 * stays a small share of the wait. */
#define SQ_BUSY_YIELDS        4
#define SQ_BUSY_SLEEP_MIN_US  20
#define SQ_BUSY_SLEEP_MAX_US  250
#define SQ_BUSY_SLEEP_SHARE   16
#define SQ_BUSY_SLEEP_CEIL_US 10000

/* The turnstile (see "busy handling" below): a waiter older than SQ_STARVE_US claims it and
 * then polls every SQ_TURN_POLL_US at most; writers hold back while it is claimed, but never
 * longer than SQ_TURN_WAIT_MAX_US, so a stopped or slow claimant delays nobody for long.
 * Every claim makes the writers alternate, which costs throughput: measured with traffic-bench
 * (1k keys, increments), raw sqlite3 ÷ this backend at 2 / 4 writer processes was 1.18-1.20 /
 * 1.63 with 500 us, 1.10-1.13 / 1.35 with 2 ms, and the worst waits in busy_latency stayed
 * the same (5-13 ms; SQLite's own handler: up to 129 ms). */
#define SQ_STARVE_US        2000
#define SQ_TURN_POLL_US     40
#define SQ_TURN_WAIT_MAX_US 20000

#define SQ_WAL_LIMIT_BYTES (16 << 20) /* journal_size_limit: the WAL shrinks to this on reset */

static const char SQ_SCHEMA[] = "CREATE TABLE traffic_entries ("
                                " key TEXT PRIMARY KEY NOT NULL,"
                                " kind INTEGER NOT NULL CHECK (kind IN (0, 1))," /* 0 bytes or limit state, 1 counter */
                                " counter INTEGER NOT NULL DEFAULT 0,"  /* the counter; kind 0: 0 or a limit mark */
                                " value BLOB,"                          /* kind 0: the bytes, or the limit state */
                                " expires INTEGER NOT NULL DEFAULT 0);" /* wall-clock ms since the epoch, 0 none */
                                "CREATE INDEX traffic_entries_expires ON traffic_entries (expires) WHERE expires > 0;"
                                "CREATE TABLE traffic_lease ("
                                " id INTEGER PRIMARY KEY CHECK (id = 1),"
                                " owner INTEGER NOT NULL, pid INTEGER NOT NULL, until INTEGER NOT NULL);";

/* The prepared statements of every connection (enum ST_* in sqlite_internal.h). ?now is always
 * wall-clock ms. */
#define LIVE "(expires = 0 OR expires > ?2)"
static const char *const sq_sql[ST_N] = {
    [ST_GET] = "SELECT kind, counter, value FROM traffic_entries WHERE key = ?1 AND " LIVE,
    [ST_EXISTS] = "SELECT 1 FROM traffic_entries WHERE key = ?1 AND " LIVE,
    [ST_TTL] = "SELECT expires FROM traffic_entries WHERE key = ?1 AND " LIVE,
    /* ?1 key, ?2 value, ?3 TTL in ms (0: none). Writes read the time with traffic_now_ms()
     * (sq_now_fn), once they hold the write lock: a TTL counts from the write, not from the
     * start of a call that waited for the lock. */
    [ST_SET] = "INSERT INTO traffic_entries (key, kind, counter, value, expires) VALUES (?1, 0, 0, ?2,"
               " CASE WHEN ?3 = 0 THEN 0 ELSE traffic_now_ms() + ?3 END)"
               " ON CONFLICT (key) DO UPDATE SET kind = 0, counter = 0, value = excluded.value,"
               " expires = excluded.expires",
    /* ?1 key, ?2 amount, ?3 TTL in ms of a new entry (0: none), ?4..?5 the counters that
     * amount can be added to without overflow. The SET expressions all read the old row;
     * excluded.expires is the new entry's expiry. */
    [ST_INCR] = "INSERT INTO traffic_entries (key, kind, counter, value, expires) VALUES (?1, 1, ?2, NULL,"
                " CASE WHEN ?3 = 0 THEN 0 ELSE traffic_now_ms() + ?3 END)"
                " ON CONFLICT (key) DO UPDATE SET"
                " counter = CASE WHEN expires <> 0 AND expires <= traffic_now_ms() THEN ?2 ELSE counter + ?2 END,"
                " expires = CASE WHEN expires <> 0 AND expires <= traffic_now_ms() THEN excluded.expires"
                " ELSE expires END,"
                " kind = 1, value = NULL"
                " WHERE (expires <> 0 AND expires <= traffic_now_ms()) OR (kind = 1 AND counter BETWEEN ?4 AND ?5)"
                " RETURNING counter",
    [ST_DEL] = "DELETE FROM traffic_entries WHERE key = ?1 RETURNING expires",
    [ST_CLEAR] = "DELETE FROM traffic_entries",
    [ST_SWEEP] = "DELETE FROM traffic_entries WHERE rowid IN (SELECT rowid FROM traffic_entries"
                 " WHERE expires > 0 AND expires <= ?1 LIMIT ?2)",
    [ST_STATS] = "SELECT (SELECT count(*) FROM traffic_entries),"
                 " (SELECT count(*) FROM traffic_entries WHERE expires > 0 AND expires <= ?1),"
                 " (SELECT pid FROM traffic_lease WHERE id = 1 AND until > ?1)",
    /* ?1 owner token, ?2 pid, ?3 lease end, ?4 now: a row comes back iff we hold the lease */
    [ST_LEASE] = "INSERT INTO traffic_lease (id, owner, pid, until) VALUES (1, ?1, ?2, ?3)"
                 " ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, pid = excluded.pid,"
                 " until = excluded.until WHERE owner = excluded.owner OR until <= ?4 RETURNING owner",
    [ST_UNLEASE] = "UPDATE traffic_lease SET until = 0 WHERE id = 1 AND owner = ?1",
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_LIMIT_GET] = "SELECT kind, counter, value, expires FROM traffic_entries WHERE key = ?1 AND " LIVE,
    /* ?1 key, ?2 SQ_LIMIT_MARK + algorithm, ?3 the encoded state, ?4 expiry */
    [ST_LIMIT_PUT] = "INSERT INTO traffic_entries (key, kind, counter, value, expires) VALUES (?1, 0, ?2, ?3, ?4)"
                     " ON CONFLICT (key) DO UPDATE SET kind = 0, counter = excluded.counter,"
                     " value = excluded.value, expires = excluded.expires",
    /* the state alone, when the expiry stays: no expiry index entry to move (sqlite_limit.c) */
    [ST_LIMIT_VALUE] = "UPDATE traffic_entries SET value = ?2 WHERE key = ?1",
};
#undef LIVE

/* ---- fork: quiescing before, abandoning after ------------------------------------------ *
 *
 * The pid check (pool_current) keeps a child off its parent's connections. It is not enough
 * on its own: SQLite keeps per-process bookkeeping of the POSIX locks it holds on a file
 * (one record per inode, shared by all connections to it), and a child inherits that record
 * claiming locks that, after fork(), only the parent holds. A child connection then believes
 * it holds the database's SHARED lock and the -shm "dead man switch" while it holds neither,
 * so when the parent closes its last connection SQLite there concludes it is alone,
 * checkpoints and deletes the WAL under the child, and the child's later commits are lost
 * (tests/test_sqlite.c, fork_parent_closes, shows it). A parent thread caught inside a write
 * at fork() time would also leave the child believing a sibling holds the write lock.
 *
 * So a pthread_atfork handler makes every fork() start from a process with no SQLite
 * connection of ours open: prepare (1) holds back new operations and waits for running ones
 * to finish, (2) closes every idle connection of every handle of this process. Connections
 * are reopened lazily in the parent and the child. Invariants:
 *   - fork_active counts threads between pool_get's enter and pool_put's leave: every call
 *     into SQLite on this process's connections happens inside that bracket.
 *   - enter increments fork_active then reads fork_pending; prepare raises fork_pending then
 *     reads fork_active (both seq_cst), so either the operation sees the fork and backs out,
 *     or the fork sees the operation and waits for it.
 *   - the child re-creates the mutex and condition variable: threads that held or waited on
 *     them do not exist there.
 * Forks that skip atfork handlers (a raw clone()) still get the pid check. */
static pthread_mutex_t fork_mu = PTHREAD_MUTEX_INITIALIZER; /* guards fork_handles */
static pthread_cond_t fork_cv = PTHREAD_COND_INITIALIZER;   /* fork_active reached 0 / fork done */
static _Atomic unsigned fork_active;
static _Atomic unsigned fork_pending;
static sqlite_backend *fork_handles; /* every open sqlite handle of this process */
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

static void fork_leave(void)
{
    if (atomic_fetch_sub(&fork_active, 1) == 1 && atomic_load(&fork_pending)) {
        pthread_mutex_lock(&fork_mu);
        pthread_cond_broadcast(&fork_cv);
        pthread_mutex_unlock(&fork_mu);
    }
}

static void fork_enter(void)
{
    for (;;) {
        atomic_fetch_add(&fork_active, 1);
        if (!atomic_load(&fork_pending)) return;
        fork_leave(); /* a fork is waiting for quiet: back out until it is done */
        pthread_mutex_lock(&fork_mu);
        while (atomic_load(&fork_pending))
            pthread_cond_wait(&fork_cv, &fork_mu);
        pthread_mutex_unlock(&fork_mu);
    }
}

static void conn_close(sq_conn *c);

/* Closes the idle connections of this process's pool of s (all of them, once quiet). */
static void fork_close_idle(sqlite_backend *s)
{
    sq_pool *p = atomic_load(&s->pool);
    if (!p || p->pid != tr_pid()) return; /* our parent's pool: never touched here */
    pthread_mutex_lock(&p->mu);
    while (p->idle) {
        sq_conn *c = p->idle;
        p->idle = c->next;
        p->nconn--;
        conn_close(c);
    }
    pthread_mutex_unlock(&p->mu);
}

static void fork_prepare(void)
{
    pthread_mutex_lock(&fork_mu); /* held across fork(), released by the handlers below */
    atomic_fetch_add(&fork_pending, 1);
    while (atomic_load(&fork_active))
        pthread_cond_wait(&fork_cv, &fork_mu);
    for (sqlite_backend *s = fork_handles; s; s = s->fork_next)
        fork_close_idle(s);
}

static void fork_parent(void)
{
    atomic_fetch_sub(&fork_pending, 1);
    pthread_cond_broadcast(&fork_cv);
    pthread_mutex_unlock(&fork_mu);
}

static void fork_child(void)
{
    atomic_store(&fork_pending, 0);
    atomic_store(&fork_active, 0);
    pthread_mutex_init(&fork_mu, NULL);
    pthread_cond_init(&fork_cv, NULL);
}

static void fork_install(void)
{
    pthread_atfork(fork_prepare, fork_parent, fork_child);
}

static void fork_register(sqlite_backend *s)
{
    pthread_mutex_lock(&fork_mu);
    s->fork_next = fork_handles;
    fork_handles = s;
    pthread_mutex_unlock(&fork_mu);
}

static void fork_unregister(sqlite_backend *s)
{
    pthread_mutex_lock(&fork_mu);
    for (sqlite_backend **pp = &fork_handles; *pp; pp = &(*pp)->fork_next)
        if (*pp == s) {
            *pp = s->fork_next;
            break;
        }
    pthread_mutex_unlock(&fork_mu);
}

/* ---- clocks ---------------------------------------------------------------------------- */

static int64_t clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Expiry time base: wall-clock ms (see the banner for why not CLOCK_MONOTONIC). */
int64_t sq_wall_ms(void)
{
    return clock_ns(CLOCK_REALTIME) / 1000000;
}

int64_t sq_wall_us(void)
{
    return clock_ns(CLOCK_REALTIME) / 1000;
}

int64_t sq_mono_ns(void)
{
    return clock_ns(CLOCK_MONOTONIC);
}

/* ---- errors ---------------------------------------------------------------------------- */

static int sq_status(int rc, int sys_errno)
{
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED: return TRAFFIC_ETIMEDOUT;
    case SQLITE_NOMEM: return TRAFFIC_ENOMEM;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
    case SQLITE_SCHEMA:
    case SQLITE_ERROR: return TRAFFIC_ECORRUPT; /* our fixed SQL failing: the schema is not ours */
    case SQLITE_PERM:
    case SQLITE_AUTH:
    case SQLITE_READONLY: return TRAFFIC_EPERM;
    case SQLITE_FULL: return TRAFFIC_EIO; /* the disk, not the store: see fs_reason */
    case SQLITE_TOOBIG: return TRAFFIC_ETOOBIG;
    case SQLITE_CANTOPEN:
        return sys_errno == EACCES || sys_errno == EPERM || sys_errno == EROFS ? TRAFFIC_EPERM : TRAFFIC_EIO;
    default: return TRAFFIC_EIO;
    }
}

/* The errno of the last failed system call on the WAL, else on the database file: SQLite
 * keeps one per file, while sqlite3_system_errno is not set on every path (a write that
 * fails at commit leaves it 0). */
static int file_errno(sqlite3 *db)
{
    int e = 0;
    sqlite3_file *wal = NULL;
    if (sqlite3_file_control(db, "main", SQLITE_FCNTL_JOURNAL_POINTER, &wal) == SQLITE_OK && wal && wal->pMethods &&
        wal->pMethods->xFileControl(wal, SQLITE_FCNTL_LAST_ERRNO, &e) == SQLITE_OK && e)
        return e;
    e = 0;
    sqlite3_file_control(db, "main", SQLITE_FCNTL_LAST_ERRNO, &e);
    return e;
}

/* The file system's part in a failed write, for the message: "disk full", "read-only file
 * system", ..., or NULL. SQLite reports a full disk as SQLITE_FULL ("database or disk is
 * full"), the other failed writes as SQLITE_IOERR_* (EROFS when the kernel remounted the file
 * system read-only under open descriptors, ENOSPC from some paths too), and a write through a
 * connection opened while the file system was read-only as SQLITE_READONLY, with no errno:
 * statvfs() tells that case from a file this process may not write (TRAFFIC_EPERM). Opening
 * (SQLITE_CANTOPEN) keeps its own statuses. */
static const char *fs_reason(const sqlite_backend *s, sqlite3 *db, int rc, int sys)
{
    int code = rc & 0xff;
    if (code == SQLITE_FULL) return "disk full";
    if (code != SQLITE_IOERR && code != SQLITE_READONLY) return NULL;
    int e = code == SQLITE_READONLY ? 0 : sys ? sys : db ? file_errno(db) : 0;
    if (e == ENOSPC) return "disk full";
    if (e == EDQUOT) return "disk quota exceeded";
    if (e == EROFS) return "read-only file system";
    struct statvfs vfs;
    if (statvfs(s->dir, &vfs) == 0 && (vfs.f_flag & ST_RDONLY)) return "read-only file system";
    return NULL;
}

/* Records why `what` failed on db with SQLite status rc, and returns the traffic status. A
 * failure of the file system under the database (full, read-only) is TRAFFIC_EIO naming it:
 * the store is not full in the sense of TRAFFIC_EFULL (evicting would not help), and not a
 * permission problem either; writes fail until the file system recovers and then work again
 * on the same handle, while reads keep working (tests/test_sqlite_fs.c). */
int sq_fail(const sqlite_backend *s, sqlite3 *db, int rc, const char *what)
{
    int sys = db ? sqlite3_system_errno(db) : 0;
    int status = sq_status(rc, sys);
    const char *msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    const char *fs = fs_reason(s, db, rc, sys);
    if (fs)
        return traffic_backend_fail(EB(s), TRAFFIC_EIO, "%s: %s: %s; writes fail until it is fixed (%s)", what,
                                    s->path, fs, msg);
    if (status == TRAFFIC_ETIMEDOUT)
        return traffic_backend_fail(EB(s), status,
                                    "%s: %s stayed locked by other writers until the call's timeout of %.3g s (%s)",
                                    what, s->path, (double)s->timeout_ns / 1e9, msg);
    if ((rc & 0xff) == SQLITE_NOTADB)
        return traffic_backend_fail(EB(s), status, "%s: %s is not a SQLite database, or its header is damaged (%s)",
                                    what, s->path, msg);
    if ((rc & 0xff) == SQLITE_CANTOPEN || (rc & 0xff) == SQLITE_READONLY) {
        if (access(s->dir, W_OK) != 0)
            return traffic_backend_fail(EB(s), TRAFFIC_EPERM,
                                        "%s: directory %s is not writable (SQLite creates the database and its "
                                        "-wal and -shm files there): %s",
                                        what, s->dir, strerror(errno));
        if (sys) return traffic_backend_fail(EB(s), status, "%s: %s: %s (%s)", what, s->path, msg, strerror(sys));
    }
    return traffic_backend_fail(EB(s), status, "%s: %s (%s)", what, msg, s->path);
}

/* ---- busy handling: the handler and the turnstile ----------------------------------------
 *
 * SQLite's write lock has no queue: whoever asks at the instant it is free gets it. Under a
 * steady stream of writes, the writer that just committed asks again within microseconds,
 * while a waiter wakes from its sleep at some random moment and usually finds the lock taken
 * again; it can be passed over for tens or hundreds of milliseconds. The busy handler alone
 * (short polls) shortens the stalls of a lightly loaded lock; the turnstile bounds them
 * under load, like the starvation mode of Go's sync.Mutex:
 *   - a waiter that has waited SQ_STARVE_US takes an exclusive OFD lock on byte 0 of the
 *     file PATH-turn (non-blocking; one claimant at a time) and keeps polling, fast;
 *   - every writer, before it starts a write statement, and every other waiter, checks that
 *     byte (F_OFD_GETLK) and holds back while it is locked;
 *   - the claimant releases it as soon as its statement is over (sq_step).
 * So the lock drains to the claimant within one statement. OFD locks belong to the open
 * file description (so threads of one process are told apart: each connection has its own
 * descriptor) and vanish when their process dies (so a crash wedges nobody). Holding back is
 * capped at SQ_TURN_WAIT_MAX_US: a stopped claimant costs the others that much, no more.
 * PATH-turn is never read or written, only locked; when it cannot be opened the connection
 * works without the turnstile. */

/* Test hook: new connections use SQLite's own busy handler (sqlite3_busy_timeout) and
 * auto-checkpoint instead of ours, and no turnstile, to compare latencies. */
_Atomic int sqlite_debug_default_busy;

static uint64_t rng_next(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* Sleeps a random time in [us/2, us], not past deadline (CLOCK_MONOTONIC ns). */
static void nap(sq_conn *c, int64_t us, int64_t now, int64_t deadline)
{
    int64_t ns = us * 500 + (int64_t)(rng_next(&c->rng) % (uint64_t)(us * 500 + 1));
    if (ns > deadline - now) ns = deadline - now;
    if (ns <= 0) return;
    struct timespec ts = {.tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000};
    nanosleep(&ts, NULL);
}

static int turn_lock(sq_conn *c, int cmd, short type)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
    if (fcntl(c->turn_fd, cmd, &fl) != 0) return -1;
    return cmd == F_OFD_GETLK ? fl.l_type != F_UNLCK : 0;
}

/* Is the turnstile claimed by another connection? */
static int turn_claimed(sq_conn *c)
{
    return c->turn_fd >= 0 && turn_lock(c, F_OFD_GETLK, F_WRLCK) == 1;
}

static void turn_release(sq_conn *c)
{
    if (!c->starving) return;
    turn_lock(c, F_OFD_SETLK, F_UNLCK);
    c->starving = 0;
}

/* Before a write statement: hold back while another waiter claims the turnstile. */
static void turn_wait(sq_conn *c)
{
    if (c->turn_fd < 0 || !turn_claimed(c)) return;
    int64_t now = sq_mono_ns(), end = now + (int64_t)SQ_TURN_WAIT_MAX_US * 1000;
    do {
        nap(c, SQ_TURN_POLL_US, now, end);
        now = sq_mono_ns();
    } while (now < end && turn_claimed(c));
}

/* The sleep before attempt `count` of a wait that has lasted waited_ns. */
static int64_t busy_sleep_us(int count, int64_t waited_ns)
{
    int shift = count - SQ_BUSY_YIELDS > 20 ? 20 : count - SQ_BUSY_YIELDS;
    int64_t cap = waited_ns / 1000 / SQ_BUSY_SLEEP_SHARE;
    if (cap < SQ_BUSY_SLEEP_MAX_US) cap = SQ_BUSY_SLEEP_MAX_US;
    if (cap > SQ_BUSY_SLEEP_CEIL_US) cap = SQ_BUSY_SLEEP_CEIL_US;
    int64_t us = (int64_t)SQ_BUSY_SLEEP_MIN_US << shift;
    return us < cap ? us : cap;
}

/* Called by SQLite when a lock is busy; count is 0 on the first call of each wait. Returns
 * nonzero to try again, 0 to give up (the statement then fails with SQLITE_BUSY). */
static int sq_busy(void *arg, int count)
{
    sq_conn *c = arg;
    /* A checkpoint never waits: a RESTART waits for every reader while holding the writer
     * lock, so a long-lived reader (a backup, an open admin shell) would stall every writer
     * of every process for the whole timeout. A checkpoint that cannot run now fails, and a
     * later one runs. */
    if (c->in_ckpt) return 0;
    int64_t now = sq_mono_ns();
    if (count == 0) c->busy_started_ns = now;
    /* One timeout per call, whatever it waited for before (the pool, an earlier lock). */
    int64_t waited = now - c->busy_started_ns,
            deadline = c->call_deadline_ns ? c->call_deadline_ns : c->busy_started_ns + c->s->timeout_ns;
    if (now >= deadline) return 0;
    COUNT(c->s, busy_retries);
    if (count < SQ_BUSY_YIELDS) {
        sched_yield();
        return 1;
    }
    if (!c->starving && c->turn_fd >= 0 && waited >= (int64_t)SQ_STARVE_US * 1000)
        c->starving = turn_lock(c, F_OFD_SETLK, F_WRLCK) == 0;
    int64_t us = busy_sleep_us(count, waited);
    if (c->starving && us > SQ_TURN_POLL_US)
        us = SQ_TURN_POLL_US;
    else if (!c->starving && turn_claimed(c) && us < SQ_TURN_POLL_US)
        us = SQ_TURN_POLL_US; /* make way */
    nap(c, us, now, deadline);
    return 1;
}

/* ---- checkpoints ------------------------------------------------------------------------ *
 *
 * SQLite's default auto-checkpoint runs a passive checkpoint after EVERY commit once the WAL
 * holds 1000 frames. The WAL only starts over when a checkpoint has copied all of it back
 * and the next writer finds no transaction still reading it; under a steady stream of
 * writes from several processes that moment never comes, so the WAL grows without bound
 * and every commit pays a checkpoint's two fsyncs (measured: a 160 MiB WAL and 10-50 ms
 * commits with 4 writers and SQLite's own busy handler; with ours, the WAL of
 * tests/test_sqlite_fs.c's t_wal_stays_bounded, 4 processes writing 96000 frames, reached
 * 46-117 MB, and 60-85 MB with passive checkpoints only, against 40-44 MiB with the RESTART
 * below: a "steady stream" leaves the moment now and then, not never). So each connection
 * replaces that hook with sq_wal_hook below:
 * a passive checkpoint once per SQ_WAL_CKPT_FRAMES frames of growth, and past
 * SQ_WAL_RESTART_FRAMES a RESTART checkpoint, which waits (through the busy handler) for
 * the transactions in flight, holds writers back for the one copy and fsync, and leaves the
 * WAL to be started over by the next writer. */

/* 0 for the checkpoint mode `frames` calls for, else the mode. */
static int ckpt_mode(int frames)
{
    if (frames >= SQ_WAL_RESTART_FRAMES) return SQLITE_CHECKPOINT_RESTART;
    return frames >= SQ_WAL_CKPT_FRAMES ? SQLITE_CHECKPOINT_PASSIVE : -1;
}

/* SQLite's wal hook: called after each commit of c with the WAL's size in frames. */
static int sq_wal_hook(void *arg, sqlite3 *db, const char *name, int frames)
{
    sq_conn *c = arg;
    if (frames < c->ckpt_frames) c->ckpt_frames = 0; /* the WAL started over */
    int mode = ckpt_mode(frames);
    if (mode < 0 || frames - c->ckpt_frames < SQ_WAL_CKPT_FRAMES) return SQLITE_OK; /* RESTART too */
    c->ckpt_frames = frames;
    c->in_ckpt = 1;
    sqlite3_wal_checkpoint_v2(db, name, mode, NULL, NULL); /* failing is fine: a later one runs */
    c->in_ckpt = 0;
    return SQLITE_OK; /* the commit itself succeeded */
}

/* ---- connections ----------------------------------------------------------------------- */

static void conn_close(sq_conn *c)
{
    if (!c) return;
    for (int i = 0; i < ST_N; i++)
        sqlite3_finalize(c->st[i]);
    sqlite3_close_v2(c->db);
    if (c->turn_fd >= 0) close(c->turn_fd); /* drops a claim on the turnstile too */
    free(c->scratch);
    free(c);
}

static int conn_exec(const sqlite_backend *s, sq_conn *c, const char *sql, const char *what)
{
    int rc = sqlite3_exec(c->db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? TRAFFIC_OK : sq_fail(s, c->db, rc, what);
}

/* traffic_now_ms(): the wall clock in ms (sq_wall_ms), read at its first use in a statement's
 * run and the same for the rest of it (sq_step clears it first). A write statement first
 * takes the write lock (the busy handler's wait happens there), then computes its values, so
 * the time is read with the lock held. Not deterministic: SQLite calls it each time. */
static void sq_now_fn(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc, (void)argv;
    sq_conn *c = sqlite3_user_data(ctx);
    if (!c->now_ms) c->now_ms = sq_wall_ms();
    sqlite3_result_int64(ctx, c->now_ms);
}

/* Opens and configures a connection without preparing statements (the schema may not exist
 * yet). create: SQLITE_OPEN_CREATE, for the opener only. deadline: the calling operation's
 * (CLOCK_MONOTONIC ns), which the busy handler keeps to while the connection is set up and
 * its statements prepared (a fresh timeout here made a call that waited for the pool and then
 * opened a connection take twice its timeout). */
static int conn_open(sqlite_backend *s, int create, int64_t deadline, sq_conn **out)
{
    sq_conn *c = calloc(1, sizeof *c);
    if (!c) return traffic_backend_fail(EB(s), TRAFFIC_ENOMEM, "out of memory");
    c->s = s;
    c->call_deadline_ns = deadline;
    c->turn_fd = -1;
    c->rng = (uint64_t)sq_mono_ns() ^ ((uint64_t)(uintptr_t)c << 16) ^ (uint64_t)getpid();
    if (!c->rng) c->rng = 1;
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | (create ? SQLITE_OPEN_CREATE : 0);
    int rc = sqlite3_open_v2(s->path, &c->db, flags, NULL);
    if (rc != SQLITE_OK) {
        rc = sq_fail(s, c->db, rc, "opening the database");
        conn_close(c);
        return rc;
    }
    sqlite3_extended_result_codes(c->db, 1);
    sqlite3_db_config(c->db, SQLITE_DBCONFIG_DEFENSIVE, 1, (int *)NULL);
    rc = sqlite3_create_function_v2(c->db, "traffic_now_ms", 0, SQLITE_UTF8 | SQLITE_DIRECTONLY, c, sq_now_fn, NULL,
                                    NULL, NULL);
    if (rc != SQLITE_OK) {
        rc = sq_fail(s, c->db, rc, "registering traffic_now_ms");
        conn_close(c);
        return rc;
    }
    if (sqlite_debug_default_busy) { /* the test hook: SQLite's own handling, for comparison */
        sqlite3_busy_timeout(c->db, (int)(s->timeout_ns / 1000000));
    } else {
        sqlite3_busy_handler(c->db, sq_busy, c);
        sqlite3_wal_hook(c->db, sq_wal_hook, c);
    }
    char sql[128];
    snprintf(sql, sizeof sql, "PRAGMA synchronous = NORMAL; PRAGMA journal_size_limit = %d;", SQ_WAL_LIMIT_BYTES);
    rc = conn_exec(s, c, sql, "configuring the connection");
    if (rc) {
        conn_close(c);
        return rc;
    }
    *out = c;
    return TRAFFIC_OK;
}

/* Prepares every statement once; a failure means the tables are not the ones we made. */
static int conn_prepare(const sqlite_backend *s, sq_conn *c)
{
    for (int i = 0; i < ST_N; i++) {
        int rc = sqlite3_prepare_v3(c->db, sq_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &c->st[i], NULL);
        if (rc != SQLITE_OK)
            return traffic_backend_fail(EB(s), TRAFFIC_ECORRUPT, "%s: the traffic schema does not match (%s)", s->path,
                                        sqlite3_errmsg(c->db));
    }
    return TRAFFIC_OK;
}

/* Opens PATH-turn for c, created as SQLite creates -wal and -shm: with the database's
 * permission bits and, when we are root, its owner. Only pool connections get one, so a
 * file that failed validation never gets a PATH-turn next to it. A failure leaves the
 * connection without a turnstile, which is not an error. */
static void turn_open(const sqlite_backend *s, sq_conn *c)
{
    if (sqlite_debug_default_busy) return;
    int fd = open(s->turn_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, s->mode);
    struct stat st;
    if (fd < 0) return;
    if (fstat(fd, &st) == 0 && st.st_size == 0 && (st.st_mode & 0777) != s->mode) (void)!fchmod(fd, s->mode);
    if (geteuid() == 0) (void)!fchown(fd, s->uid, s->gid);
    c->turn_fd = fd;
}

/* ---- the per-process pool -------------------------------------------------------------- */

static sq_pool *pool_new(sqlite_backend *s)
{
    sq_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&p->mu, NULL);
    pthread_mutex_init(&p->reaper_mu, NULL);
    pthread_cond_init(&p->free_cv, &ca);
    pthread_cond_init(&p->reaper_cv, &ca);
    pthread_condattr_destroy(&ca);
    p->pid = tr_pid();
    p->s = s;
    if (getrandom(&p->lease_owner, sizeof p->lease_owner, 0) != sizeof p->lease_owner)
        p->lease_owner = (uint64_t)sq_mono_ns() ^ ((uint64_t)p->pid << 40);
    p->lease_owner &= INT64_MAX; /* stored in an INTEGER column */
    return p;
}

/* Closes every connection of the pool (all must be idle) and frees it. */
static void pool_free(sq_pool *p)
{
    while (p->idle) {
        sq_conn *c = p->idle;
        p->idle = c->next;
        conn_close(c);
    }
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->reaper_mu);
    pthread_cond_destroy(&p->free_cv);
    pthread_cond_destroy(&p->reaper_cv);
    free(p);
}

/* The pool of the calling process: the pid check. In a child of the process that made the
 * current pool, a fresh pool replaces it; the parent's is abandoned untouched (its
 * connections hold the parent's locks; closing them here would release or corrupt those). */
sq_pool *sq_pool_current(sqlite_backend *s)
{
    sq_pool *p = atomic_load_explicit(&s->pool, memory_order_acquire);
    if (p && p->pid == tr_pid()) return p;
    sq_pool *fresh = pool_new(s);
    if (!fresh) return NULL;
    if (atomic_compare_exchange_strong_explicit(&s->pool, &p, fresh, memory_order_acq_rel, memory_order_acquire))
        return fresh;
    pool_free(fresh); /* another thread of this child installed one first */
    return p;
}

/* Opens a new connection into the slot pool_get reserved; on failure gives the slot back. */
static int pool_open_conn(sqlite_backend *s, sq_pool *p, int64_t deadline, sq_conn **out)
{
    sq_conn *c;
    int rc = conn_open(s, 0, deadline, &c);
    if (rc == TRAFFIC_OK && (rc = conn_prepare(s, c)) != TRAFFIC_OK) conn_close(c);
    if (rc == TRAFFIC_OK) {
        turn_open(s, c);
        *out = c;
        return rc;
    }
    pthread_mutex_lock(&p->mu);
    p->nconn--;
    pthread_cond_signal(&p->free_cv);
    pthread_mutex_unlock(&p->mu);
    return rc;
}

static int sq_pool_checkout(sqlite_backend *s, int64_t start, sq_conn **out);

/* Cancellation. pthread_cancel acts at cancellation points, and a call passes many: the wait
 * for a pooled connection (pthread_cond_timedwait), fork_enter's wait, the busy handler's
 * nanosleep, SQLite's own pread/pwrite/fcntl. A thread cancelled at one of them unwinds
 * through code that has no cleanup handlers, leaving the pool's mutex held (every later call
 * hangs), a connection checked out for ever and fork_active raised (the next fork() hangs),
 * or a SQLite statement half run. So every call of this backend runs with cancellation
 * disabled, from sq_pool_get (or the start of open, close, cleanup start and stop) to its
 * end; a cancel that arrives meanwhile stays pending and acts at the caller's next
 * cancellation point after the call returned. */
int sq_nocancel(void)
{
    int old = PTHREAD_CANCEL_ENABLE;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &old);
    return old;
}

void sq_cancel_restore(int old)
{
    pthread_setcancelstate(old, NULL);
}

/* Checks out a connection for the calling thread: an idle one, else a new one while fewer
 * than pool_size exist, else the next one to come back. From here to pool_put the thread
 * counts as inside SQLite for fork_prepare, and cannot be cancelled. */
int sq_pool_get(sqlite_backend *s, sq_conn **out)
{
    int64_t start = sq_mono_ns();
    int cancel_state = sq_nocancel();
    int rc = sq_pool_checkout(s, start, out);
    if (rc == TRAFFIC_OK)
        (*out)->cancel_state = cancel_state;
    else
        sq_cancel_restore(cancel_state);
    return rc;
}

static int sq_pool_checkout(sqlite_backend *s, int64_t start, sq_conn **out)
{
    fork_enter();
    sq_pool *p = sq_pool_current(s);
    int rc = TRAFFIC_OK;
    if (!p) {
        fork_leave();
        return traffic_backend_fail(EB(s), TRAFFIC_ENOMEM, "out of memory");
    }
    /* Wait for a free connection until the call's deadline (free_cv's clock is CLOCK_MONOTONIC:
     * a step of the wall clock neither ends the wait early nor stretches it). */
    int64_t deadline = start + s->timeout_ns;
    struct timespec until = {.tv_sec = (time_t)(deadline / 1000000000), .tv_nsec = (long)(deadline % 1000000000)};
    pthread_mutex_lock(&p->mu);
    int waited = 0;
    while (!p->idle && p->nconn >= s->pool_size && waited != ETIMEDOUT)
        waited = pthread_cond_timedwait(&p->free_cv, &p->mu, &until);
    if (!p->idle && p->nconn >= s->pool_size) {
        pthread_mutex_unlock(&p->mu);
        fork_leave();
        return traffic_backend_fail(EB(s), TRAFFIC_ETIMEDOUT,
                                    "all %d connections of the pool stayed busy for the timeout of %.3f s",
                                    s->pool_size, (double)s->timeout_ns / 1e9);
    }
    sq_conn *c = p->idle;
    if (c)
        p->idle = c->next;
    else
        p->nconn++; /* reserve the slot, then open without holding the mutex */
    pthread_mutex_unlock(&p->mu);
    if (c)
        *out = c;
    else
        rc = pool_open_conn(s, p, deadline, out);
    if (rc != TRAFFIC_OK)
        fork_leave();
    else
        (*out)->call_deadline_ns = deadline;
    return rc;
}

void sq_pool_put(sqlite_backend *s, sq_conn *c)
{
    sq_pool *p = atomic_load_explicit(&s->pool, memory_order_acquire);
    int cancel_state = c->cancel_state; /* c is another thread's once idle */
    turn_release(c);
    pthread_mutex_lock(&p->mu);
    c->next = p->idle;
    p->idle = c;
    pthread_cond_signal(&p->free_cv);
    pthread_mutex_unlock(&p->mu);
    fork_leave();
    sq_cancel_restore(cancel_state);
}

/* ---- statements ------------------------------------------------------------------------ */

/* Steps st once: 1 a row, 0 done, or a negative status with SQLite's message recorded. The
 * caller then resets it (sq_reset, or sq_end after a row of a RETURNING write), so that the
 * connection holds no snapshot or lock between operations. */
int sq_step(const sqlite_backend *s, sq_conn *c, sqlite3_stmt *st, const char *what)
{
    c->now_ms = 0; /* traffic_now_ms() reads the clock afresh in this run */
    int rc = sqlite3_step(st);
    turn_release(c); /* the statement has its lock, or gave up */
    if (rc == SQLITE_ROW) return 1;
    if (rc == SQLITE_DONE) return 0;
    int status = sq_fail(s, c->db, rc, what);
    sqlite3_reset(st);
    return status;
}

/* sq_step for a statement that writes: first give way to a starving waiter. */
int sq_write(const sqlite_backend *s, sq_conn *c, sqlite3_stmt *st, const char *what)
{
    turn_wait(c);
    return sq_step(s, c, st, what);
}

/* After the row of a RETURNING write: steps to the end, so that the write commits here and
 * a failing commit is reported (an INSERT/DELETE … RETURNING commits only when it ends, not
 * when its row comes out), then resets. 0 or a negative status. */
int sq_end(const sqlite_backend *s, sq_conn *c, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);
    int status = rc == SQLITE_DONE ? TRAFFIC_OK : sq_fail(s, c->db, rc, what);
    sqlite3_reset(st);
    return status;
}

void sq_bind_key(sqlite3_stmt *st, const char *key, size_t klen)
{
    sqlite3_bind_text(st, 1, key, (int)klen, SQLITE_STATIC); /* klen <= 250: cannot fail */
}

/* Runs one of the "SELECT … WHERE key = ?1 AND live at ?2" statements: 1 found, 0 not. */
int sq_lookup(const sqlite_backend *s, sq_conn *c, int which, const char *key, size_t klen, const char *what)
{
    sqlite3_stmt *st = c->st[which];
    sq_bind_key(st, key, klen);
    sqlite3_bind_int64(st, 2, sq_wall_ms());
    return sq_step(s, c, st, what);
}

int sq_not_found(const sqlite_backend *s, const char *key)
{
    return traffic_backend_fail(EB(s), TRAFFIC_ENOTFOUND, "\"%.64s\" not found or expired", key);
}

/* ---- closing --------------------------------------------------------------------------- */

static void sq_free(sqlite_backend *s)
{
    free(s->path);
    free(s->dir);
    free(s->turn_path);
    free(s);
}

static int q_close(traffic_backend *b)
{
    sqlite_backend *s = S(b);
    int cancel_state = sq_nocancel();
    sq_pool *p = atomic_load(&s->pool);
    if (p && p->pid == tr_pid()) {
        sq_reaper_stop(s, p);
        fork_enter(); /* no fork() between leaving fork_handles and closing the connections */
        fork_unregister(s);
        pool_free(p);
        fork_leave();
    } else { /* the pool of the process we were forked from: abandoned, see pool_current */
        fork_unregister(s);
    }
    sq_free(s);
    sq_cancel_restore(cancel_state);
    return TRAFFIC_OK;
}

static const traffic_backend_ops sqlite_ops = {
    .name = "sqlite",
    .close = q_close,
    .get = sq_get,
    .set = sq_set,
    .del = sq_del,
    .exists = sq_exists,
    .increment = sq_increment,
    .ttl = sq_ttl,
    .clear = sq_clear,
    .stats = sq_stats,
    .start_cleanup = sq_start_cleanup,
    .stop_cleanup = sq_stop_cleanup,
    .limit = sq_limit,
    .scan = sq_scan,
    .reap = sq_reap,
};

/* ---- opening: the file's identity and schema ------------------------------------------- */

/* What the file says it is. */
typedef struct sq_ident {
    int64_t app, version, objects;
    char encoding[16]; /* PRAGMA encoding: "UTF-8" (also what a new, empty file reports) */
} sq_ident;

/* Reads the identity in ONE statement, so one snapshot: three separate reads could see the
 * marks from before and the tables from after another process created the schema. */
static int read_ident(const sqlite_backend *s, sq_conn *c, sq_ident *id)
{
    static const char sql[] = "SELECT (SELECT application_id FROM pragma_application_id),"
                              " (SELECT user_version FROM pragma_user_version), (SELECT count(*) FROM sqlite_schema),"
                              " (SELECT encoding FROM pragma_encoding)";
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(c->db, sql, -1, &st, NULL);
    if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        id->app = sqlite3_column_int64(st, 0);
        id->version = sqlite3_column_int64(st, 1);
        id->objects = sqlite3_column_int64(st, 2);
        const unsigned char *e = sqlite3_column_text(st, 3);
        snprintf(id->encoding, sizeof id->encoding, "%s", e ? (const char *)e : "?");
        rc = SQLITE_OK;
    }
    int status = rc == SQLITE_OK ? TRAFFIC_OK : sq_fail(s, c->db, rc, "reading the database header");
    sqlite3_finalize(st);
    if (status == TRAFFIC_ECORRUPT && (rc & 0xff) != SQLITE_NOTADB) /* NOTADB has its message */
        return traffic_backend_fail(EB(s), status, "%s is not a usable SQLite database (%s)", s->path,
                                    sqlite3_errstr(rc));
    return status;
}

/* 1: a traffic database of our version; 0: an empty database to create the schema in;
 * else TRAFFIC_ECORRUPT naming what the file is instead. A database must be UTF-8: keys are
 * bound as text, which SQLite converts to a UTF-16 database's encoding, turning every
 * invalid UTF-8 sequence into U+FFFD, so that distinct keys would share one row. */
static int ident_verdict(const sqlite_backend *s, const sq_ident *id)
{
    if (sqlite3_stricmp(id->encoding, "UTF-8") != 0)
        return traffic_backend_fail(EB(s), TRAFFIC_ECORRUPT,
                                    "%s is a %s database; traffic needs UTF-8 (keys are bytes, which %s would "
                                    "alter); it was left untouched",
                                    s->path, id->encoding, id->encoding);
    if (id->app == SQ_APPLICATION_ID && id->version == SQ_SCHEMA_VERSION) return 1;
    if (id->app == 0 && id->version == 0 && id->objects == 0) return 0;
    if (id->app == SQ_APPLICATION_ID)
        return traffic_backend_fail(EB(s), TRAFFIC_ECORRUPT,
                                    "%s has traffic schema version %lld; this library knows version %d only", s->path,
                                    (long long)id->version, SQ_SCHEMA_VERSION);
    return traffic_backend_fail(EB(s), TRAFFIC_ECORRUPT,
                                "%s is not a traffic database (application_id 0x%llx, user_version %lld, %lld "
                                "schema objects); it was left untouched",
                                s->path, (unsigned long long)id->app, (long long)id->version, (long long)id->objects);
}

static int create_schema(const sqlite_backend *s, sq_conn *c)
{
    char marks[96];
    snprintf(marks, sizeof marks, "PRAGMA application_id = %d; PRAGMA user_version = %d;", SQ_APPLICATION_ID,
             SQ_SCHEMA_VERSION);
    CHECK(conn_exec(s, c, SQ_SCHEMA, "creating the schema"));
    return conn_exec(s, c, marks, "marking the database");
}

/* Makes sure the file holds our schema, creating it in an empty database. The creation
 * re-reads the identity inside its write transaction: two processes opening a new file at
 * once both see it empty, and the second must find the first one's schema, not create it
 * again. */
static int schema_ensure(const sqlite_backend *s, sq_conn *c)
{
    sq_ident id;
    CHECK(read_ident(s, c, &id));
    int v = ident_verdict(s, &id);
    if (v != 0) return v < 0 ? v : TRAFFIC_OK;
    CHECK(conn_exec(s, c, "BEGIN IMMEDIATE", "locking the new database"));
    int rc = read_ident(s, c, &id);
    if (rc == TRAFFIC_OK && (v = ident_verdict(s, &id)) <= 0) rc = v < 0 ? v : create_schema(s, c);
    if (rc == TRAFFIC_OK) rc = conn_exec(s, c, "COMMIT", "creating the schema");
    if (rc != TRAFFIC_OK) sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

/* One attempt at PRAGMA journal_mode = WAL: SQLITE_OK, or SQLite's status. */
static int try_wal(const sqlite_backend *s, sq_conn *c, int *status)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(c->db, "PRAGMA journal_mode = WAL", -1, &st, NULL);
    if (rc == SQLITE_OK) rc = sqlite3_step(st);
    *status = TRAFFIC_OK;
    if (rc == SQLITE_ROW && sqlite3_stricmp((const char *)sqlite3_column_text(st, 0), "wal") != 0)
        *status = traffic_backend_fail(EB(s), TRAFFIC_EIO, "%s: SQLite refused WAL mode (journal_mode is %s)", s->path,
                                       (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? SQLITE_OK : rc;
}

/* journal_mode is persistent in the file: set on every open, after the file proved ours (a
 * no-op once it is WAL). Switching a rollback-mode file upgrades a read lock to a write lock,
 * which SQLite refuses at once with SQLITE_BUSY, without the busy handler (two connections
 * doing it together would deadlock): processes opening a new file at the same moment meet
 * exactly that, so retry here until the timeout. */
static int set_wal(const sqlite_backend *s, sq_conn *c)
{
    int64_t start = sq_mono_ns(), now = start, end = c->call_deadline_ns;
    int status, rc;
    for (int i = 0; (rc = try_wal(s, c, &status)) != SQLITE_OK && (rc & 0xff) == SQLITE_BUSY && now < end; i++) {
        nap(c, busy_sleep_us(SQ_BUSY_YIELDS + i, now - start), now, end);
        now = sq_mono_ns();
    }
    return rc == SQLITE_OK ? status : sq_fail(s, c->db, rc, "switching to WAL");
}

/* The -wal and -shm files, when they exist, must be ours to write: made by another user
 * (root, a deploy script) with a mode that keeps us out, SQLite opens them read-only and the
 * database reads fine while every write fails with TRAFFIC_EPERM. Asked with faccessat
 * (effective ids) rather than by opening them: closing a descriptor of a file would drop
 * the POSIX locks this process's other connections hold on it. */
static int wal_files_writable(const sqlite_backend *s)
{
    static const char *const suffix[2] = {"-wal", "-shm"};
    for (int i = 0; i < 2; i++) {
        char name[PATH_MAX + 8];
        struct stat st;
        snprintf(name, sizeof name, "%s%s", s->path, suffix[i]);
        if (stat(name, &st) != 0 || faccessat(AT_FDCWD, name, R_OK | W_OK, AT_EACCESS) == 0) continue;
        if (errno != EACCES && errno != EPERM && errno != EROFS) continue;
        return traffic_backend_fail(NULL, TRAFFIC_EPERM,
                                    "%s is not writable by this process (owner uid %u, mode %03o: %s): every write "
                                    "would fail; give it the database's owner and mode",
                                    name, (unsigned)st.st_uid, (unsigned)(st.st_mode & 0777), strerror(errno));
    }
    return TRAFFIC_OK;
}

/* Opens the file once to check or create it; the connection is closed again (see the
 * banner on fork), the pool opens its own on first use. */
static int sq_validate(sqlite_backend *s)
{
    sq_conn *c;
    int64_t deadline = sq_mono_ns() + s->timeout_ns; /* for all of it */
    fork_enter();
    int rc = conn_open(s, 1, deadline, &c);
    if (rc == TRAFFIC_OK) {
        if (sqlite3_db_readonly(c->db, "main") == 1)
            rc = traffic_backend_fail(NULL, TRAFFIC_EPERM, "%s is read-only for this process", s->path);
        if (rc == TRAFFIC_OK) rc = schema_ensure(s, c);
        /* the tables are ours (every statement prepares) before WAL mode, which is written
         * into the file, is set: a file refused is left untouched */
        if (rc == TRAFFIC_OK) rc = conn_prepare(s, c);
        if (rc == TRAFFIC_OK) rc = set_wal(s, c);
        if (rc == TRAFFIC_OK) rc = wal_files_writable(s);
        conn_close(c);
    }
    struct stat st;
    if (rc == TRAFFIC_OK && stat(s->path, &st) == 0) {
        s->mode = st.st_mode & 0777;
        s->uid = st.st_uid;
        s->gid = st.st_gid;
    }
    fork_leave();
    return rc;
}

/* ---- opening: path and options --------------------------------------------------------- */

/* s->dir = the directory `dir` made absolute; it must exist. `path` is for the message. */
static int resolve_dir(sqlite_backend *s, const char *dir, const char *path)
{
    s->dir = realpath(dir, NULL);
    int e = errno;
    struct stat st;
    if (s->dir && stat(s->dir, &st) == 0 && S_ISDIR(st.st_mode)) return TRAFFIC_OK;
    if (s->dir) e = ENOTDIR;
    return traffic_backend_fail(NULL,
                                e == EACCES   ? TRAFFIC_EPERM
                                : e == ENOMEM ? TRAFFIC_ENOMEM
                                              : TRAFFIC_EIO,
                                "directory \"%.200s\" of sqlite path \"%.200s\": %s", dir, path, strerror(e));
}

/* Sets s->dir, s->path (absolute, so that a later chdir() changes nothing) and
 * s->turn_path from the path the user gave. */
static int resolve_path(sqlite_backend *s, const char *path)
{
    if (!path || !path[0]) return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "the sqlite backend needs a file path");
    if (strcmp(path, ":memory:") == 0 || strncmp(path, "file:", 5) == 0)
        return traffic_backend_fail(NULL, TRAFFIC_EINVAL,
                                    "sqlite path \"%.200s\": give a file path (in-memory and URI names are not "
                                    "shared between processes)",
                                    path);
    const char *slash = strrchr(path, '/'), *base = slash ? slash + 1 : path;
    if (!base[0] || strcmp(base, ".") == 0 || strcmp(base, "..") == 0)
        return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "sqlite path \"%.200s\" names a directory", path);
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    if (!dir) return traffic_backend_fail(NULL, TRAFFIC_ENOMEM, "out of memory");
    int rc = resolve_dir(s, dir, path);
    free(dir);
    if (rc) return rc;
    struct stat st;
    if (asprintf(&s->path, "%s/%s", strcmp(s->dir, "/") == 0 ? "" : s->dir, base) < 0) s->path = NULL;
    if (s->path && asprintf(&s->turn_path, "%s-turn", s->path) < 0) s->turn_path = NULL;
    if (!s->path || !s->turn_path) return traffic_backend_fail(NULL, TRAFFIC_ENOMEM, "out of memory");
    if (stat(s->path, &st) == 0 && S_ISDIR(st.st_mode))
        return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "sqlite path \"%.200s\" is a directory", s->path);
    return TRAFFIC_OK;
}

static int bad_seconds(double v, double max)
{
    return !(v >= 0 && v <= max);
} /* NaN too */

static int check_options(const traffic_sqlite_options *o)
{
    if (bad_seconds(o->cleanup_interval, 1e7))
        return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "cleanup_interval %g is not in [0, 1e7] seconds",
                                    o->cleanup_interval);
    if (bad_seconds(o->timeout, SQ_TIMEOUT_MAX_S))
        return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "timeout %g is not in [0, %g] seconds", o->timeout,
                                    SQ_TIMEOUT_MAX_S);
    if (o->pool_size > TRAFFIC_SQLITE_POOL_MAX)
        return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "pool_size %u is over %d", o->pool_size,
                                    TRAFFIC_SQLITE_POOL_MAX);
    return TRAFFIC_OK;
}

int traffic_sqlite_open(const traffic_sqlite_options *o, traffic_backend **out)
{
    if (!out) return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "out is NULL");
    *out = NULL;
    if (!o) return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "sqlite options are NULL (a path is required)");
    CHECK(check_options(o));
    int v = sqlite3_libversion_number(); /* the library loaded, not the headers */
    if (v < SQ_SQLITE_MIN)
        return traffic_backend_fail(NULL, TRAFFIC_ENOTSUP,
                                    "SQLite %d.%d.%d is too old: the sqlite backend needs 3.35.0 or newer "
                                    "(INSERT ... RETURNING)",
                                    v / 1000000, v / 1000 % 1000, v % 1000);
    pthread_once(&fork_once, fork_install);
    sqlite_backend *s = calloc(1, sizeof *s);
    if (!s) return traffic_backend_fail(NULL, TRAFFIC_ENOMEM, "out of memory");
    s->pool_size = o->pool_size ? o->pool_size : SQ_DEFAULT_POOL;
    s->mode = 0644; /* until validation reads the file's own */
    s->uid = geteuid();
    s->gid = getegid();
    s->cleanup_ms = ttl_seconds_to_ms(o->cleanup_interval > 0 ? o->cleanup_interval : SQ_DEFAULT_CLEANUP_S);
    s->timeout_ns = ttl_seconds_to_ms(o->timeout > 0 ? o->timeout : SQ_DEFAULT_TIMEOUT_S) * 1000000;
    int cancel_state = sq_nocancel();
    int rc = resolve_path(s, o->path);
    if (rc == TRAFFIC_OK) rc = sq_validate(s);
    sq_cancel_restore(cancel_state);
    sq_pool *p = rc == TRAFFIC_OK ? pool_new(s) : NULL;
    if (rc == TRAFFIC_OK && !p) rc = traffic_backend_fail(NULL, TRAFFIC_ENOMEM, "out of memory");
    if (rc != TRAFFIC_OK) {
        sq_free(s);
        return rc;
    }
    atomic_store(&s->pool, p);
    traffic_backend_init(&s->base, &sqlite_ops);
    fork_register(s);
    *out = &s->base;
    return TRAFFIC_OK;
}

int sqlite_open_url(url *u, traffic_backend **out)
{
    traffic_sqlite_options o = {0};
    uint64_t pool_size = 0;
    int rc;
    if ((rc = url_param_double(u, "cleanup_interval", 0.001, 1e7, &o.cleanup_interval)) ||
        (rc = url_param_u64(u, "pool_size", 1, TRAFFIC_SQLITE_POOL_MAX, &pool_size)) ||
        (rc = url_param_double(u, "timeout", 0.001, SQ_TIMEOUT_MAX_S, &o.timeout)) || (rc = url_check_unused(u)))
        return rc;
    o.pool_size = (uint32_t)pool_size;
    char *path = strdup(u->rest);
    if (!path) return traffic_backend_fail(NULL, TRAFFIC_ENOMEM, "out of memory");
    rc = url_decode(path);
    o.path = path;
    if (rc == TRAFFIC_OK) rc = traffic_sqlite_open(&o, out);
    free(path);
    return rc;
}
