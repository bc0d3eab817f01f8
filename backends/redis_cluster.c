/*
 * redis_cluster.c — Redis Cluster routing: the hash slot of a key, and the slot map that says
 * which master serves each slot, shared by every thread of a process without locks.
 *
 * The map is immutable once published. Readers (every cluster call) look a slot up inside an
 * RCU read-side section of liburcu's urcu-memb flavour and leave it with a node pointer; nodes
 * are never freed before their process state is, so the pointer outlives the section. A
 * refresh (after MOVED, a dead node, CLUSTERDOWN) builds a whole new map from CLUSTER SLOTS,
 * publishes it with rcu_assign_pointer under the proc's refresh_mu, waits for a grace period
 * (synchronize_rcu) and frees the old map. A refresh is skipped when the map the caller saw
 * has already been replaced, so a burst of MOVED replies costs one reload.
 *
 * Threads: urcu-memb requires every reader thread to be registered. A thread is registered on
 * its first cluster call (rx_rcu_read_enter) unless the application already registered it,
 * and unregistered by a pthread key destructor when it exits. A thread that never makes a
 * cluster call is never registered, and needs not be.
 *
 * fork(): urcu-memb keeps a registry of reader threads; fork() copies it into the child with
 * every thread but the forking one gone. If one of them was inside a read-side section, or a
 * grace period or (un)registration was half done, the child's first synchronize_rcu would wait
 * forever. So every registration, unregistration and synchronize_rcu of this library runs
 * under rx_rcu_admin, and a pthread_atfork handler takes rx_rcu_admin and closes a gate that readers
 * check on entry, then waits until no reader is inside. Readers never block on anything but
 * that gate, and only while some thread is forking.
 */
#define _LGPL_SOURCE /* the inline urcu-memb read side, and its per-thread reader record */
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <urcu/urcu-memb.h>

#include "redis_internal.h"

/* The shortest time between two slot-map reloads of a process that only suspect the map (a
 * dead or silent master, CLUSTERDOWN): without it, every call to a dead master's slots
 * reloaded it, and a call that kept meeting CLUSTERDOWN reloaded it a dozen times. A MOVED
 * reply, which proves the map wrong, is never held back (a burst of them still costs one
 * reload: see seen_epoch). go-redis waits 200 ms too. */
#define RX_RELOAD_GAP_MS 200

/* ---- slots ----------------------------------------------------------------------------- */

/* CRC16-XMODEM (polynomial 0x1021, initial value 0), as the Redis Cluster spec defines. */
static uint16_t crc16_xmodem(const unsigned char *s, size_t n)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < n; i++) {
        crc ^= (uint16_t)(s[i] << 8);
        for (int bit = 0; bit < 8; bit++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

unsigned rx_key_slot(const char *key, size_t len)
{
    /* Hashtag: between the first '{' and the first '}' after it, if that is not empty. */
    const char *open = memchr(key, '{', len);
    if (open) {
        const char *close = memchr(open + 1, '}', len - (size_t)(open + 1 - key));
        if (close && close > open + 1) {
            key = open + 1;
            len = (size_t)(close - key);
        }
    }
    return crc16_xmodem((const unsigned char *)key, len) & (RX_SLOTS - 1);
}

/* ---- RCU readers, registration and the fork gate --------------------------------------- */

typedef struct rx_rcu_thread {
    atomic_int inside;                 /* 1 from the gate check to after rcu_read_unlock; written by its thread */
    int registered_here;               /* we called urcu_memb_register_thread for this thread */
    struct rx_rcu_thread *prev, *next; /* every record, under rx_rcu_admin */
} rx_rcu_thread;

static pthread_mutex_t rx_rcu_admin = PTHREAD_MUTEX_INITIALIZER; /* see the top of the file */
static rx_rcu_thread *rx_rcu_threads;                            /* under rx_rcu_admin */
static atomic_int rx_rcu_fork_gate;                              /* 1 while a thread forks */
static _Thread_local rx_rcu_thread *rx_rcu_self;
static pthread_key_t rx_rcu_key;
static pthread_once_t rx_rcu_once = PTHREAD_ONCE_INIT;
static int rx_rcu_init_rc;

static void rx_rcu_unlink(rx_rcu_thread *t)
{
    if (t->prev)
        t->prev->next = t->next;
    else
        rx_rcu_threads = t->next;
    if (t->next) t->next->prev = t->prev;
}

static void rx_rcu_thread_exit(void *arg)
{
    rx_rcu_thread *t = arg;
    pthread_mutex_lock(&rx_rcu_admin);
    rx_rcu_unlink(t);
    if (t->registered_here) urcu_memb_unregister_thread();
    pthread_mutex_unlock(&rx_rcu_admin);
    rx_rcu_self = NULL;
    free(t);
}

static void rx_fork_prepare(void)
{
    pthread_mutex_lock(&rx_rcu_admin); /* no grace period nor (un)registration in progress */
    atomic_store(&rx_rcu_fork_gate, 1);
    for (rx_rcu_thread *t = rx_rcu_threads; t; t = t->next)
        while (atomic_load(&t->inside))
            sched_yield();
}

static void rx_fork_parent(void)
{
    atomic_store(&rx_rcu_fork_gate, 0);
    pthread_mutex_unlock(&rx_rcu_admin);
}

static void rx_fork_child(void)
{
    /* Only the forking thread exists here. The others stay in urcu's registry as readers that
     * are outside any read-side section (the gate made sure), which a grace period passes. */
    for (rx_rcu_thread *t = rx_rcu_threads, *next; t; t = next) {
        next = t->next;
        if (t != rx_rcu_self) {
            rx_rcu_unlink(t);
            free(t);
        }
    }
    atomic_store(&rx_rcu_fork_gate, 0);
    pthread_mutex_unlock(&rx_rcu_admin);
}

static void rx_rcu_init(void)
{
    if (pthread_key_create(&rx_rcu_key, rx_rcu_thread_exit) != 0 ||
        pthread_atfork(rx_fork_prepare, rx_fork_parent, rx_fork_child))
        rx_rcu_init_rc = TRAFFIC_ENOMEM;
}

static int rx_rcu_register(rx_handle *h)
{
    pthread_once(&rx_rcu_once, rx_rcu_init);
    if (rx_rcu_init_rc) return traffic_backend_fail(&h->base, rx_rcu_init_rc, "cannot set up the RCU thread key");
    rx_rcu_thread *t = calloc(1, sizeof *t);
    if (!t) return traffic_backend_fail(&h->base, TRAFFIC_ENOMEM, "out of memory");
    pthread_mutex_lock(&rx_rcu_admin);
    if (!URCU_TLS(urcu_memb_reader).registered) { /* else the application registered it */
        urcu_memb_register_thread();
        t->registered_here = 1;
    }
    t->next = rx_rcu_threads;
    if (rx_rcu_threads) rx_rcu_threads->prev = t;
    rx_rcu_threads = t;
    pthread_mutex_unlock(&rx_rcu_admin);
    pthread_setspecific(rx_rcu_key, t);
    rx_rcu_self = t;
    return TRAFFIC_OK;
}

/* Tests only (test_redis.c, t_cluster_fork_gate): when set, called by every thread inside its
 * read-side section, right after entering it, so that a test can hold a reader there while
 * another thread forks. NULL in every program but that test; set before the threads that
 * read it start. */
_Atomic(void (*)(void)) rx_rcu_test_inside; /* relaxed: a test sets it before its threads start */

/* Tests only: 1 while a thread is forking and waits for readers to leave (the gate is closed). */
int rx_rcu_test_gate_closed(void)
{
    return atomic_load(&rx_rcu_fork_gate);
}

static int rx_rcu_read_enter(rx_handle *h)
{
    if (!rx_rcu_self) {
        int rc = rx_rcu_register(h);
        if (rc) return rc;
    }
    rx_rcu_thread *t = rx_rcu_self;
    for (;;) { /* sequentially consistent, against rx_fork_prepare's store-then-load */
        atomic_store(&t->inside, 1);
        if (!atomic_load(&rx_rcu_fork_gate)) break;
        atomic_store(&t->inside, 0);
        while (atomic_load(&rx_rcu_fork_gate))
            sched_yield();
    }
    urcu_memb_read_lock();
    void (*test_inside)(void) = atomic_load_explicit(&rx_rcu_test_inside, memory_order_relaxed);
    if (test_inside) test_inside();
    return TRAFFIC_OK;
}

static void rx_rcu_read_leave(void)
{
    urcu_memb_read_unlock();
    atomic_store(&rx_rcu_self->inside, 0);
}

/* Waits until no reader can still hold a pointer into a map unpublished before this call. */
static void rx_rcu_synchronize(void)
{
    pthread_mutex_lock(&rx_rcu_admin);
    urcu_memb_synchronize_rcu();
    pthread_mutex_unlock(&rx_rcu_admin);
}

/* ---- the slot map ---------------------------------------------------------------------- */

/* Builds a map from a CLUSTER SLOTS reply got from `from` (whose host stands in for an empty
 * address). */
static int map_build(rx_handle *h, rx_proc *p, const redisReply *r, const char *from, rx_map **out)
{
    if (r->type != REDIS_REPLY_ARRAY)
        return traffic_backend_fail(&h->base, TRAFFIC_EIO, "CLUSTER SLOTS on %s: %s", from,
                                    r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
    rx_map *m = calloc(1, sizeof *m + r->elements * sizeof(rx_node *));
    if (!m) return traffic_backend_fail(&h->base, TRAFFIC_ENOMEM, "out of memory for the slot map");
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 || e->element[0]->type != REDIS_REPLY_INTEGER ||
            e->element[1]->type != REDIS_REPLY_INTEGER || e->element[2]->type != REDIS_REPLY_ARRAY ||
            e->element[2]->elements < 2 || e->element[2]->element[0]->type != REDIS_REPLY_STRING ||
            e->element[2]->element[1]->type != REDIS_REPLY_INTEGER || e->element[2]->element[1]->integer < 1 ||
            e->element[2]->element[1]->integer > 65535 || e->element[0]->integer < 0 ||
            e->element[1]->integer >= RX_SLOTS || e->element[0]->integer > e->element[1]->integer)
            continue; /* not a slot range we understand (a port 0: a unix socket to hiredis) */
        const redisReply *a = e->element[2];
        const char *host = a->element[0]->len ? a->element[0]->str : from;
        rx_node *n = rx_node_get(h, p, host, (int)a->element[1]->integer);
        if (!n) {
            free(m);
            return traffic_backend_fail(&h->base, TRAFFIC_ENOMEM, "out of memory for the slot map");
        }
        for (long long s = e->element[0]->integer; s <= e->element[1]->integer; s++)
            m->slot[s] = n;
        size_t k = 0;
        while (k < m->nmasters && m->masters[k] != n)
            k++;
        if (k == m->nmasters) m->masters[m->nmasters++] = n;
    }
    if (m->nmasters == 0) {
        free(m);
        return traffic_backend_fail(&h->base, TRAFFIC_EUNAVAILABLE, "CLUSTER SLOTS on %s: no slot is served", from);
    }
    *out = m;
    return TRAFFIC_OK;
}

/* CLUSTER SLOTS from node n, as a new map, by deadline. */
static int map_load_from(rx_handle *h, rx_proc *p, rx_node *n, int64_t deadline, rx_map **out)
{
    char host[256];
    pthread_mutex_lock(&n->mu);
    snprintf(host, sizeof host, "%s", n->host ? n->host : "");
    pthread_mutex_unlock(&n->mu);
    if (rx_now_ms() >= deadline) /* before taking a connection that we would not use */
        return traffic_backend_fail(&h->base, TRAFFIC_ETIMEDOUT, "no time left to ask %s for the slot map", host);
    rx_conn *c;
    int rc = rx_conn_acquire(h, p, n, deadline, &c);
    if (rc) return rc;
    const char *argv[2] = {"CLUSTER", "SLOTS"};
    size_t argvlen[2] = {7, 5};
    redisReply *r;
    rc = rx_conn_command_until(h, c, deadline, 2, argv, argvlen, &r);
    rx_conn_release(c, rc == TRAFFIC_OK);
    if (rc) return rc;
    atomic_store_explicit(&n->suspect, 0, memory_order_relaxed); /* it answers */
    rc = map_build(h, p, r, host, out);
    freeReplyObject(r);
    return rc;
}

/* Asks hint, then the node that gave the current map, then the other masters, then the seeds,
 * each node once, until deadline; suspect nodes (one that timed out may be frozen, and is
 * perhaps why we reload) come last. Each node gets an equal share of the time left, so that
 * one that accepts connections and never answers (stopped, hung) cannot use it all: the try
 * order is the same every time, and a node that times out is not backed off. Holds
 * refresh_mu. */
static int map_load(rx_handle *h, rx_proc *p, rx_node *hint, const rx_map *cur, int64_t deadline, rx_map **out)
{
    size_t nm = cur ? cur->nmasters : 0, total = 2 + nm + h->cfg.nseeds, n = 0;
    rx_node **order = malloc(total * sizeof *order);
    if (!order) return traffic_backend_fail(&h->base, TRAFFIC_ENOMEM, "out of memory");
    int rc = TRAFFIC_OK;
    for (size_t i = 0; i < total && !rc; i++) {
        rx_node *x = i == 0 ? hint : i == 1 ? p->map_source : i < 2 + nm ? cur->masters[i - 2] : NULL;
        if (i >= 2 + nm) {
            const rx_addr *s = &h->cfg.seeds[i - 2 - nm];
            if (!(x = rx_node_get(h, p, s->host, s->port)))
                rc = traffic_backend_fail(&h->base, TRAFFIC_ENOMEM, "out of memory");
        }
        size_t k = 0;
        while (k < n && order[k] != x)
            k++;
        if (x && k == n) order[n++] = x; /* a seed is usually one of the masters */
    }
    for (size_t i = 0, moved = 0; i + moved < n;) { /* stable: suspect nodes to the end */
        rx_node *x = order[i];
        if (!atomic_load_explicit(&x->suspect, memory_order_relaxed)) {
            i++;
            continue;
        }
        memmove(&order[i], &order[i + 1], (n - i - 1) * sizeof *order);
        order[n - 1] = x;
        moved++;
    }
    char last[RX_ERR_LEN] = "no node to ask";
    for (size_t i = 0; i < n && !rc; i++) {
        int64_t left = deadline - rx_now_ms();
        if (left <= 0) {
            rc = traffic_backend_fail(&h->base, TRAFFIC_ETIMEDOUT,
                                      "no cluster node gave its slot map before the call's timeout; last: %s", last);
            break;
        }
        int r = map_load_from(h, p, order[i], rx_now_ms() + left / (int64_t)(n - i) + (left < (int64_t)(n - i)), out);
        if (r == TRAFFIC_OK) {
            p->map_source = order[i];
            free(order);
            return TRAFFIC_OK;
        }
        if (r == TRAFFIC_ENOMEM || r == TRAFFIC_EPERM) rc = r;
        snprintf(last, sizeof last, "%s", traffic_errmsg(&h->base));
        if (i + 1 == n && !rc)
            rc = traffic_backend_fail(&h->base, r, "no cluster node gave its slot map; last: %s", last);
    }
    if (!n) rc = traffic_backend_fail(&h->base, TRAFFIC_EUNAVAILABLE, "no cluster node to ask for the slot map");
    free(order);
    return rc;
}

int rx_cluster_refresh(rx_handle *h, rx_proc *p, rx_node *hint, uint64_t seen_epoch, int urgent, int64_t deadline)
{
    /* Another thread's reload may be under way: wait for it no longer than this call may. */
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    int64_t left = deadline - rx_now_ms();
    if (left < 0) left = 0;
    until.tv_sec += (time_t)(left / 1000);
    until.tv_nsec += (long)(left % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) until.tv_sec++, until.tv_nsec -= 1000000000L;
    if (pthread_mutex_timedlock(&p->refresh_mu, &until) != 0)
        return traffic_backend_fail(&h->base, TRAFFIC_ETIMEDOUT,
                                    "another thread's reload of the slot map outlasted the call's timeout");
    rx_map *cur = rcu_dereference(p->map), *m = NULL;
    int64_t now = rx_now_ms();
    if ((cur && cur->epoch != seen_epoch) || /* replaced since the caller looked */
        (cur && !urgent && !hint && now - p->reload_at_ms < RX_RELOAD_GAP_MS)) {
        pthread_mutex_unlock(&p->refresh_mu);
        return TRAFFIC_OK;
    }
    p->reload_at_ms = now;
    int rc = map_load(h, p, hint, cur, deadline, &m);
    if (!rc) {
        m->epoch = (cur ? cur->epoch : 0) + 1;
        rcu_assign_pointer(p->map, m);
    }
    pthread_mutex_unlock(&p->refresh_mu);
    if (!rc && cur) {
        rx_rcu_synchronize(); /* no reader still looks into cur */
        free(cur);
    }
    return rc;
}

int rx_cluster_route(rx_handle *h, rx_proc *p, unsigned slot, int64_t deadline, rx_node **out, uint64_t *epoch)
{
    for (int pass = 0; pass < 2; pass++) {
        int rc = rx_rcu_read_enter(h);
        if (rc) return rc;
        rx_map *m = rcu_dereference(p->map);
        rx_node *n = m ? m->slot[slot] : NULL;
        uint64_t e = m ? m->epoch : 0;
        rx_rcu_read_leave();
        if (n) {
            *out = n;
            *epoch = e;
            return TRAFFIC_OK;
        }
        if (pass == 0 && (rc = rx_cluster_refresh(h, p, NULL, e, e == 0, deadline))) return rc; /* e 0: no map */
    }
    return traffic_backend_fail(&h->base, TRAFFIC_EUNAVAILABLE, "no node of the cluster serves slot %u", slot);
}

int rx_cluster_masters(rx_handle *h, rx_proc *p, int64_t deadline, rx_node ***out, size_t *n)
{
    /* clear and stats visit every master: a map that predates a node added and slots
     * resharded onto it would skip that node, and nothing (no MOVED) would tell. So they
     * reload it first; they are rare next to keyed calls, and one CLUSTER SLOTS is cheap. */
    int rc = rx_rcu_read_enter(h);
    if (rc) return rc;
    rx_map *m = rcu_dereference(p->map);
    uint64_t seen = m ? m->epoch : 0;
    rx_rcu_read_leave();
    if ((rc = rx_cluster_refresh(h, p, NULL, seen, 1, deadline))) return rc;
    if ((rc = rx_rcu_read_enter(h))) return rc;
    m = rcu_dereference(p->map);
    rx_node **copy = m ? malloc(m->nmasters * sizeof *copy) : NULL;
    if (copy) {
        memcpy(copy, m->masters, m->nmasters * sizeof *copy);
        *n = m->nmasters;
    }
    rx_rcu_read_leave();
    if (copy) {
        *out = copy;
        return TRAFFIC_OK;
    }
    return m ? traffic_backend_fail(&h->base, TRAFFIC_ENOMEM, "out of memory")
             : traffic_backend_fail(&h->base, TRAFFIC_EUNAVAILABLE, "the cluster has no slot map");
}

void rx_cluster_free_map(rx_proc *p)
{
    free(p->map);
    p->map = NULL;
}
