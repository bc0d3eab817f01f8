/*
 * test_redis_faults.c — the Redis backend under the faults of issue 16: a cluster master that
 * freezes and is failed over, UNLINKs the server refuses, a cluster that grew a node, sentinels
 * that lie or hang, a timer signal during a frozen server, slot-map reload storms, a primary
 * that turned replica behind one address, a full server, ports that are not ports, Redis 6's
 * INFO; and issue 11's: a SCAN that never ends, and the claims of earlier issues (reconnect
 * back-off, Sentinel ROLE rediscovery, an increment not sent twice).
 *
 * Real redis-server, Sentinel and Cluster processes on loopback ports (redis_harness.c), each
 * test starting its own. Where a real server cannot misbehave the way a test needs (a sentinel
 * that names a stale master, one that names port 0, a server that speaks like Redis 6), a
 * small fake RESP server runs in a thread of the test (fake_* below). Bounds on time are
 * generous: the tests assert what happens, not how fast.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "redis_harness.h"
#include "testutil.h"

/* White-box: the backend's slot function (backends/redis_cluster.c). */
unsigned rx_key_slot(const char *key, size_t len);

/* ---- helpers --------------------------------------------------------------------------- */

/* "127.0.0.1:p1,127.0.0.1:p2,..." of the masters of c, in a static buffer. */
static const char *cluster_hosts(const rh_cluster *c)
{
    static char buf[512];
    size_t n = 0;
    buf[0] = '\0';
    for (int i = 0; i < c->n; i++)
        if (c->master_of[i] < 0)
            n += (size_t)snprintf(buf + n, sizeof buf - n, "%s127.0.0.1:%d", n ? "," : "", c->nodes[i].port);
    return buf;
}

/* A key (written into buf) whose prefixed form lies in a slot node `owner` of c serves. */
static const char *key_on(const rh_cluster *c, const char *prefix, int owner, const char *tag, char *buf, size_t cap)
{
    for (int i = 0;; i++) {
        char full[128];
        snprintf(buf, cap, "%s%d", tag, i);
        snprintf(full, sizeof full, "%s%s", prefix, buf);
        if (rh_cluster_owner(c, (int)rx_key_slot(full, strlen(full))) == owner) return buf;
    }
}

/* The number of calls of command `name` ("cluster|slots", "set") s has served, from INFO
 * commandstats; `field` "calls=" or "rejected_calls=". */
static long long cmdstat(const rh_server *s, const char *name, const char *field)
{
    redisReply *r = rh_cmd(s, "INFO commandstats");
    ck_assert_msg(r && r->type == REDIS_REPLY_STRING, "INFO commandstats on %d", s->port);
    char want[64];
    snprintf(want, sizeof want, "cmdstat_%s:", name);
    const char *line = strstr(r->str, want), *f = NULL;
    if (line) {
        const char *end = strchr(line, '\n');
        f = strstr(line, field);
        if (end && f > end) f = NULL;
    }
    long long v = f ? atoll(f + strlen(field)) : 0;
    freeReplyObject(r);
    return v;
}

/* ---- a fake RESP server ---------------------------------------------------------------- *
 *
 * Listens on a loopback port. FAKE_HUNG never accepts (the kernel completes connections into
 * the backlog, so a client connects and then waits for replies forever); FAKE_ANSWER accepts
 * in a thread and answers each command with what `answer` returns (a complete RESP reply, or
 * FAKE_CLOSE). */

enum { FAKE_HUNG, FAKE_ANSWER };
static const char FAKE_CLOSE[] = ""; /* an answer function's reply: close the connection instead */
#define FAKE_CLIENTS 16
#define FAKE_BUF     65536 /* the rate-limit script, sent whole by SCRIPT LOAD, fits */

typedef struct fake_server fake_server;
typedef const char *(*fake_answer_fn)(fake_server *f, int argc, char **argv);

struct fake_server {
    int fd, port;
    fake_answer_fn answer;
    void *arg;
    pthread_t tid;
    atomic_int stop, commands;
    char reply[1024]; /* scratch for answer functions */
};

/* Parses one command at buf[0..len): its arguments (NUL-terminated in place) into argv, the
 * bytes it used, or 0 when it is not complete yet; -1 when it is not RESP. */
static long fake_parse(char *buf, size_t len, int *argc, char **argv, int max)
{
    char *p = buf, *end = buf + len, *nl;
    if (len == 0) return 0;
    if (*p != '*') return -1;
    if (!(nl = memchr(p, '\n', (size_t)(end - p)))) return 0;
    int n = atoi(p + 1);
    p = nl + 1;
    *argc = 0;
    for (int i = 0; i < n; i++) {
        if (p >= end) return 0;
        if (*p != '$') return -1;
        if (!(nl = memchr(p, '\n', (size_t)(end - p)))) return 0;
        long l = atol(p + 1);
        p = nl + 1;
        if (end - p < l + 2) return 0;
        if (*argc < max) argv[(*argc)++] = p;
        p[l] = '\0';
        p += l + 2;
    }
    return p - buf;
}

static void *fake_main(void *arg)
{
    fake_server *f = arg;
    struct {
        int fd;
        size_t len;
        char buf[FAKE_BUF];
    } *cl = calloc(FAKE_CLIENTS, sizeof *cl);
    for (int i = 0; i < FAKE_CLIENTS; i++)
        cl[i].fd = -1;
    while (!atomic_load(&f->stop)) {
        struct pollfd pf[FAKE_CLIENTS + 1];
        pf[0] = (struct pollfd){.fd = f->fd, .events = POLLIN};
        for (int i = 0; i < FAKE_CLIENTS; i++)
            pf[i + 1] = (struct pollfd){.fd = cl[i].fd, .events = POLLIN};
        if (poll(pf, FAKE_CLIENTS + 1, 50) <= 0) continue;
        if (pf[0].revents & POLLIN) {
            int fd = accept(f->fd, NULL, NULL);
            for (int i = 0; fd >= 0 && i < FAKE_CLIENTS; i++)
                if (cl[i].fd < 0) {
                    cl[i].fd = fd, cl[i].len = 0, fd = -1;
                }
            if (fd >= 0) close(fd);
        }
        for (int i = 0; i < FAKE_CLIENTS; i++) {
            if (cl[i].fd < 0 || !(pf[i + 1].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            ssize_t n = read(cl[i].fd, cl[i].buf + cl[i].len, FAKE_BUF - 1 - cl[i].len);
            if (n <= 0) {
                close(cl[i].fd);
                cl[i].fd = -1;
                continue;
            }
            cl[i].len += (size_t)n;
            for (;;) {
                int argc = 0;
                char *argv[16];
                long used = fake_parse(cl[i].buf, cl[i].len, &argc, argv, 16);
                if (used < 0) {
                    close(cl[i].fd);
                    cl[i].fd = -1;
                    break;
                }
                if (used == 0) break;
                atomic_fetch_add(&f->commands, 1);
                const char *r = f->answer(f, argc, argv);
                if (r == FAKE_CLOSE) {
                    close(cl[i].fd);
                    cl[i].fd = -1;
                    break;
                }
                if (r && send(cl[i].fd, r, strlen(r), MSG_NOSIGNAL) < 0) {
                }
                memmove(cl[i].buf, cl[i].buf + used, cl[i].len - (size_t)used);
                cl[i].len -= (size_t)used;
            }
        }
    }
    for (int i = 0; i < FAKE_CLIENTS; i++)
        if (cl[i].fd >= 0) close(cl[i].fd);
    free(cl);
    return NULL;
}

static void fake_start(fake_server *f, int mode, fake_answer_fn answer, void *arg)
{
    memset(f, 0, sizeof *f);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    f->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(f->fd, 0);
    ck_assert_int_eq(bind(f->fd, (struct sockaddr *)&a, sizeof a), 0);
    ck_assert_int_eq(listen(f->fd, 64), 0);
    ck_assert_int_eq(getsockname(f->fd, (struct sockaddr *)&a, &alen), 0);
    f->port = ntohs(a.sin_port);
    f->answer = answer;
    f->arg = arg;
    if (mode == FAKE_ANSWER) ck_assert_int_eq(pthread_create(&f->tid, NULL, fake_main, f), 0);
}

static void fake_stop(fake_server *f)
{
    if (f->answer) {
        atomic_store(&f->stop, 1);
        pthread_join(f->tid, NULL);
    }
    close(f->fd);
}

/* ---- 1. a cluster follows the failover of a master that stops answering ---------------- */

START_TEST(t_cluster_frozen_master_failover)
{
    /* 3 masters and a replica of the master of our key's slot; the master is SIGSTOPped (it
     * accepts connections and never answers: timeouts, not refusals). The cluster promotes the
     * replica in ~2 s; the client must then reach the slot there while the old master stays
     * frozen. Before: every call kept timing out on the frozen node (no slot-map reload after
     * a timeout), for as long as it stayed frozen. */
    rh_cluster cl;
    ck_assert_int_eq(rh_cluster_start_timeout(&cl, 3, 1000), 0);
    const char *prefix = "fz:";
    char key[32], other[32], full[64];
    key_on(&cl, prefix, 0, "k", key, sizeof key);
    key_on(&cl, prefix, 1, "o", other, sizeof other);
    int replica = rh_cluster_add(&cl, 0);
    ck_assert_int_ge(replica, 0);
    traffic_backend *b = tu_open(rh_url("redis+cluster://%s?prefix=%s&timeout=0.5", cluster_hosts(&cl), prefix));
    int64_t v = 0;
    TU_OK(b, traffic_increment(b, key, 10, 0, &v));
    TU_OK(b, traffic_increment(b, other, 1, 0, &v));
    ck_assert_int_eq(rh_wait_synced(&cl.nodes[0], &cl.nodes[replica], 10000), 0);

    rh_pause(&cl.nodes[0], 1);
    int64_t t0 = tu_now_ms();
    int rc = TRAFFIC_EUNAVAILABLE, failures = 0;
    while (tu_now_ms() < t0 + 20000) {
        rc = traffic_increment(b, key, 1, 0, &v);
        if (rc == TRAFFIC_OK) break;
        ck_assert_msg(rc == TRAFFIC_ETIMEDOUT || rc == TRAFFIC_EUNAVAILABLE, "during the failover: %s (%s)",
                      traffic_strerror(rc), traffic_errmsg(b));
        failures++;
        tu_sleep_ms(50);
    }
    ck_assert_msg(rc == TRAFFIC_OK, "the failover of a frozen master was never followed: %s (%s)", traffic_strerror(rc),
                  traffic_errmsg(b));
    ck_assert_int_gt(failures, 0);
    /* on the promoted replica: the 10 written before, and this one (the failed ones went to
     * the frozen node, which never runs them: it is killed below without resuming) */
    ck_assert_int_eq(v, 11);
    snprintf(full, sizeof full, "%s%s", prefix, key);
    char raw[32];
    ck_assert_int_eq(rh_str(&cl.nodes[replica], raw, sizeof raw, "GET %s", full), 0);
    ck_assert_str_eq(raw, "11");
    ck_assert_int_eq(tu_counter(b, key), 11);
    ck_assert_int_eq(tu_counter(b, other), 1);
    fprintf(stderr, "frozen master's failover followed in %lld ms (%d failed calls)\n", (long long)(tu_now_ms() - t0),
            failures);
    TU_OK(b, traffic_close(b));
    rh_cluster_stop(&cl);
}
END_TEST

/* ---- 2. clear reports the UNLINKs the server refused ----------------------------------- */

START_TEST(t_clear_refused)
{
    /* A clear aimed at a replica (READONLY) or by a user who may not UNLINK (NOPERM) deletes
     * nothing: it must say so (before: TRAFFIC_OK, every reply freed unread). */
    rh_server m = {0}, r = {0};
    snprintf(m.password, sizeof m.password, "adminpw");
    snprintf(r.password, sizeof r.password, "adminpw");
    const char *acl = "user default on >adminpw ~* &* +@all\n"
                      "user app on >apppw ~cl:* +@all -unlink\n";
    ck_assert_int_eq(rh_start(&m, acl), 0);
    char extra[512];
    snprintf(extra, sizeof extra, "%smasterauth adminpw\nreplicaof 127.0.0.1 %d\n", acl, m.port);
    ck_assert_int_eq(rh_start(&r, extra), 0);
    traffic_backend *b = tu_open(rh_url("redis://:adminpw@127.0.0.1:%d?prefix=cl:", m.port));
    char key[16];
    for (int i = 0; i < 20; i++) {
        snprintf(key, sizeof key, "k%d", i);
        TU_OK(b, traffic_set(b, key, "v", 1, 0));
    }
    ck_assert_int_eq(rh_wait_synced(&m, &r, 10000), 0);

    traffic_backend *rb = tu_open(rh_url("redis://:adminpw@127.0.0.1:%d?prefix=cl:", r.port));
    int rc = traffic_clear(rb);
    ck_assert_msg(rc == TRAFFIC_EUNAVAILABLE, "clear on a replica -> %s (%s)", traffic_strerror(rc),
                  traffic_errmsg(rb));
    ck_assert_msg(strstr(traffic_errmsg(rb), "READONLY"), "message: %s", traffic_errmsg(rb));
    TU_OK(rb, traffic_close(rb));

    traffic_backend *ab = tu_open(rh_url("redis://app:apppw@127.0.0.1:%d?prefix=cl:", m.port));
    rc = traffic_clear(ab);
    ck_assert_msg(rc == TRAFFIC_EPERM, "clear without UNLINK -> %s (%s)", traffic_strerror(rc), traffic_errmsg(ab));
    ck_assert_msg(strstr(traffic_errmsg(ab), "NOPERM"), "message: %s", traffic_errmsg(ab));
    ck_assert_int_eq(rh_int(&m, "DBSIZE"), 20); /* and nothing was deleted */
    /* the connection stayed in step: the next calls read their own replies */
    ck_assert_int_eq(traffic_exists(ab, "k3"), 1);
    TU_OK(ab, traffic_set(ab, "k3", "w", 1, 0));
    TU_OK(ab, traffic_close(ab));

    TU_OK(b, traffic_clear(b));
    ck_assert_int_eq(rh_int(&m, "DBSIZE"), 0);
    TU_OK(b, traffic_close(b));
    rh_kill(&r);
    rh_kill(&m);
}
END_TEST

/* ---- 3. cluster clear and stats see every master, also one added since ----------------- */

START_TEST(t_cluster_grown)
{
    /* A node joins and a slot holding keys is resharded onto it while the handle makes no
     * keyed call (so no MOVED tells it): stats must count those keys and clear delete them
     * (before: the handle's old map skipped the new master, stats undercounted and clear
     * returned OK leaving its keys). */
    rh_cluster cl;
    ck_assert_int_eq(rh_cluster_start(&cl, 3), 0);
    traffic_backend *b = tu_open(rh_url("redis+cluster://%s?prefix=gr:", cluster_hosts(&cl)));
    enum { N = 200 };
    char key[32];
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof key, "k%d", i);
        TU_OK(b, traffic_set(b, key, "v", 1, 0));
    }
    struct traffic_stats st = tu_stats(b);
    ck_assert_uint_eq(st.keys, N);
    int fresh = rh_cluster_add(&cl, -1);
    ck_assert_int_ge(fresh, 0);
    int moved = 0;
    for (int i = 0; i < N && moved < 10; i++) { /* the slots of a few keys of node 0 */
        char full[40];
        snprintf(full, sizeof full, "gr:k%d", i);
        int slot = (int)rx_key_slot(full, strlen(full));
        if (rh_cluster_owner(&cl, slot) != 0) continue;
        int n = rh_cluster_move_slot(&cl, slot, 0, fresh, NULL, NULL);
        ck_assert_int_ge(n, 1);
        moved += n;
    }
    ck_assert_int_eq(rh_int(&cl.nodes[fresh], "DBSIZE"), moved);
    st = tu_stats(b);
    ck_assert_msg(st.keys == N, "stats count %llu keys of %d (%d on the new node)", (unsigned long long)st.keys, N,
                  moved);
    TU_OK(b, traffic_clear(b));
    for (int i = 0; i < cl.n; i++)
        ck_assert_msg(rh_int(&cl.nodes[i], "DBSIZE") == 0, "node %d keeps %lld keys after clear", i,
                      rh_int(&cl.nodes[i], "DBSIZE"));
    st = tu_stats(b);
    ck_assert_uint_eq(st.keys, 0);
    TU_OK(b, traffic_close(b));
    rh_cluster_stop(&cl);
}
END_TEST

/* ---- 4, 5. Sentinel: a stale sentinel listed first, a hung one ------------------------- */

/* A fake sentinel's answer: the address in f->arg ("host port"), for any master name. */
static const char *sentinel_answer(fake_server *f, int argc, char **argv)
{
    if (argc == 3 && !strcasecmp(argv[0], "SENTINEL") && !strcasecmp(argv[1], "get-master-addr-by-name")) {
        char host[256], port[32];
        if (sscanf((const char *)f->arg, "%255s %31s", host, port) != 2) return "-ERR bad fake\r\n";
        snprintf(f->reply, sizeof f->reply, "*2\r\n$%zu\r\n%s\r\n$%zu\r\n%s\r\n", strlen(host), host, strlen(port),
                 port);
        return f->reply;
    }
    return "-ERR unknown command\r\n";
}

START_TEST(t_sentinel_stale_first)
{
    /* The first sentinel listed names the replica (stale: it missed the failover). The
     * client must not stay pinned there ("... is a slave" on every call) while the honest
     * sentinel after it is never asked. */
    rh_sentinel_set set;
    ck_assert_int_eq(rh_sentinel_start(&set, 1, NULL), 0);
    char stale[64];
    snprintf(stale, sizeof stale, "127.0.0.1 %d", set.replica.port);
    fake_server liar;
    fake_start(&liar, FAKE_ANSWER, sentinel_answer, stale);
    const char *url = rh_url("redis+sentinel://127.0.0.1:%d,127.0.0.1:%d/mymaster?prefix=st:&timeout=1", liar.port,
                             set.sentinels[0].port);
    traffic_backend *b = NULL;
    int rc = traffic_open(url, &b);
    ck_assert_msg(rc == TRAFFIC_OK, "open with a stale sentinel first -> %s (%s)", traffic_strerror(rc),
                  traffic_errmsg(NULL));
    int64_t v = 0;
    TU_OK(b, traffic_increment(b, "c", 5, 0, &v));
    ck_assert_int_eq(v, 5);
    char raw[32];
    ck_assert_int_eq(rh_str(&set.master, raw, sizeof raw, "GET st:c"), 0); /* on the real master */
    ck_assert_str_eq(raw, "5");
    ck_assert_int_gt(atomic_load(&liar.commands), 0); /* it was asked, and not believed */
    /* a fresh process discovers again, and gets there too */
    pid_t pid = fork();
    if (pid == 0) _exit(traffic_increment(b, "c", 1, 0, NULL) == TRAFFIC_OK ? 0 : 1);
    ck_assert_int_eq(tu_wait(pid), 0);
    ck_assert_int_eq(tu_counter(b, "c"), 6);
    TU_OK(b, traffic_close(b));
    fake_stop(&liar);
    rh_sentinel_stop(&set);
}
END_TEST

/* A slow but honest sentinel: sentinel_answer after 20 ms. */
static const char *slow_sentinel_answer(fake_server *f, int argc, char **argv)
{
    tu_sleep_ms(20);
    return sentinel_answer(f, argc, argv);
}

START_TEST(t_sentinel_hung_first)
{
    /* The first sentinel accepts connections and never answers; the next one answers, in
     * 20 ms. Before: the hung one used the whole timeout and the next got ~1 ms, so open
     * failed. */
    rh_server m = {0};
    ck_assert_int_eq(rh_start(&m, NULL), 0);
    char master[64];
    snprintf(master, sizeof master, "127.0.0.1 %d", m.port);
    fake_server hung, hung2, honest;
    fake_start(&hung, FAKE_HUNG, NULL, NULL);
    fake_start(&hung2, FAKE_HUNG, NULL, NULL);
    fake_start(&honest, FAKE_ANSWER, slow_sentinel_answer, master);
    const char *url =
        rh_url("redis+sentinel://127.0.0.1:%d,127.0.0.1:%d/mymaster?prefix=hs:&timeout=1", hung.port, honest.port);
    traffic_backend *b = NULL;
    int rc = traffic_open(url, &b);
    ck_assert_msg(rc == TRAFFIC_OK, "open with a hung sentinel first -> %s (%s)", traffic_strerror(rc),
                  traffic_errmsg(NULL));
    TU_OK(b, traffic_set(b, "k", "v", 1, 0));
    /* two hung ones of three: the last still gets a third of the time */
    url = rh_url("redis+sentinel://127.0.0.1:%d,127.0.0.1:%d,127.0.0.1:%d/mymaster?prefix=hs:&timeout=1.5", hung.port,
                 hung2.port, honest.port);
    traffic_backend *b2 = NULL;
    rc = traffic_open(url, &b2);
    ck_assert_msg(rc == TRAFFIC_OK, "open with two hung sentinels first -> %s (%s)", traffic_strerror(rc),
                  traffic_errmsg(NULL));
    size_t len = 0;
    char buf[8];
    TU_OK(b2, traffic_get(b2, "k", buf, sizeof buf, &len));
    ck_assert_int_eq(atomic_load(&honest.commands), 2); /* once per handle */
    TU_OK(b2, traffic_close(b2));
    TU_OK(b, traffic_close(b));
    fake_stop(&honest);
    fake_stop(&hung2);
    fake_stop(&hung);
    rh_kill(&m);
}
END_TEST

/* ---- 6. a periodic signal during a frozen server -------------------------------------- */

static void on_tick(int sig)
{
    (void)sig;
}

struct ticked_call {
    traffic_backend *b;
    const char *url; /* open this instead of calling on b */
    int op;          /* TU_GET / TU_INCR */
    int rc;
    atomic_int done;
};

static void *ticked_main(void *arg)
{
    struct ticked_call *t = arg;
    if (t->url) {
        traffic_backend *b = NULL;
        t->rc = traffic_open(t->url, &b);
        if (b) traffic_close(b);
    } else if (t->op == TU_INCR) {
        t->rc = traffic_increment(t->b, "c", 1, 0, NULL);
    } else {
        char buf[8];
        size_t len;
        t->rc = traffic_get(t->b, "k", buf, sizeof buf, &len);
    }
    atomic_store(&t->done, 1);
    return NULL;
}

/* Runs t in a thread that receives SIGUSR1 (SA_RESTART) every 100 ms, as a server's timer
 * would send; returns whether it finished within 10 s (a 0.3 s timeout: no bound on speed,
 * only against a hang). The server is resumed afterwards if it did not, so the thread ends. */
static int ticked(struct ticked_call *t, rh_server *frozen)
{
    pthread_t tid;
    ck_assert_int_eq(pthread_create(&tid, NULL, ticked_main, t), 0);
    int64_t end = tu_now_ms() + 10000;
    while (!atomic_load(&t->done) && tu_now_ms() < end) {
        pthread_kill(tid, SIGUSR1);
        tu_sleep_ms(100);
    }
    int finished = atomic_load(&t->done);
    if (!finished) rh_pause(frozen, 0);
    pthread_join(tid, NULL);
    return finished;
}

START_TEST(t_signal_during_frozen_server)
{
    /* Before: hiredis retried the read after each EINTR with a fresh SO_RCVTIMEO, so with a
     * timer firing more often than `timeout` a call on a frozen server never returned. */
    struct sigaction sa = {.sa_handler = on_tick, .sa_flags = SA_RESTART};
    sigemptyset(&sa.sa_mask);
    ck_assert_int_eq(sigaction(SIGUSR1, &sa, NULL), 0);
    rh_server s = {0};
    ck_assert_int_eq(rh_start(&s, NULL), 0);
    traffic_backend *b = tu_open(rh_url("redis://127.0.0.1:%d?prefix=sig:&timeout=0.3&pool_size=1", s.port));
    TU_OK(b, traffic_set(b, "k", "v", 1, 0));
    rh_pause(&s, 1);
    struct ticked_call get = {.b = b, .op = TU_GET};
    ck_assert_msg(ticked(&get, &s), "a get on a frozen server under a 100 ms timer never returned");
    ck_assert_msg(get.rc == TRAFFIC_ETIMEDOUT, "get -> %s (%s)", traffic_strerror(get.rc), traffic_errmsg(b));
    struct ticked_call incr = {.b = b, .op = TU_INCR};
    ck_assert_msg(ticked(&incr, &s), "an increment on a frozen server under a 100 ms timer never returned");
    ck_assert_msg(incr.rc == TRAFFIC_ETIMEDOUT, "increment -> %s (%s)", traffic_strerror(incr.rc), traffic_errmsg(b));
    /* a new connection: connect completes (the kernel's backlog), its first reply never comes */
    struct ticked_call open = {.url = rh_url("redis://127.0.0.1:%d?timeout=0.3", s.port)};
    ck_assert_msg(ticked(&open, &s), "open of a frozen server under a 100 ms timer never returned");
    ck_assert_msg(open.rc == TRAFFIC_ETIMEDOUT, "open -> %s (%s)", traffic_strerror(open.rc), traffic_errmsg(NULL));
    rh_pause(&s, 0);
    int64_t deadline = tu_now_ms() + 5000;
    int rc;
    while ((rc = traffic_set(b, "k", "w", 1, 0)) != TRAFFIC_OK && tu_now_ms() < deadline)
        tu_sleep_ms(20);
    TU_OK(b, rc);
    TU_OK(b, traffic_close(b));
    rh_kill(&s);
}
END_TEST

/* ---- 7. slot-map reloads are rate-limited ---------------------------------------------- */

/* CLUSTER SLOTS served so far by the nodes of c other than `except`. */
static long long slot_reloads(const rh_cluster *c, int except)
{
    long long n = 0;
    for (int i = 0; i < c->n; i++)
        if (i != except) n += cmdstat(&c->nodes[i], "cluster|slots", "calls=");
    return n;
}

START_TEST(t_cluster_reload_storm)
{
    /* A dead master: before, every call to its slots reloaded the map (200 gets, 200
     * CLUSTER SLOTS); a cluster that says CLUSTERDOWN: ~13 reloads per call. */
    rh_cluster cl;
    ck_assert_int_eq(rh_cluster_start_timeout(&cl, 3, 1000), 0);
    char dead_key[32], live_key[32];
    key_on(&cl, "rl:", 0, "d", dead_key, sizeof dead_key);
    key_on(&cl, "rl:", 1, "l", live_key, sizeof live_key);
    traffic_backend *b = tu_open(rh_url("redis+cluster://%s?prefix=rl:&timeout=1", cluster_hosts(&cl)));
    TU_OK(b, traffic_set(b, dead_key, "v", 1, 0));
    TU_OK(b, traffic_set(b, live_key, "v", 1, 0));
    rh_kill(&cl.nodes[0]);
    long long before = slot_reloads(&cl, 0);
    int64_t t0 = tu_now_ms();
    enum { CALLS = 200 };
    for (int i = 0; i < CALLS; i++) {
        char buf[8];
        size_t len;
        int rc = traffic_get(b, dead_key, buf, sizeof buf, &len);
        ck_assert_msg(rc == TRAFFIC_EUNAVAILABLE || rc == TRAFFIC_ETIMEDOUT, "get on a dead master -> %s (%s)",
                      traffic_strerror(rc), traffic_errmsg(b));
    }
    int64_t took = tu_now_ms() - t0;
    long long reloads = slot_reloads(&cl, 0) - before;
    /* at most one per 200 ms, and the first at once */
    ck_assert_msg(reloads <= 2 + took / 200, "%d gets on a dead master's slot in %lld ms reloaded the map %lld times",
                  CALLS, (long long)took, reloads);
    fprintf(stderr, "%d gets on a dead master: %lld reloads in %lld ms\n", CALLS, reloads, (long long)took);

    /* the cluster notices (node timeout 1 s) and refuses every slot with CLUSTERDOWN */
    int64_t deadline = tu_now_ms() + 20000;
    for (;;) {
        redisReply *r = rh_cmd(&cl.nodes[1], "CLUSTER INFO");
        int down = r && r->type == REDIS_REPLY_STRING && strstr(r->str, "cluster_state:fail");
        if (r) freeReplyObject(r);
        if (down) break;
        ck_assert_msg(tu_now_ms() < deadline, "the cluster never went down");
        tu_sleep_ms(50);
    }
    tu_sleep_ms(300); /* past the gap of the reloads above */
    before = slot_reloads(&cl, 0);
    char buf[8];
    size_t len;
    int rc = traffic_get(b, live_key, buf, sizeof buf, &len);
    ck_assert_msg(rc == TRAFFIC_ETIMEDOUT || rc == TRAFFIC_EUNAVAILABLE, "get under CLUSTERDOWN -> %s (%s)",
                  traffic_strerror(rc), traffic_errmsg(b));
    ck_assert_msg(strstr(traffic_errmsg(b), "CLUSTERDOWN"), "message: %s", traffic_errmsg(b));
    reloads = slot_reloads(&cl, 0) - before;
    ck_assert_msg(reloads <= 1, "one call under CLUSTERDOWN reloaded the map %lld times", reloads);
    TU_OK(b, traffic_close(b));
    rh_cluster_stop(&cl);
}
END_TEST

/* ---- 8. READONLY: a fresh connection, and few retries --------------------------------- */

START_TEST(t_readonly_follows_address)
{
    /* One address (here a unix socket's symlink, standing for a DNS name or a virtual IP)
     * moves to the new primary while the old one lives on as a replica. Before: the pooled
     * connection to the old primary was kept and every call retried READONLY on it, 16
     * times back to back, for as long as the old primary lived. */
    rh_server m = {.unixsocket = 1}, r = {.unixsocket = 1};
    ck_assert_int_eq(rh_start(&m, NULL), 0);
    char extra[128];
    snprintf(extra, sizeof extra, "replicaof 127.0.0.1 %d\n", m.port);
    ck_assert_int_eq(rh_start(&r, extra), 0);
    char vip[RH_PATH + 16], tmp[RH_PATH + 16];
    snprintf(vip, sizeof vip, "%s/vip.sock", rh_dir());
    snprintf(tmp, sizeof tmp, "%s/vip.tmp", rh_dir());
    ck_assert_int_eq(symlink(m.sock, vip), 0);
    traffic_backend *b = tu_open(rh_url("redis+unix://%s?prefix=vip:&pool_size=2", vip));
    int64_t v = 0;
    TU_OK(b, traffic_increment(b, "c", 5, 0, &v));
    ck_assert_int_eq(rh_wait_synced(&m, &r, 10000), 0);

    /* the failover: the replica is promoted, the old primary follows it, the address moves */
    char buf[64];
    ck_assert_int_eq(rh_str(&r, buf, sizeof buf, "REPLICAOF NO ONE"), 0);
    snprintf(buf, sizeof buf, "%d", r.port);
    redisReply *rep = rh_cmd(&m, "REPLICAOF 127.0.0.1 %s", buf);
    ck_assert_ptr_nonnull(rep);
    freeReplyObject(rep);
    ck_assert_int_eq(symlink(r.sock, tmp), 0);
    ck_assert_int_eq(rename(tmp, vip), 0);

    long long rejected0 = cmdstat(&m, "evalsha", "rejected_calls=");
    int rc = traffic_increment(b, "c", 1, 0, &v);
    ck_assert_msg(rc == TRAFFIC_OK, "increment after the address moved -> %s (%s)", traffic_strerror(rc),
                  traffic_errmsg(b));
    ck_assert_int_eq(v, 6);
    ck_assert_int_eq(rh_str(&r, buf, sizeof buf, "GET vip:c"), 0);
    ck_assert_str_eq(buf, "6");
    ck_assert_int_le(cmdstat(&m, "evalsha", "rejected_calls=") - rejected0, 1);
    for (int i = 0; i < 5; i++) /* no connection to the old primary is left in the pool */
        TU_OK(b, traffic_increment(b, "c", 1, 0, NULL));
    ck_assert_int_eq(tu_counter(b, "c"), 11);
    TU_OK(b, traffic_close(b));

    /* aimed at a replica for good: a call gives up after two refusals, not sixteen */
    traffic_backend *rb = tu_open(rh_url("redis://127.0.0.1:%d?prefix=vip:", m.port));
    long long rej0 = cmdstat(&m, "set", "rejected_calls=");
    rc = traffic_set(rb, "k", "v", 1, 0);
    ck_assert_msg(rc == TRAFFIC_EUNAVAILABLE, "set on a replica -> %s (%s)", traffic_strerror(rc), traffic_errmsg(rb));
    ck_assert_msg(strstr(traffic_errmsg(rb), "READONLY"), "message: %s", traffic_errmsg(rb));
    long long rej = cmdstat(&m, "set", "rejected_calls=") - rej0;
    ck_assert_msg(rej >= 1 && rej <= 2, "one set on a replica was refused %lld times", rej);
    TU_OK(rb, traffic_close(rb));
    rh_kill(&r);
    rh_kill(&m);
}
END_TEST

/* ---- 9. a full server, ports that are not ports, Redis 6's INFO ----------------------- */

START_TEST(t_server_full)
{
    /* A server at maxclients answers a new connection with an error and closes it. That is
     * a busy server, not a refusal of our credentials: TRAFFIC_EUNAVAILABLE (which fallback=
     * and callers treat as transient), not TRAFFIC_EPERM (with AUTH) or TRAFFIC_EIO. */
    rh_server s = {0}, t = {0};
    snprintf(s.password, sizeof s.password, "pw");
    ck_assert_int_eq(rh_start(&s, "requirepass pw\nmaxclients 2\n"), 0);
    ck_assert_int_eq(rh_start(&t, "maxclients 2\n"), 0);
    redisContext *fill[4];
    for (int i = 0; i < 4; i++) { /* two connections each: both full */
        fill[i] = redisConnect("127.0.0.1", i < 2 ? s.port : t.port);
        ck_assert_msg(fill[i] && !fill[i]->err, "filler %d", i);
        redisReply *r = redisCommand(fill[i], i < 2 ? "AUTH pw" : "PING");
        ck_assert_msg(r && r->type != REDIS_REPLY_ERROR, "filler %d: %s", i, r && r->str ? r->str : "no reply");
        freeReplyObject(r);
    }
    traffic_backend *b = NULL;
    int rc = traffic_open(rh_url("redis://:pw@127.0.0.1:%d?prefix=full:", s.port), &b);
    ck_assert_msg(rc == TRAFFIC_EUNAVAILABLE, "open (AUTH) of a full server -> %s (%s)", traffic_strerror(rc),
                  traffic_errmsg(NULL));
    ck_assert_msg(strstr(traffic_errmsg(NULL), "max number of clients"), "message: %s", traffic_errmsg(NULL));
    rc = traffic_open(rh_url("redis://127.0.0.1:%d?prefix=full:", t.port), &b);
    ck_assert_msg(rc == TRAFFIC_EUNAVAILABLE, "open of a full server -> %s (%s)", traffic_strerror(rc),
                  traffic_errmsg(NULL));
    /* a handle opened before the server filled up, needing a new connection */
    redisFree(fill[3]);
    /* the server notices the closed filler in its own time: until then it is still full */
    b = NULL;
    for (int64_t end = tu_now_ms() + 5000; !b && tu_now_ms() < end; tu_sleep_ms(20))
        if (traffic_open(rh_url("redis://127.0.0.1:%d?prefix=full:&pool_size=2", t.port), &b) != TRAFFIC_OK) b = NULL;
    ck_assert_msg(b != NULL, "open once a filler left: %s", traffic_errmsg(NULL));
    fill[3] = NULL;     /* the handle's connection took its place: full again */
    pid_t pid = fork(); /* a child has no connection yet */
    if (pid == 0) _exit(traffic_set(b, "k", "v", 1, 0) == TRAFFIC_EUNAVAILABLE ? 0 : 1);
    ck_assert_int_eq(tu_wait(pid), 0);
    TU_OK(b, traffic_set(b, "k", "v", 1, 0)); /* the parent still has its own */
    for (int i = 0; i < 3; i++)
        redisFree(fill[i]);
    TU_OK(b, traffic_close(b));
    TU_OK(NULL, traffic_open(rh_url("redis://:pw@127.0.0.1:%d?prefix=full:", s.port), &b));
    TU_OK(b, traffic_close(b));
    rh_kill(&t);
    rh_kill(&s);
}
END_TEST

/* A fake node speaking like a Redis server; f->arg: the unix socket path of a real server,
 * named with port 0 where `port0_slots` or in MOVED. */
struct fake_node {
    const char *sock;
    int port0_slots; /* CLUSTER SLOTS names sock:0 for every slot (else: this fake) */
    int redis6;      /* INFO takes one section, as Redis 6 */
};

static const char *node_answer(fake_server *f, int argc, char **argv)
{
    const struct fake_node *n = f->arg;
    if (argc == 3 && !strcasecmp(argv[0], "SCRIPT") && !strcasecmp(argv[1], "LOAD"))
        return "$40\r\n0123456789012345678901234567890123456789\r\n";
    if (argc == 2 && !strcasecmp(argv[0], "CLUSTER") && !strcasecmp(argv[1], "SLOTS")) {
        if (n->port0_slots)
            snprintf(f->reply, sizeof f->reply, "*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$%zu\r\n%s\r\n:0\r\n",
                     strlen(n->sock), n->sock);
        else
            snprintf(f->reply, sizeof f->reply, "*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:%d\r\n",
                     f->port);
        return f->reply;
    }
    if (argc == 2 && !strcasecmp(argv[0], "GET")) {
        snprintf(f->reply, sizeof f->reply, "-MOVED 1 %s:0\r\n", n->sock);
        return f->reply;
    }
    if (!strcasecmp(argv[0], "INFO")) {
        if (argc > 2) return "-ERR syntax error\r\n";
        const char *body = argc == 2 && !strcasecmp(argv[1], "memory") ? "# Memory\r\nused_memory:1234\r\n"
                           : argc == 2 && !strcasecmp(argv[1], "stats")
                               ? "# Stats\r\nexpired_keys:5\r\nevicted_keys:6\r\n"
                               : "# Memory\r\nused_memory:1234\r\n# Stats\r\nexpired_keys:5\r\nevicted_keys:6\r\n";
        snprintf(f->reply, sizeof f->reply, "$%zu\r\n%s\r\n", strlen(body), body);
        return f->reply;
    }
    if (argc >= 2 && !strcasecmp(argv[0], "SCAN")) return "*2\r\n$1\r\n0\r\n*0\r\n";
    return "-ERR unknown command\r\n";
}

START_TEST(t_ports_are_ports)
{
    /* A port 0 from a sentinel, CLUSTER SLOTS or MOVED was taken by atoi and handed to
     * hiredis, which then connected to a unix socket named by the host: here a real server's,
     * which answered. Each must be refused. */
    rh_server real = {.unixsocket = 1};
    ck_assert_int_eq(rh_start(&real, NULL), 0);
    redisReply *r = rh_cmd(&real, "SET pp:k =secret");
    ck_assert_ptr_nonnull(r);
    freeReplyObject(r);
    char answer[RH_PATH + 8];
    snprintf(answer, sizeof answer, "%s 0", real.sock);
    fake_server sent;
    fake_start(&sent, FAKE_ANSWER, sentinel_answer, answer);
    traffic_backend *b = NULL;
    int rc = traffic_open(rh_url("redis+sentinel://127.0.0.1:%d/mymaster?prefix=pp:&timeout=1", sent.port), &b);
    ck_assert_msg(rc == TRAFFIC_EUNAVAILABLE, "a sentinel naming port 0 -> %s (%s)", traffic_strerror(rc),
                  traffic_errmsg(NULL));
    ck_assert_msg(strstr(traffic_errmsg(NULL), "port"), "message: %s", traffic_errmsg(NULL));
    fake_stop(&sent);
    /* nor any other port that is not 1..65535 (atoi made 80x port 80, and 65536 wrapped) */
    static const char *const garbage[] = {"65536", "80x", "-6379", "+6379", "0x50", "100000"};
    for (size_t i = 0; i < sizeof garbage / sizeof garbage[0]; i++) {
        snprintf(answer, sizeof answer, "127.0.0.1 %s", garbage[i]);
        fake_start(&sent, FAKE_ANSWER, sentinel_answer, answer);
        rc = traffic_open(rh_url("redis+sentinel://127.0.0.1:%d/mymaster?prefix=pp:&timeout=1", sent.port), &b);
        ck_assert_msg(rc == TRAFFIC_EUNAVAILABLE && strstr(traffic_errmsg(NULL), "named the port"),
                      "a sentinel naming port \"%s\" -> %s (%s)", garbage[i], traffic_strerror(rc),
                      traffic_errmsg(NULL));
        fake_stop(&sent);
    }

    struct fake_node slots0 = {.sock = real.sock, .port0_slots = 1};
    fake_server node;
    fake_start(&node, FAKE_ANSWER, node_answer, &slots0);
    rc = traffic_open(rh_url("redis+cluster://127.0.0.1:%d?prefix=pp:&timeout=1", node.port), &b);
    ck_assert_msg(rc == TRAFFIC_EUNAVAILABLE, "CLUSTER SLOTS naming port 0 -> %s (%s)", traffic_strerror(rc),
                  traffic_errmsg(NULL));
    fake_stop(&node);

    struct fake_node moved0 = {.sock = real.sock};
    fake_start(&node, FAKE_ANSWER, node_answer, &moved0);
    b = tu_open(rh_url("redis+cluster://127.0.0.1:%d?prefix=pp:&timeout=1", node.port));
    char buf[16];
    size_t len = 0;
    rc = traffic_get(b, "k", buf, sizeof buf, &len);
    ck_assert_msg(rc == TRAFFIC_EIO, "MOVED to port 0 -> %s (%s; read \"%.*s\")", traffic_strerror(rc),
                  traffic_errmsg(b), rc ? 0 : (int)len, buf);
    TU_OK(b, traffic_close(b));
    fake_stop(&node);
    rh_kill(&real);
}
END_TEST

START_TEST(t_stats_redis6)
{
    /* Redis 6 (Debian 11) takes one section per INFO: "INFO memory stats" is a syntax error
     * there, and traffic_stats failed. A fake server that speaks that INFO. */
    struct fake_node six = {.sock = "", .redis6 = 1};
    fake_server node;
    fake_start(&node, FAKE_ANSWER, node_answer, &six);
    traffic_backend *b = tu_open(rh_url("redis://127.0.0.1:%d?prefix=r6:&timeout=1", node.port));
    struct traffic_stats st;
    TU_OK(b, traffic_stats(b, &st));
    ck_assert_uint_eq(st.bytes_used, 1234);
    ck_assert_uint_eq(st.expirations, 5);
    ck_assert_uint_eq(st.evictions, 6);
    ck_assert_uint_eq(st.keys, 0);
    TU_OK(b, traffic_close(b));
    fake_stop(&node);
}
END_TEST

/* ---- 10 (Redis too): cancelled threads ------------------------------------------------- */

struct cancel_call {
    traffic_backend *b;
    int rc;
    atomic_int done;
};

static void *cancel_main(void *arg)
{
    struct cancel_call *t = arg;
    char buf[8];
    size_t len;
    t->rc = traffic_get(t->b, "k", buf, sizeof buf, &len);
    atomic_store(&t->done, 1);
    pthread_testcancel(); /* a cancel that waited for the call to end acts here */
    return NULL;
}

/* Joins t, waiting at most ms; 0 if it ended. */
static int join_within(pthread_t t, int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    return pthread_timedjoin_np(t, NULL, &ts);
}

START_TEST(t_cancel_inside_calls)
{
#if defined(__SANITIZE_ADDRESS__)
    /* GCC 12's ASan reports its own sigaltstack bookkeeping as a stack-use-after-scope when a
     * thread is cancelled: this test runs in the plain and TSan-free builds only. */
    fprintf(stderr, "t_cancel_inside_calls: skipped under AddressSanitizer\n");
    return;
#endif
    /* A get waits for a frozen server's reply with the only pooled connection; a second one
     * waits for that connection. Both threads are cancelled. Before: the second died in
     * pthread_cond_timedwait holding the node's mutex, the first in poll() with the
     * connection busy for ever. */
    rh_server s = {0};
    ck_assert_int_eq(rh_start(&s, NULL), 0);
    traffic_backend *b = tu_open(rh_url("redis://127.0.0.1:%d?prefix=cn:&timeout=3&pool_size=1", s.port));
    TU_OK(b, traffic_set(b, "k", "v", 1, 0));
    rh_pause(&s, 1);
    struct cancel_call a = {.b = b}, g = {.b = b};
    pthread_t ta, tb;
    ck_assert_int_eq(pthread_create(&ta, NULL, cancel_main, &a), 0);
    tu_sleep_ms(200);
    ck_assert_int_eq(pthread_create(&tb, NULL, cancel_main, &g), 0);
    tu_sleep_ms(200);
    ck_assert_int_eq(pthread_cancel(tb), 0);
    ck_assert_int_eq(pthread_cancel(ta), 0);
    tu_sleep_ms(200);
    rh_pause(&s, 0);
    ck_assert_msg(join_within(ta, 10000) == 0, "the cancelled get never ended");
    ck_assert_msg(join_within(tb, 10000) == 0, "the cancelled get never ended");
    ck_assert_msg(atomic_load(&a.done) && a.rc == TRAFFIC_OK, "the first get was cut short (%d)", a.rc);
    ck_assert_msg(atomic_load(&g.done) && g.rc == TRAFFIC_OK, "the second get was cut short (%d)", g.rc);
    tu_timed after = {.b = b, .op = TU_SET, .key = "k"};
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, tu_timed_call, &after), 0);
    ck_assert_msg(join_within(t, 10000) == 0, "a call after the cancellations hung");
    TU_OK(b, after.rc);
    TU_OK(b, traffic_close(b));
    rh_kill(&s);
}
END_TEST

/* ---- fallback=: the Redis primary's own back-off after the breaker closes --------------- */

/* A TCP forwarder to a real server that can go away and come back at an instant: down closes
 * the listening socket and every relayed connection (new connects are refused), up listens
 * again on the same port (SO_REUSEADDR). */
#define FWD_PAIRS 16
typedef struct forwarder {
    int port, target, lfd;
    int pair[FWD_PAIRS][2]; /* client, server; -1 free */
    pthread_mutex_t mu;     /* lfd and pair, between the thread and down/up */
    pthread_t tid;
    atomic_int stop;
    atomic_int cut; /* 1: a reply from the server closes the pair instead (the command ran, its reply is lost) */
} forwarder;

static int fwd_listen(forwarder *w)
{
    struct sockaddr_in a = {
        .sin_family = AF_INET, .sin_port = htons((uint16_t)w->port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, 64)) return -1;
    getsockname(fd, (struct sockaddr *)&a, &alen);
    w->port = ntohs(a.sin_port);
    return fd;
}

static void *fwd_main(void *arg)
{
    forwarder *w = arg;
    while (!atomic_load(&w->stop)) {
        struct pollfd pf[1 + 2 * FWD_PAIRS];
        pthread_mutex_lock(&w->mu);
        pf[0] = (struct pollfd){.fd = w->lfd, .events = POLLIN};
        for (int i = 0; i < FWD_PAIRS; i++)
            for (int k = 0; k < 2; k++)
                pf[1 + 2 * i + k] = (struct pollfd){.fd = w->pair[i][k], .events = POLLIN};
        pthread_mutex_unlock(&w->mu);
        if (poll(pf, 1 + 2 * FWD_PAIRS, 20) <= 0) continue;
        pthread_mutex_lock(&w->mu);
        if (w->lfd >= 0 && pf[0].fd == w->lfd && (pf[0].revents & POLLIN)) {
            int c = accept(w->lfd, NULL, NULL);
            struct sockaddr_in a = {.sin_family = AF_INET,
                                    .sin_port = htons((uint16_t)w->target),
                                    .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
            int t = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            int i = 0;
            while (i < FWD_PAIRS && w->pair[i][0] >= 0)
                i++;
            if (c >= 0 && t >= 0 && i < FWD_PAIRS && connect(t, (struct sockaddr *)&a, sizeof a) == 0) {
                w->pair[i][0] = c, w->pair[i][1] = t;
            } else {
                if (c >= 0) close(c);
                if (t >= 0) close(t);
            }
        }
        for (int i = 0; i < FWD_PAIRS; i++)
            for (int k = 0; k < 2; k++) {
                struct pollfd *p = &pf[1 + 2 * i + k];
                if (p->fd < 0 || p->fd != w->pair[i][k] || !(p->revents & (POLLIN | POLLHUP | POLLERR))) continue;
                char buf[65536];
                ssize_t n = read(p->fd, buf, sizeof buf);
                if (n <= 0 || (k == 1 && atomic_load(&w->cut)) ||
                    send(w->pair[i][!k], buf, (size_t)n, MSG_NOSIGNAL) != n) {
                    close(w->pair[i][0]), close(w->pair[i][1]);
                    w->pair[i][0] = w->pair[i][1] = -1;
                }
            }
        pthread_mutex_unlock(&w->mu);
    }
    return NULL;
}

static void fwd_start(forwarder *w, int target)
{
    memset(w, 0, sizeof *w);
    w->target = target;
    for (int i = 0; i < FWD_PAIRS; i++)
        w->pair[i][0] = w->pair[i][1] = -1;
    pthread_mutex_init(&w->mu, NULL);
    ck_assert_int_ge(w->lfd = fwd_listen(w), 0);
    ck_assert_int_eq(pthread_create(&w->tid, NULL, fwd_main, w), 0);
}

static void fwd_down(forwarder *w)
{
    pthread_mutex_lock(&w->mu);
    close(w->lfd);
    w->lfd = -1;
    for (int i = 0; i < FWD_PAIRS; i++)
        if (w->pair[i][0] >= 0) {
            close(w->pair[i][0]), close(w->pair[i][1]);
            w->pair[i][0] = w->pair[i][1] = -1;
        }
    pthread_mutex_unlock(&w->mu);
}

static void fwd_up(forwarder *w)
{
    pthread_mutex_lock(&w->mu);
    w->lfd = fwd_listen(w);
    pthread_mutex_unlock(&w->mu);
    ck_assert_int_ge(w->lfd, 0);
}

static void fwd_stop(forwarder *w)
{
    atomic_store(&w->stop, 1);
    pthread_join(w->tid, NULL);
    fwd_down(w);
}

START_TEST(t_fallback_primary_no_backoff)
{
    /* Two handles of one Redis + memory pair share the circuit breaker. The primary goes
     * away; handle A's calls probe it six times, each a refused connect, so that A's own
     * Redis reconnect back-off has grown to 800 ms. The primary comes back; B's probe finds
     * it and closes the breaker; A's next call must go to the primary. Before: A's Redis
     * handle, still backing off, failed that call at once, which opened the breaker again
     * and sent the call to the fallback. */
    rh_server s = {0};
    ck_assert_int_eq(rh_start(&s, NULL), 0);
    forwarder w;
    fwd_start(&w, s.port);
    const char *url = rh_url("redis://127.0.0.1:%d?prefix=nb:&timeout=0.5&fallback=memory://%s"
                             "&fallback_backoff=0.001&fallback_backoff_max=0.001",
                             w.port, tu_name("nb"));
    traffic_backend *a = tu_open(url), *b = tu_open(url);
    TU_OK(a, traffic_set(a, "warm", "v", 1, 0));
    TU_OK(b, traffic_set(b, "warm", "v", 1, 0));
    fwd_down(&w);
    static const int pause_ms[] = {0, 30, 55, 105, 205, 405}; /* past each back-off: 25, 50, ... */
    for (int i = 0; i < 6; i++) {
        tu_sleep_ms(pause_ms[i]);
        TU_OK(a, traffic_set(a, "down", "v", 1, 0)); /* answered by the fallback */
    }
    ck_assert_int_ge(tu_stats(a).primary_failures, 6);
    fwd_up(&w);
    int64_t deadline = tu_now_ms() + 5000;
    char raw[32];
    while (tu_now_ms() < deadline) { /* B, which never failed a connect, finds it back */
        TU_OK(b, traffic_set(b, "b", "v", 1, 0));
        if (rh_str(&s, raw, sizeof raw, "GET nb:b") == 0) break;
        tu_sleep_ms(2);
    }
    ck_assert_msg(rh_str(&s, raw, sizeof raw, "GET nb:b") == 0, "B never got back to the primary");
    uint64_t failed = tu_stats(a).primary_failures;
    TU_OK(a, traffic_set(a, "a", "v", 1, 0));
    ck_assert_msg(rh_str(&s, raw, sizeof raw, "GET nb:a") == 0,
                  "A's call after the breaker closed went to the fallback (%llu more primary failures)",
                  (unsigned long long)(tu_stats(a).primary_failures - failed));
    TU_OK(a, traffic_close(a));
    TU_OK(b, traffic_close(b));
    fwd_stop(&w);
    rh_kill(&s);
}
END_TEST

/* ---- issue 11: a SCAN that never ends ------------------------------------------------- */

/* A server whose SCAN never answers cursor 0 (f->arg): the same cursor every time, a cycle
 * entered after some steps, or a count that never repeats (and DBSIZE says 100, then 200). */
enum { ENDLESS_SAME, ENDLESS_CYCLE, ENDLESS_COUNT };
struct endless {
    int mode;
    atomic_long scans, dbsizes;
};

static const char *endless_answer(fake_server *f, int argc, char **argv)
{
    struct endless *e = f->arg;
    if (argc == 3 && !strcasecmp(argv[0], "SCRIPT") && !strcasecmp(argv[1], "LOAD"))
        return "$40\r\n0123456789012345678901234567890123456789\r\n";
    if (!strcasecmp(argv[0], "INFO")) return "$16\r\nused_memory:1234\r\n";
    if (!strcasecmp(argv[0], "DBSIZE")) {
        long n = atomic_fetch_add(&e->dbsizes, 1) + 1;
        snprintf(f->reply, sizeof f->reply, ":%d\r\n", n < 2 ? 100 : 200);
        return f->reply;
    }
    if (argc >= 2 && !strcasecmp(argv[0], "SCAN")) {
        long n = atomic_fetch_add(&e->scans, 1) + 1;
        long cursor = e->mode == ENDLESS_SAME ? 17 : e->mode == ENDLESS_CYCLE ? (n < 40 ? n : 1000 + n % 7) : n;
        char c[24];
        int len = snprintf(c, sizeof c, "%ld", cursor);
        snprintf(f->reply, sizeof f->reply, "*2\r\n$%d\r\n%s\r\n*0\r\n", len, c);
        return f->reply;
    }
    return "-ERR unknown command\r\n";
}

static int scan_nothing(void *ctx, const char *key, size_t klen, int kind, double ttl)
{
    (void)ctx, (void)key, (void)klen, (void)kind, (void)ttl;
    return 0;
}

struct walk_call {
    traffic_backend *b;
    int op; /* 0 clear, 1 stats, 2 scan */
    int rc;
    char msg[512]; /* traffic_errmsg, which is the calling thread's */
};

static void *walk_main(void *arg)
{
    struct walk_call *w = arg;
    struct traffic_stats st;
    w->rc = w->op == 0   ? traffic_clear(w->b)
            : w->op == 1 ? traffic_stats(w->b, &st)
                         : traffic_scan(w->b, NULL, scan_nothing, NULL);
    snprintf(w->msg, sizeof w->msg, "%s", traffic_errmsg(w->b));
    return NULL;
}

START_TEST(t_scan_never_ends)
{
    /* The fuzzer's lying server: SCAN never answered cursor 0, so clear and stats (and
     * traffic_scan) looped for ever. Each must end with TRAFFIC_EIO and say why; the call runs
     * in a thread so that a loop is a failure here, not the suite's timeout. */
    static const char *const ops[3] = {"clear", "stats", "scan"};
    static const char *const modes[3] = {"the same cursor", "a cycle of cursors", "cursors that never repeat"};
    for (int mode = ENDLESS_SAME; mode <= ENDLESS_COUNT; mode++)
        for (int op = 0; op < 3; op++) {
            struct endless e = {.mode = mode};
            fake_server node;
            fake_start(&node, FAKE_ANSWER, endless_answer, &e);
            struct walk_call w = {.b = tu_open(rh_url("redis://127.0.0.1:%d?prefix=ne:&timeout=1", node.port)),
                                  .op = op};
            pthread_t tid;
            ck_assert_int_eq(pthread_create(&tid, NULL, walk_main, &w), 0);
            ck_assert_msg(join_within(tid, 120000) == 0,
                          "%s on a server answering %s: still going after 120 s (%ld SCANs)", ops[op], modes[mode],
                          atomic_load(&e.scans));
            ck_assert_msg(w.rc == TRAFFIC_EIO && strstr(w.msg, "never ends"), "%s on a server answering %s -> %s (%s)",
                          ops[op], modes[mode], traffic_strerror(w.rc), w.msg);
            if (mode == ENDLESS_SAME) ck_assert_int_eq(atomic_load(&e.scans), 2); /* the second repeats the first */
            if (mode == ENDLESS_CYCLE) ck_assert_int_lt(atomic_load(&e.scans), 200);
            if (mode != ENDLESS_COUNT) ck_assert_int_eq(atomic_load(&e.dbsizes), 0);
            if (mode == ENDLESS_COUNT) { /* 16384 free steps, +100 (DBSIZE), +100 (it grew), then no more */
                ck_assert_int_eq(atomic_load(&e.dbsizes), 3);
                ck_assert_int_eq(atomic_load(&e.scans), 16384 + 200);
            }
            TU_OK(w.b, traffic_close(w.b));
            fake_stop(&node);
        }
}
END_TEST

/* ---- issue 11: claims of earlier issues, each with a test that fails without it --------- */

/* A server that, while `down`, closes every connection at its first command, and notes when
 * each new connection's AUTH came (a connect attempt). */
#define FLAKY_MAX 64
struct flaky {
    atomic_int down;
    pthread_mutex_t mu;
    int64_t at[FLAKY_MAX]; /* tu_now_ms of each attempt while down, under mu */
    int n;
};

static const char *flaky_answer(fake_server *f, int argc, char **argv)
{
    struct flaky *k = f->arg;
    int down = atomic_load(&k->down);
    if (down && !strcasecmp(argv[0], "AUTH")) {
        pthread_mutex_lock(&k->mu);
        if (k->n < FLAKY_MAX) k->at[k->n] = tu_now_ms();
        k->n++;
        pthread_mutex_unlock(&k->mu);
    }
    if (down) return FAKE_CLOSE;
    if (!strcasecmp(argv[0], "AUTH")) return "+OK\r\n";
    if (argc == 3 && !strcasecmp(argv[0], "SCRIPT") && !strcasecmp(argv[1], "LOAD"))
        return "$40\r\n0123456789012345678901234567890123456789\r\n";
    if (!strcasecmp(argv[0], "GET")) return "$-1\r\n";
    return "-ERR unknown command\r\n";
}

/* The N of "(next try in N ms)" in msg, or -1. */
static long next_try_ms(const char *msg)
{
    const char *m = strstr(msg, "next try in ");
    return m ? atol(m + 12) : -1;
}

START_TEST(t_reconnect_backoff)
{
    /* redis_conn.c: after a failed connect, calls fail at once for 25 ms, then 50, 100, ... up
     * to 1 s, and the first call after each window connects again; a connect that works ends
     * the back-off. The server here closes each connection at its AUTH: a connect that fails
     * after the TCP handshake, which it counts. */
    struct flaky k = {.mu = PTHREAD_MUTEX_INITIALIZER};
    fake_server node;
    fake_start(&node, FAKE_ANSWER, flaky_answer, &k);
    traffic_backend *b = tu_open(rh_url("redis://:pw@127.0.0.1:%d?prefix=bo:&timeout=0.5&pool_size=1", node.port));
    char buf[8];
    size_t len;
    ck_assert_int_eq(traffic_get(b, "k", buf, sizeof buf, &len), TRAFFIC_ENOTFOUND);
    atomic_store(&k.down, 1);
    int calls = 0, refused = 0;
    for (int64_t end = tu_now_ms() + 2200; tu_now_ms() < end; calls++) {
        int rc = traffic_get(b, "k", buf, sizeof buf, &len);
        ck_assert_msg(rc == TRAFFIC_EUNAVAILABLE, "down: %s (%s)", traffic_strerror(rc), traffic_errmsg(b));
        refused += next_try_ms(traffic_errmsg(b)) >= 0;
        tu_sleep_ms(1);
    }
    pthread_mutex_lock(&k.mu);
    int n = k.n;
    int64_t at[FLAKY_MAX];
    memcpy(at, k.at, sizeof at);
    pthread_mutex_unlock(&k.mu);
    /* attempts at 0, 25, 75, 175, 375, 775 and 1575 ms; without the back-off, one per call */
    ck_assert_msg(n >= 3 && n <= 8, "%d connect attempts in 2.2 s of %d calls", n, calls);
    for (int i = 1; i < n; i++) {
        int want = 25 << (i - 1) < 1000 ? 25 << (i - 1) : 1000;
        ck_assert_msg(at[i] - at[i - 1] >= want - 1, "attempt %d came %lld ms after the one before (back-off %d ms)", i,
                      (long long)(at[i] - at[i - 1]), want);
    }
    ck_assert_int_ge(refused, calls - n); /* the others failed at once, saying when the next try is */
    /* back up: the call after the last window connects, and that ends the back-off */
    atomic_store(&k.down, 0);
    int rc = TRAFFIC_EUNAVAILABLE;
    for (int64_t end = tu_now_ms() + 5000; rc != TRAFFIC_ENOTFOUND && tu_now_ms() < end; tu_sleep_ms(10))
        rc = traffic_get(b, "k", buf, sizeof buf, &len);
    ck_assert_msg(rc == TRAFFIC_ENOTFOUND, "never reconnected: %s (%s)", traffic_strerror(rc), traffic_errmsg(b));
    atomic_store(&k.down, 1);
    ck_assert_int_eq(traffic_get(b, "k", buf, sizeof buf, &len), TRAFFIC_EUNAVAILABLE); /* a failed connect */
    ck_assert_int_eq(traffic_get(b, "k", buf, sizeof buf, &len), TRAFFIC_EUNAVAILABLE); /* backing off */
    long wait = next_try_ms(traffic_errmsg(b));
    ck_assert_msg(wait >= 0 && wait <= 25, "after a working connect, the first back-off: %s", traffic_errmsg(b));
    TU_OK(b, traffic_close(b));
    fake_stop(&node);
}
END_TEST

/* A sentinel naming 127.0.0.1:port for any master. */
static const char *moving_sentinel_answer(fake_server *f, int argc, char **argv)
{
    atomic_int *port = f->arg;
    if (argc == 3 && !strcasecmp(argv[0], "SENTINEL") && !strcasecmp(argv[1], "get-master-addr-by-name")) {
        char p[16];
        int n = snprintf(p, sizeof p, "%d", atomic_load(port));
        snprintf(f->reply, sizeof f->reply, "*2\r\n$9\r\n127.0.0.1\r\n$%d\r\n%s\r\n", n, p);
        return f->reply;
    }
    return "-ERR unknown command\r\n";
}

START_TEST(t_sentinel_role_rediscovery)
{
    /* redis_conn.c: every new connection to a Sentinel master asks ROLE, and one that says
     * replica sends the client to the sentinels again - even with no failure seen to doubt
     * the address. Here the old master was demoted (a replica of a server that never
     * answers, so it keeps its data and serves reads) while the client's idle connection
     * closed; the sentinel names the new master. The read must come from the new master:
     * without ROLE it came, stale, from the replica, which answers reads. */
    rh_server m = {0}, r = {0};
    ck_assert_int_eq(rh_start(&m, NULL), 0);
    ck_assert_int_eq(rh_start(&r, NULL), 0);
    ck_assert_int_eq(rh_str(&m, (char[8]){0}, 8, "SET ro:k =old"), 0);
    ck_assert_int_eq(rh_str(&r, (char[8]){0}, 8, "SET ro:k =new"), 0);
    atomic_int port = m.port;
    fake_server sent, nowhere;
    fake_start(&sent, FAKE_ANSWER, moving_sentinel_answer, &port);
    fake_start(&nowhere, FAKE_HUNG, NULL, NULL);
    traffic_backend *b =
        tu_open(rh_url("redis+sentinel://127.0.0.1:%d/mymaster?prefix=ro:&timeout=1&pool_size=1", sent.port));
    char buf[8];
    size_t len = 0;
    TU_OK(b, traffic_get(b, "k", buf, sizeof buf, &len));
    ck_assert_int_eq((int)len, 3);
    ck_assert_int_eq(memcmp(buf, "old", 3), 0);
    int asked = atomic_load(&sent.commands);
    /* the failover */
    ck_assert_int_eq(rh_str(&m, (char[8]){0}, 8, "REPLICAOF 127.0.0.1 %d", nowhere.port), 0);
    atomic_store(&port, r.port);
    long long killed = rh_int(&m, "CLIENT KILL TYPE normal");
    ck_assert_int_ge(killed, 1); /* the client's pooled connection */
    TU_OK(b, traffic_get(b, "k", buf, sizeof buf, &len));
    ck_assert_msg(len == 3 && memcmp(buf, "new", 3) == 0, "read \"%.*s\" after the failover", (int)len, buf);
    ck_assert_int_eq(atomic_load(&sent.commands), asked + 1); /* asked again, once */
    TU_OK(b, traffic_close(b));
    fake_stop(&nowhere);
    fake_stop(&sent);
    rh_kill(&r);
    rh_kill(&m);
}
END_TEST

START_TEST(t_increment_not_resent)
{
    /* redis_conn.c: a command that is not idempotent (an increment; a decision that spends)
     * is never sent again once it may have reached the server. Between the client and a real
     * server, a forwarder passes the command on and drops the reply, closing the connection:
     * the server ran it once, the client cannot know. The call must fail saying so, and the
     * counter move once. Before the rule, the retry on a fresh connection ran it twice. */
    rh_server s = {0};
    ck_assert_int_eq(rh_start(&s, NULL), 0);
    forwarder w;
    fwd_start(&w, s.port);
    traffic_backend *b = tu_open(rh_url("redis://127.0.0.1:%d?prefix=nr:&timeout=0.5&pool_size=1", w.port));
    int64_t v = 0;
    TU_OK(b, traffic_increment(b, "c", 5, 0, &v));
    ck_assert_int_eq(v, 5);
    const traffic_rule rule = {TRAFFIC_FIXED_WINDOW, 10, 60, 0};
    traffic_decision d;
    TU_OK(b, traffic_limit(b, "l", &rule, 1, &d));
    ck_assert_int_eq(d.remaining, 9);

    atomic_store(&w.cut, 1);
    char incr_msg[512], limit_msg[512];
    int incr_rc = traffic_increment(b, "c", 7, 0, &v);
    snprintf(incr_msg, sizeof incr_msg, "%s", traffic_errmsg(b));
    int limit_rc = traffic_limit(b, "l", &rule, 1, &d);
    snprintf(limit_msg, sizeof limit_msg, "%s", traffic_errmsg(b));
    atomic_store(&w.cut, 0);

    char raw[32];
    ck_assert_int_eq(rh_str(&s, raw, sizeof raw, "GET nr:c"), 0);
    ck_assert_msg(strcmp(raw, "12") == 0, "the counter is %s after +5 and a lost +7 (12: once)", raw);
    TU_OK(b, traffic_limit(b, "l", &rule, 0, &d)); /* a peek */
    ck_assert_msg(d.remaining == 8, "remaining %lld after one hit and one lost (8: once)", (long long)d.remaining);
    ck_assert_msg(incr_rc == TRAFFIC_EUNAVAILABLE && strstr(incr_msg, "may or may not have run"),
                  "an increment whose reply was lost -> %s (%s)", traffic_strerror(incr_rc), incr_msg);
    ck_assert_msg(limit_rc == TRAFFIC_EUNAVAILABLE && strstr(limit_msg, "may or may not have run"),
                  "a decision whose reply was lost -> %s (%s)", traffic_strerror(limit_rc), limit_msg);
    TU_OK(b, traffic_close(b));
    fwd_stop(&w);
    rh_kill(&s);
}
END_TEST

/* ---- the suite ------------------------------------------------------------------------- */

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const tu_case cases[] = {
        {"cluster_frozen_master", t_cluster_frozen_master_failover},
        {"clear_refused", t_clear_refused},
        {"cluster_grown", t_cluster_grown},
        {"sentinel_stale_first", t_sentinel_stale_first},
        {"sentinel_hung_first", t_sentinel_hung_first},
        {"signal_frozen", t_signal_during_frozen_server},
        {"cluster_reload_storm", t_cluster_reload_storm},
        {"readonly_follows_address", t_readonly_follows_address},
        {"server_full", t_server_full},
        {"ports_are_ports", t_ports_are_ports},
        {"stats_redis6", t_stats_redis6},
        {"cancel", t_cancel_inside_calls},
        {"fallback_primary_no_backoff", t_fallback_primary_no_backoff},
        {"scan_never_ends", t_scan_never_ends},
        {"reconnect_backoff", t_reconnect_backoff},
        {"sentinel_role_rediscovery", t_sentinel_role_rediscovery},
        {"increment_not_resent", t_increment_not_resent},
    };
    return tu_run_cases("redis_faults", cases, sizeof cases / sizeof cases[0], NULL, NULL);
}
