/*
 * fuzz.h — the fuzz targets of traffic, and what they share.
 *
 * Each target is a pair of plain functions, fuzz_NAME_init() (once per process) and
 * fuzz_NAME_one(data, size) (one input), so that the same code runs in two places:
 *   - under libFuzzer (fuzz/driver.c wraps one target as LLVMFuzzerTestOneInput; built with
 *     clang by fuzz/run.sh or -DTRAFFIC_FUZZ=ON), to search for new inputs;
 *   - in the main gcc build, where tests/test_fuzz.c replays every committed input (the seed
 *     corpora and each crash found, fuzz/corpus/NAME/) through the same function.
 * A target reports a broken invariant with fuzz_fail(), which prints and aborts: libFuzzer
 * calls that a crash and saves the input; the replay test sees its child die.
 *
 * Nothing a target does reaches beyond this machine: every Redis connect is redirected to a
 * loopback port (fuzz_common.c), and files go to private directories under /dev/shm, removed
 * after each input.
 */
#ifndef TRAFFIC_FUZZ_H
#define TRAFFIC_FUZZ_H

#include <stddef.h>
#include <stdint.h>

void fuzz_url_init(void);
int fuzz_url_one(const uint8_t *data, size_t size);
void fuzz_limit_init(void);
int fuzz_limit_one(const uint8_t *data, size_t size);
void fuzz_table_init(void);
int fuzz_table_one(const uint8_t *data, size_t size);
void fuzz_sqlite_init(void);
int fuzz_sqlite_one(const uint8_t *data, size_t size);
void fuzz_redis_init(void);
int fuzz_redis_one(const uint8_t *data, size_t size);

/* Prints the broken invariant and aborts (a crash for libFuzzer, a failure for the replay). */
void fuzz_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* ---- reading an input ----------------------------------------------------------------------
 * The input is consumed from the front; past its end every read gives zeros, so any input is
 * a valid one. */
typedef struct fuzz_in {
    const uint8_t *p;
    size_t n;
} fuzz_in;

static inline uint8_t fuzz_u8(fuzz_in *in)
{
    if (!in->n) return 0;
    in->n--;
    return *in->p++;
}
/* bytes little-endian bytes (1..8) as an unsigned number */
static inline uint64_t fuzz_uint(fuzz_in *in, int bytes)
{
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++)
        v |= (uint64_t)fuzz_u8(in) << (8 * i);
    return v;
}
/* Up to n bytes into dst; returns how many there were. */
size_t fuzz_bytes(fuzz_in *in, void *dst, size_t n);
/* An int64 that is often one of the values where arithmetic breaks (0, ±1, 2^k ± 1, the
 * extremes), else any 64-bit pattern. */
int64_t fuzz_i64(fuzz_in *in);

/* ---- the machine's side ----------------------------------------------------------------- */

/* Every Redis connect of this process goes to 127.0.0.1:port instead (hiredis's
 * redisConnectWithTimeout and redisConnectUnixWithTimeout are wrapped at link time with
 * -Wl,--wrap). Until it is set a connect aborts: nothing may reach another address. */
void fuzz_redirect_connects(int port);
/* The port of a loopback socket bound but never listening: a connect to it is refused at once. */
int fuzz_closed_port(void);
/* Connects made since the process started (through the wrapper). */
extern unsigned long fuzz_connects;

/* A fresh private directory under /dev/shm for this process (its path, static), created once. */
const char *fuzz_private_dir(const char *tag);
/* Removes every file in dir (not subdirectories: targets create none). */
void fuzz_empty_dir(const char *dir);

#endif
