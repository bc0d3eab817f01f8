/*
 * table.c — the lock-free protocol on slots: lookup, insert, in-place write, increment,
 * retire, eviction, clear and the reaper's pass.
 *
 * Open addressing with linear probing over `capacity` slots (a power of two). A key's home is
 * hash & mask; it lives at distance d <= probe_max(home) from it.
 *
 * Invariants, and who keeps them:
 *  I1  A key is live in at most one slot. Inserts of one key serialise on its home slot's
 *      latch (a word holding the inserter's token, taken by CAS, stolen only from a dead
 *      owner); under the latch the inserter looks the key up again before claiming a slot.
 *  I2  probe_max(home) only grows, is written only under home's latch, and is stored before
 *      the entry it covers is published (release), so a lookup that reads it and scans that
 *      far, stopping early only at EMPTY, finds every key published before it began. Slots
 *      never return to EMPTY, so an EMPTY slot proves nothing was placed beyond it.
 *  I3  Fields of an entry (hash, meta, key, counter expiry) are written only while its slot is
 *      INSERTING by the writer and read only after an acquire load saw LIVE/WRITING. Hash and
 *      key never change while anyone may still compare them (reuse for another key waits for
 *      the epoch, part.c). The other fields change without that wait only when the same key
 *      revives its tombstone with the same type, or replaces its own expired counter or word
 *      state in place (replace_expired); readers of counters re-read the control word after
 *      the fields and treat a changed word as "gone".
 *  I4  A bytes value is written only into the inactive buffer of a slot the writer holds in
 *      WRITING, and made visible by one CAS that flips the buffer bit and bumps the version.
 *      A reader copies the active buffer and re-reads ctl: equal version and buffer means the
 *      copy is not torn (the buffer it read is written only after two flips). A changed word
 *      that is still live is a newer value of the same key and type (I1, I3): read again.
 *  I5  An increment on a live counter is one fetch_add on `counter`: it either happened or not.
 *  I6  Every transition is a CAS on the exact control word observed, except the owner's
 *      INSERTING -> LIVE publish (a release store: only a recoverer could race it, and only
 *      once the owner is dead). A dead owner's INSERTING is undone (slot FREE: the insert
 *      never happened; if it was replacing an expired entry in place, that entry's retire
 *      did); its WRITING is rolled back to LIVE with the old buffer (the write never
 *      happened).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "clock.h"
#include "hash.h"
#include "layout.h"
#include "slot.h"



/* ---- retire, recovery ------------------------------------------------------------------------ */

/* Retires the entry whose control word is c (LIVE or WRITING) with one CAS. The stamp is the
 * caller's pin + 1, an upper bound of the epoch at the moment of the CAS (part.c). An entry
 * retired while WRITING keeps the buffer bit set in its FREE word: a live writer may still be
 * copying into the slot, so only the full grace period (not revival) may hand it out again. */
int tbl_retire(struct shm_table *t, struct shm_self *me, struct shm_slot *s, uint64_t c, int stat)
{
    unsigned busy = CTL_STATE(c) == ST_WRITING;
    if (!ctl_cas(s, &c, CTL_MAKE(ST_FREE, busy, 0, me->pin + 1))) return 0;
    atomic_fetch_sub_explicit(&t->h->live, 1, memory_order_relaxed);
    if (stat >= 0) shm_stat_add(me, stat, 1);
    return 1;
}

/* Undoes a dead owner's INSERTING or WRITING at s (observed as c). 1 if done by us. */
static int recover_slot(struct shm_table *t, struct shm_self *me, struct shm_slot *s, uint64_t c)
{
    unsigned st = CTL_STATE(c);
    uint32_t owner = CTL_OWNER(c);
    /* Our own token on a slot we are not working on is a stale one of a dead holder of our
     * record (see the tokens in layout.h): every caller is between its own operations here. */
    if ((st != ST_INSERTING && st != ST_WRITING) || (owner != me->token && shm_token_alive(t, owner))) return 0;
    uint64_t to =
        st == ST_INSERTING ? CTL_MAKE(ST_FREE, 0, 0, me->pin + 1) : CTL_MAKE(ST_LIVE, CTL_BUF(c), 0, CTL_VER(c));
    if (!ctl_cas(s, &c, to)) return 0;
    if (st == ST_INSERTING) atomic_fetch_sub_explicit(&t->h->live, 1, memory_order_relaxed);
    shm_stat_add(me, STAT_RECOVERED, 1);
    return 1;
}

/* Waits for a WRITING slot to change, taking it over if its owner is dead. Returns the new ctl. */
uint64_t tbl_wait_writer(struct shm_table *t, struct shm_self *me, struct shm_slot *s, uint64_t c)
{
    int64_t deadline = 0;
    for (unsigned spins = 1;; spins++) {
        uint64_t now = ctl_load(s);
        if (now != c) return now;
        if (spins % SPIN_BEFORE_CHECK == 0) {
            if (recover_slot(t, me, s, c)) return ctl_load(s);
            if (!deadline) deadline = shm_now_ms() + OWNER_WAIT_MS;
            else if (spins % (64 * SPIN_BEFORE_CHECK) == 0 && shm_now_ms() > deadline) return 0;
            sched_yield();
        } else {
            cpu_relax();
        }
    }
}

/* ---- home latch ------------------------------------------------------------------------------ */

/* Returns -1 if a live owner held it for OWNER_WAIT_MS (see slot.h), 1 if the latch was taken
 * from a dead owner (then probe_max may be stale: the dead
 * owner never released, so nothing ordered its last stores before ours). A reaper that
 * clears a dead owner's latch leaves LATCH_ORPHANED, not 0, so that the next inserter still
 * knows (reap_slot): the reaper's CAS orders nothing of the dead owner's either. */
static int latch_acquire(struct shm_table *t, struct shm_self *me, struct shm_slot *home)
{
    if (shm_broken & SHM_BROKEN_NO_LATCH) return 0;
    int64_t deadline = 0;
    for (unsigned spins = 1;; spins++) {
        uint32_t cur = 0;
        if (atomic_compare_exchange_weak_explicit(&home->latch, &cur, me->token, memory_order_acquire,
                                                  memory_order_relaxed))
            return 0;
        if (cur == LATCH_ORPHANED) {
            if (atomic_compare_exchange_strong_explicit(&home->latch, &cur, me->token, memory_order_acquire,
                                                        memory_order_relaxed))
                return 1;
            continue;
        }
        if (cur == me->token) { /* stale: we never wait for a latch we hold (layout.h) */
            shm_stat_add(me, STAT_RECOVERED, 1);
            return 1;
        }
        if (cur != 0 && spins % SPIN_BEFORE_CHECK == 0) {
            if (!shm_token_alive(t, cur) &&
                atomic_compare_exchange_strong_explicit(&home->latch, &cur, me->token, memory_order_acquire,
                                                        memory_order_relaxed)) {
                shm_stat_add(me, STAT_RECOVERED, 1);
                return 1;
            }
            if (!deadline) deadline = shm_now_ms() + OWNER_WAIT_MS;
            else if (spins % (64 * SPIN_BEFORE_CHECK) == 0 && shm_now_ms() > deadline) return -1;
            sched_yield();
        } else {
            cpu_relax();
        }
    }
}

static void latch_release(struct shm_slot *home)
{
    if (shm_broken & SHM_BROKEN_NO_LATCH) return;
    atomic_store_explicit(&home->latch, 0, memory_order_release);
}

/* ---- eviction ------------------------------------------------------------------------------ */

static uint64_t rng_next(void)
{
    static _Thread_local uint64_t x;
    if (!x) x = (uint64_t)(uintptr_t)&x ^ ((uint64_t)getpid() << 32) ^ 0x9e3779b97f4a7c15ull;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
}

/* Retires one live entry: an expired one if the samples hold one, else the least recently
 * used of up to EVICT_ROUNDS x EVICT_SAMPLES live slots, each round found from a random
 * point. 1 on success. */
static int evict_one(struct shm_table *t, struct shm_self *me)
{
    uint32_t now = lru_now(t);
    for (int attempt = 0; attempt < 16; attempt++) {
        struct shm_slot *best = NULL;
        uint64_t best_c = 0;
        uint32_t best_age = 0;
        for (int round = 0; round < EVICT_ROUNDS; round++) {
            uint64_t start = rng_next();
            int seen = 0;
            for (int k = 0; k < EVICT_WINDOW && seen < EVICT_SAMPLES; k++) {
                if (!shm_touched(t, start + (uint64_t)k)) continue; /* never used, maybe unbacked */
                struct shm_slot *s = shm_slot_at(t, start + (uint64_t)k);
                uint64_t c = ctl_load(s);
                if (CTL_STATE(c) != ST_LIVE) continue;
                seen++;
                if (shm_expired(entry_expiry(t, s, c)) && tbl_retire_expired(t, me, s, c, STAT_EXPIRATIONS, NULL)) return 1;
                uint32_t age = now - atomic_load_explicit(&s->tick, memory_order_relaxed);
                if (!best || age > best_age) {
                    best = s;
                    best_c = c;
                    best_age = age;
                }
            }
        }
        if (best && tbl_retire(t, me, best, best_c, STAT_EVICTIONS)) return 1;
    }
    return 0;
}

/* ---- insert ---------------------------------------------------------------------------------- */


/* Claims a free slot in the probe window of home for the caller (who holds home's latch and
 * has reserved room in `live`). Returns the slot and its distance, or NULL. Meets and
 * reclaims what it can on the way: dead owners' inserts and expired entries. */
static struct shm_slot *claim(struct shm_table *t, struct shm_self *me, const struct shm_key *k, unsigned type,
                              uint32_t *dist, int *young, int *revived, int *full)
{
    uint64_t mine = CTL_MAKE(ST_INSERTING, 0, me->token, 0);
    for (uint32_t d = 0; d < MAX_PROBE; d++) {
        struct shm_slot *s = shm_slot_at(t, k->h + d);
        /* Every page this scan reads is marked (and backed) first: a slot is then never
         * INSERTING in a page the reaper skips, and lookups may stop at an unmarked page
         * (layout.h). */
        if (shm_touched_mark(t, s) != SHM_OK) {
            *full = 1;
            return NULL;
        }
        uint64_t c = ctl_load(s);
        for (;;) {
            unsigned st = CTL_STATE(c);
            /* Revival: our own key's tombstone is ours at once if it held the same type of
             * entry (see layout.h), unless it was retired mid-write. Its key bytes are stable: nobody writes a FREE
             * slot before claiming it by CAS. */
            if (st == ST_EMPTY ||
                (st == ST_FREE && (reusable(t, c) || (!CTL_BUF(c) && meta_type(s) == type && key_matches(t, s, k))))) {
                /* Decided before the CAS, from the word the CAS will confirm. A FREE slot's
                 * previous key counts as ours only if it matches (revival or a reused slot
                 * that happens to hold our key: either way its bytes are already right). */
                int same = st == ST_FREE && key_matches(t, s, k);
                if (ctl_cas(s, &c, mine)) {
                    /* A revived slot is read by stale readers all along (layout.h): as in
                     * write_in_place, the INSERTING mark must be ordered before fill's data
                     * stores, so that a reader whose copy saw any of them sees a changed word
                     * on its re-check (the CAS's release half orders only what came before). */
                    atomic_thread_fence(memory_order_release);
                    *dist = d;
                    *revived = same;
                    return s;
                }
                continue; /* c now holds the new word: look again */
            }
            if (st == ST_FREE)
                *young = 1;
            else if (st == ST_INSERTING)
                recover_slot(t, me, s, c);
            else if (st == ST_LIVE && shm_expired(entry_expiry(t, s, c)))
                tbl_retire_expired(t, me, s, c, STAT_EXPIRATIONS, NULL);
            break;
        }
    }
    return NULL;
}

/* Writes a new entry into a slot the caller holds INSERTING. A revived slot already holds
 * this key's hash and bytes, and stale readers may be comparing them: they are not rewritten. */
static void fill(struct shm_table *t, struct shm_slot *s, const struct shm_key *k, const struct init *in, int revived)
{
    if (!revived) {
        atomic_store_explicit(&s->hash, k->h, memory_order_relaxed);
        key_store(t, s, k);
    }
    atomic_store_explicit(&s->meta, (uint32_t)k->len | in->type << 16, memory_order_relaxed);
    atomic_store_explicit(&s->tick, lru_now(t), memory_order_relaxed);
    if (type_in_head(in->type)) {
        /* The value, then the expiry with release: whoever reads this expiry with acquire (an
         * increment's fast path, a decider's raise: state.c) then sees this value, and its own
         * RMW on the value lands after it - not before, to be overwritten by this store. */
        atomic_store_explicit(&s->counter, in->amount, memory_order_relaxed);
        atomic_store_explicit(&s->expires, in->expires, memory_order_release);
    } else {
        atomic_store_explicit(&s->expires, 0, memory_order_relaxed);
        vbuf_write(shm_slot_buf(t, s, 0), in->val, in->len, in->expires);
    }
}

/* Replaces the expired entry at s (LIVE word c) of the key and type being inserted with the
 * new one, in its own slot: LIVE(v) -> INSERTING(me) -> LIVE(v'). The caller holds the key's
 * home latch, and the entry is a counter or a word state (everything in the head). This is
 * insert's retire of the expired entry followed by claim's revival of the same slot, with the
 * FREE word between them left out, and it is safe for the same reasons (I3, I6, layout.h):
 *  - readers that saw LIVE(v) and copy fields re-read the control word after them and find it
 *    changed (versions never repeat: vseq); the key bytes and hash are not rewritten (fill,
 *    revived), and meta is rewritten with the value it holds;
 *  - the two that do not re-read it act on the value with an RMW after reading the expiry:
 *    an increment (shm_incr) and a word-state decider (state.c, after its raise). One that
 *    read the old life's expiry is ordered before the replacement (its RMW may land on the
 *    old value, which is then overwritten: as with a retire, the expiry absorbed it); one that
 *    read the new life's expiry, written by fill with release and read with acquire, has the
 *    new value before its RMW: the increment adds to it, the decider's CAS fails (or S4);
 *  - for a word state the expiry is taken to EXPIRES_DEAD first, as a retire for expiry does
 *    (S3 of state.c): a decider's raise that came before that makes it fail;
 *  - the slot counts in `live` as LIVE and as INSERTING alike, so occupancy does not move:
 *    nothing is reserved or evicted, and a dead owner's INSERTING is undone as any (FREE,
 *    live - 1, recover_slot: the old entry is then gone, the new one never came).
 * Nor is `inserts` counted: it is the LRU clock, which moves with new keys only (a table of
 * lapsing keys still evicts expired entries first: evict_one).
 * What it saves a key whose state lapses between its requests (a token bucket at 1M/s refills
 * within a millisecond): the FREE word's CAS, claim's probe, and three RMWs on the header's
 * shared line (`live` twice, `inserts`). Measured at 1M keys (issue 15, bench/README.md):
 * such decisions went from 1.77-2.16x an increment to 1.40-1.88x at 1 process, and from 2.49x
 * to 1.71x at 2, where that line moved between the processes. 1 if done, 0 if the entry
 * changed under us (look again). */
static int replace_expired(struct shm_table *t, struct shm_self *me, const struct shm_key *k, struct shm_slot *s,
                           uint64_t c, const struct init *in)
{
    if (!tbl_expiry_kill(s, c, in->now_ms)) return 0;
    if (!ctl_cas(s, &c, CTL_MAKE(ST_INSERTING, 0, me->token, 0))) return 0;
    /* The INSERTING mark before fill's stores, as in claim. */
    atomic_thread_fence(memory_order_release);
    shm_stat_add(me, STAT_EXPIRATIONS, 1);
    shm_debug_crash(SHM_CRASH_REPLACING);
    fill(t, s, k, in, 1);
    uint64_t v = atomic_fetch_add_explicit(&s->vseq, 1, memory_order_relaxed) + 1;
    atomic_store_explicit(&s->ctl, CTL_MAKE(ST_LIVE, 0, 0, v), memory_order_release);
    return 1;
}

/* Inserts key, unless a live unexpired entry of it exists that the caller wants to use:
 * then INS_FOUND with that slot in *found / *fctl (an entry of any type for counter and state
 * callers, who check its type; a bytes entry for TYPE_BYTES callers). An expired entry of the
 * same head type is replaced in its slot (replace_expired); any other expired entry, or a
 * counter or state that a set replaces, is retired first. INS_RETRY: no room in the probe
 * window; the caller unpins, lets the epoch move, and tries again. Caller is pinned. */
static int insert(struct shm_table *t, struct shm_self *me, const struct shm_key *k, const struct init *in,
                  struct shm_slot **found, uint64_t *fctl)
{
    struct shm_slot *home = shm_slot_at(t, k->h);
    /* The home's page is marked before its latch can hold our token, so that if we die
     * holding it, reaper passes (which visit marked pages only) find and clear it. The fence
     * keeps the mark (a relaxed RMW) before the latch CAS, which is only an acquire: anyone
     * who sees our token in the latch sees the mark. (On x86 both are locked instructions,
     * executed in this order; the fence only binds the compiler.) */
    if (shm_touched_mark(t, home) != SHM_OK) return SHM_EFULL; /* no backing for its page */
    atomic_thread_fence(memory_order_release);
    int stolen = latch_acquire(t, me, home);
    if (stolen < 0) return SHM_ETIMEDOUT;
    shm_debug_crash(SHM_CRASH_HOLDING_LATCH);
    uint32_t bound = stolen ? MAX_PROBE : atomic_load_explicit(&home->probe_max, memory_order_acquire);
    if (bound > MAX_PROBE) bound = MAX_PROBE; /* damage (see lookup) */
    uint64_t c;
    struct shm_slot *s;
    while ((s = lookup_bounded(t, k, bound, &c))) {
        int64_t e = entry_expiry(t, s, c);
        int expired = in->now_ms ? expired_at(e, *in->now_ms) : shm_expired(e);
        if (!expired && (in->type != TYPE_BYTES || meta_type(s) == TYPE_BYTES)) {
            latch_release(home);
            *found = s;
            *fctl = c;
            return INS_FOUND;
        }
        /* Expired, or a counter or state that a set replaces: replace or retire it (a lost CAS
         * means the entry changed under us: look again). */
        if (expired && CTL_STATE(c) == ST_WRITING) { /* its write brings a new expiry: wait for it */
            if (!tbl_wait_writer(t, me, s, c)) {
                latch_release(home);
                return SHM_ETIMEDOUT;
            }
        } else if (expired && CTL_STATE(c) == ST_LIVE && type_in_head(in->type) && meta_type(s) == in->type) {
            if (replace_expired(t, me, k, s, c, in)) {
                latch_release(home);
                return INS_DONE;
            }
        } else if (expired) {
            tbl_retire_expired(t, me, s, c, STAT_EXPIRATIONS, in->now_ms);
        } else {
            tbl_retire(t, me, s, c, -1);
        }
    }

    /* Reserve room; over max_size, evict one entry first. If no live entry can be found to
     * evict, `live` has drifted above the truth (a process killed between reserving and
     * claiming, see shm_reap_pass): go on and let the probe window decide. */
    /* + 1 in unsigned arithmetic: a damaged count of INT64_MAX must not overflow (fuzz_table) */
    int64_t n = (int64_t)((uint64_t)atomic_fetch_add_explicit(&t->h->live, 1, memory_order_relaxed) + 1u);
    shm_debug_crash(SHM_CRASH_AFTER_RESERVE);
    if ((uint64_t)n > t->max_size) evict_one(t, me);
    uint32_t d = 0;
    int young = 0, revived = 0, full = 0;
    s = claim(t, me, k, in->type, &d, &young, &revived, &full);
    /* An entry with a value, or a key longer than the head holds, writes the slot's body:
     * backing first (layout.h); without it the claim is given back, and the insert fails. */
    if (s && (!type_in_head(in->type) || k->nw > SHM_KEY_INLINE_WORDS) && shm_body_reserve(t, s) != SHM_OK) {
        atomic_store_explicit(&s->ctl, CTL_MAKE(ST_FREE, 0, 0, me->pin + 1), memory_order_release);
        s = NULL;
        full = 1;
    }
    if (!s) {
        atomic_fetch_sub_explicit(&t->h->live, 1, memory_order_relaxed);
        latch_release(home);
        return young && !full ? INS_RETRY : SHM_EFULL;
    }
    fill(t, s, k, in, revived);
    /* A CAS-max, not load-then-store: after a stolen or orphaned latch the load may not see a
     * dead owner's last (larger) store yet, and a plain store would lower the bound (I2). */
    uint32_t pm = atomic_load_explicit(&home->probe_max, memory_order_relaxed);
    while (d > pm && !atomic_compare_exchange_weak_explicit(&home->probe_max, &pm, d, memory_order_release,
                                                            memory_order_relaxed)) {
    }
    atomic_fetch_add_explicit(&t->h->inserts, 1, memory_order_relaxed);
    /* Publish: everything written above becomes visible with LIVE (I2, I3). */
    uint64_t v = atomic_fetch_add_explicit(&s->vseq, 1, memory_order_relaxed) + 1;
    atomic_store_explicit(&s->ctl, CTL_MAKE(ST_LIVE, 0, 0, v), memory_order_release);
    latch_release(home);
    return INS_DONE;
}

/* Runs insert, stepping out of the pin between attempts so the epoch can advance and free
 * tombstones in the probe window. A participant that is pinned but descheduled holds the
 * epoch back for a time slice; one that is stopped (SIGSTOP, a debugger) holds it for good,
 * so the wait is bounded and ends in SHM_EFULL. Returns as insert, never INS_RETRY. */
int tbl_insert_retrying(struct shm_table *t, struct shm_self *me, const struct shm_key *k, const struct init *in,
                           struct shm_slot **found, uint64_t *fctl)
{
    int64_t deadline = 0;
    for (int attempt = 0;; attempt++) {
        int rc = insert(t, me, k, in, found, fctl);
        if (rc != INS_RETRY) return rc;
        if (attempt == 0)
            deadline = shm_now_ms() + INSERT_WAIT_MS;
        else if (shm_now_ms() > deadline)
            return SHM_EFULL;
        shm_unpin(me);
        shm_epoch_try_advance(t);
        if (attempt > 1) sched_yield();
        shm_epoch_try_advance(t);
        shm_pin(t, me);
    }
}

/* ---- operations ------------------------------------------------------------------------------ */

/* Decimal text of a counter (snprintf cost 645 of the 1087 instructions of such a get). */
static int format_counter(int64_t v, void *buf, size_t cap, size_t *len)
{
    char tmp[24], *p = tmp + sizeof tmp;
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do
        *--p = (char)('0' + u % 10);
    while ((u /= 10));
    if (v < 0) *--p = '-';
    *len = (size_t)(tmp + sizeof tmp - p);
    if (*len > cap) return SHM_ERANGE;
    memcpy(buf, p, *len);
    return SHM_OK;
}

int shm_get(shm_table *t, const char *key, size_t klen, void *buf, size_t cap, size_t *len)
{
    ENTER_KEY(t, me, k);
    uint64_t c;
    struct shm_slot *s = lookup(t, &k, &c);
    int rc = SHM_ENOTFOUND;
    if (s && meta_type(s) == TYPE_COUNTER) {
        int64_t e = atomic_load_explicit(&s->expires, memory_order_acquire);
        int64_t v = atomic_load_explicit(&s->counter, memory_order_acquire);
        /* Still the entry we looked up? If it was retired (and maybe revived) since, these
         * fields may belong to another life of the slot: it is gone for this get. */
        if (ctl_load(s) == c && !shm_expired(e)) rc = format_counter(v, buf, cap, len);
    } else if (s && meta_type(s) != TYPE_BYTES) { /* a rate-limit state: shm_state_get reads it */
        if (!shm_expired(entry_expiry(t, s, c))) rc = SHM_ESTATE;
    } else if (s) {
        size_t n;
        int64_t e;
        if (bytes_snapshot(t, s, c, buf, cap, &n, &e) == 0 && !shm_expired(e)) {
            *len = n;
            rc = n > cap ? SHM_ERANGE : SHM_OK;
        }
    }
    if (rc != SHM_ENOTFOUND) touch(t, s);
    shm_stat_add(me, rc == SHM_ENOTFOUND ? STAT_MISSES : STAT_HITS, 1);
    shm_unpin(me);
    return rc;
}

int shm_exists(shm_table *t, const char *key, size_t klen)
{
    ENTER_KEY(t, me, k);
    uint64_t c;
    struct shm_slot *s = lookup(t, &k, &c);
    int present = s && !shm_expired(entry_expiry(t, s, c));
    shm_stat_add(me, present ? STAT_HITS : STAT_MISSES, 1);
    shm_unpin(me);
    return present;
}

int shm_ttl(shm_table *t, const char *key, size_t klen, int64_t *ttl_ms)
{
    ENTER_KEY(t, me, k);
    uint64_t c;
    struct shm_slot *s = lookup(t, &k, &c);
    int rc = SHM_ENOTFOUND;
    if (s) {
        int64_t e = entry_expiry(t, s, c);
        if (e == 0) {
            *ttl_ms = -1;
            rc = SHM_OK;
        } else {
            int64_t left = e - shm_now_ms();
            if (left > 0) {
                *ttl_ms = left;
                rc = SHM_OK;
            }
        }
    }
    shm_stat_add(me, rc ? STAT_MISSES : STAT_HITS, 1);
    shm_unpin(me);
    return rc;
}

int shm_del(shm_table *t, const char *key, size_t klen)
{
    ENTER_KEY(t, me, k);
    uint64_t c;
    struct shm_slot *s;
    /* Retire whatever live entry the key has; a CAS lost to a concurrent write means the
     * entry changed version: look again. Deleting an expired entry reclaims it quietly. */
    while ((s = lookup(t, &k, &c))) {
        int expired = shm_expired(entry_expiry(t, s, c));
        if (tbl_retire(t, me, s, c, expired ? STAT_EXPIRATIONS : STAT_DELETES)) break;
    }
    shm_unpin(me);
    return SHM_OK;
}

/* Adds amount to a live counter (I5). SHM_EOVERFLOW leaves it unchanged.
 * Fast path: one fetch_add of a small amount (|amount| < 2^48) to a counter that looked far
 * from the edges (|counter| < 2^62). The look is only a hint: a large add on the CAS path,
 * or a counter re-created at a large value, may move the counter near an edge while the
 * fetch_add is on its way. So the fetch_add's own result decides: if the counter it added to
 * was outside +-2^62, the add is undone (C11 atomics on signed types wrap, so fetch_sub
 * restores it exactly) and redone on the CAS path, which checks before it adds. Inside
 * +-2^62, at most SHM_MAX_PARTS small adds in flight (4095 x 2^48 < 2^62) cannot wrap.
 * What this leaves (traffic.h says it): near the edges, between such an add and its undo,
 * others may read the counter with that add in it. */
#define COUNTER_SAFE (INT64_C(1) << 62)
#define AMOUNT_SAFE  (INT64_C(1) << 48)
static int counter_add(struct shm_table *t, struct shm_self *me, struct shm_slot *s, int64_t amount, int64_t *out)
{
    int64_t old = atomic_load_explicit(&s->counter, memory_order_relaxed), sum;
    int fast = old > -COUNTER_SAFE && old < COUNTER_SAFE && amount > -AMOUNT_SAFE && amount < AMOUNT_SAFE;
    if (__builtin_expect(fast, 1)) {
        int64_t prev = atomic_fetch_add_explicit(&s->counter, amount, memory_order_relaxed);
        if (__builtin_expect(prev > -COUNTER_SAFE && prev < COUNTER_SAFE, 1)) {
            sum = prev + amount;
        } else {
            atomic_fetch_sub_explicit(&s->counter, amount, memory_order_relaxed);
            fast = 0;
            old = atomic_load_explicit(&s->counter, memory_order_relaxed);
        }
    }
    if (!fast) {
        do {
            if (__builtin_add_overflow(old, amount, &sum)) return SHM_EOVERFLOW;
        } while (
            !atomic_compare_exchange_weak_explicit(&s->counter, &old, sum, memory_order_relaxed, memory_order_relaxed));
    }
    *out = sum;
    touch(t, s);
    shm_stat_add(me, STAT_INCRS, 1);
    return SHM_OK;
}

int shm_incr(shm_table *t, const char *key, size_t klen, int64_t amount, int64_t ttl_ms, int64_t *out)
{
    ENTER_KEY(t, me, k);
    uint64_t c;
    struct shm_slot *s = lookup(t, &k, &c);
    int rc;
    /* The expiry with acquire: one written by an insert carries the insert's value (fill). */
    if (s && meta_type(s) == TYPE_COUNTER && !shm_expired(atomic_load_explicit(&s->expires, memory_order_acquire))) {
        rc = counter_add(t, me, s, amount, out); /* the fast path: one fetch_add */
    } else if (s && meta_type(s) != TYPE_COUNTER && !shm_expired(entry_expiry(t, s, c))) {
        rc = SHM_ETYPE;
    } else {
        struct init in = {.type = TYPE_COUNTER, .amount = amount, .expires = ttl_ms ? shm_now_ms() + ttl_ms : 0};
        rc = tbl_insert_retrying(t, me, &k, &in, &s, &c);
        if (rc == INS_DONE) {
            *out = amount;
            shm_stat_add(me, STAT_INCRS, 1);
        } else if (rc == INS_FOUND) {
            rc = meta_type(s) == TYPE_COUNTER ? counter_add(t, me, s, amount, out) : SHM_ETYPE;
        }
    }
    shm_unpin(me);
    return rc;
}

/* Writes a new value into a live bytes entry (I4). 0 done, -1 the entry is gone, -2 its
 * writer held it for OWNER_WAIT_MS. */
static int write_in_place(struct shm_table *t, struct shm_self *me, struct shm_slot *s, uint64_t c, const void *val,
                          size_t len, int64_t expires)
{
    for (;;) {
        unsigned st = CTL_STATE(c);
        if (st == ST_WRITING) {
            if (!(c = tbl_wait_writer(t, me, s, c))) return -2;
            continue;
        }
        if (st != ST_LIVE) return -1;
        uint64_t w = CTL_MAKE(ST_WRITING, CTL_BUF(c), me->token, CTL_VER(c));
        if (!ctl_cas(s, &c, w)) continue;
        /* Order the WRITING mark before the data stores, so a reader that sees any of them
         * re-reads a changed version (the seqlock writer's barrier). */
        atomic_thread_fence(memory_order_release);
        unsigned nb = !CTL_BUF(c);
        vbuf_write(shm_slot_buf(t, s, nb), val, len, expires);
        /* Fails only if a delete or eviction retired the entry meanwhile: the write is then
         * ordered before that removal, which is a correct outcome. */
        uint64_t v = atomic_fetch_add_explicit(&s->vseq, 1, memory_order_relaxed) + 1;
        ctl_cas(s, &w, CTL_MAKE(ST_LIVE, nb, 0, v));
        touch(t, s);
        return 0;
    }
}

int shm_set(shm_table *t, const char *key, size_t klen, const void *val, size_t len, int64_t ttl_ms)
{
    if (len > t->value_max) return SHM_ETOOBIG;
    ENTER_KEY(t, me, k);
    uint64_t c;
    int64_t expires = ttl_ms ? shm_now_ms() + ttl_ms : 0;
    struct init in = {.type = TYPE_BYTES, .val = val, .len = len, .expires = expires};
    int rc;
    for (;;) {
        struct shm_slot *s = lookup(t, &k, &c);
        if (!(s && meta_type(s) == TYPE_BYTES && !shm_expired(entry_expiry(t, s, c)))) {
            rc = tbl_insert_retrying(t, me, &k, &in, &s, &c);
            if (rc != INS_FOUND) break;
        }
        int w = write_in_place(t, me, s, c, val, len, expires);
        if (w == 0 || w == -2) {
            rc = w == 0 ? SHM_OK : SHM_ETIMEDOUT;
            break;
        }
    }
    if (rc == SHM_OK) shm_stat_add(me, STAT_SETS, 1);
    shm_unpin(me);
    return rc;
}

/* ---- whole-table passes ---------------------------------------------------------------------
 * Clear and the reaper visit every slot of every chunk that has ever held an entry (the
 * touched bitmap, layout.h): a pass costs the part of the table in use, not its capacity,
 * and never faults in the untouched part of a large table. */

int shm_touched_mark(struct shm_table *t, struct shm_slot *s)
{
    uint64_t c = (shm_slot_index(t, s) << t->head_shift) >> SHM_CHUNK_SHIFT, bit = 1ull << (c % 64);
    if (atomic_load_explicit(&t->touched[c / 64], memory_order_acquire) & bit) return SHM_OK;
    /* Backing before the bit (release): whoever sees the bit may touch the page. */
    int rc = shm_reserve(t, t->heads_off + (c << SHM_CHUNK_SHIFT), 1ull << SHM_CHUNK_SHIFT);
    if (rc) return rc;
    atomic_fetch_or_explicit(&t->touched[c / 64], bit, memory_order_release);
    return SHM_OK;
}

typedef void (*slot_fn)(struct shm_table *t, struct shm_self *me, struct shm_slot *s, void *arg);

static int for_each_touched_slot(struct shm_table *t, struct shm_self *me, slot_fn fn, void *arg)
{
    const uint64_t per_chunk = (1ull << SHM_CHUNK_SHIFT) >> t->head_shift;
    uint64_t cap = t->capacity, visited = 0;
    for (uint64_t c = 0; c * per_chunk < cap; c++) {
        if (!(atomic_load_explicit(&t->touched[c / 64], memory_order_acquire) & (1ull << (c % 64)))) continue;
        for (uint64_t i = c * per_chunk; i < (c + 1) * per_chunk && i < cap; i++) {
            if (++visited % REAP_BATCH == 0) { /* let the epoch move between batches */
                shm_unpin(me);
                shm_pin(t, me);
            }
            fn(t, me, shm_slot_at(t, i), arg);
        }
    }
    return SHM_OK;
}

static void clear_slot(struct shm_table *t, struct shm_self *me, struct shm_slot *s, void *arg)
{
    (void)arg;
    uint64_t c = ctl_load(s);
    while ((CTL_STATE(c) == ST_LIVE || CTL_STATE(c) == ST_WRITING) && !tbl_retire(t, me, s, c, -1))
        c = ctl_load(s);
}

int shm_clear(shm_table *t)
{
    ENTER(t, me);
    int rc = for_each_touched_slot(t, me, clear_slot, NULL);
    shm_unpin(me);
    return rc;
}

struct reap {
    uint64_t reclaimed, occupied;
};

static void reap_slot(struct shm_table *t, struct shm_self *me, struct shm_slot *s, void *arg)
{
    struct reap *r = arg;
    uint64_t *reclaimed = &r->reclaimed;
    uint64_t c = ctl_load(s);
    unsigned st = CTL_STATE(c);
    r->occupied += st == ST_LIVE || st == ST_WRITING || st == ST_INSERTING;
    if (st == ST_LIVE && shm_expired(entry_expiry(t, s, c))) {
        *reclaimed += (uint64_t)tbl_retire_expired(t, me, s, c, STAT_EXPIRATIONS, NULL);
    } else if (st == ST_INSERTING || st == ST_WRITING) {
        *reclaimed += (uint64_t)recover_slot(t, me, s, c);
    }
    /* A dead owner's latch becomes LATCH_ORPHANED, which the next inserter takes as stolen
     * (latch_acquire): clearing it to 0 would let that inserter trust probe_max, which
     * nothing ordered after the dead owner's last store to it. */
    uint32_t l = atomic_load_explicit(&s->latch, memory_order_relaxed);
    if (l && l != LATCH_ORPHANED && (l == me->token || !shm_token_alive(t, l)) &&
        atomic_compare_exchange_strong_explicit(&s->latch, &l, LATCH_ORPHANED, memory_order_relaxed,
                                                memory_order_relaxed))
        shm_stat_add(me, STAT_RECOVERED, 1);
}

/* A reaper pass. It also repairs `live`, which a process killed between reserving room and
 * claiming a slot (or between retiring and decrementing) leaves one too high: when neither
 * `live` nor the insert count differ at the end of the pass from the start, the slots counted
 * are taken as the truth. Only net values are compared: a retire (live - 1) and a reservation
 * not yet published (live + 1, inserts unchanged) that cancel out during the pass make the
 * count one too low, until a later pass (a table may then hold max_size + 1 entries). Closing
 * that needs a modification sequence in the same word as `live`. */
int shm_reap_pass(shm_table *t, uint64_t *reclaimed)
{
    struct reap r = {0};
    ENTER(t, me);
    int64_t live0 = atomic_load(&t->h->live);
    uint64_t ins0 = atomic_load(&t->h->inserts);
    int rc = for_each_touched_slot(t, me, reap_slot, &r);
    int64_t live1 = atomic_load(&t->h->live);
    if (rc == SHM_OK && live0 == live1 && ins0 == atomic_load(&t->h->inserts) && live1 != (int64_t)r.occupied)
        atomic_compare_exchange_strong(&t->h->live, &live1, (int64_t)r.occupied);
    shm_unpin(me);
    shm_epoch_try_advance(t);
    shm_epoch_try_advance(t);
    if (reclaimed) *reclaimed = r.reclaimed;
    return rc;
}

/* ---- stats and checks ------------------------------------------------------------------------- */

static uint64_t resident_bytes(struct shm_table *t)
{
    long page = sysconf(_SC_PAGESIZE);
    size_t npages = (t->map_size + (size_t)page - 1) / (size_t)page;
    unsigned char *vec = malloc(npages);
    if (!vec) return 0;
    uint64_t n = 0;
    if (mincore(t->base, t->map_size, vec) == 0)
        for (size_t i = 0; i < npages; i++)
            n += vec[i] & 1;
    free(vec);
    return n * (uint64_t)page;
}

int shm_stats_get(shm_table *t, shm_stats *o)
{
    memset(o, 0, sizeof *o);
    struct shm_header *h = t->h;
    int64_t live = atomic_load(&h->live);
    o->keys = live > 0 ? (uint64_t)live : 0;
    o->capacity = t->capacity;
    o->max_size = t->max_size;
    o->map_bytes = t->map_size;
    o->resident_bytes = resident_bytes(t);
    o->huge_bytes = shm_huge_bytes(t);
    o->epoch = atomic_load(&h->epoch);
    o->reaper_runs = atomic_load(&h->reaper_runs);
    uint32_t rt = atomic_load(&h->reaper_token);
    o->reaper_pid = rt && shm_token_alive(t, rt) ? atomic_load(&h->reaper_pid) : 0;
    uint32_t n = shm_part_hwm(t, memory_order_seq_cst);
    for (uint32_t i = 0; i < n; i++) { /* liveness first: it recovers dead records' counts */
        struct shm_part *p = &t->parts[i];
        if (atomic_load_explicit(&p->pid, memory_order_relaxed) != 0)
            o->attached += (uint64_t)shm_token_alive(t, TOKEN_MAKE(i, atomic_load(&p->incarnation)));
    }
    for (uint32_t i = 0; i < n; i++) {
        struct shm_part *p = &t->parts[i];
        uint64_t st[STAT_N];
        for (int k = 0; k < STAT_N; k++)
            st[k] = atomic_load_explicit(&p->stat[k], memory_order_relaxed);
        o->hits += st[STAT_HITS];
        o->misses += st[STAT_MISSES];
        o->sets += st[STAT_SETS];
        o->increments += st[STAT_INCRS];
        o->deletes += st[STAT_DELETES];
        o->evictions += st[STAT_EVICTIONS];
        o->expirations += st[STAT_EXPIRATIONS];
        o->recovered += st[STAT_RECOVERED];
        o->decisions += st[STAT_DECISIONS];
        o->denied += st[STAT_DENIED];
    }
    return SHM_OK;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int shm_check(shm_table *t, shm_check_report *r)
{
    memset(r, 0, sizeof *r);
    r->live_counter = atomic_load(&t->h->live);
    uint64_t cap = t->capacity, nl = 0;
    uint64_t *idx = malloc(cap * sizeof *idx);
    if (!idx) return SHM_ENOMEM;
    for (uint64_t i = 0; i < cap; i++) {
        if (!shm_touched(t, i)) { /* never used: EMPTY, and maybe without backing */
            r->empty++;
            continue;
        }
        struct shm_slot *s = shm_slot_at(t, i);
        uint64_t c = ctl_load(s);
        switch (CTL_STATE(c)) {
        case ST_EMPTY: r->empty++; break;
        case ST_FREE: r->free_slots++; break;
        case ST_INSERTING:
            r->inserting++;
            r->dead_owned += !shm_token_alive(t, CTL_OWNER(c));
            break;
        case ST_WRITING: r->writing++; r->dead_owned += !shm_token_alive(t, CTL_OWNER(c)); /* fallthrough */
        case ST_LIVE: {
            r->live += CTL_STATE(c) == ST_LIVE;
            idx[nl++] = i;
            uint64_t h = atomic_load(&s->hash);
            uint64_t dist = (i - (h & t->mask)) & t->mask;
            if (dist > atomic_load(&shm_slot_at(t, h)->probe_max)) r->probe_violations++;
            break;
        }
        }
        uint32_t l = atomic_load(&s->latch);
        if (l && l != LATCH_ORPHANED && !shm_token_alive(t, l)) r->dead_owned++;
    }
    /* duplicates: sort live slots by hash, compare keys within equal hashes */
    uint64_t *hs = malloc(nl * 2 * sizeof *hs + 1);
    if (!hs) {
        free(idx);
        return SHM_ENOMEM;
    }
    for (uint64_t k = 0; k < nl; k++) {
        hs[2 * k] = atomic_load(&shm_slot_at(t, idx[k])->hash);
        hs[2 * k + 1] = idx[k];
    }
    qsort(hs, nl, 2 * sizeof *hs, cmp_u64);
    for (uint64_t k = 0; k < nl; k++)
        for (uint64_t j = k + 1; j < nl && hs[2 * j] == hs[2 * k]; j++) {
            struct shm_slot *a = shm_slot_at(t, hs[2 * k + 1]), *b = shm_slot_at(t, hs[2 * j + 1]);
            uint32_t la = atomic_load(&a->meta) & 0xffff;
            unsigned char ka[SHM_KEY_LIMIT], kb[SHM_KEY_LIMIT];
            if (la > SHM_KEY_LIMIT || la != (atomic_load(&b->meta) & 0xffff)) continue;
            shm_slot_key_copy(t, a, ka, la);
            shm_slot_key_copy(t, b, kb, la);
            if (memcmp(ka, kb, la) == 0) r->duplicates++;
        }
    free(hs);
    free(idx);
    return SHM_OK;
}

void shm_close_table(shm_table *t)
{
    if (!t) return;
    shm_reaper_stop(t);
    atomic_store_explicit(&t->closed, 1, memory_order_release);
    shm_self_leave(t);
    shm_table_unref(t);
}
