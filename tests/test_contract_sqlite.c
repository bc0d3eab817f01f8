/*
 * test_contract_sqlite.c — the SQLite backend honours the backend contract (contract.c). Each
 * open_fresh makes a new database file in one mkdtemp() directory, removed with everything
 * in it once the suite has run (in this process, which Check's forked tests return to).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdio.h>
#include <stdlib.h>

#include "contract.h"
#include "testutil.h"

static int open_fresh(traffic_backend **out, void *ctx)
{
    char url[600];
    snprintf(url, sizeof url, "sqlite://%s/%s.db", (const char *)ctx, tu_name("contract"));
    return traffic_open(url, out);
}

int main(void)
{
    char dir[64];
    if (!tu_scratch_make(dir, sizeof dir, "contract-sqlite")) return EXIT_FAILURE;
    contract_backend cb = {.name = "sqlite",
                           .open_fresh = open_fresh,
                           .ctx = dir,
                           .value_limit = TRAFFIC_SQLITE_VALUE_MAX,
                           .stats_exact = 1};
    int rc = tu_run(contract_suite(&cb));
    tu_scratch_remove(dir);
    return rc;
}
