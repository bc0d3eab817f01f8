/*
 * clock.h — the table's time base: milliseconds of CLOCK_MONOTONIC, shared by every process
 * of the host, untouched by wall-clock steps.
 *
 * A full CLOCK_MONOTONIC read costs ~27 ns on these VMs, more than the whole increment, so
 * expiry checks read CLOCK_MONOTONIC_COARSE (~3.5 ns, one tick of resolution) first and read
 * the precise clock only when an entry's expiry lies within four coarse ticks of now. The
 * coarse clock never runs ahead of the precise one, so "coarse + margin < expires" proves the
 * entry alive; everything else is decided by the precise clock. TTLs keep millisecond
 * precision and entries without a TTL never read a clock at all.
 */
#ifndef TRAFFIC_SHM_CLOCK_H
#define TRAFFIC_SHM_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline int64_t shm_clock_ms(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline int64_t shm_now_ms(void)
{
    return shm_clock_ms(CLOCK_MONOTONIC);
}

extern int64_t shm_coarse_margin_ms; /* four coarse ticks, measured once per process */

/* Has an entry with this absolute expiry (0: none) expired? */
static inline int shm_expired(int64_t expires)
{
    if (expires == 0) return 0;
    if (shm_clock_ms(CLOCK_MONOTONIC_COARSE) + shm_coarse_margin_ms < expires) return 0;
    return shm_now_ms() >= expires;
}

#endif
