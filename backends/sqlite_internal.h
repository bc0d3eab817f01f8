/*
 * sqlite_internal.h — what the files of the SQLite backend share, and nothing public.
 *
 *   sqlite.c          the file (identity, schema, opening, closing), connections and their
 *                     per-process pool, fork(), errors, the busy handler and the turnstile,
 *                     checkpoints, and the helpers that run one statement
 *   sqlite_ops.c      the operations: get, set, delete, exists, increment, ttl, clear, stats
 *   sqlite_cleanup.c  the cleanup thread: the lease, the sweep, the periodic checkpoint
 *   sqlite_limit.c    rate-limit decisions (traffic_limit): one transaction each
 *   sqlite_scan.c     listing keys (traffic_scan) and the cleanup pass on demand (traffic_reap)
 *
 * Ownership, from the handle down (see each struct for who may touch which field):
 *   sqlite_backend (one per traffic_open) -> sq_pool (one per process using the handle: a
 *   child after fork() builds its own and never touches its parent's) -> sq_conn (up to
 *   pool_size, each checked out by one thread at a time, between sq_pool_get and sq_pool_put).
 */
#ifndef TRAFFIC_BACKENDS_SQLITE_INTERNAL_H
#define TRAFFIC_BACKENDS_SQLITE_INTERNAL_H

#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "internal.h"

/* ---- tuning shared between the files --------------------------------------------------- */

#define SQ_SWEEP_BATCH      256  /* expired rows deleted per transaction */
#define SQ_SWEEP_PASS_MS    200  /* most time one pass spends sweeping */
#define SQ_SWEEP_BACKLOG_MS 50   /* the pause before the next pass when one ran out of time */
#define SQ_CHECKPOINT_MS    1000 /* passive WAL checkpoints of the cleanup thread */

/* Checkpoints (see sq_wal_hook): a connection runs a passive one per SQ_WAL_CKPT_FRAMES
 * frames the WAL grew by (SQLite's default threshold, 4 MiB of 4 KiB pages), and a RESTART
 * one once the WAL holds SQ_WAL_RESTART_FRAMES frames (40 MiB). */
#define SQ_WAL_CKPT_FRAMES    1000
#define SQ_WAL_RESTART_FRAMES 10000
#define SQ_INCR_RETRIES       16 /* upserts refused by a row that then changed: give up after */

/* What a row of traffic_entries holds: kind SQ_KIND_COUNTER is a counter (in `counter`); kind
 * SQ_KIND_BYTES is a bytes value (in `value`) when `counter` is 0, and the state of
 * rate-limit algorithm A (a traffic_algorithm) when `counter` is SQ_LIMIT_MARK + A, `value`
 * then holding the state as sqlite_limit.c encodes it. So no schema change: version-1 files
 * hold them as they are, and every other operation treats them as before (set replaces,
 * delete removes, ttl and exists read `expires`, increment refuses kind 0). */
#define SQ_KIND_BYTES   0
#define SQ_KIND_COUNTER 1
#define SQ_LIMIT_MARK   1

/* The prepared statements of every connection (their SQL: sq_sql in sqlite.c). */
enum {
    ST_GET,
    ST_EXISTS,
    ST_TTL,
    ST_SET,
    ST_INCR,
    ST_DEL,
    ST_CLEAR,
    ST_SWEEP,
    ST_STATS,
    ST_LEASE,
    ST_UNLEASE,
    ST_BEGIN, /* a decision's transaction (sqlite_limit.c) */
    ST_COMMIT,
    ST_ROLLBACK,
    ST_LIMIT_GET,
    ST_LIMIT_PUT,
    ST_LIMIT_VALUE,
    ST_N
};

/* ---- types ----------------------------------------------------------------------------- */

struct sqlite_backend;

/* One connection. Owned by exactly one thread between sq_pool_get and sq_pool_put; every field is
 * that thread's then. */
typedef struct sq_conn {
    sqlite3 *db;
    sqlite3_stmt *st[ST_N];
    struct sqlite_backend *s;
    int64_t busy_started_ns;  /* when the current busy wait began (CLOCK_MONOTONIC) */
    int64_t call_deadline_ns; /* the checkout's end: sq_pool_get's start + timeout; 0: none */
    int turn_fd;              /* PATH-turn, or -1: no turnstile for this connection */
    int starving;             /* this connection holds the turnstile */
    int ckpt_frames;          /* WAL size (frames) at this connection's last checkpoint */
    int in_ckpt;              /* a checkpoint is running: the busy handler must not wait */
    uint64_t rng;             /* jitter of the busy handler's sleeps */
    unsigned char *scratch;   /* a decision's state and its encoding (sqlite_limit.c), or NULL */
    size_t scratch_cap;       /* bytes at scratch */
    int cancel_state;         /* the thread's cancelability before sq_pool_get, restored by sq_pool_put */
    int64_t now_ms;           /* traffic_now_ms() of the statement running (0: not read yet) */
    struct sq_conn *next;     /* in the pool's idle list */
} sq_conn;

/* The connections and the cleanup thread of ONE process. pid never changes; every other
 * field is guarded by mu. In a child of that process the whole pool is abandoned (see
 * sqlite.c's banner): its mutex may have been held by a thread that does not exist there. */
typedef struct sq_pool {
    pid_t pid;
    pthread_mutex_t mu;
    pthread_cond_t free_cv;    /* a connection went idle, or a slot for one opened */
    sq_conn *idle;             /* connections nobody has checked out */
    unsigned nconn;            /* connections open or being opened, <= pool_size */
    pthread_cond_t reaper_cv;  /* CLOCK_MONOTONIC; wakes the reaper to stop */
    _Atomic int reaper_stop;   /* written under mu (for reaper_cv), read anywhere */
    pthread_mutex_t reaper_mu; /* serialises start and stop; guards the two fields below */
    pthread_t reaper;
    int reaper_running;
    uint64_t lease_owner; /* this process's token in traffic_lease; fixed */
    struct sqlite_backend *s;
} sq_pool;

typedef struct sqlite_backend {
    traffic_backend base; /* base.ops stays NULL until the open succeeded */
    char *path;           /* absolute, so a chdir() later changes nothing */
    char *dir;
    char *turn_path; /* PATH-turn, the turnstile (see "busy handling") */
    unsigned mode;   /* permission bits of the database file, for PATH-turn */
    uid_t uid;       /* its owner, likewise */
    gid_t gid;
    unsigned pool_size;
    int64_t cleanup_ms, timeout_ns;
    _Atomic(sq_pool *) pool;          /* the current process's pool; replaced in a forked child */
    struct sqlite_backend *fork_next; /* in fork_handles, guarded by fork_mu */
    struct {                          /* this handle's counts (relaxed: statistics only) */
        _Atomic uint64_t hits, misses, sets, increments, deletes, expirations, busy_retries, reaper_runs;
        _Atomic uint64_t decisions, denied;
    } n;
} sqlite_backend;

static inline sqlite_backend *S(traffic_backend *b)
{
    return (sqlite_backend *)b;
}

/* The handle messages go to: none (the open slot, traffic_errmsg(NULL)) while opening. */
static inline const traffic_backend *EB(const sqlite_backend *s)
{
    return s->base.ops ? &s->base : NULL;
}

#define COUNT(s, f) atomic_fetch_add_explicit(&(s)->n.f, 1, memory_order_relaxed)

/* ---- sqlite.c ---------------------------------------------------------------------------- */

/* Wall-clock ms, the time base of expiries (sqlite.c's banner says why not CLOCK_MONOTONIC). */
int64_t sq_wall_ms(void);
int64_t sq_wall_us(void); /* the same clock in µs: rate-limit decisions' time */
int64_t sq_mono_ns(void);

/* Records why `what` failed on db with SQLite status rc, and returns the traffic status. */
int sq_fail(const sqlite_backend *s, sqlite3 *db, int rc, const char *what);

/* The pool of the calling process (a fresh one in a forked child); NULL: out of memory. */
sq_pool *sq_pool_current(sqlite_backend *s);
/* Checks out a connection for the calling thread, waiting at most the handle's timeout; from
 * here to sq_pool_put the thread counts as inside SQLite for fork(), and cannot be cancelled
 * (sq_nocancel). */
int sq_pool_get(sqlite_backend *s, sq_conn **out);
void sq_pool_put(sqlite_backend *s, sq_conn *c);
/* Defers pthread_cancel of the calling thread until sq_cancel_restore(the value returned). */
int sq_nocancel(void);
void sq_cancel_restore(int old);

/* Steps st once: 1 a row, 0 done, or a negative status with SQLite's message recorded. The
 * caller then resets it (sq_reset, or sq_end after a row of a RETURNING write), so that the
 * connection holds no snapshot or lock between operations. */
int sq_step(const sqlite_backend *s, sq_conn *c, sqlite3_stmt *st, const char *what);
/* sq_step for a statement that writes: first give way to a starving waiter. */
int sq_write(const sqlite_backend *s, sq_conn *c, sqlite3_stmt *st, const char *what);
/* After the row of a RETURNING write: steps to the end, so that the write commits here and a
 * failing commit is reported, then resets. 0 or a negative status. */
int sq_end(const sqlite_backend *s, sq_conn *c, sqlite3_stmt *st, const char *what);
static inline void sq_reset(sqlite3_stmt *st)
{
    sqlite3_reset(st);
}
void sq_bind_key(sqlite3_stmt *st, const char *key, size_t klen);
/* Runs one of the "SELECT … WHERE key = ?1 AND live at ?2" statements: 1 found, 0 not. */
int sq_lookup(const sqlite_backend *s, sq_conn *c, int which, const char *key, size_t klen, const char *what);
/* TRAFFIC_ENOTFOUND with its message. */
int sq_not_found(const sqlite_backend *s, const char *key);

/* ---- sqlite_ops.c: the vtable's operations ----------------------------------------------- */

int sq_get(traffic_backend *b, const char *key, size_t klen, void *buf, size_t cap, size_t *len);
int sq_set(traffic_backend *b, const char *key, size_t klen, const void *val, size_t len, int64_t ttl_ms);
int sq_del(traffic_backend *b, const char *key, size_t klen);
int sq_exists(traffic_backend *b, const char *key, size_t klen);
int sq_increment(traffic_backend *b, const char *key, size_t klen, int64_t amount, int64_t ttl_ms, int64_t *out);
int sq_ttl(traffic_backend *b, const char *key, size_t klen, int64_t *ttl_ms);
int sq_clear(traffic_backend *b);
int sq_stats(traffic_backend *b, struct traffic_stats *o);

/* ---- sqlite_cleanup.c ------------------------------------------------------------------- */

int sq_start_cleanup(traffic_backend *b);
int sq_stop_cleanup(traffic_backend *b);
/* Stops this process's cleanup thread, if it runs, and hands the lease back at once. */
void sq_reaper_stop(sqlite_backend *s, sq_pool *p);
/* Deletes up to SQ_SWEEP_BATCH expired rows in one transaction; returns how many, or < 0. */
int sq_sweep_batch(sqlite_backend *s);

/* ---- sqlite_scan.c ----------------------------------------------------------------------- */

int sq_scan(traffic_backend *b, const char *glob, traffic_scan_fn fn, void *ctx);
int sq_reap(traffic_backend *b, uint64_t *removed);

/* ---- sqlite_limit.c ---------------------------------------------------------------------- */

int sq_limit(traffic_backend *b, const char *key, size_t klen, const traffic_rule *rule, int64_t cost, int64_t now_us,
             traffic_decision *out);
/* traffic_get of a rate-limit state: the current row of ST_GET (kind, counter, value) as
 * limit_state_json's text. TRAFFIC_OK, TRAFFIC_ERANGE (*len: the length needed),
 * TRAFFIC_ECORRUPT, TRAFFIC_ENOMEM. */
int sq_limit_show(const sqlite_backend *s, sq_conn *c, sqlite3_stmt *st, const char *key, void *buf, size_t cap,
                  size_t *len);
/* What a row holds, for messages: "a counter", "a bytes value", "a token_bucket rate-limit
 * state", ... into buf (at least SQ_WHAT_LEN bytes); returns buf. */
#define SQ_WHAT_LEN 64
const char *sq_row_what(int kind, int64_t counter, char *buf);

#endif
