/*
 * url.c — parsing of store URLs (see url.h for the shape and the "unused parameter" rule).
 */
#include "url.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "traffic/backend.h"

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

int url_decode(char *s)
{
    char *w = s;
    for (const char *r = s; *r; r++) {
        if (*r != '%') {
            *w++ = *r;
            continue;
        }
        int hi = hexval((unsigned char)r[1]), lo = hi < 0 ? -1 : hexval((unsigned char)r[2]);
        if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
            return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "bad percent-escape in URL near \"%.8s\"", r);
        *w++ = (char)(hi * 16 + lo);
        r += 2;
    }
    *w = '\0';
    return TRAFFIC_OK;
}

void url_free(url *u)
{
    if (!u) return;
    free(u->scheme);
    free(u->rest);
    for (size_t i = 0; i < u->nparams; i++) {
        free(u->params[i].name);
        free(u->params[i].value);
    }
    free(u->params);
    memset(u, 0, sizeof *u);
}

static int parse_query(url *u, const char *q)
{
    size_t n = 1;
    for (const char *p = q; *p; p++)
        n += *p == '&';
    u->params = calloc(n, sizeof *u->params);
    if (!u->params) return traffic_backend_fail(NULL, TRAFFIC_ENOMEM, "out of memory parsing URL");
    while (*q) {
        size_t len = strcspn(q, "&");
        if (len == 0) {
            q++;
            continue;
        } /* tolerate "a=1&&b=2" and a trailing '&' */
        const char *eq = memchr(q, '=', len);
        if (!eq || eq == q)
            return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "URL parameter \"%.*s\" is not name=value", (int)len, q);
        url_param *p = &u->params[u->nparams];
        p->name = strndup(q, (size_t)(eq - q));
        p->value = strndup(eq + 1, len - (size_t)(eq - q) - 1);
        if (!p->name || !p->value) {
            free(p->name);
            free(p->value);
            return traffic_backend_fail(NULL, TRAFFIC_ENOMEM, "out of memory parsing URL");
        }
        u->nparams++;
        int rc = url_decode(p->value);
        if (rc) return rc;
        for (size_t i = 0; i + 1 < u->nparams; i++)
            if (strcmp(u->params[i].name, p->name) == 0)
                return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "URL parameter \"%s\" given twice", p->name);
        q += len;
    }
    return TRAFFIC_OK;
}

int url_parse(const char *s, url *u)
{
    memset(u, 0, sizeof *u);
    if (!s) return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "URL is NULL");
    const char *sep = strstr(s, "://");
    if (!sep || sep == s) return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "URL \"%.64s\" has no scheme:// part", s);
    for (const char *p = s; p < sep; p++)
        if (!isalnum((unsigned char)*p) && *p != '+' && *p != '-' && *p != '.')
            return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "URL scheme \"%.*s\" is malformed", (int)(sep - s), s);
    const char *rest = sep + 3, *q = strchr(rest, '?');
    u->scheme = strndup(s, (size_t)(sep - s));
    u->rest = q ? strndup(rest, (size_t)(q - rest)) : strdup(rest);
    if (!u->scheme || !u->rest) {
        url_free(u);
        return traffic_backend_fail(NULL, TRAFFIC_ENOMEM, "out of memory parsing URL");
    }
    for (char *p = u->scheme; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    int rc = q ? parse_query(u, q + 1) : TRAFFIC_OK;
    if (rc) url_free(u);
    return rc;
}

const char *url_param_get(url *u, const char *name)
{
    for (size_t i = 0; i < u->nparams; i++)
        if (strcmp(u->params[i].name, name) == 0) {
            u->params[i].used = 1;
            return u->params[i].value;
        }
    return NULL;
}

int url_param_u64(url *u, const char *name, uint64_t min, uint64_t max, uint64_t *out)
{
    const char *v = url_param_get(u, name);
    if (!v) return TRAFFIC_OK;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (!*v || *end || errno || v[0] == '-' || x < min || x > max)
        return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "URL parameter %s=\"%s\": want an integer in [%llu, %llu]",
                                    name, v, (unsigned long long)min, (unsigned long long)max);
    *out = x;
    return TRAFFIC_OK;
}

int url_param_double(url *u, const char *name, double min, double max, double *out)
{
    const char *v = url_param_get(u, name);
    if (!v) return TRAFFIC_OK;
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (!*v || *end || errno || !isfinite(x) || x < min || x > max)
        return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "URL parameter %s=\"%s\": want a number in [%g, %g]", name, v,
                                    min, max);
    *out = x;
    return TRAFFIC_OK;
}

int url_param_octal(url *u, const char *name, uint32_t max, uint32_t *out)
{
    const char *v = url_param_get(u, name);
    if (!v) return TRAFFIC_OK;
    char *end;
    errno = 0;
    unsigned long x = strtoul(v, &end, 8);
    if (!*v || *end || errno || v[0] == '-' || x > max)
        return traffic_backend_fail(NULL, TRAFFIC_EINVAL,
                                    "URL parameter %s=\"%s\": want octal permission bits up to %o", name, v, max);
    *out = (uint32_t)x;
    return TRAFFIC_OK;
}

static int named(const char *param, size_t len, const char *const *names)
{
    size_t nlen = strcspn(param, "=");
    if (nlen > len) nlen = len;
    for (; *names; names++)
        if (strlen(*names) == nlen && memcmp(*names, param, nlen) == 0) return 1;
    return 0;
}

int url_text_without(const char *s, const char *const *names, char **out)
{
    size_t n = strlen(s);
    char *w = malloc(n + 1);
    *out = w;
    if (!w) return traffic_backend_fail(NULL, TRAFFIC_ENOMEM, "out of memory copying a URL");
    const char *q = strchr(s, '?');
    size_t head = q ? (size_t)(q - s) : n;
    memcpy(w, s, head);
    w += head;
    char sep = '?';
    for (const char *p = q ? q + 1 : s + n; *p;) {
        size_t len = strcspn(p, "&");
        if (len && !named(p, len, names)) {
            *w++ = sep;
            memcpy(w, p, len);
            w += len;
            sep = '&';
        }
        p += len + (p[len] == '&');
    }
    *w = '\0';
    return TRAFFIC_OK;
}

int url_check_unused(const url *u)
{
    for (size_t i = 0; i < u->nparams; i++)
        if (!u->params[i].used)
            return traffic_backend_fail(NULL, TRAFFIC_EINVAL, "unknown URL parameter \"%s\" for %s://",
                                        u->params[i].name, u->scheme);
    return TRAFFIC_OK;
}
