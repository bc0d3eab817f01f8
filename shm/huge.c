/*
 * huge.c — transparent huge pages for the heads of large, dense tables (issue 15).
 *
 * Why. With 1M keys every operation lands on a random page of a 256 MB array of heads, and
 * on a virtual machine the page walk of that access is most of its cost. A 2 MiB page covers
 * 16384 heads: the walks go, and the TLB holds the whole array. Measured on an AMD EPYC guest
 * (2 vCPUs, PVM), 1M keys, 1 process, increments: in one pair of runs 439 ns/op with 4 KiB
 * pages, 279-286 ns/op with the heads in huge pages (p99 1069 -> 809 ns); in another, in a
 * forked child of a small program, 507-537 against 466 ns/op (~10 %). Figures drift 20-50 %
 * between runs there, and what remains is the miss itself (bench/README.md, "Large tables").
 *
 * Where the system offers them. A table lives in shared memory (tmpfs: /dev/shm for a named
 * table, the kernel's internal one for an anonymous table), where transparent huge pages are
 * governed by /sys/kernel/mm/transparent_hugepage/shmem_enabled: "advise" gives them to
 * mappings that asked with madvise(MADV_HUGEPAGE), "always" / "within_size" / "force" to all
 * (or a tmpfs mounted with huge=), "never" (Debian's default) to none. The library asks, and
 * never fails for lack of them; traffic_stats says how many bytes of the table this process
 * maps with huge pages (huge_bytes: from /proc/self/smaps). Reserved hugetlbfs pages are not
 * used: they need a mount and a pool set up by the administrator for this purpose, and a
 * table must open everywhere.
 *
 * When. A huge page is allocated whole when any of its 16384 heads is first touched, so a
 * sparse table would cost up to 2 MiB per key (a 10M-key table with 1000 keys in use: 2 GB
 * instead of 4 MB). The heads are advised only once the table is dense enough that 4 KiB
 * pages would all be touched anyway: live keys >= capacity / HUGE_DENSITY (with 16, about 2
 * keys per 4 KiB page of 32 heads, so few pages stay untouched), and only in tables whose
 * heads span at least HUGE_MIN_HEADS. Checked when a process attaches, then every
 * SHM_HUGE_RECHECK operations of each of its threads (ENTER, slot.h: a thread-local count, no
 * shared write on the operation path; the advice is per mapping, so each process gives its
 * own). Pages already in the table stay
 * small until collapsed: the first process to advise (one per table, elected through the
 * header's huge_collapse) starts a thread of its own that collapses the heads 2 MiB at a
 * time with madvise(MADV_COLLAPSE) (Linux 6.1; on the guest above 205 ms of copying for
 * 64 MB, a stall no operation should carry), holding a reference to the handle and stopping
 * when it is closed; the kernel's khugepaged would get there too, at 16 MB every 10 s. Pages
 * first touched after the advice come huge. A collapsed page serves every process; each
 * maps it huge once its own mapping is advised.
 *
 * Named tables reserve backing for each page of heads with fallocate before first use
 * (layout.h), which allocates small pages; the collapse above turns them huge like any other.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>

#include "layout.h"

#define HUGE_MIN_HEADS (8ull << 20) /* heads below 8 MiB (4 huge pages) stay small */
#define HUGE_DENSITY   16

static uint64_t heads_bytes(const struct shm_table *t)
{
    return t->capacity << t->head_shift;
}

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25 /* Linux 6.1 */
#endif
#define HUGE_PAGE (2ull << 20)

/* The collapsing thread: the heads' 2 MiB regions one at a time, until done or the handle is
 * closed. It holds a reference (t->refs), so the mapping outlives every madvise it makes. */
static void *collapse_main(void *arg)
{
    struct shm_table *t = arg;
    uintptr_t lo = ((uintptr_t)t->heads + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1);
    uintptr_t hi = ((uintptr_t)t->heads + heads_bytes(t)) & ~(uintptr_t)(HUGE_PAGE - 1);
    for (uintptr_t a = lo; a < hi && !atomic_load_explicit(&t->closed, memory_order_relaxed); a += HUGE_PAGE)
        if (madvise((void *)a, HUGE_PAGE, MADV_COLLAPSE) != 0 && errno == EINVAL) break; /* no MADV_COLLAPSE */
    shm_table_unref(t);
    return NULL;
}

static void start_collapse(struct shm_table *t)
{
    pthread_attr_t attr;
    sigset_t all, old;
    pthread_t th;
    if (pthread_attr_init(&attr) != 0) return;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    sigfillset(&all); /* the application's signals are not for this thread */
    pthread_sigmask(SIG_SETMASK, &all, &old);
    atomic_fetch_add(&t->refs, 1);
    if (pthread_create(&th, &attr, collapse_main, t) != 0) shm_table_unref(t); /* khugepaged will do */
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
}

void shm_huge_consider(struct shm_table *t)
{
    int st = atomic_load_explicit(&t->huge_state, memory_order_relaxed);
    if (st != SHM_HUGE_UNDECIDED) return;
    /* Small tables space their heads 256-1024 bytes apart (layout.h): a page of them holds 4-16
     * heads, too few for the density rule below; they are 64 MiB at most anyway. */
    if (heads_bytes(t) < HUGE_MIN_HEADS || (1u << t->head_shift) != SHM_HEAD_SIZE) {
        atomic_store_explicit(&t->huge_state, SHM_HUGE_SMALL_TABLE, memory_order_relaxed);
        return;
    }
    int64_t live = atomic_load_explicit(&t->h->live, memory_order_relaxed);
    if (live < 0 || (uint64_t)live < t->capacity / HUGE_DENSITY) return; /* not yet */
    /* One caller advises (the others see ADVISING and go on: advising is only a hint). */
    if (!atomic_compare_exchange_strong_explicit(&t->huge_state, &st, SHM_HUGE_ADVISING, memory_order_relaxed,
                                                 memory_order_relaxed))
        return;
    int ok = madvise(t->heads, heads_bytes(t), MADV_HUGEPAGE) == 0;
    atomic_store_explicit(&t->huge_state, ok ? SHM_HUGE_ADVISED : SHM_HUGE_UNSUPPORTED, memory_order_relaxed);
    uint32_t none = 0;
    if (ok && atomic_compare_exchange_strong_explicit(&t->h->huge_collapse, &none, 1, memory_order_relaxed,
                                                      memory_order_relaxed))
        start_collapse(t);
}

uint64_t shm_huge_bytes(struct shm_table *t)
{
    /* Reading smaps walks every mapping's page tables (ms for a large process): only for a
     * table that asked for huge pages. */
    if (atomic_load_explicit(&t->huge_state, memory_order_relaxed) != SHM_HUGE_ADVISED &&
        heads_bytes(t) < HUGE_MIN_HEADS)
        return 0;
    FILE *f = fopen("/proc/self/smaps", "re");
    if (!f) return 0;
    char line[512];
    uint64_t lo = (uint64_t)(uintptr_t)t->base, hi = lo + t->map_size, total = 0;
    int inside = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long long a, b, kb;
        char name[32];
        if (sscanf(line, "%llx-%llx ", &a, &b) == 2) { /* a mapping's first line */
            inside = a >= lo && b <= hi;
            continue;
        }
        /* AnonHugePages (a private copy), ShmemPmdMapped (tmpfs THP), FilePmdMapped,
         * Shared_/Private_Hugetlb (hugetlbfs): whatever maps this table with huge pages. */
        if (inside && sscanf(line, "%31[A-Za-z_]: %llu kB", name, &kb) == 2 &&
            (strcmp(name, "AnonHugePages") == 0 || strcmp(name, "ShmemPmdMapped") == 0 ||
             strcmp(name, "FilePmdMapped") == 0 || strcmp(name, "Shared_Hugetlb") == 0 ||
             strcmp(name, "Private_Hugetlb") == 0))
            total += (uint64_t)kb * 1024;
    }
    fclose(f);
    return total;
}
