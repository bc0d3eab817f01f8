/* pid.c — see pid.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>
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

/* Also cleared by an atfork handler, so that fork() does not rest on the advice alone (qemu-user
 * accepted MADV_WIPEONFORK and ignored it: CI's aarch64 stage saw a fork child read its
 * parent's pid; wipeonfork_real now tells such a system). */
static void child_reset(void)
{
    _Atomic pid_t *p = atomic_load_explicit(&page, memory_order_relaxed);
    if (p && p != NO_PAGE) atomic_store_explicit(p, 0, memory_order_relaxed);
}

/* 1 if the kernel really applies MADV_WIPEONFORK: it must refuse it on a shared mapping
 * (EINVAL). An emulator that accepts any advice and ignores it (qemu-user 7.2) says 0 there:
 * then this process asks getpid() every time. */
static int wipeonfork_real(void)
{
    size_t n = (size_t)sysconf(_SC_PAGESIZE);
    void *s = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (s == MAP_FAILED) return 0;
    int accepted = madvise(s, n, MADV_WIPEONFORK) == 0;
    munmap(s, n);
    return !accepted;
}

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
        if (madvise(m, (size_t)sysconf(_SC_PAGESIZE), MADV_WIPEONFORK) == 0 && wipeonfork_real())
            mine = m;
        else
            munmap(m, (size_t)sysconf(_SC_PAGESIZE));
    }
    _Atomic pid_t *none = NULL;
    /* release: the page's mapping before its address (another thread reads through it) */
    if (atomic_compare_exchange_strong_explicit(&page, &none, mine, memory_order_acq_rel, memory_order_acquire)) {
        if (mine != NO_PAGE) pthread_atfork(NULL, NULL, child_reset);
    } else if (mine != NO_PAGE) {
        munmap((void *)mine, (size_t)sysconf(_SC_PAGESIZE)); /* another thread's page won */
    }
    return tr_pid();
}
