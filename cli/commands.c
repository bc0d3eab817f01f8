/*
 * commands.c — the traffic command's operations, one function each, on an open store.
 *
 * Each prints its result on stdout and returns the exit status; failures go to stderr
 * through cli_failed, with the library's status name and message.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "cli.h"

/* ---- stats ------------------------------------------------------------------------------ */

int cmd_stats(cli_ctx *c)
{
    if (c->a.json) {
        int n = traffic_stats_json(c->b, NULL, 0);
        char *buf = n > 0 ? malloc((size_t)n + 1) : NULL;
        if (n < 0) return cli_failed(c, n, "");
        if (!buf) return cli_failed(c, TRAFFIC_ENOMEM, "");
        int rc = traffic_stats_json(c->b, buf, (size_t)n + 1);
        if (rc < 0) {
            free(buf);
            return cli_failed(c, rc, "");
        }
        printf("%s\n", buf);
        free(buf);
        return EXIT_OK;
    }
    struct traffic_stats s;
    int rc = traffic_stats(c->b, &s);
    if (rc) return cli_failed(c, rc, "");
    /* The figures every store keeps, then those of the backend, shown only when non-zero. */
    printf("%-18s %s\n", "backend", s.backend);
#define ALWAYS(f) printf("%-18s %llu\n", #f, (unsigned long long)s.f)
#define NONZERO(f)                                                                                                     \
    if (s.f) printf("%-18s %llu\n", #f, (unsigned long long)s.f)
    ALWAYS(keys);
    NONZERO(capacity);
    NONZERO(max_size);
    NONZERO(bytes_used);
    NONZERO(bytes_resident);
    NONZERO(huge_bytes);
    ALWAYS(hits);
    ALWAYS(misses);
    ALWAYS(sets);
    ALWAYS(increments);
    ALWAYS(deletes);
    ALWAYS(decisions);
    ALWAYS(denied);
    ALWAYS(evictions);
    ALWAYS(expirations);
    NONZERO(attached);
    NONZERO(recovered);
    NONZERO(epoch);
    if (s.reaper_pid) printf("%-18s %lld\n", "reaper_pid", (long long)s.reaper_pid);
    NONZERO(reaper_runs);
    NONZERO(expired_pending);
    NONZERO(wal_bytes);
    NONZERO(busy_retries);
    if (s.serving) printf("%-18s %s\n", "serving", s.serving == TRAFFIC_SERVING_PRIMARY ? "primary" : "fallback");
    NONZERO(serving_since_ms);
    NONZERO(switches);
    NONZERO(probes);
    NONZERO(primary_failures);
#undef ALWAYS
#undef NONZERO
    return EXIT_OK;
}

/* ---- get, set, incr, del, ttl ----------------------------------------------------------- */

/* The value of key into a malloc'd *buf: 0, or a status. */
static int read_value(traffic_backend *b, const char *key, char **buf, size_t *len)
{
    size_t cap = 4096;
    for (int tries = 0; tries < 8; tries++) {
        char *p = realloc(*buf, cap + 1);
        if (!p) return TRAFFIC_ENOMEM;
        *buf = p;
        int rc = traffic_get(b, key, p, cap, len);
        if (rc != TRAFFIC_ERANGE) return rc;
        cap = *len; /* it grew: read again with room for it */
    }
    return TRAFFIC_ERANGE;
}

/* The store's clock as its URL tells (memory: CLOCK_MONOTONIC; SQLite and Redis: wall). */
static int url_clock(const char *url)
{
    if (strstr(url, "fallback=")) return CLOCK_UNKNOWN; /* either store may be answering */
    if (strncmp(url, "memory:", 7) == 0) return CLOCK_MONO;
    if (strncmp(url, "sqlite:", 7) == 0 || strncmp(url, "redis", 5) == 0) return CLOCK_WALL;
    return CLOCK_UNKNOWN;
}

typedef struct kind_probe {
    const char *key;
    int kind;
} kind_probe;

static int kind_fn(void *ctx, const char *key, size_t klen, int kind, double ttl)
{
    (void)ttl;
    kind_probe *p = ctx;
    if (strlen(p->key) == klen && memcmp(p->key, key, klen) == 0) p->kind = kind;
    return 0;
}

/* Is key a rate-limit state? traffic_get shows one as JSON text, which a bytes value could
 * hold too: a text that looks like one is confirmed by a scan for that very key (on memory
 * and Redis a pass over the store, so only then). */
static int is_state(cli_ctx *c, const char *key, const char *v, size_t n)
{
    static const char head[] = "{\"algorithm\":\"";
    if (n < sizeof head - 1 || memcmp(v, head, sizeof head - 1) != 0) return 0;
    size_t klen = strlen(key);
    char *glob = malloc(2 * klen + 1);
    if (!glob) return 0;
    text_glob_escape(key, klen, glob);
    kind_probe p = {.key = key};
    int rc = traffic_scan(c->b, glob, kind_fn, &p);
    free(glob);
    return rc == TRAFFIC_OK && TRAFFIC_KIND_IS_LIMIT(p.kind);
}

int cmd_get(cli_ctx *c)
{
    const char *key = c->a.pos[0];
    char *v = NULL;
    size_t n = 0;
    int rc = read_value(c->b, key, &v, &n);
    if (rc) {
        free(v);
        return cli_failed(c, rc, key);
    }
    if (c->a.raw) {
        fwrite(v, 1, n, stdout);
    } else if (is_state(c, key, v, n)) {
        double ttl = -1;
        if (traffic_ttl(c->b, key, &ttl) != TRAFFIC_OK) ttl = -1;
        if (state_print(stdout, v, n, url_clock(c->url), ttl) != 0) {
            text_put(stdout, v, n);
            putchar('\n');
        }
    } else {
        text_put(stdout, v, n);
        putchar('\n');
    }
    free(v);
    return EXIT_OK;
}

int cmd_set(cli_ctx *c)
{
    const char *v = c->a.pos[1];
    int rc = traffic_set(c->b, c->a.pos[0], v, strlen(v), c->a.ttl_s);
    if (rc) return cli_failed(c, rc, c->a.pos[0]);
    printf("OK\n");
    return EXIT_OK;
}

int cmd_incr(cli_ctx *c)
{
    int64_t out;
    int rc = traffic_increment(c->b, c->a.pos[0], c->a.incr_n, c->a.ttl_s, &out);
    if (rc) return cli_failed(c, rc, c->a.pos[0]);
    printf("%" PRId64 "\n", out);
    return EXIT_OK;
}

int cmd_del(cli_ctx *c)
{
    int status = EXIT_OK;
    for (int i = 0; i < c->a.npos; i++) {
        int rc = traffic_delete(c->b, c->a.pos[i]);
        if (rc) status = cli_failed(c, rc, c->a.pos[i]);
    }
    if (status == EXIT_OK) printf("OK\n");
    return status;
}

int cmd_ttl(cli_ctx *c)
{
    double s;
    int rc = traffic_ttl(c->b, c->a.pos[0], &s);
    if (rc) return cli_failed(c, rc, c->a.pos[0]);
    if (s < 0)
        printf("-1\n");
    else
        printf("%.3f\n", s);
    return EXIT_OK;
}

/* ---- keys ------------------------------------------------------------------------------- */

typedef struct keys_out {
    int json;
    long n;
} keys_out;

static void put_kind(int kind, int json)
{
    const char *name = traffic_kind_name(kind);
    const char *algo = TRAFFIC_KIND_IS_LIMIT(kind) ? traffic_algorithm_name(TRAFFIC_KIND_ALGORITHM(kind)) : NULL;
    if (!name) name = "other";
    if (json) {
        printf("\"kind\":\"%s\",\"algorithm\":", name);
        if (algo)
            printf("\"%s\"", algo);
        else
            printf("null");
    } else if (algo) {
        printf("%s:%s", name, algo);
    } else {
        printf("%s", name);
    }
}

static int keys_fn(void *ctx, const char *key, size_t klen, int kind, double ttl)
{
    keys_out *o = ctx;
    if (o->json) {
        printf("%s{\"key\":", o->n ? ",\n" : "\n");
        json_put_string(stdout, key, klen);
        if (!text_utf8_valid(key, klen)) {
            printf(",\"key_hex\":\"");
            text_put_hex(stdout, key, klen);
            printf("\"");
        }
        putchar(',');
        put_kind(kind, 1);
        if (ttl < 0)
            printf(",\"ttl\":null}");
        else
            printf(",\"ttl\":%.3f}", ttl);
    } else {
        text_put(stdout, key, klen);
        putchar('\t');
        put_kind(kind, 0);
        if (ttl < 0)
            printf("\t-\n");
        else
            printf("\t%.3f\n", ttl);
    }
    o->n++;
    /* a closed pipe (| head) ends the scan instead of writing on into the void */
    return ferror(stdout) ? 1 : 0;
}

int cmd_keys(cli_ctx *c)
{
    keys_out o = {.json = c->a.json};
    if (o.json) printf("[");
    int rc = traffic_scan(c->b, c->a.npos ? c->a.pos[0] : NULL, keys_fn, &o);
    if (rc < 0) return cli_failed(c, rc, "");
    if (rc > 0) return EXIT_FAILED; /* the output failed: main reports it */
    if (o.json) printf("%s]\n", o.n ? "\n" : "");
    return EXIT_OK;
}

/* ---- clear, reap ------------------------------------------------------------------------ */

int cmd_clear(cli_ctx *c)
{
    if (!c->a.yes) {
        if (!isatty(STDIN_FILENO))
            return cli_usage_error(c, "stdin is not a terminal to ask on: give --yes to clear without asking");
        fprintf(stderr, "Delete every key of %s? [y/N] ", c->shown);
        char line[16] = "";
        if (!fgets(line, sizeof line, stdin) || (strcasecmp(line, "y\n") != 0 && strcasecmp(line, "yes\n") != 0)) {
            fprintf(stderr, "traffic: clear: not cleared\n");
            return EXIT_FAILED;
        }
    }
    int rc = traffic_clear(c->b);
    if (rc) return cli_failed(c, rc, "");
    printf("OK\n");
    return EXIT_OK;
}

int cmd_reap(cli_ctx *c)
{
    uint64_t removed = 0;
    int rc = traffic_reap(c->b, &removed);
    if (rc == TRAFFIC_ENOTSUP) { /* Redis: nothing to do, which is not a failure */
        fprintf(stderr, "traffic: reap: nothing to do: %s\n", traffic_errmsg(c->b));
        printf("removed 0\n");
        return EXIT_OK;
    }
    if (rc) return cli_failed(c, rc, "");
    printf("removed %" PRIu64 "\n", removed);
    return EXIT_OK;
}

/* ---- limit ------------------------------------------------------------------------------ */

int cmd_limit(cli_ctx *c)
{
    const char *key = c->a.pos[0];
    const traffic_rule r = c->a.rule;
    int64_t cost = c->a.cost_n;
    traffic_decision d;
    int rc = traffic_limit(c->b, key, &r, cost, &d);
    if (rc) return cli_failed(c, rc, key);
    if (c->a.json) {
        printf("{\"key\":");
        json_put_string(stdout, key, strlen(key));
        printf(",\"rule\":{\"algorithm\":\"%s\",\"limit\":%lld,\"window\":%.17g,\"burst\":%lld},\"cost\":%lld,"
               "\"allowed\":%s,\"limit\":%lld,\"remaining\":%lld,\"reset_after\":%.6f,\"retry_after\":%.6f,"
               "\"delay\":%.6f}\n",
               traffic_algorithm_name(r.algorithm), (long long)r.limit, r.window, (long long)r.burst, (long long)cost,
               d.allowed ? "true" : "false", (long long)d.limit, (long long)d.remaining, d.reset_after, d.retry_after,
               d.delay);
    } else {
        printf("%-12s %s%s\n", "allowed", d.allowed ? "yes" : "no", c->a.peek ? " (peek: nothing consumed)" : "");
        printf("%-12s %lld\n%-12s %lld\n", "limit", (long long)d.limit, "remaining", (long long)d.remaining);
        printf("%-12s %.3f s\n", "reset_after", d.reset_after);
        if (d.retry_after < 0)
            printf("%-12s never (the cost is over what the rule ever admits)\n", "retry_after");
        else
            printf("%-12s %.3f s\n", "retry_after", d.retry_after);
        if (r.algorithm == TRAFFIC_LEAKY_BUCKET) printf("%-12s %.3f s\n", "delay", d.delay);
    }
    return d.allowed ? EXIT_OK : EXIT_FAILED;
}
