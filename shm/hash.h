/*
 * hash.h — the table's key hash: 64 bits, seeded per table (a random seed stored in the
 * header, so clients cannot aim keys at one bucket), eight bytes per step over the key as
 * zero-padded words (the length is mixed in first, so padding cannot collide).
 * Each step multiplies the folded state by an odd constant and rotates; a final
 * xor-shift/multiply avalanche spreads every input bit over the word, so
 * both the low bits (the home bucket) and the full word (compared before the key) are good.
 */
#ifndef TRAFFIC_SHM_HASH_H
#define TRAFFIC_SHM_HASH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define SHM_HASH_K1 0x9e3779b97f4a7c15ull /* 2^64 / golden ratio */
#define SHM_HASH_K2 0xbf58476d1ce4e5b9ull
#define SHM_HASH_K3 0x94d049bb133111ebull

static inline uint64_t shm_hash_rotl(uint64_t x, int r)
{
    return (x << r) | (x >> (64 - r));
}

/* Hashes a key given as zero-padded 64-bit words (see struct shm_key) and its length. */
static inline uint64_t shm_hash_words(uint64_t seed, const uint64_t *w, size_t nwords, size_t len)
{
    uint64_t h = seed ^ (len * SHM_HASH_K1);
    for (size_t i = 0; i < nwords; i++)
        h = shm_hash_rotl((h ^ w[i]) * SHM_HASH_K2, 29);
    h *= SHM_HASH_K1;
    h ^= h >> 31;
    h *= SHM_HASH_K3;
    h ^= h >> 30;
    return h;
}

#endif
