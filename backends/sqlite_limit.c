/*
 * sqlite_limit.c — the SQLite backend's rate-limit decisions (traffic_limit).
 *
 * The one idea: a decision is ONE transaction on one connection,
 *     BEGIN IMMEDIATE; read the key's row; traffic_limit_apply; write the new state only when
 *     apply returns 1; COMMIT
 * and BEGIN IMMEDIATE takes SQLite's write lock before the read. So from the read to the
 * commit no other connection of any process can write the file: decisions on a key are
 * linearizable with each other and with every set, delete, increment and clear, in the
 * order in which they took the lock. The lock is taken through the busy handler and the
 * turnstile like every other write (sq_write), so a caller waits for other writers up to the
 * handle's timeout and never sees SQLITE_BUSY before it. A process killed anywhere inside
 * leaves an uncommitted transaction, which SQLite's WAL discards: a decision is applied
 * whole or not at all. A denial writes nothing (its COMMIT ends a transaction that wrote no
 * page), so it costs no WAL frame.
 *
 * Time. now is the wall clock (CLOCK_REALTIME) in µs, read once the lock is held, so that the
 * order of the decisions is the order of their clocks; or the caller's now_us
 * (traffic_limit_at). Expiry is on the wall clock either way, as for every row: the real
 * instant of the decision plus reset_after, rounded up to the ms, so that the row stays live
 * for at least reset_after (the key is back to its unused state by then, and an expired row
 * reads as absent).
 *
 * Storage (sqlite_internal.h, SQ_LIMIT_MARK): a row of kind 0 whose `counter` is
 * SQ_LIMIT_MARK + the algorithm, so that it is told apart from bytes (counter 0), counters
 * (kind 1) and the other algorithms' states without a schema change. Its `value` is the state
 * as little-endian int64s, portable between hosts like the rest of the file:
 *     a, b, c                    (24 bytes; what each means: traffic_limit_state, backend.h)
 *     then, sliding window only, the log's (t_us, n) pairs, oldest first (16 bytes each)
 * The decoded state and its re-encoding share the connection's scratch buffer: the log's
 * entries live at scratch + SQ_HEAD and are rewritten in place as their encoding.
 */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "limit/limit.h"
#include "sqlite_internal.h"

#define SQ_HEAD  24 /* bytes of a, b, c */
#define SQ_ENTRY 16 /* bytes of one (t_us, n) of the log */

/* Test hook: nonzero makes a decision that has written its state SIGKILL its own process
 * before COMMIT (tests/test_sqlite_limit.c: a decision is applied whole or not at all). */
_Atomic int sqlite_debug_limit_crash;

static int64_t get_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return (int64_t)v;
}

static void put_le64(unsigned char *p, int64_t x)
{
    uint64_t v = (uint64_t)x;
    for (int i = 0; i < 8; i++, v >>= 8)
        p[i] = (unsigned char)v;
}

/* The algorithm a row of kind SQ_KIND_BYTES with this mark holds the state of, or -1. */
static int mark_algo(int64_t mark)
{
    return mark >= SQ_LIMIT_MARK && mark <= SQ_LIMIT_MARK + TRAFFIC_LEAKY_BUCKET ? (int)(mark - SQ_LIMIT_MARK) : -1;
}

const char *sq_row_what(int kind, int64_t counter, char *buf)
{
    const char *algo = limit_algo_name(mark_algo(counter));
    if (kind == SQ_KIND_COUNTER)
        snprintf(buf, SQ_WHAT_LEN, "a counter");
    else if (counter == 0)
        snprintf(buf, SQ_WHAT_LEN, "a bytes value");
    else if (algo)
        snprintf(buf, SQ_WHAT_LEN, "a %s rate-limit state", algo);
    else
        snprintf(buf, SQ_WHAT_LEN, "a value of unknown kind (kind %d, mark %lld)", kind, (long long)counter);
    return buf;
}

/* ---- the state in the connection's scratch buffer --------------------------------------- */

/* Makes room in c's scratch for a state whose log holds `room` entries, and points st->log
 * at it. */
static int state_room(const sqlite_backend *s, sq_conn *c, size_t room, traffic_limit_state *st)
{
    size_t need = SQ_HEAD + room * SQ_ENTRY;
    if (need > c->scratch_cap) {
        unsigned char *p = realloc(c->scratch, need);
        if (!p)
            return traffic_backend_fail(EB(s), TRAFFIC_ENOMEM, "out of memory (a rate-limit state of %zu bytes)", need);
        c->scratch = p;
        c->scratch_cap = need;
    }
    st->log = (traffic_limit_entry *)(void *)(c->scratch + SQ_HEAD); /* malloc'd + 24: aligned for int64 */
    st->log_cap = room;
    return TRAFFIC_OK;
}

/* Decodes the value of a rate-limit row of algorithm algo into *st (its log in c's scratch,
 * with room for at least min_room entries, which traffic_limit_apply needs: the rule's
 * limit). TRAFFIC_ECORRUPT when the value cannot be such a state. */
static int state_decode(const sqlite_backend *s, sq_conn *c, const char *key, int algo, const unsigned char *v,
                        size_t len, size_t min_room, traffic_limit_state *st)
{
    size_t nlog = len >= SQ_HEAD ? (len - SQ_HEAD) / SQ_ENTRY : 0;
    if (len < SQ_HEAD || (len - SQ_HEAD) % SQ_ENTRY || (nlog && algo != TRAFFIC_SLIDING_WINDOW) ||
        nlog > TRAFFIC_SLIDING_WINDOW_LIMIT_MAX)
        return traffic_backend_fail(EB(s), TRAFFIC_ECORRUPT,
                                    "\"%.64s\" holds a %s rate-limit state of %zu bytes, which is not a valid one (%s)",
                                    key, limit_algo_name(algo), len, s->path);
    CHECK(state_room(s, c, nlog > min_room ? nlog : min_room, st));
    st->a = get_le64(v);
    st->b = get_le64(v + 8);
    st->c = get_le64(v + 16);
    for (size_t i = 0; i < nlog; i++) {
        st->log[i].t_us = get_le64(v + SQ_HEAD + i * SQ_ENTRY);
        st->log[i].n = get_le64(v + SQ_HEAD + i * SQ_ENTRY + 8);
    }
    st->nlog = nlog;
    return TRAFFIC_OK;
}

/* Encodes *st, whose log is in c's scratch, into c's scratch; returns the length. Each entry
 * is read before its own 16 bytes are rewritten, and no entry's bytes hold another's. */
static size_t state_encode(sq_conn *c, const traffic_limit_state *st)
{
    unsigned char *p = c->scratch;
    put_le64(p, st->a);
    put_le64(p + 8, st->b);
    put_le64(p + 16, st->c);
    for (size_t i = 0; i < st->nlog; i++) {
        int64_t t = st->log[i].t_us, n = st->log[i].n;
        put_le64(p + SQ_HEAD + i * SQ_ENTRY, t);
        put_le64(p + SQ_HEAD + i * SQ_ENTRY + 8, n);
    }
    return SQ_HEAD + st->nlog * SQ_ENTRY;
}

/* ---- one decision ----------------------------------------------------------------------- */

/* Reads the key's live row into *st and its expiry into *expires: the unused state and 0
 * when there is none (or it expired), TRAFFIC_ETYPE when it holds anything but this
 * algorithm's state. */
static int state_read(const sqlite_backend *s, sq_conn *c, const char *key, size_t klen, const traffic_rule *rule,
                      int64_t now_ms, traffic_limit_state *st, int64_t *expires)
{
    sqlite3_stmt *q = c->st[ST_LIMIT_GET];
    size_t room = rule->algorithm == TRAFFIC_SLIDING_WINDOW ? (size_t)rule->limit : 0;
    sq_bind_key(q, key, klen);
    sqlite3_bind_int64(q, 2, now_ms);
    int rc = sq_step(s, c, q, "traffic_limit: reading the state");
    if (rc == 0) {
        rc = state_room(s, c, room, st);
    } else if (rc == 1) {
        int kind = sqlite3_column_int(q, 0);
        int64_t mark = sqlite3_column_int64(q, 1);
        char what[SQ_WHAT_LEN];
        if (kind != SQ_KIND_BYTES || mark != SQ_LIMIT_MARK + (int64_t)rule->algorithm)
            rc = traffic_backend_fail(EB(s), TRAFFIC_ETYPE, "\"%.64s\" holds %s, not a %s rate-limit state", key,
                                      sq_row_what(kind, mark, what), limit_algo_name(rule->algorithm));
        else
            rc = state_decode(s, c, key, rule->algorithm, sqlite3_column_blob(q, 2), (size_t)sqlite3_column_bytes(q, 2),
                              room, st);
        *expires = sqlite3_column_int64(q, 3);
    }
    sq_reset(q);
    return rc;
}

/* Stores *st as the key's row, live at least until the real instant real_us + reset_after
 * (rounded up to the ms: the row must not expire before the state is back to unused).
 * `expires` is the live row's expiry as read, 0 for none. When it already covers that, only
 * the value is written: an UPDATE that assigns `expires` moves its entry in the expiry index,
 * a second page in every commit, which made a decision cost ~1.3x an increment. A fixed
 * window or a sliding window counter keeps its expiry for the whole window; the buckets and
 * the log, whose reset point moves with every admission, get their new expiry with slack, an
 * eighth of the time left plus 1 ms (as the memory backend's states: shm/state.c), so that
 * most admissions find it covered. A state outlives its reset point by at most that much;
 * it decides the same as an absent one meanwhile. */
static int state_write(const sqlite_backend *s, sq_conn *c, const char *key, size_t klen, int algo,
                       const traffic_limit_state *st, int64_t real_us, double reset_after, int64_t expires)
{
    size_t len = state_encode(c, st);
    int64_t reset_us = llround(reset_after * 1e6); /* exact: reset_after is a µs count / 1e6, < 2^53 */
    int64_t until = (real_us + reset_us + 999) / 1000;
    int same = expires != 0 && expires >= until;
    if (!same) until += (until - real_us / 1000) / 8 + 1;
    sqlite3_stmt *q = c->st[same ? ST_LIMIT_VALUE : ST_LIMIT_PUT];
    int vcol = same ? 2 : 3;
    sq_bind_key(q, key, klen);
    sqlite3_bind_blob(q, vcol, c->scratch, (int)len, SQLITE_STATIC); /* < 200 KB: cannot fail */
    if (!same) {
        sqlite3_bind_int64(q, 2, SQ_LIMIT_MARK + algo);
        sqlite3_bind_int64(q, 4, until);
    }
    int rc = sq_step(s, c, q, "traffic_limit: writing the state"); /* the lock is ours: no turn_wait */
    sq_reset(q);
    sqlite3_bind_null(q, vcol); /* drop the reference to the scratch buffer */
    return rc < 0 ? rc : TRAFFIC_OK;
}

/* The body of the transaction: read, decide, write when the state changed. 1 when it wrote,
 * 0 when not, or a negative status. */
static int decide(const sqlite_backend *s, sq_conn *c, const char *key, size_t klen, const traffic_rule *rule,
                  int64_t cost, int64_t now_us, traffic_decision *out)
{
    int64_t real_us = sq_wall_us(); /* after BEGIN IMMEDIATE: the lock is held */
    traffic_limit_state st = {0};
    int64_t expires = 0;
    CHECK(state_read(s, c, key, klen, rule, real_us / 1000, &st, &expires));
    int changed = traffic_limit_apply(rule, &st, now_us >= 0 ? now_us : real_us, cost, out);
    if (changed < 0) /* the rule and now are checked: only a stored state can be refused */
        return traffic_backend_fail(EB(s), TRAFFIC_ECORRUPT, "the stored %s state of \"%.64s\" is not valid (%s)",
                                    limit_algo_name(rule->algorithm), key, s->path);
    if (!changed) return 0;
    CHECK(state_write(s, c, key, klen, rule->algorithm, &st, real_us, out->reset_after, expires));
    return 1;
}

int sq_limit(traffic_backend *b, const char *key, size_t klen, const traffic_rule *rule, int64_t cost, int64_t now_us,
             traffic_decision *out)
{
    sqlite_backend *s = S(b);
    sq_conn *c;
    CHECK(sq_pool_get(s, &c));
    sqlite3_stmt *begin = c->st[ST_BEGIN], *commit = c->st[ST_COMMIT];
    int rc = sq_write(s, c, begin, "traffic_limit: taking the write lock"); /* busy handler, turnstile */
    sq_reset(begin);
    if (rc >= 0) rc = decide(s, c, key, klen, rule, cost, now_us, out);
    if (rc == 1 && sqlite_debug_limit_crash) raise(SIGKILL);
    if (rc >= 0) {
        rc = sq_step(s, c, commit, "traffic_limit: committing");
        sq_reset(commit);
    }
    if (!sqlite3_get_autocommit(c->db)) { /* a failure inside: undo it, the connection goes back clean */
        sqlite3_step(c->st[ST_ROLLBACK]);
        sqlite3_reset(c->st[ST_ROLLBACK]);
    }
    sq_pool_put(s, c);
    if (rc < 0) return rc;
    COUNT(s, decisions);
    if (!out->allowed) COUNT(s, denied);
    return TRAFFIC_OK;
}

/* ---- traffic_get ------------------------------------------------------------------------ */

int sq_limit_show(const sqlite_backend *s, sq_conn *c, sqlite3_stmt *st, const char *key, void *buf, size_t cap,
                  size_t *len)
{
    int kind = sqlite3_column_int(st, 0);
    int64_t mark = sqlite3_column_int64(st, 1);
    int algo = mark_algo(mark);
    char what[SQ_WHAT_LEN];
    if (algo < 0)
        return traffic_backend_fail(EB(s), TRAFFIC_ECORRUPT, "\"%.64s\" holds %s (%s)", key,
                                    sq_row_what(kind, mark, what), s->path);
    traffic_limit_state ls = {0};
    CHECK(state_decode(s, c, key, algo, sqlite3_column_blob(st, 2), (size_t)sqlite3_column_bytes(st, 2), 0, &ls));
    size_t n = limit_state_json(algo, &ls, NULL, 0);
    *len = n;
    if (n > cap)
        return traffic_backend_fail(EB(s), TRAFFIC_ERANGE, "value of \"%.64s\" is %zu bytes, buffer holds %zu", key, n,
                                    cap);
    char small[256], *text = n < sizeof small ? small : malloc(n + 1); /* room for snprintf's NUL */
    if (!text) return traffic_backend_fail(EB(s), TRAFFIC_ENOMEM, "out of memory");
    limit_state_json(algo, &ls, text, n + 1);
    memcpy(buf, text, n);
    if (text != small) free(text);
    return TRAFFIC_OK;
}
