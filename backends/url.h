/*
 * url.h — the one URL parser every backend uses.
 *
 * A store URL is `scheme://rest?name=value&...`. The parser splits off the scheme and the
 * query, percent-decodes the query values, and leaves `rest` (the text between "://" and "?")
 * raw for the backend, because its shape differs: a table name, a file path, or
 * `user:password@host:port,host:port/db`. Parameters are looked up by name; each lookup marks
 * the parameter used, and url_check_unused() turns any parameter nobody asked for into
 * TRAFFIC_EINVAL naming it, so a misspelt option is never silently ignored.
 */
#ifndef TRAFFIC_BACKENDS_URL_H
#define TRAFFIC_BACKENDS_URL_H

#include <stddef.h>
#include <stdint.h>

typedef struct url_param {
    char *name;
    char *value;
    int used;
} url_param;

typedef struct url {
    char *scheme; /* lower-case, e.g. "memory", "redis+unix" */
    char *rest;   /* between "://" and "?" (or the end), not decoded */
    size_t nparams;
    url_param *params;
} url;

/* Parses s into u. On failure returns TRAFFIC_EINVAL / TRAFFIC_ENOMEM with a message for
 * traffic_errmsg(NULL); u is then empty and needs no url_free. */
int url_parse(const char *s, url *u);
void url_free(url *u);

/* The raw value of parameter name (marked used), or NULL when absent. */
const char *url_param_get(url *u, const char *name);

/* Typed lookups: TRAFFIC_OK and *out set when present and valid; TRAFFIC_OK and *out untouched
 * when absent; TRAFFIC_EINVAL with a message naming the parameter when malformed or out of
 * [min, max]. */
int url_param_u64(url *u, const char *name, uint64_t min, uint64_t max, uint64_t *out);
int url_param_double(url *u, const char *name, double min, double max, double *out);
int url_param_octal(url *u, const char *name, uint32_t max, uint32_t *out);

/* TRAFFIC_EINVAL naming the first parameter no lookup asked for, else TRAFFIC_OK. */
int url_check_unused(const url *u);

/* A copy of the URL text s (malloc'd, in *out) without the query parameters named in names
 * (NULL-terminated), the others kept as written; the '?' goes too when none is left. For a
 * store that reopens its URL later without the parameters it consumed itself (fallback=).
 * TRAFFIC_ENOMEM, else TRAFFIC_OK. */
int url_text_without(const char *s, const char *const *names, char **out);

/* Percent-decodes in place (for userinfo and paths); TRAFFIC_EINVAL on a bad escape or an
 * encoded NUL. */
int url_decode(char *s);

#endif
