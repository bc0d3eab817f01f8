/*
 * slot.h — what the operations on slots share (table.c, the counters and bytes entries;
 * state.c, the rate-limit states): reading and changing a slot's control word, keys and
 * lookups, value buffers, and the insert and retire steps. The protocol and its invariants
 * are described at the top of table.c.
 */
#ifndef TRAFFIC_SHM_SLOT_H
#define TRAFFIC_SHM_SLOT_H

#include <sched.h>
#include <string.h>

#include "clock.h"
#include "hash.h"
#include "layout.h"

/* Tuning. */
#define MAX_PROBE         128  /* farthest an insert looks from the home slot */
#define LRU_SHIFT         3    /* the LRU clock ticks every 8 inserts */
#define EVICT_SAMPLES     8    /* live slots compared per eviction (as in Redis) */
#define EVICT_WINDOW      64   /* slots scanned to find them */
#define EVICT_ROUNDS      3    /* samples looked at for an expired entry before LRU decides */
#define SPIN_BEFORE_CHECK 128  /* busy-waits before a liveness check of the slot's owner */
#define INSERT_WAIT_MS    200  /* how long an insert waits for a stalled epoch before EFULL */
#define REAP_BATCH        1024 /* slots per pinned stretch of a reaper pass */
/* How long an operation waits for a live owner of a latch or of a WRITING slot before it
 * gives up with SHM_ETIMEDOUT: a stopped process (SIGSTOP, a debugger) holds them, and so does
 * a damaged participant record that reads as a live holder. Never a hang. */
#define OWNER_WAIT_MS     2000

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    atomic_signal_fence(memory_order_seq_cst); /* a compiler barrier: the spin still re-reads */
#endif
}

static inline uint64_t ctl_load(struct shm_slot *s)
{
    return atomic_load_explicit(&s->ctl, memory_order_acquire);
}
static inline int ctl_cas(struct shm_slot *s, uint64_t *expect, uint64_t desired)
{
    return atomic_compare_exchange_strong_explicit(&s->ctl, expect, desired, memory_order_acq_rel,
                                                   memory_order_acquire);
}
static inline unsigned meta_type(struct shm_slot *s)
{
    return atomic_load_explicit(&s->meta, memory_order_relaxed) >> 16;
}
static inline uint32_t lru_now(struct shm_table *t)
{
    return (uint32_t)(atomic_load_explicit(&t->h->inserts, memory_order_relaxed) >> LRU_SHIFT);
}
static inline void touch(struct shm_table *t, struct shm_slot *s)
{
    uint32_t now = lru_now(t);
    if (atomic_load_explicit(&s->tick, memory_order_relaxed) != now)
        atomic_store_explicit(&s->tick, now, memory_order_relaxed);
}
/* Has a FREE slot's grace period passed (epoch >= stamp + 2)? Stamps are the low 32 bits of
 * an epoch, so the distance is taken modulo 2^32; a tombstone left alone for 2^31 epochs
 * looks young again for a while, which only delays its reuse. */
static inline int reusable(struct shm_table *t, uint64_t c)
{
    if (shm_broken & SHM_BROKEN_NO_GRACE) return 1;
    uint32_t d = (uint32_t)atomic_load_explicit(&t->h->epoch, memory_order_acquire) - CTL_VER(c);
    return d >= 2 && d < (1u << 31);
}

/* ---- value buffers: word-wise relaxed atomic copies (race-free by the C11 model, and
 * ThreadSanitizer sees them as atomics). Buffers are 8-aligned and padded to 8. ---------- */

static inline void vbuf_write(struct shm_vbuf *v, const void *src, size_t len, int64_t expires)
{
    _Atomic uint64_t *w = (_Atomic uint64_t *)shm_vbuf_data(v);
    const unsigned char *p = src;
    for (size_t i = 0; i < len; i += 8) {
        uint64_t x = 0;
        memcpy(&x, p + i, len - i < 8 ? len - i : 8);
        atomic_store_explicit(&w[i / 8], x, memory_order_relaxed);
    }
    atomic_store_explicit(&v->len, (uint32_t)len, memory_order_relaxed);
    atomic_store_explicit(&v->expires, expires, memory_order_relaxed);
}

static inline void vbuf_read(struct shm_vbuf *v, void *dst, size_t len)
{
    _Atomic uint64_t *w = (_Atomic uint64_t *)shm_vbuf_data(v);
    unsigned char *p = dst;
    for (size_t i = 0; i < len; i += 8) {
        uint64_t x = atomic_load_explicit(&w[i / 8], memory_order_relaxed);
        memcpy(p + i, &x, len - i < 8 ? len - i : 8);
    }
}

/* A consistent snapshot of a bytes entry: copies up to cap bytes into buf (buf may be NULL),
 * reports its length and expiry. Returns 0, or -1 if the entry was retired meanwhile. */
static inline int bytes_snapshot(struct shm_table *t, struct shm_slot *s, uint64_t c, void *buf, size_t cap, size_t *len,
                          int64_t *expires)
{
    for (;;) {
        struct shm_vbuf *v = shm_slot_buf(t, s, CTL_BUF(c));
        size_t n = atomic_load_explicit(&v->len, memory_order_relaxed);
        int64_t e = atomic_load_explicit(&v->expires, memory_order_relaxed);
        if (n > t->value_max) n = t->value_max; /* torn; the re-check below will see it */
        if (buf && n <= cap) vbuf_read(v, buf, n);
        atomic_thread_fence(memory_order_acquire);
        /* acquire: on a retry c2 begins the next copy, whose reads must come after it */
        uint64_t c2 = atomic_load_explicit(&s->ctl, memory_order_acquire);
        if ((shm_broken & SHM_BROKEN_NO_RECHECK) || (CTL_VER(c2) == CTL_VER(c) && CTL_BUF(c2) == CTL_BUF(c) &&
                                                     (CTL_STATE(c2) == ST_LIVE || CTL_STATE(c2) == ST_WRITING))) {
            *len = n;
            *expires = e;
            return 0;
        }
        if (CTL_STATE(c2) != ST_LIVE && CTL_STATE(c2) != ST_WRITING) return -1;
        c = c2;
    }
}

static inline int64_t entry_expiry(struct shm_table *t, struct shm_slot *s, uint64_t c)
{
    if (type_in_head(meta_type(s))) {
        int64_t e = atomic_load_explicit(&s->expires, memory_order_acquire);
        /* a changed word: the entry we looked up was retired (perhaps revived): long expired */
        return ctl_load(s) == c ? e : 1;
    }
    size_t len;
    int64_t e;
    if (bytes_snapshot(t, s, c, NULL, 0, &len, &e) < 0) return 1; /* retired: long expired */
    return e;
}

/* ---- lookup ------------------------------------------------------------------------------- */

/* A key as the table compares it: zero-padded 64-bit words, built once per operation, and
 * its hash. Key bytes in slots are stored and compared as relaxed atomic words (the key area
 * is 8-aligned and padded): a reader may compare a key that a claimer of a reusable slot is
 * overwriting; its CAS or version check then fails, and no access is a data race. */
struct shm_key {
    uint64_t h;
    size_t len, nw;
    uint64_t w[(SHM_KEY_LIMIT + 7) / 8];
};

static inline uint64_t load64(const char *p)
{
    uint64_t x;
    memcpy(&x, p, 8);
    return x;
}

/* The last, partial word of a key (r = klen % 8 bytes of it, zero-padded), read with whole
 * loads inside the key: copying the key into the word array with narrow stores and reading
 * it back as words stalls store forwarding (measured: a third of an increment). */
static inline uint64_t key_tail(const char *key, size_t klen, size_t r)
{
    if (klen >= 8) return load64(key + klen - 8) >> (8 * (8 - r));
    const unsigned char *p = (const unsigned char *)key;
    if (r >= 4) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + r - 4, 4);
        return lo | ((uint64_t)hi >> (8 * (8 - r))) << 32; /* 64-bit shift: r == 4 gives 0 */
    }
    return p[0] | (uint64_t)p[r / 2] << (8 * (r / 2)) | (uint64_t)p[r - 1] << (8 * (r - 1));
}

static inline void key_prepare(struct shm_table *t, const char *key, size_t klen, struct shm_key *k)
{
    size_t full = klen / 8, r = klen % 8;
    k->len = klen;
    k->nw = full + (r != 0);
    for (size_t i = 0; i < full; i++)
        k->w[i] = load64(key + 8 * i);
    if (r) k->w[full] = key_tail(key, klen, r);
    k->h = shm_hash_words(t->hash_seed, k->w, k->nw, klen);
}

static inline int key_matches(struct shm_table *t, struct shm_slot *s, const struct shm_key *k)
{
    if (atomic_load_explicit(&s->hash, memory_order_relaxed) != k->h) return 0;
    if ((atomic_load_explicit(&s->meta, memory_order_relaxed) & 0xffffu) != k->len) return 0;
    size_t head = k->nw < SHM_KEY_INLINE_WORDS ? k->nw : SHM_KEY_INLINE_WORDS;
    for (size_t i = 0; i < head; i++)
        if (atomic_load_explicit(&s->key[i], memory_order_relaxed) != k->w[i]) return 0;
    for (size_t i = head; i < k->nw; i++) /* a long key goes on in the body (layout.h) */
        if (atomic_load_explicit(shm_slot_key_word(t, s, i), memory_order_relaxed) != k->w[i]) return 0;
    return 1;
}

static inline void key_store(struct shm_table *t, struct shm_slot *s, const struct shm_key *k)
{
    for (size_t i = 0; i < k->nw; i++)
        atomic_store_explicit(shm_slot_key_word(t, s, i), k->w[i], memory_order_relaxed);
}

/* The slot holding key live (LIVE or WRITING), or NULL; *ctl gets the word observed.
 * bound: how far to scan (probe_max of the home, or MAX_PROBE when it cannot be trusted). */
static inline struct shm_slot *lookup_bounded(struct shm_table *t, const struct shm_key *k, uint32_t bound, uint64_t *ctl)
{
    const uint64_t per_page = 1ull << (SHM_CHUNK_SHIFT - t->head_shift);
    for (uint32_t d = 0; d <= bound; d++) {
        /* A page of heads never marked holds only EMPTY slots, and may have no backing: stop
         * there as at EMPTY, without touching it (layout.h; the caller checked the home's). */
        if (d && ((k->h + d) & (per_page - 1)) == 0 && !shm_touched(t, k->h + d)) break;
        struct shm_slot *s = shm_slot_at(t, k->h + d);
        uint64_t c = ctl_load(s);
        unsigned st = CTL_STATE(c);
        if (st == ST_EMPTY) break;
        if ((st == ST_LIVE || st == ST_WRITING) && key_matches(t, s, k)) {
            *ctl = c;
            return s;
        }
    }
    return NULL;
}

static inline struct shm_slot *lookup(struct shm_table *t, const struct shm_key *k, uint64_t *ctl)
{
    if (!shm_touched(t, k->h)) return NULL; /* no key was ever placed from this home (layout.h) */
    struct shm_slot *home = shm_slot_at(t, k->h);
    /* Most keys sit in their home slot, and a key longer than 8 bytes goes on in line 1
     * (layout.h): ask for it with line 0, so that in a large table the two misses overlap. */
    if (k->nw > 1) __builtin_prefetch(&home->key[1]);
    uint32_t bound = atomic_load_explicit(&home->probe_max, memory_order_acquire);
    /* Inserts never place a key beyond MAX_PROBE: a larger bound is damage, not a reason to
     * scan the whole table. */
    return lookup_bounded(t, k, bound < MAX_PROBE ? bound : MAX_PROBE, ctl);
}

/* ---- insert, retire (table.c) ------------------------------------------------------------- */

struct init {
    unsigned type;
    int64_t amount;  /* counters */
    const void *val; /* bytes */
    size_t len;
    int64_t expires;
    /* The clock reading an existing entry's expiry is judged by: a decision's own (state.c),
     * so that insert and the decision never disagree on whether an entry is alive (they read
     * different clocks, which may differ by a fraction of a ms - or by anything, in a table
     * whose clock parameters are damaged - and a disagreement made state_update look the key
     * up again for as long as it lasted: fuzz_table found it spinning). NULL:
     * CLOCK_MONOTONIC. */
    const int64_t *now_ms;
};

#define EXPIRES_DEAD 1 /* ms: long past, and never a real expiry (those are > now >= boot); state.c */

/* Is expiry e passed at clock reading now_ms? EXPIRES_DEAD always is, whatever the reading (a
 * damaged table clock can read below 1). */
static inline int expired_at(int64_t e, int64_t now_ms)
{
    return e == EXPIRES_DEAD || (e != 0 && now_ms >= e);
}

enum { INS_DONE = 0, INS_FOUND = 1, INS_RETRY = 2 };

/* Retires the entry whose control word is c (LIVE or WRITING) with one CAS; 1 if done. stat:
 * the participant statistic to count it under, or -1. */
int tbl_retire(struct shm_table *t, struct shm_self *me, struct shm_slot *s, uint64_t c, int stat);
/* Retires an entry found expired (control word c), 1 if done. For a word state it first
 * marks the expiry word dead (state.c explains why). now_ms: the clock reading expiry is
 * judged by (struct init), or NULL for CLOCK_MONOTONIC. */
int tbl_retire_expired(struct shm_table *t, struct shm_self *me, struct shm_slot *s, uint64_t c, int stat,
                       const int64_t *now_ms);
/* Its first half: 1 when the expired entry at s (LIVE word c) may be taken away (a word state's
 * expiry word is now dead), 0 when it changed or was raised since. */
int tbl_expiry_kill(struct shm_slot *s, uint64_t c, const int64_t *now_ms);
/* Waits for a WRITING slot to change, taking it over if its owner is dead. Returns the new ctl,
 * or 0 (never a slot's word after WRITING) when a live owner held it for OWNER_WAIT_MS. */
uint64_t tbl_wait_writer(struct shm_table *t, struct shm_self *me, struct shm_slot *s, uint64_t c);
/* Inserts key as in->type unless a live unexpired entry of it exists: INS_DONE, INS_FOUND
 * (that entry in *found, *fctl; any type unless in->type is TYPE_BYTES, which replaces other
 * types) or a negative SHM status. Caller is pinned. */
int tbl_insert_retrying(struct shm_table *t, struct shm_self *me, const struct shm_key *k, const struct init *in,
                        struct shm_slot **found, uint64_t *fctl);

/* The key's hash comes first, and the fetch of its home slot's line 0 starts before the pin:
 * in a large table that fetch is a cache and TLB miss (most of an operation's time, bench/
 * README.md "Large tables"), and the pin's work then overlaps it. A prefetch is only a hint:
 * it reads nothing the protocol relies on, and never faults (a page without backing, in a
 * named table, is not even asked for). */
#define ENTER_KEY(t, me, k)                                                                                            \
    if (__builtin_expect(klen > t->key_max, 0)) return SHM_ETOOBIG;                                                 \
    struct shm_key k;                                                                                                  \
    key_prepare(t, key, klen, &k);                                                                                     \
    if (shm_touched(t, k.h)) __builtin_prefetch(shm_slot_at(t, k.h));                                                \
    ENTER(t, me)

#define ENTER(t, me)                                                                                                   \
    struct shm_self *me = shm_self_get(t);                                                                             \
    if (__builtin_expect(!me, 0)) return SHM_EFULL;                                                                    \
    if (__builtin_expect((++me->ops & (SHM_HUGE_RECHECK - 1)) == 0, 0)) shm_huge_consider(t);                          \
    shm_pin(t, me)


#endif
