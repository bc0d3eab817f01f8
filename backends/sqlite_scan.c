/*
 * sqlite_scan.c — the SQLite backend's traffic_scan and traffic_reap.
 *
 * A scan is keyset pagination over the primary key's index, SQ_SCAN_BATCH rows at a time:
 *     SELECT key, kind, counter, expires FROM traffic_entries
 *      WHERE key > ?last [AND key < ?end] AND <live now> ORDER BY key LIMIT ?n
 * Each batch is one statement in autocommit, so a read transaction (a WAL snapshot) lasts
 * one batch and never the whole scan: a long listing does not keep checkpoints from
 * resetting the WAL, and the connection goes back to the pool before fn sees the rows, so
 * fn may take its time and call the store itself (with pool_size=1 too). Keys compare as
 * bytes (BINARY collation: memcmp, then length), and a row keeps its key for as long as it
 * lives, so "key > the last key of the previous batch" resumes exactly where that batch
 * stopped: a key live for the whole scan is read by exactly one batch, whatever is inserted
 * or deleted around it.
 *
 * The glob is matched here (traffic_glob_match), not in SQL: SQLite's GLOB is another syntax.
 * What SQL does get is the glob's literal prefix (its bytes before the first * ? [ or \),
 * which bounds the range of the index read: "user:42:*" reads only keys from "user:42:" up
 * to, not including, "user:42;".
 */
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "sqlite_internal.h"

#define SQ_SCAN_BATCH 256 /* rows per read statement */

typedef struct scan_row {
    int kind;
    int64_t ttl_ms; /* -1: none */
    size_t klen;
    char key[TRAFFIC_KEY_MAX + 1];
} scan_row;

typedef struct scan_cursor {
    char *last; /* the last key read (any length), or the literal prefix before the first batch */
    size_t last_len;
    int first; /* no batch read yet: the range starts AT last (the prefix), not after it */
    char *end; /* exclusive upper bound of the range, or NULL */
    size_t end_len;
} scan_cursor;

/* What a row holds (sqlite_internal.h, "What a row of traffic_entries holds"). */
static int row_kind(int kind, int64_t counter)
{
    if (kind == SQ_KIND_COUNTER) return TRAFFIC_KIND_COUNTER;
    if (counter == 0) return TRAFFIC_KIND_BYTES;
    int64_t a = counter - SQ_LIMIT_MARK;
    return a >= 0 && traffic_algorithm_name((traffic_algorithm)a) ? TRAFFIC_KIND_LIMIT + (int)a : TRAFFIC_KIND_OTHER;
}

/* The literal prefix of glob as the cursor's start, and the first string above every string
 * with that prefix as its end (the prefix with its last byte below 0xff incremented and what
 * follows it dropped; none when it is all 0xff). */
static int cursor_init(const char *glob, scan_cursor *cur)
{
    size_t n = glob ? strcspn(glob, "*?[\\") : 0;
    memset(cur, 0, sizeof *cur);
    cur->first = 1;
    cur->last = malloc(n + 1);
    cur->end = malloc(n + 1);
    if (!cur->last || !cur->end) return TRAFFIC_ENOMEM;
    memcpy(cur->last, glob ? glob : "", n);
    cur->last_len = n;
    memcpy(cur->end, cur->last, n);
    while (n > 0 && (unsigned char)cur->end[n - 1] == 0xff)
        n--;
    if (n == 0 || !glob) {
        free(cur->end);
        cur->end = NULL;
    } else {
        cur->end[n - 1] = (char)((unsigned char)cur->end[n - 1] + 1);
        cur->end_len = n;
    }
    return TRAFFIC_OK;
}

static int cursor_advance(scan_cursor *cur, const void *key, size_t len)
{
    if (len > cur->last_len) {
        char *p = realloc(cur->last, len);
        if (!p) return TRAFFIC_ENOMEM;
        cur->last = p;
    }
    memcpy(cur->last, key, len);
    cur->last_len = len;
    cur->first = 0;
    return TRAFFIC_OK;
}

/* Reads the next batch into rows (room for SQ_SCAN_BATCH); *n rows, *more: a full batch,
 * so there may be more. The connection is back in the pool when this returns. */
static int read_batch(sqlite_backend *s, scan_cursor *cur, scan_row *rows, size_t *n, int *more)
{
    static const char *const sql[2][2] = {
        /* [first][bounded] */
        {"SELECT key, kind, counter, expires FROM traffic_entries WHERE key > ?1"
         " AND (expires = 0 OR expires > ?2) ORDER BY key LIMIT ?3",
         "SELECT key, kind, counter, expires FROM traffic_entries WHERE key > ?1 AND key < ?4"
         " AND (expires = 0 OR expires > ?2) ORDER BY key LIMIT ?3"},
        {"SELECT key, kind, counter, expires FROM traffic_entries WHERE key >= ?1"
         " AND (expires = 0 OR expires > ?2) ORDER BY key LIMIT ?3",
         "SELECT key, kind, counter, expires FROM traffic_entries WHERE key >= ?1 AND key < ?4"
         " AND (expires = 0 OR expires > ?2) ORDER BY key LIMIT ?3"},
    };
    sq_conn *c;
    sqlite3_stmt *st = NULL;
    *n = 0;
    *more = 0;
    CHECK(sq_pool_get(s, &c));
    int rc = sqlite3_prepare_v3(c->db, sql[cur->first][cur->end != NULL], -1, 0, &st, NULL);
    if (rc != SQLITE_OK) {
        rc = sq_fail(s, c->db, rc, "preparing a scan");
        sq_pool_put(s, c);
        return rc;
    }
    int64_t now = sq_wall_ms();
    sqlite3_bind_text(st, 1, cur->last, (int)cur->last_len, SQLITE_TRANSIENT); /* it moves as rows come */
    sqlite3_bind_int64(st, 2, now);
    sqlite3_bind_int(st, 3, SQ_SCAN_BATCH);
    if (cur->end) sqlite3_bind_text(st, 4, cur->end, (int)cur->end_len, SQLITE_STATIC);
    size_t got = 0;
    while ((rc = sq_step(s, c, st, "scan")) == 1) {
        const void *key = sqlite3_column_text(st, 0);
        size_t klen = (size_t)sqlite3_column_bytes(st, 0);
        if (!key || (rc = cursor_advance(cur, key, klen)) < 0) {
            rc = traffic_backend_fail(EB(s), TRAFFIC_ENOMEM, "out of memory in a scan");
            break;
        }
        got++;
        if (klen == 0 || klen > TRAFFIC_KEY_MAX) continue; /* no key this library could have written */
        scan_row *r = &rows[(*n)++];
        memcpy(r->key, key, klen);
        r->key[klen] = '\0';
        r->klen = klen;
        r->kind = row_kind(sqlite3_column_int(st, 1), sqlite3_column_int64(st, 2));
        int64_t e = sqlite3_column_int64(st, 3);
        r->ttl_ms = e == 0 ? -1 : e - now; /* e > now: the filter */
    }
    sqlite3_finalize(st);
    sq_pool_put(s, c);
    if (rc < 0) return rc;
    *more = got == SQ_SCAN_BATCH;
    return TRAFFIC_OK;
}

int sq_scan(traffic_backend *b, const char *glob, traffic_scan_fn fn, void *ctx)
{
    sqlite_backend *s = S(b);
    scan_cursor cur;
    scan_row *rows = malloc(SQ_SCAN_BATCH * sizeof *rows);
    int rc = rows ? cursor_init(glob, &cur) : TRAFFIC_ENOMEM;
    if (rc) {
        free(rows);
        if (rows) {
            free(cur.last);
            free(cur.end);
        }
        return traffic_backend_fail(b, TRAFFIC_ENOMEM, "out of memory in a scan");
    }
    int more = 1;
    while (!rc && more) {
        size_t n;
        if ((rc = read_batch(s, &cur, rows, &n, &more))) break;
        for (size_t i = 0; i < n && !rc; i++)
            if (traffic_glob_match(glob, rows[i].key, rows[i].klen))
                rc = fn(ctx, rows[i].key, rows[i].klen, rows[i].kind,
                        rows[i].ttl_ms < 0 ? -1.0 : (double)rows[i].ttl_ms / 1000.0);
    }
    free(cur.last);
    free(cur.end);
    free(rows);
    return rc;
}

/* Every expired row, SQ_SWEEP_BATCH per transaction (the cleanup thread's batches), without
 * the lease: deleting an expired row twice is harmless, so it need not wait for the sweeper
 * another process may be running. */
int sq_reap(traffic_backend *b, uint64_t *removed)
{
    sqlite_backend *s = S(b);
    int n;
    do {
        if ((n = sq_sweep_batch(s)) < 0) return n;
        *removed += (uint64_t)n;
        atomic_fetch_add_explicit(&s->n.expirations, (uint64_t)n, memory_order_relaxed);
        sched_yield(); /* let waiting writers take the lock between batches */
    } while (n == SQ_SWEEP_BATCH);
    return TRAFFIC_OK;
}
