/*
 * contract.h — the backend contract of SPEC.md as one Check suite that every backend runs.
 *
 * A backend's test program describes how to get a new, empty store and runs the suite:
 *
 *     static int open_fresh(traffic_backend **out, void *ctx) { return traffic_open("memory://", out); }
 *     contract_backend cb = {.name = "memory", .open_fresh = open_fresh, .value_limit = 256};
 *     return tu_run(contract_suite(&cb));
 *
 * The suite keeps a copy of *cb in a static (Check forks every test and the children read it
 * there), so run one contract suite at a time: build it, run it, then build the next.
 */
#ifndef TRAFFIC_TESTS_CONTRACT_H
#define TRAFFIC_TESTS_CONTRACT_H

#include <check.h>
#include <stddef.h>

#include <traffic/traffic.h>

typedef struct contract_backend {
    const char *name;                                    /* what traffic_stats reports: "memory", "sqlite", ... */
    int (*open_fresh)(traffic_backend **out, void *ctx); /* a new, EMPTY store on each call */
    void *ctx;
    size_t value_limit;   /* the largest value the store accepts (memory default 256) */
    const char *variant;  /* optional, shown in the suite name ("named", "value_max=1024") */
    int stats_exact;      /* 1: hits/misses/sets/increments/deletes count exactly this store's operations
                           * (memory); 0: they are only required not to fall short (e.g. server-wide INFO) */
} contract_backend;

/* The whole contract as one suite named "contract-<name>[-<variant>]". */
Suite *contract_suite(const contract_backend *cb);

/* The rate-limit part of the contract (contract_limit.c), which contract_suite adds to s. */
void contract_limit_tcases(Suite *s, const contract_backend *cb);
/* Listing keys and the cleanup pass (contract_scan.c), which contract_suite adds to s. */
void contract_scan_tcases(Suite *s, const contract_backend *cb);

#endif
