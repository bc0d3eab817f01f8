/*
 * fuzz_common.c — what the fuzz targets share: reading inputs, failing, private directories,
 * and the link-time wrappers that keep every Redis connect on this machine.
 *
 * The wrappers: the targets are linked with -Wl,--wrap=redisConnectWithTimeout and
 * -Wl,--wrap=redisConnectUnixWithTimeout, so the library's calls to hiredis land here. A fuzzed
 * URL, a Sentinel's answer or a Cluster's slot map can name any host (a DNS name, an address
 * on another network); here each becomes 127.0.0.1 and the port the target chose: a port that
 * refuses at once (fuzz_url) or the target's own fake server (fuzz_redis).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "fuzz.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

void fuzz_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fuzz invariant broken: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    fflush(stderr);
    abort();
}

size_t fuzz_bytes(fuzz_in *in, void *dst, size_t n)
{
    if (n > in->n) n = in->n;
    memcpy(dst, in->p, n);
    in->p += n;
    in->n -= n;
    return n;
}

int64_t fuzz_i64(fuzz_in *in)
{
    uint8_t sel = fuzz_u8(in);
    if (sel < 128) { /* an edge: 2^k + d for d in -1..1, either sign */
        int k = sel & 63;
        uint64_t v = (uint64_t)1 << (k & 63);
        int d = (int)(fuzz_u8(in) % 3) - 1;
        int64_t x = (int64_t)(v + (uint64_t)(int64_t)d);
        return sel & 64 ? (int64_t)(0 - (uint64_t)x) : x;
    }
    if (sel < 160) { /* small */
        return (int64_t)(int8_t)fuzz_u8(in);
    }
    return (int64_t)fuzz_uint(in, 8);
}

/* ---- connects ----------------------------------------------------------------------------- */

unsigned long fuzz_connects;
static int redirect_port;

void fuzz_redirect_connects(int port)
{
    redirect_port = port;
}

int fuzz_closed_port(void)
{
    static int port;
    if (port) return port;
    /* Bound and kept open for the life of the process, never listening: nobody else can take
     * the port, and a connect to it is refused by the kernel at once. */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || getsockname(fd, (struct sockaddr *)&a, &len) < 0)
        fuzz_fail("cannot bind a loopback socket");
    port = ntohs(a.sin_port);
    return port;
}

redisContext *__real_redisConnectWithTimeout(const char *ip, int port, const struct timeval tv);
redisContext *__wrap_redisConnectWithTimeout(const char *ip, int port, const struct timeval tv);
redisContext *__wrap_redisConnectUnixWithTimeout(const char *path, const struct timeval tv);

redisContext *__wrap_redisConnectWithTimeout(const char *ip, int port, const struct timeval tv)
{
    (void)ip;
    (void)port;
    if (!redirect_port) fuzz_fail("a Redis connect before fuzz_redirect_connects()");
    fuzz_connects++;
    return __real_redisConnectWithTimeout("127.0.0.1", redirect_port, tv);
}

redisContext *__wrap_redisConnectUnixWithTimeout(const char *path, const struct timeval tv)
{
    (void)path;
    return __wrap_redisConnectWithTimeout("127.0.0.1", 0, tv);
}

/* ---- private directories -------------------------------------------------------------------- */

void fuzz_empty_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char path[4096];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
}

static char *dirs[8];
static int ndirs;

static void remove_dirs(void)
{
    for (int i = 0; i < ndirs; i++) {
        fuzz_empty_dir(dirs[i]);
        rmdir(dirs[i]);
    }
}

const char *fuzz_private_dir(const char *tag)
{
    if (ndirs == (int)(sizeof dirs / sizeof dirs[0])) fuzz_fail("too many private directories");
    char tmpl[256];
    snprintf(tmpl, sizeof tmpl, "/dev/shm/traffic-fuzz-%s.XXXXXX", tag); /* tmpfs: no fsync to wait for */
    char *d = mkdtemp(tmpl);
    if (!d || !(d = strdup(d))) fuzz_fail("mkdtemp %s", tmpl);
    if (ndirs == 0) atexit(remove_dirs);
    dirs[ndirs++] = d;
    return d;
}
