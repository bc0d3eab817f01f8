/*
 * report.c — the three outputs: a table for people, JSON for machines, and an SVG chart of
 * ops/s and p99 against the process count (written by hand: no plotting tool needed).
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "bench.h"

static const char *op_name(enum bench_op op)
{
    static const char *const n[] = {"incr", "get", "set", "mixed", "limit"};
    return n[op];
}

static const char *dist_name(const struct bench_cfg *c)
{
    return c->dist == DIST_ZIPF ? "zipf" : "uniform";
}

static char *fmt_rate(char *b, size_t n, double v)
{
    if (v >= 1e9)
        snprintf(b, n, "%.2f G", v / 1e9);
    else if (v >= 1e6)
        snprintf(b, n, "%.2f M", v / 1e6);
    else if (v >= 1e3)
        snprintf(b, n, "%.1f k", v / 1e3);
    else
        snprintf(b, n, "%.0f", v);
    return b;
}

static char *fmt_ns(char *b, size_t n, double v)
{
    if (v <= 0)
        snprintf(b, n, "-");
    else if (v >= 1e9)
        snprintf(b, n, "%.2f s", v / 1e9);
    else if (v >= 1e6)
        snprintf(b, n, "%.2f ms", v / 1e6);
    else if (v >= 1e4)
        snprintf(b, n, "%.1f us", v / 1e3);
    else if (v >= 100)
        snprintf(b, n, "%.0f ns", v);
    else
        snprintf(b, n, "%.1f ns", v);
    return b;
}

/* ---- table ------------------------------------------------------------------------------------ */

void report_table(const struct bench_cfg *cfg, const struct result *r, int n, const struct machine *m)
{
    char a[32], b[32], c[32], d[32], e[32];
    printf("traffic-bench: op %s, %u keys %s%s%s, ttl %g s, %g s per URL and process count in %d rounds "
           "(medians), warm-up %g s per round\n",
           op_name(cfg->op), cfg->keys, dist_name(cfg), cfg->dist == DIST_ZIPF ? " s=" : "",
           cfg->dist == DIST_ZIPF ? (snprintf(a, sizeof a, "%g", cfg->zipf_s), a) : "", cfg->ttl, cfg->seconds,
           cfg->rounds, cfg->warmup);
    if (cfg->op == OP_LIMIT) printf("rule: %s (traffic_limit, cost 1, on every key)\n", cfg->rule_text);
    printf("machine: %s, %d cpus, %s, load %.2f at start\n", m->cpu, m->ncpu, m->kernel, m->load1);
    if (m->tsc_ghz > 0)
        printf("timer: rdtsc at %.3f GHz", m->tsc_ghz);
    else
        printf("timer: %s", m->timer);
    if (cfg->sample == 1)
        printf(", every operation timed (one read each)");
    else if (cfg->sample == 0)
        printf(", no operation timed (latency columns empty)");
    else
        printf(", one operation in %d timed (a read on each side)", cfg->sample);
    printf("\nharness: the loop alone (bench:null, same timing) measures %.1f ns/op; included in every figure, "
           "subtracted from none\n",
           m->empty_op_ns);
    int w = 24;
    for (int i = 0; i < n; i++)
        if ((int)strlen(r[i].url) > w) w = (int)strlen(r[i].url);
    if (w > 60) w = 60;
    printf("\n%5s  %-*s %10s %9s %9s %9s %9s %9s %9s  %-5s %8s\n", "procs", w, "url", "ops/s", "ns/op", "p50", "p99",
           "p99.9", "max", "RSS MB", "check", "vs first");
    for (int i = 0; i < n; i++) {
        if (r[i].skipped) {
            printf("%5d  %-*.*s %s: %s\n", r[i].procs, w, w, r[i].url, r[i].skipped == 1 ? "skipped" : "FAILED",
                   r[i].reason);
            continue;
        }
        /* A store far slower than the first reads better as 1/N (a memory table against Redis:
         * "1/2331x") than as 0.000x. */
        char ratio[24];
        if (r[i].ratio > 0 && r[i].ratio < 0.01)
            snprintf(ratio, sizeof ratio, "1/%.0fx", 1.0 / r[i].ratio);
        else
            snprintf(ratio, sizeof ratio, "%.3fx", r[i].ratio);
        printf("%5d  %-*.*s %10s %9.1f %9s %9s %9s %9s %9.1f  %-5s %8s\n", r[i].procs, w, w, r[i].url,
               fmt_rate(a, sizeof a, r[i].ops_per_sec), r[i].ns_per_op, fmt_ns(b, sizeof b, r[i].p50),
               fmt_ns(c, sizeof c, r[i].p99), fmt_ns(d, sizeof d, r[i].p999), fmt_ns(e, sizeof e, r[i].max_ns),
               (double)r[i].rss_kb / 1024.0, r[i].check ? "ok" : "FAIL", ratio);
    }
    printf("\nsetup (parent, before the runs):\n");
    for (int i = 0; i < n && r[i].procs == r[0].procs; i++)
        if (!r[i].skipped)
            printf("  %-*.*s opened in %.1f ms, %u keys prefilled in %.1f ms\n", w, w, r[i].url, r[i].open_ms,
                   cfg->keys, r[i].prefill_ms);
    if (cfg->op == OP_LIMIT) printf("\ndecisions allowed (denials write nothing: a different path):\n");
    for (int i = 0; i < n && cfg->op == OP_LIMIT; i++)
        if (!r[i].skipped && r[i].ops)
            printf("  %-*.*s %d procs: %.1f %% of %llu measured\n", w, w, r[i].url, r[i].procs,
                   100.0 * (double)r[i].allowed / (double)r[i].ops, (unsigned long long)r[i].ops);
    for (int i = 0; i < n; i++)
        if (!r[i].skipped && !r[i].check)
            printf("check FAILED: %s at %d procs: %s\n", r[i].url, r[i].procs, r[i].check_msg);
    fflush(stdout);
}

/* ---- JSON --------------------------------------------------------------------------------------- */

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

/* Non-positive figures (latencies when nothing was timed) are null. */
static void json_num(FILE *f, double v)
{
    if (isfinite(v) && v > 0)
        fprintf(f, "%.6g", v);
    else
        fputs("null", f);
}

int report_json(const char *path, const struct bench_cfg *cfg, const struct result *r, int n, const struct machine *m)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        return -1;
    }
    fprintf(f, "{\n  \"machine\": {\"cpu\": ");
    json_str(f, m->cpu);
    fprintf(f, ", \"ncpu\": %d, \"kernel\": ", m->ncpu);
    json_str(f, m->kernel);
    fprintf(f, ", \"load1_at_start\": %.2f, \"timer\": ", m->load1);
    json_str(f, m->timer);
    fprintf(f, ", \"tsc_ghz\": ");
    json_num(f, m->tsc_ghz);
    fprintf(f, ", \"harness_ns_per_op\": ");
    json_num(f, m->empty_op_ns);
    fprintf(f,
            "},\n  \"config\": {\"op\": \"%s\", \"keys\": %u, \"dist\": \"%s\", \"zipf_s\": %g, \"ttl\": %g, "
            "\"seconds\": %g, \"rounds\": %d, \"warmup\": %g, \"sample\": %d, \"disjoint\": %s",
            op_name(cfg->op), cfg->keys, dist_name(cfg), cfg->zipf_s, cfg->ttl, cfg->seconds, cfg->rounds, cfg->warmup,
            cfg->sample, cfg->disjoint ? "true" : "false");
    if (cfg->op == OP_LIMIT) {
        fprintf(f, ", \"rule\": ");
        json_str(f, cfg->rule_text);
    }
    fprintf(f, "},\n");
    fprintf(f, "  \"results\": [\n");
    for (int i = 0; i < n; i++) {
        fprintf(f, "    {\"url\": ");
        json_str(f, r[i].url);
        fprintf(f, ", \"procs\": %d, ", r[i].procs);
        if (r[i].skipped) {
            fprintf(f, "\"%s\": ", r[i].skipped == 1 ? "skipped" : "failed");
            json_str(f, r[i].reason);
            fprintf(f,
                    ", \"ops_per_sec\": null, \"ns_per_op\": null, \"p50_ns\": null, \"p99_ns\": null, "
                    "\"p999_ns\": null, \"max_ns\": null, \"rss_kb\": null, \"check\": %s, \"ratio\": null}",
                    r[i].skipped == 1 ? "null" : "false");
        } else {
            fprintf(f, "\"ops_per_sec\": ");
            json_num(f, r[i].ops_per_sec);
            fprintf(f, ", \"ns_per_op\": ");
            json_num(f, r[i].ns_per_op);
            fprintf(f, ", \"p50_ns\": ");
            json_num(f, r[i].p50);
            fprintf(f, ", \"p99_ns\": ");
            json_num(f, r[i].p99);
            fprintf(f, ", \"p999_ns\": ");
            json_num(f, r[i].p999);
            fprintf(f, ", \"max_ns\": ");
            json_num(f, r[i].max_ns);
            fprintf(f, ", \"open_ms\": %.3f, \"prefill_ms\": %.3f", r[i].open_ms, r[i].prefill_ms);
            fprintf(f, ", \"rss_kb\": %llu, \"ops\": %llu, \"errors\": %llu, \"check\": %s",
                    (unsigned long long)r[i].rss_kb, (unsigned long long)r[i].ops, (unsigned long long)r[i].errors,
                    r[i].check ? "true" : "false");
            if (cfg->op == OP_LIMIT) fprintf(f, ", \"allowed\": %llu", (unsigned long long)r[i].allowed);
            if (!r[i].check) {
                fprintf(f, ", \"check_detail\": ");
                json_str(f, r[i].check_msg);
            }
            fprintf(f, ", \"ratio\": ");
            json_num(f, r[i].ratio);
            fputc('}', f);
        }
        fprintf(f, "%s\n", i + 1 < n ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    if (fclose(f) != 0) {
        perror(path);
        return -1;
    }
    return 0;
}

/* ---- SVG -------------------------------------------------------------------------------------
 * Two panels side by side, ops/s and p99 against the process count, one line per URL. A
 * panel's y axis is logarithmic when its values span more than 20x (memory next to Redis),
 * linear from 0 otherwise. */

#define SVG_W       960
#define SVG_H       460
#define PANEL_W     420
#define PANEL_H     280
#define PANEL_TOP   60
#define PANEL_LEFT0 80
#define PANEL_GAP   480

static const char *const palette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                                      "#9467bd", "#8c564b", "#e377c2", "#17becf"};

struct axis {
    double lo, hi;
    int log;
};

static double axis_pos(const struct axis *a, double v)
{
    if (a->log) return (log10(v) - log10(a->lo)) / (log10(a->hi) - log10(a->lo));
    return (v - a->lo) / (a->hi - a->lo);
}

static void svg_text(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '<')
            fputs("&lt;", f);
        else if (*s == '>')
            fputs("&gt;", f);
        else if (*s == '&')
            fputs("&amp;", f);
        else
            fputc(*s, f);
    }
}

static void panel(FILE *f, const struct bench_cfg *cfg, const struct result *r, int n, int which, int x0)
{
    const char *title = which == 0 ? "throughput (ops/s, all processes)" : "p99 latency (ns)";
    double vmin = INFINITY, vmax = 0;
    for (int i = 0; i < n; i++) {
        if (r[i].skipped) continue;
        double v = which == 0 ? r[i].ops_per_sec : r[i].p99;
        if (v <= 0) continue;
        if (v < vmin) vmin = v;
        if (v > vmax) vmax = v;
    }
    if (vmax <= 0) vmin = 1, vmax = 10;
    struct axis y = {0, vmax * 1.1, 0};
    if (vmax / vmin > 20) y = (struct axis){pow(10, floor(log10(vmin))), pow(10, ceil(log10(vmax))), 1};
    int pmin = cfg->procs[0], pmax = cfg->procs[0];
    for (int i = 0; i < cfg->nprocs; i++) {
        if (cfg->procs[i] < pmin) pmin = cfg->procs[i];
        if (cfg->procs[i] > pmax) pmax = cfg->procs[i];
    }
    struct axis x = {pmin - 0.5, pmax + 0.5, 0};
#define PX(v) (x0 + axis_pos(&x, (v)) * PANEL_W)
#define PY(v) (PANEL_TOP + PANEL_H - axis_pos(&y, (v)) * PANEL_H)
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-weight=\"bold\">%s</text>\n", x0, PANEL_TOP - 12, title);
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#888\"/>\n", x0, PANEL_TOP,
            PANEL_W, PANEL_H);
    /* y ticks */
    char lab[32];
    if (y.log) {
        for (double t = y.lo; t <= y.hi * 1.0001; t *= 10) {
            double py = PY(t);
            fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", x0, py, x0 + PANEL_W,
                    py);
            fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n", x0 - 6, py + 4,
                    which == 0 ? fmt_rate(lab, sizeof lab, t) : fmt_ns(lab, sizeof lab, t));
        }
    } else {
        for (int k = 0; k <= 5; k++) {
            double t = y.hi * k / 5, py = PY(t);
            fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", x0, py, x0 + PANEL_W,
                    py);
            fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n", x0 - 6, py + 4,
                    which == 0 ? fmt_rate(lab, sizeof lab, t) : fmt_ns(lab, sizeof lab, t));
        }
    }
    /* x ticks: the process counts run */
    for (int i = 0; i < cfg->nprocs; i++) {
        double px = PX(cfg->procs[i]);
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%d</text>\n", px, PANEL_TOP + PANEL_H + 18,
                cfg->procs[i]);
    }
    fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">processes</text>\n", x0 + PANEL_W / 2,
            PANEL_TOP + PANEL_H + 38);
    /* one line per URL */
    for (int u = 0; u < cfg->nurls; u++) {
        const char *col = palette[u % 8];
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", col);
        for (int i = 0; i < n; i++) {
            if (r[i].skipped || r[i].url != cfg->urls[u]) continue;
            double v = which == 0 ? r[i].ops_per_sec : r[i].p99;
            if (v > 0) fprintf(f, "%.1f,%.1f ", PX(r[i].procs), PY(v));
        }
        fprintf(f, "\"/>\n");
        for (int i = 0; i < n; i++) {
            if (r[i].skipped || r[i].url != cfg->urls[u]) continue;
            double v = which == 0 ? r[i].ops_per_sec : r[i].p99;
            if (v <= 0) continue;
            fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"%s\"><title>", PX(r[i].procs), PY(v), col);
            svg_text(f, cfg->urls[u]);
            fprintf(f, ", %d procs: %s</title></circle>\n", r[i].procs,
                    which == 0 ? fmt_rate(lab, sizeof lab, v) : fmt_ns(lab, sizeof lab, v));
        }
    }
#undef PX
#undef PY
}

int report_svg(const char *path, const struct bench_cfg *cfg, const struct result *r, int n)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        return -1;
    }
    int legend_y = PANEL_TOP + PANEL_H + 62;
    int h = legend_y + 20 * ((cfg->nurls + 1) / 2) + 10;
    fprintf(f,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" "
            "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
            SVG_W, h > SVG_H ? h : SVG_H);
    fprintf(f, "<text x=\"%d\" y=\"22\" font-size=\"14\">traffic-bench: op %s", PANEL_LEFT0, op_name(cfg->op));
    if (cfg->op == OP_LIMIT) {
        fputc(' ', f);
        svg_text(f, cfg->rule_text);
    }
    fprintf(f, ", %u keys %s, %g s per point (median of %d rounds)</text>\n", cfg->keys, dist_name(cfg), cfg->seconds,
            cfg->rounds);
    panel(f, cfg, r, n, 0, PANEL_LEFT0);
    panel(f, cfg, r, n, 1, PANEL_LEFT0 + PANEL_GAP);
    for (int u = 0; u < cfg->nurls; u++) {
        int lx = PANEL_LEFT0 + (u % 2) * PANEL_GAP, ly = legend_y + 20 * (u / 2);
        fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"%s\" stroke-width=\"3\"/>\n", lx, ly - 4,
                lx + 24, ly - 4, palette[u % 8]);
        fprintf(f, "<text x=\"%d\" y=\"%d\">", lx + 30, ly);
        svg_text(f, cfg->urls[u]);
        fprintf(f, "</text>\n");
    }
    fprintf(f, "</svg>\n");
    if (fclose(f) != 0) {
        perror(path);
        return -1;
    }
    return 0;
}
