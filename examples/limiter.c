/*
 * limiter.c — the job traffic exists for: a preforking server whose workers share one limit.
 *
 * The master opens one memory:// table, forks WORKERS workers, and each worker serves a
 * stream of requests from CLIENTS clients, allowing a request only while the client's counter
 * for the current minute stays within LIMIT. Because the counter lives in the shared table,
 * each client gets LIMIT requests in total, not LIMIT per worker. The master checks that.
 *
 *   traffic-example [URL]      (default memory://)
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <traffic/traffic.h>

enum { WORKERS = 4, CLIENTS = 50, REQUESTS_PER_WORKER = 20000, LIMIT = 100 };

static int worker(traffic_backend *b, int id)
{
    int allowed = 0;
    for (int i = 0; i < REQUESTS_PER_WORKER; i++) {
        char key[64];
        snprintf(key, sizeof key, "rl:client-%d:minute", (i * 7 + id) % CLIENTS);
        int64_t n;
        int rc = traffic_increment(b, key, 1, 60.0, &n); /* the window ends 60 s after its first hit */
        if (rc != TRAFFIC_OK) {
            fprintf(stderr, "worker %d: %s (%s)\n", id, traffic_strerror(rc), traffic_errmsg(b));
            return 2;
        }
        allowed += n <= LIMIT;
    }
    printf("worker %d (pid %d): allowed %d of %d requests\n", id, (int)getpid(), allowed, REQUESTS_PER_WORKER);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv)
{
    const char *url = argc > 1 ? argv[1] : "memory://";
    traffic_backend *b;
    int rc = traffic_open(url, &b);
    if (rc != TRAFFIC_OK) {
        fprintf(stderr, "open %s: %s (%s)\n", url, traffic_strerror(rc), traffic_errmsg(NULL));
        return 1;
    }
    for (int w = 0; w < WORKERS; w++)
        if (fork() == 0) _exit(worker(b, w));
    int failed = 0, status;
    while (wait(&status) > 0)
        failed |= !WIFEXITED(status) || WEXITSTATUS(status) != 0;

    long total = 0, over = 0;
    for (int c = 0; c < CLIENTS; c++) {
        char key[64], val[32];
        size_t len;
        snprintf(key, sizeof key, "rl:client-%d:minute", c);
        if (traffic_get(b, key, val, sizeof val - 1, &len) != TRAFFIC_OK) return 1;
        val[len] = '\0';
        long seen = atol(val);
        total += seen;
        over += seen > LIMIT ? LIMIT : seen;
    }
    printf("%d workers, %d clients: %ld requests counted, %ld allowed = %d clients x limit %d -> %s\n", WORKERS,
           CLIENTS, total, over, CLIENTS, LIMIT,
           !failed && total == (long)WORKERS * REQUESTS_PER_WORKER && over == (long)CLIENTS * LIMIT ? "OK" : "WRONG");
    traffic_close(b);
    return failed || over != (long)CLIENTS * LIMIT;
}
