/*
 * traffic.h — rate-limit state shared by every process of a server.
 *
 * libtraffic stores small keyed entries (counters and byte values with a TTL) in a store that
 * all processes of a server share, so that "100 requests a minute" holds for the whole server
 * and not for each worker. One handle type, one set of calls, several backends chosen by URL:
 *
 *   memory://          an anonymous shared mapping: open it in the master before fork(), every
 *                      child inherits it. Lock-free; the fastest choice for one host.
 *   memory://NAME      a named table in /dev/shm/traffic.NAME that unrelated processes of the
 *                      same user attach to by name. It is a sparse file: the pages that keys
 *                      use count against /dev/shm's size (64 MB by default in a Docker
 *                      container; the default table's slots map 60 MiB in all). Each page
 *                      is reserved (fallocate) before it is first touched, so when /dev/shm
 *                      is full an insert fails with TRAFFIC_EFULL (the stored keys stay
 *                      readable) instead of SIGBUS killing the process. An anonymous table
 *                      lives in the kernel's own tmpfs, which has no size limit: it cannot
 *                      run out that way (memory itself runs out as an OOM kill).
 *   sqlite://PATH      one SQLite file (WAL) shared by the processes of one host, kept across
 *                      restarts; see "SQLite backend" below.
 *   redis://…          Redis over TCP (redis://), a unix socket (redis+unix://), Sentinel
 *                      (redis+sentinel://) or Cluster (redis+cluster://), shared by many hosts;
 *                      see "Redis backend" below. TRAFFIC_ENOTSUP if built without hiredis.
 *
 * Conventions
 *   - Every call returns TRAFFIC_OK (0) or a negative TRAFFIC_E… status (traffic_exists and
 *     traffic_stats_json also return non-negative results, see there).
 *   - traffic_errmsg(b) names what was wrong in the calling thread's last failure on b (the
 *     key length and the limit, the URL parameter, the path). traffic_errmsg(NULL) gives the
 *     calling thread's last failure of traffic_open / traffic_*_open / traffic_memory_unlink.
 *   - Nothing here prints, exits or aborts on bad input.
 *
 * Caveats (read these)
 *   - Threads: a handle may be used by any number of threads at once. traffic_close must not
 *     race other calls on the same handle.
 *   - Cancellation: a thread cancelled (pthread_cancel) inside a call of the SQLite or Redis
 *     backend is cancelled when the call returns, at its next cancellation point: calls run
 *     with cancellation disabled, so that none leaves a lock held, a pooled connection
 *     checked out or a statement half run.
 *   - fork(): a handle opened before fork() keeps working in the children. The memory backend
 *     shares its mapping; the other backends open their own connections in the child.
 *   - Crashes: a process killed at any instruction (SIGKILL included) blocks nobody: the next
 *     process that meets its half-done insert or write undoes it after one liveness check.
 *     An increment whose process was killed right after the update may or may not have been
 *     counted; every increment that returned TRAFFIC_OK was.
 *   - Memory backend, per-thread resources: each thread that uses a memory table holds a
 *     participant record in it (at most TRAFFIC_MEMORY_MAX_PARTICIPANTS per table at once)
 *     until it exits or next calls the library after the handle was closed; the mapping itself
 *     is released when the last of those records is.
 *   - Time: TTLs have millisecond resolution. The memory backend runs them on CLOCK_MONOTONIC,
 *     which wall-clock steps do not move (a named table lives in /dev/shm and does not survive a
 *     reboot anyway). The SQLite file outlives reboots, so its expiries are wall-clock
 *     (CLOCK_REALTIME) milliseconds; Redis keeps its own (PEXPIRE). Processes sharing a named
 *     table must share a time namespace: containers started with their own (unshare -T,
 *     CLOCK_MONOTONIC offsets) would disagree on every expiry and decision.
 *   - Processes made with _Fork() or a raw clone() do not run fork handlers: a memory handle
 *     must not be used in such a child (it would share the parent's participant record).
 */
#ifndef TRAFFIC_TRAFFIC_H
#define TRAFFIC_TRAFFIC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define TRAFFIC_API __attribute__((visibility("default")))
#else
#define TRAFFIC_API
#endif

/* ---------------------------------------------------------------------------------------- */
/* Status codes                                                                              */
/* ---------------------------------------------------------------------------------------- */
#define TRAFFIC_OK 0
#define TRAFFIC_ENOTFOUND (-1)    /* key absent or expired */
#define TRAFFIC_EINVAL (-2)       /* bad argument or URL */
#define TRAFFIC_ETOOBIG (-3)      /* key or value over the backend's limit */
#define TRAFFIC_EFULL (-4)        /* no room, and nothing could be evicted */
#define TRAFFIC_ETYPE (-5)        /* increment on an entry that is not a counter */
#define TRAFFIC_EOVERFLOW (-6)    /* the counter would leave the int64_t range */
#define TRAFFIC_EIO (-7)          /* an operating-system or library I/O failure */
#define TRAFFIC_EUNAVAILABLE (-8) /* server unreachable after retries */
#define TRAFFIC_ETIMEDOUT (-9)    /* the operation did not finish in time */
#define TRAFFIC_ECORRUPT (-10)    /* a mapping or database failed validation */
#define TRAFFIC_ENOMEM (-11)      /* out of memory */
#define TRAFFIC_ERANGE (-12)      /* caller's buffer too small; the needed length is reported */
#define TRAFFIC_EPERM (-13)       /* permission denied */
#define TRAFFIC_ENOTSUP (-14)     /* the backend or operation is not built into this library */

/* Limits common to every backend. */
#define TRAFFIC_KEY_MAX 250                   /* bytes in a key, excluding the NUL */
#define TRAFFIC_MEMORY_VALUE_MAX_LIMIT 65536  /* the largest value_max a memory table accepts */
#define TRAFFIC_MEMORY_MAX_PARTICIPANTS 4095  /* threads attached to one memory table at once */

typedef struct traffic_backend traffic_backend;

/* The name of a status ("TRAFFIC_ENOTFOUND: key not found or expired"). Never NULL. */
TRAFFIC_API const char *traffic_strerror(int status);

/* The detail of the calling thread's last failure on b, or "" if there was none.
 * b == NULL: the last failure of an open or unlink call in this thread. */
TRAFFIC_API const char *traffic_errmsg(const traffic_backend *b);

/* ---------------------------------------------------------------------------------------- */
/* Opening and closing                                                                       */
/* ---------------------------------------------------------------------------------------- */

/* Opens a store by URL (see the top of this file and SPEC.md). Query parameters not known to
 * the chosen backend are TRAFFIC_EINVAL, naming the parameter in traffic_errmsg(NULL). Any
 * URL may add fallback=URL, a store that answers while this one is down (see "When the
 * store is down" below).
 * memory:// parameters: max_size (keys, default 10000), cleanup_interval (seconds, default
 * 60), key_max (1..250, default 250), value_max (1..65536, default 256), mode (octal, default
 * 0600, named tables only).
 * @retval TRAFFIC_OK        *out holds the new handle
 * @retval TRAFFIC_EINVAL    malformed URL, unknown scheme or parameter, bad value
 * @retval TRAFFIC_ENOTSUP   a scheme whose backend is not built into this library
 * @retval TRAFFIC_ECORRUPT  an existing table or database failed validation
 * @retval TRAFFIC_EPERM     the OS refused access (mode, owner)
 * @retval TRAFFIC_ENOMEM / TRAFFIC_EIO */
TRAFFIC_API int traffic_open(const char *url, traffic_backend **out);

/* Releases the handle (stops its cleanup thread if this process started one). A named memory
 * table stays in /dev/shm; see traffic_memory_unlink. NULL is accepted and ignored. */
TRAFFIC_API int traffic_close(traffic_backend *b);

/* Options of the memory backend. Zero in a field means "the default", or for an existing
 * named table "whatever the table was created with". */
typedef struct traffic_memory_options {
    const char *name;        /* NULL or "": anonymous (inherited across fork); else NAME */
    uint64_t max_size;       /* most keys kept; LRU eviction beyond (default 10000) */
    double cleanup_interval; /* seconds between reaper passes (default 60) */
    uint32_t key_max;        /* longest key in bytes, 1..250 (default 250) */
    uint32_t value_max;      /* longest bytes value, 1..65536 (default 256) */
    uint32_t mode;           /* permission bits of a new named table (default 0600) */
} traffic_memory_options;

/* Opens a memory table with typed options (opts may be NULL: an anonymous default table).
 * Opening an existing named table checks its magic, format version and layout word
 * (TRAFFIC_ECORRUPT on mismatch) and that any geometry given here matches it
 * (TRAFFIC_EINVAL otherwise). Same status codes as traffic_open. */
TRAFFIC_API int traffic_memory_open(const traffic_memory_options *opts, traffic_backend **out);

/* A damaged table. Every process that can write a named table's file (its mode decides who)
 * shares its fate, so the library treats what it reads from the mapping as untrusted:
 *   - defended: the header is validated at attach (TRAFFIC_ECORRUPT) and its geometry is
 *     kept in the process, never re-read; every index, length, count, probe bound and
 *     participant number read later is bounded before use; a waiting loop on a slot or latch
 *     whose owner looks alive ends after 2 s with TRAFFIC_ETIMEDOUT; damaged clock parameters
 *     are replaced within a second (a rate no TSC has at once); participant records whose mutex is malformed are left
 *     unused. Damage then gives wrong values or a status, never a crash, a hang, or a write
 *     outside the mapping (fuzz/fuzz_table.c runs this in CI).
 *   - not defended: a participant's robust mutex is a glibc pthread_mutex_t in the mapping,
 *     and glibc links the robust mutexes a thread holds through pointers stored in those
 *     mutexes; a write into the record of a thread that holds it can crash that thread when
 *     it next unlocks or exits. Wrong-but-wellformed data (a counter set to another number, a
 *     key's state rewritten) is not detectable and is not detected.
 * A full /dev/shm is not damage: operations that need new memory fail with TRAFFIC_EFULL. */

/* Removes the named table /dev/shm/traffic.NAME. Processes that have it open keep using it
 * until they close it. @retval TRAFFIC_ENOTFOUND if there was no such table. */
TRAFFIC_API int traffic_memory_unlink(const char *name);

/* ---------------------------------------------------------------------------------------- */
/* Operations                                                                                */
/*                                                                                           */
/* Keys are NUL-terminated strings of 1..250 bytes (NULL or "": TRAFFIC_EINVAL; longer, or   */
/* longer than a memory table's key_max: TRAFFIC_ETOOBIG). TTLs are seconds: 0 means no      */
/* expiry, a positive value is rounded up to whole milliseconds, negative / NaN / infinite / */
/* over 1e12 are TRAFFIC_EINVAL. Expired entries are never returned, reaper or not.          */
/* ---------------------------------------------------------------------------------------- */

/* Copies the value of key into buf (cap bytes) and sets *len to its length. A counter reads
 * as its decimal text, as in Redis. buf may be NULL when cap is 0 (a length query).
 * @retval TRAFFIC_ENOTFOUND absent or expired
 * @retval TRAFFIC_ERANGE    cap < length; *len still holds the length needed */
TRAFFIC_API int traffic_get(traffic_backend *b, const char *key, void *buf, size_t cap,
                            size_t *len);

/* Stores len bytes (NULs allowed; val may be NULL when len is 0) with a TTL, replacing any
 * earlier value or counter of that key.
 * @retval TRAFFIC_ETOOBIG  len over the backend's value limit
 * @retval TRAFFIC_EFULL    the store is full and nothing could be evicted */
TRAFFIC_API int traffic_set(traffic_backend *b, const char *key, const void *val, size_t len,
                            double ttl);

/* Removes key. TRAFFIC_OK also when it was absent. */
TRAFFIC_API int traffic_delete(traffic_backend *b, const char *key);

/* 1 if key is present and not expired, 0 if not, or a negative status. */
TRAFFIC_API int traffic_exists(traffic_backend *b, const char *key);

/* Adds amount (may be negative) to the counter key atomically and stores the new value in
 * *out (out may be NULL). A missing or expired key starts at 0 and gets ttl (0: no expiry);
 * an existing counter keeps its expiry whatever ttl says.
 * @retval TRAFFIC_ETYPE     the key holds a bytes value (made by traffic_set)
 * @retval TRAFFIC_EOVERFLOW the result would leave int64_t; the counter is unchanged */
TRAFFIC_API int traffic_increment(traffic_backend *b, const char *key, int64_t amount,
                                  double ttl, int64_t *out);

/* Remaining TTL in seconds (millisecond resolution), or -1 for an entry without expiry.
 * @retval TRAFFIC_ENOTFOUND absent or expired */
TRAFFIC_API int traffic_ttl(traffic_backend *b, const char *key, double *seconds);

/* Removes every key of this store (Redis: only the keys under the prefix). */
TRAFFIC_API int traffic_clear(traffic_backend *b);

/* ---------------------------------------------------------------------------------------- */
/* Rate limits                                                                               */
/*                                                                                           */
/* traffic_limit answers "may this request pass?" as one atomic step inside the store:      */
/* decisions on one key are linearizable across processes, threads and hosts (what passes is */
/* what some one-at-a-time order of the same calls lets pass) and a denied request consumes  */
/* nothing. Each algorithm is one pure function (state, now, rule, cost -> new state,        */
/* decision), traffic_limit_apply in backend.h, run by the memory and SQLite backends and    */
/* mirrored by the Redis backend's Lua scripts.                                              */
/*                                                                                           */
/* Time is integer microseconds of the store's clock: memory CLOCK_MONOTONIC (read through  */
/* the TSC where it is invariant, with a calibration kept in the table, so that all of its  */
/* processes agree on it and a decision does not pay a full clock_gettime; it stays within  */
/* µs of CLOCK_MONOTONIC; TRAFFIC_NO_TSC=1 in the environment reads clock_gettime instead), */
/* SQLite the wall clock (CLOCK_REALTIME), Redis the server's TIME (so that hosts with      */
/* skewed clocks agree). Below, W = window in µs (rounded to the nearest µs), L = limit, now = the clock,  */
/* and for the buckets I = ceil(W / L), the interval between two admissions at the steady   */
/* rate (rounded up: a rule is never exceeded, at most 1 µs per interval slower).           */
/*                                                                                           */
/* TRAFFIC_FIXED_WINDOW  state (S, N). A window opens at the first request that consumes:    */
/*   S = now rounded down to the millisecond, N = 0; it lasts while now < S + W.             */
/*   allowed = N + cost <= L (then N += cost).   remaining = L - N.                          */
/*   reset_after = S + W - now while N > 0, else 0.   retry_after = S + W - now.             */
/* TRAFFIC_SLIDING_WINDOW_COUNTER  state (i, P, C): windows aligned on multiples of W,       */
/*   i = floor(now / W), P the count of window i - 1, C of window i (a state of an older     */
/*   window rolls forward: C -> P when one window old, both 0 when older).                   */
/*   e = now - i W,  weight = (W - e) / W,  est = P * weight + C  (IEEE doubles, this order). */
/*   allowed = est + cost <= L (then C += cost).  remaining = floor(L - est'), est' after.   */
/*   reset_after = (i + 2) W - now if C > 0, (i + 1) W - now if only P > 0, else 0.          */
/*   retry_after = the first instant at which est + cost <= L with no further traffic: in    */
/*   window i at e = W - (L - cost - C) W / P when L - cost - C >= 0, else in window i + 1   */
/*   at e = W - (L - cost) W / C (rounded up to the µs; 0 into the window if that is < 0).  */
/* TRAFFIC_SLIDING_WINDOW  (exact) state: the log of admitted requests (t, cost), those with */
/*   t + W <= now dropped. used = sum of costs. allowed = used + cost <= L (then (now, cost)  */
/*   is appended).  remaining = L - used'.  reset_after = t_last + W - now (0: empty log).   */
/*   retry_after = t_k + W - now for the oldest entry k whose expiry brings used + cost <= L. */
/*   L <= TRAFFIC_SLIDING_WINDOW_LIMIT_MAX (the memory backend: also 8 + 8 L <= value_max).  */
/* TRAFFIC_TOKEN_BUCKET  state: T, the theoretical arrival time (GCRA). Capacity B = burst   */
/*   (0: L), one token back every I. t0 = max(T, now), T' = t0 + cost I.                    */
/*   allowed = T' - now <= B I (then T = T').   remaining = floor((now + B I - T) / I).      */
/*   reset_after = max(T - now, 0) (until full).  retry_after = T' - B I - now.              */
/* TRAFFIC_LEAKY_BUCKET  nginx limit_req: requests leave at one per I; Q = burst (0: L) may  */
/*   wait. State T, when the queue is empty. t0 = max(T, now), T' = t0 + cost I.             */
/*   allowed = T' - I - now <= Q I (then T = T'); delay = T' - I - now, the time the caller  */
/*   should hold the request (0 for the first of an idle key, I for the next, ...).          */
/*   remaining = floor((now + (Q + 1) I - max(T, now)) / I).   reset_after = max(T - now, 0). */
/*   retry_after = T + (cost - 1 - Q) I - now.                                               */
/*                                                                                           */
/* Every algorithm: cost 0 is a peek that changes nothing (the seed's get_state): allowed,    */
/* retry_after and delay are those a request of cost 1 would get now, remaining the number  */
/* of cost-1 requests that would pass now. A cost above what the rule can ever admit         */
/* (L for the windows, B or Q + 1 for the buckets) is denied with retry_after = -1 (never).  */
/* decision.limit is that same most-at-once figure. Seconds are the µs figures / 1e6.        */
/*                                                                                           */
/* Storage: a key holds one algorithm's state; its TTL follows reset_after, so an unused key */
/* disappears by itself: at least reset_after, and the memory and SQLite backends may give  */
/* it up to an eighth more (+1 ms) when they move it, so that a busy key does not rewrite   */
/* its expiry with every admission. traffic_limit on a key holding bytes, a counter or      */
/* another algorithm's state is TRAFFIC_ETYPE; traffic_delete resets a key; traffic_get     */
/* returns the state as JSON text, e.g. {"algorithm":"token_bucket","tat_us":1234} (a       */
/* sliding window counter's "window" is its number modulo 2^24); traffic_set replaces it.   */
/* Changing a key's rule (limit, window, burst) reinterprets its state.                      */
/* ---------------------------------------------------------------------------------------- */

typedef enum traffic_algorithm {
    TRAFFIC_SLIDING_WINDOW_COUNTER = 0, /* the default: previous window weighted + current */
    TRAFFIC_FIXED_WINDOW,               /* a window that starts at the key's first hit */
    TRAFFIC_SLIDING_WINDOW,             /* exact: a log of the admitted requests' times */
    TRAFFIC_TOKEN_BUCKET,               /* capacity `burst`, refilled at limit/window */
    TRAFFIC_LEAKY_BUCKET,               /* nginx limit_req: rate limit/window, `burst` queued with a delay */
} traffic_algorithm;

typedef struct traffic_rule {
    traffic_algorithm algorithm;
    int64_t limit; /* requests per window, >= 1 */
    double window; /* seconds, > 0 */
    int64_t burst; /* buckets: capacity (token) or queue depth (leaky); 0 = limit, as the seed */
} traffic_rule;

typedef struct traffic_decision {
    int allowed;        /* 1: pass; 0: reply 429 */
    int64_t limit;      /* the quota to advertise (X-RateLimit-Limit) */
    int64_t remaining;  /* requests of cost 1 that would pass right after this one */
    double reset_after; /* seconds until the key is back to its unused state */
    double retry_after; /* denied: seconds until this request would pass (-1: never); allowed: 0 */
    double delay;       /* leaky bucket: seconds to hold an allowed request to smooth it; else 0 */
} traffic_decision;

/* Rule bounds, the same on every backend. */
#define TRAFFIC_WINDOW_MIN_S 0.001              /* windows: 1 ms .. */
#define TRAFFIC_WINDOW_MAX_S 1e8                /* .. about 3 years */
#define TRAFFIC_WINDOW_LIMIT_MAX 1048575        /* fixed window, sliding window counter: 2^20 - 1 */
#define TRAFFIC_SLIDING_WINDOW_LIMIT_MAX 10000  /* the exact log */
#define TRAFFIC_BUCKET_MAX_US 2251799813685248LL /* buckets: B I (or (Q + 1) I) <= 2^51 µs */

/* Decides whether a request of `cost` (>= 0) on key passes under rule, atomically, and fills
 * *out (out may be NULL).
 * @retval TRAFFIC_OK      *out holds the decision, allowed or not
 * @retval TRAFFIC_EINVAL  NULL rule or key, unknown algorithm, limit < 1, a window that is
 *                         NaN, infinite or outside [TRAFFIC_WINDOW_MIN_S, TRAFFIC_WINDOW_MAX_S],
 *                         burst < 0 (or > 0 for a window algorithm), cost < 0, or a rule over
 *                         the bounds above (a bucket faster than 1 per µs) - the message names it
 * @retval TRAFFIC_ETYPE   the key holds bytes, a counter or another algorithm's state
 * @retval TRAFFIC_ENOTSUP a custom backend without decisions
 * and the store's own failures (TRAFFIC_EFULL, TRAFFIC_EUNAVAILABLE, ...). */
TRAFFIC_API int traffic_limit(traffic_backend *b, const char *key, const traffic_rule *rule, int64_t cost,
                              traffic_decision *out);

/* traffic_limit at an explicit instant now_us (0 <= now_us < 2^52) of the store's clock
 * instead of reading it: for simulations and tests, which drive time themselves. A key's decisions should not
 * mix the two (a state written at a simulated time is read at the clock's time). The key's
 * storage TTL still runs on the real clock, for reset_after from the simulated instant. The
 * memory backend keeps a sliding window counter's window number modulo 2^24 and reads it as
 * the nearest window to now's, up to 2^23 back or ahead: a simulated jump forward of 2^23
 * windows or more on a key still stored is misread there (as the clock going back: denials,
 * never extra admissions). Real time cannot do it: the key expires two windows after its
 * last use. */
TRAFFIC_API int traffic_limit_at(traffic_backend *b, const char *key, const traffic_rule *rule, int64_t cost,
                                 int64_t now_us, traffic_decision *out);

/* Parses a rule written ALGO:LIMIT/WINDOW[,burst=N], e.g. "token_bucket:100/60s,burst=20" or
 * "fixed_window:5/1m": ALGO one of the names below (omitted with its colon: the sliding window
 * counter), WINDOW a positive number with an optional unit ms, s (default), m, h or d. The
 * result is checked as traffic_limit would check it.
 * @retval TRAFFIC_EINVAL with the reason in msg (msg may be NULL) */
TRAFFIC_API int traffic_rule_parse(const char *text, traffic_rule *out, char *msg, size_t msglen);

/* The algorithm's name as written in rules and JSON ("sliding_window_counter", "fixed_window",
 * "sliding_window", "token_bucket", "leaky_bucket"), or NULL for an unknown value. */
TRAFFIC_API const char *traffic_algorithm_name(traffic_algorithm a);

/* ---------------------------------------------------------------------------------------- */
/* Statistics and cleanup                                                                    */
/* ---------------------------------------------------------------------------------------- */

/* SPEC.md writes the stats type and the stats call with the same name, which C cannot have
 * (a typedef and a function share one namespace). The type is therefore `struct traffic_stats`
 * (also spelled traffic_stats_t); the call keeps the name traffic_stats.
 *
 * Counters are totals over every process attached to the store since it was created (memory)
 * or since this handle was opened (other backends). A figure a backend does not keep is 0. */
struct traffic_stats {
    const char *backend;   /* "memory", "sqlite", "redis", or a custom backend's name */
    uint64_t keys;         /* entries holding room now, expired-not-yet-reaped included */
    uint64_t capacity;     /* slots of the table (memory) */
    uint64_t max_size;     /* most keys kept before eviction */
    uint64_t bytes_used;   /* memory: bytes mapped; sqlite: file size */
    uint64_t bytes_resident; /* memory: bytes of the mapping actually in RAM */
    uint64_t hits;         /* get / exists / ttl that found the key */
    uint64_t misses;       /* get / exists / ttl that did not */
    uint64_t sets;
    uint64_t increments;
    uint64_t deletes;      /* deletes that removed a key */
    uint64_t evictions;    /* keys dropped to stay within max_size */
    uint64_t expirations;  /* expired keys reclaimed */
    uint64_t attached;     /* memory: threads attached now, all processes */
    uint64_t recovered;    /* memory: dead participants and half-done writes recovered */
    uint64_t epoch;        /* memory: the reclamation epoch */
    int64_t reaper_pid;    /* memory: pid of the elected reaper, 0 if none */
    uint64_t reaper_runs;  /* reaper passes completed */
    uint64_t expired_pending; /* sqlite: expired rows not yet swept */
    uint64_t wal_bytes;    /* sqlite: size of the WAL file */
    uint64_t busy_retries; /* sqlite: waits for another writer */
    uint64_t decisions;    /* traffic_limit calls answered (peeks included) */
    uint64_t denied;       /* of those, the ones that denied */
    /* A store opened with fallback= (see "When the store is down"); 0 in every other store.
     * The figures above are those of the store named in `backend`: the one serving. */
    uint64_t serving;          /* TRAFFIC_SERVING_PRIMARY or TRAFFIC_SERVING_FALLBACK */
    uint64_t serving_since_ms; /* wall-clock ms (Unix epoch) of the last switch, host-wide */
    uint64_t switches;         /* host: switches between primary and fallback, both ways */
    uint64_t probes;           /* host: calls sent to a failed primary to see if it is back */
    uint64_t primary_failures; /* this handle: calls the primary failed with EUNAVAILABLE /
                                  ETIMEDOUT (each answered by the fallback instead) */
    uint64_t huge_bytes; /* memory: bytes of the table this process maps with huge pages (the
                            heads of a large, dense table, where the system's transparent huge
                            pages for shared memory allow it; see README, "Large tables") */
};
#define TRAFFIC_SERVING_PRIMARY 1  /* stats.serving: the primary answers */
#define TRAFFIC_SERVING_FALLBACK 2 /* stats.serving: the primary is skipped, the fallback answers */
typedef struct traffic_stats traffic_stats_t;

TRAFFIC_API int traffic_stats(traffic_backend *b, struct traffic_stats *out);

/* Writes the stats as one JSON object, NUL-terminated, and returns its length (excluding the
 * NUL). With buf == NULL and cap == 0 it only returns the length needed.
 * @retval TRAFFIC_ERANGE cap too small (call with cap 0 for the length) */
TRAFFIC_API int traffic_stats_json(traffic_backend *b, char *buf, size_t cap);

/* Starts (stops) this process's background reaper thread, which every cleanup_interval
 * removes expired entries in bounded batches. Any number of processes may start one; the
 * table elects one to work at a time and another takes over when its process dies.
 * Starting twice is TRAFFIC_OK; stopping when not started is TRAFFIC_OK.
 * A child after fork() does not inherit the parent's reaper thread. */
TRAFFIC_API int traffic_start_cleanup(traffic_backend *b);
TRAFFIC_API int traffic_stop_cleanup(traffic_backend *b);

/* Runs one cleanup pass now, in the calling thread, whether or not a cleanup thread runs or
 * another process is elected: the memory backend reclaims every expired entry and undoes the
 * half-done inserts and writes of dead processes (the reaper's pass, in bounded batches);
 * SQLite deletes every expired row, SQ_SWEEP_BATCH (256) per short transaction. *removed
 * (may be NULL) gets the number of entries reclaimed. A fallback= store reaps each of its
 * stores that can.
 * @retval TRAFFIC_ENOTSUP Redis, which expires keys itself, and a custom backend without it */
TRAFFIC_API int traffic_reap(traffic_backend *b, uint64_t *removed);

/* ---------------------------------------------------------------------------------------- */
/* Listing keys                                                                              */
/* ---------------------------------------------------------------------------------------- */

/* What a key holds, as traffic_scan reports it. A rate-limit state is TRAFFIC_KIND_LIMIT plus
 * its traffic_algorithm: TRAFFIC_KIND_IS_LIMIT(k), then TRAFFIC_KIND_ALGORITHM(k).
 * TRAFFIC_KIND_OTHER is Redis only: a key under the prefix that is no entry of this library
 * (a hash, a list, ... written by another client). */
#define TRAFFIC_KIND_BYTES        1  /* a value stored by traffic_set */
#define TRAFFIC_KIND_COUNTER      2  /* a counter made by traffic_increment */
#define TRAFFIC_KIND_OTHER        3  /* not an entry of this library (Redis) */
#define TRAFFIC_KIND_LIMIT        16 /* + a traffic_algorithm: that algorithm's rate-limit state */
#define TRAFFIC_KIND_IS_LIMIT(k)  ((k) >= TRAFFIC_KIND_LIMIT && (k) < TRAFFIC_KIND_LIMIT + 16)
#define TRAFFIC_KIND_ALGORITHM(k) ((traffic_algorithm)((k)-TRAFFIC_KIND_LIMIT))

#define TRAFFIC_GLOB_MAX 1024 /* bytes in a traffic_scan pattern */

/* "bytes", "counter", "other", or for every rate-limit state "limit" (traffic_algorithm_name
 * names its algorithm); NULL for an unknown value. */
TRAFFIC_API const char *traffic_kind_name(int kind);

/* Called by traffic_scan for each key. key is NUL-terminated and valid during the call only;
 * klen is its length (on Redis a key that another client wrote under the prefix may be
 * longer than TRAFFIC_KEY_MAX). kind is a TRAFFIC_KIND_ value; ttl_seconds the remaining
 * TTL (millisecond resolution), or -1 for a key without expiry. Return 0 to go on; any other
 * value stops the scan, and traffic_scan returns it. */
typedef int (*traffic_scan_fn)(void *ctx, const char *key, size_t klen, int kind, double ttl_seconds);

/* Calls fn for each live key of the store whose name matches glob (NULL: every key).
 *
 * The glob is Redis's MATCH syntax, on bytes, case-sensitive: `*` any run of bytes, `?` any
 * one byte, `[abc]` one of a set, `[^abc]` one not in it, `[a-z]` a range (ranges compare
 * bytes as unsigned values; Redis on x86 compares them as signed chars, which differs for
 * bytes >= 0x80), `\` takes the next byte literally. traffic_glob_match (backend.h) is the
 * matcher. Over the keys of a Redis store, the glob applies to the key without the prefix.
 *
 * Guarantees: a key that is live for the whole scan, and keeps its kind, is reported exactly
 * once (Redis: at least once, as SCAN promises; a key may come twice). A key created,
 * deleted, expired, evicted or changed to another kind during the scan (a traffic_set over
 * a counter makes a new entry) may be reported once, twice or not at all. An expired key is
 * never reported. The order is unspecified.
 *
 * The work is done in bounded batches, and fn runs between them, holding nothing a writer
 * could wait for (no pinned epoch, read transaction or pooled connection): fn may take its
 * time, and may call the library on this handle (delete the key it is given, ...).
 *   memory  one pass over the table's slots, visiting only pages that ever held an entry:
 *           1024 slots at a time, the reclamation epoch pinned only while a batch is copied
 *   sqlite  keys in byte order, 256 rows per read statement (keyset pagination: each batch
 *           resumes after the last key of the one before; a glob that starts with a literal
 *           prefix reads only that range of the key index)
 *   redis   SCAN 0 MATCH <prefix><glob> COUNT 1000 on every master (each node of a Cluster),
 *           and the kind and TTL of each batch's keys in one pipelined round trip; only keys
 *           under this handle's prefix, reported without it
 *   fallback= the store serving (see "When the store is down"); a scan that the primary fails
 *           after it reported keys is not replayed on the fallback (that would mix two stores'
 *           keys): it fails with the primary's status. A memory fallback's own keys include
 *           the breaker's (traffic:breaker:...), listed like any other
 * @retval TRAFFIC_OK      every matching key was reported
 * @retval other           fn's non-zero return value, when fn stopped the scan
 * @retval TRAFFIC_EINVAL  NULL handle or fn, a glob over TRAFFIC_GLOB_MAX bytes
 * @retval TRAFFIC_ENOTSUP a custom backend without scan
 * and the store's own failures (TRAFFIC_EUNAVAILABLE, ...). */
TRAFFIC_API int traffic_scan(traffic_backend *b, const char *glob, traffic_scan_fn fn, void *ctx);

/* ---------------------------------------------------------------------------------------- */
/* SQLite backend                                                                           */
/*                                                                                          */
/* One database file shared by every process of a host that opens it; the state survives    */
/* restarts and reboots. The file is created with its schema on first open and marked with  */
/* PRAGMA application_id 0x54524643 ("TRFC") and PRAGMA user_version 1. Opening a file that */
/* is not a SQLite database, belongs to another application, or carries another schema      */
/* version, or is encoded in UTF-16 (keys are bytes, which UTF-16 text would alter) is      */
/* TRAFFIC_ECORRUPT (the file is left untouched); damage deeper in the file is reported as  */
/* TRAFFIC_ECORRUPT by the operation that reads it.                                         */
/*                                                                                          */
/* Time: unlike the memory backend, expiry is stored as absolute wall-clock time            */
/* (CLOCK_REALTIME, milliseconds since the epoch), because the file outlives the process    */
/* and the boot, and CLOCK_MONOTONIC restarts at every boot. Stepping the wall clock        */
/* therefore moves every expiry: forward by an hour expires entries an hour early, backward */
/* keeps them longer. A TTL counts from the moment the write holds the lock (read inside    */
/* the statement), so a write that waited for other writers does not shorten it. Processes  */
/* sharing one file must share one clock (one host).                                        */
/*                                                                                          */
/* Concurrency: journal_mode=WAL, synchronous=NORMAL (a power cut may lose the last         */
/* transactions, never corrupts the file; a process crash loses nothing acknowledged). Each */
/* process keeps a pool of up to pool_size connections, each used by one thread at a time.  */
/* Readers do not wait for writers' locks, but any call may wait for a free pooled          */
/* connection when all of them are busy. A writer waits for the others, and a call waits in */
/* all, up to `timeout` (default 5 s, counted on CLOCK_MONOTONIC from the start of the      */
/* call, the wait for a pooled connection and the opening of a new one included) and only   */
/* then fails with TRAFFIC_ETIMEDOUT; it never reports SQLITE_BUSY before that. Checkpoints */
/* never wait (a long-lived reader such as a backup only lets the WAL grow until it ends).  */
/* A writer that claimed the turnstile and is then stopped (SIGSTOP) slows other writers by */
/* up to 20 ms per write until it resumes. Writers of all processes take turns fairly: one  */
/* that has waited 2 ms claims an OFD lock on the file PATH-turn and the others let it go   */
/* first (the file is created next to the database, like PATH-wal and PATH-shm, and is only */
/* ever locked).                                                                            */
/*                                                                                          */
/* A full disk, or a file system the kernel turned read-only: writes fail with TRAFFIC_EIO  */
/* and a message naming it ("disk full", "disk quota exceeded", "read-only file system"),   */
/* not TRAFFIC_EFULL; reads keep working, the file stays consistent, no write that returned */
/* TRAFFIC_OK is lost (a checkpoint that cannot finish leaves the WAL as it was), and the   */
/* same handle writes again as soon as the file system recovers.                            */
/*                                                                                          */
/* fork(): the child opens its own connections on first use and never uses the parent's.   */
/* A pthread_atfork handler waits for the calls in flight in other threads and closes this  */
/* process's idle connections, so that no SQLite lock state crosses fork() (SQLite's rule:  */
/* never carry a connection across fork()); the parent reopens them on next use. So fork()  */
/* can wait up to `timeout` for a call stuck on another program's lock, and must not be     */
/* called from a signal handler that interrupted a traffic call, nor may an atfork handler  */
/* of the application call into this backend: both deadlock.                                */
/*                                                                                          */
/* traffic_start_cleanup: every cleanup_interval one process (elected by a lease row in the */
/* file, handed over when it stops or when its lease of 2 intervals + 1 s runs out) deletes */
/* expired rows in small batches; every second the thread also runs a passive WAL           */
/* checkpoint, so that requests rarely pay for one. Stats: keys (rows, expired-not-swept    */
/* included), expired_pending, bytes_used (file size), wal_bytes, busy_retries              */
/* (busy-handler waits of this handle), reaper_pid (the lease holder), and this handle's    */
/* counts (decisions and denied included).                                                  */
/*                                                                                          */
/* Rate limits: each traffic_limit is ONE transaction: BEGIN IMMEDIATE (the write lock,     */
/* waited for like any write: up to `timeout`, never SQLITE_BUSY before it), read the key's */
/* row, traffic_limit_apply, write the new state only if that changed it, COMMIT. So        */
/* decisions are linearizable with every write of every process, a denial writes nothing,   */
/* and a process killed mid-decision applies all of it or nothing. The clock is the wall    */
/* clock in microseconds, read once the lock is held (traffic_limit_at: the given instant); */
/* the key expires at the real wall clock then + reset_after, rounded up to the ms. A state */
/* is a row of traffic_entries with kind 0 (as bytes) and counter 1 + the algorithm         */
/* (bytes: counter 0), its value the state's integers as little-endian int64: a, b, c of    */
/* traffic_limit_state (backend.h), then the sliding window's (t_us, n) pairs. No schema    */
/* change (user_version stays 1); an older version of this library reads such a row as      */
/* bytes (and refuses to increment it).                                                     */
/*                                                                                          */
/* URL: sqlite://PATH (sqlite:///abs/path.db, sqlite://relative.db, percent-decoded; a      */
/* relative path is resolved against the working directory at open) with parameters         */
/* cleanup_interval (seconds, default 300), pool_size (1..64, default 4) and timeout        */
/* (seconds a call waits for other writers, default 5).                                     */
/* ---------------------------------------------------------------------------------------- */

#define TRAFFIC_SQLITE_VALUE_MAX 1048576 /* bytes in a value of the SQLite backend (1 MiB) */
#define TRAFFIC_SQLITE_POOL_MAX 64       /* the largest pool_size */

/* Options of the SQLite backend. Zero in a field means "the default". */
typedef struct traffic_sqlite_options {
    const char *path;        /* the database file (required); its directory must exist */
    double cleanup_interval; /* seconds between cleanup passes (default 300) */
    uint32_t pool_size;      /* connections per process, 1..64 (default 4) */
    double timeout;          /* seconds a call waits for other writers (default 5) */
} traffic_sqlite_options;

/* Opens (creating if absent) the SQLite store at opts->path.
 * @retval TRAFFIC_EINVAL   no path, a path naming a directory or ":memory:", bad option
 * @retval TRAFFIC_ECORRUPT the file is not a SQLite database, belongs to another application
 *                          (application_id / user_version / tables), or is damaged
 * @retval TRAFFIC_EPERM    the file or its directory is not writable (SQLite must create
 *                          PATH-wal and PATH-shm next to it), or PATH-wal or PATH-shm exists
 *                          and is not (another user made it)
 * @retval TRAFFIC_EIO      the directory does not exist, or another I/O failure
 * @retval TRAFFIC_ETIMEDOUT another process held the database locked for over `timeout`
 * @retval TRAFFIC_ENOTSUP  the SQLite library loaded is older than 3.35.0 (RETURNING)
 * @retval TRAFFIC_ENOMEM */
TRAFFIC_API int traffic_sqlite_open(const traffic_sqlite_options *opts, traffic_backend **out);

/* ---------------------------------------------------------------------------------------- */
/* Redis backend (hiredis)                                                                  */
/*                                                                                          */
/* URLs (userinfo, path and socket path percent-decoded):                                   */
/*   redis://[[user]:password@]host[:port][/db]              one server over TCP (6379)     */
/*   redis+unix://[[user]:password@]/path/to.sock[?db=N]     one server over a unix socket  */
/*   redis+sentinel://[[user]:password@]h1:p1,h2:p2/MASTER[/db]   sentinels (26379), master */
/*   redis+cluster://[[user]:password@]h1:p1,h2:p2           seed nodes of a Cluster (6379) */
/* with parameters prefix (default "traffic:"), timeout (seconds, default 1) and pool_size  */
/* (1..64, default 4). "user:password@" authenticates as an ACL user, ":password@" with the */
/* password alone. rediss:// is TRAFFIC_EINVAL: the hiredis 0.14 this is built on has no    */
/* TLS. Opening connects (to every master of a cluster), authenticates and loads the Lua    */
/* script, so a wrong password or an unreachable server fails the open.                     */
/*                                                                                          */
/* Storage: key K is the Redis key PREFIX+K. A counter is a plain Redis integer (INCR and   */
/* GET work on it from any client); a bytes value is a Redis string holding one tag byte    */
/* '=' and then the value, so "12" stored by traffic_set is "=12" and is never taken for a  */
/* counter; a rate-limit state starts with the tag '!' (below). A string without a tag      */
/* under the prefix reads as a counter's text. TTLs are Redis expiries (PEXPIRE/PTTL,       */
/* milliseconds). Every operation is one round trip: GET, SET [PX], UNLINK, EXISTS, PTTL,   */
/* and for traffic_increment one Lua script (EVALSHA, resent with EVAL after NOSCRIPT) that */
/* adds with INCRBY, sets the TTL only when it created the key, and reports TRAFFIC_ETYPE   */
/* (also for a rate-limit state) or TRAFFIC_EOVERFLOW leaving the value as it was.          */
/* traffic_clear SCANs the keys under the prefix and UNLINKs them (never FLUSHDB); an empty */
/* prefix therefore clears the whole database. Stats: keys under the prefix (a SCAN of      */
/* every master: cost grows with the database), bytes_used (used_memory), expirations and   */
/* evictions (expired_keys, evicted_keys) from INFO summed over the masters, and this       */
/* handle's own hits, misses, sets, increments, deletes, decisions and denied in this       */
/* process. Redis expires keys itself: traffic_start_cleanup reports TRAFFIC_ENOTSUP.       */
/*                                                                                          */
/* Rate limits: traffic_limit is one round trip and one atomic step: one Lua script for the */
/* five algorithms (EVALSHA, loaded at open, resent with EVAL after NOSCRIPT) reads the     */
/* key, decides with the arithmetic of traffic_limit_apply (Lua doubles, exact for the rule */
/* bounds above) and writes the new state only when the decision changed it (admitted with  */
/* cost > 0), with SET ... PX ceil(reset_after) ms; a denial or a peek writes nothing. Its  */
/* clock is the server's TIME, read inside the script (traffic_limit_at: the instant        */
/* given); scripts replicate by their effects (Redis 5 and later), so replicas receive the  */
/* written state. A state is a string: '!', the algorithm's traffic_algorithm value as one  */
/* digit, then decimal fields: "!1:S:N" fixed window (start in µs, count), "!0:i:P:C"       */
/* sliding window counter (window index, previous and current counts), "!3:T" / "!4:T"      */
/* token / leaky bucket (theoretical arrival time, µs). The sliding window (log) is binary: */
/* "!2", 3 bytes: the index of the first live record, 3 bytes: the running total of costs   */
/* before it, then one 10-byte record per entry, oldest first: 7 bytes t_us and 3 bytes the */
/* running total up to it, modulo 2^24, all big-endian; the script reads the first 4 kB and */
/* the rest record by record (GETRANGE, binary searches), appends in place, and rewrites    */
/* the log without its expired records when they are as many as the live ones (so at most   */
/* 2L + 1 records, 200 kB). traffic_get returns the state as JSON text, traffic_set         */
/* replaces it, traffic_delete resets it; traffic_limit on a counter, a bytes value or      */
/* another algorithm's state is TRAFFIC_ETYPE, on a string that starts with '!' and is no   */
/* well-formed state TRAFFIC_ECORRUPT (traffic_get too).                                    */
/*                                                                                          */
/* Connections: each process keeps up to pool_size connections per server; a call waits at  */
/* most `timeout` for a free one (then TRAFFIC_ETIMEDOUT). A connection that breaks is      */
/* replaced; reconnecting backs off from 25 ms to at most 1 s between attempts, and during  */
/* a back-off calls fail at once with TRAFFIC_EUNAVAILABLE (or the status of the failed     */
/* connect, e.g. TRAFFIC_EPERM for a refused password). The primary of a fallback= pair has */
/* no such back-off: the pair's circuit breaker spaces its attempts. A server that stops    */
/* answering gives TRAFFIC_ETIMEDOUT within `timeout`: a call's connect, setup (AUTH,       */
/* SELECT, ROLE), sends and reads all wait, with poll(), for what is left of one deadline   */
/* set when the call starts, so a signal handler that runs meanwhile (a server's periodic   */
/* timer, SA_RESTART or not) does not extend it; traffic_open, which connects to each       */
/* master and loads two scripts there, takes up to ~3 x `timeout` per master. READONLY (the */
/* server turned replica) closes every connection to it and the call tries once more on a   */
/* new one, which resolves the name again and so follows a failover behind a DNS name or a  */
/* virtual IP; a second READONLY fails it with TRAFFIC_EUNAVAILABLE. No call is retried     */
/* when the server may have run it, except the idempotent ones: an increment whose          */
/* connection broke after sending reports TRAFFIC_EUNAVAILABLE, and may or may not have     */
/* counted. Calls recover by themselves once the server is back.                            */
/*                                                                                          */
/* fork(): a child notices the new pid at its first call and opens its own connections; the */
/* parent's are abandoned in the child (never sent on, never closed; their descriptors stay */
/* open in the child until it exits).                                                       */
/*                                                                                          */
/* Sentinel: the sentinels are asked in turn (SENTINEL get-master-addr-by-name, without     */
/* AUTH), each with an equal share of what is left of the call's timeout (a hung sentinel   */
/* cannot use it all), and an answer is believed only when ROLE there says master; else the */
/* next sentinel is asked (a stale one listed first cannot pin the client on a demoted      */
/* master). A broken connection, READONLY or a master that reports another role makes the   */
/* next connect ask again, which follows a failover.                                        */
/*                                                                                          */
/* Cluster: keys go to the master of their hash slot (CRC16, {hashtag}s honoured) from a    */
/* slot map loaded with CLUSTER SLOTS and reloaded on MOVED; ASK is followed with ASKING;   */
/* TRYAGAIN and CLUSTERDOWN are retried within `timeout`. A reload asks each known node     */
/* once, each with a share of what is left of the calling operation's `timeout` (waiting    */
/* for another thread's reload counts against it too). A node that timed out is suspect:    */
/* the next call routed to it reloads the map first, which follows the failover of a master */
/* that stopped answering rather than refusing. Reloads that only suspect the map (a dead   */
/* or silent node, CLUSTERDOWN, READONLY) happen at most once per 200 ms per process, and   */
/* once per call for CLUSTERDOWN; a MOVED reply reloads it at once. Stats and clear reload  */
/* the map, then visit every master. The map is shared by the threads of a process through  */
/* liburcu (urcu-memb): a thread is registered with urcu_memb_register_thread on its first  */
/* cluster call (unless the application registered it already, and then must keep it        */
/* registered while it makes traffic calls) and unregistered when it exits; threads that    */
/* make no cluster call are never registered. An application that uses urcu-memb itself     */
/* must not hold an RCU read lock across a traffic call, nor run its own grace periods      */
/* while forking: the first cluster open installs a pthread_atfork handler that makes       */
/* fork() wait until no thread is inside the library's read side or grace periods, so that  */
/* a child's RCU never waits for a thread that fork() left behind.                          */
/* ---------------------------------------------------------------------------------------- */

#define TRAFFIC_REDIS_VALUE_MAX 1048576 /* bytes in a value of the Redis backend (1 MiB) */
#define TRAFFIC_REDIS_POOL_MAX 64       /* the largest pool_size */
#define TRAFFIC_REDIS_PREFIX_MAX 256    /* bytes in a key prefix */

typedef enum traffic_redis_mode {
    TRAFFIC_REDIS_TCP = 0,  /* one server: hosts names it (default 127.0.0.1:6379) */
    TRAFFIC_REDIS_UNIX,     /* one server on the unix socket `path` */
    TRAFFIC_REDIS_SENTINEL, /* hosts are the sentinels, `master` the name they monitor */
    TRAFFIC_REDIS_CLUSTER   /* hosts are seed nodes of the cluster */
} traffic_redis_mode;

/* Options of the Redis backend. Zero in a field means "the default". */
typedef struct traffic_redis_options {
    traffic_redis_mode mode;
    const char *hosts;    /* "host[:port][,host[:port]...]", IPv6 as [addr]:port */
    const char *path;     /* TRAFFIC_REDIS_UNIX: the socket */
    const char *master;   /* TRAFFIC_REDIS_SENTINEL: the master's name */
    const char *user;     /* ACL user (needs a password); NULL: AUTH with the password alone */
    const char *password; /* NULL: no AUTH */
    uint32_t db;          /* database number; must be 0 for a cluster */
    const char *prefix;   /* prepended to every key; NULL: "traffic:" ("" is allowed) */
    double timeout;       /* seconds for a connect and for each reply (default 1) */
    uint32_t pool_size;   /* connections per server per process, 1..64 (default 4) */
} traffic_redis_options;

/* Opens a Redis store with typed options.
 * @retval TRAFFIC_EINVAL       bad option (no host, bad port, a db for a cluster, rediss://)
 * @retval TRAFFIC_EUNAVAILABLE no server (or sentinel, or cluster node) could be reached, or
 *                              it is at maxclients
 * @retval TRAFFIC_ETIMEDOUT    a server did not answer within `timeout`
 * @retval TRAFFIC_EPERM        AUTH refused (wrong password or user), or the user may not run
 *                              the commands this backend needs
 * @retval TRAFFIC_EIO          an unexpected reply (the server's text is in traffic_errmsg)
 * @retval TRAFFIC_ENOMEM */
TRAFFIC_API int traffic_redis_open(const traffic_redis_options *opts, traffic_backend **out);

/* ---------------------------------------------------------------------------------------- */
/* When the store is down: fallback=URL                                                      */
/* ---------------------------------------------------------------------------------------- */
/* Any URL may name a second store that answers while the first is down:
 *
 *     redis://10.0.0.5:6379?timeout=0.2&fallback=memory://app-fallback
 *
 * Every call (traffic_limit, get, set, delete, exists, increment, ttl, clear, stats) goes to
 * the primary; a call the primary fails with TRAFFIC_EUNAVAILABLE or TRAFFIC_ETIMEDOUT is sent
 * again to the fallback, and its answer is the call's. Any other status of the primary
 * (TRAFFIC_ETYPE, TRAFFIC_EPERM, ...) means it answered, and is returned as it is. With a
 * memory table as the fallback, a limit keeps holding for the whole host during an outage
 * instead of letting everything through or multiplying it by the number of workers.
 *
 * Writing it: the value of fallback= is a URL of its own, percent-decoded once before it is
 * parsed. Its own parameters follow its own '?'; '&' inside it must be written %26 (an '&'
 * as is starts a parameter of the primary), and '%' as %25. So
 *     redis://h?fallback=memory://fb%3Fmax_size%3D100000%26cleanup_interval%3D10&timeout=0.2
 * gives the fallback max_size and cleanup_interval and the primary its timeout (a single
 * parameter may be written memory://fb?max_size=100000 unencoded). Parameters of the pair,
 * read from the primary's query: fallback_backoff (seconds, default 0.05) and
 * fallback_backoff_max (seconds, default 5), the first and the longest interval between two
 * probes (below). TRAFFIC_EINVAL with a message: a fallback URL that does not open or has an
 * unknown parameter, a fallback with the primary's own scheme and location (itself), a
 * fallback that has a fallback (one level only: a chain of network stores would add their
 * timeouts up), an empty value, fallback_backoff outside [0.001, 3600] or above
 * fallback_backoff_max, fallback_backoff_max outside [0.001, 86400].
 *
 * Opening opens both. A primary that is unreachable then (TRAFFIC_EUNAVAILABLE or
 * TRAFFIC_ETIMEDOUT) does not fail the open: the handle starts on the fallback and opens the
 * primary when a probe finds it back (so a misspelt host serves from the fallback for ever;
 * stats.serving tells). Any other failure of either store fails the open.
 *
 * The circuit breaker. After a failure the primary is skipped - calls go straight to the
 * fallback, at its speed, without waiting on the primary - for a back-off interval: the n-th
 * failure in a row waits min(fallback_backoff_max, fallback_backoff * 2^(n-1)) times a
 * random factor in [0.5, 1) (jitter, so that hosts do not probe in step). When the interval
 * is over, ONE call - the first to claim the probe - is sent to the primary; the others keep
 * going to the fallback meanwhile. If the primary answers it, the breaker closes and every
 * call goes to the primary again; if not, the call is answered by the fallback and the next
 * interval begins. The failure count is kept when the breaker closes and forgotten after the
 * primary has served for 2 x fallback_backoff_max, so a primary that comes and goes backs off
 * further each time. (A Redis primary drops its own reconnect back-off: a process whose last
 * connect failed moments before the breaker closed connects on its next call rather than
 * failing it at once and opening the breaker for one more interval.)
 * The breaker is one per primary store (for a Cluster, one for all its nodes: a node lost
 * sends every key to the fallback for the interval).
 *
 * Where the breaker lives. When the fallback is a memory table, the breaker's state is in
 * that table, so every process of the host that opens the same pair shares it: the first
 * process that sees the primary fail sends all of them to the fallback, and there is one
 * probe per interval for the host, not one timeout per worker per call. It is four keys
 * named "traffic:breaker:<16 hex digits>:" + state (24 bytes; no TTL), probe (a counter that
 * elects the prober, TTL 10 s: a prober killed mid-call delays the next probe by that much),
 * switches and probes (counters). The hex digits hash the primary URL without its query, so
 * two spellings of one server are two breakers. Each call reads the state (one lookup; while
 * the breaker is open a process reads it once per interval); only the prober or the process
 * that first sees a failure writes it. The table's LRU eviction is unlikely to take these
 * keys, being read so often; if it does, the next call tries the primary and the breaker
 * opens again from its first interval. A traffic_clear answered by the fallback writes the
 * state back (the two counters restart). With any other fallback
 * (SQLite, Redis), the state is in a small anonymous memory table the handle opens for it:
 * shared with the processes forked after the open, per process otherwise.
 *
 * What moves back when the primary returns: nothing. The state gathered in the fallback
 * during the outage (decisions, counters, values) is not merged into the primary, and the
 * primary's own state is not brought up to date: decisions restart from whatever the primary
 * holds (what it held before the outage, if it kept it, or nothing after a restart without
 * persistence). The fallback keeps its state too, until its TTLs run out. Why this is
 * bounded: each store by itself never lets a key through more than its rule allows, and each
 * keeps its state across switches, so over any window a key admits at most what the rule
 * allows from the primary (for all hosts) plus what it allows from this host's fallback -
 * never more than twice the rule on one host, however often the breaker switches - and a
 * window with no switch in it is decided by one store alone, within the rule. Counters
 * (traffic_increment) likewise continue in the primary from the value they had there. An
 * increment or decision that failed with TRAFFIC_EUNAVAILABLE may still have run on the
 * primary before it was answered by the fallback (counted in both, as one call may be).
 *
 * Reads follow the same route: during an outage traffic_get, exists and ttl see the
 * fallback's keys only. traffic_limit_at passes its instant to whichever store decides,
 * whose clocks differ (Redis TIME, memory CLOCK_MONOTONIC). traffic_start_cleanup starts the
 * cleanup of each store that has one (TRAFFIC_ENOTSUP if neither has); stop stops both.
 * traffic_stats reports the serving store's figures (stats.backend names it) and the
 * breaker's: serving, serving_since_ms, switches, probes, primary_failures; the JSON has
 * them as "serving" ("primary" / "fallback"; null for a store without fallback),
 * "serving_since_ms", "switches", "probes" and "primary_failures". */

#ifdef __cplusplus
}
#endif
#endif /* TRAFFIC_TRAFFIC_H */
