/*
 * scan.c — listing keys and cleaning up on demand, for every backend: traffic_scan and
 * traffic_reap (argument checks, then the vtable), the names of kinds, and the one glob
 * matcher that the memory and SQLite scans filter with.
 *
 * The matcher follows Redis's stringmatchlen (src/util.c) case for case, so that a pattern
 * selects the same keys whichever store holds them: Redis filters its SCAN with that
 * function on the server, the other backends with this one. Its quirks are Redis's and are
 * kept on purpose: an unclosed "[abc" is a set running to the end of the pattern, "[a-]" is
 * the range from 'a' to ']', a lone trailing "\" is a literal backslash. One difference is
 * deliberate: ranges compare bytes as unsigned (Redis compares plain chars, signed on x86).
 */
#include <string.h>

#include "internal.h"

/* Deeper than this a pattern is abusive (one level per '*'): no match, as Redis says. */
#define GLOB_NESTING_MAX 1000

static int glob_at(const unsigned char *p, size_t plen, const unsigned char *s, size_t slen, int *give_up, int depth)
{
    if (depth > GLOB_NESTING_MAX) return 0;
    while (plen && slen) {
        switch (p[0]) {
        case '*':
            while (plen > 1 && p[1] == '*') {
                p++;
                plen--;
            }
            if (plen == 1) return 1; /* a trailing star takes the rest */
            for (; slen; s++, slen--) {
                if (glob_at(p + 1, plen - 1, s, slen, give_up, depth + 1)) return 1;
                /* The rest of the pattern matched nowhere in a longer suffix: it cannot match
                 * in this shorter one either, so no earlier star should try further. */
                if (*give_up) return 0;
            }
            *give_up = 1;
            return 0;
        case '?': break;
        case '[': {
            int negate, match = 0;
            p++;
            plen--;
            negate = plen && p[0] == '^';
            if (negate) {
                p++;
                plen--;
            }
            for (;;) {
                if (plen >= 2 && p[0] == '\\') {
                    p++;
                    plen--;
                    match |= p[0] == s[0];
                } else if (plen && p[0] == ']') {
                    break;
                } else if (plen == 0) { /* unclosed: the set ends with the pattern */
                    p--;
                    plen++;
                    break;
                } else if (plen >= 3 && p[1] == '-') {
                    unsigned lo = p[0], hi = p[2];
                    if (lo > hi) {
                        unsigned t = lo;
                        lo = hi;
                        hi = t;
                    }
                    match |= s[0] >= lo && s[0] <= hi;
                    p += 2;
                    plen -= 2;
                } else {
                    match |= p[0] == s[0];
                }
                p++;
                plen--;
            }
            if (negate) match = !match;
            if (!match) return 0;
            break;
        }
        case '\\':
            if (plen >= 2) {
                p++;
                plen--;
            }
            /* fall through */
        default:
            if (p[0] != s[0]) return 0;
            break;
        }
        p++;
        plen--;
        s++;
        slen--;
        if (slen == 0) {
            while (plen && p[0] == '*') {
                p++;
                plen--;
            }
            break;
        }
    }
    return plen == 0 && slen == 0;
}

int traffic_glob_match(const char *glob, const char *s, size_t len)
{
    if (!glob) return 1;
    int give_up = 0;
    return glob_at((const unsigned char *)glob, strlen(glob), (const unsigned char *)s, len, &give_up, 0);
}

const char *traffic_kind_name(int kind)
{
    switch (kind) {
    case TRAFFIC_KIND_BYTES: return "bytes";
    case TRAFFIC_KIND_COUNTER: return "counter";
    case TRAFFIC_KIND_OTHER: return "other";
    default:
        return TRAFFIC_KIND_IS_LIMIT(kind) && traffic_algorithm_name(TRAFFIC_KIND_ALGORITHM(kind)) ? "limit" : NULL;
    }
}

int traffic_scan(traffic_backend *b, const char *glob, traffic_scan_fn fn, void *ctx)
{
    if (!b || !b->ops) return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "handle is NULL");
    if (!fn) return traffic_backend_fail(b, TRAFFIC_EINVAL, "fn is NULL");
    if (glob && strnlen(glob, TRAFFIC_GLOB_MAX + 1) > TRAFFIC_GLOB_MAX)
        return traffic_backend_fail(b, TRAFFIC_EINVAL, "glob is longer than %d bytes", TRAFFIC_GLOB_MAX);
    if (!b->ops->scan)
        return traffic_backend_fail(b, TRAFFIC_ENOTSUP, "the %s backend cannot list its keys", b->ops->name);
    return b->ops->scan(b, glob, fn, ctx);
}

int traffic_reap(traffic_backend *b, uint64_t *removed)
{
    uint64_t n = 0;
    if (!b || !b->ops) return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "handle is NULL");
    if (!b->ops->reap)
        return traffic_backend_fail(b, TRAFFIC_ENOTSUP, "the %s backend has no cleanup pass", b->ops->name);
    int rc = b->ops->reap(b, &n);
    if (removed) *removed = n;
    return rc;
}
