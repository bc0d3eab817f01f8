/*
 * redis_conn.c — connections of the Redis backend: per-process pools, reconnect backoff,
 * fork(), Sentinel discovery, and rx_run, which turns one command into one reply.
 *
 * The idea that keeps this safe across fork() and threads: all connection state hangs off an
 * rx_proc stamped with the pid that built it. Every call first compares that pid with its own
 * (rx_proc_get); a child sees a stranger's proc, builds a fresh one and swaps it in with one
 * compare-and-swap, so it never takes a lock, reads a socket or sends a byte that belongs to
 * its parent (the parent's mutexes may have been held by threads that do not exist in the
 * child). The parent's proc is abandoned: kept reachable, never freed nor closed here.
 *
 * A pool is pool_size slots per server (rx_node). A slot is either idle (ctx may be NULL) or
 * busy, owned by the one thread that acquired it. A connect that fails starts a back-off
 * window (RX_BACKOFF_MIN_MS, doubling up to RX_BACKOFF_MAX_MS) during which calls fail at once
 * with the status of that failure instead of hammering a dead server; the first call after
 * the window tries again, and a success ends the back-off. Nothing waits longer than the
 * handle's timeout for a slot, a connect or a reply.
 *
 * Writes go through send(MSG_NOSIGNAL) (hiredis 0.14 uses write(), whose SIGPIPE would kill
 * the caller when a server goes away); hiredis only parses replies.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "pid.h"
#include "redis_internal.h"

#define RX_BACKOFF_MIN_MS 25   /* first pause after a failed connect */
#define RX_BACKOFF_MAX_MS 1000 /* the pause doubles up to this */
#define RX_MAX_ATTEMPTS   16   /* tries of one command (redirects, retries) within the timeout */
#define RX_WAIT_MAX_MS    100  /* longest pause before retrying TRYAGAIN / CLUSTERDOWN / LOADING */
#define RX_AGAIN          1    /* run_once: try again (internal, never returned to users) */

/* ---- time ------------------------------------------------------------------------------ */

int64_t rx_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void rx_sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

static struct timeval tv_of_ms(int ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    return tv;
}

/* ---- one connection -------------------------------------------------------------------- */

/* The status for a context that failed (err_no: errno right after the failing call). */
static int ctx_status(const redisContext *ctx, int err_no)
{
    switch (ctx->err) {
    case REDIS_ERR_OOM: return TRAFFIC_ENOMEM;
    case REDIS_ERR_PROTOCOL: return TRAFFIC_EIO;
    case REDIS_ERR_EOF: return TRAFFIC_EUNAVAILABLE;
    default:
        if (err_no == EAGAIN || err_no == EWOULDBLOCK || err_no == ETIMEDOUT || strstr(ctx->errstr, "timed out") ||
            strstr(ctx->errstr, "temporarily unavailable"))
            return TRAFFIC_ETIMEDOUT;
        return TRAFFIC_EUNAVAILABLE;
    }
}

static int ctx_fail(rx_handle *h, const redisContext *ctx, int err_no, const char *what, const char *addr)
{
    int rc = ctx_status(ctx, err_no);
    return traffic_backend_fail(&h->base, rc, "%s %s: %s", what, addr,
                                ctx->err == REDIS_ERR_EOF ? "connection closed by the server" : ctx->errstr);
}

/* Marks ctx unusable (a reply may be half read, or a command half sent) and returns the
 * timeout. */
static int ctx_timed_out(rx_handle *h, redisContext *ctx, const char *what, const char *addr)
{
    ctx->err = REDIS_ERR_IO;
    snprintf(ctx->errstr, sizeof ctx->errstr, "timed out");
    return traffic_backend_fail(&h->base, TRAFFIC_ETIMEDOUT, "%s %s: no progress within the timeout (%d ms)", what,
                                addr, h->cfg.timeout_ms);
}

/* Waits until fd is ready for events or deadline passes: 1 ready, 0 timed out, -1 error. The
 * wait is against the call's deadline, not a socket timeout: a signal (a server's periodic
 * timer, with SA_RESTART or not) interrupts poll, which then waits for what is left, where a
 * read with SO_RCVTIMEO, retried after EINTR as hiredis does, would start a fresh timeout
 * each time and, with a timer firing more often than that, never time out. */
static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - rx_now_ms();
        if (left <= 0) return 0;
        struct pollfd pfd = {.fd = fd, .events = events};
        int n = poll(&pfd, 1, left > INT_MAX ? INT_MAX : (int)left);
        if (n > 0) return 1;
        if (n < 0 && errno != EINTR) return -1;
    }
}

static int ctx_send(rx_handle *h, redisContext *ctx, const char *addr, const char *buf, size_t len, int64_t deadline)
{
    while (len > 0) {
        ssize_t n = send(ctx->fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) { /* the socket's buffer is full */
            int ready = wait_fd(ctx->fd, POLLOUT, deadline);
            if (ready > 0) continue;
            if (ready == 0) return ctx_timed_out(h, ctx, "sending to", addr);
        }
        if (n <= 0) {
            int e = n < 0 ? errno : EPIPE;
            ctx->err = REDIS_ERR_IO; /* the context is unusable from now on */
            snprintf(ctx->errstr, sizeof ctx->errstr, "%s", strerror(e));
            return traffic_backend_fail(&h->base, TRAFFIC_EUNAVAILABLE, "sending to %s: %s", addr, strerror(e));
        }
        buf += n;
        len -= (size_t)n;
    }
    return TRAFFIC_OK;
}

/* The next reply on ctx, by deadline. hiredis only parses: a reply already buffered (the
 * second of a pipeline) is taken at once, else we wait for the socket (wait_fd) and feed what
 * one read() returns to its reader. */
static int ctx_read(rx_handle *h, redisContext *ctx, const char *addr, int64_t deadline, redisReply **out)
{
    for (;;) {
        void *r = NULL;
        if (redisGetReplyFromReader(ctx, &r) != REDIS_OK) return ctx_fail(h, ctx, 0, "reading from", addr);
        if (r) {
            *out = r;
            return TRAFFIC_OK;
        }
        int ready = wait_fd(ctx->fd, POLLIN, deadline);
        if (ready == 0) return ctx_timed_out(h, ctx, "reading from", addr);
        errno = 0;
        if (ready < 0 || redisBufferRead(ctx) != REDIS_OK) {
            int e = errno;
            if (!ctx->err) ctx->err = REDIS_ERR_IO, snprintf(ctx->errstr, sizeof ctx->errstr, "%s", strerror(e));
            return ctx_fail(h, ctx, e, "reading from", addr);
        }
    }
}

int rx_append_cmd(rx_handle *h, char **buf, size_t *len, int argc, const char **argv, const size_t *argvlen)
{
    char *cmd;
    int n = redisFormatCommandArgv(&cmd, argc, argv, argvlen);
    char *grown = n < 0 ? NULL : realloc(*buf, *len + (size_t)n);
    if (!grown) {
        if (n >= 0) redisFreeCommand(cmd);
        return traffic_backend_fail(&h->base, TRAFFIC_ENOMEM, "out of memory formatting a command");
    }
    memcpy(grown + *len, cmd, (size_t)n);
    redisFreeCommand(cmd);
    *buf = grown;
    *len += (size_t)n;
    return TRAFFIC_OK;
}

int rx_conn_send(rx_handle *h, rx_conn *c, const char *buf, size_t len, int64_t deadline)
{
    return ctx_send(h, c->ctx, c->addr, buf, len, deadline);
}

int rx_conn_read(rx_handle *h, rx_conn *c, int64_t deadline, redisReply **out)
{
    return ctx_read(h, c->ctx, c->addr, deadline, out);
}

int rx_conn_command_until(rx_handle *h, rx_conn *c, int64_t deadline, int argc, const char **argv,
                          const size_t *argvlen, redisReply **out)
{
    if (deadline <= rx_now_ms())
        return traffic_backend_fail(&h->base, TRAFFIC_ETIMEDOUT, "%s: no time left for %s", c->addr, argv[0]);
    char *buf = NULL;
    size_t len = 0;
    int rc = rx_append_cmd(h, &buf, &len, argc, argv, argvlen);
    if (!rc) rc = rx_conn_send(h, c, buf, len, deadline);
    free(buf);
    return rc ? rc : rx_conn_read(h, c, deadline, out);
}

int rx_conn_command(rx_handle *h, rx_conn *c, int argc, const char **argv, const size_t *argvlen, redisReply **out)
{
    return rx_conn_command_until(h, c, rx_now_ms() + h->cfg.timeout_ms, argc, argv, argvlen, out);
}

static void addr_of(char *buf, const char *host, int port)
{
    if (!host)
        snprintf(buf, RX_ADDR_LEN, "(master not yet known)");
    else if (!port)
        snprintf(buf, RX_ADDR_LEN, "%s", host);
    else
        snprintf(buf, RX_ADDR_LEN, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
}

int rx_refusal_status(const char *err, int otherwise)
{
    if (rx_server_full(err)) return TRAFFIC_EUNAVAILABLE;
    return strncmp(err, "NOAUTH", 6) == 0 || strncmp(err, "NOPERM", 6) == 0 ? TRAFFIC_EPERM : otherwise;
}

int rx_server_full(const char *err)
{
    /* What a server at maxclients writes to a new connection before closing it: the reply to
     * whatever the client sent first (AUTH, or a command), which it never read nor ran. */
    return strncmp(err, "ERR max number of clients reached", 33) == 0;
}

int rx_parse_port(const char *s, size_t len)
{
    long v = 0;
    if (len == 0 || len > 5) return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v >= 1 && v <= 65535 ? (int)v : -1;
}

int rx_transient_error(const char *err)
{
    static const char *const words[] = {"READONLY", "CLUSTERDOWN", "TRYAGAIN", "LOADING", "MASTERDOWN", "MOVED", "ASK"};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
        size_t n = strlen(words[i]);
        if (strncmp(err, words[i], n) == 0 && (err[n] == ' ' || err[n] == '\0')) return 1;
    }
    return 0;
}

/* The replies to conn_setup's pipeline, in order. *not_master: ROLE said the server is not a
 * master (Sentinel). */
static int setup_replies(rx_handle *h, redisContext *ctx, const char *addr, int64_t deadline, int *not_master)
{
    const rx_config *cf = &h->cfg;
    redisReply *r;
    int rc;
    if (cf->password) {
        if ((rc = ctx_read(h, ctx, addr, deadline, &r))) return rc;
        rc = r->type == REDIS_REPLY_ERROR
                 ? traffic_backend_fail(&h->base, rx_refusal_status(r->str, TRAFFIC_EPERM),
                                        "AUTH%s%s%s on %s refused: %s", cf->user ? " as \"" : "",
                                        cf->user ? cf->user : "", cf->user ? "\"" : "", addr, r->str)
                 : TRAFFIC_OK;
        freeReplyObject(r);
        if (rc) return rc;
    }
    if (cf->db) {
        if ((rc = ctx_read(h, ctx, addr, deadline, &r))) return rc;
        rc = r->type == REDIS_REPLY_ERROR ? traffic_backend_fail(&h->base, rx_refusal_status(r->str, TRAFFIC_EINVAL),
                                                                 "SELECT %u on %s: %s", cf->db, addr, r->str)
                                          : TRAFFIC_OK;
        freeReplyObject(r);
        if (rc) return rc;
    }
    if (cf->mode == RX_SENTINEL) {
        if ((rc = ctx_read(h, ctx, addr, deadline, &r))) return rc;
        if (r->type == REDIS_REPLY_ERROR)
            rc = traffic_backend_fail(&h->base, rx_refusal_status(r->str, TRAFFIC_EIO), "ROLE on %s: %s", addr, r->str);
        else if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 || r->element[0]->type != REDIS_REPLY_STRING ||
                 strcmp(r->element[0]->str, "master") != 0)
            *not_master = 1,
            rc = traffic_backend_fail(
                &h->base, TRAFFIC_EUNAVAILABLE,
                "%s, named master \"%s\" by the sentinels, is a %s (failover in progress?)", addr, cf->master,
                r->type == REDIS_REPLY_ARRAY && r->elements && r->element[0]->str ? r->element[0]->str
                                                                                  : "server of unknown role");
        freeReplyObject(r);
    }
    return rc;
}

/* AUTH, SELECT and, for a Sentinel master, ROLE: pipelined, one round trip. */
static int conn_setup(rx_handle *h, redisContext *ctx, const char *addr, int64_t deadline, int *not_master)
{
    const rx_config *cf = &h->cfg;
    char *buf = NULL, db[16];
    size_t len = 0;
    int rc = TRAFFIC_OK;
    if (cf->password) {
        const char *argv[3] = {"AUTH", cf->user ? cf->user : cf->password, cf->password};
        size_t argvlen[3] = {4, strlen(argv[1]), strlen(cf->password)};
        rc = rx_append_cmd(h, &buf, &len, cf->user ? 3 : 2, argv, argvlen);
    }
    if (!rc && cf->db) {
        const char *argv[2] = {"SELECT", db};
        size_t argvlen[2] = {6, (size_t)snprintf(db, sizeof db, "%u", cf->db)};
        rc = rx_append_cmd(h, &buf, &len, 2, argv, argvlen);
    }
    if (!rc && cf->mode == RX_SENTINEL) {
        const char *argv[1] = {"ROLE"};
        size_t argvlen[1] = {4};
        rc = rx_append_cmd(h, &buf, &len, 1, argv, argvlen);
    }
    if (!rc && len) rc = ctx_send(h, ctx, addr, buf, len, deadline);
    free(buf);
    return rc || !len ? rc : setup_replies(h, ctx, addr, deadline, not_master);
}

/* A connection to host:port (port 0: the unix socket host) by deadline, or a context whose err
 * says why not (NULL: out of memory). hiredis waits for the connect with poll() and gives up
 * when a signal interrupts it: then the connect starts again with the time left. */
static redisContext *ctx_connect(const char *host, int port, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - rx_now_ms();
        struct timeval tv = tv_of_ms(left < 1 ? 1 : (int)left);
        errno = 0;
        redisContext *ctx = port ? redisConnectWithTimeout(host, port, tv) : redisConnectUnixWithTimeout(host, tv);
        if (!ctx || !ctx->err || !strstr(ctx->errstr, strerror(EINTR)) || rx_now_ms() >= deadline) return ctx;
        redisFree(ctx);
    }
}

/* A new, set-up connection to host:port (port 0: the unix socket host), connecting within ms.
 * *not_master (set to 0 first): a Sentinel master's ROLE said it is not one. Reads and writes
 * wait with poll() against each call's deadline (wait_fd), so no socket timeout is set. */
static int conn_open(rx_handle *h, const char *host, int port, int ms, const char *addr, int *not_master,
                     redisContext **out)
{
    int64_t deadline = rx_now_ms() + ms;
    *not_master = 0;
    redisContext *ctx = ctx_connect(host, port, deadline);
    if (!ctx) return traffic_backend_fail(&h->base, TRAFFIC_ENOMEM, "out of memory connecting to %s", addr);
    int rc = TRAFFIC_OK;
    if (ctx->err) rc = ctx_fail(h, ctx, errno, "connecting to", addr);
    if (!rc) fcntl(ctx->fd, F_SETFD, FD_CLOEXEC); /* a program this process execs does not inherit it */
    /* The setup replies (AUTH, SELECT, ROLE) get what is left of this call's time. */
    if (!rc) rc = conn_setup(h, ctx, addr, deadline, not_master);
    if (rc) {
        redisFree(ctx);
        return rc;
    }
    *out = ctx;
    return TRAFFIC_OK;
}

/* ---- Sentinel -------------------------------------------------------------------------- */

/* Asks one sentinel where the master is, by deadline: host (cap bytes) and *port. */
static int ask_sentinel(rx_handle *h, const rx_addr *s, int64_t deadline, char *host, size_t cap, int *port)
{
    char addr[RX_ADDR_LEN];
    addr_of(addr, s->host, s->port);
    redisContext *ctx = ctx_connect(s->host, s->port, deadline);
    if (!ctx) return traffic_backend_fail(&h->base, TRAFFIC_ENOMEM, "out of memory connecting to %s", addr);
    int rc = ctx->err ? ctx_fail(h, ctx, errno, "connecting to sentinel", addr) : TRAFFIC_OK;
    redisReply *r = NULL;
    if (!rc) {
        char *buf = NULL;
        size_t len = 0;
        const char *argv[3] = {"SENTINEL", "get-master-addr-by-name", h->cfg.master};
        size_t argvlen[3] = {8, 23, strlen(h->cfg.master)};
        rc = rx_append_cmd(h, &buf, &len, 3, argv, argvlen);
        if (!rc) rc = ctx_send(h, ctx, addr, buf, len, deadline);
        free(buf);
        if (!rc) rc = ctx_read(h, ctx, addr, deadline, &r);
    }
    if (!rc) {
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[0]->type == REDIS_REPLY_STRING &&
            r->element[1]->type == REDIS_REPLY_STRING && r->element[0]->len < cap && r->element[0]->len > 0) {
            memcpy(host, r->element[0]->str, r->element[0]->len + 1);
            /* a port 0 would make hiredis take the host for a unix socket's path */
            if ((*port = rx_parse_port(r->element[1]->str, r->element[1]->len)) < 0)
                rc = traffic_backend_fail(&h->base, TRAFFIC_EUNAVAILABLE,
                                          "sentinel %s named the port \"%.16s\" for \"%s\"", addr, r->element[1]->str,
                                          h->cfg.master);
        } else if (r->type == REDIS_REPLY_ERROR) {
            rc = traffic_backend_fail(&h->base, TRAFFIC_EUNAVAILABLE, "sentinel %s: %s", addr, r->str);
        } else {
            rc = traffic_backend_fail(&h->base, TRAFFIC_EUNAVAILABLE, "sentinel %s knows no master named \"%s\"", addr,
                                      h->cfg.master);
        }
        freeReplyObject(r);
    }
    redisFree(ctx);
    return rc;
}

/* A Sentinel master's address is believed only once the server there says ROLE master: a
 * sentinel can be stale (partitioned, or not yet told of a failover) and name the demoted
 * master, and the honest ones listed after it must then be asked. So discovery asks the
 * sentinels in turn and connects to each answer until one is a master, giving each sentinel
 * an equal share of the time left for its question and that connect: a hung sentinel, or a
 * stale one naming a frozen server, cannot use up the call's timeout (the cluster's slot-map
 * reload splits its time the same way). One discovery at a time (refresh_mu); a thread that
 * waited for another's finds the node fresh and connects to the address found. */

/* Connects to the address n holds now. */
static int node_connect(rx_handle *h, rx_node *n, int64_t deadline, int *not_master, redisContext **ctx, uint64_t *gen,
                        char *addr)
{
    char host[256];
    pthread_mutex_lock(&n->mu);
    snprintf(host, sizeof host, "%s", n->host ? n->host : "");
    int port = n->port;
    *gen = n->gen;
    addr_of(addr, n->host, n->port);
    pthread_mutex_unlock(&n->mu);
    int64_t left = deadline - rx_now_ms();
    return conn_open(h, host, port, left < 1 ? 1 : (int)left, addr, not_master, ctx);
}

/* Makes host:port n's address (connections to another one close when next seen). */
static int node_move(rx_handle *h, rx_node *n, const char *host, int port, uint64_t *gen)
{
    pthread_mutex_lock(&n->mu);
    int same = n->host && strcmp(n->host, host) == 0 && n->port == port;
    char *copy = same ? n->host : strdup(host);
    if (copy && !same) {
        free(n->host);
        n->host = copy;
        n->port = port;
        n->gen++;
    }
    if (copy) n->stale = 0, n->discovered++;
    *gen = n->gen;
    pthread_mutex_unlock(&n->mu);
    return copy ? TRAFFIC_OK : traffic_backend_fail(&h->base, TRAFFIC_ENOMEM, "out of memory");
}

/* Takes p->refresh_mu, waiting no later than deadline. */
static int refresh_lock(rx_handle *h, rx_proc *p, int64_t deadline)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until); /* pthread_mutex_timedlock's clock */
    int64_t left = deadline - rx_now_ms();
    if (left < 0) left = 0;
    until.tv_sec += (time_t)(left / 1000);
    until.tv_nsec += (long)(left % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) until.tv_sec++, until.tv_nsec -= 1000000000L;
    if (pthread_mutex_timedlock(&p->refresh_mu, &until) == 0) return TRAFFIC_OK;
    return traffic_backend_fail(&h->base, TRAFFIC_ETIMEDOUT,
                                "another thread's search for the master \"%s\" outlasted the call's timeout",
                                h->cfg.master);
}

/* Asks the sentinels for a master that answers as one and connects to it (*ctx). seen: n's
 * count of discoveries when the caller found it stale or not a master. */
static int sentinel_discover(rx_handle *h, rx_proc *p, rx_node *n, uint64_t seen, int64_t deadline, redisContext **ctx,
                             uint64_t *gen, char *addr)
{
    int rc = refresh_lock(h, p, deadline), not_master;
    if (rc) return rc;
    pthread_mutex_lock(&n->mu);
    int found = !n->stale && n->discovered != seen; /* by the thread we waited for */
    pthread_mutex_unlock(&n->mu);
    if (found) {
        pthread_mutex_unlock(&p->refresh_mu);
        return node_connect(h, n, deadline, &not_master, ctx, gen, addr);
    }
    const size_t ns = h->cfg.nseeds;
    char host[256], tried[4][256 + 8], last[RX_ERR_LEN] = "no time left";
    size_t ntried = 0;
    rc = TRAFFIC_ETIMEDOUT;
    for (size_t i = 0; i < ns; i++) {
        int64_t now = rx_now_ms(), left = deadline - now;
        if (left <= 0) break;
        int64_t until = now + left / (int64_t)(ns - i) + (left < (int64_t)(ns - i));
        int port = 0;
        rc = ask_sentinel(h, &h->cfg.seeds[i], until, host, sizeof host, &port);
        if (rc == TRAFFIC_OK) {
            char key[256 + 8];
            snprintf(key, sizeof key, "%s %d", host, port);
            size_t k = 0;
            while (k < ntried && strcmp(tried[k], key) != 0)
                k++;
            if (k < ntried) { /* an answer already connected to (and not a master) */
                rc = TRAFFIC_EUNAVAILABLE; /* not OK: nothing connected on this turn (the fuzz replay
                                            * of two sentinels naming one non-master crashed here) */
                continue;
            }
            if (ntried < sizeof tried / sizeof tried[0]) snprintf(tried[ntried++], sizeof tried[0], "%s", key);
            addr_of(addr, host, port);
            int64_t share = until - rx_now_ms();
            rc = conn_open(h, host, port, share < 1 ? 1 : (int)share, addr, &not_master, ctx);
            if (rc == TRAFFIC_OK) {
                rc = node_move(h, n, host, port, gen);
                if (rc) redisFree(*ctx);
                break;
            }
        }
        if (rc == TRAFFIC_ENOMEM || rc == TRAFFIC_EPERM) break; /* the next sentinel changes nothing */
        snprintf(last, sizeof last, "%s", traffic_errmsg(&h->base));
    }
    pthread_mutex_unlock(&p->refresh_mu);
    if (rc == TRAFFIC_OK || rc == TRAFFIC_ENOMEM || rc == TRAFFIC_EPERM) return rc;
    return traffic_backend_fail(&h->base, rc == TRAFFIC_ETIMEDOUT ? rc : TRAFFIC_EUNAVAILABLE,
                                "no sentinel (of %zu) named a reachable master \"%s\"; last: %s", ns, h->cfg.master,
                                last);
}

/* A connection to the Sentinel master n: to the address it holds, unless stale or no longer
 * a master; then to the one discovery finds. */
static int sentinel_connect(rx_handle *h, rx_proc *p, rx_node *n, int64_t deadline, redisContext **ctx, uint64_t *gen,
                            char *addr)
{
    pthread_mutex_lock(&n->mu);
    int stale = n->stale || !n->host;
    uint64_t seen = n->discovered;
    pthread_mutex_unlock(&n->mu);
    if (!stale) {
        int not_master;
        int rc = node_connect(h, n, deadline, &not_master, ctx, gen, addr);
        if (rc == TRAFFIC_OK || !not_master) return rc;
    }
    return sentinel_discover(h, p, n, seen, deadline, ctx, gen, addr);
}

/* ---- nodes and their pools ------------------------------------------------------------- */

static rx_node *node_new(rx_handle *h, const char *host, int port)
{
    rx_node *n = calloc(1, sizeof *n);
    if (!n) return NULL;
    n->conns = calloc(h->cfg.pool_size, sizeof *n->conns);
    n->host = host ? strdup(host) : NULL;
    if (!n->conns || (host && !n->host)) {
        free(n->conns);
        free(n->host);
        free(n);
        return NULL;
    }
    n->port = port;
    n->stale = h->cfg.mode == RX_SENTINEL;
    for (unsigned i = 0; i < h->cfg.pool_size; i++)
        n->conns[i].node = n;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&n->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&n->mu, NULL);
    return n;
}

static void node_free(rx_handle *h, rx_node *n)
{
    for (unsigned i = 0; i < h->cfg.pool_size; i++)
        if (n->conns[i].ctx) redisFree(n->conns[i].ctx);
    pthread_mutex_destroy(&n->mu);
    pthread_cond_destroy(&n->cv);
    free(n->conns);
    free(n->host);
    free(n);
}

rx_node *rx_node_get(rx_handle *h, rx_proc *p, const char *host, int port)
{
    pthread_mutex_lock(&p->nodes_mu);
    rx_node *n, **tail = &p->nodes;
    for (n = p->nodes; n; tail = &n->next, n = n->next) {
        pthread_mutex_lock(&n->mu);
        int same = n->port == port && n->host && strcmp(n->host, host) == 0;
        pthread_mutex_unlock(&n->mu);
        if (same) break;
    }
    if (!n && (n = node_new(h, host, port)) != NULL) *tail = n;
    pthread_mutex_unlock(&p->nodes_mu);
    return n;
}

/* A broken or timed-out connection, or READONLY: a Sentinel master is asked for again before
 * reconnecting; a cluster node's slots are looked up again before the next call to it. */
static void node_suspect(rx_handle *h, rx_node *n)
{
    if (h->cfg.mode == RX_CLUSTER) atomic_store_explicit(&n->suspect, 1, memory_order_relaxed);
    if (h->cfg.mode != RX_SENTINEL) return;
    pthread_mutex_lock(&n->mu);
    n->stale = 1;
    pthread_mutex_unlock(&n->mu);
}

/* Closes n's connections: idle ones when next picked, busy ones when released (their gen is
 * older). */
static void node_forget(rx_node *n)
{
    pthread_mutex_lock(&n->mu);
    n->gen++;
    pthread_mutex_unlock(&n->mu);
}

/* After a failed connect (n->mu held): start or lengthen the back-off, remember why. */
static void node_failed(rx_handle *h, rx_node *n, int rc)
{
    n->backoff_ms = n->backoff_ms ? n->backoff_ms * 2 : RX_BACKOFF_MIN_MS;
    if (n->backoff_ms > RX_BACKOFF_MAX_MS) n->backoff_ms = RX_BACKOFF_MAX_MS;
    n->retry_at_ms = rx_now_ms() + n->backoff_ms;
    n->last_rc = rc;
    snprintf(n->last_err, sizeof n->last_err, "%s", traffic_errmsg(&h->base));
    if (h->cfg.mode == RX_SENTINEL) n->stale = 1;
}

/* An idle connection is still good if the server sent nothing (no EOF, no reset) meanwhile. */
static int conn_alive(const redisContext *ctx)
{
    struct pollfd pfd = {.fd = ctx->fd, .events = POLLIN};
    return ctx->err == 0 && poll(&pfd, 1, 0) == 0;
}

/* With n->mu held: a reusable idle slot (*ready, now busy) or else an empty one (*empty),
 * waiting until deadline while every slot is busy. */
static int pool_pick(rx_handle *h, rx_node *n, int64_t deadline, rx_conn **ready, rx_conn **empty)
{
    for (;;) {
        *ready = *empty = NULL;
        for (unsigned i = 0; i < h->cfg.pool_size; i++) {
            rx_conn *c = &n->conns[i];
            if (c->busy) continue;
            if (c->ctx && c->gen == n->gen && !n->stale && conn_alive(c->ctx)) {
                c->busy = 1;
                *ready = c;
                return TRAFFIC_OK;
            }
            if (c->ctx) redisFree(c->ctx);
            c->ctx = NULL;
            if (!*empty) *empty = c;
        }
        if (*empty) return TRAFFIC_OK;
        int64_t now = rx_now_ms();
        if (now >= deadline) {
            char addr[RX_ADDR_LEN];
            addr_of(addr, n->host, n->port);
            return traffic_backend_fail(&h->base, TRAFFIC_ETIMEDOUT, "all %u connections to %s stayed busy for %d ms",
                                        h->cfg.pool_size, addr, h->cfg.timeout_ms);
        }
        struct timespec ts = {.tv_sec = deadline / 1000, .tv_nsec = (long)(deadline % 1000) * 1000000L};
        n->waiting++;
        pthread_cond_timedwait(&n->cv, &n->mu, &ts);
        n->waiting--;
    }
}

/* Connects the empty slot c of n (marked busy by the caller, n->mu not held). */
static int pool_connect(rx_handle *h, rx_proc *p, rx_node *n, rx_conn *c, int64_t deadline)
{
    redisContext *ctx = NULL;
    uint64_t gen = 0;
    char addr[RX_ADDR_LEN];
    int not_master, rc = h->cfg.mode == RX_SENTINEL ? sentinel_connect(h, p, n, deadline, &ctx, &gen, addr)
                                                    : node_connect(h, n, deadline, &not_master, &ctx, &gen, addr);
    pthread_mutex_lock(&n->mu);
    if (rc) {
        node_failed(h, n, rc);
        c->busy = 0;
        if (n->waiting) pthread_cond_signal(&n->cv);
    } else {
        n->backoff_ms = 0;
        n->retry_at_ms = 0;
        c->ctx = ctx;
        c->gen = gen;
        memcpy(c->addr, addr, sizeof addr);
    }
    pthread_mutex_unlock(&n->mu);
    return rc;
}

int rx_conn_acquire(rx_handle *h, rx_proc *p, rx_node *n, int64_t deadline, rx_conn **out)
{
    rx_conn *ready, *empty;
    pthread_mutex_lock(&n->mu);
    int rc = pool_pick(h, n, deadline, &ready, &empty);
    if (rc || ready) {
        pthread_mutex_unlock(&n->mu);
        *out = ready;
        return rc;
    }
    int64_t wait = n->retry_at_ms - rx_now_ms();
    if (wait > 0 && !atomic_load_explicit(&h->no_backoff, memory_order_relaxed)) { /* backing off: fail at once */
        char msg[RX_ERR_LEN];
        memcpy(msg, n->last_err, sizeof msg);
        rc = n->last_rc;
        pthread_mutex_unlock(&n->mu);
        return traffic_backend_fail(&h->base, rc, "%s (next try in %lld ms)", msg, (long long)wait);
    }
    empty->busy = 1;
    pthread_mutex_unlock(&n->mu);
    rc = pool_connect(h, p, n, empty, deadline);
    *out = rc ? NULL : empty;
    return rc;
}

void rx_conn_release(rx_conn *c, int healthy)
{
    rx_node *n = c->node;
    pthread_mutex_lock(&n->mu);
    if (c->ctx && (!healthy || c->ctx->err || c->gen != n->gen)) {
        redisFree(c->ctx);
        c->ctx = NULL;
    }
    c->busy = 0;
    if (n->waiting) pthread_cond_signal(&n->cv);
    pthread_mutex_unlock(&n->mu);
}

/* ---- processes and fork() -------------------------------------------------------------- */

/* States of parents, inherited across fork(): kept reachable here, never touched again. */
typedef struct rx_abandoned {
    rx_proc *p;
    struct rx_abandoned *next;
} rx_abandoned;
static _Atomic(rx_abandoned *) abandoned_procs;

static void proc_abandon(rx_proc *p)
{
    rx_abandoned *a = malloc(sizeof *a);
    if (!a) return; /* then p is merely unreachable; it is never touched either way */
    a->p = p;
    a->next = atomic_load(&abandoned_procs);
    while (!atomic_compare_exchange_weak(&abandoned_procs, &a->next, a)) {
    }
}

static int proc_new(rx_handle *h, rx_proc *parent, rx_proc **out)
{
    rx_proc *p = calloc(1, sizeof *p);
    if (!p) return traffic_backend_fail(&h->base, TRAFFIC_ENOMEM, "out of memory");
    p->pid = tr_pid();
    pthread_mutex_init(&p->nodes_mu, NULL);
    pthread_mutex_init(&p->refresh_mu, NULL);
    const rx_config *cf = &h->cfg;
    if (cf->mode != RX_CLUSTER) {
        const char *host = cf->mode == RX_UNIX ? cf->path : cf->mode == RX_TCP ? cf->seeds[0].host : NULL;
        p->master = p->nodes = node_new(h, host, cf->mode == RX_TCP ? cf->seeds[0].port : 0);
        if (!p->master) {
            free(p);
            return traffic_backend_fail(&h->base, TRAFFIC_ENOMEM, "out of memory");
        }
    }
    p->parent = parent;
    *out = p;
    return TRAFFIC_OK;
}

int rx_proc_get(rx_handle *h, rx_proc **out)
{
    rx_proc *p = atomic_load_explicit(&h->proc, memory_order_acquire);
    if (p && p->pid == tr_pid()) {
        *out = p;
        return TRAFFIC_OK;
    }
    /* First call of this process (or of the handle): build our own state. p, if any, is the
     * parent's; it becomes our `parent` and is never used. */
    rx_proc *mine = NULL;
    int rc = proc_new(h, p, &mine);
    if (rc) return rc;
    if (atomic_compare_exchange_strong_explicit(&h->proc, &p, mine, memory_order_acq_rel, memory_order_acquire)) {
        *out = mine;
        return TRAFFIC_OK;
    }
    mine->parent = NULL; /* another thread of this process won: use its state */
    rx_proc_free(h, mine);
    *out = p;
    return TRAFFIC_OK;
}

void rx_proc_free(rx_handle *h, rx_proc *p)
{
    if (p->pid != tr_pid()) { /* a parent's: never close, never send, never lock */
        proc_abandon(p);
        return;
    }
    if (p->parent) proc_abandon(p->parent);
    rx_cluster_free_map(p);
    for (rx_node *n = p->nodes, *next; n; n = next) {
        next = n->next;
        node_free(h, n);
    }
    pthread_mutex_destroy(&p->nodes_mu);
    pthread_mutex_destroy(&p->refresh_mu);
    free(p);
}

/* ---- one command, start to reply ------------------------------------------------------- */

typedef struct run_state {
    rx_handle *h;
    rx_proc *p;
    const rx_cmd *cmd;
    int64_t deadline;
    unsigned slot;     /* CLUSTER: the key's */
    rx_node *target;   /* set by MOVED / ASK / NOSCRIPT: the node of the next try, else routed */
    uint64_t epoch;    /* of the slot map the route came from */
    int rerouted;      /* CLUSTER: the map was reloaded because the routed node was suspect */
    int down_reloaded; /* CLUSTER: the map was reloaded after CLUSTERDOWN */
    int role_retries;  /* READONLY seen: tried again once on a fresh connection */
    int asking;        /* send ASKING first */
    int use_eval;      /* NOSCRIPT seen: send EVAL with the body */
    int waits, down_retries;
    int last_rc; /* why the last try failed, if the command gives up */
    char last[RX_ERR_LEN];
} run_state;

static void remember(run_state *st, int rc, const char *msg)
{
    st->last_rc = rc;
    snprintf(st->last, sizeof st->last, "%s", msg);
}

static int send_command(run_state *st, rx_conn *c)
{
    const rx_cmd *cmd = st->cmd;
    const char *argv[RX_CMD_ARGS];
    size_t argvlen[RX_CMD_ARGS];
    memcpy(argv, cmd->argv, sizeof argv);
    memcpy(argvlen, cmd->argvlen, sizeof argvlen);
    if (st->use_eval) {
        argv[0] = "EVAL", argvlen[0] = 4;
        argv[1] = cmd->script, argvlen[1] = strlen(cmd->script);
    }
    char *buf = NULL;
    size_t len = 0;
    static const char *asking[1] = {"ASKING"};
    static const size_t asking_len[1] = {6};
    int rc = st->asking ? rx_append_cmd(st->h, &buf, &len, 1, asking, asking_len) : TRAFFIC_OK;
    if (!rc) rc = rx_append_cmd(st->h, &buf, &len, cmd->argc, argv, argvlen);
    if (!rc) rc = rx_conn_send(st->h, c, buf, len, st->deadline);
    free(buf);
    return rc;
}

/* Reads the command's reply(ies) within the call's deadline. */
static int read_reply(run_state *st, rx_conn *c, redisReply **out)
{
    int rc = TRAFFIC_OK;
    if (st->asking) {
        redisReply *ok;
        rc = rx_conn_read(st->h, c, st->deadline, &ok);
        if (!rc) freeReplyObject(ok);
    }
    return rc ? rc : rx_conn_read(st->h, c, st->deadline, out);
}

enum { RE_REPLY, RE_NOSCRIPT, RE_MOVED, RE_ASK, RE_WAIT, RE_ROLE, RE_FULL };

static int is_error(const redisReply *r, const char *word)
{
    size_t n = strlen(word);
    return strncmp(r->str, word, n) == 0 && (r->str[n] == ' ' || r->str[n] == '\0');
}

static int classify(const redisReply *r)
{
    if (r->type != REDIS_REPLY_ERROR) return RE_REPLY;
    if (is_error(r, "NOSCRIPT")) return RE_NOSCRIPT;
    if (is_error(r, "MOVED")) return RE_MOVED;
    if (is_error(r, "ASK")) return RE_ASK;
    if (is_error(r, "TRYAGAIN") || is_error(r, "CLUSTERDOWN") || is_error(r, "LOADING") || is_error(r, "MASTERDOWN"))
        return RE_WAIT;
    if (is_error(r, "READONLY")) return RE_ROLE;
    if (rx_server_full(r->str)) return RE_FULL;
    return RE_REPLY;
}

/* The node of "MOVED|ASK <slot> <host>:<port>" (an empty host: the one that answered). */
static int redirect_target(run_state *st, const redisReply *r, rx_node *from, rx_node **out)
{
    const char *sp = strchr(r->str, ' ');
    sp = sp ? strchr(sp + 1, ' ') : NULL;
    const char *colon = sp ? strrchr(sp + 1, ':') : NULL;
    if (!colon || !colon[1])
        return traffic_backend_fail(&st->h->base, TRAFFIC_EIO, "cannot parse the redirect \"%s\"", r->str);
    char host[256];
    if (colon == sp + 1) {
        pthread_mutex_lock(&from->mu);
        snprintf(host, sizeof host, "%s", from->host ? from->host : "");
        pthread_mutex_unlock(&from->mu);
    } else {
        snprintf(host, sizeof host, "%.*s", (int)(colon - sp - 1), sp + 1);
    }
    int port = rx_parse_port(colon + 1, strlen(colon + 1));
    if (port < 0) return traffic_backend_fail(&st->h->base, TRAFFIC_EIO, "bad port in the redirect \"%s\"", r->str);
    *out = rx_node_get(st->h, st->p, host, port);
    return *out ? TRAFFIC_OK : traffic_backend_fail(&st->h->base, TRAFFIC_ENOMEM, "out of memory");
}

/* Node n could not be reached, or its connection broke or timed out before the command ran. A
 * cluster node that timed out is suspect: the next call routed to it reloads the slot map
 * (there is no time left in this one). */
static int after_failure(run_state *st, rx_node *n, int rc, int from_acquire)
{
    rx_handle *h = st->h;
    remember(st, rc, traffic_errmsg(&h->base));
    if (rc == TRAFFIC_ETIMEDOUT) node_suspect(h, n);
    if (rc == TRAFFIC_ETIMEDOUT || rc == TRAFFIC_ENOMEM || rc == TRAFFIC_EPERM || rc == TRAFFIC_EINVAL) return rc;
    st->target = NULL;
    st->asking = 0;
    if (h->cfg.mode == RX_CLUSTER) { /* perhaps a failover moved its slots: reload the map once */
        if (st->down_retries++) return rc;
        int r2 = rx_cluster_refresh(h, st->p, NULL, st->epoch, 0, st->deadline);
        return r2 ? rc : RX_AGAIN;
    }
    /* One server: a connect that just failed would fail again; a broken pooled connection
     * is worth one more try on a fresh one. */
    return from_acquire || st->down_retries++ ? rc : RX_AGAIN;
}

static int on_error_reply(run_state *st, redisReply *r, rx_node *n, const char *c_addr, redisReply **out)
{
    rx_handle *h = st->h;
    int kind = classify(r), rc = RX_AGAIN, cluster = h->cfg.mode == RX_CLUSTER;
    switch (kind) {
    case RE_NOSCRIPT:
        if (!st->cmd->script || st->use_eval) {
            kind = RE_REPLY;
            break;
        }
        st->use_eval = 1; /* EVAL runs the body and caches it for the next EVALSHA */
        st->target = n;
        break;
    case RE_MOVED:
    case RE_ASK:
        if (!cluster) { /* a cluster node behind a non-cluster URL: say so */
            kind = RE_REPLY;
            break;
        }
        remember(st, TRAFFIC_EUNAVAILABLE, r->str);
        rc = redirect_target(st, r, n, &st->target);
        st->asking = kind == RE_ASK;
        if (!rc && kind == RE_MOVED) rx_cluster_refresh(h, st->p, st->target, st->epoch, 1, st->deadline);
        if (!rc) rc = RX_AGAIN;
        break;
    case RE_WAIT: {
        remember(st, TRAFFIC_ETIMEDOUT, r->str);
        int64_t left = st->deadline - rx_now_ms();
        int ms = 5 << (st->waits < 5 ? st->waits : 5);
        st->waits++;
        if (ms > RX_WAIT_MAX_MS) ms = RX_WAIT_MAX_MS;
        if (left > 0) rx_sleep_ms(ms < left ? ms : (int)left);
        if (cluster && is_error(r, "CLUSTERDOWN") && !st->down_reloaded++) /* once: the map is rarely why */
            rx_cluster_refresh(h, st->p, NULL, st->epoch, 0, st->deadline);
        st->target = NULL;
        st->asking = 0;
        break;
    }
    case RE_ROLE: /* a master turned replica: find the new one (the command did not run) */
        remember(st, TRAFFIC_EUNAVAILABLE, r->str);
        if (st->role_retries++) { /* a fresh connection, map or discovery did not help */
            rc = traffic_backend_fail(&h->base, TRAFFIC_EUNAVAILABLE, "%s is not a master: %s", c_addr, r->str);
            break;
        }
        node_forget(n); /* the name may lead elsewhere now (DNS, a virtual IP): reconnect */
        node_suspect(h, n);
        if (cluster) rx_cluster_refresh(h, st->p, NULL, st->epoch, 0, st->deadline);
        st->target = NULL;
        st->asking = 0;
        break;
    case RE_FULL: /* a new connection the server refused, and closes: the command never ran */
        rc = traffic_backend_fail(&h->base, TRAFFIC_EUNAVAILABLE, "%s: %s", c_addr, r->str);
        break;
    default: break;
    }
    if (kind == RE_REPLY) { /* an answer for the caller to interpret */
        *out = r;
        return TRAFFIC_OK;
    }
    freeReplyObject(r);
    return rc;
}

static int run_once(run_state *st, redisReply **out)
{
    rx_handle *h = st->h;
    rx_node *n = st->target;
    int rc;
    if (!n && h->cfg.mode == RX_CLUSTER) {
        if ((rc = rx_cluster_route(h, st->p, st->slot, st->deadline, &n, &st->epoch))) return rc;
        /* A node that timed out or broke: perhaps failed over meanwhile. Look again, once. */
        if (atomic_load_explicit(&n->suspect, memory_order_relaxed) && !st->rerouted) {
            st->rerouted = 1;
            if (rx_cluster_refresh(h, st->p, NULL, st->epoch, 0, st->deadline) == TRAFFIC_OK &&
                (rc = rx_cluster_route(h, st->p, st->slot, st->deadline, &n, &st->epoch)))
                return rc;
        }
    }
    if (!n) n = st->p->master;
    rx_conn *c;
    if ((rc = rx_conn_acquire(h, st->p, n, st->deadline, &c))) return after_failure(st, n, rc, 1);
    rc = send_command(st, c);
    int sent = rc == TRAFFIC_OK;
    redisReply *r = NULL;
    if (!rc) rc = read_reply(st, c, &r);
    char addr[RX_ADDR_LEN]; /* for a message about an error reply: c is another thread's after release */
    if (!rc && r->type == REDIS_REPLY_ERROR) memcpy(addr, c->addr, sizeof addr);
    rx_conn_release(c, rc == TRAFFIC_OK);
    if (!rc && atomic_load_explicit(&n->suspect, memory_order_relaxed)) /* it answers again */
        atomic_store_explicit(&n->suspect, 0, memory_order_relaxed);
    if (rc) {
        node_suspect(h, n);
        if (sent && !st->cmd->idempotent && rc != TRAFFIC_ENOMEM) {
            char msg[RX_ERR_LEN];
            snprintf(msg, sizeof msg, "%s", traffic_errmsg(&h->base));
            return traffic_backend_fail(&h->base, rc == TRAFFIC_ETIMEDOUT ? rc : TRAFFIC_EUNAVAILABLE,
                                        "%s; the command may or may not have run", msg);
        }
        return after_failure(st, n, rc, 0);
    }
    return r->type == REDIS_REPLY_ERROR ? on_error_reply(st, r, n, addr, out) : (*out = r, TRAFFIC_OK);
}

/* Cancellation: see rx_nocancel in redis_internal.h. */
int rx_nocancel(void)
{
    int old = PTHREAD_CANCEL_ENABLE;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &old);
    return old;
}

void rx_cancel_restore(int old)
{
    pthread_setcancelstate(old, NULL);
}

static int run_command(rx_handle *h, const char *rkey, size_t rklen, const rx_cmd *cmd, redisReply **out);

int rx_run(rx_handle *h, const char *rkey, size_t rklen, const rx_cmd *cmd, redisReply **out)
{
    int cancel_state = rx_nocancel();
    int rc = run_command(h, rkey, rklen, cmd, out);
    rx_cancel_restore(cancel_state);
    return rc;
}

static int run_command(rx_handle *h, const char *rkey, size_t rklen, const rx_cmd *cmd, redisReply **out)
{
    *out = NULL;
    rx_proc *p;
    int rc = rx_proc_get(h, &p);
    if (rc) return rc;
    run_state st = {.h = h,
                    .p = p,
                    .cmd = cmd,
                    .deadline = rx_now_ms() + h->cfg.timeout_ms,
                    .slot = h->cfg.mode == RX_CLUSTER ? rx_key_slot(rkey, rklen) : 0,
                    .last_rc = TRAFFIC_EUNAVAILABLE};
    for (int i = 0; i < RX_MAX_ATTEMPTS; i++) {
        rc = run_once(&st, out);
        if (rc != RX_AGAIN) return rc;
        if (rx_now_ms() >= st.deadline) break;
    }
    return traffic_backend_fail(&h->base, st.last_rc, "%.*s gave up within %d ms: %s", (int)cmd->argvlen[0],
                                cmd->argv[0], h->cfg.timeout_ms, st.last);
}

static int each_master(rx_handle *h, int (*fn)(rx_handle *h, rx_conn *c, void *arg), void *arg);

int rx_each_master(rx_handle *h, int (*fn)(rx_handle *h, rx_conn *c, void *arg), void *arg)
{
    int cancel_state = rx_nocancel();
    int rc = each_master(h, fn, arg);
    rx_cancel_restore(cancel_state);
    return rc;
}

static int each_master(rx_handle *h, int (*fn)(rx_handle *h, rx_conn *c, void *arg), void *arg)
{
    rx_proc *p;
    int rc = rx_proc_get(h, &p);
    if (rc) return rc;
    rx_node *one[1] = {p->master}, **nodes = one;
    size_t n = 1;
    if (h->cfg.mode == RX_CLUSTER && (rc = rx_cluster_masters(h, p, rx_now_ms() + h->cfg.timeout_ms, &nodes, &n)))
        return rc;
    for (size_t i = 0; !rc && i < n; i++) {
        rx_conn *c;
        rc = rx_conn_acquire(h, p, nodes[i], rx_now_ms() + h->cfg.timeout_ms, &c);
        if (rc) break;
        rc = fn(h, c, arg);
        int healthy = c->ctx->err == 0;
        rx_conn_release(c, healthy);
        if (!healthy) node_suspect(h, nodes[i]);
    }
    if (nodes != one) free(nodes);
    return rc;
}
