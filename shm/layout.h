/*
 * layout.h — the bytes of a shared table, and the process-local handle that maps them.
 *
 * The mapping is  [header][participants × SHM_MAX_PARTS][touched bitmap][heads × capacity]
 * [bodies × capacity] (slots, below),
 * every part 64-byte aligned, every link an index or an offset (each process maps the table
 * at its own address). Nothing in it is a pointer.
 *
 * Guarantees that are this project's own (not liburcu's, which are per process): the
 * cross-process epochs that decide when a slot may be reused, the owner tokens that let any
 * process finish or undo a dead process's half-done insert or write, and the reaper election.
 * The atomics are C11 <stdatomic.h> on the mapping: 8-byte lock-free operations are plain
 * `lock`-prefixed instructions that work across processes, and unlike liburcu's uatomic
 * (inline assembly) ThreadSanitizer understands them. liburcu supplies the futex the reaper
 * sleeps on and is woken through (urcu/futex.h). Its in-process RCU is not used here: a
 * memory handle never changes after open (no remap, no resize), so there is nothing for
 * readers of the handle to be protected from; cross-process reclamation cannot use it at all
 * (its grace periods see one process's threads), which is why the epochs are our own.
 */
#ifndef TRAFFIC_SHM_LAYOUT_H
#define TRAFFIC_SHM_LAYOUT_H

#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#include "shm.h"

#define SHM_MAGIC          0x31424154464652ull /* "RFFTAB1" */
#define SHM_FORMAT_VERSION 5u /* 5: 128-byte heads (issue 15); 4: 256-byte heads */
#define SHM_LINE           64

/* ---- owner tokens ------------------------------------------------------------------------
 * A token names one holder of a participant record: bits 0-11 the record index + 1 (so 0
 * means "nobody"), bits 12-27 the low 16 bits of the record's incarnation. The incarnation is
 * bumped when a dead holder's record is recovered (a clean release leaves nothing behind that
 * carries its token, so it needs no bump), so a token left in a slot, a latch or the reaper
 * election by a dead thread stops matching at once. It would match again after 65536 more
 * deaths of that record's holders (a server that SIGKILLs thread-per-request workers gets
 * there within hours, and an orphan the reaper has not reached yet would then look owned by
 * a live thread, its waiters timing out for good): so a record is never claimed once its
 * incarnation reaches TOKEN_INC_SPENT - each record serves 65535 deaths, the table 4095 x
 * 65535, and after that claims fail with SHM_EFULL (part.c). As a second guard, a thread
 * that finds its *own* token on something it is not holding knows the token is a stale one
 * of that kind and takes it over.
 * A latch (never a control word) may also hold LATCH_ORPHANED, which no token equals (tokens
 * have 28 bits): "free, but its last holder died" (table.c). */
#define SHM_MAX_PARTS        4095u
#define TOKEN_INC_MASK       0xffffu
#define TOKEN_INC_SPENT      0xffffu
#define LATCH_ORPHANED       0xf0000000u
#define TOKEN_MAKE(idx, inc) ((uint32_t)(((idx) + 1u) | (((inc)&TOKEN_INC_MASK) << 12)))
#define TOKEN_IDX(tok)       (((tok)&0xfffu) - 1u)
#define TOKEN_INC(tok)       (((tok) >> 12) & TOKEN_INC_MASK)

/* ---- the slot control word ---------------------------------------------------------------
 *   bits 0-2   state
 *   bit  3     active value buffer (bytes entries); in FREE: retired mid-write (no revival)
 *   bits 4-31  owner token (INSERTING, WRITING)
 *   bits 32-63 version (LIVE, WRITING) or retire stamp epoch (FREE), both modulo 2^32
 * The control word is the only thing ever compare-and-swapped to change a slot's state (the
 * owner of INSERTING publishes LIVE with a plain release store: nobody else may change an
 * INSERTING word but a recoverer, and only once the owner is dead), so two processes
 * recovering the same slot cannot both succeed.
 *
 *   EMPTY ──claim──▶ INSERTING(owner) ──publish──▶ LIVE(buf, v) ⇄ WRITING(owner, buf, v)
 *     ▲                 │    ▲                           │ delete / evict / expire
 *     never returns     │    └── replace (expired, same key and head type) ──┘
 *                       ▼ owner died                     ▼
 *                       FREE(stamp) ◀────────────────────┘ ──(epoch ≥ stamp+2)──▶ claim
 *
 * EMPTY means "never used": probes stop there. FREE is a tombstone that a later insert may
 * claim once every process that could still be reading the old key has moved on — or at once
 * by an insert of the same key and the same type (revival): a stale reader of that slot
 * compared the same key bytes, which do not change, reads the same kind of entry, and re-reads
 * the control word after the value (a new word sends it back to the lookup). For the same
 * reasons an expired counter or word state goes straight from LIVE back to INSERTING when its
 * own key is inserted again with the same type (replace, table.c). A version is 32
 * bits: a reader would have to stall across exactly 2^32 writes of one slot to be fooled. */
enum { ST_EMPTY = 0, ST_INSERTING = 1, ST_LIVE = 2, ST_WRITING = 3, ST_FREE = 4 };
#define CTL_STATE(c) ((unsigned)((c)&7u))
#define CTL_BUF(c)   ((unsigned)(((c) >> 3) & 1u))
#define CTL_OWNER(c) ((uint32_t)(((c) >> 4) & 0xfffffffu))
#define CTL_VER(c)   ((uint32_t)((c) >> 32))
#define CTL_MAKE(st, buf, owner, ver)                                                                                  \
    ((uint64_t)(st) | ((uint64_t)(buf) << 3) | ((uint64_t)(owner) << 4) | ((uint64_t)(uint32_t)(ver) << 32))

enum { TYPE_BYTES = 1, TYPE_COUNTER = 2 };
/* Rate-limit states (state.c) are the types SHM_TYPE_WORD(k), kept like a counter in the head
 * (the word in `counter`, the expiry in `expires`), and SHM_TYPE_BLOB(k), kept like bytes in
 * the value buffers. */
static inline int type_in_head(unsigned ty)
{
    return ty == TYPE_COUNTER || (ty >= SHM_TYPE_WORD(0) && ty < SHM_TYPE_WORD(SHM_STATE_KINDS));
}
static inline int type_is_word_state(unsigned ty)
{
    return ty >= SHM_TYPE_WORD(0) && ty < SHM_TYPE_WORD(SHM_STATE_KINDS);
}

/* ---- header -------------------------------------------------------------------------------- */
struct shm_header {
    /* Immutable after creation; validated on attach. */
    uint64_t magic;
    uint32_t format;
    uint32_t layout; /* shm_layout_word(): struct sizes and geometry */
    uint64_t map_size;
    uint64_t capacity; /* slots, a power of two */
    uint64_t max_size;
    uint32_t key_max, value_max;
    uint32_t body_size, max_parts;
    uint32_t head_stride, pad_h;
    uint64_t parts_off, touched_off, heads_off, bodies_off;
    uint64_t hash_seed;
    uint64_t cleanup_ms;

    /* The global epoch. Written only by shm_epoch_try_advance (CAS), read on every pin. */
    alignas(SHM_LINE) _Atomic uint64_t epoch;

    /* Occupancy: slots INSERTING or LIVE (fetch_add on insert, fetch_sub on retire; an
     * expired entry replaced in its slot changes neither), and the insert count whose high
     * bits are the LRU clock. Written on inserts and retires only. */
    alignas(SHM_LINE) _Atomic int64_t live;
    _Atomic uint64_t inserts;

    /* Participants and the reaper; rarely written. */
    alignas(SHM_LINE) _Atomic uint32_t part_hwm; /* records [0, hwm) have been used */
    _Atomic uint32_t reaper_token;               /* elected reaper, 0: none */
    _Atomic int32_t reaper_pid;
    _Atomic uint64_t reaper_runs;
    _Atomic uint32_t asym_pins; /* some process pins without a fence (part.c): advancers must
                                 * issue membarrier() or not advance */
    _Atomic uint32_t huge_collapse; /* 1 once a process took on collapsing the heads (huge.c) */

    /* The table's TSC clock (clock.c): two parameter sets, `clk_ver` & 1 the current one,
     * rewritten only by the holder of `clk_owner` (a participant token). */
    alignas(SHM_LINE) _Atomic uint64_t clk_ver;
    _Atomic uint32_t clk_owner;
    _Atomic uint64_t clk_first_tsc;
    _Atomic int64_t clk_first_ns;
    struct {
        _Atomic uint64_t tsc, mult, max_ticks;
        _Atomic int64_t ns;
    } clk[2];
};

/* ---- participants --------------------------------------------------------------------------
 * One record per (thread, table). `lock` is a robust process-shared mutex that the owning
 * thread holds for as long as it is registered: pthread_mutex_trylock by anyone else answers
 * EBUSY while it lives and EOWNERDEAD the moment it dies (the kernel walks the robust list of
 * a dying thread, even one SIGKILLed, before it becomes a zombie). kill(pid, 0) would be wrong:
 * it calls a zombie alive and a recycled pid alive. */
enum {
    STAT_HITS,
    STAT_MISSES,
    STAT_SETS,
    STAT_INCRS,
    STAT_DELETES,
    STAT_EVICTIONS,
    STAT_EXPIRATIONS,
    STAT_RECOVERED,
    STAT_DECISIONS,
    STAT_DENIED,
    STAT_N
};
struct shm_part {
    pthread_mutex_t lock;
    _Atomic uint64_t epoch;       /* epoch << 1 | pinned; written by the owner only */
    _Atomic uint32_t incarnation; /* bumped whenever the record changes hands */
    _Atomic int32_t pid;
    /* Per-participant statistics: written by the owner only (relaxed load + store, no
     * contended line), summed by readers. They survive the record changing hands. */
    alignas(SHM_LINE) _Atomic uint64_t stat[STAT_N];
};

/* ---- slots ----------------------------------------------------------------------------------
 * A slot is a 128-byte head in one array and a body in another, both indexed by the slot
 * number. The head holds everything a lookup, an increment and a state change touch: the
 * control word, hash, expiry, counter, and the first SHM_KEY_INLINE (72) bytes of the key.
 * The body holds the rest of a longer key and the two value buffers of a bytes entry. Split
 * so that a table of counters - the rate limiter's table - is a dense array whose entries
 * never fault a body page in.
 *
 * The two lines of a head:
 *   line 0  control word, hash, expiry, counter, meta, latch, probe bound, LRU tick, version
 *           source, key bytes 0-7: everything a lookup compares first and an increment or a
 *           word-state decision writes
 *   line 1  key bytes 8-71, read-only while the entry lives
 * With 1M keys the head array is 256 MB (2M slots), and an operation on a key of up to 8
 * bytes touches one line, one of up to 72 bytes two adjacent ones of the same page (fetched
 * together: lookup prefetches line 1 with line 0). The page walk of each access is what
 * large tables pay (issue 15: on an AMD EPYC KVM guest, a random access into 512 MB cost
 * ~600 ns with the earlier 256-byte heads, whose counter sat on a third line fetched only
 * after the key compared equal).
 *
 * Sharing. Line 0 is written by every increment of its entry and read by every lookup that
 * probes through the slot. In a large table two processes rarely meet on a slot. Small
 * tables (those whose slots fit in SHM_SMALL_TABLE_BYTES with 4 x headroom, map.c) space
 * their heads SHM_HEAD_STRIDE_SMALL bytes apart (or 512, or 256, as far as that limit
 * allows), the rest of each stride unused, so that neither the adjacent-line prefetcher
 * (128-byte pairs) nor the L2 streamer, which fetches a few lines ahead of what a process
 * reads, brings in another key's head. Measured with the earlier 256-byte heads, 2 processes
 * on distinct keys of a 1k-key table, 2-process over 1-process throughput, three runs each:
 * 1.50-1.64x at a 256-byte stride, 1.62-1.70x at 512, 1.71-1.78x at 1024.
 *
 * Fields other than ctl, vseq, counter, expires (word states), tick, latch and probe_max are
 * written only by the owner of an INSERTING slot and read only after an acquire load of ctl
 * saw LIVE or WRITING; the epoch scheme keeps them stable until every reader that saw them
 * has unpinned. */
#define SHM_HEAD_SIZE         128
#define SHM_HEAD_STRIDE_SMALL 1024
#define SHM_KEY_INLINE        72 /* key bytes in the head; a longer key goes on in the body */
#define SHM_KEY_INLINE_WORDS  (SHM_KEY_INLINE / 8)
struct shm_slot {
    _Atomic uint64_t ctl;
    _Atomic uint64_t hash;
    _Atomic int64_t expires; /* counters: absolute ms of CLOCK_MONOTONIC, 0: never */
    _Atomic int64_t counter; /* counters: the value, updated by fetch_add */
    _Atomic uint32_t meta;   /* klen | type << 16 */
    /* The two fields below belong to the slot as the *home* of a hash bucket, not to the
     * entry stored in it, and survive reuse. */
    _Atomic uint32_t latch;     /* token of the inserter serialising inserts of this home */
    _Atomic uint32_t probe_max; /* farthest distance of any key ever inserted from this home */
    _Atomic uint32_t tick;      /* LRU clock at last access; stored only when it changes */
    /* The source of this slot's versions, across all its entries. Whoever publishes a LIVE
     * word (the owner of INSERTING or WRITING) takes the next number from it, so a LIVE word
     * never repeats (its version modulo 2^32), even when the slot is reused for the same key
     * at once. Written only right before a store or CAS of ctl by the same thread: the line
     * moves once for both. */
    _Atomic uint64_t vseq;
    /* The key's first bytes as zero-padded words (relaxed atomics: see table.c); word 0 on
     * line 0, words 1-8 on line 1. */
    _Atomic uint64_t key[SHM_KEY_INLINE_WORDS];
};
_Static_assert(__builtin_offsetof(struct shm_slot, key) + 8 == SHM_LINE, "key word 1 opens line 1");
_Static_assert(__builtin_offsetof(struct shm_slot, counter) < SHM_LINE, "the counter is on line 0");
_Static_assert(sizeof(struct shm_slot) == SHM_HEAD_SIZE, "a head is two lines");

/* The body: [key words from SHM_KEY_INLINE on][value buffer 0][value buffer 1]. */
struct shm_vbuf {
    _Atomic int64_t expires; /* absolute ms, 0: never */
    _Atomic uint32_t len;
    uint32_t pad;
    /* unsigned char data[value_max rounded up to 8] */
};

/* ---- process-local handle ------------------------------------------------------------------ */
struct shm_table {
    unsigned char *base;
    size_t map_size;
    struct shm_header *h;
    struct shm_part *parts;
    unsigned char *heads, *bodies;
    _Atomic uint64_t *touched; /* one bit per page of heads that ever held an entry */
    uint64_t mask;
    /* The geometry this process validated at attach, kept here and never re-read from the
     * header: another process (or a stray write) changing the header must not move our
     * bounds (a raised value_max would have set write past the mapping). */
    uint64_t capacity, max_size, cleanup_ms, hash_seed;
    uint32_t key_max, value_max;
    /* A named table's file, kept open to reserve its pages (shm_reserve); -1: anonymous. */
    int fd;
    size_t heads_off, bodies_off;
    _Atomic uint64_t *body_reserved; /* this process's record of body granules reserved */
    uint32_t head_shift;                   /* heads are 1 << head_shift bytes apart */
    uint32_t body_size, buf_off, buf_size; /* buf_off: the value buffers' offset in a body */
    uint64_t uid;                          /* unique per handle in this process */
    _Atomic int refs;                      /* the handle + each thread registered through it */
    _Atomic int closed;
    struct shm_table *next; /* process-wide list (fork handling) */
    /* reaper thread of this process */
    pthread_mutex_t reaper_mu;
    pthread_t reaper_thread;
    pid_t reaper_owner_pid;       /* pid that started reaper_thread, 0: none */
    _Atomic uint32_t reaper_stop; /* futex word: 1 asks the thread to stop */
    _Atomic int huge_state; /* huge pages for the heads (huge.c): SHM_HUGE_* */
};
enum { SHM_HUGE_UNDECIDED, SHM_HUGE_SMALL_TABLE, SHM_HUGE_ADVISING, SHM_HUGE_ADVISED, SHM_HUGE_UNSUPPORTED };
/* huge.c: advise huge pages for the heads once the table is large and dense enough (at
 * attach, and every SHM_HUGE_RECHECK operations of a thread); the bytes of this table this
 * process maps with huge pages (0 for small tables). */
#define SHM_HUGE_RECHECK 4096 /* a power of two */
void shm_huge_consider(struct shm_table *t);
uint64_t shm_huge_bytes(struct shm_table *t);

static inline struct shm_slot *shm_slot_at(const struct shm_table *t, uint64_t i)
{
    return (struct shm_slot *)(t->heads + ((size_t)(i & t->mask) << t->head_shift));
}
static inline uint64_t shm_slot_index(const struct shm_table *t, const struct shm_slot *s)
{
    return (uint64_t)((const unsigned char *)s - t->heads) >> t->head_shift;
}
static inline unsigned char *shm_slot_body(const struct shm_table *t, const struct shm_slot *s)
{
    return t->bodies + (size_t)shm_slot_index(t, s) * t->body_size;
}
/* Word i of the key stored in s: in the head for the first SHM_KEY_INLINE bytes, then in
 * the body. */
static inline _Atomic uint64_t *shm_slot_key_word(const struct shm_table *t, struct shm_slot *s, size_t i)
{
    if (i < SHM_KEY_INLINE_WORDS) return &s->key[i];
    return (_Atomic uint64_t *)shm_slot_body(t, s) + (i - SHM_KEY_INLINE_WORDS);
}
static inline struct shm_vbuf *shm_slot_buf(const struct shm_table *t, struct shm_slot *s, unsigned b)
{
    return (struct shm_vbuf *)(shm_slot_body(t, s) + t->buf_off + (size_t)b * t->buf_size);
}
/* Copies the first n bytes of s's key into dst (checks and tests; racy reads are theirs). */
static inline void shm_slot_key_copy(const struct shm_table *t, struct shm_slot *s, void *dst, size_t n)
{
    unsigned char *d = dst;
    for (size_t i = 0; 8 * i < n; i++) {
        uint64_t w = atomic_load_explicit(shm_slot_key_word(t, s, i), memory_order_relaxed);
        memcpy(d + 8 * i, &w, n - 8 * i < 8 ? n - 8 * i : 8);
    }
}
static inline unsigned char *shm_vbuf_data(struct shm_vbuf *v)
{
    return (unsigned char *)(v + 1);
}

/* ---- participants, epochs, liveness (part.c) ------------------------------------------- */
struct shm_self {
    struct shm_part *part;
    uint32_t token;
    uint64_t pin; /* epoch this thread is pinned at while in an operation */
    uint32_t ops; /* operations: every SHM_HUGE_RECHECK-th looks at huge pages (huge.c) */
};
/* The calling thread's participant in t, registering it on first use; NULL when the table has
 * no free participant record (SHM_EFULL). */
struct shm_self *shm_self_get(struct shm_table *t);
void shm_pin(struct shm_table *t, struct shm_self *me);
void shm_unpin(struct shm_self *me);
int shm_epoch_try_advance(struct shm_table *t);
void shm_self_leave(struct shm_table *t); /* the calling thread leaves t (close) */
void shm_part_process_init(void);         /* once per process, from map.c */
void shm_part_atfork_child(void);         /* from map.c's atfork child handler */
/* 1 if the owner named by token is alive, 0 if it is dead (its record is then recovered). */
int shm_token_alive(struct shm_table *t, uint32_t token);
/* Whole-table passes (clear, the reaper) visit only the pages of heads that
 * have held an entry: a claim sets the chunk's bit in the touched bitmap before it fills the
 * slot, and bits are never cleared. (mincore() would be cheaper to keep but calls a
 * swapped-out page "never touched".) */
#define SHM_CHUNK_SHIFT 12 /* one bit per 4 KiB page of heads */
/* A full /dev/shm must not kill a worker: a process that touches a page of a file in a full
 * tmpfs gets SIGBUS. So no page of a named table is touched before it has backing: the front
 * (header, participants, bitmap) is reserved at creation; a page of heads is reserved
 * (fallocate) before its bit is set, and nothing reads a page of heads whose bit is clear
 * (such a page holds only EMPTY slots: lookups stop there, eviction skips it); a slot's body
 * is reserved before an entry that uses it is filled in. A reservation that fails is
 * SHM_EFULL for the operation, and whatever is stored stays readable. Anonymous tables live
 * in the kernel's own tmpfs, which has no size limit (memory runs out as an OOM kill, not a
 * SIGBUS): nothing to reserve. */
#define SHM_BODY_GRANULE_SHIFT 16 /* bodies are reserved 64 KiB at a time */
/* Marks the page of heads holding s as in use, reserving it first: SHM_OK or SHM_EFULL. */
int shm_touched_mark(struct shm_table *t, struct shm_slot *s);
/* 1 if the page of heads holding slot index i may be read (its bit is set). */
static inline int shm_touched(const struct shm_table *t, uint64_t i)
{
    if (t->fd < 0) return 1; /* anonymous: every page may be read */
    uint64_t c = ((i & t->mask) << t->head_shift) >> SHM_CHUNK_SHIFT;
    return (atomic_load_explicit(&t->touched[c / 64], memory_order_acquire) >> (c % 64)) & 1;
}
/* Reserves the body of slot s before an entry that uses it is filled in: SHM_OK, SHM_EFULL. */
int shm_body_reserve(struct shm_table *t, struct shm_slot *s);
/* fallocate of [off, off + len) of a named table's file (SHM_OK for anonymous ones). */
int shm_reserve(struct shm_table *t, uint64_t off, uint64_t len);
void shm_table_unref(struct shm_table *t);
void shm_tables_register(struct shm_table *t);
void shm_tables_unregister(struct shm_table *t);

/* The participant records in use, [0, hwm): a bound read from the mapping, so clamped. */
static inline uint32_t shm_part_hwm(struct shm_table *t, memory_order mo)
{
    uint32_t n = atomic_load_explicit(&t->h->part_hwm, mo);
    return n < SHM_MAX_PARTS ? n : SHM_MAX_PARTS;
}

static inline void shm_stat_add(struct shm_self *me, int which, uint64_t n)
{
    _Atomic uint64_t *c = &me->part->stat[which];
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n, memory_order_relaxed);
}

extern unsigned shm_broken; /* SHM_BROKEN_* flags, tests only */
extern int shm_crash_point; /* SHM_CRASH_* point, tests only */
extern int shm_blob_write_pause_ms; /* tests only */
void shm_debug_crash_now(void);
static inline void shm_debug_crash(int point)
{
    if (__builtin_expect(shm_crash_point == point, 0)) shm_debug_crash_now();
}

#endif
