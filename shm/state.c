/*
 * state.c — rate-limit states on slots: a word changed by compare-and-swap, or a blob changed
 * by the slot's versioned write (shm.h says what the caller sees).
 *
 * A word state lives in the head like a counter: the word in `counter`, its expiry in
 * `expires`. Unlike a counter's, a state's expiry moves: each new state must live until it is
 * back to "unused" (its reset point), later than the state before it. The word and the expiry
 * are two locations, so the protocol has to keep a reclaimer from retiring an entry whose
 * expiry has just been raised for a state not yet written. Invariants:
 *
 *  S1  `expires` of a word state only grows while the entry is live, except for one change to
 *      EXPIRES_DEAD by a reclaimer, after which it never changes again in that life.
 *  S2  A decider raises `expires` to cover its new state *before* the CAS that installs the
 *      state, and only while `expires` is neither passed nor EXPIRES_DEAD (a CAS from the
 *      value it judged: raise_expiry).
 *  S3  A reclaimer retires a word state for expiry, or an inserter replaces it in its slot
 *      (table.c, replace_expired), only after `expires` went from the value it judged passed
 *      to EXPIRES_DEAD by CAS (tbl_expiry_kill).
 *  Then a state installed by a decider is never lost to expiry while it matters: by S2/S3 the
 *  two CASes on `expires` are ordered. If the decider's raise came first, the reclaimer's CAS
 *  saw the raised value, and retires only once that has passed — when the decider's state is
 *  back to unused anyway. If the reclaimer's came first, the raise fails and the decider looks
 *  the key up again (and finds it absent). Both CASes are on the one location, so relaxed
 *  ordering suffices for this argument (a single location's modification order is total).
 *  One more case: the slot may have been given a new life of the same key and type by the
 *  time the decider raises (revived, or replaced in place: table.c). The raise then reads
 *  that life's expiry and may succeed; the word CAS that follows fails, because the new
 *  life's word came with its expiry (fill stores the word, then the expiry with release;
 *  raise_expiry reads with acquire), or it expects a word equal to the new one (S4).
 *  Retires that are not for expiry (delete, eviction, clear) may absorb a decision made just
 *  before them: it is then ordered before the removal, as a delete absorbs an increment.
 *
 *  S4  A decision's CAS expects the exact word it decided on; the word is the whole state, so
 *      a word that is equal again (ABA, e.g. after a delete and a re-creation in the same
 *      millisecond) decides the same. The expiry is raised again after the CAS, so that a
 *      decision that landed on a re-created entry also covers its own state there.
 *
 * A blob state lives in the value buffers with its expiry inside the buffer, so state and
 * expiry change together under the slot's versioned write (I4 of table.c): the decider
 * snapshots the active buffer with version v, decides, then takes the slot LIVE(v) ->
 * WRITING(me) by CAS — which fails if anyone wrote, retired or expired it since — fills the
 * inactive buffer and flips. A reclaimer retires for expiry only from the LIVE word, by
 * CAS on the same control word, so it and a writer cannot both win: an expiry judged from the
 * buffer a writer is replacing must not retire the write (a delete or a set may: the decision
 * is then ordered before them). A process killed while WRITING is rolled back by the next that
 * meets it (recover_slot): its decision is then not made, and it never returned.
 */
#include <stdlib.h>
#include <unistd.h>

#include "slot.h"


/* The word states' expiry protocol, reclaimer side (S3): 1 when the entry at s (LIVE word c)
 * may be taken away for expiry - its `expires` is EXPIRES_DEAD, by our CAS from the value we
 * judged passed or by another reclaimer's - 0 when it is another life or its expiry was raised
 * since. Anything else than a word state needs nothing here. */
int tbl_expiry_kill(struct shm_slot *s, uint64_t c, const int64_t *now_ms)
{
    if (!type_is_word_state(meta_type(s))) return 1;
    int64_t e = atomic_load_explicit(&s->expires, memory_order_relaxed);
    while (e != EXPIRES_DEAD) {
        int expired = now_ms ? expired_at(e, *now_ms) : shm_expired(e);
        if (ctl_load(s) != c || !expired) return 0; /* another life, or raised since */
        if (atomic_compare_exchange_weak_explicit(&s->expires, &e, EXPIRES_DEAD, memory_order_relaxed,
                                                  memory_order_relaxed))
            break;
    }
    return 1;
}

int tbl_retire_expired(struct shm_table *t, struct shm_self *me, struct shm_slot *s, uint64_t c, int stat,
                       const int64_t *now_ms)
{
    /* Never an entry being written: its expiry was judged from the buffer being replaced, and
     * the write under way (a set, a decision) brings its own. Retiring it would throw away a
     * write that returns success (callers wait for the writer instead). */
    if (CTL_STATE(c) != ST_LIVE) return 0;
    if (!tbl_expiry_kill(s, c, now_ms)) return 0;
    return tbl_retire(t, me, s, c, stat);
}

/* Expiry checks of a decision use the clock reading the decision was made with (one read
 * per call, which the caller takes anyway): an entry live then is used, one expired then is
 * treated as absent. S1-S3 hold whatever the reading: they order the CASes on `expires`. */

/* The decider side (S2): 1 when `expires` covers want, 0 when the entry expired first.
 * A raise goes an eighth of the remaining time (and at least 1 ms) beyond what is wanted: the
 * reset point of a busy key moves later with almost every admission (a bucket's T by one
 * interval), and without the slack each would pay a second CAS on the slot. A state outlives
 * its reset point by at most that much before the reaper can take it; it decides the same as
 * an absent one meanwhile.
 * Every read of `expires` here is an acquire: an expiry written by an insert (fill, table.c:
 * the word, then the expiry with release) brings that insert's word with it, so the word CAS
 * that follows a successful raise cannot land before the insert's word in the word's
 * modification order and be overwritten by it (it fails instead, or S4 holds). Without it, a
 * decider that read the word of the entry's previous life and then the new life's expiry
 * could have its decision overwritten on a weakly ordered machine. */
static int raise_expiry(struct shm_slot *s, int64_t want, int64_t now_ms)
{
    int64_t e = atomic_load_explicit(&s->expires, memory_order_acquire);
    int64_t to = want + (want > now_ms ? (want - now_ms) / 8 : 0) + 1;
    for (;;) {
        if (e == EXPIRES_DEAD || expired_at(e, now_ms)) return 0;
        if (e >= want) return 1;
        if (atomic_compare_exchange_weak_explicit(&s->expires, &e, to, memory_order_acquire, memory_order_acquire))
            return 1;
    }
}

static void count(struct shm_self *me, const shm_update *u)
{
    shm_stat_add(me, STAT_DECISIONS, 1);
    if (u->denied) shm_stat_add(me, STAT_DENIED, 1);
}

enum { AGAIN = 1 }; /* look the key up again */

/* A decision on a live word state at s (control word c when looked up). */
static int update_word(struct shm_table *t, struct shm_self *me, struct shm_slot *s, uint64_t c, shm_update_fn fn,
                       void *ctx, int64_t now_ms)
{
    for (;;) {
        uint64_t old = (uint64_t)atomic_load_explicit(&s->counter, memory_order_acquire);
        if (ctl_load(s) != c) return AGAIN; /* retired (maybe re-created) since the lookup */
        shm_update u = {0};
        int rc = fn(ctx, 1, old, NULL, 0, &u, NULL, 0);
        if (rc < 0) return rc;
        if (u.store) {
            if (!raise_expiry(s, u.expires_ms, now_ms)) return AGAIN;
            int64_t expect = (int64_t)old;
            if (shm_broken & SHM_BROKEN_LIMIT_STORE)
                atomic_store_explicit(&s->counter, (int64_t)u.word, memory_order_release);
            else if (!atomic_compare_exchange_strong_explicit(&s->counter, &expect, (int64_t)u.word, memory_order_acq_rel,
                                                         memory_order_acquire))
                continue; /* another decision came first: decide again on its state */
            raise_expiry(s, u.expires_ms, now_ms); /* S4 */
        }
        touch(t, s);
        count(me, &u);
        return SHM_OK;
    }
}

/* A decision on a live blob state at s (control word c). old/nbuf: value_max bytes each. */
static int update_blob(struct shm_table *t, struct shm_self *me, struct shm_slot *s, uint64_t c, shm_update_fn fn,
                       void *ctx, unsigned char *old, unsigned char *nbuf, int64_t now_ms)
{
    size_t cap = t->value_max;
    for (;;) {
        unsigned st = CTL_STATE(c);
        if (st == ST_WRITING) { /* another decision is being written: wait for it (or undo it) */
            if (!(c = tbl_wait_writer(t, me, s, c))) return SHM_ETIMEDOUT;
            continue;
        }
        if (st != ST_LIVE) return AGAIN;
        size_t len;
        int64_t e;
        if (bytes_snapshot(t, s, c, old, cap, &len, &e) < 0) return AGAIN;
        if (expired_at(e, now_ms)) return AGAIN; /* the lookup's insert path retires it */
        shm_update u = {0};
        int rc = fn(ctx, 1, 0, old, len, &u, nbuf, cap);
        if (rc < 0) return rc;
        if (u.store) {
            /* Only from the exact word snapshotted: any write, retire or recovery since changed
             * it (versions never repeat, layout.h), and then we decide again. */
            uint64_t w = CTL_MAKE(ST_WRITING, CTL_BUF(c), me->token, CTL_VER(c));
            if (!ctl_cas(s, &c, w)) continue;
            /* The WRITING mark before the data stores (the seqlock writer's barrier, as in
             * write_in_place). */
            atomic_thread_fence(memory_order_release);
            if (__builtin_expect(shm_blob_write_pause_ms, 0)) usleep((useconds_t)shm_blob_write_pause_ms * 1000);
            unsigned nb = !CTL_BUF(c);
            vbuf_write(shm_slot_buf(t, s, nb), nbuf, u.len, u.expires_ms);
            uint64_t v = atomic_fetch_add_explicit(&s->vseq, 1, memory_order_relaxed) + 1;
            /* Fails only if a delete, eviction or clear retired the entry meanwhile: the
             * decision is then ordered before that removal. */
            ctl_cas(s, &w, CTL_MAKE(ST_LIVE, nb, 0, v));
        }
        touch(t, s);
        count(me, &u);
        return SHM_OK;
    }
}

#define BLOB_STACK 4096 /* blob buffers up to this size live on the stack */

static int state_update(struct shm_table *t, const char *key, size_t klen, unsigned type, shm_update_fn fn,
                        void *ctx, int64_t now_ms, unsigned char *old, unsigned char *nbuf)
{
    int blob = !type_is_word_state(type);
    size_t cap = t->value_max;
    ENTER_KEY(t, me, k);
    int rc;
    for (;;) {
        uint64_t c;
        struct shm_slot *s = lookup(t, &k, &c);
        if (s && !expired_at(entry_expiry(t, s, c), now_ms)) {
            if (meta_type(s) != type) {
                rc = SHM_ETYPE;
                break;
            }
        } else {
            /* Absent or expired: decide on the unused state, and insert only what must be
             * stored (a denial or a peek leaves no entry). The insert's own lookup, under the
             * home latch, retires an expired entry (S3) or finds one inserted since. */
            shm_update u = {0};
            rc = fn(ctx, 0, 0, NULL, 0, &u, blob ? nbuf : NULL, blob ? cap : 0);
            if (rc < 0) break;
            if (!u.store) {
                count(me, &u);
                break;
            }
            struct init in = {.type = type, .amount = (int64_t)u.word, .val = nbuf, .len = u.len,
                              .expires = u.expires_ms, .now_ms = &now_ms};
            rc = tbl_insert_retrying(t, me, &k, &in, &s, &c);
            if (rc == INS_DONE) {
                count(me, &u);
                rc = SHM_OK;
                break;
            }
            if (rc != INS_FOUND) break;
            if (meta_type(s) != type) {
                rc = SHM_ETYPE;
                break;
            }
        }
        rc = blob ? update_blob(t, me, s, c, fn, ctx, old, nbuf, now_ms) : update_word(t, me, s, c, fn, ctx, now_ms);
        if (rc != AGAIN) break;
    }
    shm_unpin(me);
    return rc;
}

int shm_state_update(shm_table *t, const char *key, size_t klen, unsigned type, int64_t now_ms, shm_update_fn fn,
                     void *ctx)
{
    if (type_is_word_state(type)) return state_update(t, key, klen, type, fn, ctx, now_ms, NULL, NULL);
    size_t cap = t->value_max;
    if (cap <= BLOB_STACK) {
        unsigned char old[BLOB_STACK], nbuf[BLOB_STACK];
        return state_update(t, key, klen, type, fn, ctx, now_ms, old, nbuf);
    }
    unsigned char *heap = malloc(2 * cap);
    if (!heap) return SHM_ENOMEM;
    int rc = state_update(t, key, klen, type, fn, ctx, now_ms, heap, heap + cap);
    free(heap);
    return rc;
}

int shm_state_get(shm_table *t, const char *key, size_t klen, unsigned *type, uint64_t *word, void *buf, size_t cap,
                  size_t *len)
{
    ENTER_KEY(t, me, k);
    uint64_t c;
    struct shm_slot *s = lookup(t, &k, &c);
    int rc = SHM_ENOTFOUND;
    if (s) {
        unsigned ty = meta_type(s);
        if (type_is_word_state(ty)) {
            /* The word first: a decision raises the expiry before it installs its word, so a
             * word read before the expiry is covered by it (S2). */
            uint64_t w = (uint64_t)atomic_load_explicit(&s->counter, memory_order_acquire);
            int64_t e = atomic_load_explicit(&s->expires, memory_order_acquire);
            if (ctl_load(s) == c && e != EXPIRES_DEAD && !shm_expired(e)) {
                *type = ty;
                *word = w;
                *len = 0;
                rc = SHM_OK;
            }
        } else if (ty >= SHM_TYPE_BLOB(0) && ty < SHM_TYPE_BLOB(SHM_STATE_KINDS)) {
            size_t n;
            int64_t e;
            if (bytes_snapshot(t, s, c, buf, cap, &n, &e) == 0 && !shm_expired(e)) {
                *type = ty;
                *word = 0;
                *len = n;
                rc = n > cap ? SHM_ERANGE : SHM_OK;
            }
        } else if (!shm_expired(entry_expiry(t, s, c))) {
            rc = SHM_ETYPE;
        }
    }
    shm_unpin(me);
    return rc;
}
