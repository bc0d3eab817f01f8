/*
 * clock.c — the table's clock for rate-limit decisions: CLOCK_MONOTONIC at the cost of an
 * rdtsc, and the same in every process of the table.
 *
 * A decision reads the clock once, and on a KVM guest clock_gettime(CLOCK_MONOTONIC)
 * (kvm-clock through the vDSO) costs ~27 ns, about a whole increment; rdtsc costs ~11 ns.
 * Where the TSC is invariant (CPUID 0x80000007 EDX bit 8: a constant rate, running in sleep
 * states, the same on every CPU; the kernel checks the last at boot), the clock is
 *     ns = base_ns + ((tsc - base_tsc) * mult) >> 32
 * from one parameter set in the table's header. Every process computes the same function of
 * the same TSC, so they agree on the time to a few ns: "one clock per store" holds, and the
 * decisions of all processes are ordered by one clock. (A calibration per process would let
 * processes disagree by a µs or so, and test_crash's short windows catch that.)
 *
 * Parameters: every RESYNC_NS (a tenth of the calibration's baseline while that is shorter than
 * 10 x RESYNC_NS) one caller re-anchors them on clock_gettime:
 *   - continuity: the new base is the old function's value at the new base_tsc, so the
 *     clock never jumps back (readers still on the old set differ from the new by
 *     (mult' - mult) x the time since: far below a ns);
 *   - rate: ticks against ns since the table's first anchor (a baseline that only grows),
 *     then steered so the offset from CLOCK_MONOTONIC seen at this anchor is gone by the
 *     next (an NTP-style slew, |offset| small); an offset over STEP_NS (a suspended guest, a
 *     migration) is stepped instead: forward at once, backward by a rate halved until caught;
 *   - before CALIBRATE_NS of baseline there is no rate: callers read clock_gettime.
 * Two sets alternate: the writer fills set (ver + 1) & 1 and publishes it with ver + 1
 * (release); a reader loads ver (acquire), reads set ver & 1, and re-checks ver (after an
 * acquire fence) — a writer can only reuse that set two versions later. Writers are
 * serialised by `clk_owner`, a participant token taken by CAS and taken over from a dead
 * holder (a stopped one holds it: readers then fall back to clock_gettime, correct and slow).
 * With TRAFFIC_NO_TSC=1, or without an invariant TSC, it is clock_gettime.
 *
 * Expiries are still checked against CLOCK_MONOTONIC (clock.h); memory.c gives the expiries it
 * computes from this clock a 1 ms margin, far more than the two can drift apart.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <x86intrin.h>
#define HAVE_TSC 1
#else
#define HAVE_TSC 0
#endif

#include "layout.h"

#define RESYNC_NS    50000000ll /* re-anchor every 50 ms */
#define CALIBRATE_NS 10000000ll /* a rate needs 10 ms of baseline */
#define STEP_NS      1000000ll  /* offsets beyond 1 ms are stepped, not slewed */
#define DAMAGE_NS    1000000000ll /* a clock 1 s ahead of CLOCK_MONOTONIC has damaged parameters */
/* The rates a TSC can have, as mult (ns per tick << 32): 16 GHz to 62.5 MHz. A set outside
 * them, or whose span (max_ticks) exceeds RESYNC_NS at the fastest of them, is damage: the
 * reader re-anchors instead of using it (a mult of 1 froze the clock for years: review). */
#define MULT_MIN  (1ull << 28)
#define MULT_MAX  (1ull << 36)
#define TICKS_MAX ((uint64_t)RESYNC_NS << 4) /* RESYNC_NS at 16 GHz */

static int64_t real_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

#if HAVE_TSC
static _Atomic int tsc_ok = -1; /* -1 unknown, 0 no, 1 yes */

static int tsc_usable(void)
{
    int ok = atomic_load_explicit(&tsc_ok, memory_order_relaxed);
    if (__builtin_expect(ok >= 0, 1)) return ok;
    unsigned a, b, c, d;
    const char *off = getenv("TRAFFIC_NO_TSC");
    ok = (!off || strcmp(off, "1") != 0) && __get_cpuid(0x80000007, &a, &b, &c, &d) && (d & (1u << 8));
    atomic_store_explicit(&tsc_ok, ok, memory_order_relaxed);
    return ok;
}

/* A (TSC, ns) pair taken together: the TSC halfway through a clock_gettime, from a read that
 * was not interrupted (a preemption between the two would put ms into the pair, and the
 * rate is computed from such pairs). 0 if three reads were all too slow. */
#define SAMPLE_MAX_TICKS 5000 /* ~2 µs at 2-3 GHz; a clock_gettime takes ~27 ns (~60 ticks) */
static int sample(uint64_t *tsc, int64_t *ns)
{
    for (int i = 0; i < 3; i++) {
        uint64_t t0 = __rdtsc();
        int64_t n = real_ns();
        uint64_t t1 = __rdtsc();
        if (t1 >= t0 && t1 - t0 < SAMPLE_MAX_TICKS) {
            *tsc = t0 + (t1 - t0) / 2;
            *ns = n;
            return 1;
        }
    }
    return 0;
}

static int64_t eval(uint64_t tsc, uint64_t btsc, int64_t bns, uint64_t mult)
{
    /* unsigned: damaged parameters give a wrong value, never an overflow */
    return (int64_t)((uint64_t)bns + (uint64_t)(((unsigned __int128)(tsc - btsc) * mult) >> 32));
}

/* Re-anchors the parameters if this caller can take the writer's token. */
static void resync(struct shm_table *t, uint64_t ver)
{
    struct shm_header *h = t->h;
    struct shm_self *me = shm_self_get(t);
    if (!me) return;
    uint32_t cur = atomic_load_explicit(&h->clk_owner, memory_order_relaxed);
    if (cur != 0 && cur != me->token && shm_token_alive(t, cur)) return; /* someone is at it */
    if (!atomic_compare_exchange_strong_explicit(&h->clk_owner, &cur, me->token, memory_order_acquire,
                                                 memory_order_relaxed))
        return;
    uint64_t tsc;
    int64_t now;
    /* nobody did it meanwhile, and a clean sample */
    if (atomic_load_explicit(&h->clk_ver, memory_order_acquire) == ver && sample(&tsc, &now)) {
        uint64_t ftsc = atomic_load_explicit(&h->clk_first_tsc, memory_order_relaxed);
        int64_t fns = atomic_load_explicit(&h->clk_first_ns, memory_order_relaxed);
        if (ftsc == 0 || tsc <= ftsc) { /* the first anchor (or a TSC that went back) */
            atomic_store_explicit(&h->clk_first_tsc, tsc, memory_order_relaxed);
            atomic_store_explicit(&h->clk_first_ns, now, memory_order_relaxed);
            ftsc = tsc;
            fns = now;
        }
        __typeof__(h->clk[0]) *old = &h->clk[ver & 1], *nw = &h->clk[(ver + 1) & 1];
        uint64_t omult = atomic_load_explicit(&old->mult, memory_order_relaxed);
        if (omult < MULT_MIN || omult > MULT_MAX) omult = 0; /* uncalibrated, or damaged: start over */
        int64_t base = now;
        uint64_t mult = 0, max_ticks = 0;
        /* The old set's value now, and how far CLOCK_MONOTONIC is ahead of it. A value more
         * than a second behind (a suspended guest, a migration) is stepped forward; one more
         * than a second ahead cannot come from this code, only from damaged parameters (the
         * header is shared memory, issue 11), and is stepped back. Either way the baseline
         * straddles the event, or is damaged too: the rate is measured again from here. */
        int64_t f = 0, off = 0;
        if (omult) {
            f = eval(tsc, atomic_load_explicit(&old->tsc, memory_order_relaxed),
                     atomic_load_explicit(&old->ns, memory_order_relaxed), omult);
            off = (int64_t)((uint64_t)now - (uint64_t)f); /* wraps only on damage: then a step */
        }
        int64_t since;
        if (off > DAMAGE_NS || off < -DAMAGE_NS || __builtin_sub_overflow(now, fns, &since) || since < 0) {
            atomic_store_explicit(&h->clk_first_tsc, tsc, memory_order_relaxed);
            atomic_store_explicit(&h->clk_first_ns, now, memory_order_relaxed);
            ftsc = tsc;
            fns = now;
            since = 0;
            omult = 0;
        }
        uint64_t measured = since >= CALIBRATE_NS ? (uint64_t)(((unsigned __int128)since << 32) / (tsc - ftsc)) : 0;
        if (measured && (measured < MULT_MIN || measured > MULT_MAX)) {
            /* A rate no TSC has: the first anchor is damaged. Measure again from here. */
            atomic_store_explicit(&h->clk_first_tsc, tsc, memory_order_relaxed);
            atomic_store_explicit(&h->clk_first_ns, now, memory_order_relaxed);
            measured = 0;
        }
        if (measured) { /* 0: not calibrated yet */
            mult = measured;
            if (omult) {
                if (off > STEP_NS) {
                    base = now; /* far behind: step forward */
                } else {
                    base = f; /* continuous; steer the rate to close the gap by the next anchor */
                    if (off < -STEP_NS) off = -STEP_NS;
                    __int128 m = (__int128)measured + (__int128)measured * off / RESYNC_NS;
                    mult = m < (__int128)(measured / 2) ? measured / 2 : (uint64_t)m;
                }
            }
            /* Early on the rate comes from a short baseline (its error ~ a sample's 2 µs over it):
             * extrapolate at most a tenth of the baseline, so the clock strays a fraction of a
             * µs, not the 50 µs a 10 ms baseline would give over 50 ms. */
            int64_t span = since / 10 < RESYNC_NS ? since / 10 : RESYNC_NS;
            max_ticks = mult ? (uint64_t)(((unsigned __int128)span << 32) / mult) : 0;
        }
        /* The seqlock writer's barrier: a reader whose copy saw any store below sees, on its
         * re-check, a version at least as new as the one read above, which is not its own. */
        atomic_thread_fence(memory_order_release);
        atomic_store_explicit(&nw->tsc, tsc, memory_order_relaxed);
        atomic_store_explicit(&nw->ns, base, memory_order_relaxed);
        atomic_store_explicit(&nw->mult, mult, memory_order_relaxed);
        atomic_store_explicit(&nw->max_ticks, max_ticks, memory_order_relaxed);
        atomic_store_explicit(&h->clk_ver, ver + 1, memory_order_release); /* publishes the set */
    }
    atomic_store_explicit(&h->clk_owner, 0, memory_order_release);
}
#endif

int64_t shm_clock_us(shm_table *t)
{
#if HAVE_TSC
    if (__builtin_expect(tsc_usable(), 1)) {
        struct shm_header *h = t->h;
        for (int tries = 0; tries < 3; tries++) {
            uint64_t ver = atomic_load_explicit(&h->clk_ver, memory_order_acquire);
            __typeof__(h->clk[0]) *p = &h->clk[ver & 1];
            uint64_t btsc = atomic_load_explicit(&p->tsc, memory_order_relaxed);
            uint64_t mult = atomic_load_explicit(&p->mult, memory_order_relaxed);
            uint64_t maxt = atomic_load_explicit(&p->max_ticks, memory_order_relaxed);
            int64_t bns = atomic_load_explicit(&p->ns, memory_order_relaxed);
            uint64_t tsc = __rdtsc();
            atomic_thread_fence(memory_order_acquire);
            if (atomic_load_explicit(&h->clk_ver, memory_order_relaxed) != ver) continue; /* changed: again */
            if (__builtin_expect(mult >= MULT_MIN && mult <= MULT_MAX && maxt <= TICKS_MAX && tsc - btsc < maxt, 1)) {
                /* A set spans at most RESYNC_NS: checked here too, so that damaged parameters
                 * (a huge max_ticks) are replaced within 50 ms instead of read forever. */
                unsigned __int128 d = ((unsigned __int128)(tsc - btsc) * mult) >> 32;
                if (__builtin_expect(d <= (unsigned __int128)RESYNC_NS, 1))
                    return (int64_t)((uint64_t)bns + (uint64_t)d) / 1000;
            }
            if (!mult && tries) break; /* still calibrating */
            /* (a set out of range - damage - is replaced by the resync below like a stale one) */
            /* Stale (tsc - btsc is also huge when the TSC went back) or not calibrated:
             * anchor anew if we may, then read the new set. Falling back to the real clock
             * on a calibrated table could step back by the µs the two differ. */
            resync(t, ver);
        }
    }
#else
    (void)t;
#endif
    return real_ns() / 1000;
}
