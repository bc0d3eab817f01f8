/*
 * fuzz_sqlite.c — the SQLite backend on a damaged database: open and operations must answer
 * with a status (TRAFFIC_ECORRUPT for what is damaged), never crash or hang.
 *
 * Once per process a small valid database is built through the public API (bytes, counters,
 * a state of each algorithm, a key with a TTL) and checkpointed into one file, kept as a
 * template. Each input then writes the template into this process's private directory and
 * damages it two ways, as its first byte says:
 *   - bytes: records (offset, length, bytes) overwrite the file, which may also be cut short:
 *     SQLite's own defences, and what the backend makes of SQLITE_CORRUPT / SQLITE_NOTADB;
 *   - rows: through SQLite itself (CHECK constraints off), rows get any kind, counter (the
 *     rate-limit marks and their neighbours included), value (any bytes, or another type) and
 *     expiry, new rows appear with keys of other types, the lease row changes, and now and
 *     then the application id or schema version: what the backend reads back must not be
 *     trusted either (a state blob of the wrong length, a log with absurd times).
 * Then traffic_open and up to FUZZ_OPS operations (get, set, increment, delete, exists, ttl,
 * a decision of each algorithm, stats, clear, a cleanup pass); each must return a known
 * status. The files are removed after each input.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <traffic/traffic.h>

#include "fuzz.h"

#define FUZZ_OPS    16
#define FUZZ_WRITES 16
#define FUZZ_ROWS   8

static const char *dir;
static char db_path[512], url[600];
static unsigned char *tmpl;
static size_t tmpl_size;

static const char *const keys[] = {"c1", "c2", "b1", "b2", "fw", "swc", "sw", "tb", "lb", "ttl", "new"};
#define NKEYS (sizeof keys / sizeof keys[0])

static const traffic_rule rules[5] = {
    {TRAFFIC_SLIDING_WINDOW_COUNTER, 10, 60, 0}, {TRAFFIC_FIXED_WINDOW, 10, 60, 0}, {TRAFFIC_SLIDING_WINDOW, 5, 60, 0},
    {TRAFFIC_TOKEN_BUCKET, 10, 60, 4},          {TRAFFIC_LEAKY_BUCKET, 10, 60, 3},
};

static void must(int rc, const char *what)
{
    if (rc != TRAFFIC_OK) fuzz_fail("building the template: %s: %s (%s)", what, traffic_strerror(rc), traffic_errmsg(NULL));
}

static void build_template(void)
{
    char turl[600];
    snprintf(turl, sizeof turl, "sqlite://%s/template.db", dir);
    traffic_backend *b;
    must(traffic_open(turl, &b), turl);
    traffic_decision d;
    must(traffic_increment(b, "c1", 41, 0, NULL), "c1");
    must(traffic_increment(b, "c2", -7, 1000, NULL), "c2");
    must(traffic_set(b, "b1", "hello", 5, 0), "b1");
    must(traffic_set(b, "b2", "world", 5, 1000), "b2");
    must(traffic_set(b, "ttl", "x", 1, 0.001), "ttl");
    static const char *const state_keys[5] = {"swc", "fw", "sw", "tb", "lb"};
    for (int a = 0; a < 5; a++)
        for (int i = 0; i < 3; i++)
            must(traffic_limit(b, state_keys[a], &rules[a], 1, &d), state_keys[a]);
    must(traffic_close(b), "close");

    /* Everything into the main file (the last connection's close checkpoints; make sure). */
    char tpath[600];
    snprintf(tpath, sizeof tpath, "%s/template.db", dir);
    sqlite3 *db;
    if (sqlite3_open(tpath, &db) != SQLITE_OK ||
        sqlite3_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL) != SQLITE_OK)
        fuzz_fail("checkpoint %s", tpath);
    sqlite3_close(db);
    int fd = open(tpath, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) fuzz_fail("open %s", tpath);
    tmpl_size = (size_t)st.st_size;
    tmpl = malloc(tmpl_size);
    if (!tmpl || pread(fd, tmpl, tmpl_size, 0) != (ssize_t)tmpl_size) fuzz_fail("read %s", tpath);
    close(fd);
    fuzz_empty_dir(dir);
}

void fuzz_sqlite_init(void)
{
    dir = fuzz_private_dir("sqlite");
    snprintf(db_path, sizeof db_path, "%s/db.db", dir);
    snprintf(url, sizeof url, "sqlite://%s?timeout=0.2&cleanup_interval=0.001&pool_size=2", db_path);
    build_template();
}

static void damage_bytes(fuzz_in *in, int fd)
{
    int writes = fuzz_u8(in) % (FUZZ_WRITES + 1);
    for (int w = 0; w < writes; w++) {
        size_t at = (size_t)fuzz_uint(in, 3) % tmpl_size;
        uint8_t how = fuzz_u8(in);
        unsigned char bytes[8] = {0};
        size_t len = 1 + (how & 7);
        if (how & 0x80) {
            int64_t v = fuzz_i64(in);
            memcpy(bytes, &v, sizeof v);
        } else {
            fuzz_bytes(in, bytes, len);
        }
        if (at + len > tmpl_size) len = tmpl_size - at;
        if (pwrite(fd, bytes, len, (off_t)at) != (ssize_t)len) fuzz_fail("damage %s", db_path);
    }
    uint8_t cut = fuzz_u8(in);
    if (cut >= 240 && ftruncate(fd, (off_t)(tmpl_size * (cut - 240) / 16)) < 0) fuzz_fail("truncate %s", db_path);
}

/* Binds parameter i to a value of any type the input chooses. */
static void bind_any(fuzz_in *in, sqlite3_stmt *st, int i)
{
    uint8_t t = fuzz_u8(in);
    unsigned char blob[256];
    size_t n;
    switch (t % 6) {
    case 0: sqlite3_bind_int64(st, i, fuzz_i64(in)); break;
    case 1: sqlite3_bind_int64(st, i, (int64_t)(t >> 3) - 4); break; /* small: kinds and marks */
    case 2:
        n = fuzz_bytes(in, blob, fuzz_u8(in) % sizeof blob);
        sqlite3_bind_blob(st, i, blob, (int)n, SQLITE_TRANSIENT);
        break;
    case 3:
        n = fuzz_bytes(in, blob, fuzz_u8(in) % sizeof blob);
        sqlite3_bind_text(st, i, (const char *)blob, (int)n, SQLITE_TRANSIENT);
        break;
    case 4: sqlite3_bind_double(st, i, (double)fuzz_i64(in) / 7.0); break;
    default: sqlite3_bind_null(st, i); break;
    }
}

/* A state blob of the layout sqlite_limit.c writes (24 bytes + 16 per log entry), filled with
 * numbers that are often at the edges. */
static void bind_state(fuzz_in *in, sqlite3_stmt *st, int i)
{
    int64_t w[3 + 2 * 16];
    size_t n = 3 + 2 * (fuzz_u8(in) % 17);
    if (n > sizeof w / sizeof w[0]) n = sizeof w / sizeof w[0];
    for (size_t k = 0; k < n; k++)
        w[k] = fuzz_i64(in); /* little-endian already on the hosts this runs on */
    size_t len = n * 8 - (fuzz_u8(in) % 8 == 0 ? 8 : 0);
    sqlite3_bind_blob(st, i, w, (int)len, SQLITE_TRANSIENT);
}

static void damage_rows(fuzz_in *in)
{
    sqlite3 *db;
    if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
        sqlite3_close(db);
        return;
    }
    sqlite3_busy_timeout(db, 100);
    sqlite3_exec(db, "PRAGMA ignore_check_constraints = ON", NULL, NULL, NULL);
    static const char *const sql[] = {
        "UPDATE traffic_entries SET kind = ?1 WHERE key = ?2",
        "UPDATE traffic_entries SET counter = ?1 WHERE key = ?2",
        "UPDATE traffic_entries SET value = ?1 WHERE key = ?2",
        "UPDATE traffic_entries SET expires = ?1 WHERE key = ?2",
        "UPDATE traffic_entries SET value = ?1, kind = 0 WHERE key = ?2", /* a state blob */
        "INSERT OR REPLACE INTO traffic_entries (kind, key, counter, value, expires) VALUES (?1, ?2, ?3, ?4, ?5)",
        "INSERT OR REPLACE INTO traffic_lease (owner, id, pid, until) VALUES (?1, ?2, ?3, ?4)",
        "PRAGMA user_version = 2",
        "PRAGMA application_id = 7",
        "DELETE FROM traffic_entries WHERE key = ?2",
    };
    int rows = fuzz_u8(in) % (FUZZ_ROWS + 1);
    for (int r = 0; r < rows; r++) {
        uint8_t sel = fuzz_u8(in);
        size_t which = sel % (sizeof sql / sizeof sql[0]);
        if ((which == 7 || which == 8) && !(sel & 0x80)) which = 1; /* rarely: these end the input at open */
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(db, sql[which], -1, &st, NULL) != SQLITE_OK) break;
        int np = sqlite3_bind_parameter_count(st);
        if (which == 4)
            bind_state(in, st, 1);
        else if (np >= 1)
            bind_any(in, st, 1);
        if (np >= 2) {
            uint8_t k = fuzz_u8(in);
            if (k < 240 || which == 6)
                sqlite3_bind_text(st, 2, keys[k % NKEYS], -1, SQLITE_STATIC);
            else
                bind_any(in, st, 2); /* a key of another type, or odd bytes */
            if (which == 6) sqlite3_bind_int64(st, 2, k < 250 ? 1 : (int64_t)k);
        }
        for (int i = 3; i <= np; i++)
            bind_any(in, st, i);
        sqlite3_step(st);
        sqlite3_finalize(st);
    }
    sqlite3_close(db);
}

static int known_status(int rc)
{
    return rc <= TRAFFIC_OK && rc >= TRAFFIC_ENOTSUP;
}

#define CHECK_RC(rc, what)                                                                                             \
    do {                                                                                                               \
        int r_ = (rc);                                                                                                 \
        if (!known_status(r_)) fuzz_fail("%s returned %d (%s)", what, r_, traffic_errmsg(b));                          \
    } while (0)

static void operate(traffic_backend *b, fuzz_in *in)
{
    char buf[600], val[64];
    memset(val, 'v', sizeof val);
    for (int op = 0; op < FUZZ_OPS && in->n; op++) {
        uint8_t sel = fuzz_u8(in);
        const char *key = keys[fuzz_u8(in) % NKEYS];
        size_t len = 0, cap = sel & 0x80 ? 4 : sizeof buf;
        int64_t v;
        double ttl;
        traffic_decision d;
        switch (sel % 12) {
        case 0: {
            int rc = traffic_get(b, key, buf, cap, &len);
            CHECK_RC(rc, "get");
            if (rc == TRAFFIC_OK && len > cap) fuzz_fail("get: %zu bytes into %zu", len, cap);
            break;
        }
        case 1: CHECK_RC(traffic_set(b, key, val, fuzz_u8(in) % sizeof val, (sel & 0x40) ? 0 : 100), "set"); break;
        case 2: CHECK_RC(traffic_increment(b, key, fuzz_i64(in), (sel & 0x40) ? 0 : 100, &v), "increment"); break;
        case 3: CHECK_RC(traffic_delete(b, key), "delete"); break;
        case 4: {
            int rc = traffic_exists(b, key);
            if (rc != 1) CHECK_RC(rc, "exists");
            break;
        }
        case 5: CHECK_RC(traffic_ttl(b, key, &ttl), "ttl"); break;
        case 6: CHECK_RC(traffic_limit(b, key, &rules[fuzz_u8(in) % 5], (int64_t)(fuzz_u8(in) % 4), &d), "limit"); break;
        case 7: {
            int64_t now = (int64_t)fuzz_uint(in, 6);
            CHECK_RC(traffic_limit_at(b, key, &rules[fuzz_u8(in) % 5], 1, now, &d), "limit_at");
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
        default:
            /* The cleanup thread: a lease, a sweep of expired rows and a checkpoint, within a
             * few of its 1 ms intervals. */
            CHECK_RC(traffic_start_cleanup(b), "start_cleanup");
            usleep(3000);
            CHECK_RC(traffic_stop_cleanup(b), "stop_cleanup");
            break;
        }
    }
}

int fuzz_sqlite_one(const uint8_t *data, size_t size)
{
    fuzz_in in = {data, size};
    uint8_t mode = fuzz_u8(&in);
    int fd = open(db_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || pwrite(fd, tmpl, tmpl_size, 0) != (ssize_t)tmpl_size) fuzz_fail("write %s", db_path);
    if (mode & 1) damage_bytes(&in, fd);
    close(fd);
    if (mode & 2) damage_rows(&in);
    traffic_backend *b = NULL;
    int rc = traffic_open(url, &b);
    if (!known_status(rc)) fuzz_fail("open returned %d", rc);
    if (rc == TRAFFIC_OK) {
        operate(b, &in);
        traffic_close(b);
    }
    fuzz_empty_dir(dir);
    return 0;
}
