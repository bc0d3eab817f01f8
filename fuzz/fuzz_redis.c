/*
 * fuzz_redis.c — the Redis backend against a server that lies: random or malformed RESP,
 * wrong script replies, redirects to nowhere, connections closed or left silent. No call may
 * crash, and none may take much longer than the handle's timeout allows.
 *
 * The server is a thread of this process on a loopback port; every connect the library makes
 * (whatever host a URL, a Sentinel or a slot map names) is redirected to it (fuzz_common.c).
 * It parses each command it receives (hiredis's reader) and answers as the input's next
 * directive byte says:
 *   0-127    what a real server would say (a minimal one: OK, nil, a script SHA, a slot map
 *            naming itself, a Sentinel naming itself as the master, ...);
 *   128-191  a well-formed reply of a random shape: any type, nesting, integer at the edges,
 *            the errors the backend reacts to (MOVED, ASK, NOSCRIPT, TRYAGAIN, READONLY,
 *            NOAUTH, TRAFFIC_E...);
 *   192-239  raw bytes (a length byte, then that many bytes): malformed RESP, partial replies;
 *   240-247  close the connection without answering;
 *   248-255  say nothing (the client's timeout must end the call; at most FUZZ_STALLS per
 *            input, after which this answers as 0-127).
 * Past the end of the directives the server answers as a real one.
 *
 * The input: byte 0 the store (TCP, unix socket, Sentinel or Cluster; a password; a db; the
 * pool size), byte 1 the number of operations, two bytes per operation, then the directives.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <traffic/traffic.h>

#include "fuzz.h"

#define FUZZ_OPS        16
#define FUZZ_STALLS     6
#define FUZZ_TIMEOUT_MS 50
#define FUZZ_CALL_MAX_MS 3000 /* generous: a call is bounded by a few timeouts, sleeps included */
#define MAX_CLIENTS     64

/* ---- the server ---------------------------------------------------------------------------- */

static int port, listen_fd, wake_fd[2];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
/* Under mu: the directives of the current input, and the reset handshake. */
static fuzz_in directives;
static int stalls;
static unsigned reset_asked, reset_done;

typedef struct client {
    int fd;
    redisReader *rd;
} client;
static client clients[MAX_CLIENTS];
static int nclients;

typedef struct sbuf {
    char *p;
    size_t n, cap;
} sbuf;

static void sb_add(sbuf *b, const void *s, size_t n)
{
    if (!n) return;
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        if (!b->p) fuzz_fail("out of memory");
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    sb_add(b, tmp, n < 0 ? 0 : (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static void sb_bulk(sbuf *b, const char *s, size_t n)
{
    sb_printf(b, "$%zu\r\n", n);
    sb_add(b, s, n);
    sb_add(b, "\r\n", 2);
}

/* What a minimal real server answers to argv[0]. */
static void canned(sbuf *b, const redisReply *cmd)
{
    const char *name = cmd->elements && cmd->element[0]->str ? cmd->element[0]->str : "";
    static const char *const ok[] = {"AUTH", "SELECT", "ASKING", "SET"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        if (strcasecmp(name, ok[i]) == 0) return sb_printf(b, "+OK\r\n");
    if (strcasecmp(name, "ROLE") == 0) return sb_printf(b, "*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n");
    if (strcasecmp(name, "SENTINEL") == 0) {
        char p[16];
        int n = snprintf(p, sizeof p, "%d", port);
        sb_printf(b, "*2\r\n");
        sb_bulk(b, "127.0.0.1", 9);
        return sb_bulk(b, p, (size_t)n);
    }
    if (strcasecmp(name, "CLUSTER") == 0)
        return sb_printf(b, "*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:%d\r\n$2\r\nid\r\n", port);
    if (strcasecmp(name, "SCRIPT") == 0) return sb_bulk(b, "0123456789abcdef0123456789abcdef01234567", 40);
    if (strcasecmp(name, "EVALSHA") == 0 || strcasecmp(name, "EVAL") == 0) return sb_bulk(b, "1", 1);
    if (strcasecmp(name, "GET") == 0) return sb_printf(b, "$-1\r\n");
    if (strcasecmp(name, "UNLINK") == 0 || strcasecmp(name, "EXISTS") == 0) return sb_printf(b, ":1\r\n");
    if (strcasecmp(name, "PTTL") == 0) return sb_printf(b, ":-2\r\n");
    if (strcasecmp(name, "SCAN") == 0) return sb_printf(b, "*2\r\n$1\r\n0\r\n*1\r\n$4\r\nfz:a\r\n");
    if (strcasecmp(name, "INFO") == 0) {
        static const char info[] = "# Memory\r\nused_memory:1024\r\n# Stats\r\nexpired_keys:2\r\nevicted_keys:1\r\n";
        return sb_bulk(b, info, sizeof info - 1);
    }
    if (strcasecmp(name, "TIME") == 0) return sb_printf(b, "*2\r\n$10\r\n1700000000\r\n$6\r\n123456\r\n");
    sb_printf(b, "-ERR unknown command '%.32s'\r\n", name);
}

static const char *const errors[] = {
    "ERR something",       "MOVED 3999 127.0.0.1:%d", "ASK 3999 127.0.0.1:%d", "MOVED 1 :%d",
    "MOVED 12 nowhere:1",  "MOVED x",                 "MOVED",                 "ASK 1 [::1]:%d",
    "MOVED 5 127.0.0.1:0", "MOVED 5 127.0.0.1:-1",    "ASK 99999 h:99999999",  "NOSCRIPT No matching script",
    "TRYAGAIN",            "CLUSTERDOWN the cluster is down", "LOADING",      "MASTERDOWN",
    "READONLY",            "NOAUTH needed",           "NOPERM no",             "WRONGTYPE",
    "OOM",                 "TRAFFIC_EOVERFLOW x",     "TRAFFIC_ETYPE x",       "TRAFFIC_ETYPE",
    "",
};
static const char *const numbers[] = {"0",  "1",   "-1",  "9223372036854775807", "9223372036854775808",
                                      "-9223372036854775809", "1e3", " 5", "5 ", "", "abc", "3.5", "-0", "+7"};

/* A well-formed reply of a shape the input chooses. */
static void generated(sbuf *b, fuzz_in *in, int depth)
{
    char text[64];
    size_t n;
    uint8_t t = fuzz_u8(in);
    switch (t % 9) {
    case 0:
        n = fuzz_bytes(in, text, fuzz_u8(in) % 16);
        for (size_t i = 0; i < n; i++)
            if (text[i] == '\r' || text[i] == '\n') text[i] = ' ';
        sb_add(b, "+", 1);
        sb_add(b, text, n);
        return sb_add(b, "\r\n", 2);
    case 1: {
        const char *e = errors[fuzz_u8(in) % (sizeof errors / sizeof errors[0])];
        sb_add(b, "-", 1);
        sb_printf(b, e, port);
        return sb_add(b, "\r\n", 2);
    }
    case 2: return sb_printf(b, ":%lld\r\n", (long long)fuzz_i64(in));
    case 3:
        n = fuzz_bytes(in, text, fuzz_u8(in) % sizeof text);
        return sb_bulk(b, text, n);
    case 4: return sb_printf(b, "$-1\r\n");
    case 5: {
        unsigned k = depth >= 3 ? 0 : fuzz_u8(in) % 5;
        sb_printf(b, "*%u\r\n", k);
        for (unsigned i = 0; i < k; i++)
            generated(b, in, depth + 1);
        return;
    }
    case 6: return sb_printf(b, "*-1\r\n");
    case 7: {
        uint8_t s = fuzz_u8(in);
        if (s < 128) {
            const char *x = numbers[s % (sizeof numbers / sizeof numbers[0])];
            return sb_bulk(b, x, strlen(x));
        }
        n = (size_t)snprintf(text, sizeof text, "%lld", (long long)fuzz_i64(in));
        return sb_bulk(b, text, n);
    }
    default: return sb_printf(b, "*0\r\n");
    }
}

enum { ANSWER, CLOSE, SILENT };

/* The reply to cmd as the next directive says (mu held). */
static int reply_for(sbuf *b, const redisReply *cmd)
{
    if (!directives.n) {
        canned(b, cmd);
        return ANSWER;
    }
    uint8_t d = fuzz_u8(&directives);
    if (d < 128 || (d >= 248 && stalls >= FUZZ_STALLS)) {
        canned(b, cmd);
    } else if (d < 192) {
        generated(b, &directives, 0);
    } else if (d < 240) {
        char raw[256];
        size_t n = fuzz_bytes(&directives, raw, fuzz_u8(&directives));
        sb_add(b, raw, n);
    } else if (d < 248) {
        return CLOSE;
    } else {
        stalls++;
        return SILENT;
    }
    return ANSWER;
}

static void drop_client(int i)
{
    close(clients[i].fd);
    redisReaderFree(clients[i].rd);
    clients[i] = clients[--nclients];
}

/* Reads what client i sent and answers each complete command; 0 when it is gone. */
static int serve(int i)
{
    char buf[16384];
    ssize_t n = recv(clients[i].fd, buf, sizeof buf, 0);
    if (n <= 0) return 0;
    if (redisReaderFeed(clients[i].rd, buf, (size_t)n) != REDIS_OK) return 0;
    for (;;) {
        void *cmd = NULL;
        if (redisReaderGetReply(clients[i].rd, &cmd) != REDIS_OK) return 0;
        if (!cmd) return 1;
        sbuf out = {0};
        pthread_mutex_lock(&mu);
        int what = reply_for(&out, cmd);
        pthread_mutex_unlock(&mu);
        freeReplyObject(cmd);
        if (what == ANSWER && out.n && send(clients[i].fd, out.p, out.n, MSG_NOSIGNAL) < 0) what = CLOSE;
        free(out.p);
        if (what == CLOSE) return 0;
    }
}

static void *server_main(void *arg)
{
    (void)arg;
    for (;;) {
        struct pollfd pf[MAX_CLIENTS + 2];
        pf[0] = (struct pollfd){.fd = listen_fd, .events = POLLIN};
        pf[1] = (struct pollfd){.fd = wake_fd[0], .events = POLLIN};
        for (int i = 0; i < nclients; i++)
            pf[2 + i] = (struct pollfd){.fd = clients[i].fd, .events = POLLIN};
        int nfds = 2 + nclients;
        if (poll(pf, (nfds_t)nfds, -1) < 0) continue;
        if (pf[1].revents) {
            char c;
            (void)!read(wake_fd[0], &c, 1);
            pthread_mutex_lock(&mu);
            while (nclients)
                drop_client(nclients - 1);
            reset_done = reset_asked;
            pthread_cond_broadcast(&cv);
            pthread_mutex_unlock(&mu);
            continue;
        }
        for (int i = nfds - 3; i >= 0; i--) /* from the end: drop_client moves the last one */
            if (pf[2 + i].revents && !serve(i)) drop_client(i);
        if (pf[0].revents) {
            int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
            if (fd >= 0 && nclients < MAX_CLIENTS) {
                clients[nclients].fd = fd;
                clients[nclients].rd = redisReaderCreate();
                nclients++;
            } else if (fd >= 0) {
                close(fd);
            }
        }
    }
    return NULL;
}

/* Closes every connection the server holds (those of the previous input). */
static void server_reset(void)
{
    pthread_mutex_lock(&mu);
    /* The input is gone after this call: a connection still in the listen queue gets canned
     * answers from now on. */
    directives.p = NULL;
    directives.n = 0;
    unsigned want = ++reset_asked;
    (void)!write(wake_fd[1], "r", 1);
    while (reset_done != want)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
}

void fuzz_redis_init(void)
{
    listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(listen_fd, 64) < 0 ||
        getsockname(listen_fd, (struct sockaddr *)&a, &len) < 0 || pipe2(wake_fd, O_CLOEXEC) < 0)
        fuzz_fail("cannot start the fake server");
    port = ntohs(a.sin_port);
    fuzz_redirect_connects(port);
    pthread_t th;
    if (pthread_create(&th, NULL, server_main, NULL) != 0) fuzz_fail("pthread_create");
    pthread_detach(th);
}

/* ---- the client ------------------------------------------------------------------------------ */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int known_status(int rc)
{
    return rc <= TRAFFIC_OK && rc >= TRAFFIC_ENOTSUP;
}

static void make_url(char *url, size_t cap, uint8_t cfg)
{
    const char *auth = cfg & 4 ? (cfg & 64 ? "user:secret@" : ":secret@") : "";
    const char *db = cfg & 8 ? "/3" : "";
    int pool = 1 + ((cfg >> 4) & 1);
    switch (cfg % 4) {
    case 0:
        snprintf(url, cap, "redis://%s127.0.0.1:%d%s?timeout=0.05&pool_size=%d&prefix=fz:", auth, port, db, pool);
        break;
    case 1:
        snprintf(url, cap, "redis+unix://%s/nonexistent/fuzz.sock?timeout=0.05&pool_size=%d&db=%d", auth, pool,
                 cfg & 8 ? 3 : 0);
        break;
    case 2:
        snprintf(url, cap, "redis+sentinel://%s127.0.0.1:%d,localhost:%d/mymaster%s?timeout=0.05&pool_size=%d", auth,
                 port, port, db, pool);
        break;
    default:
        snprintf(url, cap, "redis+cluster://%s127.0.0.1:%d,127.0.0.2:%d?timeout=0.05&pool_size=%d", auth, port, port,
                 pool);
        break;
    }
}

static const traffic_rule rules[5] = {
    {TRAFFIC_SLIDING_WINDOW_COUNTER, 10, 60, 0}, {TRAFFIC_FIXED_WINDOW, 10, 60, 0}, {TRAFFIC_SLIDING_WINDOW, 5, 60, 0},
    {TRAFFIC_TOKEN_BUCKET, 10, 60, 4},          {TRAFFIC_LEAKY_BUCKET, 10, 60, 3},
};

static void operate(traffic_backend *b, uint8_t op, uint8_t arg)
{
    static const char *const keys[] = {"a", "{tag}b", "counter", "k-with-a-longer-name"};
    const char *key = keys[arg % 4];
    char buf[64];
    size_t len = 0, cap = arg & 0x80 ? 2 : sizeof buf;
    int64_t v;
    double ttl;
    traffic_decision d;
    struct traffic_stats st;
    int rc;
    switch (op % 11) {
    case 0:
        rc = traffic_get(b, key, buf, cap, &len);
        if (rc == TRAFFIC_OK && len > cap) fuzz_fail("get: %zu bytes into %zu", len, cap);
        break;
    case 1: rc = traffic_set(b, key, "value", 5, arg & 0x40 ? 0 : 10); break;
    case 2: rc = traffic_increment(b, key, arg & 0x40 ? 1 : INT64_MAX, arg & 0x20 ? 0 : 10, &v); break;
    case 3: rc = traffic_delete(b, key); break;
    case 4:
        rc = traffic_exists(b, key);
        if (rc == 1) rc = 0;
        break;
    case 5: rc = traffic_ttl(b, key, &ttl); break;
    case 6: rc = traffic_clear(b); break;
    case 7: rc = traffic_stats(b, &st); break;
    case 8: {
        char json[1024];
        rc = traffic_stats_json(b, json, sizeof json);
        if (rc > 0) rc = 0;
        break;
    }
    default: rc = traffic_limit(b, key, &rules[arg % 5], arg & 0x40 ? 0 : 1, &d); break;
    }
    if (!known_status(rc)) fuzz_fail("operation %u returned %d (%s)", op % 11, rc, traffic_errmsg(b));
}

int fuzz_redis_one(const uint8_t *data, size_t size)
{
    fuzz_in in = {data, size};
    uint8_t cfg = fuzz_u8(&in);
    int nops = fuzz_u8(&in) % (FUZZ_OPS + 1);
    uint8_t ops[2 * FUZZ_OPS];
    for (int i = 0; i < 2 * nops; i++)
        ops[i] = fuzz_u8(&in);
    char url[256];
    make_url(url, sizeof url, cfg);

    pthread_mutex_lock(&mu);
    directives = in;
    stalls = 0;
    pthread_mutex_unlock(&mu);

    traffic_backend *b = NULL;
    int64_t t0 = now_ms();
    int rc = traffic_open(url, &b);
    int64_t took = now_ms() - t0;
    if (!known_status(rc)) fuzz_fail("traffic_open returned %d", rc);
    if (took > FUZZ_CALL_MAX_MS) fuzz_fail("traffic_open took %lld ms with a %d ms timeout", (long long)took, FUZZ_TIMEOUT_MS);
    for (int i = 0; b && i < nops; i++) {
        t0 = now_ms();
        operate(b, ops[2 * i], ops[2 * i + 1]);
        took = now_ms() - t0;
        if (took > FUZZ_CALL_MAX_MS)
            fuzz_fail("operation %u took %lld ms with a %d ms timeout", ops[2 * i] % 11, (long long)took,
                      FUZZ_TIMEOUT_MS);
    }
    if (b) traffic_close(b);
    server_reset();
    return 0;
}
