/*
 * limiter.c — the job traffic exists for: a preforking server whose workers share one limit.
 *
 * The master opens one memory:// table before fork() and forks WORKERS workers. Each serves
 * ROUNDS rounds in which each of CLIENTS clients sends one request, and asks traffic_limit
 * whether it may pass; every 5th round the request is a login. Two rules, each per client:
 *   GET /search   fixed_window:100/1m           100 a minute
 *   POST /login   token_bucket:10/1h,burst=5    5 at once, then one every 6 minutes
 * The decisions are made inside the shared table, one atomic step each, so each client gets
 * its quota across all workers together, not per worker. The run lasts well under a minute
 * (no window ends, no token comes back), so each client must get exactly 100 searches and 5
 * logins: the master checks that and exits 1 otherwise.
 *
 *   traffic-example [URL]      (default memory://)
 */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <traffic/traffic.h>

enum { WORKERS = 4, CLIENTS = 10, ROUNDS = 50 };

static const struct endpoint {
    const char *name, *rule;
    int quota; /* what each client may get during the run */
} ENDPOINTS[2] = {{"GET /search", "fixed_window:100/1m", 100}, {"POST /login", "token_bucket:10/1h,burst=5", 5}};

/* What the workers did, counted in shared memory; the master reads it after wait(), which
 * orders the workers' relaxed adds before its reads. */
struct tally {
    atomic_long allowed[CLIENTS][2], denied[CLIENTS][2];
    atomic_int taken[2][2]; /* client-0's first answer and first 429 per endpoint, kept to show */
    int by[2][2];
    traffic_decision shown[2][2];
};

/* The response's rate-limit headers (seconds rounded up, so that a client that waits as long
 * as it is told is not turned away). */
static void print_headers(int worker, const struct endpoint *e, const traffic_decision *d)
{
    printf("  worker %d: %-11s -> %d  X-RateLimit-Limit: %lld  X-RateLimit-Remaining: %lld  X-RateLimit-Reset: %.0f",
           worker, e->name, d->allowed ? 200 : 429, (long long)d->limit, (long long)d->remaining, ceil(d->reset_after));
    if (!d->allowed) printf("  Retry-After: %.0f", ceil(d->retry_after));
    printf("\n");
}

static int worker(traffic_backend *b, int id, const traffic_rule *rules, struct tally *t)
{
    for (int round = 0; round < ROUNDS; round++) {
        for (int i = 0; i < CLIENTS; i++) {
            int client = (i * 3 + id) % CLIENTS, ep = round % 5 == 4; /* each worker in its own order */
            char key[64];
            snprintf(key, sizeof key, "rl:client-%d:%s", client, ep ? "login" : "search");
            traffic_decision d;
            int rc = traffic_limit(b, key, &rules[ep], 1, &d);
            if (rc != TRAFFIC_OK) {
                fprintf(stderr, "worker %d: %s (%s)\n", id, traffic_strerror(rc), traffic_errmsg(b));
                return 2;
            }
            atomic_fetch_add_explicit(d.allowed ? &t->allowed[client][ep] : &t->denied[client][ep], 1,
                                      memory_order_relaxed);
            for (int k = 0; k < 2 && client == 0; k++)
                if ((k == 0 || !d.allowed) && !atomic_exchange(&t->taken[ep][k], 1)) {
                    t->shown[ep][k] = d;
                    t->by[ep][k] = id;
                }
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *url = argc > 1 ? argv[1] : "memory://";
    traffic_rule rules[2];
    char msg[256];
    for (int e = 0; e < 2; e++)
        if (traffic_rule_parse(ENDPOINTS[e].rule, &rules[e], msg, sizeof msg) != TRAFFIC_OK) {
            fprintf(stderr, "%s\n", msg);
            return 1;
        }
    struct tally *t = mmap(NULL, sizeof *t, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    traffic_backend *b;
    int rc = traffic_open(url, &b); /* before fork(): the workers inherit the table */
    if (t == MAP_FAILED || rc != TRAFFIC_OK) {
        fprintf(stderr, "open %s: %s (%s)\n", url, traffic_strerror(rc), traffic_errmsg(NULL));
        return 1;
    }
    printf("%d workers x %d rounds x %d clients; per client %s %s, %s %s\n", WORKERS, ROUNDS, CLIENTS,
           ENDPOINTS[0].name, ENDPOINTS[0].rule, ENDPOINTS[1].name, ENDPOINTS[1].rule);
    fflush(stdout);
    int start[2];
    if (pipe(start) < 0) return 1;
    for (int w = 0; w < WORKERS; w++)
        if (fork() == 0) { /* wait for the others: all workers serve at once */
            char c;
            close(start[1]);
            _exit(read(start[0], &c, 1) == 0 ? worker(b, w, rules, t) : 2);
        }
    close(start[1]); /* go */
    int failed = 0, status;
    while (wait(&status) > 0)
        failed |= !WIFEXITED(status) || WEXITSTATUS(status) != 0;

    printf("client-0's first answer and first 429 on each endpoint:\n");
    for (int e = 0; e < 2; e++)
        for (int k = 0; k < 2; k++)
            if (t->taken[e][k]) print_headers(t->by[e][k], &ENDPOINTS[e], &t->shown[e][k]);
    /* Each client sent WORKERS x ROUNDS requests, a fifth of them logins. */
    const long sent[2] = {WORKERS * ROUNDS * 4 / 5, WORKERS * ROUNDS / 5};
    printf("\n%-9s %10s %5s %10s %5s\n", "", "search ok", "429", "login ok", "429");
    for (int c = 0; c < CLIENTS; c++) {
        printf("client-%-2d", c);
        for (int e = 0; e < 2; e++) {
            long ok = t->allowed[c][e], no = t->denied[c][e];
            printf(" %10ld %5ld", ok, no);
            failed |= ok != ENDPOINTS[e].quota || ok + no != sent[e];
        }
        printf("\n");
    }
    printf("each client got exactly %d searches and %d logins across %d workers -> %s\n", ENDPOINTS[0].quota,
           ENDPOINTS[1].quota, WORKERS, failed ? "WRONG" : "OK");
    traffic_close(b);
    return failed;
}
