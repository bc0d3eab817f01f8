/*
 * reaper.c — the background reaper and its election.
 *
 * Any process may run a reaper thread (traffic_start_cleanup); the table elects one to work
 * at a time through header.reaper_token. Every cleanup interval each reaper thread looks at
 * the token: its own means "work"; zero or a dead holder's (shm_token_alive) means "take it by
 * CAS, then work"; a live holder's means "sleep". When the elected process dies, the token
 * dies with its participant record and the next reaper to wake takes over.
 *
 * The pass itself (shm_reap_pass, table.c) is bounded work per pinned stretch, visits only
 * chunks that ever held an entry, and allocates nothing (a fork() in another thread must never
 * find the allocator's lock held by the reaper). The thread sleeps on a futex (liburcu's futex_async, which falls back
 * to a poll loop where the syscall is missing), so stop wakes it at once.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <time.h>
#include <unistd.h>
#include <urcu/futex.h>

#include "layout.h"

static void reaper_sleep(struct shm_table *t, uint64_t ms)
{
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L};
    /* futex words are 32 bits; reaper_stop is one. Spurious wake-ups just start a pass early. */
    futex_async((int32_t *)&t->reaper_stop, FUTEX_WAIT, 0, &ts, NULL, 0);
}

static void *reaper_main(void *arg)
{
    struct shm_table *t = arg;
    struct shm_header *h = t->h;
    while (!atomic_load(&t->reaper_stop)) {
        struct shm_self *me = shm_self_get(t);
        if (me) {
            uint32_t cur = atomic_load(&h->reaper_token);
            int elected = cur == me->token;
            if (!elected && (cur == 0 || !shm_token_alive(t, cur)))
                elected = atomic_compare_exchange_strong(&h->reaper_token, &cur, me->token);
            if (elected) {
                atomic_store(&h->reaper_pid, (int32_t)getpid());
                shm_reap_pass(t, NULL);
                atomic_fetch_add(&h->reaper_runs, 1);
            }
        }
        reaper_sleep(t, t->cleanup_ms);
    }
    /* Step down so another process's reaper takes over without a liveness check. */
    struct shm_self *me = shm_self_get(t);
    if (me) {
        uint32_t mine = me->token;
        atomic_compare_exchange_strong(&h->reaper_token, &mine, 0);
    }
    return NULL;
}

int shm_reaper_start(shm_table *t)
{
    int rc = SHM_OK;
    pthread_mutex_lock(&t->reaper_mu);
    if (t->reaper_owner_pid != getpid()) {
        atomic_store(&t->reaper_stop, 0);
        int e = pthread_create(&t->reaper_thread, NULL, reaper_main, t);
        if (e == 0)
            t->reaper_owner_pid = getpid();
        else
            rc = e == EAGAIN ? SHM_ENOMEM : SHM_EIO;
    }
    pthread_mutex_unlock(&t->reaper_mu);
    return rc;
}

int shm_reaper_stop(shm_table *t)
{
    pthread_mutex_lock(&t->reaper_mu);
    if (t->reaper_owner_pid == getpid()) {
        atomic_store(&t->reaper_stop, 1);
        futex_async((int32_t *)&t->reaper_stop, FUTEX_WAKE, 1, NULL, NULL, 0);
        pthread_join(t->reaper_thread, NULL);
        t->reaper_owner_pid = 0;
    }
    pthread_mutex_unlock(&t->reaper_mu);
    return SHM_OK;
}
