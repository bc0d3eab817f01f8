/*
 * test_redis.c — what the Redis backend owes beyond the shared contract (test_contract_redis):
 * URLs and options, the entry encoding seen from a plain Redis client, prefix isolation,
 * NOSCRIPT, exact totals from many processes and threads, fork safety, a server killed or
 * frozen mid-run, AUTH with a password and with an ACL user, Sentinel failover, and Cluster
 * slot routing, clear/stats over every master and resharding under load.
 *
 * main() starts one standalone server and one 3-master cluster shared by the tests; a test
 * that kills or reconfigures servers starts its own. Every server is a real redis-server on a
 * loopback port, stopped by pid (redis_harness.c).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <urcu/urcu-memb.h>

#include "redis_harness.h"
#include "testutil.h"

/* White-box: the backend's slot function (backends/redis_cluster.c), checked against Redis. */
unsigned rx_key_slot(const char *key, size_t len);
/* White-box: the fork gate's test hooks (backends/redis_cluster.c). */
extern _Atomic(void (*)(void)) rx_rcu_test_inside;
int rx_rcu_test_gate_closed(void);

static rh_server S;   /* a standalone server, with a unix socket */
static rh_cluster CL; /* three cluster masters */

/* ---- helpers --------------------------------------------------------------------------- */

static traffic_backend *open_standalone(const char *prefix, const char *extra)
{
    return tu_open(rh_url("redis://127.0.0.1:%d?prefix=%s%s%s", S.port, prefix, extra ? "&" : "", extra ? extra : ""));
}

static traffic_backend *open_cluster(const char *prefix, const char *extra)
{
    return tu_open(rh_url("redis+cluster://127.0.0.1:%d,127.0.0.1:%d?prefix=%s%s%s", CL.nodes[0].port,
                           CL.nodes[2].port, prefix, extra ? "&" : "", extra ? extra : ""));
}

static void expect_open_fails(const char *url, int want, const char *needle)
{
    traffic_backend *b = (traffic_backend *)&b;
    int64_t t0 = tu_now_ms();
    int rc = traffic_open(url, &b);
    int64_t took = tu_now_ms() - t0;
    ck_assert_msg(rc == want, "open(%s) -> %s (%s), want %s", url, traffic_strerror(rc), traffic_errmsg(NULL),
                  traffic_strerror(want));
    ck_assert_ptr_null(b);
    ck_assert_msg(!needle || strstr(traffic_errmsg(NULL), needle), "open(%s): message \"%s\" lacks \"%s\"", url,
                  traffic_errmsg(NULL), needle);
    ck_assert_msg(took < 3000, "open(%s) took %lld ms to fail", url, (long long)took);
}

/* A loopback port where nobody listens, held (bound, not listening) until close(*fd): a
 * connect there is refused, and no server of another test can take it meanwhile. */
static int refused_port(int *fd)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    *fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(*fd, 0);
    ck_assert_int_eq(bind(*fd, (struct sockaddr *)&a, sizeof a), 0);
    ck_assert_int_eq(getsockname(*fd, (struct sockaddr *)&a, &alen), 0);
    return ntohs(a.sin_port);
}

/* The raw Redis string at key on s ("" with rc -1 if absent). */
static int raw_get(const rh_server *s, const char *key, char *buf, size_t cap)
{
    redisReply *r = rh_cmd(s, "GET %s", key);
    int ok = r && r->type == REDIS_REPLY_STRING;
    if (ok) {
        size_t n = r->len < cap - 1 ? r->len : cap - 1;
        memcpy(buf, r->str, n);
        buf[n] = '\0';
    } else {
        buf[0] = '\0';
    }
    if (r) freeReplyObject(r);
    return ok ? 0 : -1;
}

static void raw_ok(const rh_server *s, const char *fmt, const char *a, const char *b)
{
    redisReply *r = rh_cmd(s, fmt, a, b);
    ck_assert_msg(r && r->type != REDIS_REPLY_ERROR, "%s %s: %s", fmt, a, r && r->str ? r->str : "no reply");
    freeReplyObject(r);
}

/* ---- URLs and options ------------------------------------------------------------------ */

START_TEST(t_url_errors)
{
    expect_open_fails("rediss://127.0.0.1:6379", TRAFFIC_EINVAL, "TLS");
    expect_open_fails("rediss+cluster://127.0.0.1:6379", TRAFFIC_EINVAL, "TLS");
    expect_open_fails("redis+foo://127.0.0.1", TRAFFIC_EINVAL, "redis+foo");
    expect_open_fails("redis://127.0.0.1:0", TRAFFIC_EINVAL, "port");
    expect_open_fails("redis://127.0.0.1:65536", TRAFFIC_EINVAL, "port");
    expect_open_fails("redis://127.0.0.1:12ab", TRAFFIC_EINVAL, "port");
    expect_open_fails("redis://[::1", TRAFFIC_EINVAL, "]");
    expect_open_fails("redis://::1:6379", TRAFFIC_EINVAL, "IPv6");
    expect_open_fails("redis://secret@127.0.0.1", TRAFFIC_EINVAL, "password");
    expect_open_fails("redis://127.0.0.1/x", TRAFFIC_EINVAL, "database");
    expect_open_fails("redis://127.0.0.1/-1", TRAFFIC_EINVAL, "database");
    expect_open_fails("redis://127.0.0.1:1,127.0.0.1:2", TRAFFIC_EINVAL, "one host");
    expect_open_fails("redis+sentinel://127.0.0.1:1", TRAFFIC_EINVAL, "master");
    expect_open_fails("redis+sentinel://127.0.0.1:1/", TRAFFIC_EINVAL, "master");
    expect_open_fails("redis+cluster://127.0.0.1:1/2", TRAFFIC_EINVAL, "database 0");
    expect_open_fails("redis+cluster://", TRAFFIC_EINVAL, "seed");
    expect_open_fails("redis+unix://relative.sock", TRAFFIC_EINVAL, "absolute");
    expect_open_fails("redis://127.0.0.1:1?bogus=1", TRAFFIC_EINVAL, "bogus");
    expect_open_fails("redis://127.0.0.1:1?db=2", TRAFFIC_EINVAL, "db");
    expect_open_fails("redis://127.0.0.1:1?pool_size=0", TRAFFIC_EINVAL, "pool_size");
    expect_open_fails("redis://127.0.0.1:1?pool_size=65", TRAFFIC_EINVAL, "pool_size");
    expect_open_fails("redis://127.0.0.1:1?timeout=0", TRAFFIC_EINVAL, "timeout");
    expect_open_fails("redis://127.0.0.1:1?timeout=abc", TRAFFIC_EINVAL, "timeout");
    expect_open_fails("redis://:bad%zzpw@127.0.0.1:1", TRAFFIC_EINVAL, "escape");
    char longp[400];
    memset(longp, 'p', sizeof longp - 1);
    longp[sizeof longp - 1] = '\0';
    expect_open_fails(rh_url("redis://127.0.0.1:1?prefix=%s", longp), TRAFFIC_EINVAL, "prefix");

    /* well-formed, but nobody there: a prompt TRAFFIC_EUNAVAILABLE naming the address */
    int fd, port = refused_port(&fd);
    expect_open_fails(rh_url("redis://127.0.0.1:%d?prefix=x", port), TRAFFIC_EUNAVAILABLE, "127.0.0.1");
    expect_open_fails(rh_url("redis+unix://%s/no-such.sock", rh_dir()), TRAFFIC_EUNAVAILABLE, "no-such.sock");
    expect_open_fails(rh_url("redis+sentinel://127.0.0.1:%d/mymaster", port), TRAFFIC_EUNAVAILABLE, "sentinel");
    expect_open_fails(rh_url("redis+cluster://127.0.0.1:%d", port), TRAFFIC_EUNAVAILABLE, "127.0.0.1");
    close(fd);
    /* a standalone server is not a cluster, nor a sentinel */
    expect_open_fails(rh_url("redis+cluster://127.0.0.1:%d", S.port), TRAFFIC_EIO, "cluster");
    expect_open_fails(rh_url("redis+sentinel://127.0.0.1:%d/mymaster", S.port), TRAFFIC_EUNAVAILABLE, "mymaster");
}
END_TEST

START_TEST(t_options)
{
    traffic_backend *b = (traffic_backend *)&b;
    traffic_redis_options o = {0};
    ck_assert_int_eq(traffic_redis_open(&o, NULL), TRAFFIC_EINVAL);
    o.mode = (traffic_redis_mode)9;
    ck_assert_int_eq(traffic_redis_open(&o, &b), TRAFFIC_EINVAL);
    ck_assert_ptr_null(b);
    traffic_redis_options unix_nopath = {.mode = TRAFFIC_REDIS_UNIX};
    ck_assert_int_eq(traffic_redis_open(&unix_nopath, &b), TRAFFIC_EINVAL);
    traffic_redis_options user_only = {.hosts = "127.0.0.1", .user = "app"};
    ck_assert_int_eq(traffic_redis_open(&user_only, &b), TRAFFIC_EINVAL);
    traffic_redis_options cluster_db = {.mode = TRAFFIC_REDIS_CLUSTER, .hosts = "127.0.0.1:1", .db = 1};
    ck_assert_int_eq(traffic_redis_open(&cluster_db, &b), TRAFFIC_EINVAL);
    traffic_redis_options sentinel_nomaster = {.mode = TRAFFIC_REDIS_SENTINEL, .hosts = "127.0.0.1:1"};
    ck_assert_int_eq(traffic_redis_open(&sentinel_nomaster, &b), TRAFFIC_EINVAL);
    traffic_redis_options bad_timeout = {.hosts = "127.0.0.1:1", .timeout = -1};
    ck_assert_int_eq(traffic_redis_open(&bad_timeout, &b), TRAFFIC_EINVAL);

    /* TCP and unix socket through the options, with a db, a prefix, a pool */
    char hosts[64];
    snprintf(hosts, sizeof hosts, "127.0.0.1:%d", S.port);
    const char *prefix = rh_prefix("opts");
    traffic_redis_options tcp = {.hosts = hosts, .db = 7, .prefix = prefix, .timeout = 0.5, .pool_size = 2};
    TU_OK(NULL, traffic_redis_open(&tcp, &b));
    TU_OK(b, traffic_set(b, "k", "tcp", 3, 0));
    struct traffic_stats st;
    TU_OK(b, traffic_stats(b, &st));
    ck_assert_str_eq(st.backend, "redis");
    ck_assert_uint_eq(st.keys, 1);
    ck_assert_uint_gt(st.bytes_used, 0);
    TU_OK(b, traffic_close(b));
    traffic_redis_options uds = {.mode = TRAFFIC_REDIS_UNIX, .path = S.sock, .db = 7, .prefix = prefix};
    TU_OK(NULL, traffic_redis_open(&uds, &b));
    char buf[8];
    size_t len;
    TU_OK(b, traffic_get(b, "k", buf, sizeof buf, &len)); /* same server, same db, same prefix */
    ck_assert(len == 3 && memcmp(buf, "tcp", 3) == 0);
    TU_OK(b, traffic_close(b));
    redisReply *r = rh_cmd(&S, "INFO keyspace");
    ck_assert_ptr_nonnull(r);
    ck_assert_msg(strstr(r->str, "db7:keys="), "the key is not in db 7: %s", r->str);
    freeReplyObject(r);

    /* an empty prefix is allowed: keys are then the bare names */
    b = tu_open(rh_url("redis://127.0.0.1:%d/8?prefix=", S.port));
    TU_OK(b, traffic_increment(b, "bare", 3, 0, NULL));
    TU_OK(b, traffic_close(b));
    b = tu_open(rh_url("redis://127.0.0.1:%d/8?prefix=bar", S.port));
    ck_assert_int_eq(tu_counter(b, "e"), 3); /* "bar"+"e" */
    TU_OK(b, traffic_close(b));
}
END_TEST

/* ---- encoding, prefixes, scripts ------------------------------------------------------- */

START_TEST(t_encoding)
{
    const char *p = rh_prefix("enc");
    traffic_backend *b = open_standalone(p, NULL);
    char key[256], raw[64];
    int64_t out = 0;

    /* a counter is a plain Redis integer: readable and writable by any client */
    TU_OK(b, traffic_increment(b, "c", 5, 0, &out));
    snprintf(key, sizeof key, "%sc", p);
    ck_assert_int_eq(raw_get(&S, key, raw, sizeof raw), 0);
    ck_assert_str_eq(raw, "5");
    ck_assert_int_eq(rh_int(&S, "INCRBY %s 10", key), 15);
    ck_assert_int_eq(tu_counter(b, "c"), 15);
    TU_OK(b, traffic_increment(b, "c", 1, 0, &out));
    ck_assert_int_eq(out, 16);

    /* a bytes value carries the '=' tag, so "12" set as bytes is not a counter */
    TU_OK(b, traffic_set(b, "n", "12", 2, 0));
    snprintf(key, sizeof key, "%sn", p);
    raw_get(&S, key, raw, sizeof raw);
    ck_assert_str_eq(raw, "=12");
    ck_assert_int_eq(traffic_increment(b, "n", 1, 0, &out), TRAFFIC_ETYPE);
    ck_assert_msg(strstr(traffic_errmsg(b), "not a counter"), "%s", traffic_errmsg(b));

    /* what other clients store under the prefix: an untagged integer counts, a hash is ETYPE */
    snprintf(key, sizeof key, "%sforeign", p);
    raw_ok(&S, "SET %s %s", key, "41");
    TU_OK(b, traffic_increment(b, "foreign", 1, 0, &out));
    ck_assert_int_eq(out, 42);
    snprintf(key, sizeof key, "%shash", p);
    raw_ok(&S, "HSET %s f %s", key, "v");
    char buf[16];
    size_t len;
    ck_assert_int_eq(traffic_get(b, "hash", buf, sizeof buf, &len), TRAFFIC_ETYPE);
    ck_assert_msg(strstr(traffic_errmsg(b), "WRONGTYPE"), "%s", traffic_errmsg(b));
    ck_assert_int_eq(traffic_increment(b, "hash", 1, 0, &out), TRAFFIC_ETYPE);
    ck_assert_int_eq(traffic_exists(b, "hash"), 1);
    TU_OK(b, traffic_delete(b, "hash"));

    /* TTLs are Redis expiries in milliseconds */
    TU_OK(b, traffic_increment(b, "t", 1, 5, NULL));
    snprintf(key, sizeof key, "%st", p);
    long long pttl = rh_int(&S, "PTTL %s", key);
    ck_assert_msg(pttl > 4000 && pttl <= 5000, "PTTL %lld", pttl);
    TU_OK(b, traffic_set(b, "s", "x", 1, 2.5));
    snprintf(key, sizeof key, "%ss", p);
    pttl = rh_int(&S, "PTTL %s", key);
    ck_assert_msg(pttl > 2000 && pttl <= 2500, "PTTL %lld", pttl);
    TU_OK(b, traffic_close(b));
}
END_TEST

START_TEST(t_prefix_isolation)
{
    const char *pa = rh_prefix("isoa"), *pb = rh_prefix("isob");
    traffic_backend *a = open_standalone(pa, NULL), *b = open_standalone(pb, NULL);
    /* glob characters in a prefix are literal: "g*[x]:" must not clear "gQx:k" */
    traffic_backend *g = tu_open(rh_url("redis://127.0.0.1:%d?prefix=g%%2A%%5Bx%%5D:", S.port));
    char key[64];
    for (int i = 0; i < 50; i++) {
        snprintf(key, sizeof key, "k%d", i);
        TU_OK(a, traffic_set(a, key, "a", 1, 0));
        TU_OK(b, traffic_increment(b, key, i, 0, NULL));
        TU_OK(g, traffic_set(g, key, "g", 1, 0));
    }
    char outside[128];
    snprintf(outside, sizeof outside, "%.*s", (int)strlen(pa) - 1, pa); /* the prefix without its ':' */
    raw_ok(&S, "SET %s %s", outside, "mine");
    raw_ok(&S, "SET %s %s", "gQx:k1", "lookalike");

    struct traffic_stats st;
    TU_OK(a, traffic_stats(a, &st));
    ck_assert_uint_eq(st.keys, 50);
    TU_OK(a, traffic_clear(a));
    TU_OK(a, traffic_stats(a, &st));
    ck_assert_uint_eq(st.keys, 0);
    TU_OK(b, traffic_stats(b, &st));
    ck_assert_uint_eq(st.keys, 50);
    ck_assert_int_eq(tu_counter(b, "k49"), 49);
    char raw[32];
    ck_assert_int_eq(raw_get(&S, outside, raw, sizeof raw), 0);
    ck_assert_str_eq(raw, "mine");

    TU_OK(g, traffic_stats(g, &st));
    ck_assert_uint_eq(st.keys, 50);
    TU_OK(g, traffic_clear(g));
    TU_OK(g, traffic_stats(g, &st));
    ck_assert_uint_eq(st.keys, 0);
    ck_assert_int_eq(raw_get(&S, "gQx:k1", raw, sizeof raw), 0);
    ck_assert_str_eq(raw, "lookalike");
    TU_OK(b, traffic_stats(b, &st));
    ck_assert_uint_eq(st.keys, 50);
    TU_OK(b, traffic_clear(b));
    rh_int(&S, "DEL %s", outside);
    rh_int(&S, "DEL %s", "gQx:k1");
    TU_OK(a, traffic_close(a));
    TU_OK(b, traffic_close(b));
    TU_OK(g, traffic_close(g));
}
END_TEST

START_TEST(t_noscript)
{
    traffic_backend *b = open_standalone(rh_prefix("nos"), NULL);
    int64_t out = 0;
    TU_OK(b, traffic_increment(b, "c", 1, 0, &out));
    char ok[16];
    ck_assert_int_eq(rh_str(&S, ok, sizeof ok, "SCRIPT FLUSH"), 0);
    TU_OK(b, traffic_increment(b, "c", 1, 0, &out)); /* NOSCRIPT -> EVAL, which reloads it */
    ck_assert_int_eq(out, 2);
    TU_OK(b, traffic_increment(b, "c", 1, 0, &out)); /* and EVALSHA works again */
    ck_assert_int_eq(out, 3);
    TU_OK(b, traffic_close(b));
}
END_TEST

/* Errors that are not about the value's type keep their meaning through the increment
 * script: OOM is EFULL (as for set), a read-only replica is not a "bytes value". */
START_TEST(t_script_errors_keep_their_meaning)
{
    traffic_backend *b = open_standalone(rh_prefix("err"), NULL);
    TU_OK(b, traffic_increment(b, "c", 1, 0, NULL));
    char ok[16];
    ck_assert_int_eq(rh_str(&S, ok, sizeof ok, "CONFIG SET maxmemory 1"), 0);
    int rc = traffic_increment(b, "c", 1, 0, NULL);
    ck_assert_int_eq(rh_str(&S, ok, sizeof ok, "CONFIG SET maxmemory 0"), 0);
    ck_assert_msg(rc == TRAFFIC_EFULL, "OOM gave %s (%s)", traffic_strerror(rc), traffic_errmsg(b));
    ck_assert_int_eq(rh_str(&S, ok, sizeof ok, "REPLICAOF 127.0.0.1 1"), 0);
    rc = traffic_increment(b, "c", 1, 0, NULL);
    ck_assert_int_eq(rh_str(&S, ok, sizeof ok, "REPLICAOF NO ONE"), 0);
    ck_assert_msg(rc != TRAFFIC_OK && rc != TRAFFIC_ETYPE, "READONLY gave %s (%s)", traffic_strerror(rc),
                  traffic_errmsg(b));
    TU_OK(b, traffic_increment(b, "c", 1, 0, NULL)); /* and the handle recovers */
    TU_OK(b, traffic_set(b, "v", "x", 1, 0));
    ck_assert_int_eq(traffic_increment(b, "v", 1, 0, NULL), TRAFFIC_ETYPE); /* the real type error */
    TU_OK(b, traffic_close(b));
}
END_TEST

/* ---- processes, threads, fork ---------------------------------------------------------- */

#define PROCS      4
#define PROC_INCRS 2000
#define PROC_KEYS  4

/* Each of PROCS children increments PROC_KEYS keys PROC_INCRS times in all, with its own handle
 * (shared == NULL) or the parent's inherited one; returns the children's failures. */
static int run_children(const char *url, traffic_backend *shared, int threads_per_child);

struct incr_job {
    traffic_backend *b;
    int n, id;
    atomic_int *failures;
    atomic_int *started;
};

static void *incr_thread(void *arg)
{
    struct incr_job *j = arg;
    char key[32];
    for (int i = 0; i < j->n; i++) {
        snprintf(key, sizeof key, "k%d", (i + j->id) % PROC_KEYS);
        if (j->started) atomic_fetch_add(j->started, 1);
        int rc = traffic_increment(j->b, key, 1, 0, NULL);
        if (rc != TRAFFIC_OK) {
            if (atomic_fetch_add(j->failures, 1) < 3)
                fprintf(stderr, "pid %d: increment(%s) -> %s (%s)\n", (int)getpid(), key, traffic_strerror(rc),
                        traffic_errmsg(j->b));
        }
    }
    return NULL;
}

static int run_children(const char *url, traffic_backend *shared, int threads)
{
    atomic_int *failures = tu_shared(sizeof *failures);
    pid_t pids[PROCS];
    for (int p = 0; p < PROCS; p++) {
        pids[p] = fork();
        ck_assert_int_ge(pids[p], 0);
        if (pids[p] == 0) {
            traffic_backend *b = shared;
            if (!b && traffic_open(url, &b) != TRAFFIC_OK) {
                fprintf(stderr, "child open: %s\n", traffic_errmsg(NULL));
                _exit(2);
            }
            pthread_t tid[8];
            struct incr_job jobs[8];
            for (int t = 0; t < threads; t++) {
                jobs[t] = (struct incr_job){.b = b, .n = PROC_INCRS / threads, .id = p + t, .failures = failures};
                pthread_create(&tid[t], NULL, incr_thread, &jobs[t]);
            }
            for (int t = 0; t < threads; t++)
                pthread_join(tid[t], NULL);
            traffic_close(b); /* a child closing the parent's handle closes only its own connections */
            _exit(0);
        }
    }
    for (int p = 0; p < PROCS; p++)
        ck_assert_int_eq(tu_wait(pids[p]), 0);
    return atomic_load(failures);
}

static void expect_totals(traffic_backend *b, int64_t each)
{
    char key[32];
    for (int k = 0; k < PROC_KEYS; k++) {
        snprintf(key, sizeof key, "k%d", k);
        int64_t v = tu_counter(b, key);
        ck_assert_msg(v == each, "%s = %" PRId64 ", want %" PRId64, key, v, each);
    }
}

START_TEST(t_processes_exact)
{
    const char *url = rh_url("redis://127.0.0.1:%d?prefix=%s", S.port, rh_prefix("procs"));
    ck_assert_int_eq(run_children(url, NULL, 2), 0);
    traffic_backend *b = tu_open(url);
    expect_totals(b, PROCS * PROC_INCRS / PROC_KEYS);
    TU_OK(b, traffic_close(b));
}
END_TEST

START_TEST(t_fork_parent_handle)
{
    /* The parent opens and uses the handle (its pool is connected), then keeps using it while
     * its children use the same handle: any byte a child sent on a parent's socket would
     * desynchronise the parent's replies, and the totals would not come out exact. */
    traffic_backend *b = open_standalone(rh_prefix("fork"), "pool_size=2");
    TU_OK(b, traffic_increment(b, "k0", 0, 0, NULL));
    long long clients0 = 0;
    redisReply *r = rh_cmd(&S, "INFO clients");
    sscanf(strstr(r->str, "connected_clients:") + 18, "%lld", &clients0);
    freeReplyObject(r);

    atomic_int *failures = tu_shared(sizeof *failures);
    struct incr_job parent_job = {.b = b, .n = PROC_INCRS, .id = 0, .failures = failures};
    pthread_t tid;
    ck_assert_int_eq(pthread_create(&tid, NULL, incr_thread, &parent_job), 0);
#if TU_ASAN
    pthread_join(tid, NULL); /* no thread of ours may allocate across fork() here (testutil.h) */
#endif
    int child_failures = run_children(NULL, b, 2);
#if !TU_ASAN
    pthread_join(tid, NULL);
#endif
    ck_assert_int_eq(child_failures, 0);
    ck_assert_int_eq(atomic_load(failures), 0);
    expect_totals(b, (PROCS + 1) * PROC_INCRS / PROC_KEYS);

    /* a child that only closes the inherited handle leaves the parent's connections alone */
    pid_t pid = fork();
    if (pid == 0) _exit(traffic_close(b) == TRAFFIC_OK ? 0 : 1);
    ck_assert_int_eq(tu_wait(pid), 0);
    TU_OK(b, traffic_increment(b, "k0", 1, 0, NULL));
    /* the children's own connections went away with them (the server notices a moment later) */
    long long clients1 = 0;
    for (int64_t deadline = tu_now_ms() + 3000; tu_now_ms() < deadline; tu_sleep_ms(20)) {
        r = rh_cmd(&S, "INFO clients");
        sscanf(strstr(r->str, "connected_clients:") + 18, "%lld", &clients1);
        freeReplyObject(r);
        if (clients1 <= clients0 + 2) break;
    }
    ck_assert_msg(clients1 <= clients0 + 2, "connections leaked: %lld before, %lld after", clients0, clients1);
    TU_OK(b, traffic_close(b));
}
END_TEST

START_TEST(t_threads_small_pool)
{
    /* 8 threads share 2 connections: they wait their turn, nobody fails */
    traffic_backend *b = open_standalone(rh_prefix("pool"), "pool_size=2");
    atomic_int failures = 0;
    pthread_t tid[8];
    struct incr_job jobs[8];
    for (int t = 0; t < 8; t++) {
        jobs[t] = (struct incr_job){.b = b, .n = 1000, .id = t, .failures = &failures};
        ck_assert_int_eq(pthread_create(&tid[t], NULL, incr_thread, &jobs[t]), 0);
    }
    for (int t = 0; t < 8; t++)
        pthread_join(tid[t], NULL);
    ck_assert_int_eq(atomic_load(&failures), 0);
    expect_totals(b, 8 * 1000 / PROC_KEYS);
    TU_OK(b, traffic_close(b));
}
END_TEST

/* ---- faults ---------------------------------------------------------------------------- */

struct fault_thread {
    pthread_t tid;
    traffic_backend *b;
    atomic_int *stop;
    atomic_int ok_before, failed, ok_after_fail, bad_status; /* read by the main thread meanwhile */
    int64_t worst_fail_ms;
};

static void *fault_loop(void *arg)
{
    struct fault_thread *f = arg;
    while (!atomic_load(f->stop)) {
        int64_t t0 = tu_now_ms();
        int rc = traffic_increment(f->b, "live", 1, 0, NULL);
        int64_t took = tu_now_ms() - t0;
        if (rc == TRAFFIC_OK) {
            if (f->failed)
                f->ok_after_fail++;
            else
                f->ok_before++;
        } else {
            f->failed++;
            if (took > f->worst_fail_ms) f->worst_fail_ms = took;
            if (rc != TRAFFIC_EUNAVAILABLE && rc != TRAFFIC_ETIMEDOUT) f->bad_status = rc;
            tu_sleep_ms(5);
        }
    }
    return NULL;
}

START_TEST(t_server_killed)
{
    rh_server s = {0};
    ck_assert_int_eq(rh_start(&s, NULL), 0);
    traffic_backend *b = tu_open(rh_url("redis://127.0.0.1:%d?prefix=kill:&timeout=0.5", s.port));
    atomic_int stop = 0;
    struct fault_thread f[3];
    memset(f, 0, sizeof f);
    for (int i = 0; i < 3; i++) {
        f[i].b = b, f[i].stop = &stop;
        ck_assert_int_eq(pthread_create(&f[i].tid, NULL, fault_loop, &f[i]), 0);
    }
    tu_sleep_ms(200);
    rh_kill(&s);
    tu_sleep_ms(800);
    /* errors, promptly, from the main thread too */
    int64_t t0 = tu_now_ms();
    int rc = traffic_set(b, "x", "y", 1, 0);
    ck_assert_msg(rc == TRAFFIC_EUNAVAILABLE, "set on a dead server -> %s", traffic_strerror(rc));
    ck_assert_msg(strstr(traffic_errmsg(b), "127.0.0.1"), "message: %s", traffic_errmsg(b));
    ck_assert_int_lt(tu_now_ms() - t0, 600);

    ck_assert_int_eq(rh_restart(&s), 0);
    /* the same handle recovers by itself */
    int64_t deadline = tu_now_ms() + 5000;
    while ((rc = traffic_set(b, "x", "y", 1, 0)) != TRAFFIC_OK && tu_now_ms() < deadline)
        tu_sleep_ms(20);
    ck_assert_msg(rc == TRAFFIC_OK, "no recovery: %s (%s)", traffic_strerror(rc), traffic_errmsg(b));
    int64_t t_recovered = tu_now_ms();
    while (tu_now_ms() < t_recovered + 1500) { /* let every thread get through again */
        int all = 1;
        for (int i = 0; i < 3; i++)
            all &= f[i].ok_after_fail > 0;
        if (all) break;
        tu_sleep_ms(20);
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < 3; i++) {
        pthread_join(f[i].tid, NULL);
        ck_assert_msg(f[i].ok_before > 0 && f[i].failed > 0 && f[i].ok_after_fail > 0,
                      "thread %d: %d ok, %d failed, %d ok after", i, f[i].ok_before, f[i].failed, f[i].ok_after_fail);
        ck_assert_msg(f[i].bad_status == 0, "thread %d saw %s", i, traffic_strerror(f[i].bad_status));
        ck_assert_msg(f[i].worst_fail_ms < 700, "thread %d: a failure took %lld ms", i, (long long)f[i].worst_fail_ms);
    }
    TU_OK(b, traffic_close(b));
    rh_kill(&s);
}
END_TEST

START_TEST(t_server_frozen)
{
    /* A server that accepts but never answers (SIGSTOP): ETIMEDOUT after `timeout`, and a call
     * waiting for the only pooled connection gives up in time too. */
    rh_server s = {0};
    ck_assert_int_eq(rh_start(&s, NULL), 0);
    traffic_backend *b = tu_open(rh_url("redis://127.0.0.1:%d?prefix=frz:&timeout=0.3&pool_size=1", s.port));
    TU_OK(b, traffic_set(b, "k", "v", 1, 0));
    rh_pause(&s, 1);
    tu_timed g = {.b = b, .op = TU_GET, .key = "k"};
    pthread_t tid;
    ck_assert_int_eq(pthread_create(&tid, NULL, tu_timed_call, &g), 0);
    tu_sleep_ms(50);
    int64_t t0 = tu_now_ms();
    int rc = traffic_set(b, "k", "w", 1, 0);
    int64_t took = tu_now_ms() - t0;
    pthread_join(tid, NULL);
    ck_assert_msg(g.rc == TRAFFIC_ETIMEDOUT, "get on a frozen server -> %s", traffic_strerror(g.rc));
    ck_assert_msg(g.took >= 250 && g.took < 1000, "get gave up after %lld ms", (long long)g.took);
    ck_assert_msg(rc == TRAFFIC_ETIMEDOUT, "set waiting for the pool -> %s (%s)", traffic_strerror(rc),
                  traffic_errmsg(b));
    /* ~300 ms: its reads are cut to what the pool wait left (a full timeout: ~550 ms) */
    ck_assert_msg(took < 450, "set gave up after %lld ms", (long long)took);
    rh_pause(&s, 0);
    int64_t deadline = tu_now_ms() + 3000;
    while ((rc = traffic_set(b, "k", "x", 1, 0)) != TRAFFIC_OK && tu_now_ms() < deadline)
        tu_sleep_ms(20);
    TU_OK(b, rc);
    TU_OK(b, traffic_close(b));
    rh_kill(&s);
}
END_TEST

/* ---- AUTH ------------------------------------------------------------------------------ */

START_TEST(t_auth_password)
{
    rh_server s = {0};
    snprintf(s.password, sizeof s.password, "p@ss:w/rd");
    ck_assert_int_eq(rh_start(&s, "requirepass \"p@ss:w/rd\"\n"), 0);
    traffic_backend *b = tu_open(rh_url("redis://:p%%40ss%%3Aw%%2Frd@127.0.0.1:%d?prefix=auth:", s.port));
    TU_OK(b, traffic_increment(b, "c", 2, 0, NULL));
    ck_assert_int_eq(tu_counter(b, "c"), 2);
    TU_OK(b, traffic_close(b));
    expect_open_fails(rh_url("redis://127.0.0.1:%d", s.port), TRAFFIC_EPERM, "NOAUTH");
    expect_open_fails(rh_url("redis://:wrong@127.0.0.1:%d", s.port), TRAFFIC_EPERM, "WRONGPASS");
    traffic_redis_options o = {.hosts = rh_url("127.0.0.1:%d", s.port), .password = "p@ss:w/rd", .prefix = "auth:"};
    TU_OK(NULL, traffic_redis_open(&o, &b));
    ck_assert_int_eq(tu_counter(b, "c"), 2);
    TU_OK(b, traffic_close(b));
    rh_kill(&s);
}
END_TEST

START_TEST(t_auth_acl_user)
{
    rh_server s = {0};
    snprintf(s.password, sizeof s.password, "adminpw");
    ck_assert_int_eq(rh_start(&s, "user default on >adminpw ~* &* +@all\n"
                                  "user app on >apppw ~app:* +@all -flushall -flushdb -select\n"),
                     0);
    traffic_backend *b = tu_open(rh_url("redis://app:apppw@127.0.0.1:%d?prefix=app:", s.port));
    TU_OK(b, traffic_set(b, "k", "v", 1, 0));
    TU_OK(b, traffic_increment(b, "c", 1, 0, NULL));
    TU_OK(b, traffic_clear(b));
    ck_assert_int_eq(traffic_exists(b, "k"), 0);
    TU_OK(b, traffic_close(b));
    expect_open_fails(rh_url("redis://app:wrong@127.0.0.1:%d", s.port), TRAFFIC_EPERM, "app");
    expect_open_fails(rh_url("redis://nobody:apppw@127.0.0.1:%d", s.port), TRAFFIC_EPERM, "WRONGPASS");
    /* a database the user may not SELECT: a refusal, not a bad URL */
    expect_open_fails(rh_url("redis://app:apppw@127.0.0.1:%d/1", s.port), TRAFFIC_EPERM, "NOPERM");
    /* a prefix outside the user's key pattern: each call says NOPERM */
    b = tu_open(rh_url("redis://app:apppw@127.0.0.1:%d?prefix=other:", s.port));
    ck_assert_int_eq(traffic_set(b, "k", "v", 1, 0), TRAFFIC_EPERM);
    ck_assert_msg(strstr(traffic_errmsg(b), "NOPERM"), "%s", traffic_errmsg(b));
    ck_assert_int_eq(traffic_increment(b, "c", 1, 0, NULL), TRAFFIC_EPERM);
    TU_OK(b, traffic_close(b));
    rh_kill(&s);
}
END_TEST

/* ---- Sentinel -------------------------------------------------------------------------- */

START_TEST(t_sentinel_failover)
{
    rh_sentinel_set set;
    ck_assert_int_eq(rh_sentinel_start(&set, 1, "sentpw"), 0);
    int fd, dead = refused_port(&fd); /* a sentinel that is down is skipped */
    traffic_backend *b = tu_open(rh_url("redis+sentinel://:sentpw@127.0.0.1:%d,127.0.0.1:%d/mymaster?prefix=fo:"
                                         "&timeout=0.5",
                                         dead, set.sentinels[0].port));
    int64_t out = 0;
    TU_OK(b, traffic_increment(b, "c", 10, 0, &out));
    char raw[32];
    ck_assert_int_eq(raw_get(&set.master, "fo:c", raw, sizeof raw), 0); /* written to the master */
    ck_assert_str_eq(raw, "10");
    int64_t deadline = tu_now_ms() + 5000; /* replicated before the master dies */
    while ((raw_get(&set.replica, "fo:c", raw, sizeof raw) || strcmp(raw, "10")) && tu_now_ms() < deadline)
        tu_sleep_ms(20);
    ck_assert_str_eq(raw, "10");

    rh_kill(&set.master);
    int64_t t0 = tu_now_ms();
    int failures = 0, rc;
    deadline = t0 + 30000;
    for (;;) {
        int64_t t1 = tu_now_ms();
        rc = traffic_increment(b, "c", 1, 0, &out);
        if (rc == TRAFFIC_OK || tu_now_ms() > deadline) break;
        ck_assert_msg(rc == TRAFFIC_EUNAVAILABLE || rc == TRAFFIC_ETIMEDOUT, "during failover: %s (%s)",
                      traffic_strerror(rc), traffic_errmsg(b));
        ck_assert_msg(tu_now_ms() - t1 < 1500, "a call took %lld ms during the failover",
                      (long long)(tu_now_ms() - t1));
        failures++;
        tu_sleep_ms(50);
    }
    ck_assert_msg(rc == TRAFFIC_OK, "never followed the failover: %s (%s)", traffic_strerror(rc), traffic_errmsg(b));
    ck_assert_int_gt(failures, 0);
    ck_assert_int_eq(out, 11);
    char role[32];
    redisReply *r = rh_cmd(&set.replica, "ROLE");
    ck_assert_ptr_nonnull(r);
    snprintf(role, sizeof role, "%s", r->element[0]->str);
    freeReplyObject(r);
    ck_assert_str_eq(role, "master"); /* the replica was promoted, and we write there */
    raw_get(&set.replica, "fo:c", raw, sizeof raw);
    ck_assert_str_eq(raw, "11");
    fprintf(stderr, "sentinel failover followed in %lld ms (%d failed calls)\n", (long long)(tu_now_ms() - t0),
            failures);
    TU_OK(b, traffic_close(b));
    close(fd);
    rh_sentinel_stop(&set);
}
END_TEST

/* ---- Cluster --------------------------------------------------------------------------- */

START_TEST(t_cluster_slots)
{
    ck_assert_uint_eq(rx_key_slot("123456789", 9), 0x31C3 & 16383);
    static const char *special[] = {"{user1000}.following",
                                    "{user1000}.followers",
                                    "foo{}{bar}",
                                    "foo{{bar}}zap",
                                    "foo{bar}{zap}",
                                    "{}",
                                    "{",
                                    "}",
                                    "a{b",
                                    "x}y{z}",
                                    "{a}"};
    char key[64];
    for (int i = 0; i < 400; i++) {
        const char *k = key;
        if (i < (int)(sizeof special / sizeof special[0]))
            k = special[i];
        else
            snprintf(key, sizeof key, i % 3 ? "key:%d:%x" : "pre{tag%d}post%x", i, (unsigned)(i * 2654435761u));
        long long want = rh_int(&CL.nodes[0], "CLUSTER KEYSLOT %s", k);
        ck_assert_msg(want == (long long)rx_key_slot(k, strlen(k)), "slot of \"%s\": ours %u, redis %lld", k,
                      rx_key_slot(k, strlen(k)), want);
    }
}
END_TEST

START_TEST(t_cluster_clear_stats)
{
    const char *p = rh_prefix("cl");
    traffic_backend *b = open_cluster(p, NULL);
    long long before[RH_CLUSTER_MAX];
    for (int n = 0; n < CL.n; n++)
        before[n] = rh_int(&CL.nodes[n], "DBSIZE");
    char key[64];
    for (int i = 0; i < 300; i++) {
        snprintf(key, sizeof key, "k%d", i);
        TU_OK(b, traffic_set(b, key, "v", 1, 0));
    }
    /* spread over every master, each holding some; keys outside the prefix on each too */
    char outside[RH_CLUSTER_MAX][32];
    for (int n = 0; n < CL.n; n++) {
        ck_assert_int_gt(rh_int(&CL.nodes[n], "DBSIZE"), before[n]);
        for (int i = 0;; i++) {
            snprintf(outside[n], sizeof outside[n], "outside-%d", i);
            if (rh_cluster_owner(&CL, (int)rx_key_slot(outside[n], strlen(outside[n]))) == n) break;
        }
        raw_ok(&CL.nodes[n], "SET %s %s", outside[n], "keep");
    }
    struct traffic_stats st;
    TU_OK(b, traffic_stats(b, &st));
    ck_assert_uint_eq(st.keys, 300);
    ck_assert_uint_gt(st.bytes_used, 0);
    TU_OK(b, traffic_clear(b));
    TU_OK(b, traffic_stats(b, &st));
    ck_assert_uint_eq(st.keys, 0);
    for (int n = 0; n < CL.n; n++) {
        ck_assert_int_eq(rh_int(&CL.nodes[n], "DBSIZE"), before[n] + 1); /* and its "outside" key */
        ck_assert_int_eq(rh_int(&CL.nodes[n], "DEL %s", outside[n]), 1);
    }
    TU_OK(b, traffic_close(b));
}
END_TEST

#define HOT_KEYS    40
#define HOT_THREADS 2
#define HOT_INCRS   3000

struct hot_job {
    traffic_backend *b;
    int id;
    atomic_int *failures, *progress;
};

static void *hot_thread(void *arg)
{
    struct hot_job *j = arg;
    char key[32];
    for (int i = 0; i < HOT_INCRS; i++) {
        snprintf(key, sizeof key, "{hot}%d", (i * 7 + j->id) % HOT_KEYS);
        int rc = traffic_increment(j->b, key, 1, 0, NULL);
        atomic_fetch_add(j->progress, 1);
        if (rc != TRAFFIC_OK && atomic_fetch_add(j->failures, 1) < 3)
            fprintf(stderr, "pid %d: increment(%s) -> %s (%s)\n", (int)getpid(), key, traffic_strerror(rc),
                    traffic_errmsg(j->b));
    }
    return NULL;
}

static void pause_between_batches(void *arg)
{
    (void)arg;
    tu_sleep_ms(15);
}

START_TEST(t_cluster_reshard)
{
    /* Clients in 4 processes (using a handle their parent opened and used: fork safety of the
     * slot map too) increment keys of one slot while that slot migrates to another master. */
    const char *p = "rs:";
    traffic_backend *b = open_cluster(p, NULL);
    char first[32];
    snprintf(first, sizeof first, "%s{hot}0", p);
    int slot = (int)rx_key_slot(first, strlen(first));
    int from = rh_cluster_owner(&CL, slot), to = (from + 1) % CL.n;
    ck_assert_int_ge(from, 0);
    for (int k = 0; k < HOT_KEYS; k++) { /* the slot holds keys before the move begins */
        char key[32];
        snprintf(key, sizeof key, "{hot}%d", k);
        TU_OK(b, traffic_increment(b, key, 0, 0, NULL));
    }

    atomic_int *shared = tu_shared(2 * sizeof(atomic_int));
    atomic_int *failures = &shared[0], *progress = &shared[1];
    pid_t pids[PROCS];
    for (int c = 0; c < PROCS; c++) {
        if ((pids[c] = fork()) == 0) {
            pthread_t tid[HOT_THREADS];
            struct hot_job jobs[HOT_THREADS];
            for (int t = 0; t < HOT_THREADS; t++) {
                jobs[t] =
                    (struct hot_job){.b = b, .id = c * HOT_THREADS + t, .failures = failures, .progress = progress};
                pthread_create(&tid[t], NULL, hot_thread, &jobs[t]);
            }
            for (int t = 0; t < HOT_THREADS; t++)
                pthread_join(tid[t], NULL);
            _exit(0);
        }
        ck_assert_int_gt(pids[c], 0);
    }
    const int total = PROCS * HOT_THREADS * HOT_INCRS;
    while (atomic_load(progress) < total / 10)
        tu_sleep_ms(2);
    int moved = rh_cluster_move_slot(&CL, slot, from, to, pause_between_batches, NULL);
    int progress_at_end = atomic_load(progress);
    for (int c = 0; c < PROCS; c++)
        ck_assert_int_eq(tu_wait(pids[c]), 0);
    ck_assert_int_eq(moved, HOT_KEYS);
    ck_assert_msg(progress_at_end < total, "the clients finished before the move did: no overlap");
    ck_assert_int_eq(atomic_load(failures), 0);
    ck_assert_int_eq(rh_cluster_owner(&CL, slot), to);
    ck_assert_int_eq(rh_int(&CL.nodes[to], "EXISTS %s", first), 1);
    redisReply *r = rh_cmd(&CL.nodes[from], "EXISTS %s", first);
    ck_assert_msg(r && r->type == REDIS_REPLY_ERROR && !strncmp(r->str, "MOVED", 5), "the old owner still serves it");
    freeReplyObject(r);
    int64_t sum = 0;
    for (int k = 0; k < HOT_KEYS; k++) {
        char key[32];
        snprintf(key, sizeof key, "{hot}%d", k);
        sum += tu_counter(b, key); /* the parent's own map is stale: MOVED, then refreshed */
    }
    ck_assert_int_eq(sum, total);
    TU_OK(b, traffic_clear(b));
    TU_OK(b, traffic_close(b));
}
END_TEST

/* One node of a cluster frozen: a process that has no slot map yet loads it from the others
 * (each node gets a share of the call's time, so the frozen one cannot take it all). Then all
 * nodes out (one killed, two frozen): every call gives up within its own timeout, slot-map
 * reloads included. (Without the deadline, a reload asked every master and seed in turn
 * with a fresh timeout each, and threads queued on it repeated it one after another.) */
START_TEST(t_cluster_all_nodes_out)
{
    rh_cluster cl = {0};
    ck_assert_int_eq(rh_cluster_start(&cl, 3), 0);
    traffic_backend *b =
        tu_open(rh_url("redis+cluster://127.0.0.1:%d,127.0.0.1:%d,127.0.0.1:%d?prefix=out:&timeout=0.3&pool_size=2",
                        cl.nodes[0].port, cl.nodes[1].port, cl.nodes[2].port));
    enum { N = 6 };
    char key[32];
    for (int i = 0; i < N; i++) { /* connections to every node, and the map */
        snprintf(key, sizeof key, "k%d", i);
        TU_OK(b, traffic_set(b, key, "v", 1, 0));
    }
    /* The first seed freezes: a process without a map yet (a child: new pid, new state) must
     * still load it from the others and reach the keys they serve, quickly (before the cluster
     * itself marks the node failed, after 2 s). */
    char alive[3][32];
    for (int i = 0, n = 0; n < 3; i++) { /* keys the other nodes serve (asked before the freeze) */
        char full[40];
        snprintf(alive[n], sizeof alive[n], "f%d", i);
        snprintf(full, sizeof full, "out:%s", alive[n]);
        if (rh_cluster_owner(&cl, (int)rx_key_slot(full, strlen(full))) != 0) n++;
    }
    rh_pause(&cl.nodes[0], 1);
    pid_t pid = fork();
    if (pid == 0) {
        int wrong = 0;
        for (int i = 0; i < 3; i++) {
            int rc = traffic_set(b, alive[i], "v", 1, 0);
            if (rc != TRAFFIC_OK) {
                fprintf(stderr, "key %s: %s (%s)\n", alive[i], traffic_strerror(rc), traffic_errmsg(b));
                wrong++;
            }
        }
        _exit(wrong);
    }
    ck_assert_int_eq(tu_wait(pid), 0);
    rh_kill(&cl.nodes[0]);     /* refused at once: its callers reload the map... */
    rh_pause(&cl.nodes[1], 1); /* ...from nodes that accept and never answer */
    rh_pause(&cl.nodes[2], 1);
    tu_timed c[N];
    pthread_t tid[N];
    for (int i = 0; i < N; i++) {
        c[i] = (tu_timed){.b = b, .op = TU_SET};
        snprintf(c[i].key, sizeof c[i].key, "k%d", i);
        ck_assert_int_eq(pthread_create(&tid[i], NULL, tu_timed_call, &c[i]), 0);
    }
    for (int i = 0; i < N; i++)
        pthread_join(tid[i], NULL);
    for (int i = 0; i < N; i++) {
        ck_assert_msg(c[i].rc == TRAFFIC_ETIMEDOUT || c[i].rc == TRAFFIC_EUNAVAILABLE, "call %d -> %s", i,
                      traffic_strerror(c[i].rc));
        /* 300 ms of timeout; the bound leaves room for a loaded machine, not for a second
         * node's timeout */
        ck_assert_msg(c[i].took < 600, "call %d gave up after %lld ms", i, (long long)c[i].took);
    }
    rh_pause(&cl.nodes[1], 0);
    rh_pause(&cl.nodes[2], 0);
    TU_OK(b, traffic_close(b));
    rh_cluster_stop(&cl);
}
END_TEST

START_TEST(t_cluster_exact_processes)
{
    const char *url = rh_url("redis+cluster://127.0.0.1:%d?prefix=%s", CL.nodes[1].port, rh_prefix("clp"));
    ck_assert_int_eq(run_children(url, NULL, 2), 0);
    traffic_backend *b = tu_open(url);
    expect_totals(b, PROCS * PROC_INCRS / PROC_KEYS);
    TU_OK(b, traffic_clear(b));
    TU_OK(b, traffic_close(b));
}
END_TEST

struct hammer {
    traffic_backend *b;
    atomic_int *stop, *failures;
    int done;
};

static void *hammer_main(void *arg)
{
    struct hammer *m = arg;
    while (!atomic_load(m->stop)) {
        if (traffic_increment(m->b, "k0", 1, 0, NULL) == TRAFFIC_OK)
            m->done++;
        else
            atomic_fetch_add(m->failures, 1);
    }
    return NULL;
}

START_TEST(t_cluster_fork_under_load)
{
    /* Threads keep routing through the slot map (RCU readers) while the main thread forks.
     * Each child uses the inherited handle, then runs a grace period of its own, which would
     * wait forever (alarm: the child dies) for a reader that fork() left inside a read-side
     * section. A smoke test, not a proof: the sections are short next to the network round
     * trips, so a fork rarely lands inside one even without the library's fork gate. */
#if TU_ASAN
    return; /* forks while threads allocate: not under this ASan (testutil.h) */
#endif
    traffic_backend *b = open_cluster(rh_prefix("cf"), NULL);
    atomic_int stop = 0, failures = 0;
    struct hammer m[3];
    pthread_t tid[3];
    for (int i = 0; i < 3; i++) {
        m[i] = (struct hammer){.b = b, .stop = &stop, .failures = &failures};
        ck_assert_int_eq(pthread_create(&tid[i], NULL, hammer_main, &m[i]), 0);
    }
    const int forks = 30;
    for (int i = 0; i < forks; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            alarm(10);
            int rc = traffic_increment(b, "k0", 1, 0, NULL);
            urcu_memb_synchronize_rcu();
            _exit(rc == TRAFFIC_OK ? 0 : 1);
        }
        ck_assert_int_gt(pid, 0);
        ck_assert_int_eq(tu_wait(pid), 0);
    }
    atomic_store(&stop, 1);
    int done = 0;
    for (int i = 0; i < 3; i++) {
        pthread_join(tid[i], NULL);
        done += m[i].done;
    }
    ck_assert_int_eq(atomic_load(&failures), 0);
    ck_assert_int_eq(tu_counter(b, "k0"), done + forks);
    TU_OK(b, traffic_clear(b));
    TU_OK(b, traffic_close(b));
}
END_TEST

/* One reader held inside its read-side section (rx_rcu_test_inside) until the fork is over
 * (the parent's atfork handler), or until a fork waits at the gate for it to leave. */
static _Thread_local int hold_me;
static atomic_int held, released;

static void hold_reader(void)
{
    if (!hold_me) return;
    hold_me = 0; /* its first section only */
    atomic_store(&held, 1);
    while (!atomic_load(&released) && !rx_rcu_test_gate_closed())
        sched_yield();
}

static void release_reader(void)
{
    atomic_store(&released, 1);
}

static void *held_main(void *arg)
{
    hold_me = 1;
    return (void *)(intptr_t)traffic_increment(arg, "k0", 1, 0, NULL);
}

START_TEST(t_cluster_fork_gate)
{
    /* The fork gate, made deterministic: a thread is held inside an RCU read-side section
     * while the main thread forks. With the gate, fork() waits until it has left; the child's
     * grace period then passes. Without it, the child inherits a registry naming a reader
     * that is inside a section for ever, and its first grace period never ends (alarm). */
#if TU_ASAN
    return; /* the reader allocates while the main thread forks: not under this ASan (testutil.h) */
#endif
    traffic_backend *b = open_cluster(rh_prefix("fg"), NULL);
    TU_OK(b, traffic_increment(b, "k0", 1, 0, NULL)); /* the library's atfork handlers are in place */
    ck_assert_int_eq(pthread_atfork(NULL, release_reader, NULL), 0);
    atomic_store(&rx_rcu_test_inside, hold_reader);
    pthread_t tid;
    ck_assert_int_eq(pthread_create(&tid, NULL, held_main, b), 0);
    for (int64_t end = tu_now_ms() + 10000; !atomic_load(&held) && tu_now_ms() < end;)
        tu_sleep_ms(1);
    ck_assert_msg(atomic_load(&held), "the reader never entered a read-side section");
    pid_t pid = fork();
    if (pid == 0) {
        signal(SIGALRM, SIG_DFL); /* Check's handler would kill the whole test, parent included */
        alarm(10);
        int rc = traffic_increment(b, "k0", 1, 0, NULL);
        urcu_memb_synchronize_rcu();
        _exit(rc == TRAFFIC_OK ? 0 : 1);
    }
    ck_assert_int_gt(pid, 0);
    release_reader(); /* also done by the atfork handler: after fork(), in the parent */
    void *rc;
    pthread_join(tid, &rc);
    atomic_store(&rx_rcu_test_inside, NULL);
    ck_assert_int_eq((int)(intptr_t)rc, TRAFFIC_OK);
    int st = tu_wait(pid);
    ck_assert_msg(st == 0, "the child %s",
                  st == 128 + SIGALRM ? "never finished its grace period: fork() left a reader inside"
                                      : "failed its increment");
    ck_assert_int_eq(tu_counter(b, "k0"), 3);
    TU_OK(b, traffic_clear(b));
    TU_OK(b, traffic_close(b));
}
END_TEST

/* ---- the suite ------------------------------------------------------------------------- */

int main(void)
{
    S.unixsocket = 1;
    if (rh_start(&S, NULL) || rh_cluster_start(&CL, 3)) return EXIT_FAILURE;

    Suite *s = suite_create("redis");
    TCase *u = tcase_create("urls");
    tcase_add_test(u, t_url_errors);
    tcase_add_test(u, t_options);
    suite_add_tcase(s, u);

    TCase *e = tcase_create("standalone");
    tcase_add_test(e, t_encoding);
    tcase_add_test(e, t_prefix_isolation);
    tcase_add_test(e, t_noscript);
    tcase_add_test(e, t_script_errors_keep_their_meaning);
    tcase_add_test(e, t_processes_exact);
    tcase_add_test(e, t_fork_parent_handle);
    tcase_add_test(e, t_threads_small_pool);
    suite_add_tcase(s, e);

    TCase *f = tcase_create("faults");
    tcase_add_test(f, t_server_killed);
    tcase_add_test(f, t_server_frozen);
    tcase_add_test(f, t_auth_password);
    tcase_add_test(f, t_auth_acl_user);
    suite_add_tcase(s, f);

    TCase *n = tcase_create("sentinel");
    tcase_add_test(n, t_sentinel_failover);
    suite_add_tcase(s, n);

    TCase *c = tcase_create("cluster");
    tcase_add_test(c, t_cluster_slots);
    tcase_add_test(c, t_cluster_clear_stats);
    tcase_add_test(c, t_cluster_reshard);
    tcase_add_test(c, t_cluster_all_nodes_out);
    tcase_add_test(c, t_cluster_exact_processes);
    tcase_add_test(c, t_cluster_fork_under_load);
    suite_add_tcase(s, c);

    TCase *g = tcase_create("fork_gate"); /* its own case: CK_RUN_CASE=fork_gate runs it alone */
    tcase_add_test(g, t_cluster_fork_gate);
    suite_add_tcase(s, g);

    int rc = tu_run(s);
    rh_cluster_stop(&CL);
    rh_kill(&S);
    return rc;
}
