/*
 * hash.h — the table's key hash: 64 bits, seeded per table (a random seed stored in the
 * header, so clients cannot aim keys at one bucket), eight bytes per step.
 * Each step multiplies the folded state by an odd constant and rotates; the tail is read
 * byte-wise; a final xor-shift/multiply avalanche spreads every input bit over the word, so
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

static inline uint64_t shm_hash(uint64_t seed, const void *key, size_t len)
{
    const unsigned char *p = key;
    uint64_t h = seed ^ (len * SHM_HASH_K1);
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = shm_hash_rotl((h ^ w) * SHM_HASH_K2, 29);
        p += 8;
        len -= 8;
    }
    uint64_t tail = 0;
    for (size_t i = 0; i < len; i++)
        tail |= (uint64_t)p[i] << (8 * i);
    h = shm_hash_rotl((h ^ tail) * SHM_HASH_K2, 29) * SHM_HASH_K1;
    h ^= h >> 31;
    h *= SHM_HASH_K3;
    h ^= h >> 30;
    return h;
}

#endif
