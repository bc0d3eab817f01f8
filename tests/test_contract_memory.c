/*
 * test_contract_memory.c — the memory backend honours the backend contract (contract.c), both
 * as an anonymous table ("memory://", each open a new empty mapping) and as a named table
 * in /dev/shm with a larger value_max (created under a unique name and unlinked at once: the
 * handle keeps the mapping, so nothing is left behind even when a test fails).
 */
#include <stdio.h>
#include <stdlib.h>

#include "contract.h"
#include "testutil.h"

static int open_anonymous(traffic_backend **out, void *ctx)
{
    (void)ctx;
    return traffic_open("memory://", out);
}

static int open_named(traffic_backend **out, void *ctx)
{
    const char *extra = ctx;
    char url[512];
    const char *name = tu_name("contract");
    tu_memory_url(url, sizeof url, name, extra);
    int rc = traffic_open(url, out);
    if (rc == TRAFFIC_OK) {
        int u = traffic_memory_unlink(name);
        if (u != TRAFFIC_OK) {
            traffic_close(*out);
            *out = NULL;
            return u;
        }
    }
    return rc;
}

int main(void)
{
    contract_backend anon = {
        .name = "memory", .open_fresh = open_anonymous, .value_limit = 256, .stats_exact = 1};
    int rc = tu_run(contract_suite(&anon));

    contract_backend named = {.name = "memory",
                              .open_fresh = open_named,
                              .ctx = "value_max=1024&max_size=2000",
                              .value_limit = 1024,
                              .variant = "named",
                              .stats_exact = 1};
    int rc2 = tu_run(contract_suite(&named));
    return rc != EXIT_SUCCESS ? rc : rc2;
}
