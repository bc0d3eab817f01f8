/*
 * watch.c — `traffic URL watch`: the store's stats every interval, with rates.
 *
 * Each sample is one traffic_stats call; a rate is the change of a total over the time
 * between two samples. On a terminal the screen is redrawn; otherwise one line of
 * name=value pairs per sample is printed, for logs and scripts. SIGINT ends it with status
 * 0, whatever it interrupted: an interrupted sample is not an error.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Sleeps until the monotonic instant `until`, or until SIGINT. */
static void sleep_until(double until)
{
    while (!interrupted) {
        double left = until - now_s();
        if (left <= 0) return;
        struct timespec ts = {.tv_sec = (time_t)left, .tv_nsec = (long)((left - (double)(time_t)left) * 1e9)};
        nanosleep(&ts, NULL); /* EINTR: look at the flag again */
    }
}

typedef struct sample {
    struct traffic_stats s;
    double t;
} sample;

/* The rate of a total between two samples (a total that went down, e.g. after a switch to a
 * fallback store, counts as 0). */
#define RATE(f) (cur->s.f >= prev->s.f ? (double)(cur->s.f - prev->s.f) / dt : 0.0)

static void stamp(char *buf, size_t cap)
{
    time_t t = time(NULL);
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(buf, cap, "%Y-%m-%dT%H:%M:%S", &tm);
}

static void print_line(const sample *prev, const sample *cur)
{
    double dt = cur->t - prev->t;
    char when[32];
    stamp(when, sizeof when);
    printf("time=%s backend=%s keys=%llu reads/s=%.1f hits/s=%.1f misses/s=%.1f sets/s=%.1f increments/s=%.1f "
           "deletes/s=%.1f decisions/s=%.1f denied/s=%.1f evictions/s=%.1f expirations/s=%.1f attached=%llu "
           "reaper_pid=%lld reaper_runs=%llu\n",
           when, cur->s.backend, (unsigned long long)cur->s.keys, RATE(hits) + RATE(misses), RATE(hits), RATE(misses),
           RATE(sets), RATE(increments), RATE(deletes), RATE(decisions), RATE(denied), RATE(evictions),
           RATE(expirations), (unsigned long long)cur->s.attached, (long long)cur->s.reaper_pid,
           (unsigned long long)cur->s.reaper_runs);
}

static void print_screen(const cli_ctx *c, double interval, const sample *prev, const sample *cur)
{
    double dt = cur->t - prev->t;
    const struct traffic_stats *s = &cur->s;
    char when[32];
    stamp(when, sizeof when);
    printf("\033[H\033[2J");
    printf("traffic watch  %s  every %g s  %s  (Ctrl-C ends)\n\n", c->shown, interval, when);
    printf("backend      %-14s keys      %llu", s->backend, (unsigned long long)s->keys);
    if (s->max_size) printf(" / %llu max", (unsigned long long)s->max_size);
    if (s->capacity) printf(" (capacity %llu)", (unsigned long long)s->capacity);
    printf("\nattached     %-14llu reaper    ", (unsigned long long)s->attached);
    if (s->reaper_pid)
        printf("pid %lld, %llu passes\n", (long long)s->reaper_pid, (unsigned long long)s->reaper_runs);
    else
        printf("none (%llu passes)\n", (unsigned long long)s->reaper_runs);
    if (s->serving)
        printf("serving      %s (%llu switches)\n", s->serving == TRAFFIC_SERVING_PRIMARY ? "primary" : "fallback",
               (unsigned long long)s->switches);
    printf("\n%-14s %14s %16s\n", "", "per second", "total");
#define ROW(label, f) printf("%-14s %14.1f %16llu\n", label, RATE(f), (unsigned long long)s->f)
    printf("%-14s %14.1f %16llu\n", "reads", RATE(hits) + RATE(misses), (unsigned long long)(s->hits + s->misses));
    ROW("  hits", hits);
    ROW("  misses", misses);
    ROW("sets", sets);
    ROW("increments", increments);
    ROW("deletes", deletes);
    ROW("decisions", decisions);
    ROW("  denied", denied);
    ROW("evictions", evictions);
    ROW("expirations", expirations);
#undef ROW
}

static int take(cli_ctx *c, sample *out)
{
    int rc = traffic_stats(c->b, &out->s);
    out->t = now_s();
    if (rc && !interrupted) return cli_failed(c, rc, "");
    return rc ? -1 : 0;
}

int cmd_watch(cli_ctx *c)
{
    double interval = c->a.interval_s;
    int64_t count = c->a.count_n;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint; /* no SA_RESTART: a sleep or a read ends at once */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    int tty = isatty(STDOUT_FILENO);
    sample prev, cur;
    int rc = take(c, &prev);
    if (rc) return interrupted ? EXIT_OK : rc;
    for (int64_t n = 0; !interrupted && (!count || n < count); n++) {
        sleep_until(prev.t + interval);
        if (interrupted) break;
        if ((rc = take(c, &cur))) return interrupted ? EXIT_OK : rc;
        if (tty)
            print_screen(c, interval, &prev, &cur);
        else
            print_line(&prev, &cur);
        fflush(stdout);
        prev = cur;
    }
    return EXIT_OK;
}
