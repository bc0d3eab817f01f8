/*
 * sqlite_testutil.c — the SQLite suites' shared helpers (sqlite_testutil.h).
 */
#include "sqlite_testutil.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static char base_dir[256];

void tsq_setup(const char *tag)
{
    if (!tu_scratch_make(base_dir, sizeof base_dir, tag)) abort();
}

void tsq_teardown(void)
{
    tu_scratch_remove(base_dir);
}

const char *tsq_dir_into(const char *tag, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/%s", base_dir, tu_name(tag));
    ck_assert_int_eq(mkdir(buf, 0755), 0);
    return buf;
}

const char *tsq_db_into(const char *tag, char *buf, size_t cap)
{
    char dir[400];
    tsq_dir_into(tag, dir, sizeof dir);
    snprintf(buf, cap, "%s/t.db", dir);
    return buf;
}

/* Each function rotates through buffers of its own, so that a directory name stays valid
 * across the several paths made in it. */
#define ROTATE   8
#define PATH_CAP 600
static char *next_buf(char (*bufs)[PATH_CAP], unsigned *n)
{
    return bufs[(*n)++ % ROTATE];
}

const char *tsq_dir(const char *tag)
{
    static char bufs[ROTATE][PATH_CAP];
    static unsigned n;
    return tsq_dir_into(tag, next_buf(bufs, &n), PATH_CAP);
}

const char *tsq_db(const char *tag)
{
    static char bufs[ROTATE][PATH_CAP];
    static unsigned n;
    return tsq_db_into(tag, next_buf(bufs, &n), PATH_CAP);
}

const char *tsq_in_dir(const char *dir, const char *name)
{
    static char bufs[ROTATE][PATH_CAP];
    static unsigned n;
    char *b = next_buf(bufs, &n);
    snprintf(b, PATH_CAP, "%s/%s", dir, name);
    return b;
}

const char *tsq_url(const char *path, const char *params)
{
    static char buf[4][800];
    static int n;
    char *b = buf[n++ % 4];
    snprintf(b, 800, "sqlite://%s%s%s", path, params ? "?" : "", params ? params : "");
    return b;
}

traffic_backend *tsq_open(const char *path, const char *params)
{
    traffic_backend *b = NULL;
    TU_OK(NULL, traffic_open(tsq_url(path, params), &b));
    return b;
}

sqlite3 *tsq_raw_open(const char *path)
{
    sqlite3 *db;
    ck_assert_int_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, 10000);
    return db;
}

void tsq_raw_exec(const char *path, const char *sql)
{
    sqlite3 *db = tsq_raw_open(path);
    char *err = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &err);
    ck_assert_msg(rc == SQLITE_OK, "%s: %s", sql, err ? err : "?");
    sqlite3_free(err);
    sqlite3_close(db);
}

const char *tsq_raw_text(const char *path, const char *sql)
{
    static char out[4096];
    sqlite3 *db = tsq_raw_open(path);
    sqlite3_stmt *st;
    ck_assert_int_eq(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    out[0] = 0;
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
        snprintf(out, sizeof out, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    sqlite3_close(db);
    return out;
}

long long tsq_raw_int(const char *path, const char *sql)
{
    return atoll(tsq_raw_text(path, sql));
}

char *tsq_slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc(*n + 1);
    ck_assert_ptr_nonnull(p);
    ck_assert_uint_eq(fread(p, 1, *n, f), *n);
    p[*n] = 0;
    fclose(f);
    return p;
}
