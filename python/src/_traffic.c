/*
 * _traffic.c — the CPython extension under the `traffic` package: libtraffic's calls as methods
 * of a Store object, its rules and decisions as small C types, its statuses as exceptions.
 *
 * The one idea: this layer is thin and synchronous. Each method is one library call; the
 * asyncio side (traffic/backends/) decides where the call runs. A Store opened with
 * nogil=True (SQLite, Redis: calls that can wait on a lock or a server) releases the GIL for
 * the duration of the call, so the event loop's thread keeps running Python while an executor
 * thread waits; a memory Store keeps the GIL, because its calls take ~100 ns and releasing and
 * retaking the GIL would cost as much again.
 *
 * Closing versus calls in flight: traffic_close must not race other calls on the handle
 * (traffic.h). Calls that release the GIL count themselves in Store.inflight, which only code
 * holding the GIL reads or writes; close() marks the store closed (so no new call starts) and
 * waits, without the GIL, until that count is zero before it closes the handle.
 *
 * Errors: traffic_errmsg() is per thread and per handle, and each call reads it in the thread
 * that made the call, right after it, before anything else can run a library call there.
 * Statuses map to the exception classes that traffic/errors.py registers (set_errors).
 *
 * Only the public headers are used: traffic.h, and backend.h for traffic_limit_check (rule
 * validation) and traffic_limit_apply (the algorithms' pure function, which a Python custom
 * Backend needs to decide on a state it stores itself).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <limits.h>
#include <math.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <traffic/backend.h>
#include <traffic/traffic.h>

#define GET_STACK_BUF   512  /* a get first tries a buffer on the stack; most states are < 100 bytes */
#define STATS_STACK_BUF 4096 /* the stats JSON of any backend fits */
#define CLOSE_WAIT_US   1000 /* close() polls for calls in flight this often */

/* ---- errors ------------------------------------------------------------------------------ */

static PyObject *error_classes; /* dict: status (int) -> exception class; set by traffic.errors */
static PyObject *error_base;    /* traffic.TrafficError, or RuntimeError before registration */

/* Raises the exception of `status` with the calling thread's message for handle b (NULL: the
 * last open). The class is called as cls(message, status). Returns NULL. */
static PyObject *raise_status(const traffic_backend *b, int status)
{
    const char *msg = traffic_errmsg(b);
    if (!msg || !*msg) msg = traffic_strerror(status);
    PyObject *cls = NULL;
    if (error_classes) {
        PyObject *k = PyLong_FromLong(status);
        if (!k) return NULL;
        cls = PyDict_GetItemWithError(error_classes, k);
        Py_DECREF(k);
        if (!cls && PyErr_Occurred()) return NULL;
    }
    if (!cls) cls = error_base ? error_base : PyExc_RuntimeError;
    PyObject *exc = PyObject_CallFunction(cls, "si", msg, status);
    if (exc) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/* An argument error of this layer (not of the library): raised as TRAFFIC_EINVAL would be. */
static PyObject *raise_einval(const char *msg)
{
    PyObject *cls = NULL;
    if (error_classes) {
        PyObject *k = PyLong_FromLong(TRAFFIC_EINVAL);
        if (!k) return NULL;
        cls = PyDict_GetItemWithError(error_classes, k);
        Py_DECREF(k);
        if (!cls && PyErr_Occurred()) return NULL;
    }
    if (!cls) {
        PyErr_SetString(PyExc_ValueError, msg);
        return NULL;
    }
    PyObject *exc = PyObject_CallFunction(cls, "si", msg, TRAFFIC_EINVAL);
    if (exc) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

static PyObject *set_errors(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *classes, *base;
    if (!PyArg_ParseTuple(args, "O!O", &PyDict_Type, &classes, &base)) return NULL;
    Py_XSETREF(error_classes, Py_NewRef(classes));
    Py_XSETREF(error_base, Py_NewRef(base));
    Py_RETURN_NONE;
}

/* A key as the library wants it: a NUL-free UTF-8 string (str, or bytes). Its length against
 * TRAFFIC_KEY_MAX is the library's to check, with its message. */
static const char *key_arg(PyObject *o)
{
    Py_ssize_t n;
    const char *s;
    if (PyUnicode_Check(o)) {
        s = PyUnicode_AsUTF8AndSize(o, &n);
        if (!s) return NULL;
    } else if (PyBytes_Check(o)) {
        s = PyBytes_AS_STRING(o);
        n = PyBytes_GET_SIZE(o);
    } else {
        PyErr_Format(PyExc_TypeError, "key must be str, not %.100s", Py_TYPE(o)->tp_name);
        return NULL;
    }
    if (memchr(s, 0, (size_t)n)) {
        raise_einval("key contains a NUL character");
        return NULL;
    }
    return s;
}

/* ---- Rule -------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD traffic_rule r;
} Rule;

static PyTypeObject RuleType;

static int rule_init(Rule *self, PyObject *args, PyObject *kw)
{
    static char *names[] = {"algorithm", "limit", "window", "burst", NULL};
    int algo;
    long long limit, burst = 0;
    double window;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iLd|L:Rule", names, &algo, &limit, &window, &burst)) return -1;
    self->r = (traffic_rule){.algorithm = (traffic_algorithm)algo, .limit = limit, .window = window, .burst = burst};
    char msg[256];
    if (traffic_limit_check(&self->r, msg, sizeof msg) != TRAFFIC_OK) {
        raise_einval(msg);
        return -1;
    }
    return 0;
}

static PyObject *rule_parse(PyObject *cls, PyObject *arg)
{
    const char *text = PyUnicode_AsUTF8(arg);
    if (!text) return NULL;
    traffic_rule r;
    char msg[256];
    if (traffic_rule_parse(text, &r, msg, sizeof msg) != TRAFFIC_OK) return raise_einval(msg);
    Rule *self = (Rule *)((PyTypeObject *)cls)->tp_alloc((PyTypeObject *)cls, 0);
    if (self) self->r = r;
    return (PyObject *)self;
}

static PyObject *rule_get_algorithm(Rule *self, void *c)
{
    (void)c;
    return PyLong_FromLong(self->r.algorithm);
}
static PyObject *rule_get_limit(Rule *self, void *c)
{
    (void)c;
    return PyLong_FromLongLong(self->r.limit);
}
static PyObject *rule_get_window(Rule *self, void *c)
{
    (void)c;
    return PyFloat_FromDouble(self->r.window);
}
static PyObject *rule_get_burst(Rule *self, void *c)
{
    (void)c;
    return PyLong_FromLongLong(self->r.burst);
}

static PyObject *rule_repr(Rule *self)
{
    char window[64];
    PyOS_snprintf(window, sizeof window, "%.17g", self->r.window);
    return PyUnicode_FromFormat("Rule(%s, limit=%lld, window=%s, burst=%lld)",
                                traffic_algorithm_name(self->r.algorithm), (long long)self->r.limit, window,
                                (long long)self->r.burst);
}

static PyGetSetDef rule_getset[] = {
    {"algorithm", (getter)rule_get_algorithm, NULL, "the algorithm's number (traffic.h)", NULL},
    {"limit", (getter)rule_get_limit, NULL, "requests per window", NULL},
    {"window", (getter)rule_get_window, NULL, "seconds", NULL},
    {"burst", (getter)rule_get_burst, NULL, "bucket capacity or queue depth (0: limit)", NULL},
    {NULL}};

static PyMethodDef rule_methods[] = {
    {"parse", (PyCFunction)rule_parse, METH_O | METH_CLASS,
     "Rule.parse('token_bucket:100/60s,burst=20'): a rule from text (traffic_rule_parse)."},
    {NULL}};

static PyTypeObject RuleType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "traffic._traffic.Rule",
    .tp_basicsize = sizeof(Rule),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Rule(algorithm, limit, window, burst=0): a checked traffic_rule.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)rule_init,
    .tp_repr = (reprfunc)rule_repr,
    .tp_getset = rule_getset,
    .tp_methods = rule_methods,
};

/* ---- Decision ---------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD char allowed;
    long long limit, remaining;
    double reset_after, retry_after, delay;
} Decision;

static PyTypeObject DecisionType;

static PyObject *decision_new(const traffic_decision *d)
{
    Decision *o = PyObject_New(Decision, &DecisionType);
    if (!o) return NULL;
    o->allowed = (char)(d->allowed != 0);
    o->limit = d->limit;
    o->remaining = d->remaining;
    o->reset_after = d->reset_after;
    o->retry_after = d->retry_after;
    o->delay = d->delay;
    return (PyObject *)o;
}

static PyObject *decision_repr(Decision *self)
{
    char buf[256];
    PyOS_snprintf(buf, sizeof buf,
                  "Decision(allowed=%s, limit=%lld, remaining=%lld, reset_after=%.6f, retry_after=%.6f, delay=%.6f)",
                  self->allowed ? "True" : "False", self->limit, self->remaining, self->reset_after, self->retry_after,
                  self->delay);
    return PyUnicode_FromString(buf);
}

/* ceil(x) as a long long, saturated (NaN: 0): a cast of a double out of range is undefined. */
static long long ceil_ll(double x)
{
    if (isnan(x)) return 0;
    x = ceil(x);
    if (x >= 9223372036854775807.0) return LLONG_MAX;
    if (x <= -9223372036854775808.0) return LLONG_MIN;
    return (long long)x;
}

/* The HTTP headers of a decision, as ASGI wants them: a list of (name, value) bytes pairs,
 * lower-case names. X-RateLimit-Limit, -Remaining (never below 0), -Reset (Unix seconds, now +
 * reset_after rounded up) and, when denied and the request can ever pass, Retry-After (whole
 * seconds, rounded up, at least 1). The one implementation of these formulas for raw headers:
 * RateLimitInfo.raw_headers and decision_headers (limiter.py, as text) come here too. */
static PyObject *headers_list(int allowed, long long limit, long long remaining, double reset_after,
                              double retry_after, double now)
{
    int n = !allowed && retry_after >= 0 ? 4 : 3;
    PyObject *list = PyList_New(n);
    if (!list) return NULL;
    static const char *const names[] = {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset",
                                        "retry-after"};
    long long values[4] = {limit, remaining > 0 ? remaining : 0, ceil_ll(now + reset_after), 0};
    if (n == 4) {
        long long r = ceil_ll(retry_after);
        values[3] = r > 1 ? r : 1;
    }
    for (int i = 0; i < n; i++) {
        char digits[24]; /* PyBytes_FromFormat has no %lld */
        int len = snprintf(digits, sizeof digits, "%lld", values[i]);
        PyObject *pair = Py_BuildValue("(yy#)", names[i], digits, (Py_ssize_t)len);
        if (!pair) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, pair);
    }
    return list;
}

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts); /* what time.time() reads */
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* raw_headers(now=None) -> [(bytes, bytes), ...] (headers_list); now: Unix seconds, default
 * the wall clock. The @rate_limit decorator's fast path sends these. */
static PyObject *decision_raw_headers(Decision *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"now", NULL};
    PyObject *at = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:raw_headers", kwlist, &at)) return NULL;
    double now = at != Py_None ? PyFloat_AsDouble(at) : wall_now();
    if (now == -1.0 && PyErr_Occurred()) return NULL;
    return headers_list(self->allowed, self->limit, self->remaining, self->reset_after, self->retry_after, now);
}

static PyMethodDef decision_methods[] = {
    {"raw_headers", (PyCFunction)(void (*)(void))decision_raw_headers, METH_VARARGS | METH_KEYWORDS,
     "raw_headers(now=None) -> the X-RateLimit-* (and Retry-After) headers as ASGI (name, value) bytes"},
    {NULL}};

/* raw_headers(allowed, limit, remaining, reset_after, retry_after, now): headers_list for
 * figures held elsewhere (RateLimitInfo). */
static PyObject *mod_raw_headers(PyObject *m, PyObject *args)
{
    (void)m;
    int allowed;
    long long limit, remaining;
    double reset_after, retry_after, now;
    if (!PyArg_ParseTuple(args, "pLLddd:raw_headers", &allowed, &limit, &remaining, &reset_after, &retry_after,
                          &now))
        return NULL;
    return headers_list(allowed, limit, remaining, reset_after, retry_after, now);
}

static PyMemberDef decision_members[] = {
    {"allowed", T_BOOL, offsetof(Decision, allowed), READONLY, "True: pass; False: reply 429"},
    {"limit", T_LONGLONG, offsetof(Decision, limit), READONLY, "the quota to advertise"},
    {"remaining", T_LONGLONG, offsetof(Decision, remaining), READONLY, "cost-1 requests that would pass next"},
    {"reset_after", T_DOUBLE, offsetof(Decision, reset_after), READONLY, "seconds until the key is unused"},
    {"retry_after", T_DOUBLE, offsetof(Decision, retry_after), READONLY,
     "denied: seconds until this request would pass (-1: never); allowed: 0"},
    {"delay", T_DOUBLE, offsetof(Decision, delay), READONLY, "leaky bucket: seconds to hold the request"},
    {NULL}};

static PyTypeObject DecisionType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "traffic._traffic.Decision",
    .tp_basicsize = sizeof(Decision),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One rate-limit decision (traffic_decision).",
    .tp_repr = (reprfunc)decision_repr,
    .tp_members = decision_members,
    .tp_methods = decision_methods,
};

/* ---- Store ------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD traffic_backend *b; /* NULL once closed */
    int nogil;                        /* release the GIL around each call */
    int inflight;                     /* calls running without the GIL; read and written under the GIL */
} Store;

static PyTypeObject StoreType;

/* Runs `call` (an assignment of a library call's status), without the GIL for a nogil store.
 * inflight keeps close() from freeing the handle underneath the call. The caller reads the
 * error message of a failure (raise_status) before running any Python code, so before close()
 * can get the GIL and free the handle. */
#define STORE_CALL(s, call)                                                                                            \
    do {                                                                                                               \
        if ((s)->nogil) {                                                                                              \
            (s)->inflight++;                                                                                           \
            PyThreadState *ts_ = PyEval_SaveThread();                                                                  \
            call;                                                                                                      \
            PyEval_RestoreThread(ts_);                                                                                 \
            (s)->inflight--;                                                                                           \
        } else {                                                                                                       \
            call;                                                                                                      \
        }                                                                                                              \
    } while (0)

/* The open handle, or NULL with an exception. */
static traffic_backend *store_handle(Store *s)
{
    if (s->b) return s->b;
    raise_einval("the backend is closed");
    return NULL;
}

static PyObject *store_wrap(traffic_backend *b, int nogil)
{
    Store *s = PyObject_New(Store, &StoreType);
    if (!s) {
        traffic_close(b);
        return NULL;
    }
    s->b = b;
    s->nogil = nogil;
    s->inflight = 0;
    return (PyObject *)s;
}

static void store_close_handle(Store *s)
{
    traffic_backend *b = s->b;
    if (!b) return;
    s->b = NULL; /* no new call starts from here on */
    while (s->inflight > 0) {
        PyThreadState *ts = PyEval_SaveThread();
        usleep(CLOSE_WAIT_US);
        PyEval_RestoreThread(ts);
    }
    if (s->nogil) {
        PyThreadState *ts = PyEval_SaveThread();
        traffic_close(b);
        PyEval_RestoreThread(ts);
    } else {
        traffic_close(b);
    }
}

static void store_dealloc(Store *s)
{
    store_close_handle(s);
    PyObject_Free(s);
}

static PyObject *store_close(Store *s, PyObject *unused)
{
    (void)unused;
    store_close_handle(s);
    Py_RETURN_NONE;
}

/* get(key) -> bytes, or None when absent or expired. */
static PyObject *store_get(Store *s, PyObject *keyobj)
{
    const char *key = key_arg(keyobj);
    traffic_backend *b = key ? store_handle(s) : NULL;
    if (!b) return NULL;
    char stack[GET_STACK_BUF];
    size_t len = 0;
    int rc;
    STORE_CALL(s, rc = traffic_get(b, key, stack, sizeof stack, &len));
    if (rc == TRAFFIC_OK) return PyBytes_FromStringAndSize(stack, (Py_ssize_t)len);
    /* A long value: read it into a bytes object of the size reported; it may grow meanwhile. */
    while (rc == TRAFFIC_ERANGE) {
        size_t cap = len;
        PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)cap);
        if (!out) return NULL;
        if (!(b = store_handle(s))) {
            Py_DECREF(out);
            return NULL;
        }
        char *buf = PyBytes_AS_STRING(out);
        STORE_CALL(s, rc = traffic_get(b, key, buf, cap, &len));
        if (rc == TRAFFIC_OK) {
            if (len != cap && _PyBytes_Resize(&out, (Py_ssize_t)len) < 0) return NULL;
            return out;
        }
        Py_DECREF(out);
    }
    if (rc == TRAFFIC_ENOTFOUND) Py_RETURN_NONE;
    return raise_status(b, rc);
}

/* set(key, value: bytes-like, ttl: float) */
static PyObject *store_set(Store *s, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) return PyErr_Format(PyExc_TypeError, "set() takes key, value, ttl");
    const char *key = key_arg(args[0]);
    if (!key) return NULL;
    double ttl = PyFloat_AsDouble(args[2]);
    if (ttl == -1.0 && PyErr_Occurred()) return NULL;
    traffic_backend *b = store_handle(s);
    if (!b) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0) return NULL;
    int rc;
    STORE_CALL(s, rc = traffic_set(b, key, view.buf, (size_t)view.len, ttl));
    if (rc != TRAFFIC_OK) raise_status(b, rc); /* reads the message before releasing the buffer */
    PyBuffer_Release(&view);
    if (rc != TRAFFIC_OK) return NULL;
    Py_RETURN_NONE;
}

static PyObject *store_delete(Store *s, PyObject *keyobj)
{
    const char *key = key_arg(keyobj);
    traffic_backend *b = key ? store_handle(s) : NULL;
    if (!b) return NULL;
    int rc;
    STORE_CALL(s, rc = traffic_delete(b, key));
    if (rc != TRAFFIC_OK) return raise_status(b, rc);
    Py_RETURN_NONE;
}

static PyObject *store_exists(Store *s, PyObject *keyobj)
{
    const char *key = key_arg(keyobj);
    traffic_backend *b = key ? store_handle(s) : NULL;
    if (!b) return NULL;
    int rc;
    STORE_CALL(s, rc = traffic_exists(b, key));
    if (rc < 0) return raise_status(b, rc);
    return PyBool_FromLong(rc);
}

/* increment(key, amount=1, ttl=0.0) -> int, the new value */
static PyObject *store_increment(Store *s, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) return PyErr_Format(PyExc_TypeError, "increment() takes key[, amount[, ttl]]");
    const char *key = key_arg(args[0]);
    if (!key) return NULL;
    long long amount = 1;
    double ttl = 0;
    if (nargs > 1) {
        amount = PyLong_AsLongLong(args[1]);
        if (amount == -1 && PyErr_Occurred()) return NULL;
    }
    if (nargs > 2) {
        ttl = PyFloat_AsDouble(args[2]);
        if (ttl == -1.0 && PyErr_Occurred()) return NULL;
    }
    traffic_backend *b = store_handle(s);
    if (!b) return NULL;
    int64_t out = 0;
    int rc;
    STORE_CALL(s, rc = traffic_increment(b, key, amount, ttl, &out));
    if (rc != TRAFFIC_OK) return raise_status(b, rc);
    return PyLong_FromLongLong(out);
}

/* ttl(key) -> seconds left, -1.0 for no expiry, None when absent */
static PyObject *store_ttl(Store *s, PyObject *keyobj)
{
    const char *key = key_arg(keyobj);
    traffic_backend *b = key ? store_handle(s) : NULL;
    if (!b) return NULL;
    double secs = 0;
    int rc;
    STORE_CALL(s, rc = traffic_ttl(b, key, &secs));
    if (rc == TRAFFIC_ENOTFOUND) Py_RETURN_NONE;
    if (rc != TRAFFIC_OK) return raise_status(b, rc);
    return PyFloat_FromDouble(secs);
}

/* The calls without arguments that return only a status. */
static PyObject *store_simple(Store *s, int (*fn)(traffic_backend *))
{
    traffic_backend *b = store_handle(s);
    if (!b) return NULL;
    int rc;
    STORE_CALL(s, rc = fn(b));
    if (rc != TRAFFIC_OK) return raise_status(b, rc);
    Py_RETURN_NONE;
}

static PyObject *store_clear(Store *s, PyObject *unused)
{
    (void)unused;
    return store_simple(s, traffic_clear);
}

static PyObject *store_start_cleanup(Store *s, PyObject *unused)
{
    (void)unused;
    return store_simple(s, traffic_start_cleanup);
}

static PyObject *store_stop_cleanup(Store *s, PyObject *unused)
{
    (void)unused;
    return store_simple(s, traffic_stop_cleanup);
}

/* stats() -> str, the stats JSON (traffic_stats_json) */
static PyObject *store_stats(Store *s, PyObject *unused)
{
    (void)unused;
    traffic_backend *b = store_handle(s);
    if (!b) return NULL;
    char stack[STATS_STACK_BUF];
    int rc;
    STORE_CALL(s, rc = traffic_stats_json(b, stack, sizeof stack));
    if (rc >= 0) return PyUnicode_FromStringAndSize(stack, rc);
    if (rc != TRAFFIC_ERANGE) return raise_status(b, rc);
    /* Longer than any backend writes today: ask for the length, leave room for growth. */
    int need;
    STORE_CALL(s, need = traffic_stats_json(b, NULL, 0));
    if (need < 0) return raise_status(b, need);
    size_t cap = (size_t)need + 256;
    char *buf = PyMem_Malloc(cap);
    if (!buf) return PyErr_NoMemory();
    STORE_CALL(s, rc = traffic_stats_json(b, buf, cap));
    PyObject *out = rc >= 0 ? PyUnicode_FromStringAndSize(buf, rc) : raise_status(b, rc);
    PyMem_Free(buf);
    return out;
}

/* limit(key, rule, cost=1) -> Decision: one traffic_limit call. The hot path of every
 * rate-limited request: positional arguments only, no keyword parsing. */
static PyObject *store_limit(Store *s, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 2 || nargs > 3) return PyErr_Format(PyExc_TypeError, "limit() takes key, rule[, cost]");
    const char *key = key_arg(args[0]);
    if (!key) return NULL;
    if (!PyObject_TypeCheck(args[1], &RuleType))
        return PyErr_Format(PyExc_TypeError, "rule must be a Rule, not %.100s", Py_TYPE(args[1])->tp_name);
    const traffic_rule *rule = &((Rule *)args[1])->r;
    long long cost = 1;
    if (nargs > 2) {
        cost = PyLong_AsLongLong(args[2]);
        if (cost == -1 && PyErr_Occurred()) return NULL;
    }
    traffic_backend *b = store_handle(s);
    if (!b) return NULL;
    traffic_decision d;
    int rc;
    STORE_CALL(s, rc = traffic_limit(b, key, rule, cost, &d));
    if (rc != TRAFFIC_OK) return raise_status(b, rc);
    return decision_new(&d);
}

/* limit_at(key, rule, cost, now_us) -> Decision: traffic_limit_at. For tests, and for the
 * `limits` package's elastic window (traffic/limits_storage.py), which decides every hit of a
 * key at one fixed instant so that only the key's storage TTL, on the real clock, ends it. */
static PyObject *store_limit_at(Store *s, PyObject *args)
{
    PyObject *keyobj;
    Rule *rule;
    long long cost, now_us;
    if (!PyArg_ParseTuple(args, "OO!LL", &keyobj, &RuleType, &rule, &cost, &now_us)) return NULL;
    const char *key = key_arg(keyobj);
    traffic_backend *b = key ? store_handle(s) : NULL;
    if (!b) return NULL;
    traffic_decision d;
    int rc;
    STORE_CALL(s, rc = traffic_limit_at(b, key, &rule->r, cost, now_us, &d));
    if (rc != TRAFFIC_OK) return raise_status(b, rc);
    return decision_new(&d);
}

static PyObject *store_get_closed(Store *s, void *c)
{
    (void)c;
    return PyBool_FromLong(s->b == NULL);
}

static PyObject *store_get_nogil(Store *s, void *c)
{
    (void)c;
    return PyBool_FromLong(s->nogil);
}

static PyMethodDef store_methods[] = {
    {"get", (PyCFunction)store_get, METH_O, "get(key) -> bytes or None"},
    {"set", (PyCFunction)(void (*)(void))store_set, METH_FASTCALL, "set(key, value, ttl)"},
    {"delete", (PyCFunction)store_delete, METH_O, "delete(key)"},
    {"exists", (PyCFunction)store_exists, METH_O, "exists(key) -> bool"},
    {"increment", (PyCFunction)(void (*)(void))store_increment, METH_FASTCALL,
     "increment(key, amount=1, ttl=0.0) -> int"},
    {"ttl", (PyCFunction)store_ttl, METH_O, "ttl(key) -> seconds, -1.0 (no expiry) or None (absent)"},
    {"clear", (PyCFunction)store_clear, METH_NOARGS, "clear()"},
    {"stats", (PyCFunction)store_stats, METH_NOARGS, "stats() -> str (JSON)"},
    {"start_cleanup", (PyCFunction)store_start_cleanup, METH_NOARGS, "start_cleanup()"},
    {"stop_cleanup", (PyCFunction)store_stop_cleanup, METH_NOARGS, "stop_cleanup()"},
    {"limit", (PyCFunction)(void (*)(void))store_limit, METH_FASTCALL, "limit(key, rule, cost=1) -> Decision"},
    {"limit_at", (PyCFunction)store_limit_at, METH_VARARGS, "limit_at(key, rule, cost, now_us) -> Decision"},
    {"close", (PyCFunction)store_close, METH_NOARGS, "close(): waits for calls in flight"},
    {NULL}};

static PyGetSetDef store_getset[] = {{"closed", (getter)store_get_closed, NULL, "True once closed", NULL},
                                     {"nogil", (getter)store_get_nogil, NULL, "True if calls release the GIL", NULL},
                                     {NULL}};

static PyTypeObject StoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "traffic._traffic.Store",
    .tp_basicsize = sizeof(Store),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "An open libtraffic handle (made by open_url, open_memory, open_sqlite, open_redis).",
    .tp_dealloc = (destructor)store_dealloc,
    .tp_methods = store_methods,
    .tp_getset = store_getset,
};

/* ---- opening ----------------------------------------------------------------------------- */

/* open_url(url, nogil) -> Store */
static PyObject *open_url(PyObject *self, PyObject *args)
{
    (void)self;
    const char *url;
    int nogil;
    if (!PyArg_ParseTuple(args, "sp", &url, &nogil)) return NULL;
    traffic_backend *b = NULL;
    int rc;
    if (nogil) {
        PyThreadState *ts = PyEval_SaveThread();
        rc = traffic_open(url, &b);
        PyEval_RestoreThread(ts);
    } else {
        rc = traffic_open(url, &b);
    }
    if (rc != TRAFFIC_OK) return raise_status(NULL, rc);
    return store_wrap(b, nogil);
}

/* open_memory(name, max_size, cleanup_interval, key_max, value_max, mode) -> Store */
static PyObject *open_memory(PyObject *self, PyObject *args)
{
    (void)self;
    traffic_memory_options o = {0};
    unsigned long long max_size;
    unsigned int key_max, value_max, mode;
    if (!PyArg_ParseTuple(args, "zKdIII", &o.name, &max_size, &o.cleanup_interval, &key_max, &value_max, &mode))
        return NULL;
    o.max_size = max_size;
    o.key_max = key_max;
    o.value_max = value_max;
    o.mode = mode;
    traffic_backend *b = NULL;
    int rc = traffic_memory_open(&o, &b);
    if (rc != TRAFFIC_OK) return raise_status(NULL, rc);
    return store_wrap(b, 0);
}

/* open_sqlite(path, cleanup_interval, pool_size, timeout) -> Store (GIL released while opening) */
static PyObject *open_sqlite(PyObject *self, PyObject *args)
{
    (void)self;
    traffic_sqlite_options o = {0};
    PyObject *path;
    if (!PyArg_ParseTuple(args, "O&dId", PyUnicode_FSConverter, &path, &o.cleanup_interval, &o.pool_size, &o.timeout))
        return NULL;
    o.path = PyBytes_AS_STRING(path);
    traffic_backend *b = NULL;
    PyThreadState *ts = PyEval_SaveThread();
    int rc = traffic_sqlite_open(&o, &b);
    PyEval_RestoreThread(ts);
    Py_DECREF(path);
    if (rc != TRAFFIC_OK) return raise_status(NULL, rc);
    return store_wrap(b, 1);
}

/* open_redis(mode, hosts, path, master, user, password, db, prefix, timeout, pool_size) -> Store */
static PyObject *open_redis(PyObject *self, PyObject *args)
{
    (void)self;
    traffic_redis_options o = {0};
    int mode;
    if (!PyArg_ParseTuple(args, "izzzzzIzdI", &mode, &o.hosts, &o.path, &o.master, &o.user, &o.password, &o.db,
                          &o.prefix, &o.timeout, &o.pool_size))
        return NULL;
    o.mode = (traffic_redis_mode)mode;
    traffic_backend *b = NULL;
    PyThreadState *ts = PyEval_SaveThread();
    int rc = traffic_redis_open(&o, &b);
    PyEval_RestoreThread(ts);
    if (rc != TRAFFIC_OK) return raise_status(NULL, rc);
    return store_wrap(b, 1);
}

static PyObject *memory_unlink(PyObject *self, PyObject *args)
{
    (void)self;
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    int rc = traffic_memory_unlink(name);
    if (rc == TRAFFIC_ENOTFOUND) Py_RETURN_FALSE;
    if (rc != TRAFFIC_OK) return raise_status(NULL, rc);
    Py_RETURN_TRUE;
}

/* ---- the pure function, for custom backends ---------------------------------------------- */

/* limit_apply(rule, state, now_us, cost) -> (changed, new_state, Decision)
 * state is (a, b, c, log) with log a sequence of (t_us, n) pairs (traffic_limit_state in
 * backend.h); (0, 0, 0, ()) is the unused state. */
static PyObject *limit_apply(PyObject *self, PyObject *args)
{
    (void)self;
    Rule *rule;
    long long a, bb, c, now_us, cost;
    PyObject *log;
    if (!PyArg_ParseTuple(args, "O!(LLLO)LL", &RuleType, &rule, &a, &bb, &c, &log, &now_us, &cost)) return NULL;
    PyObject *seq = PySequence_Fast(log, "log must be a sequence of (t_us, n) pairs");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    size_t cap = (size_t)n > (size_t)rule->r.limit ? (size_t)n : (size_t)rule->r.limit;
    traffic_limit_entry *entries = PyMem_Calloc(cap ? cap : 1, sizeof *entries);
    if (!entries) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        /* (t_us, n) pairs: tuples, or lists as a JSON round trip gives them back */
        PyObject *pair = PySequence_Fast(PySequence_Fast_GET_ITEM(seq, i), "a log entry must be a (t_us, n) pair");
        long long t = -1, k = -1;
        int ok = pair && PySequence_Fast_GET_SIZE(pair) == 2;
        if (ok) {
            t = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(pair, 0));
            k = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(pair, 1));
            ok = !PyErr_Occurred();
        }
        Py_XDECREF(pair);
        if (!ok) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "a log entry must be a (t_us, n) pair");
            PyMem_Free(entries);
            Py_DECREF(seq);
            return NULL;
        }
        entries[i] = (traffic_limit_entry){t, k};
    }
    Py_DECREF(seq);
    traffic_limit_state st = {.a = a, .b = bb, .c = c, .log = entries, .nlog = (size_t)n, .log_cap = cap};
    traffic_decision d;
    int rc = cost < 0 ? TRAFFIC_EINVAL : traffic_limit_apply(&rule->r, &st, now_us, cost, &d);
    PyObject *out = NULL;
    if (rc < 0) {
        raise_einval(cost < 0 ? "cost must be >= 0" : "bad state or instant for traffic_limit_apply");
    } else {
        PyObject *newlog = PyTuple_New((Py_ssize_t)st.nlog);
        for (size_t i = 0; newlog && i < st.nlog; i++) {
            PyObject *pair = Py_BuildValue("(LL)", (long long)st.log[i].t_us, (long long)st.log[i].n);
            if (!pair)
                Py_CLEAR(newlog);
            else
                PyTuple_SET_ITEM(newlog, (Py_ssize_t)i, pair);
        }
        PyObject *dec = newlog ? decision_new(&d) : NULL;
        if (dec)
            out = Py_BuildValue("(O(LLLN)N)", rc ? Py_True : Py_False, (long long)st.a, (long long)st.b,
                                (long long)st.c, newlog, dec);
        else
            Py_XDECREF(newlog);
    }
    PyMem_Free(entries);
    return out;
}

/* ---- module ------------------------------------------------------------------------------ */

static PyObject *strerror_(PyObject *self, PyObject *arg)
{
    (void)self;
    long status = PyLong_AsLong(arg);
    if (status == -1 && PyErr_Occurred()) return NULL;
    return PyUnicode_FromString(traffic_strerror((int)status));
}

static PyObject *algorithm_name(PyObject *self, PyObject *arg)
{
    (void)self;
    long a = PyLong_AsLong(arg);
    if (a == -1 && PyErr_Occurred()) return NULL;
    const char *name = traffic_algorithm_name((traffic_algorithm)a);
    if (!name) Py_RETURN_NONE;
    return PyUnicode_FromString(name);
}

static PyMethodDef module_methods[] = {
    {"raw_headers", mod_raw_headers, METH_VARARGS,
     "raw_headers(allowed, limit, remaining, reset_after, retry_after, now) -> ASGI header pairs"},
    {"open_url", open_url, METH_VARARGS, "open_url(url, nogil) -> Store"},
    {"open_memory", open_memory, METH_VARARGS,
     "open_memory(name, max_size, cleanup_interval, key_max, value_max, mode) -> Store"},
    {"open_sqlite", open_sqlite, METH_VARARGS, "open_sqlite(path, cleanup_interval, pool_size, timeout) -> Store"},
    {"open_redis", open_redis, METH_VARARGS,
     "open_redis(mode, hosts, path, master, user, password, db, prefix, timeout, pool_size) -> Store"},
    {"memory_unlink", memory_unlink, METH_VARARGS, "memory_unlink(name) -> bool (False: there was none)"},
    {"limit_apply", limit_apply, METH_VARARGS, "limit_apply(rule, (a, b, c, log), now_us, cost)"},
    {"set_errors", set_errors, METH_VARARGS, "set_errors({status: class}, base)"},
    {"strerror", strerror_, METH_O, "strerror(status) -> str"},
    {"algorithm_name", algorithm_name, METH_O, "algorithm_name(n) -> str or None"},
    {NULL}};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, .m_name = "traffic._traffic",
                                        .m_doc = "libtraffic bindings; use the traffic package above it.", .m_size = -1,
                                        .m_methods = module_methods};

PyMODINIT_FUNC PyInit__traffic(void)
{
    if (PyType_Ready(&RuleType) < 0 || PyType_Ready(&DecisionType) < 0 || PyType_Ready(&StoreType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (!m) return NULL;
    static const struct {
        const char *name;
        long value;
    } constants[] = {
        {"OK", TRAFFIC_OK},
        {"ENOTFOUND", TRAFFIC_ENOTFOUND},
        {"EINVAL", TRAFFIC_EINVAL},
        {"ETOOBIG", TRAFFIC_ETOOBIG},
        {"EFULL", TRAFFIC_EFULL},
        {"ETYPE", TRAFFIC_ETYPE},
        {"EOVERFLOW", TRAFFIC_EOVERFLOW},
        {"EIO", TRAFFIC_EIO},
        {"EUNAVAILABLE", TRAFFIC_EUNAVAILABLE},
        {"ETIMEDOUT", TRAFFIC_ETIMEDOUT},
        {"ECORRUPT", TRAFFIC_ECORRUPT},
        {"ENOMEM", TRAFFIC_ENOMEM},
        {"ERANGE", TRAFFIC_ERANGE},
        {"EPERM", TRAFFIC_EPERM},
        {"ENOTSUP", TRAFFIC_ENOTSUP},
        {"KEY_MAX", TRAFFIC_KEY_MAX},
        {"WINDOW_LIMIT_MAX", TRAFFIC_WINDOW_LIMIT_MAX},
        {"SLIDING_WINDOW_LIMIT_MAX", TRAFFIC_SLIDING_WINDOW_LIMIT_MAX},
        {"MEMORY_VALUE_MAX_LIMIT", TRAFFIC_MEMORY_VALUE_MAX_LIMIT},
        {"SLIDING_WINDOW_COUNTER", TRAFFIC_SLIDING_WINDOW_COUNTER},
        {"FIXED_WINDOW", TRAFFIC_FIXED_WINDOW},
        {"SLIDING_WINDOW", TRAFFIC_SLIDING_WINDOW},
        {"TOKEN_BUCKET", TRAFFIC_TOKEN_BUCKET},
        {"LEAKY_BUCKET", TRAFFIC_LEAKY_BUCKET},
        {"REDIS_TCP", TRAFFIC_REDIS_TCP},
        {"REDIS_UNIX", TRAFFIC_REDIS_UNIX},
        {"REDIS_SENTINEL", TRAFFIC_REDIS_SENTINEL},
        {"REDIS_CLUSTER", TRAFFIC_REDIS_CLUSTER},
    };
    for (size_t i = 0; i < sizeof constants / sizeof constants[0]; i++)
        if (PyModule_AddIntConstant(m, constants[i].name, constants[i].value) < 0) goto fail;
    if (PyModule_AddObjectRef(m, "Rule", (PyObject *)&RuleType) < 0 ||
        PyModule_AddObjectRef(m, "Decision", (PyObject *)&DecisionType) < 0 ||
        PyModule_AddObjectRef(m, "Store", (PyObject *)&StoreType) < 0)
        goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
