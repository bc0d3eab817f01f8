/* pid.c — see pid.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdatomic.h>
#include <sys/mman.h>
#include <unistd.h>

#include "pid.h"

#ifndef MADV_WIPEONFORK
#define MADV_WIPEONFORK 18
#endif

/* The page: NULL until first use, (void *)1 where MADV_WIPEONFORK is refused. Its first
 * word holds the pid, 0 in a child that has not asked yet. Threads of one process may both
 * ask and store the same value: relaxed atomics suffice (the value is the same for all). */
static _Atomic(_Atomic pid_t *) page;
#define NO_PAGE ((_Atomic pid_t *)1)

pid_t tr_pid(void)
{
    _Atomic pid_t *p = atomic_load_explicit(&page, memory_order_acquire);
    if (__builtin_expect(p != NULL && p != NO_PAGE, 1)) {
        pid_t v = atomic_load_explicit(p, memory_order_relaxed);
        if (__builtin_expect(v != 0, 1)) return v;
        v = getpid(); /* a child's first call */
        atomic_store_explicit(p, v, memory_order_relaxed);
        return v;
    }
    if (p == NO_PAGE) return getpid();
    void *m = mmap(NULL, (size_t)sysconf(_SC_PAGESIZE), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    _Atomic pid_t *mine = NO_PAGE;
    if (m != MAP_FAILED) {
        if (madvise(m, (size_t)sysconf(_SC_PAGESIZE), MADV_WIPEONFORK) == 0)
            mine = m;
        else
            munmap(m, (size_t)sysconf(_SC_PAGESIZE));
    }
    _Atomic pid_t *none = NULL;
    /* release: the page's mapping before its address (another thread reads through it) */
    if (!atomic_compare_exchange_strong_explicit(&page, &none, mine, memory_order_acq_rel, memory_order_acquire) &&
        mine != NO_PAGE)
        munmap((void *)mine, (size_t)sysconf(_SC_PAGESIZE)); /* another thread's page won */
    return tr_pid();
}
