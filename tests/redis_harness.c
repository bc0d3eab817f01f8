/* redis_harness.c — see redis_harness.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "redis_harness.h"
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define RH_READY_MS   10000 /* longest wait for a server to answer PING */
#define RH_CLUSTER_MS 20000 /* longest wait for a cluster to agree it is ok */
#define RH_MAX_PROCS  64

static char dir[RH_PATH];
static pid_t dir_owner;
static struct {
    pid_t pid, owner;
} procs[RH_MAX_PROCS];
static int nprocs;

/* atexit: kill what this process started (not what its parent did), then its directory. */
static void cleanup(void)
{
    pid_t me = getpid();
    for (int i = 0; i < nprocs; i++)
        if (procs[i].owner == me && procs[i].pid > 0) {
            kill(procs[i].pid, SIGKILL);
            waitpid(procs[i].pid, NULL, 0);
            procs[i].pid = 0;
        }
    if (dir[0] && dir_owner == me) tu_scratch_remove(dir);
}

const char *rh_dir(void)
{
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "/tmp/traffic-redis-XXXXXX");
        if (!mkdtemp(dir)) {
            perror("mkdtemp");
            abort();
        }
        dir_owner = getpid();
        srand((unsigned)getpid() ^ (unsigned)time(NULL));
        atexit(cleanup);
    }
    return dir;
}

static void track(pid_t pid)
{
    pid_t me = getpid();
    for (int i = 0; i < nprocs; i++)
        if (procs[i].pid == 0 || procs[i].owner != me) {
            procs[i].pid = pid;
            procs[i].owner = me;
            return;
        }
    if (nprocs < RH_MAX_PROCS) {
        procs[nprocs].pid = pid;
        procs[nprocs++].owner = me;
    }
}

static void untrack(pid_t pid)
{
    for (int i = 0; i < nprocs; i++)
        if (procs[i].pid == pid) procs[i].pid = 0;
}

/* ---- ports and config ------------------------------------------------------------------ */

static int port_free(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {
        .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int ok = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
    if (fd >= 0) close(fd);
    return ok;
}

/* A port that is free, and so is port + 10000 (a cluster node's bus); both below Linux's
 * default ephemeral range (32768-60999), so that no client socket takes one before a restart. */
static int pick_port(void)
{
    for (int i = 0; i < 1000; i++) {
        int p = 10000 + rand() % 12700;
        if (port_free(p) && port_free(p + 10000)) return p;
    }
    return -1;
}

static int write_conf(rh_server *s)
{
    char node[RH_PATH - 32];
    snprintf(node, sizeof node, "%.150s/n%d", rh_dir(), s->port);
    mkdir(node, 0700);
    snprintf(s->conf, sizeof s->conf, "%s/%s.conf", node, s->sentinel ? "sentinel" : "redis");
    if (s->unixsocket) snprintf(s->sock, sizeof s->sock, "%s/redis.sock", node);
    FILE *f = fopen(s->conf, "w");
    if (!f) return -1;
    fprintf(f, "port %d\nbind 127.0.0.1\ndir %s\nlogfile %s/log\ndaemonize no\n", s->port, node, node);
    if (!s->sentinel) fprintf(f, "save \"\"\nappendonly no\n");
    if (s->unixsocket) fprintf(f, "unixsocket %s\nunixsocketperm 700\n", s->sock);
    fprintf(f, "%s\n", s->extra);
    return fclose(f);
}

static pid_t spawn(const rh_server *s)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0) return pid;
    /* the server dies with us, whatever kills us */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    int null = open("/dev/null", O_RDWR);
    dup2(null, 0), dup2(null, 1), dup2(null, 2);
    for (int fd = 3; fd < 1024; fd++)
        close(fd); /* no client socket of the test stays open in a server */
    if (s->sentinel)
        execlp("redis-server", "redis-server", s->conf, "--sentinel", (char *)NULL);
    else
        execlp("redis-server", "redis-server", s->conf, (char *)NULL);
    _exit(127);
}

static void print_log(const rh_server *s)
{
    char path[RH_PATH + 8], line[512];
    snprintf(path, sizeof path, "%s/n%d/log", rh_dir(), s->port);
    FILE *f = fopen(path, "r");
    if (!f) return;
    fprintf(stderr, "--- %s ---\n", path);
    while (fgets(line, sizeof line, f))
        fputs(line, stderr);
    fclose(f);
}

static redisContext *connect_to(const rh_server *s, int ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", s->port, tv);
    if (!c || c->err) {
        if (c) redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    if (s->password[0]) {
        redisReply *r = redisCommand(c, "AUTH %s", s->password);
        int ok = r && r->type != REDIS_REPLY_ERROR;
        if (r) freeReplyObject(r);
        if (!ok) {
            redisFree(c);
            return NULL;
        }
    }
    return c;
}

/* Is the server behind c the process pid? Ports are picked free, but another test program
 * running at the same time may bind the same one first: our server then fails to start, and
 * a PING alone would take the other program's server for ours. A server that requires a
 * password we do not have (NOAUTH) cannot be asked; it counts as ours while pid lives. */
static int answered_by(redisContext *c, pid_t pid)
{
    redisReply *r = redisCommand(c, "INFO server");
    int ours = 0;
    if (r && r->type == REDIS_REPLY_STRING) {
        const char *p = strstr(r->str, "process_id:");
        ours = p && atol(p + strlen("process_id:")) == (long)pid;
    } else if (r && r->type == REDIS_REPLY_ERROR && !strncmp(r->str, "NOAUTH", 6)) {
        siginfo_t si = {0}; /* still running? (WNOWAIT: the caller reaps) */
        ours = waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == 0;
    }
    if (r) freeReplyObject(r);
    return ours;
}

static int wait_ready(rh_server *s)
{
    long long deadline = tu_now_ms() + RH_READY_MS;
    while (tu_now_ms() < deadline) {
        int st;
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            untrack(s->pid);
            s->pid = 0;
            return -1;
        }
        redisContext *c = connect_to(s, 200);
        int ready = c && answered_by(c, s->pid);
        if (c) redisFree(c);
        if (ready) return 0;
        tu_sleep_ms(20);
    }
    return -1;
}

static int start_once(rh_server *s)
{
    if (write_conf(s)) return -1;
    s->pid = spawn(s);
    if (s->pid < 0) return -1;
    track(s->pid);
    return wait_ready(s);
}

int rh_start(rh_server *s, const char *extra)
{
    snprintf(s->extra, sizeof s->extra, "%s", extra ? extra : "");
    int pick = s->port == 0;
    for (int attempt = 0; attempt < 4; attempt++) {
        if (pick && (s->port = pick_port()) < 0) return -1;
        if (start_once(s) == 0) return 0;
        if (s->pid) rh_kill(s);
        if (!pick) break; /* a port someone took between our check and the server's bind */
    }
    fprintf(stderr, "redis harness: could not start %s on port %d\n", s->sentinel ? "sentinel" : "server", s->port);
    print_log(s);
    return -1;
}

int rh_restart(rh_server *s)
{
    s->pid = spawn(s);
    if (s->pid < 0) return -1;
    track(s->pid);
    if (wait_ready(s) == 0) return 0;
    print_log(s);
    return -1;
}

void rh_kill(rh_server *s)
{
    if (s->pid <= 0) return;
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    untrack(s->pid);
    s->pid = 0;
}

void rh_pause(rh_server *s, int paused)
{
    if (s->pid > 0) kill(s->pid, paused ? SIGSTOP : SIGCONT);
}

/* ---- admin commands -------------------------------------------------------------------- */

static redisReply *vcmd(const rh_server *s, const char *fmt, va_list ap)
{
    redisContext *c = connect_to(s, 5000);
    if (!c) return NULL;
    redisReply *r = redisvCommand(c, fmt, ap);
    redisFree(c);
    return r;
}

redisReply *rh_cmd(const rh_server *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = vcmd(s, fmt, ap);
    va_end(ap);
    return r;
}

redisReply *rh_cmd_argv(const rh_server *s, int argc, const char **argv)
{
    redisContext *c = connect_to(s, 5000);
    if (!c) return NULL;
    redisReply *r = redisCommandArgv(c, argc, argv, NULL);
    redisFree(c);
    return r;
}

long long rh_int(const rh_server *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = vcmd(s, fmt, ap);
    va_end(ap);
    long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : LLONG_MIN;
    if (r) freeReplyObject(r);
    return v;
}

int rh_str(const rh_server *s, char *buf, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = vcmd(s, fmt, ap);
    va_end(ap);
    int ok = r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS);
    if (ok)
        snprintf(buf, cap, "%s", r->str);
    else if (r && r->type == REDIS_REPLY_ERROR)
        snprintf(buf, cap, "%s", r->str);
    if (r) freeReplyObject(r);
    return ok ? 0 : -1;
}

const char *rh_prefix(const char *tag)
{
    static char bufs[8][128];
    static int n;
    char *b = bufs[n++ % 8];
    snprintf(b, sizeof bufs[0], "%s:", tu_name(tag));
    return b;
}

const char *rh_url(const char *fmt, ...)
{
    static char bufs[8][1024];
    static int n;
    char *b = bufs[n++ % 8];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b, sizeof bufs[0], fmt, ap);
    va_end(ap);
    return b;
}

/* Waits until the INFO section of s contains want; 0 or -1. */
static int wait_info(const rh_server *s, const char *section, const char *want, int ms)
{
    long long deadline = tu_now_ms() + ms;
    while (tu_now_ms() < deadline) {
        redisReply *r = rh_cmd(s, "INFO %s", section);
        int ok = r && r->type == REDIS_REPLY_STRING && strstr(r->str, want);
        if (r) freeReplyObject(r);
        if (ok) return 0;
        tu_sleep_ms(50);
    }
    fprintf(stderr, "redis harness: port %d never showed \"%s\" in INFO %s\n", s->port, want, section);
    return -1;
}

static int array_len(const rh_server *s, const char *cmd)
{
    redisReply *r = rh_cmd(s, cmd);
    int n = r && r->type == REDIS_REPLY_ARRAY ? (int)r->elements : -1;
    if (r) freeReplyObject(r);
    return n;
}

/* ---- Sentinel -------------------------------------------------------------------------- */

int rh_sentinel_start(rh_sentinel_set *set, int nsentinels, const char *password)
{
    memset(set, 0, sizeof *set);
    set->nsentinels = nsentinels;
    char auth[256] = "", extra[1024];
    if (password) {
        snprintf(auth, sizeof auth, "requirepass %s\nmasterauth %s\n", password, password);
        snprintf(set->master.password, sizeof set->master.password, "%s", password);
        snprintf(set->replica.password, sizeof set->replica.password, "%s", password);
    }
    if (rh_start(&set->master, auth)) return -1;
    snprintf(extra, sizeof extra, "%sreplicaof 127.0.0.1 %d\n", auth, set->master.port);
    if (rh_start(&set->replica, extra) || wait_info(&set->replica, "replication", "master_link_status:up", 10000))
        return -1;
    for (int i = 0; i < nsentinels; i++) {
        rh_server *s = &set->sentinels[i];
        s->sentinel = 1;
        snprintf(extra, sizeof extra,
                 "sentinel monitor mymaster 127.0.0.1 %d 1\nsentinel down-after-milliseconds mymaster 500\n"
                 "sentinel failover-timeout mymaster 2000\n%s%s%s",
                 set->master.port, password ? "sentinel auth-pass mymaster " : "", password ? password : "",
                 password ? "\n" : "");
        if (rh_start(s, extra)) return -1;
    }
    /* Ready for a failover: every sentinel knows the replica and the other sentinels. */
    long long deadline = tu_now_ms() + 15000;
    for (int i = 0; i < nsentinels; i++) {
        while (array_len(&set->sentinels[i], "SENTINEL replicas mymaster") < 1 ||
               array_len(&set->sentinels[i], "SENTINEL sentinels mymaster") < nsentinels - 1) {
            if (tu_now_ms() > deadline) {
                fprintf(stderr, "redis harness: sentinels did not discover each other and the replica\n");
                return -1;
            }
            tu_sleep_ms(50);
        }
    }
    return 0;
}

void rh_sentinel_stop(rh_sentinel_set *set)
{
    for (int i = 0; i < set->nsentinels; i++)
        rh_kill(&set->sentinels[i]);
    rh_kill(&set->replica);
    rh_kill(&set->master);
}

/* ---- Cluster --------------------------------------------------------------------------- */

static int cluster_ok(const rh_cluster *c)
{
    char want[64];
    snprintf(want, sizeof want, "cluster_known_nodes:%d", c->n);
    for (int i = 0; i < c->n; i++) {
        redisReply *r = rh_cmd(&c->nodes[i], "CLUSTER INFO");
        int ok = r && r->type == REDIS_REPLY_STRING && strstr(r->str, "cluster_state:ok") && strstr(r->str, want);
        if (r) freeReplyObject(r);
        if (!ok || array_len(&c->nodes[i], "CLUSTER SLOTS") != c->n) return 0;
    }
    return 1;
}

static int cluster_node_start(rh_cluster *c, int i)
{
    char extra[256];
    snprintf(extra, sizeof extra, "cluster-enabled yes\ncluster-config-file nodes.conf\ncluster-node-timeout %d\n",
             c->node_timeout_ms);
    c->master_of[i] = -1;
    return rh_start(&c->nodes[i], extra) || rh_str(&c->nodes[i], c->ids[i], sizeof c->ids[i], "CLUSTER MYID") ? -1 : 0;
}

int rh_cluster_start_timeout(rh_cluster *c, int n, int node_timeout_ms)
{
    memset(c, 0, sizeof *c);
    c->n = n;
    c->node_timeout_ms = node_timeout_ms;
    for (int i = 0; i < n; i++) {
        if (cluster_node_start(c, i)) return -1;
        redisReply *r = rh_cmd(&c->nodes[i], "CLUSTER SET-CONFIG-EPOCH %d", i + 1);
        if (r) freeReplyObject(r);
        int lo = 16384 * i / n, hi = 16384 * (i + 1) / n - 1;
        if (rh_str(&c->nodes[i], (char[64]){0}, 64, "CLUSTER ADDSLOTSRANGE %d %d", lo, hi)) return -1;
    }
    for (int i = 1; i < n; i++)
        if (rh_str(&c->nodes[0], (char[64]){0}, 64, "CLUSTER MEET 127.0.0.1 %d", c->nodes[i].port)) return -1;
    long long deadline = tu_now_ms() + RH_CLUSTER_MS;
    while (!cluster_ok(c)) {
        if (tu_now_ms() > deadline) {
            fprintf(stderr, "redis harness: the cluster never reached cluster_state:ok\n");
            return -1;
        }
        tu_sleep_ms(50);
    }
    return 0;
}

int rh_cluster_start(rh_cluster *c, int n)
{
    return rh_cluster_start_timeout(c, n, 2000);
}

/* Does every node of c list node i in CLUSTER NODES (as a replica of `master` if >= 0)? */
static int cluster_knows(const rh_cluster *c, int i, int master)
{
    char want[160];
    snprintf(want, sizeof want, "%s ", c->ids[i]);
    for (int k = 0; k < c->n; k++) {
        redisReply *r = rh_cmd(&c->nodes[k], "CLUSTER NODES");
        const char *line = r && r->type == REDIS_REPLY_STRING ? strstr(r->str, want) : NULL;
        const char *end = line ? strchr(line, '\n') : NULL;
        int ok = line != NULL;
        if (ok && master >= 0) { /* "<id> <addr> <flags> <master id> ..." */
            char row[512];
            snprintf(row, sizeof row, "%.*s", end ? (int)(end - line) : 400, line);
            ok = strstr(row, c->ids[master]) != NULL && strstr(row, "slave") != NULL;
        }
        if (r) freeReplyObject(r);
        if (!ok) return 0;
    }
    return 1;
}

int rh_cluster_add(rh_cluster *c, int replica_of)
{
    if (c->n >= RH_CLUSTER_MAX) return -1;
    int i = c->n;
    if (cluster_node_start(c, i) ||
        rh_str(&c->nodes[0], (char[64]){0}, 64, "CLUSTER MEET 127.0.0.1 %d", c->nodes[i].port))
        return -1;
    c->n++;
    long long deadline = tu_now_ms() + RH_CLUSTER_MS;
    while (!cluster_knows(c, i, -1)) {
        if (tu_now_ms() > deadline) {
            fprintf(stderr, "redis harness: the cluster never learnt of node %d\n", c->nodes[i].port);
            return -1;
        }
        tu_sleep_ms(50);
    }
    for (;;) { /* it has learnt who serves every slot */
        redisReply *r = rh_cmd(&c->nodes[i], "CLUSTER INFO");
        int ok = r && r->type == REDIS_REPLY_STRING && strstr(r->str, "cluster_state:ok");
        if (r) freeReplyObject(r);
        if (ok) break;
        if (tu_now_ms() > deadline) {
            fprintf(stderr, "redis harness: node %d never reached cluster_state:ok\n", c->nodes[i].port);
            return -1;
        }
        tu_sleep_ms(50);
    }
    if (replica_of < 0) return i;
    char buf[256];
    while (rh_str(&c->nodes[i], buf, sizeof buf, "CLUSTER REPLICATE %s", c->ids[replica_of])) {
        if (tu_now_ms() > deadline) { /* "Unknown node" until gossip told it of the master */
            fprintf(stderr, "redis harness: CLUSTER REPLICATE: %s\n", buf);
            return -1;
        }
        tu_sleep_ms(50);
    }
    c->master_of[i] = replica_of;
    while (!cluster_knows(c, i, replica_of)) {
        if (tu_now_ms() > deadline) {
            fprintf(stderr, "redis harness: node %d never became a known replica\n", c->nodes[i].port);
            return -1;
        }
        tu_sleep_ms(50);
    }
    if (wait_info(&c->nodes[i], "replication", "master_link_status:up", RH_CLUSTER_MS)) return -1;
    return rh_wait_synced(&c->nodes[replica_of], &c->nodes[i], RH_CLUSTER_MS) ? -1 : i;
}

/* The value of "name:" in s's INFO section, or -1. */
static long long info_num(const rh_server *s, const char *section, const char *name)
{
    redisReply *r = rh_cmd(s, "INFO %s", section);
    long long v = -1;
    const char *p = r && r->type == REDIS_REPLY_STRING ? strstr(r->str, name) : NULL;
    if (p) v = atoll(p + strlen(name));
    if (r) freeReplyObject(r);
    return v;
}

int rh_wait_synced(const rh_server *master, const rh_server *replica, int ms)
{
    long long deadline = tu_now_ms() + ms;
    for (;;) {
        /* The replica's link must be up: before its first sync both offsets can read 0, and
         * "synced" then came back before the write was replicated (test_redis_faults flaked). */
        redisReply *r = rh_cmd(replica, "INFO replication");
        int up = r && r->type == REDIS_REPLY_STRING && strstr(r->str, "master_link_status:up");
        if (r) freeReplyObject(r);
        long long want = info_num(master, "replication", "master_repl_offset:");
        long long got = info_num(replica, "replication", "slave_repl_offset:");
        if (up && want >= 0 && got >= want) return 0;
        if (tu_now_ms() > deadline) {
            fprintf(stderr, "redis harness: replica %d stayed at offset %lld of %lld\n", replica->port, got, want);
            return -1;
        }
        tu_sleep_ms(20);
    }
}

void rh_cluster_stop(rh_cluster *c)
{
    for (int i = 0; i < c->n; i++)
        rh_kill(&c->nodes[i]);
}

int rh_cluster_owner(const rh_cluster *c, int slot)
{
    redisReply *r = rh_cmd(&c->nodes[0], "CLUSTER SLOTS");
    int owner = -1;
    for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        redisReply *e = r->element[i];
        if (e->element[0]->integer <= slot && slot <= e->element[1]->integer)
            for (int k = 0; k < c->n; k++)
                if (c->nodes[k].port == e->element[2]->element[1]->integer) owner = k;
    }
    if (r) freeReplyObject(r);
    return owner;
}

int rh_cluster_move_slot(rh_cluster *c, int slot, int from, int to, void (*between_batches)(void *), void *arg)
{
    rh_server *src = &c->nodes[from], *dst = &c->nodes[to];
    char buf[256];
    if (rh_str(dst, buf, sizeof buf, "CLUSTER SETSLOT %d IMPORTING %s", slot, c->ids[from]) ||
        rh_str(src, buf, sizeof buf, "CLUSTER SETSLOT %d MIGRATING %s", slot, c->ids[to])) {
        fprintf(stderr, "SETSLOT: %s\n", buf);
        return -1;
    }
    int moved = 0;
    for (;;) {
        redisReply *keys = rh_cmd(src, "CLUSTER GETKEYSINSLOT %d 5", slot);
        if (!keys || keys->type != REDIS_REPLY_ARRAY) return -1;
        size_t n = keys->elements;
        if (n == 0) {
            freeReplyObject(keys);
            break;
        }
        const char *argv[16];
        char port[16];
        snprintf(port, sizeof port, "%d", dst->port);
        int argc = 0;
        argv[argc++] = "MIGRATE", argv[argc++] = "127.0.0.1", argv[argc++] = port, argv[argc++] = "";
        argv[argc++] = "0", argv[argc++] = "5000", argv[argc++] = "KEYS";
        for (size_t i = 0; i < n; i++)
            argv[argc++] = keys->element[i]->str;
        redisReply *r = rh_cmd_argv(src, argc, argv);
        int ok = r && r->type == REDIS_REPLY_STATUS;
        if (!ok) fprintf(stderr, "MIGRATE: %s\n", r && r->str ? r->str : "no reply");
        if (r) freeReplyObject(r);
        freeReplyObject(keys);
        if (!ok) return -1;
        moved += (int)n;
        if (between_batches) between_batches(arg);
    }
    for (int i = 0; i < c->n; i++) {
        int k = i == 0 ? to : i == to ? 0 : i; /* the new owner first, as redis-cli does */
        if (c->master_of[k] >= 0) continue;    /* SETSLOT is for masters */
        if (rh_str(&c->nodes[k], buf, sizeof buf, "CLUSTER SETSLOT %d NODE %s", slot, c->ids[to])) {
            fprintf(stderr, "SETSLOT NODE on %d: %s\n", k, buf);
            return -1;
        }
    }
    return moved;
}
