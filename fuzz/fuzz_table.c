/*
 * fuzz_table.c — a damaged named memory table: attach, then operations, must never crash or
 * hang (issue 11: nothing read from the mapping is trusted).
 *
 * Once per process a small valid table is built through the public API (counters, bytes with
 * short and long keys, a state of each algorithm, an expired key, a deleted one) and its file
 * is kept as a template. Each input then
 *   1. writes the template to /dev/shm/traffic.fuzz-table-PID and overwrites bytes of it as
 *      the input says: records (region, offset, length, bytes) aimed at the header, the first
 *      participant records, the touched bitmap, a slot's head or body, or anywhere;
 *   2. attaches with traffic_open (a header that fails validation is TRAFFIC_ECORRUPT, and
 *      that ends the input), and with the table layer itself for the reaper's pass and the
 *      consistency scan;
 *   3. runs up to FUZZ_OPS operations chosen by the rest of the input (get, set, increment,
 *      delete, exists, ttl, a decision of each algorithm, stats, clear, a reaper pass);
 *      each must return a known status, and a read that succeeds must fit its buffer;
 *   4. closes and unlinks the table.
 * A hang is a crash for libFuzzer (-timeout); a table whose every insert waits out the
 * 200 ms epoch wait keeps an input slow, not stuck.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <traffic/traffic.h>

#include "fuzz.h"
#include "shm/layout.h"

#define FUZZ_OPS    24
#define FUZZ_WRITES 16
#define PAGE        4096

static char name[64], path[128], url[160], attach_url[128];
static unsigned char *tmpl; /* the template file */
static size_t tmpl_size;
static unsigned char *tmpl_used; /* per page: 1 if the page holds a non-zero byte */
static struct shm_header geo;    /* the template's header: the geometry the records aim at */

#define LONG_KEY                                                                                                       \
    "a-key-long-enough-to-go-on-into-the-slot-body-because-it-is-longer-than-the-72-bytes-a-head-holds-inline-"       \
    "and-then-some-more-bytes-up-to-here"
static const char *const keys[] = {
    "c1", "c2", "b1", "b2", "fw", "swc", "sw", "tb", "lb", "gone", "del", "new1", "new2", LONG_KEY,
};
#define NKEYS (sizeof keys / sizeof keys[0])
#define LONGK (NKEYS - 1)

static const traffic_rule rules[5] = {
    {TRAFFIC_SLIDING_WINDOW_COUNTER, 10, 60, 0}, {TRAFFIC_FIXED_WINDOW, 10, 60, 0}, {TRAFFIC_SLIDING_WINDOW, 5, 60, 0},
    {TRAFFIC_TOKEN_BUCKET, 10, 60, 4},          {TRAFFIC_LEAKY_BUCKET, 10, 60, 3},
};

static void must(int rc, const char *what)
{
    if (rc != TRAFFIC_OK) fuzz_fail("building the template: %s: %s (%s)", what, traffic_strerror(rc), traffic_errmsg(NULL));
}

/* The hash seed is random per table; the template's is fixed, so that where each key lives,
 * and therefore what an input's writes hit, is the same in every process (a crash found by
 * one fuzzing run replays in the next). */
#define FIXED_SEED UINT64_C(0x5eed5eed5eed5eed)

static void build_template(void)
{
    traffic_backend *b;
    traffic_memory_unlink(name);
    must(traffic_open(url, &b), url);
    must(traffic_close(b), "close");
    uint64_t seed = FIXED_SEED;
    int sfd = open(path, O_RDWR | O_CLOEXEC);
    if (sfd < 0 || pwrite(sfd, &seed, sizeof seed, offsetof(struct shm_header, hash_seed)) != sizeof seed)
        fuzz_fail("set the hash seed of %s", path);
    close(sfd);
    must(traffic_open(url, &b), url);
    traffic_decision d;
    char v64[64];
    memset(v64, 'v', sizeof v64);
    must(traffic_increment(b, "c1", 41, 0, NULL), "c1");
    must(traffic_increment(b, "c2", -7, 1000, NULL), "c2");
    must(traffic_set(b, "b1", "hello", 5, 0), "b1");
    must(traffic_set(b, "b2", v64, sizeof v64, 1000), "b2");
    must(traffic_set(b, keys[LONGK], v64, 20, 0), "long key");
    static const char *const state_keys[5] = {"swc", "fw", "sw", "tb", "lb"};
    for (int a = 0; a < 5; a++)
        for (int i = 0; i < 3; i++)
            must(traffic_limit(b, state_keys[a], &rules[a], 1, &d), state_keys[a]);
    must(traffic_set(b, "gone", "x", 1, 0.001), "gone");
    must(traffic_set(b, "del", "x", 1, 0), "del");
    must(traffic_delete(b, "del"), "delete");
    usleep(3000); /* "gone" expires */
    must(traffic_close(b), "close");

    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) fuzz_fail("open %s", path);
    tmpl_size = (size_t)st.st_size;
    tmpl = malloc(tmpl_size);
    tmpl_used = calloc(tmpl_size / PAGE + 1, 1);
    if (!tmpl || !tmpl_used || pread(fd, tmpl, tmpl_size, 0) != (ssize_t)tmpl_size) fuzz_fail("read %s", path);
    close(fd);
    traffic_memory_unlink(name);
    memcpy(&geo, tmpl, sizeof geo);
    /* This thread still holds a participant record (until its next call into the library):
     * in the template, records of this process get the pristine, unlocked mutex of the last
     * record, so that every input starts from a table nobody is attached to. */
    struct shm_part *parts = (struct shm_part *)(tmpl + geo.parts_off);
    for (uint32_t i = 0; i + 1 < SHM_MAX_PARTS && i < 8; i++)
        if (atomic_load(&parts[i].pid) == getpid()) {
            memcpy(&parts[i].lock, &parts[SHM_MAX_PARTS - 1].lock, sizeof parts[i].lock);
            atomic_store(&parts[i].pid, 0);
            atomic_store(&parts[i].epoch, 0);
        }
    if (geo.hash_seed != FIXED_SEED) fuzz_fail("the template's hash seed did not stay fixed");
    for (size_t pg = 0; pg * PAGE < tmpl_size; pg++)
        for (size_t i = pg * PAGE; i < tmpl_size && i < (pg + 1) * PAGE && !tmpl_used[pg]; i++)
            tmpl_used[pg] = tmpl[i] != 0;
}

void fuzz_table_init(void)
{
    snprintf(name, sizeof name, "fuzz-table-%d", (int)getpid());
    snprintf(path, sizeof path, "/dev/shm/traffic.%s", name);
    snprintf(url, sizeof url, "memory://%s?max_size=16&key_max=200&value_max=64", name);
    snprintf(attach_url, sizeof attach_url, "memory://%s", name); /* whatever geometry the header says */
    build_template();
}

/* Where a write record aims: an offset into the file. */
static size_t aim(fuzz_in *in)
{
    uint8_t region = fuzz_u8(in);
    uint64_t x = fuzz_uint(in, 2);
    size_t at;
    switch (region % 6) {
    case 0: at = x % sizeof(struct shm_header); break;
    case 1: at = geo.parts_off + x % (4 * sizeof(struct shm_part)); break; /* the first records */
    case 2: at = geo.touched_off + x % (geo.heads_off - geo.touched_off); break;
    case 3: at = geo.heads_off + (x >> 8) % geo.capacity * geo.head_stride + (x & 0xff) % SHM_HEAD_SIZE; break;
    case 4: at = geo.bodies_off + (x % geo.capacity) * geo.body_size + fuzz_u8(in) % geo.body_size; break;
    default: at = (x | fuzz_uint(in, 2) << 16) % tmpl_size; break;
    }
    return at;
}

static void write_damaged(fuzz_in *in)
{
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || ftruncate(fd, (off_t)tmpl_size) < 0) fuzz_fail("create %s", path);
    for (size_t pg = 0; pg * PAGE < tmpl_size; pg++) {
        size_t n = tmpl_size - pg * PAGE < PAGE ? tmpl_size - pg * PAGE : PAGE;
        if (tmpl_used[pg] && pwrite(fd, tmpl + pg * PAGE, n, (off_t)(pg * PAGE)) != (ssize_t)n)
            fuzz_fail("write %s", path);
    }
    int writes = fuzz_u8(in) % (FUZZ_WRITES + 1);
    for (int w = 0; w < writes; w++) {
        size_t at = aim(in);
        uint8_t how = fuzz_u8(in);
        unsigned char bytes[8];
        size_t len = 1 + (how & 7);
        if (how & 0x80) {
            int64_t v = fuzz_i64(in);
            memcpy(bytes, &v, sizeof v);
        } else {
            memset(bytes, 0, sizeof bytes);
            fuzz_bytes(in, bytes, len);
        }
        if (at + len > tmpl_size) len = tmpl_size - at;
        if (pwrite(fd, bytes, len, (off_t)at) != (ssize_t)len) fuzz_fail("damage %s", path);
    }
    close(fd);
}

static int known_status(int rc)
{
    return rc <= TRAFFIC_OK && rc >= TRAFFIC_ENOTSUP;
}

#define CHECK_RC(rc, what)                                                                                             \
    do {                                                                                                               \
        int r_ = (rc);                                                                                                 \
        if (!known_status(r_) && r_ != 1) fuzz_fail("%s returned %d", what, r_);                                       \
    } while (0)

static void operate(traffic_backend *b, shm_table *t, fuzz_in *in)
{
    char buf[512], val[80];
    for (int op = 0; op < FUZZ_OPS && in->n; op++) {
        uint8_t sel = fuzz_u8(in);
        const char *key = keys[fuzz_u8(in) % NKEYS];
        size_t len = 0, cap = sel & 0x80 ? 4 : sizeof buf;
        int64_t v;
        double ttl;
        traffic_decision d;
        switch (sel % 14) {
        case 0: {
            int rc = traffic_get(b, key, buf, cap, &len);
            CHECK_RC(rc, "get");
            if (rc == TRAFFIC_OK && len > cap) fuzz_fail("get: %zu bytes into %zu", len, cap);
            break;
        }
        case 1:
            memset(val, 's', sizeof val);
            CHECK_RC(traffic_set(b, key, val, fuzz_u8(in) % sizeof val, (sel & 0x40) ? 0 : 100), "set");
            break;
        case 2: CHECK_RC(traffic_increment(b, key, fuzz_i64(in), (sel & 0x40) ? 0 : 100, &v), "increment"); break;
        case 3: CHECK_RC(traffic_delete(b, key), "delete"); break;
        case 4: {
            int rc = traffic_exists(b, key);
            if (rc != 0 && rc != 1 && !known_status(rc)) fuzz_fail("exists returned %d", rc);
            break;
        }
        case 5: CHECK_RC(traffic_ttl(b, key, &ttl), "ttl"); break;
        case 6: {
            const traffic_rule *r = &rules[fuzz_u8(in) % 5];
            CHECK_RC(traffic_limit(b, key, r, (int64_t)(fuzz_u8(in) % 4), &d), "limit");
            break;
        }
        case 7: {
            traffic_rule r = rules[fuzz_u8(in) % 5];
            int64_t now = (int64_t)fuzz_uint(in, 6);
            CHECK_RC(traffic_limit_at(b, key, &r, 1, now, &d), "limit_at");
            break;
        }
        case 8: {
            struct traffic_stats s;
            CHECK_RC(traffic_stats(b, &s), "stats");
            break;
        }
        case 9: {
            int n = traffic_stats_json(b, buf, sizeof buf);
            if (n >= (int)sizeof buf || (n < 0 && !known_status(n))) fuzz_fail("stats_json returned %d", n);
            break;
        }
        case 10:
            if (sel & 0x40) CHECK_RC(traffic_clear(b), "clear");
            break;
        case 11: {
            uint64_t reclaimed;
            if (t) CHECK_RC(shm_reap_pass(t, &reclaimed), "reap pass");
            break;
        }
        case 12: {
            shm_check_report rep;
            if (t) CHECK_RC(shm_check(t, &rep), "check");
            break;
        }
        default: CHECK_RC(traffic_set(b, keys[LONGK], val, 64, 0), "set long key"); break;
        }
    }
}

int fuzz_table_one(const uint8_t *data, size_t size)
{
    fuzz_in in = {data, size};
    write_damaged(&in);
    traffic_backend *b = NULL;
    int rc = traffic_open(attach_url, &b);
    CHECK_RC(rc, "open");
    if (rc == TRAFFIC_OK) {
        shm_params p = {.name = name};
        shm_table *t = NULL;
        char err[256];
        if (shm_open_table(&p, &t, err, sizeof err) != SHM_OK) t = NULL;
        operate(b, t, &in);
        if (t) shm_close_table(t);
        traffic_close(b);
    }
    traffic_memory_unlink(name);
    return 0;
}
