/*
 * test_contract_redis.c — the Redis backend honours the backend contract (contract.c) in each
 * of its four shapes, each against real servers this program starts on loopback:
 *   - redis://        one server over TCP
 *   - redis+unix://   the same server over its unix socket, in database 3
 *   - redis+sentinel:// a master, a replica and two sentinels
 *   - redis+cluster://  three cluster masters
 * Every open_fresh uses a new key prefix, which makes an empty store of its own.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "contract.h"
#include "redis_harness.h"
#include "testutil.h"

static int open_fresh(traffic_backend **out, void *ctx)
{
    const char *base = ctx;
    char url[1024];
    snprintf(url, sizeof url, "%s%sprefix=%s:", base, strchr(base, '?') ? "&" : "?", tu_name("contract"));
    return traffic_open(url, out);
}

static int run(const char *variant, const char *url)
{
    contract_backend cb = {.name = "redis",
                           .open_fresh = open_fresh,
                           .ctx = (void *)url,
                           .value_limit = TRAFFIC_REDIS_VALUE_MAX,
                           .variant = variant,
                           .stats_exact = 1};
    return tu_run(contract_suite(&cb));
}

int main(void)
{
    int failed = 0;
    rh_server s = {.unixsocket = 1};
    if (rh_start(&s, NULL)) return EXIT_FAILURE;
    failed |= run("tcp", rh_url("redis://127.0.0.1:%d", s.port)) != EXIT_SUCCESS;
    failed |= run("unix", rh_url("redis+unix://%s?db=3", s.sock)) != EXIT_SUCCESS;
    rh_kill(&s);

    rh_sentinel_set set;
    if (rh_sentinel_start(&set, 2, NULL)) return EXIT_FAILURE;
    failed |= run("sentinel", rh_url("redis+sentinel://127.0.0.1:%d,127.0.0.1:%d/mymaster", set.sentinels[0].port,
                                     set.sentinels[1].port)) != EXIT_SUCCESS;
    rh_sentinel_stop(&set);

    rh_cluster c;
    if (rh_cluster_start(&c, 3)) return EXIT_FAILURE;
    failed |= run("cluster", rh_url("redis+cluster://127.0.0.1:%d,127.0.0.1:%d", c.nodes[0].port, c.nodes[1].port)) !=
              EXIT_SUCCESS;
    rh_cluster_stop(&c);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
