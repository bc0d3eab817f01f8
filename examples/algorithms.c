/*
 * algorithms.c — the five algorithms side by side on the same bursty traffic, drawn as SVG.
 *
 * One fixed schedule of arrivals (bursts and quiet gaps over 60 s, jittered by a seeded
 * generator, so every run draws the same picture) goes through each algorithm under the same
 * rule: 10 requests per 10 s, the buckets with their default burst (10). The decisions are the
 * library's own, not a model of it: one memory:// table, one key per algorithm, and
 * traffic_limit_at at the schedule's simulated instants. Each row of the picture shows the
 * arrivals on the time axis, admitted above the line and denied below it (the leaky bucket's
 * admitted requests also where their delay releases them), and under it how many requests
 * went through in the trailing 10 s, against the limit.
 *
 * The program checks what it drew against the bound each algorithm promises (traffic.h,
 * "Rate limits") and exits 1 if one fails. In any 10 s:
 *   fixed window   at most 2 L (L per window, and 10 s can hold the end of one and the start
 *                  of the next)
 *   sliding window at most L (the exact log)
 *   token bucket   at most B + 10 s / I = 2 L (a full bucket, then its refills)
 *   leaky bucket   at most L released (one every I)
 * The sliding window counter promises only that its estimate stays within L; the picture shows
 * how far the true count strays from it.
 *
 *   traffic-algorithms [OUT.svg [URL]]   (default algorithms.svg on memory://; the README's
 *                                          picture is docs/algorithms.svg)
 * Another store's URL draws the same picture: every backend decides with the same arithmetic.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <traffic/traffic.h>

#define LIMIT     10
#define WINDOW_US 10000000LL /* the rule's 10 s */
#define SPAN_US   60000000LL /* the time axis */
/* The store's clock at the axis's 0 s: a multiple of the window, so that the sliding window
 * counter's windows fall on 0, 10, 20 s ... */
#define BASE_US      1000000000LL
#define MAX_ARRIVALS 256
#define NALGOS       5

/* ---- the traffic ---------------------------------------------------------------------------
 * Bursts (start s, length s, requests) over a light background, their instants drawn by a
 * seeded generator. Chosen so that each algorithm's character shows: a first request at 0.5 s
 * that opens the fixed window [0.5 s, 10.5 s), a burst across that window's end, a long burst
 * after a quiet gap, a stretch steadily above the rate, and a short burst at the end. */
static const struct burst {
    double at, len;
    int n;
} BURSTS[] = {{0.5, 0, 1}, {3, 1, 3}, {9, 3, 20}, {22, 2, 24}, {30, 10, 16}, {44, 1, 12}};
#define BACKGROUND_PER_S 0.1 /* the background, over 0 .. 50 s */

static int64_t arrival[MAX_ARRIVALS]; /* µs from the axis's 0, sorted */
static int narrivals;

static uint64_t rng_state = 0x7261746531303130ull;
static double uniform01(void) /* splitmix64, in [0, 1) */
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (double)((z ^ (z >> 31)) >> 11) * 0x1p-53;
}

static void add_arrival(double s)
{
    if (narrivals < MAX_ARRIVALS) arrival[narrivals++] = llround(s * 1e6);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static void make_schedule(void)
{
    for (size_t k = 0; k < sizeof BURSTS / sizeof BURSTS[0]; k++)
        for (int i = 0; i < BURSTS[k].n; i++)
            add_arrival(BURSTS[k].at + BURSTS[k].len * uniform01());
    for (double t = -log(1 - uniform01()) / BACKGROUND_PER_S; t < 50; t += -log(1 - uniform01()) / BACKGROUND_PER_S)
        add_arrival(t);
    qsort(arrival, (size_t)narrivals, sizeof arrival[0], cmp_i64);
}

/* ---- the decisions ------------------------------------------------------------------------- */

struct row {
    traffic_algorithm algo;
    char rule[64];
    int64_t through[MAX_ARRIVALS]; /* when request i goes through (arrival + delay), -1: denied */
    int64_t opened[MAX_ARRIVALS];  /* fixed window: the windows' starts, as its decisions tell them */
    int nopened;
    int admitted, most; /* most: the largest count in any trailing 10 s */
    int bound;          /* the promised bound on `most`, 0: none */
};

/* The most an algorithm may let through in any 10 s (the file's opening comment), 0: no bound. */
static int bound_of(traffic_algorithm a)
{
    switch (a) {
    case TRAFFIC_SLIDING_WINDOW:
    case TRAFFIC_LEAKY_BUCKET: return LIMIT;
    case TRAFFIC_FIXED_WINDOW:
    case TRAFFIC_TOKEN_BUCKET: return 2 * LIMIT;
    default: return 0;
    }
}

static int decide(traffic_backend *b, struct row *r)
{
    char msg[256];
    traffic_rule rule;
    snprintf(r->rule, sizeof r->rule, "%s:%d/10s", traffic_algorithm_name(r->algo), LIMIT);
    if (traffic_rule_parse(r->rule, &rule, msg, sizeof msg) != TRAFFIC_OK) {
        fprintf(stderr, "traffic-algorithms: %s\n", msg);
        return -1;
    }
    if (traffic_delete(b, r->rule) != TRAFFIC_OK) { /* a store may keep an earlier run's state */
        fprintf(stderr, "traffic-algorithms: delete %s: %s\n", r->rule, traffic_errmsg(b));
        return -1;
    }
    for (int i = 0; i < narrivals; i++) {
        traffic_decision d;
        int rc = traffic_limit_at(b, r->rule, &rule, 1, BASE_US + arrival[i], &d);
        if (rc != TRAFFIC_OK) {
            fprintf(stderr, "traffic-algorithms: %s: %s (%s)\n", r->rule, traffic_strerror(rc), traffic_errmsg(b));
            return -1;
        }
        r->through[i] = d.allowed ? arrival[i] + llround(d.delay * 1e6) : -1;
        r->admitted += d.allowed;
        /* An admitted request's reset_after is S + W - now: S, its window's start. */
        int64_t start = arrival[i] + llround(d.reset_after * 1e6) - WINDOW_US;
        if (r->algo == TRAFFIC_FIXED_WINDOW && d.allowed && (!r->nopened || r->opened[r->nopened - 1] != start))
            r->opened[r->nopened++] = start;
    }
    return 0;
}

/* ---- "gone through in the trailing 10 s" ---------------------------------------------------
 * A step function of t: the requests whose time s has t - W < s <= t. It changes only at each
 * s (+1) and at each s + W (-1, before a +1 at the same instant: the interval is half-open). */
struct step {
    int64_t t;
    int delta;
};

static int cmp_step(const void *a, const void *b)
{
    const struct step *x = a, *y = b;
    return x->t != y->t ? (x->t < y->t ? -1 : 1) : x->delta - y->delta;
}

/* Sorts the steps of times t[0..n) (-1 entries skipped) into s; returns how many. */
static int steps_of(const int64_t *t, int n, struct step *s)
{
    int k = 0;
    for (int i = 0; i < n; i++)
        if (t[i] >= 0) {
            s[k++] = (struct step){t[i], +1};
            s[k++] = (struct step){t[i] + WINDOW_US, -1};
        }
    qsort(s, (size_t)k, sizeof *s, cmp_step);
    return k;
}

static int most_in_window(const int64_t *t, int n)
{
    struct step s[2 * MAX_ARRIVALS];
    int k = steps_of(t, n, s), cur = 0, most = 0;
    for (int i = 0; i < k; i++)
        if ((cur += s[i].delta) > most) most = cur;
    return most;
}

/* ---- the picture ----------------------------------------------------------------------------
 * Hand-written SVG. Geometry in px; x is time. */
#define SVG_W     1220
#define PLOT_X    240 /* where 0 s is */
#define PX_PER_S  16.0
#define TOP       96 /* the arrivals row's baseline */
#define ROW_H     128
#define TICK      20 /* a request's tick */
#define BAND_TOP  30 /* the trailing-count band, below the baseline */
#define BAND_H    36
#define BAND_MAX  20 /* the band's scale: 2 L */
#define C_ADMIT   "#2ca02c"
#define C_DENY    "#d62728"
#define C_RELEASE "#1f77b4"
#define C_SHADE   "#f0f0f0"

static double X(int64_t us)
{
    return PLOT_X + (double)us / 1e6 * PX_PER_S;
}

static void ticks(FILE *f, const int64_t *t, int n, double y0, double dy, const char *color)
{
    fprintf(f, "<path stroke=\"%s\" stroke-width=\"1.3\" d=\"", color);
    for (int i = 0; i < n; i++)
        fprintf(f, "M%.1f %.1fv%.1f", X(t[i]), y0, dy);
    fprintf(f, "\"/>\n");
}

/* The trailing count as a polyline in a band whose bottom is y0, with the limit dashed. */
static void band(FILE *f, const int64_t *t, int n, double y0)
{
    double k = (double)BAND_H / BAND_MAX;
    fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#999\"/>\n", PLOT_X, y0, X(SPAN_US), y0);
    fprintf(f,
            "<line x1=\"%d\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#999\" stroke-dasharray=\"4 3\"/>\n"
            "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\" font-size=\"10\" fill=\"#666\">%d</text>\n",
            PLOT_X, y0 - LIMIT * k, X(SPAN_US), y0 - LIMIT * k, PLOT_X - 4, y0 - LIMIT * k + 3, LIMIT);
    struct step s[2 * MAX_ARRIVALS];
    int m = steps_of(t, n, s), cur = 0;
    fprintf(f, "<polyline fill=\"none\" stroke=\"#333\" stroke-width=\"1.2\" points=\"%.1f,%.1f", X(0), y0);
    for (int i = 0; i < m && s[i].t <= SPAN_US; i++) {
        fprintf(f, " %.1f,%.1f", X(s[i].t), y0 - cur * k);
        cur += s[i].delta;
        fprintf(f, " %.1f,%.1f", X(s[i].t), y0 - cur * k);
    }
    fprintf(f, " %.1f,%.1f\"/>\n", X(SPAN_US), y0 - cur * k);
}

/* Light bands behind a row: the fixed window's windows (each opened by the first request after
 * the previous one ended) or the counter's aligned ones. */
static void windows(FILE *f, const struct row *r, double y0)
{
    int64_t start[MAX_ARRIVALS];
    int n = 0;
    if (r->algo == TRAFFIC_FIXED_WINDOW) {
        for (n = 0; n < r->nopened; n++)
            start[n] = r->opened[n];
    } else if (r->algo == TRAFFIC_SLIDING_WINDOW_COUNTER) {
        for (int64_t t = 0; t < SPAN_US; t += WINDOW_US)
            start[n++] = t;
    }
    for (int i = 0; i < n; i += 2) {
        int64_t end = start[i] + WINDOW_US < SPAN_US ? start[i] + WINDOW_US : SPAN_US;
        fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%d\" fill=\"%s\"/>\n", X(start[i]),
                y0 - TICK - 4, X(end) - X(start[i]), 2 * TICK + 8, C_SHADE);
    }
    for (int i = 0; i < n; i++)
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#bbb\"/>\n", X(start[i]),
                y0 - TICK - 4, X(start[i]), y0 + TICK + 4);
}

static void label(FILE *f, double y, const char *weight, int size, const char *text)
{
    fprintf(f, "<text x=\"12\" y=\"%.1f\" font-weight=\"%s\" font-size=\"%d\">%s</text>\n", y, weight, size, text);
}

static void draw_row(FILE *f, const struct row *r, double y0)
{
    int64_t in[MAX_ARRIVALS], out[MAX_ARRIVALS];
    int nin = 0, nout = 0;
    for (int i = 0; i < narrivals; i++) {
        if (r->through[i] >= 0)
            in[nin++] = arrival[i];
        else
            out[nout++] = arrival[i];
    }
    windows(f, r, y0);
    fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#666\"/>\n", PLOT_X, y0, X(SPAN_US), y0);
    ticks(f, in, nin, y0 - 1, -TICK, C_ADMIT);
    ticks(f, out, nout, y0 + 1, TICK, C_DENY);
    if (r->algo == TRAFFIC_LEAKY_BUCKET) { /* from arrival to release, then the release */
        fprintf(f, "<path stroke=\"%s\" stroke-width=\"0.8\" stroke-opacity=\"0.4\" fill=\"none\" d=\"", C_RELEASE);
        for (int i = 0; i < narrivals; i++)
            if (r->through[i] >= 0)
                fprintf(f, "M%.1f %.1fL%.1f %.1f", X(arrival[i]), y0 - TICK - 1, X(r->through[i]), y0 - TICK - 10);
        fprintf(f, "\"/>\n");
        for (int i = 0; i < narrivals; i++)
            if (r->through[i] >= 0)
                fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2\" fill=\"%s\"/>\n", X(r->through[i]), y0 - TICK - 10,
                        C_RELEASE);
    }
    band(f, r->through, narrivals, y0 + BAND_TOP + BAND_H);

    char text[160];
    const char *name = traffic_algorithm_name(r->algo);
    label(f, y0 - 22, "bold", 14, name);
    label(f, y0 - 6, "normal", 11, r->rule);
    snprintf(text, sizeof text, "%d admitted, %d denied", r->admitted, narrivals - r->admitted);
    label(f, y0 + 12, "normal", 11, text);
    if (r->bound)
        snprintf(text, sizeof text, "most in 10 s: %d (promised: %d)", r->most, r->bound);
    else
        snprintf(text, sizeof text, "most in 10 s: %d (its estimate: %d)", r->most, LIMIT);
    label(f, y0 + 28, "normal", 11, text);
    label(f, y0 + BAND_TOP + BAND_H - 4, "normal", 10,
          r->algo == TRAFFIC_LEAKY_BUCKET ? "released in the trailing 10 s" : "admitted in the trailing 10 s");
}

static void draw(FILE *f, const struct row *rows)
{
    int h = TOP + 60 + NALGOS * ROW_H;
    fprintf(f,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
            "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
            SVG_W, h, SVG_W, h);
    fprintf(f,
            "<text x=\"12\" y=\"24\" font-size=\"16\" font-weight=\"bold\">The same %d requests through each "
            "algorithm, %d per 10 s (buckets: burst %d)</text>\n",
            narrivals, LIMIT, LIMIT);
    /* the legend */
    fprintf(f,
            "<g font-size=\"11\"><path stroke=\"%s\" stroke-width=\"2\" d=\"M12 44v-10\"/>"
            "<text x=\"18\" y=\"44\">admitted</text>"
            "<path stroke=\"%s\" stroke-width=\"2\" d=\"M90 34v10\"/><text x=\"96\" y=\"44\">denied</text>"
            "<circle cx=\"160\" cy=\"40\" r=\"2.5\" fill=\"%s\"/>"
            "<text x=\"166\" y=\"44\">leaky bucket: released after its delay</text>"
            "<rect x=\"425\" y=\"34\" width=\"16\" height=\"10\" fill=\"%s\" stroke=\"#bbb\"/>"
            "<text x=\"445\" y=\"44\">windows: fixed (opened by a request), counter (aligned)</text>"
            "<path stroke=\"#999\" stroke-dasharray=\"4 3\" d=\"M810 40h20\"/>"
            "<text x=\"834\" y=\"44\">the limit: %d</text></g>\n",
            C_ADMIT, C_DENY, C_RELEASE, C_SHADE, LIMIT);
    /* the time axis: a grid line every 10 s through every row */
    for (int s = 0; s <= SPAN_US / 1000000; s += 5) {
        double x = X((int64_t)s * 1000000);
        if (s % 10 == 0)
            fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#e4e4e4\"/>\n", x, TOP - 30, x,
                    h - 36);
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\" fill=\"#666\">%d s</text>\n", x, h - 20, s);
    }
    /* the arrivals, then one row per algorithm */
    fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#666\"/>\n", PLOT_X, TOP, X(SPAN_US), TOP);
    ticks(f, arrival, narrivals, TOP - 1, -TICK, "#555");
    label(f, TOP - 6, "bold", 14, "arrivals");
    char text[64];
    snprintf(text, sizeof text, "%d requests in 60 s", narrivals);
    label(f, TOP + 10, "normal", 11, text);
    for (int a = 0; a < NALGOS; a++)
        draw_row(f, &rows[a], TOP + 60 + a * ROW_H);
    fprintf(f, "</svg>\n");
}

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "algorithms.svg", *url = argc > 2 ? argv[2] : "memory://";
    static const traffic_algorithm order[NALGOS] = {TRAFFIC_FIXED_WINDOW, TRAFFIC_SLIDING_WINDOW_COUNTER,
                                                    TRAFFIC_SLIDING_WINDOW, TRAFFIC_TOKEN_BUCKET, TRAFFIC_LEAKY_BUCKET};
    static struct row rows[NALGOS];
    make_schedule();
    traffic_backend *b;
    int rc = traffic_open(url, &b);
    if (rc != TRAFFIC_OK) {
        fprintf(stderr, "traffic-algorithms: %s: %s (%s)\n", url, traffic_strerror(rc), traffic_errmsg(NULL));
        return 1;
    }
    int failed = 0;
    printf("%d arrivals in 60 s, rule %d per 10 s\n%-24s %9s %7s %13s  %s\n", narrivals, LIMIT, "algorithm", "admitted",
           "denied", "most in 10 s", "promised");
    for (int a = 0; a < NALGOS; a++) {
        struct row *r = &rows[a];
        r->algo = order[a];
        if (decide(b, r) < 0) return 1;
        r->most = most_in_window(r->through, narrivals);
        r->bound = bound_of(r->algo);
        int ok = !r->bound || r->most <= r->bound;
        failed |= !ok;
        printf("%-24s %9d %7d %13d  %s%d%s\n", traffic_algorithm_name(r->algo), r->admitted, narrivals - r->admitted,
               r->most, r->bound ? "<= " : "", r->bound ? r->bound : LIMIT,
               r->bound ? (ok ? "  ok" : "  WRONG") : " (an estimate)");
    }
    int64_t longest = 0;
    for (int i = 0; i < narrivals; i++)
        if (rows[NALGOS - 1].through[i] - arrival[i] > longest) longest = rows[NALGOS - 1].through[i] - arrival[i];
    printf("leaky_bucket: the longest delay %.1f s\n", (double)longest / 1e6);
    traffic_close(b);

    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        return 1;
    }
    draw(f, rows);
    if (fclose(f) != 0) {
        perror(path);
        return 1;
    }
    printf("wrote %s\n", path);
    return failed;
}
