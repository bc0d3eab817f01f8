/*
 * redis_internal.h — what the three files of the Redis backend share, and nothing public.
 *
 *   redis.c          the operations, the entry encoding, URL and options, open/close, stats, clear
 *   redis_limit.c    rate-limit decisions: the Lua script, the limit states' encoding, their JSON
 *   redis_conn.c     connections and their pools, reconnect backoff, fork(), Sentinel discovery,
 *                    and rx_run: one command, routed, redirected and retried until it has a reply
 *   redis_cluster.c  CRC16 slot routing and the slot map, published to reader threads by RCU
 *   redis_scan.c     listing keys (traffic_scan): SCAN MATCH on every master; the SCAN walk that
 *                    clear and stats use too
 *
 * Ownership, from the handle down (see each struct for who may touch which field):
 *   rx_handle (one per traffic_open) -> rx_proc (one per process using the handle: a child after
 *   fork() builds its own and never touches its parent's) -> rx_node (one per server address,
 *   never freed before the proc) -> rx_conn (pool_size slots per node).
 */
#ifndef TRAFFIC_BACKENDS_REDIS_INTERNAL_H
#define TRAFFIC_BACKENDS_REDIS_INTERNAL_H

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#include "internal.h"

#define RX_SLOTS     16384 /* hash slots of a Redis Cluster */
#define RX_BYTES_TAG '='   /* first byte of a stored bytes value; counters are plain integers */
#define RX_LIMIT_TAG '!'   /* first byte of a rate-limit state (redis_limit.c) */
#define RX_RKEY_MAX  (TRAFFIC_REDIS_PREFIX_MAX + TRAFFIC_KEY_MAX) /* prefix + key, in bytes */
#define RX_ERR_LEN   200                                          /* a remembered connection error */
#define RX_ADDR_LEN  128 /* "host:port" or a socket path, as shown in messages */
#define RX_CMD_ARGS  12  /* the most arguments of one rx_cmd (the limit script's EVALSHA has 11) */

typedef enum rx_mode { RX_TCP, RX_UNIX, RX_SENTINEL, RX_CLUSTER } rx_mode;

typedef struct rx_addr {
    char *host;
    int port;
} rx_addr;

/* Everything the URL or the options said; immutable after open. */
typedef struct rx_config {
    rx_mode mode;
    rx_addr *seeds; /* TCP: the server; SENTINEL: the sentinels; CLUSTER: seed nodes */
    size_t nseeds;
    char *path;     /* UNIX: the socket */
    char *master;   /* SENTINEL: the master's name */
    char *user;     /* NULL: AUTH with the password alone */
    char *password; /* NULL: no AUTH */
    unsigned db;
    char *prefix;
    size_t prefix_len;
    int timeout_ms;     /* connect, and each reply */
    unsigned pool_size; /* connections per node per process */
} rx_config;

struct rx_node;

/* One pooled connection. `busy` and `ctx` change only under the node's mutex; the thread that
 * acquired a busy slot is the only one that uses ctx until it releases the slot. */
typedef struct rx_conn {
    struct rx_node *node;
    redisContext *ctx; /* NULL: not connected */
    uint64_t gen;      /* the node's address generation ctx was connected to */
    int busy;
    char addr[RX_ADDR_LEN]; /* where ctx is connected, for messages */
} rx_conn;

/* One server address and its pool. All fields under `mu`. For a Sentinel master the address
 * changes on failover: `gen` counts the addresses, and connections of an older one are closed
 * when next released or acquired. */
typedef struct rx_node {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* a slot was released */
    char *host;        /* TCP host, or the socket path of a UNIX node; NULL: not discovered yet */
    int port;          /* 0 for a UNIX node */
    uint64_t gen;
    int stale;           /* SENTINEL: ask the sentinels again before connecting */
    uint64_t discovered; /* SENTINEL: discoveries that found a master (a waiting thread uses it) */
    int64_t retry_at_ms; /* no new connection before this (backoff after a failed connect) */
    int backoff_ms;      /* 0: the last connect worked */
    int last_rc;         /* status of the last failed connect */
    char last_err[RX_ERR_LEN];
    unsigned waiting; /* threads waiting for a free slot */
    /* CLUSTER: a call to this node timed out or its connection broke, so the slot map may be
     * stale (a master that stops answering is failed over without refusing anything): the
     * next call routed here reloads the map first. Not under mu: any thread sets it, a reply
     * from the node clears it; relaxed, a hint that costs at most one reload when stale. */
    atomic_int suspect;
    rx_conn *conns;       /* pool_size slots */
    struct rx_node *next; /* the proc's node list; written once, under the proc's nodes_mu */
} rx_node;

/* The slot map of a cluster: replaced whole, never modified once published. */
typedef struct rx_map {
    uint64_t epoch; /* 1 for the first map of a proc, +1 for each refresh */
    rx_node *slot[RX_SLOTS];
    size_t nmasters;
    rx_node *masters[]; /* each node that serves a slot, once */
} rx_map;

/* The state of one process. Built lazily by the first call in a process (rx_proc_get) and used
 * only by threads of that process. */
typedef struct rx_proc {
    pid_t pid;
    pthread_mutex_t nodes_mu;   /* appends to `nodes` */
    rx_node *nodes;             /* append-only; freed with the proc */
    rx_node *master;            /* TCP, UNIX, SENTINEL: the one node; CLUSTER: NULL */
    pthread_mutex_t refresh_mu; /* one slot-map refresh or Sentinel discovery at a time */
    rx_node *map_source;        /* CLUSTER: the node that gave the current map, under refresh_mu */
    int64_t reload_at_ms;       /* CLUSTER: when the last reload started (rx_now_ms), under refresh_mu */
    rx_map *map;                /* CLUSTER: rcu_dereference inside rx_rcu_read_enter/leave;
                                 * replaced with rcu_assign_pointer under refresh_mu */
    struct rx_proc *parent;     /* the state inherited across fork(): never used nor closed here */
} rx_proc;

typedef struct rx_handle {
    traffic_backend base;
    rx_config cfg;
    char incr_sha[41];  /* SHA1 of the increment script, from SCRIPT LOAD at open */
    char limit_sha[41]; /* SHA1 of the rate-limit script, likewise */
    _Atomic(rx_proc *) proc;
    atomic_int no_backoff; /* redis_breaker_owned: a fallback= primary, whose breaker backs off */
    /* this handle's counts, in this process (traffic_stats) */
    _Atomic uint64_t hits, misses, sets, increments, deletes, decisions, denied;
} rx_handle;

/* One command for rx_run. */
typedef struct rx_cmd {
    int argc;
    const char *argv[RX_CMD_ARGS];
    size_t argvlen[RX_CMD_ARGS];
    int idempotent;     /* may be sent again when a connection broke before its reply */
    const char *script; /* argv[0] is EVALSHA: the script's body, sent with EVAL after NOSCRIPT */
} rx_cmd;

/* ---- redis.c -------------------------------------------------------------------------- */

/* buf (RX_RKEY_MAX bytes) = prefix + key; returns its length. */
static inline size_t rx_rkey(const rx_handle *h, const char *key, size_t klen, char *buf)
{
    memcpy(buf, h->cfg.prefix, h->cfg.prefix_len);
    memcpy(buf + h->cfg.prefix_len, key, klen);
    return h->cfg.prefix_len + klen;
}

/* Appends one argument to c (at most RX_CMD_ARGS). */
static inline void rx_cmd_arg(rx_cmd *c, const char *s, size_t len)
{
    c->argv[c->argc] = s;
    c->argvlen[c->argc] = len;
    c->argc++;
}

/* Adds one to a count of this handle's stats. */
static inline void rx_count(_Atomic uint64_t *c)
{
    atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

/* Frees r, a reply of an unexpected type or a server error nobody handled, and returns its
 * status with a message: WRONGTYPE is TRAFFIC_ETYPE, OOM TRAFFIC_EFULL, NOAUTH / NOPERM
 * TRAFFIC_EPERM, a transient refusal (rx_transient_error) TRAFFIC_EUNAVAILABLE, anything
 * else TRAFFIC_EIO with the server's text. */
int rx_unexpected(rx_handle *h, redisReply *r, const char *what, const char *key);

/* ---- redis_limit.c --------------------------------------------------------------------- */

/* SCRIPT LOAD of the rate-limit script on c (at open, on every master): sets h->limit_sha. */
int rx_limit_load(rx_handle *h, rx_conn *c);
/* The vtable's limit entry. */
int rx_limit(traffic_backend *b, const char *key, size_t klen, const traffic_rule *rule, int64_t cost, int64_t now_us,
             traffic_decision *out);
/* traffic_get of a key whose value v[0..n) starts with RX_LIMIT_TAG: the state as
 * limit_state_json prints it, into buf (cap bytes), its length in *len (TRAFFIC_ERANGE when
 * cap is too small, as for any value). TRAFFIC_ECORRUPT if v is not a well-formed state. */
int rx_limit_json(rx_handle *h, const char *key, const char *v, size_t n, void *buf, size_t cap, size_t *len);

/* ---- redis_scan.c ---------------------------------------------------------------------- */

#define RX_CURSOR_LEN 32 /* a SCAN cursor, NUL included (Redis's are at most 20 digits) */

/* One master's SCAN from cursor 0 to cursor 0, and what keeps it from never ending (a server
 * that never answers cursor 0: see rx_scan_step). A walk starts as {.cursor = "0"}. */
typedef struct rx_scan_walk {
    char cursor[RX_CURSOR_LEN];
    uint64_t steps;           /* SCAN replies so far */
    uint64_t allowed;         /* steps before DBSIZE is asked (again); 0: RX_SCAN_FREE_STEPS */
    uint64_t lap, lap_len;    /* Brent's cycle finding: steps since `seen`, and the lap's length */
    char seen[RX_CURSOR_LEN]; /* a cursor this walk returned, "" before the first */
} rx_scan_walk;

/* One step of w on c: SCAN w->cursor MATCH pattern COUNT RX_SCAN_COUNT. *out: the reply, whose
 * element[1] is an array of strings (the keys), w->cursor the next cursor ("0": the walk is
 * over). TRAFFIC_EIO for a reply of another shape, and for a walk that would never end. */
int rx_scan_step(rx_handle *h, rx_conn *c, rx_scan_walk *w, const char *pattern, redisReply **out);

/* The SCAN pattern of the keys under the prefix whose rest matches glob (NULL: all of them):
 * the prefix glob-escaped, then glob. malloc'd; NULL: out of memory. */
char *rx_scan_pattern(const rx_handle *h, const char *glob);
int rx_scan(traffic_backend *b, const char *glob, traffic_scan_fn fn, void *ctx);
int rx_reap(traffic_backend *b, uint64_t *removed); /* TRAFFIC_ENOTSUP: Redis expires keys itself */

/* ---- redis_conn.c ---------------------------------------------------------------------- */

int64_t rx_now_ms(void);
void rx_sleep_ms(int ms);

/* The calling process's state of h, built on the first call in a process. */
int rx_proc_get(rx_handle *h, rx_proc **out);
/* Frees p if it belongs to this process (connections closed); a parent's state is abandoned
 * (freed without closing or sending on its sockets). */
void rx_proc_free(rx_handle *h, rx_proc *p);
/* The node for host:port in p, created if new. NULL: out of memory. */
rx_node *rx_node_get(rx_handle *h, rx_proc *p, const char *host, int port);
/* A connected slot of n's pool, connecting if needed, waiting at most until deadline_ms. */
int rx_conn_acquire(rx_handle *h, rx_proc *p, rx_node *n, int64_t deadline_ms, rx_conn **out);
/* Gives the slot back; healthy == 0 closes its connection. */
void rx_conn_release(rx_conn *c, int healthy);
/* Appends one command, in the protocol's format, to *buf (a growing malloc'd buffer of *len
 * bytes): several make a pipeline for rx_conn_send. */
int rx_append_cmd(rx_handle *h, char **buf, size_t *len, int argc, const char **argv, const size_t *argvlen);
/* Sends the formatted command(s) buf[0..len) on c by deadline (ms of rx_now_ms). On failure
 * the server got at most a part: a command cut short is never run, but earlier whole ones of
 * a pipeline may have been. */
int rx_conn_send(rx_handle *h, rx_conn *c, const char *buf, size_t len, int64_t deadline);
/* Reads the next reply on c by deadline. */
int rx_conn_read(rx_handle *h, rx_conn *c, int64_t deadline, redisReply **out);
/* Sends one command on c and reads its reply (no routing, no retries), within the timeout. */
int rx_conn_command(rx_handle *h, rx_conn *c, int argc, const char **argv, const size_t *argvlen, redisReply **out);
/* The same, by deadline. */
int rx_conn_command_until(rx_handle *h, rx_conn *c, int64_t deadline, int argc, const char **argv,
                          const size_t *argvlen, redisReply **out);
/* The status of a refusal by the server: TRAFFIC_EPERM for NOAUTH and NOPERM (a missing or
 * insufficient login, an ACL), TRAFFIC_EUNAVAILABLE for a server at maxclients, else
 * `otherwise`. */
int rx_refusal_status(const char *err, int otherwise);
/* An error reply that says the server cannot do it now, not that the command is wrong: READONLY
 * (a replica), CLUSTERDOWN, TRYAGAIN, LOADING, MASTERDOWN, MOVED, ASK. */
int rx_transient_error(const char *err);
/* The error a server at maxclients answers a new connection with, before closing it. */
int rx_server_full(const char *err);
/* A TCP port, s[0..len) in decimal, 1..65535; -1 if it is anything else. */
int rx_parse_port(const char *s, size_t len);

/* Runs cmd for the key rkey (the prefixed key, which routes it in a cluster) and returns its
 * reply, which may be a server error the caller has to interpret. Handles the pool, NOSCRIPT,
 * MOVED/ASK, TRYAGAIN/CLUSTERDOWN/LOADING, READONLY (Sentinel failover) and broken
 * connections, within the handle's timeout. */
int rx_run(rx_handle *h, const char *rkey, size_t rklen, const rx_cmd *cmd, redisReply **out);
/* Cancellation: a thread cancelled at one of the many cancellation points of a call (the
 * wait for a pooled connection, poll, connect, close) would unwind through code without
 * cleanup handlers, leaving a node's mutex held (every later call hangs) or a connection busy
 * for ever. So rx_run, rx_each_master and close run with cancellation disabled; a cancel that
 * arrives meanwhile acts at the caller's next cancellation point after the call. */
int rx_nocancel(void); /* returns the state to restore */
void rx_cancel_restore(int old);
/* Calls fn with a connection to every master (one for TCP, UNIX, SENTINEL). Stops at the first
 * failure and returns it. */
int rx_each_master(rx_handle *h, int (*fn)(rx_handle *h, rx_conn *c, void *arg), void *arg);

/* ---- redis_cluster.c ------------------------------------------------------------------- */

/* The hash slot of a key: CRC16-XMODEM of the key, or of its {hashtag}, mod 16384. */
unsigned rx_key_slot(const char *key, size_t len);
/* The node serving slot (refreshing the map first if the proc has none yet); *epoch is the
 * map's, for rx_cluster_refresh. deadline: the calling operation's (ms of rx_now_ms). */
int rx_cluster_route(rx_handle *h, rx_proc *p, unsigned slot, int64_t deadline, rx_node **out, uint64_t *epoch);
/* Loads the slot map from CLUSTER SLOTS (asking hint first, then each known node once, each
 * with a share of the time left) unless a map newer than seen_epoch was published meanwhile;
 * gives up at deadline, waiting for another thread's reload included. A reload that only
 * suspects the map (a dead or silent node, CLUSTERDOWN, READONLY) is skipped, returning
 * TRAFFIC_OK, when the last one of the process started less than RX_RELOAD_GAP_MS ago;
 * `urgent` ones are not (a MOVED reply: hint; clear and stats; a process without a map). */
int rx_cluster_refresh(rx_handle *h, rx_proc *p, rx_node *hint, uint64_t seen_epoch, int urgent, int64_t deadline);
/* A malloc'd copy of the masters of a map loaded for this call (clear, stats, open). */
int rx_cluster_masters(rx_handle *h, rx_proc *p, int64_t deadline, rx_node ***out, size_t *n);
/* Frees p's map (p is being freed: no reader is left). */
void rx_cluster_free_map(rx_proc *p);
/* Tests only: a function every RCU reader calls inside its read-side section (NULL: none),
 * and whether a fork is waiting at the gate for readers to leave. */
extern _Atomic(void (*)(void)) rx_rcu_test_inside;
int rx_rcu_test_gate_closed(void);

#endif
