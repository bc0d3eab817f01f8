/*
 * part.c — participants, epochs and liveness: the cross-process machinery that lets a slot be
 * reused safely and a dead thread's half-done work be taken over.
 *
 * Participants. Each thread that touches a table claims one record in it (lazily, on its
 * first operation) and holds that record's robust mutex until it exits or leaves the table.
 * Tokens (record index + incarnation, layout.h) name one holder. Liveness of a token is: same
 * incarnation, and trylock says EBUSY. EOWNERDEAD
 * means the holder died: the finder makes the mutex consistent, clears the dead holder's pin,
 * bumps the incarnation (so every slot or latch still carrying the old token is now visibly
 * orphaned) and unlocks it for reuse.
 *
 * Epochs. A global epoch E and per-participant words (e << 1 | pinned). An operation pins:
 * it publishes E with a sequentially consistent exchange and re-reads E until the two agree.
 * Invariant (relied on by table.c's retire stamps): while a participant is pinned at P,
 * E <= P + 1, because E moves from e to e + 1 only when every pinned participant shows e.
 * A slot retired by an operation pinned at P is stamped P + 1 >= E at the retire; it may be
 * reused once E >= stamp + 2, when every reader that could have seen it live has unpinned.
 * Dead pinned participants are found by the same trylock and cleared, so a SIGKILLed
 * process holds the epoch back for no longer than one liveness check.
 *
 * Asymmetric fences. The pin needs its store ordered before the loads that follow it; a
 * fence (the exchange) on every operation costs more than the increment itself. Instead,
 * each process registers for MEMBARRIER_CMD_GLOBAL_EXPEDITED and pins with a plain store
 * followed by a compiler barrier, and the rare epoch advancer calls membarrier() between
 * reading E and scanning the pins: every running thread of every registered process then
 * executes a full barrier. Why E <= P + 1 still holds for a thread pinned at P: it loaded
 * E == P after storing its pin, so that load came before the CAS that made E = P + 1; any
 * advancer moving E from P + 1 read E after that CAS, so its membarrier() point comes after
 * the pinner's load of E, hence after its pin store, which the barrier makes visible to the
 * scan — and the scan sees a pin at P != P + 1 and refuses. (A pin stored after some
 * advancer's barrier point may be missed by that scan, but that advancer can only move E to
 * P + 1.) A process whose registration fails (an old
 * kernel, a seccomp filter) pins with the exchange; an advancer whose membarrier() fails
 * does not advance.
 *
 * The calling thread's records are cached in thread-local storage keyed by the handle's uid;
 * a fork generation counter tells a child that the cached records belong to its parent.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <linux/membarrier.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <string.h>
#include <unistd.h>

#include "layout.h"

struct tls_ent {
    struct shm_table *t;
    uint64_t uid;
    struct shm_self self;
};
struct tls_state {
    uint64_t gen;
    size_t n, cap;
    struct tls_ent *ents;
};

/* initial-exec: a plain %fs-relative load instead of a __tls_get_addr call per operation
 * (measured: 41 of the 450 instructions of an increment). The cost is a few bytes of the
 * static TLS surplus that glibc keeps for libraries, dlopen()ed ones included. */
#define SHM_TLS _Thread_local __attribute__((tls_model("initial-exec")))
static SHM_TLS struct tls_state *tls;
static SHM_TLS struct tls_ent *tls_last;
static SHM_TLS uint64_t tls_last_gen;
static _Atomic uint64_t fork_gen = 1;
static pthread_key_t tls_key;
static pthread_once_t tls_once = PTHREAD_ONCE_INIT;

/* 1 when this process is registered for global expedited membarriers (cheap pins);
 * membarrier_global: the system supports them, so advancers must issue one. */
static int asym_pin, membarrier_global;

static long sys_membarrier(int cmd)
{
    return syscall(__NR_membarrier, cmd, 0, 0);
}

static int asym_wanted;

static void asym_register(void)
{
    asym_pin = asym_wanted && sys_membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) == 0;
}

void shm_part_process_init(void)
{
    long q = sys_membarrier(MEMBARRIER_CMD_QUERY);
    membarrier_global = q > 0 && (q & MEMBARRIER_CMD_GLOBAL_EXPEDITED);
    /* TRAFFIC_NO_MEMBARRIER=1 makes this process pin with the exchange; it still issues the
     * barrier when it advances, for the sake of other processes. */
    asym_wanted = membarrier_global && !getenv("TRAFFIC_NO_MEMBARRIER");
    asym_register();
}

void shm_part_atfork_child(void)
{
    atomic_fetch_add(&fork_gen, 1);
    /* Linux 6.18 keeps the parent's registration across fork() (checked with
     * MEMBARRIER_CMD_GET_REGISTRATIONS); registering again is a cheap guard should another
     * kernel not, since unfenced pins are safe only in a registered process. */
    asym_register();
}

/* ---- records ------------------------------------------------------------------------------ */

/* trylock on a record's mutex, which lives in the mapping and so may be damaged. glibc picks
 * its code path by the mutex's kind: a damaged kind sent pthread_mutex_trylock into lock
 * elision (an xbegin, SIGILL on a CPU without RTM) - fuzz_table found it. A record whose kind
 * is not the one pthread_mutex_init gives a robust process-shared mutex is never locked:
 * ENOTRECOVERABLE, which callers treat as a record nobody can use (not claimed, not alive).
 * What this cannot defend (traffic.h says so): glibc links the robust mutexes a thread holds
 * through pointers stored in the mutexes themselves, and unlocking one walks that list, so a
 * write into a record *another* thread holds can still crash that thread. */
static int part_trylock(struct shm_part *p)
{
#ifdef __GLIBC__
    static _Atomic int ref_kind = -1;
    int want = atomic_load_explicit(&ref_kind, memory_order_relaxed);
    if (want < 0) {
        pthread_mutex_t m;
        pthread_mutexattr_t a;
        pthread_mutexattr_init(&a);
        pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
        pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
        int rc = pthread_mutex_init(&m, &a);
        pthread_mutexattr_destroy(&a);
        if (rc != 0) return rc; /* no robust mutexes here: nothing can be locked (EFULL) */
        want = m.__data.__kind;
        pthread_mutex_destroy(&m);
        atomic_store_explicit(&ref_kind, want, memory_order_relaxed);
    }
    /* a relaxed atomic read: the kind is written only by pthread_mutex_init (map.c) */
    if (__atomic_load_n(&p->lock.__data.__kind, __ATOMIC_RELAXED) != want) return ENOTRECOVERABLE;
#endif
    return pthread_mutex_trylock(&p->lock);
}

/* Called with p->lock just acquired with EOWNERDEAD: make the record free and recognisably
 * new. Every token of the dead holder stops matching. */
static void part_recover_locked(struct shm_part *p)
{
    pthread_mutex_consistent(&p->lock);
    atomic_store_explicit(&p->epoch, 0, memory_order_release);
    atomic_fetch_add_explicit(&p->incarnation, 1, memory_order_acq_rel);
    atomic_store_explicit(&p->pid, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->stat[STAT_RECOVERED], 1, memory_order_relaxed);
}

/* A clean release: the holder is between operations, so nothing carries its token. */
static void part_release(struct shm_part *p)
{
    atomic_store_explicit(&p->epoch, 0, memory_order_release);
    atomic_store_explicit(&p->pid, 0, memory_order_relaxed);
    pthread_mutex_unlock(&p->lock);
}

static int part_claim(struct shm_table *t, struct shm_self *me)
{
    for (uint32_t i = 0; i < SHM_MAX_PARTS; i++) {
        struct shm_part *p = &t->parts[i];
        int rc = part_trylock(p);
        if (rc == EOWNERDEAD)
            part_recover_locked(p);
        else if (rc != 0)
            continue;
        uint32_t inc = atomic_load_explicit(&p->incarnation, memory_order_acquire);
        if (inc >= TOKEN_INC_SPENT) { /* its tokens would repeat (layout.h): never used again */
            pthread_mutex_unlock(&p->lock);
            continue;
        }
        atomic_store_explicit(&p->pid, (int32_t)getpid(), memory_order_relaxed);
        atomic_store_explicit(&p->epoch, 0, memory_order_release);
        uint32_t hwm = atomic_load(&t->h->part_hwm);
        while (hwm < i + 1 && !atomic_compare_exchange_weak(&t->h->part_hwm, &hwm, i + 1)) {
        }
        if (asym_pin && !atomic_load_explicit(&t->h->asym_pins, memory_order_relaxed))
            atomic_store_explicit(&t->h->asym_pins, 1, memory_order_seq_cst);
        me->part = p;
        me->token = TOKEN_MAKE(i, inc);
        me->pin = 0;
        me->ops = 0;
        return SHM_OK;
    }
    return SHM_EFULL;
}

/* Is the record at idx held by a live thread? Dead holders are recovered on the way. */
static int part_alive(struct shm_table *t, uint32_t idx)
{
    struct shm_part *p = &t->parts[idx];
    int rc = part_trylock(p);
    if (rc == EBUSY || rc == EDEADLK) return 1;
    if (rc == EOWNERDEAD) {
        part_recover_locked(p);
        pthread_mutex_unlock(&p->lock);
        return 0;
    }
    if (rc == 0) { /* nobody holds it: any pin left in it is stale */
        atomic_store_explicit(&p->epoch, 0, memory_order_release);
        pthread_mutex_unlock(&p->lock);
    }
    return 0;
}

int shm_token_alive(struct shm_table *t, uint32_t token)
{
    uint32_t idx = TOKEN_IDX(token);
    if (token == 0 || idx >= SHM_MAX_PARTS) return 0;
    struct shm_part *p = &t->parts[idx];
    if ((atomic_load_explicit(&p->incarnation, memory_order_acquire) & TOKEN_INC_MASK) != TOKEN_INC(token)) return 0;
    if (!part_alive(t, idx)) return 0;
    /* Alive, but is it still the same holder? */
    return (atomic_load_explicit(&p->incarnation, memory_order_acquire) & TOKEN_INC_MASK) == TOKEN_INC(token);
}

/* ---- epochs ------------------------------------------------------------------------------- */

void shm_pin(struct shm_table *t, struct shm_self *me)
{
    uint64_t e = atomic_load_explicit(&t->h->epoch, memory_order_acquire);
    for (;;) {
        if (__builtin_expect(asym_pin, 1)) {
            /* Plain store + compiler barrier; the advancer's membarrier() supplies the
             * store-load fence when (and only when) it matters (see the top). */
            atomic_store_explicit(&me->part->epoch, e << 1 | 1, memory_order_relaxed);
            atomic_signal_fence(memory_order_seq_cst);
        } else {
            /* seq_cst exchange: the pin is globally visible before any load of the table
             * below, and ordered in the single total order against retiring CASes and the
             * advancer's scan. */
            atomic_exchange_explicit(&me->part->epoch, e << 1 | 1, memory_order_seq_cst);
        }
        uint64_t now = atomic_load_explicit(&t->h->epoch, memory_order_seq_cst);
        if (now == e) break;
        e = now;
    }
    me->pin = e;
}

void shm_unpin(struct shm_self *me)
{
    atomic_store_explicit(&me->part->epoch, me->pin << 1, memory_order_release);
}

int shm_epoch_try_advance(struct shm_table *t)
{
    uint64_t e = atomic_load_explicit(&t->h->epoch, memory_order_seq_cst);
    /* Order every registered process's pin stores before the scan (see the top). Without a
     * working membarrier() here, advancing is safe only if no process pins without a fence. */
    if (membarrier_global ? sys_membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) != 0
                          : atomic_load_explicit(&t->h->asym_pins, memory_order_seq_cst) != 0)
        return 0;
    uint32_t n = shm_part_hwm(t, memory_order_acquire);
    for (uint32_t i = 0; i < n; i++) {
        uint64_t w = atomic_load_explicit(&t->parts[i].epoch, memory_order_seq_cst);
        if (!(w & 1) || (w >> 1) == e) continue;
        if ((w >> 1) > e || part_alive(t, i)) return 0; /* a live laggard: try later */
    }
    return atomic_compare_exchange_strong_explicit(&t->h->epoch, &e, e + 1, memory_order_seq_cst, memory_order_relaxed);
}

/* ---- thread-local cache --------------------------------------------------------------------- */

static void tls_drop(struct tls_ent *e, int release)
{
    if (release) part_release(e->self.part);
    shm_table_unref(e->t);
}

static void tls_destroy(void *arg)
{
    struct tls_state *s = arg;
    int mine = s->gen == atomic_load(&fork_gen);
    for (size_t i = 0; i < s->n; i++)
        if (mine) tls_drop(&s->ents[i], 1);
    free(s->ents);
    free(s);
    tls = NULL;
    tls_last = NULL;
}

static void tls_key_init(void)
{
    pthread_key_create(&tls_key, tls_destroy);
}

static struct tls_state *tls_state_get(void)
{
    if (!tls) {
        pthread_once(&tls_once, tls_key_init);
        tls = calloc(1, sizeof *tls);
        if (!tls) return NULL;
        tls->gen = atomic_load(&fork_gen);
        pthread_setspecific(tls_key, tls);
    }
    uint64_t g = atomic_load(&fork_gen);
    if (tls->gen != g) {
        /* We are a child of fork(): the records belong to the parent's threads, and the
         * references were reset by the atfork handler. Forget them without touching either. */
        tls->n = 0;
        tls->gen = g;
        tls_last = NULL;
    }
    return tls;
}

/* Leaves tables that were closed (by any thread) since this thread last looked. */
static void tls_sweep_closed(struct tls_state *s)
{
    size_t w = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (atomic_load_explicit(&s->ents[i].t->closed, memory_order_acquire))
            tls_drop(&s->ents[i], 1);
        else
            s->ents[w++] = s->ents[i];
    }
    s->n = w;
    tls_last = NULL;
}

static struct shm_self *self_slow(struct shm_table *t)
{
    struct tls_state *s = tls_state_get();
    if (!s) return NULL;
    tls_sweep_closed(s);
    for (size_t i = 0; i < s->n; i++)
        if (s->ents[i].uid == t->uid) {
            tls_last = &s->ents[i];
            tls_last_gen = s->gen;
            return &tls_last->self;
        }
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 4;
        struct tls_ent *ne = realloc(s->ents, cap * sizeof *ne);
        if (!ne) return NULL;
        s->ents = ne;
        s->cap = cap;
    }
    struct tls_ent *e = &s->ents[s->n];
    if (part_claim(t, &e->self) != SHM_OK) return NULL;
    e->t = t;
    e->uid = t->uid;
    atomic_fetch_add(&t->refs, 1);
    s->n++;
    tls_last = e;
    tls_last_gen = s->gen;
    return &e->self;
}

struct shm_self *shm_self_get(struct shm_table *t)
{
    struct tls_ent *e = tls_last;
    if (__builtin_expect(e && e->uid == t->uid && tls_last_gen == atomic_load_explicit(&fork_gen, memory_order_relaxed),
                         1))
        return &e->self;
    return self_slow(t);
}

void shm_self_leave(struct shm_table *t)
{
    struct tls_state *s = tls_state_get();
    if (!s) return;
    for (size_t i = 0; i < s->n; i++)
        if (s->ents[i].uid == t->uid) {
            tls_drop(&s->ents[i], 1);
            s->ents[i] = s->ents[--s->n];
            break;
        }
    tls_last = NULL;
}
