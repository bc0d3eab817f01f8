/*
 * text.c — how the traffic command shows bytes and rate-limit states.
 *
 * Values and keys are opaque bytes. Printed as they are when that is unambiguous (valid
 * UTF-8 without control characters, and not looking like the escaped form); otherwise between
 * double quotes with C escapes, as redis-cli does, so that what is shown can be told apart
 * from any other value. JSON output keeps valid UTF-8 and escapes each byte of invalid UTF-8
 * as \u00NN (JSON strings are Unicode; callers add the bytes in hex where they matter).
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

/* Length of the UTF-8 sequence at p[0..n), or 0 if it is not a valid one (overlong forms,
 * surrogates and code points above U+10FFFF are invalid). *cp gets the code point. */
static size_t utf8_seq(const unsigned char *p, size_t n, uint32_t *cp)
{
    if (p[0] < 0x80) {
        *cp = p[0];
        return 1;
    }
    size_t len = p[0] >= 0xf0 ? 4 : p[0] >= 0xe0 ? 3 : p[0] >= 0xc0 ? 2 : 0;
    if (len == 0 || len > n || p[0] > 0xf4) return 0;
    uint32_t c = p[0] & (0x7f >> len);
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80) return 0;
        c = c << 6 | (p[i] & 0x3f);
    }
    static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (c < min[len] || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) return 0;
    *cp = c;
    return len;
}

static int is_control(uint32_t cp)
{
    return cp < 0x20 || (cp >= 0x7f && cp < 0xa0);
}

int text_utf8_valid(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint32_t cp;
    for (size_t i = 0, l; i < n; i += l)
        if (!(l = utf8_seq(s + i, n - i, &cp))) return 0;
    return 1;
}

int text_printable(const void *p, size_t n)
{
    const unsigned char *s = p;
    if (n == 0 || s[0] == ' ' || s[n - 1] == ' ' || s[0] == '"') return 0;
    uint32_t cp;
    for (size_t i = 0, l; i < n; i += l)
        if (!(l = utf8_seq(s + i, n - i, &cp)) || is_control(cp)) return 0;
    return 1;
}

/* "..." with escapes: \" \\ \n \r \t, other bytes outside printable ASCII and valid UTF-8
 * as \xHH (text) or \u00HH (JSON: a control, or a byte of invalid UTF-8). Text also escapes
 * multi-byte control characters, which JSON may carry as they are. */
static void put_quoted(FILE *f, const unsigned char *s, size_t n, int json)
{
    fputc('"', f);
    uint32_t cp;
    for (size_t i = 0, l; i < n; i += l) {
        l = utf8_seq(s + i, n - i, &cp);
        if (l > 1 && (json || !is_control(cp))) {
            fwrite(s + i, 1, l, f);
            continue;
        }
        l = 1;
        switch (s[i]) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        default:
            if (s[i] >= 0x20 && s[i] < 0x7f)
                fputc(s[i], f);
            else
                fprintf(f, json ? "\\u%04x" : "\\x%02x", s[i]);
        }
    }
    fputc('"', f);
}

void text_put(FILE *f, const void *p, size_t n)
{
    if (text_printable(p, n))
        fwrite(p, 1, n, f);
    else
        put_quoted(f, p, n, 0);
}

void json_put_string(FILE *f, const void *p, size_t n)
{
    put_quoted(f, p, n, 1);
}

void text_put_hex(FILE *f, const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++)
        fprintf(f, "%02x", s[i]);
}

void text_glob_escape(const char *key, size_t n, char *buf)
{
    for (size_t i = 0; i < n; i++) {
        if (strchr("*?[]\\", key[i]) && key[i]) *buf++ = '\\';
        *buf++ = key[i];
    }
    *buf = '\0';
}

/* ---- rate-limit states ------------------------------------------------------------------
 * traffic_get shows a state as JSON (traffic.h, "Rate limits"):
 *   {"algorithm":"fixed_window","window_start_us":S,"count":N}
 *   {"algorithm":"sliding_window_counter","window":i,"previous":P,"current":C}
 *   {"algorithm":"token_bucket","tat_us":T}   (leaky_bucket likewise)
 *   {"algorithm":"sliding_window","log":[[t_us,cost],...]}
 * Times are µs of the store's clock: memory CLOCK_MONOTONIC, SQLite the wall clock, Redis
 * the server's TIME (this host's wall clock stands in for it). */

int64_t state_clock_us(int clock)
{
    struct timespec ts;
    if (clock == CLOCK_UNKNOWN) return 0;
    clock_gettime(clock == CLOCK_MONO ? CLOCK_MONOTONIC : CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* The integer after "name": in json, or 0 (*ok cleared). */
static long long field(const char *json, const char *name, int *ok)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", name);
    const char *p = strstr(json, pat);
    if (!p) {
        *ok = 0;
        return 0;
    }
    char *end;
    long long v = strtoll(p + strlen(pat), &end, 10);
    if (end == p + strlen(pat)) *ok = 0;
    return v;
}

/* "in 1.234 s" / "1.234 s ago" for an instant t of the store's clock. */
static void put_when(FILE *f, int clock, int64_t now, long long t)
{
    if (clock == CLOCK_UNKNOWN) return;
    double d = (double)(t - now) / 1e6;
    if (d >= 0)
        fprintf(f, " (in %.3f s)", d);
    else
        fprintf(f, " (%.3f s ago)", -d);
}

static void put_log(FILE *f, const char *json, int clock, int64_t now)
{
    const char *p = strstr(json, "\"log\":[");
    long long total = 0, entries = 0;
    p = p ? p + 7 : "";
    while (*p == '[' || *p == ',') {
        if (*p == ',') p++;
        long long t, n;
        int used = 0;
        if (sscanf(p, "[%lld,%lld]%n", &t, &n, &used) != 2 || !used) break;
        p += used;
        if (entries < 20) {
            fprintf(f, "  request  at %lld us", t);
            put_when(f, clock, now, t);
            fprintf(f, ", cost %lld\n", n);
        }
        entries++;
        total += n;
    }
    if (entries > 20) fprintf(f, "  ...      %lld more\n", entries - 20);
    fprintf(f, "  logged   %lld request(s), cost %lld in all\n", entries, total);
}

int state_print(FILE *f, const char *json, size_t n, int clock, double ttl)
{
    char *s = strndup(json, n), algo[32];
    if (!s) return -1;
    int ok = sscanf(s, "{\"algorithm\":\"%31[a-z_]\"", algo) == 1;
    int64_t now = state_clock_us(clock);
    if (!ok) {
        free(s);
        return -1;
    }
    fprintf(f, "rate-limit state: %s\n", algo);
    if (strcmp(algo, "fixed_window") == 0) {
        long long start = field(s, "window_start_us", &ok), count = field(s, "count", &ok);
        fprintf(f, "  window   started at %lld us", start);
        put_when(f, clock, now, start);
        fprintf(f, "\n  count    %lld request(s) admitted in it\n", count);
    } else if (strcmp(algo, "sliding_window_counter") == 0) {
        long long w = field(s, "window", &ok), prev = field(s, "previous", &ok), cur = field(s, "current", &ok);
        fprintf(f,
                "  window   number %lld (modulo 2^24)\n  current  %lld request(s) in it\n"
                "  previous %lld request(s) in the window before\n",
                w, cur, prev);
    } else if (strcmp(algo, "token_bucket") == 0 || strcmp(algo, "leaky_bucket") == 0) {
        long long tat = field(s, "tat_us", &ok);
        fprintf(f, "  tat      %lld us", tat);
        put_when(f, clock, now, tat);
        if (clock != CLOCK_UNKNOWN)
            fprintf(f, "\n  %s\n",
                    tat <= now                          ? "idle: back to its unused state"
                    : strcmp(algo, "token_bucket") == 0 ? "the bucket is full again at the tat"
                                                        : "the queue has drained at the tat");
        else
            fprintf(f, "\n");
    } else if (strcmp(algo, "sliding_window") == 0) {
        put_log(f, s, clock, now);
    } else {
        ok = 0;
    }
    free(s);
    if (!ok) return -1;
    if (ttl < 0)
        fprintf(f, "  ttl      none\n");
    else
        fprintf(f, "  ttl      %.3f s\n", ttl);
    if (clock == CLOCK_WALL) fprintf(f, "  (times by this host's wall clock)\n");
    return 0;
}
