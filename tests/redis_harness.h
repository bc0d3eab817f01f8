/*
 * redis_harness.h — real redis-server and redis-sentinel processes for the Redis tests.
 *
 * Every server runs on a free loopback port (and, if asked, a unix socket) with its files in
 * one mkdtemp() directory of the test process, is started with fork+exec and stopped by its
 * pid. Nothing else is assumed to be running. Servers die with the process that started them
 * (PR_SET_PDEATHSIG), and an atexit handler kills, by pid, every server the exiting process
 * started, so a failed or timed-out test leaves nothing behind. Waits are bounded.
 */
#ifndef TRAFFIC_TESTS_REDIS_HARNESS_H
#define TRAFFIC_TESTS_REDIS_HARNESS_H

#include <hiredis/hiredis.h>
#include <sys/types.h>

#define RH_PATH 256

typedef struct rh_server {
    pid_t pid;          /* 0: not running */
    int port;           /* 0 before the first start: a free one is picked */
    int sentinel;       /* run as redis-sentinel */
    int unixsocket;     /* also listen on sock */
    char password[64];  /* the harness's own admin connections AUTH with it ("" = none) */
    char sock[RH_PATH]; /* the unix socket, when unixsocket */
    char conf[RH_PATH]; /* the config file (kept for restarts) */
    char extra[2048];   /* config lines appended to the defaults */
} rh_server;

/* The directory of this test process's servers (created on first use). */
const char *rh_dir(void);

/* Starts s (extra: config lines, may be NULL) and waits until it answers as itself (INFO
 * process_id: a server of another test program that took the port first is not ours).
 * Returns 0, or -1 with a message on stderr. */
int rh_start(rh_server *s, const char *extra);
/* Starts s again on the same port with the same config. */
int rh_restart(rh_server *s);
/* SIGKILL by pid, and reap. */
void rh_kill(rh_server *s);
/* Sends SIGSTOP / SIGCONT. */
void rh_pause(rh_server *s, int paused);

/* One command on a new connection to s (AUTH with s->password first); NULL on failure. */
redisReply *rh_cmd(const rh_server *s, const char *fmt, ...);
redisReply *rh_cmd_argv(const rh_server *s, int argc, const char **argv);
/* rh_cmd expecting an integer reply; LLONG_MIN if it is not one. */
long long rh_int(const rh_server *s, const char *fmt, ...);
/* rh_cmd expecting a string or status reply, copied into buf; -1 if it is not one. */
int rh_str(const rh_server *s, char *buf, size_t cap, const char *fmt, ...);

/* Master, replica and nsentinels sentinels monitoring it as "mymaster" (quorum 1, down after
 * 500 ms, failover timeout 2 s). password: requirepass of master and replica, or NULL. */
typedef struct rh_sentinel_set {
    rh_server master, replica, sentinels[3];
    int nsentinels;
} rh_sentinel_set;
int rh_sentinel_start(rh_sentinel_set *set, int nsentinels, const char *password);
void rh_sentinel_stop(rh_sentinel_set *set);

/* n cluster masters (no replicas), slots split evenly, waited for until cluster_state:ok. */
#define RH_CLUSTER_MAX 6
typedef struct rh_cluster {
    rh_server nodes[RH_CLUSTER_MAX];
    char ids[RH_CLUSTER_MAX][64];
    int master_of[RH_CLUSTER_MAX]; /* -1: a master; else the index of the node it replicates */
    int n;
    int node_timeout_ms;
} rh_cluster;
int rh_cluster_start(rh_cluster *c, int n);
/* The same with cluster-node-timeout node_timeout_ms (rh_cluster_start: 2000). */
int rh_cluster_start_timeout(rh_cluster *c, int n, int node_timeout_ms);
/* Adds node c->n to a running cluster: a replica of node `replica_of`, synced with it, or
 * (replica_of -1) a master without slots, known to every node. Returns its index, or -1. */
int rh_cluster_add(rh_cluster *c, int replica_of);
/* Waits until replica's replication offset has caught up with its master's; 0 or -1. */
int rh_wait_synced(const rh_server *master, const rh_server *replica, int ms);
void rh_cluster_stop(rh_cluster *c);
/* The index of the node that serves slot, or -1. */
int rh_cluster_owner(const rh_cluster *c, int slot);
/* Moves slot from node `from` to node `to` the way redis-cli --cluster reshard does:
 * SETSLOT IMPORTING / MIGRATING, MIGRATE in batches, SETSLOT NODE. between_batches (may be
 * NULL) runs after each MIGRATE batch. Returns the keys moved, or -1. */
int rh_cluster_move_slot(rh_cluster *c, int slot, int from, int to, void (*between_batches)(void *), void *arg);

/* A fresh key prefix "tag-<unique>:" (tu_name), in a static rotating buffer. */
const char *rh_prefix(const char *tag);

/* "redis://127.0.0.1:PORT" and friends, in a static rotating buffer. */
const char *rh_url(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
