/*
 * fuzz_url.c — traffic_open on arbitrary text: the URL parser, each backend's own parsing of
 * what follows "://", and their parameters.
 *
 * The input is the URL. What opening it may do is kept small and local:
 *   - memory://NAME opens this process's own table name instead of NAME (a valid NAME only;
 *     an invalid one goes through as written, to be refused), and a max_size over
 *     FUZZ_URL_MAX_SIZE is not opened at all: tables stay small (they are MAP_NORESERVE, and
 *     the header and participant records are all an open touches), and the named one is
 *     unlinked after each input;
 *   - sqlite:// opens only a path without '/' (after percent-decoding), and opens it in this
 *     process's private directory (the URL's path is prefixed with it), emptied after each
 *     input;
 *   - redis URLs go through as written, and every connect they make is redirected to a
 *     loopback port that refuses (fuzz_common.c), so an open must fail, and at once.
 * An open that works gets a few operations (they read the geometry the URL asked for).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <traffic/traffic.h>

#include "backends/url.h"
#include "fuzz.h"
#include "shm/shm.h"

#define FUZZ_URL_MAX      4096  /* bytes of URL text taken from an input */
#define FUZZ_URL_MAX_SIZE 20000 /* the largest memory max_size opened */

static const char *workdir;
static char table_name[64];

void fuzz_url_init(void)
{
    fuzz_redirect_connects(fuzz_closed_port());
    workdir = fuzz_private_dir("url");
    snprintf(table_name, sizeof table_name, "fuzz-url-%d", (int)getpid());
}

static int known_status(int rc)
{
    return rc <= TRAFFIC_OK && rc >= TRAFFIC_ENOTSUP;
}

enum { OPEN_AS_IS, OPEN_NAMED, OPEN_SQLITE, SKIP };

/* What to do with a URL that parsed, and the text to open instead (named tables, SQLite). */
static int plan(const char *text, url *u, char *rewritten, size_t cap)
{
    const char *sep = strstr(text, "://"), *q = strchr(sep + 3, '?');
    int n;
    const char *fb = url_param_get(u, "fallback");
    if (fb) {
        /* A fallback is opened as written: only an anonymous memory table keeps it local (a
         * named one would outlive the input, a SQLite path would land in the working
         * directory, as one did). */
        url f;
        if (url_parse(fb, &f) != TRAFFIC_OK) return OPEN_AS_IS; /* refused: nothing is opened */
        int anonymous = strcmp(f.scheme, "memory") == 0 && !f.rest[0];
        url_free(&f);
        if (!anonymous) return SKIP;
    }
    if (strcmp(u->scheme, "memory") == 0) {
        const char *ms = url_param_get(u, "max_size");
        if (ms && strtoull(ms, NULL, 10) > FUZZ_URL_MAX_SIZE) return SKIP;
        if (!u->rest[0] || !shm_name_valid(u->rest)) return OPEN_AS_IS;
        n = snprintf(rewritten, cap, "%.*s://%s%s", (int)(sep - text), text, table_name, q ? q : "");
        return n > 0 && (size_t)n < cap ? OPEN_NAMED : SKIP;
    }
    if (strcmp(u->scheme, "sqlite") == 0) {
        char *path = strdup(u->rest);
        if (!path) return SKIP;
        int rc = url_decode(path);
        int local = rc != TRAFFIC_OK || strchr(path, '/') == NULL;
        free(path);
        if (!local) return SKIP;
        n = snprintf(rewritten, cap, "%.*s://%s/%s", (int)(sep - text), text, workdir, sep + 3);
        return n > 0 && (size_t)n < cap ? OPEN_SQLITE : SKIP;
    }
    return OPEN_AS_IS;
}

/* A few operations on a store that opened: each must answer with a known status. */
static void operate(traffic_backend *b)
{
    static char big[70000];
    char buf[512];
    size_t len;
    int64_t v;
    traffic_rule rule = {.algorithm = TRAFFIC_TOKEN_BUCKET, .limit = 5, .window = 1};
    traffic_decision d;
    struct traffic_stats st;
    int rcs[] = {
        traffic_set(b, "k", "value", 5, 0),
        traffic_get(b, "k", buf, sizeof buf, &len),
        traffic_set(b, "big", big, sizeof big, 0),
        traffic_set(b, "mid", big, 300, 1),
        traffic_increment(b, "n", 3, 0, &v),
        traffic_limit(b, "rl", &rule, 1, &d),
        traffic_stats(b, &st),
        traffic_delete(b, "k"),
    };
    for (size_t i = 0; i < sizeof rcs / sizeof rcs[0]; i++)
        if (!known_status(rcs[i])) fuzz_fail("operation %zu on an opened store: status %d", i, rcs[i]);
}

int fuzz_url_one(const uint8_t *data, size_t size)
{
    char text[FUZZ_URL_MAX + 1], named[FUZZ_URL_MAX + 256];
    if (size > FUZZ_URL_MAX) size = FUZZ_URL_MAX;
    memcpy(text, data, size);
    text[size] = '\0';

    url u;
    int how = OPEN_AS_IS, has_fallback = 0;
    if (url_parse(text, &u) == TRAFFIC_OK) {
        has_fallback = url_param_get(&u, "fallback") != NULL;
        how = plan(text, &u, named, sizeof named);
        url_free(&u);
    }
    if (how == SKIP) return 0;

    unsigned long connects = fuzz_connects;
    traffic_backend *b = (traffic_backend *)&b; /* must come back NULL on failure */
    int rc = traffic_open(how == OPEN_AS_IS ? text : named, &b);
    if (!known_status(rc)) fuzz_fail("traffic_open(\"%s\") returned %d", text, rc);
    if ((rc == TRAFFIC_OK) != (b != NULL)) fuzz_fail("traffic_open(\"%s\"): status %d with handle %p", text, rc, (void *)b);
    if (rc != TRAFFIC_OK && !traffic_errmsg(NULL)[0]) fuzz_fail("traffic_open(\"%s\") failed without a message", text);
    /* (with a fallback, a store that is down opens on the fallback: SPEC, "When the store is down") */
    if (rc == TRAFFIC_OK && fuzz_connects != connects && !has_fallback)
        fuzz_fail("traffic_open(\"%s\") opened although every connect is refused", text);
    if (b) {
        operate(b);
        traffic_close(b);
    }
    if (how == OPEN_NAMED) traffic_memory_unlink(table_name);
    if (how == OPEN_SQLITE) fuzz_empty_dir(workdir);
    return 0;
}
