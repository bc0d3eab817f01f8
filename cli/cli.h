/*
 * cli.h — what the files of the `traffic` command share.
 *
 *   main.c      arguments, help, opening the store, the exit status
 *   commands.c  one function per command (stats, get, set, incr, del, ttl, keys, clear, reap, limit)
 *   watch.c     the live view
 *   text.c      bytes as text or escaped, JSON strings, and rate-limit states made readable
 *
 * The command uses only the public API (traffic.h), as any program would.
 */
#ifndef TRAFFIC_CLI_H
#define TRAFFIC_CLI_H

#include <stdint.h>
#include <stdio.h>

#include <traffic/traffic.h>

/* Exit statuses. */
enum { EXIT_OK = 0, EXIT_FAILED = 1, EXIT_USAGE = 2 };

/* ---- arguments (main.c) ------------------------------------------------------------------ */

#define CLI_MAX_ARGS 64

/* A command's arguments once parsed: positionals in order, and its options. */
typedef struct cli_args {
    int npos;
    const char *pos[CLI_MAX_ARGS];
    int json, yes, peek, raw;
    const char *ttl, *cost, *interval, *count; /* as given; NULL: not given */
    /* Their values and those of the positionals that are numbers or rules, checked before the
     * store is opened (with the defaults where not given). */
    double ttl_s;      /* --ttl: 0 */
    double interval_s; /* --interval: 1 */
    int64_t cost_n;    /* --cost: 1; --peek: 0 */
    int64_t count_n;   /* --count: 0, no end */
    int64_t incr_n;    /* incr's N: 1 */
    traffic_rule rule; /* limit's RULE */
} cli_args;

/* What a command needs: the store, its URL (as given), and the parsed arguments. */
typedef struct cli_ctx {
    traffic_backend *b;
    const char *url;
    char shown[512]; /* the URL without its password, for messages */
    const char *command;
    cli_args a;
} cli_ctx;

/* Reports a usage error for the current command ("traffic: get: ...") and returns EXIT_USAGE. */
int cli_usage_error(const cli_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Reports a failed call: "traffic: <command> <what>: <status name> (<detail>)"; EXIT_FAILED. */
int cli_failed(const cli_ctx *c, int rc, const char *what);

/* ---- commands (commands.c, watch.c) ------------------------------------------------------ */

int cmd_stats(cli_ctx *c);
int cmd_get(cli_ctx *c);
int cmd_set(cli_ctx *c);
int cmd_incr(cli_ctx *c);
int cmd_del(cli_ctx *c);
int cmd_ttl(cli_ctx *c);
int cmd_keys(cli_ctx *c);
int cmd_clear(cli_ctx *c);
int cmd_reap(cli_ctx *c);
int cmd_limit(cli_ctx *c);
int cmd_watch(cli_ctx *c);

/* ---- text.c ------------------------------------------------------------------------------ */

/* 1 if the bytes can be printed as they are: non-empty, valid UTF-8, no control character, no
 * space at either end, and not starting with '"' (which would read as the escaped form). */
int text_printable(const void *p, size_t n);
/* The bytes as they are when printable, else between double quotes with C escapes (\n, \t,
 * \", \\, \xNN) for everything else that is not printable UTF-8. */
void text_put(FILE *f, const void *p, size_t n);
/* A JSON string: valid UTF-8 kept, controls escaped, each byte of invalid UTF-8 as \u00NN. */
void json_put_string(FILE *f, const void *p, size_t n);
int text_utf8_valid(const void *p, size_t n);
/* Lowercase hex of the bytes. */
void text_put_hex(FILE *f, const void *p, size_t n);
/* A key as a glob matching only itself (*, ?, [, ], \ escaped), into buf (2 n + 1 bytes). */
void text_glob_escape(const char *key, size_t n, char *buf);

/* The clock a store keeps its rate-limit times in, as far as its URL tells. */
enum { CLOCK_UNKNOWN, CLOCK_MONO, CLOCK_WALL };
/* Prints a rate-limit state (traffic_get's JSON text) readably; ttl is the key's remaining
 * TTL (-1: none). Returns 0, or -1 if the text is no state this command knows. */
int state_print(FILE *f, const char *json, size_t n, int clock, double ttl);
/* The store's clock now, in µs (0 for CLOCK_UNKNOWN). */
int64_t state_clock_us(int clock);

#endif
