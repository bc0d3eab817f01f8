/*
 * miss-window.c — how many instructions an operation may execute and still overlap its cache
 * miss with the next operation's (bench/README.md, "Large tables"). Issue 15 asks for 1M-key
 * increments within 3x bench:raw-atomic; raw-atomic's few instructions let a core keep many
 * misses in flight, a library call cannot. This measures where that stops on the machine at
 * hand, with no library involved:
 *
 *   traffic-miss-window [MB]
 *
 * Each operation is one relaxed fetch_add at a random cache line of an MB-megabyte shared
 * mapping (default 256: the memory backend's heads at 1M keys), followed by K rounds of
 * ALU instructions that do not depend on the access (bookkeeping, as a library call's own
 * work), combined with its result at the end. The same operations on one cached line give the
 * work's own cost. Where ns/op on the mapping reaches the latency of one access (the
 * "dependent" line: each address waits for the last result), no two misses overlap any more.
 */
#define _GNU_SOURCE
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static uint64_t rng = 88172645463325252ull;
static inline uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

__attribute__((noinline)) static uint64_t op(unsigned char *p, size_t lines, int k, uint64_t key)
{
    int64_t v = atomic_fetch_add_explicit((_Atomic int64_t *)(p + (key % lines) * 64), 1, memory_order_relaxed);
    uint64_t a = key, b = key ^ 7, c = key ^ 9;
    for (int i = 0; i < k; i++) {
        a += (uint64_t)i;
        b ^= (uint64_t)i;
        c += b;
        __asm__ volatile("" : "+r"(a), "+r"(b), "+r"(c)); /* kept, and not vectorised */
    }
    return a + c + (uint64_t)v;
}

int main(int argc, char **argv)
{
    size_t mb = argc > 1 ? strtoull(argv[1], NULL, 10) : 256;
    if (mb < 1 || mb > 65536) {
        fprintf(stderr, "usage: traffic-miss-window [MB, 1..65536]\n");
        return 2;
    }
    size_t size = mb << 20, lines = size / 64;
    unsigned char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    for (size_t i = 0; i < size; i += 4096)
        p[i] = 1; /* every page faulted in first */
    const long n = 4000000;
    uint64_t sink = 0, v = 0;
    double t0 = now_s();
    for (long i = 0; i < n; i++) /* each address waits for the last result (always 0 here) */
        v = (uint64_t)atomic_fetch_add_explicit((_Atomic int64_t *)(p + ((rnd() ^ (v >> 63)) % lines) * 64), 1,
                                                memory_order_relaxed);
    double t1 = now_s();
    printf("%zu MB: one access at a time (dependent) %.1f ns\n", mb, (t1 - t0) / (double)n * 1e9);
    printf("%5s %14s %16s %14s\n", "K", "~instructions", "ns/op random", "ns/op cached");
    static const int ks[] = {0, 10, 25, 35, 50, 100, 200};
    for (size_t j = 0; j < sizeof ks / sizeof ks[0]; j++) {
        int k = ks[j];
        double a = now_s();
        for (long i = 0; i < n; i++)
            sink += op(p, lines, k, rnd());
        double b = now_s();
        for (long i = 0; i < n; i++)
            sink += op(p, 1, k, rnd());
        double c = now_s();
        /* 8 instructions a round as gcc -O2 compiles it on x86-64 (3 ALU, 2 moves, the
         * counter, compare, branch), ~30 for the rest of an operation and the loop */
        printf("%5d %14d %16.1f %14.1f\n", k, 8 * k + 30, (b - a) / (double)n * 1e9, (c - b) / (double)n * 1e9);
    }
    printf("(checksum %llu)\n", (unsigned long long)(sink & 0xff)); /* keeps the results live */
    return 0;
}
