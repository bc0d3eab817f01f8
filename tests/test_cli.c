/*
 * test_cli.c — the `traffic` command, run as a subprocess the way an operator runs it, against
 * a named memory table, a SQLite file and a private redis-server.
 *
 * The binary is $TRAFFIC_CLI: under CTest the copy installed into a scratch prefix (the
 * cli_install fixture), so that what is tested is what `cmake --install` ships; run by hand,
 * the build tree's. Every command, every exit status (0 done, 1 failed or denied, 2 usage),
 * bad URLs and rules, globs, escaping, --json output checked by a JSON parser, clear asking
 * on a terminal (a pty), clear on Redis keeping the keys outside the prefix, and watch ended
 * by SIGINT.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "redis_harness.h"
#include "testutil.h"

extern char **environ;

static const char *cli_path(void)
{
    const char *p = getenv("TRAFFIC_CLI");
    return p && *p ? p : TRAFFIC_CLI_BUILD;
}

/* ---- running the command ------------------------------------------------------------------- */

typedef struct run {
    int status; /* exit status, or 128 + signal */
    char *out, *err;
    size_t out_len, err_len;
} run;

static void run_free(run *r)
{
    free(r->out);
    free(r->err);
    memset(r, 0, sizeof *r);
}

static void append(char **buf, size_t *len, const char *p, size_t n)
{
    *buf = realloc(*buf, *len + n + 1);
    ck_assert_ptr_nonnull(*buf);
    memcpy(*buf + *len, p, n);
    *len += n;
    (*buf)[*len] = '\0';
}

/* Runs the command with argv (NULL-terminated, without the program), stdin from `input`. */
static run run_argv(const char *input, char *const *args)
{
    int in[2], out[2], err[2];
    ck_assert(pipe(in) == 0 && pipe(out) == 0 && pipe(err) == 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, err[1], 2);
    for (int i = 0; i < 2; i++) {
        posix_spawn_file_actions_addclose(&fa, in[i]);
        posix_spawn_file_actions_addclose(&fa, out[i]);
        posix_spawn_file_actions_addclose(&fa, err[i]);
    }
    char *argv[40];
    int n = 0;
    argv[n++] = (char *)cli_path();
    for (; args[n - 1]; n++)
        argv[n] = args[n - 1];
    argv[n] = NULL;
    pid_t pid;
    ck_assert_int_eq(posix_spawn(&pid, argv[0], &fa, NULL, argv, environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    close(in[0]);
    close(out[1]);
    close(err[1]);
    if (input) ck_assert(write(in[1], input, strlen(input)) == (ssize_t)strlen(input));
    close(in[1]);
    run r = {0};
    append(&r.out, &r.out_len, "", 0);
    append(&r.err, &r.err_len, "", 0);
    struct pollfd p[2] = {{.fd = out[0], .events = POLLIN}, {.fd = err[0], .events = POLLIN}};
    for (int open = 2; open;) {
        ck_assert_int_ge(poll(p, 2, 60000), 1);
        for (int i = 0; i < 2; i++) {
            if (p[i].fd < 0 || !p[i].revents) continue;
            char buf[4096];
            ssize_t got = read(p[i].fd, buf, sizeof buf);
            if (got <= 0) {
                close(p[i].fd);
                p[i].fd = -1;
                open--;
            } else if (i == 0) {
                append(&r.out, &r.out_len, buf, (size_t)got);
            } else {
                append(&r.err, &r.err_len, buf, (size_t)got);
            }
        }
    }
    r.status = tu_wait(pid);
    return r;
}

#define MAXARGS 32
/* run_cli(&r, input, "URL", "get", "k", NULL) */
static run run_va(const char *input, const char *first, va_list ap)
{
    char *args[MAXARGS];
    int n = 0;
    for (const char *a = first; a; a = va_arg(ap, const char *)) {
        ck_assert_int_lt(n, MAXARGS - 1);
        args[n++] = (char *)a;
    }
    args[n] = NULL;
    return run_argv(input, args);
}

/* Runs and checks the exit status; the output is the caller's to free. */
static run expect_at(int line, int status, const char *first, ...)
{
    va_list ap;
    va_start(ap, first);
    run r = run_va(NULL, first, ap);
    va_end(ap);
    ck_assert_msg(r.status == status, "line %d: %s %s: exit %d, want %d\nstdout: %s\nstderr: %s", line, first,
                  first ? "..." : "", r.status, status, r.out, r.err);
    return r;
}
#define EXPECT(status, ...) expect_at(__LINE__, status, __VA_ARGS__, NULL)

/* Runs, checks the status and that stdout is exactly `want`. */
#define EXPECT_OUT(status, want, ...)                                                                                  \
    do {                                                                                                               \
        run r_ = expect_at(__LINE__, status, __VA_ARGS__, NULL);                                                       \
        ck_assert_msg(strcmp(r_.out, want) == 0, "line %d: stdout \"%s\", want \"%s\" (stderr: %s)", __LINE__, r_.out, \
                      want, r_.err);                                                                                   \
        run_free(&r_);                                                                                                 \
    } while (0)

/* Runs, checks the status and that stderr contains `needle`. */
#define EXPECT_ERR(status, needle, ...)                                                                                \
    do {                                                                                                               \
        run r_ = expect_at(__LINE__, status, __VA_ARGS__, NULL);                                                       \
        ck_assert_msg(strstr(r_.err, needle), "line %d: stderr \"%s\" lacks \"%s\"", __LINE__, r_.err, needle);        \
        run_free(&r_);                                                                                                 \
    } while (0)

/* ---- a JSON checker: the whole text must be one JSON value (RFC 8259), nothing after ------- */

static const char *js_value(const char *p, int depth);

static const char *js_ws(const char *p)
{
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    return p;
}

static const char *js_string(const char *p)
{
    if (*p++ != '"') return NULL;
    for (; *p != '"'; p++) {
        if (!*p || (unsigned char)*p < 0x20) return NULL;
        if (*p == '\\') {
            p++;
            if (*p == 'u') {
                for (int i = 1; i <= 4; i++)
                    if (!strchr("0123456789abcdefABCDEF", p[i]) || !p[i]) return NULL;
                p += 4;
            } else if (!strchr("\"\\/bfnrt", *p) || !*p) {
                return NULL;
            }
        }
    }
    return p + 1;
}

static const char *js_number(const char *p)
{
    const char *s = p;
    if (*p == '-') p++;
    if (*p == '0')
        p++;
    else if (*p >= '1' && *p <= '9')
        while (*p >= '0' && *p <= '9')
            p++;
    else
        return NULL;
    if (*p == '.') {
        if (!(*++p >= '0' && *p <= '9')) return NULL;
        while (*p >= '0' && *p <= '9')
            p++;
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-') p++;
        if (!(*p >= '0' && *p <= '9')) return NULL;
        while (*p >= '0' && *p <= '9')
            p++;
    }
    return p > s ? p : NULL;
}

static const char *js_items(const char *p, char close, int object, int depth)
{
    p = js_ws(p + 1);
    if (*p == close) return p + 1;
    for (;;) {
        if (object) {
            if (!(p = js_string(p))) return NULL;
            p = js_ws(p);
            if (*p++ != ':') return NULL;
        }
        if (!(p = js_value(p, depth + 1))) return NULL;
        p = js_ws(p);
        if (*p == close) return p + 1;
        if (*p++ != ',') return NULL;
        p = js_ws(p);
    }
}

static const char *js_value(const char *p, int depth)
{
    if (depth > 64) return NULL;
    p = js_ws(p);
    switch (*p) {
    case '{': return js_items(p, '}', 1, depth);
    case '[': return js_items(p, ']', 0, depth);
    case '"': return js_string(p);
    case 't': return strncmp(p, "true", 4) ? NULL : p + 4;
    case 'f': return strncmp(p, "false", 5) ? NULL : p + 5;
    case 'n': return strncmp(p, "null", 4) ? NULL : p + 4;
    default: return js_number(p);
    }
}

static int json_ok(const char *text)
{
    const char *end = js_value(text, 0);
    return end && *js_ws(end) == '\0';
}

static int count_of(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

/* ---- stores ---------------------------------------------------------------------------------- */

typedef struct store {
    char url[512];
    const char *kind; /* "memory", "sqlite", "redis" */
    char name[128];   /* memory: the table; sqlite: the temp dir */
    rh_server srv;
} store;

static void store_open(store *s, const char *kind)
{
    memset(s, 0, sizeof *s);
    s->kind = kind;
    if (strcmp(kind, "memory") == 0) {
        snprintf(s->name, sizeof s->name, "%s", tu_name("cli"));
        snprintf(s->url, sizeof s->url, "memory://%s", s->name);
    } else if (strcmp(kind, "sqlite") == 0) {
        snprintf(s->name, sizeof s->name, "/tmp/traffic-cli-XXXXXX");
        ck_assert_ptr_nonnull(mkdtemp(s->name));
        snprintf(s->url, sizeof s->url, "sqlite://%s/t.db", s->name);
    } else {
        ck_assert_int_eq(rh_start(&s->srv, NULL), 0);
        snprintf(s->url, sizeof s->url, "redis://127.0.0.1:%d?prefix=app:", s->srv.port);
    }
    /* the store is created by --create, as an operator would make a new one */
    run r = EXPECT(0, "--create", s->url, "stats");
    run_free(&r);
}

static void store_close(store *s)
{
    if (strcmp(s->kind, "memory") == 0) {
        traffic_memory_unlink(s->name);
    } else if (strcmp(s->kind, "sqlite") == 0) {
        tu_scratch_remove(s->name);
    } else {
        rh_kill(&s->srv);
    }
}

static int is_redis(const store *s)
{
    return strcmp(s->kind, "redis") == 0;
}

static const char *const KINDS[3] = {"memory", "sqlite", "redis"};

/* ---- help, usage, URLs ------------------------------------------------------------------- */

static const char *const COMMANDS[] = {"stats", "get",   "set",  "incr",  "del",  "ttl",
                                       "keys",  "clear", "reap", "limit", "watch"};
#define NCMD (sizeof COMMANDS / sizeof *COMMANDS)

START_TEST(t_help)
{
    run r = EXPECT(0, "--help");
    ck_assert(strstr(r.out, "usage: traffic [--create] URL COMMAND"));
    for (size_t i = 0; i < NCMD; i++)
        ck_assert_msg(strstr(r.out, COMMANDS[i]), "--help lacks %s", COMMANDS[i]);
    run_free(&r);
    r = EXPECT(0, "help");
    ck_assert(strstr(r.out, "Commands:"));
    run_free(&r);
    r = EXPECT(0, "--version");
    ck_assert(strncmp(r.out, "traffic ", 8) == 0);
    run_free(&r);
    for (size_t i = 0; i < NCMD; i++) {
        char want[64];
        snprintf(want, sizeof want, "usage: traffic URL %s", COMMANDS[i]);
        r = EXPECT(0, "help", COMMANDS[i]);
        ck_assert_msg(strstr(r.out, want), "help %s: %s", COMMANDS[i], r.out);
        run_free(&r);
        /* --help with a URL that does not even exist: never opened */
        r = EXPECT(0, "memory://no-such-table-help", COMMANDS[i], "--help");
        ck_assert_msg(strstr(r.out, want), "%s --help: %s", COMMANDS[i], r.out);
        run_free(&r);
        r = EXPECT(0, "memory://no-such-table-help", COMMANDS[i], "-h");
        run_free(&r);
    }
    EXPECT_ERR(2, "no command \"frob\"", "help", "frob");
    struct stat st;
    ck_assert_int_ne(stat("/dev/shm/traffic.no-such-table-help", &st), 0);
}
END_TEST

START_TEST(t_usage_errors)
{
    const char *name = tu_name("usage"), *url;
    char buf[256];
    snprintf(buf, sizeof buf, "memory://%s", name);
    url = buf;
    run r = EXPECT(2, NULL);
    ck_assert(strstr(r.err, "usage: traffic"));
    run_free(&r);
    EXPECT_ERR(2, "no command after the URL", url);
    EXPECT_ERR(2, "unknown command \"frob\"", url, "frob");
    EXPECT_ERR(2, "unknown option \"--bogus\"", "--bogus");
    EXPECT_ERR(2, "missing argument", url, "get");
    EXPECT_ERR(2, "missing argument", url, "set", "k");
    EXPECT_ERR(2, "missing argument", url, "limit", "k");
    EXPECT_ERR(2, "unexpected argument \"b\"", url, "get", "a", "b");
    EXPECT_ERR(2, "unexpected argument \"x\"", url, "stats", "x");
    EXPECT_ERR(2, "unknown option \"--bogus\"", url, "keys", "--bogus");
    EXPECT_ERR(2, "unknown option \"--json\"", url, "get", "k", "--json");
    EXPECT_ERR(2, "--ttl \"abc\"", url, "set", "k", "v", "--ttl", "abc");
    EXPECT_ERR(2, "--ttl \"-1\"", url, "set", "k", "v", "--ttl=-1");
    EXPECT_ERR(2, "needs a value", url, "set", "k", "v", "--ttl");
    EXPECT_ERR(2, "takes no value", url, "stats", "--json=yes");
    EXPECT_ERR(2, "N \"1.5\"", url, "incr", "k", "1.5");
    EXPECT_ERR(2, "N \"99999999999999999999\"", url, "incr", "k", "99999999999999999999");
    EXPECT_ERR(2, "--cost \"-1\"", url, "limit", "k", "fixed_window:1/1s", "--cost", "-1");
    EXPECT_ERR(2, "exclude each other", url, "limit", "k", "fixed_window:1/1s", "--cost", "2", "--peek");
    EXPECT_ERR(2, "--interval \"0\"", url, "watch", "--interval", "0");
    EXPECT_ERR(2, "--count \"0\"", url, "watch", "--count", "0");
    /* bad rules */
    EXPECT_ERR(2, "unknown algorithm \"bogus\"", url, "limit", "k", "bogus:1/1s");
    EXPECT_ERR(2, "want ALGO:LIMIT/WINDOW", url, "limit", "k", "token_bucket:x/1s");
    EXPECT_ERR(2, "limit 0 is not >= 1", url, "limit", "k", "fixed_window:0/1s");
    EXPECT_ERR(2, "the window is not a number", url, "limit", "k", "fixed_window:5/-1s");
    EXPECT_ERR(2, "burst", url, "limit", "k", "fixed_window:5/1s,burst=3");
    /* nothing was opened, so nothing was created */
    struct stat st;
    char path[300];
    snprintf(path, sizeof path, "/dev/shm/traffic.%s", name);
    ck_assert_msg(stat(path, &st) != 0, "a usage error created %s", path);
    /* bad URLs: usage errors too */
    EXPECT_ERR(2, "unknown URL scheme \"foo\"", "foo://x", "stats");
    EXPECT_ERR(2, "memory table name", "memory://bad/name", "stats");
    EXPECT_ERR(2, "bogus", "--create", "memory://?bogus=1", "stats");
    EXPECT_ERR(2, "cannot open", "--create", "redis://127.0.0.1:notaport", "stats");
    EXPECT_ERR(2, "cannot open", "nourl", "stats");
}
END_TEST

START_TEST(t_missing_store)
{
    const char *name = tu_name("missing");
    char url[256], path[300];
    snprintf(url, sizeof url, "memory://%s", name);
    EXPECT_ERR(1, "--create makes a new, empty one", url, "keys");
    snprintf(path, sizeof path, "/dev/shm/traffic.%s", name);
    struct stat st;
    ck_assert_int_ne(stat(path, &st), 0);
    char dir[] = "/tmp/traffic-cli-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(url, sizeof url, "sqlite://%s/none.db", dir);
    EXPECT_ERR(1, "no SQLite file", url, "stats");
    snprintf(path, sizeof path, "%s/none.db", dir);
    ck_assert_int_ne(stat(path, &st), 0);
    run r = EXPECT(0, "--create", url, "stats");
    run_free(&r);
    ck_assert_int_eq(stat(path, &st), 0);
    r = EXPECT(0, url, "stats"); /* exists now */
    run_free(&r);
    tu_scratch_remove(dir);
    /* an unreachable server fails the operation, not the usage */
    EXPECT_ERR(1, "TRAFFIC_EUNAVAILABLE", "redis://127.0.0.1:1?timeout=0.2", "stats");
    r = EXPECT(1, "redis://:secret@127.0.0.1:1?timeout=0.2", "stats");
    ck_assert_msg(!strstr(r.err, "secret"), "the password in a message: %s", r.err);
    run_free(&r);
}
END_TEST

/* ---- one session per store: every command ----------------------------------------------------- */

START_TEST(t_session)
{
    store s;
    store_open(&s, KINDS[_i]);
    const char *u = s.url;
    EXPECT_OUT(0, "OK\n", u, "set", "greeting", "hello world", "--ttl", "100");
    EXPECT_OUT(0, "hello world\n", u, "get", "greeting");
    EXPECT_OUT(0, "OK\n", u, "set", "bin", "\x01\t\"q\\\xff\xc3\xa9");
    EXPECT_OUT(0, "\"\\x01\\t\\\"q\\\\\\xff\xc3\xa9\"\n", u, "get", "bin");
    EXPECT_OUT(0, "\x01\t\"q\\\xff\xc3\xa9", u, "get", "bin", "--raw");
    EXPECT_OUT(0, "OK\n", u, "set", "empty", "");
    EXPECT_OUT(0, "\"\"\n", u, "get", "empty");
    EXPECT_OUT(0, "OK\n", u, "set", "--", "--dashes", "v");
    EXPECT_OUT(0, "v\n", u, "get", "--", "--dashes");
    EXPECT_OUT(0, "1\n", u, "incr", "n");
    EXPECT_OUT(0, "42\n", u, "incr", "n", "41");
    EXPECT_OUT(0, "-8\n", u, "incr", "n", "-50");
    EXPECT_OUT(0, "-8\n", u, "get", "n");
    EXPECT_OUT(0, "5\n", u, "incr", "short", "5", "--ttl", "30");
    EXPECT_ERR(1, "TRAFFIC_ETYPE", u, "incr", "greeting");
    EXPECT_ERR(1, "TRAFFIC_EOVERFLOW", u, "incr", "n", "-9223372036854775807");
    run r = EXPECT(0, u, "ttl", "greeting");
    double ttl = atof(r.out);
    ck_assert_msg(ttl > 90 && ttl <= 100 && strchr(r.out, '.'), "ttl %s", r.out);
    run_free(&r);
    EXPECT_OUT(0, "-1\n", u, "ttl", "n");
    EXPECT_ERR(1, "TRAFFIC_ENOTFOUND", u, "ttl", "nothing");
    EXPECT_ERR(1, "TRAFFIC_ENOTFOUND", u, "get", "nothing");

    /* limit: allowed twice, then denied (exit 1); a peek consumes nothing */
    r = EXPECT(0, u, "limit", "rl", "fixed_window:2/60s");
    ck_assert_msg(strstr(r.out, "allowed      yes") && strstr(r.out, "remaining    1"), "%s", r.out);
    run_free(&r);
    r = EXPECT(0, u, "limit", "rl", "fixed_window:2/60s", "--peek");
    ck_assert_msg(strstr(r.out, "allowed      yes (peek") && strstr(r.out, "remaining    1"), "%s", r.out);
    run_free(&r);
    r = EXPECT(0, u, "limit", "rl", "fixed_window:2/60s");
    run_free(&r);
    r = EXPECT(1, u, "limit", "rl", "fixed_window:2/60s");
    ck_assert_msg(strstr(r.out, "allowed      no") && strstr(r.out, "retry_after"), "%s", r.out);
    run_free(&r);
    r = EXPECT(1, u, "limit", "rl", "fixed_window:2/60s", "--peek");
    run_free(&r);
    EXPECT_ERR(1, "TRAFFIC_ETYPE", u, "limit", "rl", "token_bucket:2/60s");
    r = EXPECT(0, u, "limit", "tb", "token_bucket:10/60s,burst=3", "--cost", "2", "--json");
    ck_assert_msg(json_ok(r.out), "not JSON: %s", r.out);
    ck_assert_msg(strstr(r.out, "\"key\":\"tb\"") && strstr(r.out, "\"allowed\":true") &&
                      strstr(r.out, "\"remaining\":1,") && strstr(r.out, "\"cost\":2") &&
                      strstr(r.out, "\"algorithm\":\"token_bucket\""),
                  "%s", r.out);
    run_free(&r);
    r = EXPECT(1, u, "limit", "tb", "token_bucket:10/60s,burst=3", "--cost", "5", "--json");
    ck_assert_msg(json_ok(r.out) && strstr(r.out, "\"allowed\":false") && strstr(r.out, "\"retry_after\":-1"), "%s",
                  r.out);
    run_free(&r);
    r = EXPECT(0, u, "limit", "lb", "leaky_bucket:10/60s");
    ck_assert_msg(strstr(r.out, "delay"), "%s", r.out);
    run_free(&r);
    r = EXPECT(0, u, "limit", "sw", "sliding_window:3/60s");
    run_free(&r);
    r = EXPECT(0, u, "limit", "swc", "10/60s"); /* the default algorithm */
    run_free(&r);

    /* get of a rate-limit state: readable */
    r = EXPECT(0, u, "get", "rl");
    ck_assert_msg(strstr(r.out, "rate-limit state: fixed_window") && strstr(r.out, "count    2 request(s)") &&
                      strstr(r.out, "ago)") && strstr(r.out, "ttl "),
                  "%s", r.out);
    run_free(&r);
    r = EXPECT(0, u, "get", "tb");
    ck_assert_msg(strstr(r.out, "rate-limit state: token_bucket") && strstr(r.out, "(in "), "%s", r.out);
    run_free(&r);
    r = EXPECT(0, u, "get", "sw");
    ck_assert_msg(strstr(r.out, "sliding_window") && strstr(r.out, "logged   1 request(s)"), "%s", r.out);
    run_free(&r);
    r = EXPECT(0, u, "get", "swc");
    ck_assert_msg(strstr(r.out, "sliding_window_counter") && strstr(r.out, "current  1 request(s)"), "%s", r.out);
    run_free(&r);
    r = EXPECT(0, u, "get", "rl", "--raw");
    ck_assert_msg(strncmp(r.out, "{\"algorithm\":\"fixed_window\"", 27) == 0, "%s", r.out);
    run_free(&r);
    /* a bytes value that looks like a state is shown as the bytes it is */
    EXPECT_OUT(0, "OK\n", u, "set", "fake", "{\"algorithm\":\"token_bucket\",\"tat_us\":1}");
    EXPECT_OUT(0, "{\"algorithm\":\"token_bucket\",\"tat_us\":1}\n", u, "get", "fake");

    /* keys: key, kind, TTL; globs; JSON */
    r = EXPECT(0, u, "keys");
    ck_assert_msg(strstr(r.out, "greeting\tbytes\t") && strstr(r.out, "n\tcounter\t-\n") &&
                      strstr(r.out, "short\tcounter\t") && strstr(r.out, "rl\tlimit:fixed_window\t") &&
                      strstr(r.out, "tb\tlimit:token_bucket\t") && strstr(r.out, "sw\tlimit:sliding_window\t") &&
                      strstr(r.out, "\"\\x01\"") == NULL && strstr(r.out, "bin\tbytes\t-\n"),
                  "%s", r.out);
    int nkeys = count_of(r.out, "\n");
    ck_assert_msg(nkeys == 12, "%d keys:\n%s", nkeys, r.out);
    run_free(&r);
    r = EXPECT(0, u, "keys", "r?");
    ck_assert_msg(strncmp(r.out, "rl\tlimit:fixed_window\t", 21) == 0 && count_of(r.out, "\n") == 1, "%s", r.out);
    run_free(&r);
    r = EXPECT(0, u, "keys", "s*");
    ck_assert_int_eq(count_of(r.out, "\n"), 3); /* short, sw, swc */
    run_free(&r);
    r = EXPECT(0, u, "keys", "[gn]*");
    ck_assert_int_eq(count_of(r.out, "\n"), 2);
    run_free(&r);
    r = EXPECT(0, u, "keys", "nothing*");
    ck_assert_str_eq(r.out, "");
    run_free(&r);
    r = EXPECT(0, u, "keys", "--json");
    ck_assert_msg(json_ok(r.out), "not JSON: %s", r.out);
    ck_assert_int_eq(count_of(r.out, "{\"key\":"), 12);
    ck_assert_msg(strstr(r.out, "{\"key\":\"n\",\"kind\":\"counter\",\"algorithm\":null,\"ttl\":null}") &&
                      strstr(r.out, "\"kind\":\"limit\",\"algorithm\":\"fixed_window\",\"ttl\":") &&
                      strstr(r.out, "{\"key\":\"--dashes\""),
                  "%s", r.out);
    run_free(&r);
    r = EXPECT(0, u, "keys", "nothing*", "--json");
    ck_assert_str_eq(r.out, "[]\n");
    run_free(&r);

    /* stats */
    r = EXPECT(0, u, "stats");
    char want[64];
    snprintf(want, sizeof want, "backend            %s\n", s.kind);
    ck_assert_msg(strstr(r.out, want) && strstr(r.out, "keys               12\n") && strstr(r.out, "decisions"), "%s",
                  r.out);
    run_free(&r);
    r = EXPECT(0, u, "stats", "--json");
    ck_assert_msg(json_ok(r.out), "not JSON: %s", r.out);
    snprintf(want, sizeof want, "\"backend\":\"%s\"", s.kind);
    ck_assert_msg(strstr(r.out, want) && strstr(r.out, "\"keys\":12,"), "%s", r.out);
    run_free(&r);

    /* del, reap, clear */
    EXPECT_OUT(0, "OK\n", u, "del", "greeting", "n", "not-there");
    EXPECT_ERR(1, "TRAFFIC_ENOTFOUND", u, "get", "greeting");
    EXPECT_OUT(0, "OK\n", u, "set", "fleeting", "x", "--ttl", "0.05");
    tu_sleep_ms(120);
    if (is_redis(&s)) {
        EXPECT_ERR(0, "nothing to do: redis expires keys itself", u, "reap");
    } else {
        EXPECT_OUT(0, "removed 1\n", u, "reap");
        EXPECT_OUT(0, "removed 0\n", u, "reap");
    }
    r = EXPECT(0, u, "keys");
    ck_assert_int_eq(count_of(r.out, "\n"), 10);
    run_free(&r);
    EXPECT_ERR(2, "give --yes", u, "clear");
    r = EXPECT(0, u, "keys");
    ck_assert_int_eq(count_of(r.out, "\n"), 10);
    run_free(&r);
    EXPECT_OUT(0, "OK\n", u, "clear", "--yes");
    EXPECT_OUT(0, "", u, "keys");
    store_close(&s);
}
END_TEST

/* ---- keys that are not plain text ---------------------------------------------------------- */

START_TEST(t_escaped_keys)
{
    store s;
    store_open(&s, "memory");
    const char *u = s.url;
    EXPECT_OUT(0, "1\n", u, "incr", "tab\there");
    EXPECT_OUT(0, "1\n", u, "incr", "bad\xffutf8");
    EXPECT_OUT(0, "1\n", u, "incr", "\xc3\xa9t\xc3\xa9");
    run r = EXPECT(0, u, "keys");
    ck_assert_msg(strstr(r.out, "\"tab\\there\"\tcounter") && strstr(r.out, "\"bad\\xffutf8\"\tcounter") &&
                      strstr(r.out, "\xc3\xa9t\xc3\xa9\tcounter"),
                  "%s", r.out);
    run_free(&r);
    r = EXPECT(0, u, "keys", "--json");
    ck_assert_msg(json_ok(r.out), "not JSON: %s", r.out);
    ck_assert_msg(strstr(r.out, "\"key\":\"tab\\there\",\"kind\"") &&
                      strstr(r.out, "\"key\":\"bad\\u00ffutf8\",\"key_hex\":\"626164ff75746638\"") &&
                      strstr(r.out, "\"key\":\"\xc3\xa9t\xc3\xa9\",\"kind\""),
                  "%s", r.out);
    run_free(&r);
    store_close(&s);
}
END_TEST

/* ---- Redis: clear and keys stay under the prefix --------------------------------------------- */

START_TEST(t_redis_prefix)
{
    store s;
    store_open(&s, "redis");
    const char *u = s.url;
    char ok[8];
    ck_assert_int_eq(rh_str(&s.srv, ok, sizeof ok, "SET other:keep 1"), 0);
    ck_assert_int_eq(rh_str(&s.srv, ok, sizeof ok, "SET appx 1"), 0);
    EXPECT_OUT(0, "1\n", u, "incr", "mine");
    EXPECT_OUT(0, "OK\n", u, "set", "also", "v");
    run r = EXPECT(0, u, "keys");
    ck_assert_int_eq(count_of(r.out, "\n"), 2);
    ck_assert_msg(strstr(r.out, "mine\tcounter\t-\n") && strstr(r.out, "also\tbytes\t-\n"), "%s", r.out);
    run_free(&r);
    EXPECT_OUT(0, "OK\n", u, "clear", "--yes");
    EXPECT_OUT(0, "", u, "keys");
    ck_assert_int_eq(rh_int(&s.srv, "EXISTS other:keep"), 1);
    ck_assert_int_eq(rh_int(&s.srv, "EXISTS appx"), 1);
    ck_assert_int_eq(rh_int(&s.srv, "EXISTS app:mine"), 0);
    /* another prefix is another store */
    char url2[512];
    snprintf(url2, sizeof url2, "redis://127.0.0.1:%d?prefix=other:", s.srv.port);
    EXPECT_OUT(0, "keep\tcounter\t-\n", url2, "keys");
    store_close(&s);
}
END_TEST

/* ---- clear on a terminal asks ------------------------------------------------------------------ */

/* Runs `clear` on a pty, answers `answer` to the question, returns the exit status. */
static int clear_on_tty(const char *url, const char *answer, char *seen, size_t cap)
{
    int master;
    pid_t pid = forkpty(&master, NULL, NULL, NULL);
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        execl(cli_path(), cli_path(), url, "clear", (char *)NULL);
        _exit(127);
    }
    size_t n = 0;
    seen[0] = '\0';
    while (!strstr(seen, "[y/N]")) { /* the question comes first */
        struct pollfd p = {.fd = master, .events = POLLIN};
        ck_assert_msg(poll(&p, 1, 30000) == 1, "no question; saw: %s", seen);
        ssize_t got = read(master, seen + n, cap - 1 - n);
        ck_assert_msg(got > 0, "pty closed; saw: %s", seen);
        n += (size_t)got;
        seen[n] = '\0';
    }
    ck_assert(write(master, answer, strlen(answer)) == (ssize_t)strlen(answer));
    for (;;) { /* drain until the child closes the pty */
        char buf[256];
        struct pollfd p = {.fd = master, .events = POLLIN};
        if (poll(&p, 1, 30000) != 1) break;
        ssize_t got = read(master, buf, sizeof buf);
        if (got <= 0) break;
    }
    close(master);
    return tu_wait(pid);
}

START_TEST(t_clear_asks_on_a_terminal)
{
    store s;
    store_open(&s, "memory");
    EXPECT_OUT(0, "1\n", s.url, "incr", "k");
    char seen[1024];
    ck_assert_int_eq(clear_on_tty(s.url, "n\n", seen, sizeof seen), 1);
    ck_assert_msg(strstr(seen, "Delete every key of memory://"), "%s", seen);
    EXPECT_OUT(0, "1\n", s.url, "get", "k");
    ck_assert_int_eq(clear_on_tty(s.url, "\n", seen, sizeof seen), 1); /* the default is no */
    EXPECT_OUT(0, "1\n", s.url, "get", "k");
    ck_assert_int_eq(clear_on_tty(s.url, "yes\n", seen, sizeof seen), 0);
    EXPECT_ERR(1, "TRAFFIC_ENOTFOUND", s.url, "get", "k");
    store_close(&s);
}
END_TEST

/* ---- watch ----------------------------------------------------------------------------------- */

START_TEST(t_watch_until_sigint)
{
    store s;
    store_open(&s, "memory");
    int out[2];
    ck_assert_int_eq(pipe(out), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        dup2(out[1], 1);
        close(out[0]);
        close(out[1]);
        execl(cli_path(), cli_path(), s.url, "watch", "--interval", "0.2", (char *)NULL);
        _exit(127);
    }
    close(out[1]);
    FILE *f = fdopen(out[0], "r");
    ck_assert_ptr_nonnull(f);
    char line[1024];
    int lines = 0, saw_increments = 0;
    while (lines < 4 && fgets(line, sizeof line, f)) {
        lines++;
        ck_assert_msg(strncmp(line, "time=", 5) == 0 && strstr(line, " backend=memory keys=") &&
                          strstr(line, " increments/s=") && strstr(line, " attached=") &&
                          strstr(line, " reaper_pid=") && line[strlen(line) - 1] == '\n',
                      "line: %s", line);
        saw_increments |= strstr(line, " increments/s=0.0 ") == NULL;
        /* work from other processes between samples shows in the next line's rates */
        run r = EXPECT(0, s.url, "incr", "hits");
        run_free(&r);
    }
    ck_assert_int_eq(lines, 4);
    ck_assert_msg(saw_increments, "increments never showed");
    ck_assert_int_eq(kill(pid, SIGINT), 0);
    ck_assert_int_eq(tu_wait(pid), 0);
    fclose(f);
    run r = EXPECT(0, s.url, "watch", "--interval", "0.05", "--count", "2");
    ck_assert_int_eq(count_of(r.out, "\n"), 2);
    run_free(&r);
    store_close(&s);
}
END_TEST

/* On a terminal, watch redraws a screen instead of printing lines. */
START_TEST(t_watch_on_a_terminal)
{
    store s;
    store_open(&s, "memory");
    int master;
    pid_t pid = forkpty(&master, NULL, NULL, NULL);
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        execl(cli_path(), cli_path(), s.url, "watch", "--interval", "0.05", "--count", "2", (char *)NULL);
        _exit(127);
    }
    char seen[8192];
    size_t n = 0;
    for (;;) {
        struct pollfd p = {.fd = master, .events = POLLIN};
        if (poll(&p, 1, 30000) != 1) break;
        ssize_t got = read(master, seen + n, sizeof seen - 1 - n);
        if (got <= 0) break;
        n += (size_t)got;
    }
    seen[n] = '\0';
    close(master);
    ck_assert_int_eq(tu_wait(pid), 0);
    ck_assert_int_eq(count_of(seen, "\033[H\033[2J"), 2);
    ck_assert_msg(strstr(seen, "traffic watch  memory://") && strstr(seen, "per second") &&
                      strstr(seen, "increments") && strstr(seen, "expirations") && !strstr(seen, "time="),
                  "%s", seen);
    store_close(&s);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("cli");
    TCase *u = tcase_create("usage");
    tcase_add_test(u, t_help);
    tcase_add_test(u, t_usage_errors);
    tcase_add_test(u, t_missing_store);
    suite_add_tcase(su, u);
    TCase *s = tcase_create("session");
    tcase_add_loop_test(s, t_session, 0, 3);
    tcase_add_test(s, t_escaped_keys);
    tcase_add_test(s, t_redis_prefix);
    tcase_add_test(s, t_clear_asks_on_a_terminal);
    tcase_add_test(s, t_watch_until_sigint);
    tcase_add_test(s, t_watch_on_a_terminal);
    suite_add_tcase(su, s);
    return tu_run(su);
}
