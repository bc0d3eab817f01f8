/*
 * sqlite_testutil.h — what the SQLite suites share (test_sqlite, test_sqlite_limit,
 * test_sqlite_faults, test_sqlite_fs): a scratch directory per suite, a fresh directory or
 * database path per test, the URL and handle of a database, and raw SQLite access to look at
 * the file from outside the library. Failures are check assertions.
 */
#ifndef TRAFFIC_SQLITE_TESTUTIL_H
#define TRAFFIC_SQLITE_TESTUTIL_H

#include <sqlite3.h>
#include <stddef.h>

#include "testutil.h"

/* The suite's scratch directory under the system's temporary one (tag names it), made by
 * tsq_setup and removed with all it holds by tsq_teardown: an unchecked fixture's pair. */
void tsq_setup(const char *tag);
void tsq_teardown(void);

/* A fresh directory for one test (tu_name(tag) in the scratch directory), and a path
 * dir/t.db in one: into buf, or into one of a few rotating buffers. */
const char *tsq_dir_into(const char *tag, char *buf, size_t cap);
const char *tsq_db_into(const char *tag, char *buf, size_t cap);
const char *tsq_dir(const char *tag);
const char *tsq_db(const char *tag);
/* dir/name, in one of a few rotating buffers. */
const char *tsq_in_dir(const char *dir, const char *name);

/* sqlite://path[?params] (rotating buffers), and a handle on it (asserted to open). */
const char *tsq_url(const char *path, const char *params);
traffic_backend *tsq_open(const char *path, const char *params);

/* Raw SQLite on the file, outside the library: a connection (read-write, created if need
 * be, waiting up to 10 s for locks), one statement run, and the first column of the first
 * row of a query as text (a static buffer) or as an integer. */
sqlite3 *tsq_raw_open(const char *path);
void tsq_raw_exec(const char *path, const char *sql);
const char *tsq_raw_text(const char *path, const char *sql);
long long tsq_raw_int(const char *path, const char *sql);

/* The whole file as bytes (malloc'd, NUL-terminated), for "left untouched" checks. */
char *tsq_slurp(const char *path, size_t *n);

#endif
