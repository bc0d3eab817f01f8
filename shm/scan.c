/*
 * scan.c — listing a table's entries, a bounded batch of slots at a time.
 *
 * The one idea: a key that lives for the whole scan never moves. Slots are never relocated
 * (no backward-shift deletion, no Robin Hood): an entry stays in the slot that was claimed
 * for it until it is retired, and a revival of the same key reuses that same slot. So one
 * pass that visits every slot index once, in order, meets each such key exactly once — in
 * however many batches the pass is cut, and whatever is inserted or deleted around it.
 *
 * Each call (shm_scan_batch) pins the epoch, copies out what up to SHM_SCAN_BATCH slots hold
 * (key, type, remaining TTL), unpins and returns; the caller resumes from the cursor it got
 * back. So no pin is held between batches: the epoch moves on and writers reuse tombstones
 * while the caller works on what it copied (a caller that prints, or deletes the keys it
 * is shown, must not do it pinned). Like the reaper's pass (table.c), it reads only pages of
 * heads that ever held an entry: the touched bitmap (layout.h) says which, and an unmarked
 * page of a named table may have no backing at all, so it is never read.
 *
 * Why a copied key is the slot's key: the slot was seen LIVE or WRITING (acquire) while
 * pinned, so its hash, meta and key words were written before it was published (I3 of
 * table.c) and cannot be rewritten for another key until every process pinned at the time
 * of a retire has unpinned (the epochs, part.c) — which this thread, pinned, has not. A
 * revival of the same key rewrites none of them. The TTL is read the way shm_ttl reads it
 * (entry_expiry: a head entry whose word changed, or a value torn by a writer, reads again
 * or as gone), so an entry retired meanwhile is skipped, not reported with another life's
 * expiry.
 */
#include "slot.h"

_Static_assert((int)SHM_TYPE_BYTES == (int)TYPE_BYTES && (int)SHM_TYPE_COUNTER == (int)TYPE_COUNTER,
               "shm.h's types are layout.h's");

/* Copies slot s's entry into *e if it is live and unexpired at now_ms: 1 if copied. */
static int copy_entry(struct shm_table *t, struct shm_slot *s, int64_t now_ms, shm_scan_entry *e)
{
    uint64_t c = ctl_load(s);
    if (CTL_STATE(c) != ST_LIVE && CTL_STATE(c) != ST_WRITING) return 0;
    uint32_t meta = atomic_load_explicit(&s->meta, memory_order_relaxed);
    size_t klen = meta & 0xffffu;
    if (klen == 0 || klen > t->key_max) return 0; /* damage: nothing a lookup could find */
    int64_t exp = entry_expiry(t, s, c);
    if (exp != 0 && exp <= now_ms) return 0; /* expired, or retired since c (reads as 1) */
    shm_slot_key_copy(t, s, e->key, klen);
    e->key[klen] = '\0';
    e->klen = (uint32_t)klen;
    e->type = meta >> 16;
    e->ttl_ms = exp ? exp - now_ms : -1;
    return 1;
}

int shm_scan_batch(shm_table *t, uint64_t *cursor, shm_scan_entry *out, size_t *n)
{
    const uint64_t per_chunk = (1ull << SHM_CHUNK_SHIFT) >> t->head_shift;
    uint64_t i = *cursor, end = t->capacity, work = 0;
    *n = 0;
    if (i >= end) return 1;
    ENTER(t, me);
    int64_t now_ms = shm_now_ms(); /* one reading per batch: an entry is judged at it */
    while (i < end && work < SHM_SCAN_BATCH) {
        uint64_t c = (i << t->head_shift) >> SHM_CHUNK_SHIFT;
        work++;
        /* acquire: pairs with shm_touched_mark's release, after which the page has backing */
        uint64_t word = atomic_load_explicit(&t->touched[c / 64], memory_order_acquire);
        if (!(word & (1ull << (c % 64)))) {
            /* never held an entry: skip the page unread (and with it the word's other 63 if
             * none of them did either) */
            i = (word ? c + 1 : (c / 64 + 1) * 64) * per_chunk;
            continue;
        }
        *n += (size_t)copy_entry(t, shm_slot_at(t, i), now_ms, &out[*n]);
        i++;
    }
    shm_unpin(me);
    *cursor = i < end ? i : end;
    return *cursor == end;
}
