/*
 * redis_limit.c — rate-limit decisions on Redis: one Lua script that reads a key's state,
 * decides with the arithmetic of limit/limit.c and writes the new state back.
 *
 * The one idea: Redis runs a script to its end before any other command, so the read, the
 * decision and the write of one call are one atomic step for every client of the server, and
 * EVALSHA makes that step one round trip. The script repeats traffic_limit_apply operation
 * for operation on Lua 5.1's doubles; every integer it meets stays below 2^53 (the rule
 * bounds of traffic.h), where doubles are exact, and the sliding window counter's estimate is
 * the same IEEE operations in the same order (limit.c is built without fused multiply-adds),
 * so both give bit-identical decisions: tests/test_redis_limit.c compares them on thousands
 * of random sequences.
 *
 * One script for the five algorithms rather than five: the frame around the arithmetic (the
 * clock, the type check, writing only a changed state, its TTL, the reply) is written once,
 * the handle keeps one SHA and the open loads one script, and a NOSCRIPT costs one EVAL
 * whatever the algorithm. The dispatch is a comparison or two of one-character strings.
 *
 * The clock is the server's TIME (so that hosts with skewed clocks agree) unless the caller
 * gave an instant (traffic_limit_at). Redis 7 replicates a script by its effects, so reading
 * TIME before a write is allowed and replicas receive the resulting SET.
 *
 * Storage, under PREFIX+key, a Redis string that starts with RX_LIMIT_TAG ('!', which neither
 * a counter's integer text nor a tagged bytes value '=' can start with), then the algorithm
 * as one digit (its traffic_algorithm value), then its state (backend.h's traffic_limit_state):
 *   fixed window             "!1:S:N"        window start (µs), count
 *   sliding window counter   "!0:i:P:C"      window index, previous and current counts
 *   token / leaky bucket     "!3:T" / "!4:T" theoretical arrival time (µs)
 *   sliding window (log)     "!2", start, base (3 bytes each), then one 10-byte record per
 *                            entry, oldest first: 7 bytes t_us and 3 bytes s, big-endian.
 *                            s is the running total of the costs up to this entry, modulo
 *                            2^24; base is the total before record `start`, the first live
 *                            one (records before it have expired). An entry's cost is its s
 *                            minus the one before, the costs in the window are the last s
 *                            minus the s before the window's first entry.
 * Records have one size, so the script finds the window's first entry, and the entry whose
 * expiry makes room, by binary search; it reads the first 4 kB of a log in one GETRANGE and
 * any record beyond with one more. A log that fits in those 4 kB is rewritten whole on every
 * admission; a longer one is changed in place: APPEND (or SETRANGE of the last record) and a
 * SETRANGE of the header that skips the records that expired, until they are as many as the
 * live ones and the log is rewritten without them. So a decision touches O(log n) records and
 * copies O(1) of them on average, however long the log (at most 2L + 1 records, L <=
 * TRAFFIC_SLIDING_WINDOW_LIMIT_MAX: 200 kB).
 * Numbers are decimal integers. The script writes only when the decision changed the state
 * (admitted with cost > 0), with SET ... PX ceil(reset_after in ms), at least 1 (PEXPIRE
 * after an in-place change); a denial or a peek writes nothing and leaves the TTL alone.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "limit/limit.h"
#include "redis_internal.h"

/* The log's layout, which the script spells as literals (8, 10, 4096, 16777216) */
#define LOG_HEAD   8        /* "!2", the first live record and its base, 3 bytes each */
#define LOG_RECORD 10       /* 7 bytes t_us, 3 bytes running total */
#define LOG_MOD    16777216 /* 2^24: running totals wrap; a log never holds more than 10^4 */
#define JSON_STACK 160      /* the JSON of every state but a log fits in this */

/* KEYS[1] the prefixed key. ARGV: [1] the algorithm's digit, [2] the cost, [3] now in µs or -1
 * for TIME, then for the windows [4] W (µs) and [5] L, for the buckets [4] I (µs) and [5] the
 * capacity (B or Q): each algorithm is sent and parses only what it needs, since the frame
 * (EVALSHA, TIME, GET, SET) already costs the server several times what an INCR does.
 * Returns {allowed, most, remaining, reset_us, retry_us (-1: never), delay_us}, or an error
 * reply "TRAFFIC_ETYPE counter|bytes|state D" / "TRAFFIC_ECORRUPT <bytes read>"; Redis's own
 * errors (WRONGTYPE from reading a hash, OOM or READONLY from a write) reach the caller as
 * Redis said them. Each branch is the function of the same name in limit/limit.c, whose
 * comments explain the formulas. Integer division: math.floor(a / b) equals C's a / b for
 * 0 <= a < 2^53 and b >= 1 (the rounding error of the quotient is below 1/b). */
static const char LIMIT_SCRIPT[] =
    "local key, algo = KEYS[1], ARGV[1]\n"
    "local cost, now = tonumber(ARGV[2]), tonumber(ARGV[3])\n"
    "if now < 0 then\n"
    "  local t = redis.call('TIME')\n"
    "  now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "end\n"
    "local v\n"
    "if algo == '2' then\n" /* a log may be long: its first 4 kB, the rest when needed */
    "  v = redis.call('GETRANGE', key, 0, 4095)\n"
    "  if v == '' and redis.call('EXISTS', key) == 0 then v = false end\n"
    "else\n"
    "  v = redis.call('GET', key)\n"
    "end\n"
    "local function bad()\n" /* v is not a state of this algorithm: why */
    "  local tag, d = string.byte(v, 1), string.sub(v, 2, 2)\n"
    "  if tag ~= 33 then return redis.error_reply(tag == 61 and 'TRAFFIC_ETYPE bytes' or 'TRAFFIC_ETYPE counter') end\n"
    "  if d ~= algo then return redis.error_reply('TRAFFIC_ETYPE state ' .. d) end\n"
    "  return redis.error_reply('TRAFFIC_ECORRUPT ' .. #v)\n"
    "end\n"
    "local peek = cost == 0\n"
    "local c = peek and 1 or cost\n"
    "local allowed, remaining, reset, retry, delay, nv, touched = 0, 0, 0, 0, 0, nil, false\n"
    "local W, L, I, cap, most\n"
    "if algo ~= '3' and algo ~= '4' then\n" /* the windows */
    "  W, L = tonumber(ARGV[4]), tonumber(ARGV[5])\n"
    "  most = L\n"
    "else\n"
    "  I, cap = tonumber(ARGV[4]), tonumber(ARGV[5])\n"
    "  most = algo == '4' and cap + 1 or cap\n"
    "end\n"
    "if algo == '1' then\n" /* fixed window */
    "  local S, N = 0, 0\n"
    "  if v then\n"
    "    S, N = string.match(v, '^!1:(%d+):(%d+)$')\n"
    "    if not S then return bad() end\n"
    "    S, N = tonumber(S), tonumber(N)\n"
    "  end\n"
    "  if N <= 0 or now >= S + W then S = now - math.fmod(now, 1000); N = 0 end\n"
    "  if c > L then retry = -1\n"
    "  elseif N + c <= L then\n"
    "    allowed = 1\n"
    "    if not peek then N = N + c; nv = string.format('!1:%d:%d', S, N) end\n"
    "  else retry = S + W - now end\n"
    "  remaining = L - N\n"
    "  if N > 0 then reset = S + W - now end\n"
    "elseif algo == '0' then\n" /* sliding window counter */
    "  local si, sP, sC = 0, 0, 0\n"
    "  if v then\n"
    "    si, sP, sC = string.match(v, '^!0:(%d+):(%d+):(%d+)$')\n"
    "    if not si then return bad() end\n"
    "    si, sP, sC = tonumber(si), tonumber(sP), tonumber(sC)\n"
    "  end\n"
    "  local i = math.floor(now / W)\n"
    "  local e = now - i * W\n"
    "  if si > i then i = si; e = 0 end\n"
    "  local P, C = 0, 0\n"
    "  if si == i then P, C = sP, sC elseif si == i - 1 then P = sC end\n"
    "  local weight = (W - e) / W\n"
    "  local est = P * weight + C\n"
    "  if c > L then retry = -1\n"
    "  elseif est + c <= L then\n"
    "    allowed = 1\n"
    "    if not peek then\n"
    "      C = C + c\n"
    "      est = P * weight + C\n"
    "      nv = string.format('!0:%d:%d:%d', i, P, C)\n"
    "    end\n"
    "  else\n"
    "    local rem, t = L - c - C\n"
    "    if rem >= 0 then t = i * W + math.ceil(W - rem * W / P)\n"
    "    else t = (i + 1) * W + math.ceil(W - (L - c) * W / C) end\n"
    /* limit.c's swc_admits and its nudges to the estimate's own first admitting µs */
    "    local function admits(u)\n"
    "      local j = math.floor(u / W)\n"
    "      local ee, p, q = u - j * W, 0, 0\n"
    "      if j == i then p, q = P, C elseif j == i + 1 then p = C end\n"
    "      if j < i then ee, p, q = 0, P, C end\n"
    "      return p * ((W - ee) / W) + q + c <= L\n"
    "    end\n"
    "    while t - 1 > now and admits(t - 1) do t = t - 1 end\n"
    "    while not admits(t) do t = t + 1 end\n"
    "    retry = t > now and t - now or 1\n"
    "  end\n"
    "  local left = math.floor(L - est)\n"
    /* limit.c: count remaining as the admissions do */
    "  local k = left < 0 and 0 or left\n"
    "  while k > 0 and P * weight + (C + k - 1) + 1 > L do k = k - 1 end\n"
    "  while P * weight + (C + k) + 1 <= L do k = k + 1 end\n"
    "  remaining = k\n"
    "  if C > 0 then reset = (i + 2) * W - now elseif P > 0 then reset = (i + 1) * W - now end\n"
    "elseif algo == '2' then\n" /* sliding window (log): see the top of the file */
    "  local M, n, start, base, size, have = 16777216, 0, 0, 0, 0, 0\n"
    "  if v then\n"
    "    size, have = #v, #v\n"
    "    if size == 4096 then size = redis.call('STRLEN', key) end\n"
    "    n = (size - 8) / 10\n"
    "    if string.sub(v, 1, 2) ~= '!2' or n < 0 or n ~= math.floor(n) then return bad() end\n"
    "    start, base = struct.unpack('>I3I3', v, 3)\n"
    "    if start > n then return bad() end\n"
    "  end\n"
    "  local function rec(j)\n" /* t_us, running total of record j */
    "    local p = 9 + 10 * j\n"
    "    if p + 9 <= have then return struct.unpack('>I7I3', v, p) end\n"
    "    return struct.unpack('>I7I3', redis.call('GETRANGE', key, p - 1, p + 8))\n"
    "  end\n"
    "  local lo, hi = start, n\n" /* k: the first entry still in the window */
    "  while lo < hi do\n"
    "    local mid = math.floor((lo + hi) / 2)\n"
    "    if rec(mid) + W <= now then lo = mid + 1 else hi = mid end\n"
    "  end\n"
    "  local k, s0, last, sl = lo, base, nil, nil\n"
    "  if k > start then s0 = select(2, rec(k - 1)) end\n"
    "  if n > k then last, sl = rec(n - 1) end\n"
    "  local used = last and (sl - s0) % M or 0\n"
    "  if c > L then retry = -1\n"
    "  elseif used + c <= L then\n"
    "    allowed = 1\n"
    "    if not peek then\n"
    "      local t = last and math.max(now, last) or now\n"
    "      local keep = last == t and n - 1 or n\n" /* the same instant: add to the last entry */
    "      local r = struct.pack('>I7I3', t, (s0 + used + c) % M)\n"
    "      if size <= have or k >= keep - k + 1 then\n" /* all in hand, or as many dead as live: rewrite */
    "        local body = ''\n"
    "        if size <= have then body = string.sub(v or '', 9 + 10 * k, 8 + 10 * keep)\n"
    "        elseif keep > k then body = redis.call('GETRANGE', key, 8 + 10 * k, 7 + 10 * keep) end\n"
    "        nv = '!2' .. struct.pack('>I3I3', 0, s0) .. body .. r\n"
    "      else\n" /* in place: a few bytes, whatever the log's length */
    "        if k > start then redis.call('SETRANGE', key, 2, struct.pack('>I3I3', k, s0)) end\n"
    "        if keep < n then redis.call('SETRANGE', key, 8 + 10 * keep, r) else redis.call('APPEND', key, r) end\n"
    "        touched = true\n"
    "      end\n"
    "      last = t\n"
    "      used = used + c\n"
    "    end\n"
    "  else\n" /* the oldest entry whose expiry frees need */
    "    local need = used + c - L\n"
    "    lo, hi = k, n - 1\n"
    "    while lo < hi do\n"
    "      local mid = math.floor((lo + hi) / 2)\n"
    "      local _, s = rec(mid)\n"
    "      if (s - s0) % M >= need then hi = mid else lo = mid + 1 end\n"
    "    end\n"
    "    retry = rec(lo) + W - now\n"
    "  end\n"
    "  remaining = L - used\n"
    "  if last then reset = last + W - now end\n"
    "else\n" /* token or leaky bucket */
    "  local T = 0\n"
    "  if v then\n"
    "    T = string.match(v, algo == '3' and '^!3:(%d+)$' or '^!4:(%d+)$')\n"
    "    if not T then return bad() end\n"
    "    T = tonumber(T)\n"
    "  end\n"
    "  local t0 = math.max(T, now)\n"
    "  local left\n"
    "  if algo == '3' then\n"
    "    local room = cap * I\n"
    "    if c > cap then retry = -1\n"
    "    elseif t0 + c * I - now <= room then\n"
    "      allowed = 1\n"
    "      if not peek then T = t0 + c * I end\n"
    "    else retry = t0 + c * I - room - now end\n"
    "    left = now + room - math.max(T, now)\n"
    "  else\n"
    "    if c > cap + 1 then retry = -1\n"
    "    elseif t0 + c * I - I - now <= cap * I then\n"
    "      allowed = 1\n"
    "      delay = t0 + (c - 1) * I - now\n"
    "      if not peek then T = t0 + c * I end\n"
    "    else retry = t0 + (c - 1 - cap) * I - now end\n"
    "    left = now + (cap + 1) * I - math.max(T, now)\n"
    "  end\n"
    "  if allowed == 1 and not peek then nv = string.format('!%s:%d', algo, T) end\n"
    "  if left > 0 then remaining = math.floor(left / I) end\n"
    "  if T > now then reset = T - now end\n"
    "end\n"
    "if nv or touched then\n"
    "  local ms = math.floor((reset + 999) / 1000)\n"
    "  if ms < 1 then ms = 1 end\n"
    "  if nv then redis.call('SET', key, nv, 'PX', ms)\n"
    "  else redis.call('PEXPIRE', key, ms) end\n"
    "end\n"
    "return {allowed, most, remaining, reset, retry, delay}\n";

int rx_limit_load(rx_handle *h, rx_conn *c)
{
    const char *argv[3] = {"SCRIPT", "LOAD", LIMIT_SCRIPT};
    size_t argvlen[3] = {6, 4, sizeof LIMIT_SCRIPT - 1};
    redisReply *r;
    int rc = rx_conn_command(h, c, 3, argv, argvlen, &r);
    if (rc) return rc;
    if (r->type != REDIS_REPLY_STRING || r->len != 40) return rx_unexpected(h, r, "SCRIPT LOAD", "rate limit");
    memcpy(h->limit_sha, r->str, 40);
    h->limit_sha[40] = '\0';
    freeReplyObject(r);
    return TRAFFIC_OK;
}

/* The algorithm named by a state's digit, for messages. */
static const char *algo_of_digit(char d)
{
    const char *name = d >= '0' && d <= '9' ? limit_algo_name(d - '0') : NULL;
    return name ? name : "unknown algorithm";
}

/* The script's error replies (the others are Redis's, for rx_unexpected). */
static int limit_error(rx_handle *h, redisReply *r, const char *key, const traffic_rule *rule)
{
    const char *want = traffic_algorithm_name(rule->algorithm), *e = r->str;
    int rc;
    if (strcmp(e, "TRAFFIC_ETYPE bytes") == 0 || strcmp(e, "TRAFFIC_ETYPE counter") == 0)
        rc = traffic_backend_fail(&h->base, TRAFFIC_ETYPE, "limit \"%.64s\": the key holds a %s, not a %s state", key,
                                  e[14] == 'b' ? "bytes value" : "counter", want);
    else if (strncmp(e, "TRAFFIC_ETYPE state ", 20) == 0)
        rc = traffic_backend_fail(&h->base, TRAFFIC_ETYPE, "limit \"%.64s\": the key holds a %s state, not a %s one",
                                  key, algo_of_digit(e[20]), want);
    else if (strncmp(e, "TRAFFIC_ECORRUPT ", 17) == 0)
        rc = traffic_backend_fail(&h->base, TRAFFIC_ECORRUPT,
                                  "limit \"%.64s\": the value (%s bytes read) is tagged as a %s state but is no "
                                  "well-formed one",
                                  key, e + 17, want);
    else
        return rx_unexpected(h, r, "limit", key);
    freeReplyObject(r);
    return rc;
}

/* The script's reply, {allowed, most, remaining, reset_us, retry_us, delay_us}, into *out,
 * in seconds exactly as traffic_limit_apply converts its outcome. */
static int decision_of(rx_handle *h, redisReply *r, const char *key, traffic_decision *out)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 6) return rx_unexpected(h, r, "limit", key);
    long long f[6];
    for (size_t i = 0; i < 6; i++) {
        if (r->element[i]->type != REDIS_REPLY_INTEGER) return rx_unexpected(h, r, "limit (not 6 integers)", key);
        f[i] = r->element[i]->integer;
    }
    freeReplyObject(r);
    out->allowed = f[0] != 0;
    out->limit = f[1];
    out->remaining = f[2];
    out->reset_after = (double)f[3] / 1e6;
    out->retry_after = out->allowed ? 0 : f[4] < 0 ? -1.0 : (double)f[4] / 1e6;
    out->delay = out->allowed ? (double)f[5] / 1e6 : 0;
    return TRAFFIC_OK;
}

int rx_limit(traffic_backend *b, const char *key, size_t klen, const traffic_rule *rule, int64_t cost, int64_t now_us,
             traffic_decision *out)
{
    rx_handle *h = (rx_handle *)b;
    limit_rule lr;
    limit_rule_derive(rule, &lr);
    char rkey[RX_RKEY_MAX], algo = (char)('0' + lr.algo), nums[4][24];
    size_t rklen = rx_rkey(h, key, klen, rkey);
    /* A peek writes nothing: sending it again after a broken connection is harmless. */
    rx_cmd c = {.idempotent = cost == 0, .script = LIMIT_SCRIPT};
    rx_cmd_arg(&c, "EVALSHA", 7);
    rx_cmd_arg(&c, h->limit_sha, 40);
    rx_cmd_arg(&c, "1", 1);
    rx_cmd_arg(&c, rkey, rklen);
    rx_cmd_arg(&c, &algo, 1);
    int bucket = lr.interval_us > 0;
    const int64_t args[] = {cost, now_us, bucket ? lr.interval_us : lr.window_us, bucket ? lr.capacity : lr.limit};
    for (size_t i = 0; i < 4; i++)
        rx_cmd_arg(&c, nums[i], (size_t)snprintf(nums[i], sizeof nums[i], "%" PRId64, args[i]));
    redisReply *r;
    int rc = rx_run(h, rkey, rklen, &c, &r);
    if (rc) return rc;
    if (r->type == REDIS_REPLY_ERROR) return limit_error(h, r, key, rule);
    if ((rc = decision_of(h, r, key, out))) return rc;
    rx_count(&h->decisions);
    if (!out->allowed) rx_count(&h->denied);
    return TRAFFIC_OK;
}

/* ---- traffic_get of a state ------------------------------------------------------------ */

/* ":N" at *p (a decimal integer below 2^63), advancing *p. */
static int field(const char **p, const char *end, int64_t *out)
{
    const char *s = *p;
    if (s >= end || *s != ':' || ++s >= end || *s < '0' || *s > '9') return -1;
    int64_t v = 0;
    for (; s < end && *s >= '0' && *s <= '9'; s++) {
        if (v > (INT64_MAX - (*s - '0')) / 10) return -1;
        v = v * 10 + (*s - '0');
    }
    *p = s;
    *out = v;
    return 0;
}

static uint64_t big_endian(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* The live records of the log v[0..n) into st (log malloc'd; the caller frees it). */
static int parse_log(const char *v, size_t n, traffic_limit_state *st)
{
    if (n < LOG_HEAD || (n - LOG_HEAD) % LOG_RECORD) return -1;
    const unsigned char *u = (const unsigned char *)v;
    size_t records = (n - LOG_HEAD) / LOG_RECORD, start = (size_t)big_endian(u + 2, 3);
    if (start > records) return -1;
    size_t count = records - start;
    st->log = count ? malloc(count * sizeof *st->log) : NULL;
    if (count && !st->log) return TRAFFIC_ENOMEM;
    st->nlog = st->log_cap = count;
    uint64_t prev = big_endian(u + 5, 3);
    for (size_t j = 0; j < count; j++) {
        const unsigned char *rec = u + LOG_HEAD + (start + j) * LOG_RECORD;
        uint64_t s = big_endian(rec + 7, 3);
        st->log[j].t_us = (int64_t)big_endian(rec, 7);
        st->log[j].n = (int64_t)((s + LOG_MOD - prev) % LOG_MOD);
        prev = s;
        if (st->log[j].n == 0 || (j && st->log[j].t_us <= st->log[j - 1].t_us)) return -1;
    }
    return 0;
}

/* A stored state v[0..n) into *algo and *st; -1 if it is not one, or TRAFFIC_ENOMEM. */
static int parse_state(const char *v, size_t n, int *algo, traffic_limit_state *st)
{
    memset(st, 0, sizeof *st);
    if (n < 2 || v[0] != RX_LIMIT_TAG || v[1] < '0' || v[1] > '4') return -1;
    *algo = v[1] - '0';
    if (*algo == TRAFFIC_SLIDING_WINDOW) return parse_log(v, n, st);
    int fields = *algo == TRAFFIC_SLIDING_WINDOW_COUNTER ? 3 : *algo == TRAFFIC_FIXED_WINDOW ? 2 : 1;
    int64_t *dst[3] = {&st->a, &st->b, &st->c};
    const char *p = v + 2, *end = v + n;
    for (int i = 0; i < fields; i++)
        if (field(&p, end, dst[i])) return -1;
    return p == end ? 0 : -1;
}

int rx_limit_json(rx_handle *h, const char *key, const char *v, size_t n, void *buf, size_t cap, size_t *len)
{
    int algo;
    traffic_limit_state st;
    int rc = parse_state(v, n, &algo, &st);
    if (rc) {
        free(st.log);
        if (rc == TRAFFIC_ENOMEM) return traffic_backend_fail(&h->base, rc, "out of memory reading \"%.64s\"", key);
        return traffic_backend_fail(&h->base, TRAFFIC_ECORRUPT,
                                    "\"%.64s\" starts with the rate-limit tag '%c' but is no well-formed state "
                                    "(%zu bytes)",
                                    key, RX_LIMIT_TAG, n);
    }
    /* limit_state_json ends its text with a NUL, which a value has not: write into a buffer
     * one byte longer, then copy the text. */
    size_t need = limit_state_json(algo, &st, NULL, 0);
    char stackbuf[JSON_STACK], *text = need < sizeof stackbuf ? stackbuf : NULL;
    *len = need;
    if (cap < need)
        rc = traffic_backend_fail(&h->base, TRAFFIC_ERANGE,
                                  "the state of \"%.64s\" is %zu bytes of JSON, buffer holds %zu", key, need, cap);
    else if (!text && !(text = malloc(need + 1)))
        rc = traffic_backend_fail(&h->base, TRAFFIC_ENOMEM, "out of memory for the state of \"%.64s\"", key);
    else {
        limit_state_json(algo, &st, text, need + 1);
        memcpy(buf, text, need);
    }
    if (text != stackbuf) free(text);
    free(st.log);
    return rc;
}
