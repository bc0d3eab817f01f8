/*
 * limit.h — the rate-limit algorithms' pure arithmetic, below every backend.
 *
 * traffic_limit_check and traffic_limit_apply (declared in backend.h, where a custom backend
 * finds them) are the one definition of each algorithm: the memory and SQLite backends call
 * them, the Redis backend's Lua scripts mirror them operation for operation (the differential
 * test compares the two). No I/O, no clock, no allocation here.
 */
#ifndef TRAFFIC_LIMIT_H
#define TRAFFIC_LIMIT_H

#include <stddef.h>
#include <stdint.h>

#include "traffic/backend.h"

/* A checked rule in integers: W and I of traffic.h, and the most requests of cost 1 that pass
 * at once from the unused state (L, B or Q + 1: decision.limit). */
typedef struct limit_rule {
    traffic_algorithm algo;
    int64_t limit, window_us, interval_us, capacity, most;
} limit_rule;

/* Fills *lr from a rule that traffic_limit_check accepted. */
void limit_rule_derive(const traffic_rule *r, limit_rule *lr);
/* Checks and derives a rule through a one-rule cache of the calling thread: NULL with the
 * reason in msg if traffic_limit_check refuses it. */
const limit_rule *limit_rule_accept(const traffic_rule *r, char *msg, size_t msglen);
/* The derived form of a rule already checked, through the same cache. */
const limit_rule *limit_rule_cached(const traffic_rule *r);

/* Instants. traffic_limit_at takes now below LIMIT_NOW_MAX (the wall clock reaches it in 2112),
 * so decisions store times below 2^53 (now + 2 B I at most, B I <= 2^51). traffic_limit_apply takes any
 * now and stored time of a magnitude below LIMIT_TIME_MAX, where its sums (a time plus a
 * window, plus B I, a window's end) cannot overflow. */
#define LIMIT_NOW_MAX  (INT64_C(1) << 52)
#define LIMIT_TIME_MAX (INT64_C(1) << 62)

/* traffic_limit_apply on a derived rule (no checks of the rule: checked, cost >= 0), also
 * giving reset_after in µs (reset_us may be NULL), which a backend needs for the TTL.
 * TRAFFIC_EINVAL for now outside [0, LIMIT_TIME_MAX), and for a state whose numbers no
 * decision could have left (a damaged store: see state_sane in limit.c), which a backend
 * reports as TRAFFIC_ECORRUPT. */
int limit_apply(const limit_rule *r, traffic_limit_state *st, int64_t now, int64_t cost, traffic_decision *out,
                int64_t *reset_us);

/* The window in µs as every backend rounds it (to the nearest µs). */
int64_t limit_window_us(double window);

/* The algorithm's name ("token_bucket"), NULL for an unknown value; and back (-1: unknown). */
const char *limit_algo_name(int algo);
int limit_algo_parse(const char *name, size_t len);

/* The state as JSON text, {"algorithm":"token_bucket","tat_us":1234} (what traffic_get shows
 * for a rate-limit key). Returns the length it needs (excluding the NUL), like snprintf. */
size_t limit_state_json(int algo, const traffic_limit_state *st, char *buf, size_t cap);

#endif
