/*
 * sqlite_cleanup.c — the SQLite backend's cleanup thread.
 *
 * traffic_start_cleanup starts a thread per process; every cleanup_interval it
 * takes or renews the lease (a row, so one process sweeps at a time; another takes over
 * when the holder stops or its lease of 2 intervals + 1 s runs out), deletes expired rows
 * SQ_SWEEP_BATCH at a time (a short transaction each, so writers interleave) for at most
 * SQ_SWEEP_PASS_MS; and every SQ_CHECKPOINT_MS it runs a passive WAL checkpoint (never
 * blocks writers), so that requests seldom pay for one themselves. Without that thread the
 * writers checkpoint as the WAL grows (sqlite.c, section "checkpoints"), and the WAL stays bounded
 * either way.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>

#include "sqlite_internal.h"

/* ---- cleanup: lease, sweep, checkpoint ------------------------------------------------- */

/* Takes or renews the sweeping lease for this process: 1 held, 0 another process holds it. */
static int lease_take(sqlite_backend *s, sq_pool *p)
{
    sq_conn *c;
    CHECK(sq_pool_get(s, &c));
    int64_t now = sq_wall_ms();
    sqlite3_stmt *st = c->st[ST_LEASE];
    sqlite3_bind_int64(st, 1, (int64_t)p->lease_owner);
    sqlite3_bind_int64(st, 2, (int64_t)p->pid);
    sqlite3_bind_int64(st, 3, now + 2 * s->cleanup_ms + 1000);
    sqlite3_bind_int64(st, 4, now);
    int rc = sq_write(s, c, st, "taking the cleanup lease");
    if (rc == 1) {
        int end = sq_end(s, c, st, "taking the cleanup lease");
        rc = end ? end : 1;
    }
    sq_reset(st);
    sq_pool_put(s, c);
    return rc;
}

static void lease_drop(sqlite_backend *s, sq_pool *p)
{
    sq_conn *c;
    if (sq_pool_get(s, &c) != TRAFFIC_OK) return; /* the lease then simply runs out */
    sqlite3_stmt *st = c->st[ST_UNLEASE];
    sqlite3_bind_int64(st, 1, (int64_t)p->lease_owner);
    sq_write(s, c, st, "dropping the cleanup lease");
    sq_reset(st);
    sq_pool_put(s, c);
}

/* Deletes up to SQ_SWEEP_BATCH expired rows in one transaction; returns how many, or < 0. */
int sq_sweep_batch(sqlite_backend *s)
{
    sq_conn *c;
    CHECK(sq_pool_get(s, &c));
    sqlite3_stmt *st = c->st[ST_SWEEP];
    sqlite3_bind_int64(st, 1, sq_wall_ms());
    sqlite3_bind_int(st, 2, SQ_SWEEP_BATCH);
    int rc = sq_write(s, c, st, "sweeping expired rows");
    if (rc >= 0) rc = sqlite3_changes(c->db);
    sq_reset(st);
    sq_pool_put(s, c);
    return rc;
}

/* The cleanup thread's periodic checkpoint: passive (never waits), or RESTART when the WAL
 * has grown past SQ_WAL_RESTART_FRAMES (see "checkpoints"). */
static void checkpoint(sqlite_backend *s)
{
    sq_conn *c;
    int frames = 0;
    if (sq_pool_get(s, &c) != TRAFFIC_OK) return;
    c->in_ckpt = 1; /* never waits (see sq_busy) */
    sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &frames, NULL);
    if (frames >= SQ_WAL_RESTART_FRAMES) sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_RESTART, NULL, NULL);
    c->in_ckpt = 0;
    sq_pool_put(s, c);
}

/* One sweep of this process's reaper, if it holds the lease. Returns 1 when expired rows
 * were left for lack of time (sweep again soon), else 0. Errors are not reported anywhere:
 * the next sweep retries. */
static int reaper_sweep(sqlite_backend *s, sq_pool *p)
{
    if (lease_take(s, p) != 1) return 0;
    int64_t end = sq_mono_ns() + (int64_t)SQ_SWEEP_PASS_MS * 1000000;
    int n;
    do {
        n = sq_sweep_batch(s);
        if (n > 0) atomic_fetch_add_explicit(&s->n.expirations, (uint64_t)n, memory_order_relaxed);
        sched_yield(); /* let waiting writers take the lock between batches */
    } while (n == SQ_SWEEP_BATCH && sq_mono_ns() < end && !atomic_load(&p->reaper_stop));
    COUNT(s, reaper_runs);
    return n == SQ_SWEEP_BATCH;
}

/* Sleeps until `until` (CLOCK_MONOTONIC ns) or a stop request; returns 1 on the latter. */
static int reaper_sleep(sq_pool *p, int64_t until)
{
    struct timespec dl = {.tv_sec = (time_t)(until / 1000000000), .tv_nsec = (long)(until % 1000000000)};
    pthread_mutex_lock(&p->mu);
    while (!atomic_load(&p->reaper_stop) && pthread_cond_timedwait(&p->reaper_cv, &p->mu, &dl) != ETIMEDOUT) {
    }
    pthread_mutex_unlock(&p->mu);
    return atomic_load(&p->reaper_stop);
}

/* The cleanup thread of one process: a sweep at start and then every cleanup_interval
 * (sooner while a backlog remains), and a passive checkpoint every SQ_CHECKPOINT_MS. The
 * frequent checkpoint keeps the WAL short, so that a request's commit rarely reaches
 * SQLite's auto-checkpoint threshold and pays for a checkpoint's fsyncs itself. */
static void *reaper_main(void *arg)
{
    sq_pool *p = arg;
    sqlite_backend *s = p->s;
    int64_t ms = 1000000, tick = (s->cleanup_ms < SQ_CHECKPOINT_MS ? s->cleanup_ms : SQ_CHECKPOINT_MS) * ms;
    int64_t next_sweep = sq_mono_ns(), wake;
    do {
        int64_t now = sq_mono_ns();
        if (now >= next_sweep) next_sweep = now + (reaper_sweep(s, p) ? SQ_SWEEP_BACKLOG_MS : s->cleanup_ms) * ms;
        checkpoint(s);
        wake = now + tick < next_sweep ? now + tick : next_sweep;
    } while (!reaper_sleep(p, wake));
    return NULL;
}

int sq_start_cleanup(traffic_backend *b)
{
    sqlite_backend *s = S(b);
    sq_pool *p = sq_pool_current(s); /* a child never inherits its parent's thread */
    if (!p) return traffic_backend_fail(b, TRAFFIC_ENOMEM, "out of memory");
    int rc = TRAFFIC_OK, cancel_state = sq_nocancel();
    pthread_mutex_lock(&p->reaper_mu);
    if (!p->reaper_running) {
        atomic_store(&p->reaper_stop, 0);
        sigset_t all, old; /* the thread takes no signal meant for the application */
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        int e = pthread_create(&p->reaper, NULL, reaper_main, p);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (e == 0)
            p->reaper_running = 1;
        else
            rc = traffic_backend_fail(b, e == EAGAIN ? TRAFFIC_ENOMEM : TRAFFIC_EIO,
                                      "could not start the cleanup thread: %s", strerror(e));
    }
    pthread_mutex_unlock(&p->reaper_mu);
    sq_cancel_restore(cancel_state);
    return rc;
}

/* Stops this process's cleanup thread, if it runs, and hands the lease back at once. */
void sq_reaper_stop(sqlite_backend *s, sq_pool *p)
{
    pthread_mutex_lock(&p->reaper_mu);
    if (p->reaper_running) {
        pthread_mutex_lock(&p->mu);
        atomic_store(&p->reaper_stop, 1);
        pthread_cond_broadcast(&p->reaper_cv);
        pthread_mutex_unlock(&p->mu);
        pthread_join(p->reaper, NULL);
        p->reaper_running = 0;
        lease_drop(s, p);
    }
    pthread_mutex_unlock(&p->reaper_mu);
}

int sq_stop_cleanup(traffic_backend *b)
{
    sqlite_backend *s = S(b);
    sq_pool *p = sq_pool_current(s);
    if (!p) return traffic_backend_fail(b, TRAFFIC_ENOMEM, "out of memory");
    int cancel_state = sq_nocancel(); /* pthread_join, holding reaper_mu */
    sq_reaper_stop(s, p);
    sq_cancel_restore(cancel_state);
    return TRAFFIC_OK;
}
