/*
 * pid.h — this process's id without a system call per use.
 *
 * The SQLite and Redis backends keep their connections per process and compare the owner's
 * pid with the caller's on every call, so that a forked child never uses its parent's
 * connections. getpid() is a real system call (glibc stopped caching it in 2.25), and on the
 * virtual machines this project is measured on one costs ~1.9 µs: a fifth of a SQLite
 * increment. tr_pid() answers from a page mapped with MADV_WIPEONFORK, which the kernel hands
 * a child zero-filled on every fork - fork(), _Fork(), clone() without CLONE_VM alike, atfork
 * handlers or not - so a child's first call reads 0 and asks the kernel once. (A vfork child
 * shares the page; it may only exec or _exit anyway.) Without MADV_WIPEONFORK (Linux < 4.14)
 * it is getpid(), and also where the advice is accepted but not applied (qemu-user 7.2, which
 * a probe tells: pid.c). An atfork handler clears the page as well.
 */
#ifndef TRAFFIC_PID_H
#define TRAFFIC_PID_H

#include <sys/types.h>

pid_t tr_pid(void);

#endif
