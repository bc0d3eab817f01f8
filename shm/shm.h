/*
 * shm.h — the shared-memory hash table behind the memory backend.
 *
 * A table is one mapping (anonymous MAP_SHARED, inherited across fork, or a file in /dev/shm
 * attached by name) that any number of processes and threads update without locks on the
 * read and increment paths. This layer knows nothing of URLs or backends: it takes a key as
 * bytes, returns SHM_* statuses, and explains failures of open in a caller-given buffer.
 * See layout.h for the mapping and table.c for the protocol and its invariants.
 */
#ifndef TRAFFIC_SHM_H
#define TRAFFIC_SHM_H

#include <stddef.h>
#include <stdint.h>

/* Statuses. The numbers equal the public TRAFFIC_E… codes so the adapter maps them 1:1
 * (backends/memory.c asserts this at compile time), but this layer does not include them. */
enum {
    SHM_OK = 0,
    SHM_ENOTFOUND = -1,
    SHM_EINVAL = -2,
    SHM_ETOOBIG = -3,
    SHM_EFULL = -4,
    SHM_ETYPE = -5,
    SHM_EOVERFLOW = -6,
    SHM_EIO = -7,
    SHM_ETIMEDOUT = -9,
    SHM_ECORRUPT = -10,
    SHM_ENOMEM = -11,
    SHM_ERANGE = -12,
    SHM_EPERM = -13,
};

#define SHM_NAME_MAX           200
#define SHM_KEY_LIMIT          250
#define SHM_VALUE_LIMIT        65536
#define SHM_DEFAULT_MAX_SIZE   10000
#define SHM_DEFAULT_KEY_MAX    250
#define SHM_DEFAULT_VALUE_MAX  256
#define SHM_DEFAULT_CLEANUP_MS 60000
#define SHM_MAX_SIZE_LIMIT     (1ull << 31) /* keys; the capacity is a power of two above it */

typedef struct shm_table shm_table;

typedef struct shm_params {
    const char *name;    /* NULL: anonymous mapping; else [A-Za-z0-9._-]{1,200} */
    uint64_t max_size;   /* 0: default / existing */
    uint32_t key_max;    /* 0: default / existing */
    uint32_t value_max;  /* 0: default / existing */
    uint32_t mode;       /* 0: 0600 */
    uint64_t cleanup_ms; /* 0: default / existing */
} shm_params;

typedef struct shm_stats {
    uint64_t keys, capacity, max_size, map_bytes, resident_bytes;
    uint64_t hits, misses, sets, increments, deletes, evictions, expirations, recovered;
    uint64_t attached, epoch, reaper_runs, decisions, denied;
    int64_t reaper_pid;
    uint64_t huge_bytes; /* of the mapping, in huge pages in this process (huge.c) */
} shm_stats;

int shm_open_table(const shm_params *p, shm_table **out, char *err, size_t errlen);
void shm_close_table(shm_table *t);
int shm_unlink_table(const char *name, char *err, size_t errlen);
int shm_name_valid(const char *name);

uint32_t shm_key_max(const shm_table *t);
uint32_t shm_value_max(const shm_table *t);

int shm_get(shm_table *t, const char *key, size_t klen, void *buf, size_t cap, size_t *len);
int shm_set(shm_table *t, const char *key, size_t klen, const void *val, size_t len, int64_t ttl_ms);
int shm_del(shm_table *t, const char *key, size_t klen);
int shm_exists(shm_table *t, const char *key, size_t klen);
int shm_incr(shm_table *t, const char *key, size_t klen, int64_t amount, int64_t ttl_ms, int64_t *out);
int shm_ttl(shm_table *t, const char *key, size_t klen, int64_t *ttl_ms);
int shm_clear(shm_table *t);
int shm_stats_get(shm_table *t, shm_stats *out);

/* ---- rate-limit states -------------------------------------------------------------------
 * This layer knows no algorithm. A state entry has a type of its own, one per kind of state
 * (the memory backend uses one kind per algorithm), of one of two shapes:
 *   SHM_TYPE_WORD(kind)  one 64-bit word, changed by one compare-and-swap: lock-free, and a
 *                        process killed mid-update changed it entirely or not at all;
 *   SHM_TYPE_BLOB(kind)  up to value_max bytes, changed by the slot's versioned write (the
 *                        writer holds the slot WRITING; a dead writer's change is rolled back).
 * shm_state_update looks the key up and calls fn with its current state (present = 0 when the
 * key is absent or expired); fn decides and says through *u whether to store a new state and
 * until when it must live. fn may run several times (each lost race runs it again on the newer
 * state) and must depend only on its arguments. A key holding anything of another type is
 * SHM_ETYPE. now_ms is the caller's reading of CLOCK_MONOTONIC (ms), which the update's expiry
 * checks use. shm_get on a state is SHM_ESTATE (read it with shm_state_get); shm_set replaces a
 * state, shm_incr on one is SHM_ETYPE, shm_del removes it. */
#define SHM_STATE_KINDS  16
#define SHM_TYPE_WORD(k) (16u + (unsigned)(k))
#define SHM_TYPE_BLOB(k) (32u + (unsigned)(k))
enum { SHM_ESTATE = -100 };

typedef struct shm_update {
    int store;          /* 1: store `word` (word types) or buf[0..len) (blob types) */
    int denied;         /* counted in the stats */
    uint64_t word;
    size_t len;
    int64_t expires_ms; /* when stored: absolute CLOCK_MONOTONIC ms the state must live to, > 0 */
} shm_update;
/* Returns SHM_OK or a negative SHM status, which ends shm_state_update with it. old_blob is
 * valid during the call only; buf (cap = value_max bytes) receives a new blob. */
typedef int (*shm_update_fn)(void *ctx, int present, uint64_t old_word, const void *old_blob, size_t old_len,
                             shm_update *u, void *buf, size_t cap);
/* The table's clock in µs: CLOCK_MONOTONIC, read through the TSC where it is invariant, with
 * a calibration that every process of the table shares, so that they agree on it (clock.c). */
int64_t shm_clock_us(shm_table *t);

int shm_state_update(shm_table *t, const char *key, size_t klen, unsigned type, int64_t now_ms, shm_update_fn fn,
                     void *ctx);
/* Reads a state entry: its type, and its word or blob (into buf, cap bytes; *len its length,
 * SHM_ERANGE if cap is short). SHM_ENOTFOUND if absent or expired, SHM_ETYPE if not a state. */
int shm_state_get(shm_table *t, const char *key, size_t klen, unsigned *type, uint64_t *word, void *buf, size_t cap,
                  size_t *len);

/* ---- listing entries (scan.c) -------------------------------------------------------------
 * A pass over the table, a batch at a time: start with *cursor = 0 and call shm_scan_batch
 * until it returns 1. Each call visits at most SHM_SCAN_BATCH slots (pinned for that long
 * only), copies their live unexpired entries into out[] (room for SHM_SCAN_BATCH), sets *n
 * and returns 0 (more to come), 1 (the pass is over) or SHM_EFULL (no participant record
 * free). An entry live and of one type for the whole pass is copied exactly once. */
#define SHM_SCAN_BATCH 1024
enum { SHM_TYPE_BYTES = 1, SHM_TYPE_COUNTER = 2 }; /* besides SHM_TYPE_WORD(k), SHM_TYPE_BLOB(k) */
typedef struct shm_scan_entry {
    unsigned type; /* SHM_TYPE_BYTES, SHM_TYPE_COUNTER, SHM_TYPE_WORD(k) or SHM_TYPE_BLOB(k) */
    uint32_t klen;
    int64_t ttl_ms;              /* remaining, >= 1; -1: no expiry */
    char key[SHM_KEY_LIMIT + 1]; /* NUL-terminated */
} shm_scan_entry;
int shm_scan_batch(shm_table *t, uint64_t *cursor, shm_scan_entry *out, size_t *n);

/* Reaper: a thread of this process that, while elected, reclaims expired slots. */
int shm_reaper_start(shm_table *t);
int shm_reaper_stop(shm_table *t);

/* ---- white-box hooks for tests (not part of the library's API) ------------------------- */

/* One bounded reaper pass over the whole table, run by the calling thread whether elected or
 * not: reclaims expired slots, recovers half-done inserts and writes of dead owners. */
int shm_reap_pass(shm_table *t, uint64_t *reclaimed);

typedef struct shm_check_report {
    uint64_t live, inserting, writing, free_slots, empty;
    uint64_t duplicates;       /* keys present in more than one live slot */
    uint64_t dead_owned;       /* INSERTING/WRITING slots or latches whose owner is dead */
    uint64_t probe_violations; /* live keys beyond their home's probe bound */
    int64_t live_counter;      /* the header's occupancy count, to compare with the slots */
} shm_check_report;
/* Scans every slot (single-threaded use only: call it when the table is quiet). */
int shm_check(shm_table *t, shm_check_report *r);

/* Deliberately broken protocol variants, so the stress tests can show they catch them. */
enum {
    SHM_BROKEN_NO_GRACE = 1,   /* reuse a retired slot at once, without waiting out the epochs */
    SHM_BROKEN_NO_RECHECK = 2, /* readers skip the version re-check after copying a value */
    SHM_BROKEN_NO_LATCH = 4,   /* inserts skip the home latch that makes a key unique */
    SHM_BROKEN_LIMIT_STORE = 8, /* a word state is written by a plain store, not a compare-and-swap */
};
void shm_debug_set_broken(unsigned flags);

/* Test-only crash points: the calling process SIGKILLs itself when it reaches `point` (a
 * process-wide setting, inherited across fork). 0 disables. */
enum { SHM_CRASH_AFTER_RESERVE = 1, SHM_CRASH_HOLDING_LATCH = 2, SHM_CRASH_REPLACING = 3 };
void shm_debug_set_crash_point(int point);
/* Test-only: a rate-limit decision on a blob state holds the slot WRITING for ms milliseconds
 * before it writes (process-wide, inherited across fork; 0 disables). */
void shm_debug_set_blob_write_pause(int ms);

#endif
