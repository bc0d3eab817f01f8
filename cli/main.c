/*
 * main.c — `traffic URL COMMAND [ARGS]`: look inside a live store and fix it, in the manner
 * of redis-cli.
 *
 * Everything about the command line is checked before the store is opened, so that a typo
 * never touches a store (opening memory://NAME or sqlite://PATH would create it). For the
 * same reason the command refuses a named memory table or a SQLite file that does not exist
 * unless --create is given: `traffic memory://ap stats` must not make a new empty table next
 * to the one the server uses.
 *
 * Exit status: 0 done; 1 the operation failed (or a limit denied, or clear was declined),
 * with a message on stderr; 2 a usage error (unknown command or option, a missing or bad
 * argument, a malformed URL or rule).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"

#ifndef TRAFFIC_VERSION
#define TRAFFIC_VERSION "unknown"
#endif

/* ---- the commands, their options and their help ---------------------------------------- */

enum { O_JSON = 1, O_YES = 2, O_PEEK = 4, O_RAW = 8, O_TTL = 16, O_COST = 32, O_INTERVAL = 64, O_COUNT = 128 };

typedef struct command {
    const char *name;
    int (*run)(cli_ctx *c);
    int min_pos, max_pos; /* positional arguments after the command */
    int options;
    const char *synopsis, *help;
} command;

static const command COMMANDS[] = {
    {"stats", cmd_stats, 0, 0, O_JSON, "stats [--json]",
     "Prints the store's figures: keys, capacity, hits and misses, sets, increments, deletes,\n"
     "decisions and denials, evictions, expirations, and the backend's own (attached processes,\n"
     "the reaper, the WAL, ...). Figures a backend does not keep are left out (shown as 0 in JSON).\n"
     "  --json   one JSON object, the library's traffic_stats_json"},
    {"get", cmd_get, 1, 1, O_RAW, "get KEY [--raw]",
     "Prints the value of KEY: as text when it is printable UTF-8, else quoted with C escapes\n"
     "(\"\\x00\\n...\"). A counter prints as its number; a rate-limit state readably (its algorithm,\n"
     "its times in the store's clock and how far from now, its TTL). Exit 1 if KEY is absent.\n"
     "  --raw    the stored bytes exactly, no newline (a state as its JSON text)"},
    {"set", cmd_set, 2, 2, O_TTL, "set KEY VALUE [--ttl S]",
     "Stores VALUE (the argument's bytes) under KEY, replacing what was there.\n"
     "  --ttl S  expire after S seconds (default: never)"},
    {"incr", cmd_incr, 1, 2, O_TTL, "incr KEY [N] [--ttl S]",
     "Adds N (default 1, may be negative) to the counter KEY and prints the new value. A missing\n"
     "key starts at 0. Exit 1 if KEY holds something else, or the counter would overflow.\n"
     "  --ttl S  the expiry of a counter this creates (an existing one keeps its own)"},
    {"del", cmd_del, 1, CLI_MAX_ARGS - 1, 0, "del KEY [KEY ...]",
     "Deletes each KEY (absent keys are fine). A rate-limit key deleted starts afresh."},
    {"ttl", cmd_ttl, 1, 1, 0, "ttl KEY",
     "Prints the remaining TTL of KEY in seconds (3 decimals), or -1 if it never expires.\n"
     "Exit 1 if KEY is absent."},
    {"keys", cmd_keys, 0, 1, O_JSON, "keys [GLOB] [--json]",
     "Lists the live keys matching GLOB (default: all), one per line: the key, its kind (bytes,\n"
     "counter, limit:ALGORITHM, other), its TTL in seconds or - for none, separated by tabs. Keys\n"
     "come in no particular order. GLOB is Redis's MATCH syntax: * any bytes, ? one byte, [abc],\n"
     "[^abc], [a-z], \\ quotes the next character (quote the GLOB for your shell). On Redis only\n"
     "the keys under the URL's prefix, shown without it.\n"
     "  --json   a JSON array of {\"key\", \"kind\", \"algorithm\", \"ttl\"} (ttl null: none; a key that\n"
     "           is not valid UTF-8 also has \"key_hex\")"},
    {"clear", cmd_clear, 0, 0, O_YES, "clear [--yes]",
     "Deletes every key of the store (on Redis: every key under the prefix, nothing else). On a\n"
     "terminal it asks first; otherwise it needs --yes.\n"
     "  --yes    do not ask"},
    {"reap", cmd_reap, 0, 0, 0, "reap",
     "Runs one cleanup pass now: removes expired entries (memory: also undoes half-done writes\n"
     "of processes that died) and prints how many. Redis expires keys itself: nothing to do."},
    {"limit", cmd_limit, 2, 2, O_COST | O_PEEK | O_JSON, "limit KEY RULE [--cost N] [--peek] [--json]",
     "Makes one rate-limit decision on KEY, as a server would, and prints it. RULE is\n"
     "ALGO:LIMIT/WINDOW[,burst=N], e.g. token_bucket:100/60s,burst=20 or fixed_window:5/1m; ALGO\n"
     "is sliding_window_counter (the default when omitted), fixed_window, sliding_window,\n"
     "token_bucket or leaky_bucket; WINDOW takes ms, s, m, h or d. Exit 1 when denied.\n"
     "  --cost N  the request's cost (default 1)\n"
     "  --peek    look without consuming (cost 0): would a request of cost 1 pass now?\n"
     "  --json    one JSON object: the key, the rule, the cost and the decision"},
    {"watch", cmd_watch, 0, 0, O_INTERVAL | O_COUNT, "watch [--interval S] [--count N]",
     "A live view of the stats: keys, operations per second by kind, hits and misses, evictions,\n"
     "expirations, attached processes and the reaper. On a terminal it redraws the screen; else\n"
     "it prints one line of name=value pairs per interval. Ctrl-C (SIGINT) ends it, status 0.\n"
     "On SQLite and Redis the library counts operations per handle, so only the keys, and Redis's\n"
     "own expirations and evictions, move with other processes' work.\n"
     "  --interval S  seconds between samples (default 1)\n"
     "  --count N     stop after N samples"},
};
#define NCOMMANDS (sizeof COMMANDS / sizeof *COMMANDS)

static const struct {
    const char *name;
    int flag;
} OPTIONS[] = {{"json", O_JSON}, {"yes", O_YES},   {"peek", O_PEEK},         {"raw", O_RAW},
               {"ttl", O_TTL},   {"cost", O_COST}, {"interval", O_INTERVAL}, {"count", O_COUNT}};
#define NOPTIONS (sizeof OPTIONS / sizeof *OPTIONS)

static void usage(FILE *f)
{
    fprintf(f, "usage: traffic [--create] URL COMMAND [ARGS]\n"
               "       traffic --help | --version | help [COMMAND]\n"
               "\n"
               "Looks inside a traffic store and changes it. URL is any traffic URL: memory://NAME,\n"
               "sqlite://PATH, redis://HOST[:PORT][/DB][?prefix=P], redis+unix://, redis+sentinel://,\n"
               "redis+cluster://, with fallback= if the servers use one.\n"
               "\n"
               "Commands:\n");
    for (size_t i = 0; i < NCOMMANDS; i++)
        fprintf(f, "  %s\n", COMMANDS[i].synopsis);
    fprintf(f, "\n"
               "  --create   open a named memory table or a SQLite file that does not exist yet\n"
               "             (without it, the command refuses, rather than create an empty store)\n"
               "\n"
               "'traffic help COMMAND' or 'traffic URL COMMAND --help' describes a command.\n"
               "Exit status: 0 done, 1 the operation failed or the limit denied, 2 usage error.\n");
}

static void command_help(FILE *f, const command *cmd)
{
    fprintf(f, "usage: traffic URL %s\n\n%s\n", cmd->synopsis, cmd->help);
}

static const command *find_command(const char *name)
{
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (strcmp(COMMANDS[i].name, name) == 0) return &COMMANDS[i];
    return NULL;
}

/* ---- reporting -------------------------------------------------------------------------- */

int cli_usage_error(const cli_ctx *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "traffic: %s%s", c && c->command ? c->command : "", c && c->command ? ": " : "");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    if (c && c->command)
        fprintf(stderr, "usage: traffic URL %s (traffic help %s)\n", find_command(c->command)->synopsis, c->command);
    else
        fprintf(stderr, "usage: traffic [--create] URL COMMAND [ARGS] (traffic --help)\n");
    return EXIT_USAGE;
}

int cli_failed(const cli_ctx *c, int rc, const char *what)
{
    const char *msg = traffic_errmsg(c->b);
    fprintf(stderr, "traffic: %s%s%s: %s%s%s%s\n", c->command, what && *what ? " " : "", what ? what : "",
            traffic_strerror(rc), *msg ? " (" : "", msg, *msg ? ")" : "");
    return EXIT_FAILED;
}

static int cli_seconds(const cli_ctx *c, const char *name, const char *text, double min, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (end == text || *end || errno || !isfinite(v) || v < min)
        return cli_usage_error(c, "%s \"%s\" is not a number of seconds >= %g", name, text, min);
    *out = v;
    return 0;
}

static int cli_int64(const cli_ctx *c, const char *name, const char *text, int64_t min, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (end == text || *end || errno || v < min) {
        if (min == INT64_MIN) return cli_usage_error(c, "%s \"%s\" is not a 64-bit integer", name, text);
        return cli_usage_error(c, "%s \"%s\" is not an integer >= %lld", name, text, (long long)min);
    }
    *out = v;
    return 0;
}

/* ---- arguments -------------------------------------------------------------------------- */

/* Parses argv (after the command) into c->a: options anywhere ("--name", "--name=value",
 * "--name value"), "--" ends them, and anything else is positional, "-5" included (incr). */
static int parse_args(cli_ctx *c, const command *cmd, int argc, char **argv)
{
    int only_pos = 0;
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (!only_pos && strcmp(arg, "--") == 0) {
            only_pos = 1;
            continue;
        }
        if (only_pos || strncmp(arg, "--", 2) != 0) {
            if (c->a.npos >= cmd->max_pos) return cli_usage_error(c, "unexpected argument \"%s\"", arg);
            c->a.pos[c->a.npos++] = arg;
            continue;
        }
        const char *name = arg + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        int flag = 0;
        for (size_t k = 0; k < NOPTIONS; k++)
            if (strlen(OPTIONS[k].name) == nlen && strncmp(OPTIONS[k].name, name, nlen) == 0) flag = OPTIONS[k].flag;
        if (!(flag & cmd->options)) return cli_usage_error(c, "unknown option \"%.*s\"", (int)(nlen + 2), arg);
        const char **slot = flag == O_TTL        ? &c->a.ttl
                            : flag == O_COST     ? &c->a.cost
                            : flag == O_INTERVAL ? &c->a.interval
                            : flag == O_COUNT    ? &c->a.count
                                                 : NULL;
        if (!slot) {
            if (eq) return cli_usage_error(c, "option --%.*s takes no value", (int)nlen, name);
            c->a.json |= flag == O_JSON;
            c->a.yes |= flag == O_YES;
            c->a.peek |= flag == O_PEEK;
            c->a.raw |= flag == O_RAW;
        } else if (eq) {
            *slot = eq + 1;
        } else if (i + 1 < argc) {
            *slot = argv[++i];
        } else {
            return cli_usage_error(c, "option --%.*s needs a value", (int)nlen, name);
        }
    }
    if (c->a.npos < cmd->min_pos) return cli_usage_error(c, "missing argument");
    return 0;
}

/* The values of the options and of the number and rule arguments, so that a bad one is a
 * usage error found before the store is opened. */
static int check_values(cli_ctx *c)
{
    cli_args *a = &c->a;
    char msg[256];
    a->interval_s = 1;
    a->cost_n = 1;
    a->incr_n = 1;
    if (a->ttl && cli_seconds(c, "--ttl", a->ttl, 0, &a->ttl_s)) return EXIT_USAGE;
    if (a->interval && cli_seconds(c, "--interval", a->interval, 0.01, &a->interval_s)) return EXIT_USAGE;
    if (a->count && cli_int64(c, "--count", a->count, 1, &a->count_n)) return EXIT_USAGE;
    if (a->cost && cli_int64(c, "--cost", a->cost, 0, &a->cost_n)) return EXIT_USAGE;
    if (a->peek && a->cost) return cli_usage_error(c, "--peek and --cost exclude each other");
    if (a->peek) a->cost_n = 0;
    if (strcmp(c->command, "incr") == 0 && a->npos > 1 && cli_int64(c, "N", a->pos[1], INT64_MIN, &a->incr_n))
        return EXIT_USAGE;
    if (strcmp(c->command, "limit") == 0 && traffic_rule_parse(a->pos[1], &a->rule, msg, sizeof msg) != TRAFFIC_OK)
        return cli_usage_error(c, "%s", msg);
    return 0;
}

static int has_help(int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) return 0;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) return 1;
    }
    return 0;
}

/* ---- the store -------------------------------------------------------------------------- */

/* Percent-decodes src[0..n) into dst (n + 1 bytes). */
static void url_decode(const char *src, size_t n, char *dst)
{
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (src[i] == '%' && i + 2 < n + 1 && sscanf(src + i + 1, "%2x", &v) == 1) {
            *dst++ = (char)v;
            i += 2;
        } else {
            *dst++ = src[i];
        }
    }
    *dst = '\0';
}

/* Without --create: a named memory table or a SQLite file must exist already. Other URLs
 * (anonymous memory, Redis, any pair with fallback=) are left to traffic_open. */
static int check_exists(const char *url)
{
    const char *q = strchr(url, '?');
    size_t end = q ? (size_t)(q - url) : strlen(url);
    if (q && strstr(q, "fallback=")) return 0;
    char *path = malloc(end + 16);
    if (!path) return 0;
    int missing = 0;
    struct stat st;
    if (strncmp(url, "memory://", 9) == 0 && end > 9 && end - 9 <= 200 &&
        strspn(url + 9, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == end - 9) {
        strcpy(path, "/dev/shm/traffic.");
        memcpy(path + 17, url + 9, end - 9);
        path[17 + end - 9] = '\0';
        missing = stat(path, &st) != 0 && errno == ENOENT;
        if (missing) fprintf(stderr, "traffic: no memory table \"%.*s\" (%s)", (int)(end - 9), url + 9, path);
    } else if (strncmp(url, "sqlite://", 9) == 0 && end > 9) {
        url_decode(url + 9, end - 9, path);
        missing = stat(path, &st) != 0 && errno == ENOENT;
        if (missing) fprintf(stderr, "traffic: no SQLite file \"%s\"", path);
    }
    free(path);
    if (missing) fprintf(stderr, "; --create makes a new, empty one\n");
    return missing;
}

/* Shown in messages: the URL without a password. */
static void url_redacted(const char *url, char *buf, size_t cap)
{
    const char *at = strchr(url, '@'), *scheme = strstr(url, "://");
    const char *colon = scheme ? strchr(scheme + 3, ':') : NULL;
    if (at && colon && colon < at)
        snprintf(buf, cap, "%.*s:***%s", (int)(colon - url), url, at);
    else
        snprintf(buf, cap, "%s", url);
}

static int open_store(cli_ctx *c)
{
    url_redacted(c->url, c->shown, sizeof c->shown);
    int rc = traffic_open(c->url, &c->b);
    if (rc == TRAFFIC_OK) return 0;
    fprintf(stderr, "traffic: cannot open %s: %s (%s)\n", c->shown, traffic_strerror(rc), traffic_errmsg(NULL));
    return rc == TRAFFIC_EINVAL ? EXIT_USAGE : EXIT_FAILED; /* a malformed URL is a usage error */
}

int main(int argc, char **argv)
{
    int create = 0, i = 1;
    for (; i < argc && strcmp(argv[i], "--create") == 0; i++)
        create = 1;
    if (i < argc && strcmp(argv[i], "--version") == 0) {
        printf("traffic %s\n", TRAFFIC_VERSION);
        return EXIT_OK;
    }
    if (i < argc && strcmp(argv[i], "help") == 0) {
        const command *cmd = i + 1 < argc ? find_command(argv[i + 1]) : NULL;
        if (i + 1 < argc && !cmd) return cli_usage_error(NULL, "no command \"%s\"", argv[i + 1]);
        cmd ? command_help(stdout, cmd) : usage(stdout);
        return EXIT_OK;
    }
    /* --help anywhere: the command's help if one is named, else the general one */
    if (has_help(argc - i, argv + i)) {
        for (int k = i; k < argc; k++)
            if (find_command(argv[k])) {
                command_help(stdout, find_command(argv[k]));
                return EXIT_OK;
            }
        usage(stdout);
        return EXIT_OK;
    }
    if (i >= argc || argv[i][0] == '-') {
        if (i < argc) return cli_usage_error(NULL, "unknown option \"%s\"", argv[i]);
        usage(stderr);
        return EXIT_USAGE;
    }
    cli_ctx c = {.url = argv[i]};
    if (i + 1 >= argc) return cli_usage_error(NULL, "no command after the URL");
    const command *cmd = find_command(argv[i + 1]);
    if (!cmd) return cli_usage_error(NULL, "unknown command \"%s\"", argv[i + 1]);
    c.command = cmd->name;
    int rc = parse_args(&c, cmd, argc - i - 2, argv + i + 2);
    if (!rc) rc = check_values(&c);
    if (rc) return rc;
    if (!create && check_exists(c.url)) return EXIT_FAILED;
    if ((rc = open_store(&c))) return rc;
    rc = cmd->run(&c);
    if (fflush(stdout) != 0 && rc == EXIT_OK) {
        fprintf(stderr, "traffic: %s: writing the output failed\n", c.command);
        rc = EXIT_FAILED;
    }
    traffic_close(c.b);
    return rc;
}
