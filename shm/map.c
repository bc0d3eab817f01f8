/*
 * map.c — creating, attaching, validating and unlinking table mappings.
 *
 * A named table is published atomically: the creator builds it complete in a private file
 * under /dev/shm, then link()s it to /dev/shm/traffic.NAME. link() fails if the name exists,
 * so two creators racing leave exactly one table and nobody ever attaches to a half-built
 * one. Attaching validates magic, format version and a layout word computed from the struct
 * sizes and the geometry; any mismatch is SHM_ECORRUPT with a message, never a reset.
 *
 * The mapping is MAP_NORESERVE and never touched eagerly beyond the header and participant
 * records, so a table for ten million keys opens at once and its memory grows with the keys
 * used. The process-wide list of open tables exists for fork(): the child resets what only
 * made sense in the parent (reference counts held by the parent's other threads, the reaper
 * thread).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "layout.h"

#define SHM_DIR               "/dev/shm/"
#define SHM_PREFIX            "traffic."
#define SHM_MIN_CAPACITY      64
#define SHM_SMALL_TABLE_BYTES (64ull << 20) /* slots up to this size: 4 x headroom, sparse heads */

int64_t shm_coarse_margin_ms = 8;
unsigned shm_broken;

int shm_crash_point;

void shm_debug_set_broken(unsigned flags)
{
    shm_broken = flags;
}
int shm_blob_write_pause_ms;
void shm_debug_set_blob_write_pause(int ms)
{
    shm_blob_write_pause_ms = ms;
}

void shm_debug_set_crash_point(int point)
{
    shm_crash_point = point;
}
void shm_debug_crash_now(void)
{
    raise(SIGKILL);
}

static int fail(char *err, size_t errlen, int status, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t errlen, int status, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return status;
}

static int errno_status(int e)
{
    switch (e) {
    case EACCES:
    case EPERM:
    case EROFS: return SHM_EPERM;
    case ENOMEM:
    case ENOSPC:
    case EFBIG: return SHM_ENOMEM;
    case ENOENT: return SHM_ENOTFOUND;
    default: return SHM_EIO;
    }
}

int shm_name_valid(const char *name)
{
    size_t n = 0;
    for (; name[n]; n++) {
        char c = name[n];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-'))
            return 0;
    }
    return n >= 1 && n <= SHM_NAME_MAX;
}

/* ---- geometry --------------------------------------------------------------------------- */

struct geometry {
    uint64_t capacity, max_size, parts_off, touched_off, heads_off, bodies_off, map_size;
    uint32_t key_max, value_max, body_size, buf_off, buf_size, head_stride;
};

static uint64_t round_up(uint64_t x, uint64_t a)
{
    return (x + a - 1) / a * a;
}

static void geometry_compute(struct geometry *g, uint64_t max_size, uint32_t key_max, uint32_t value_max)
{
    g->max_size = max_size;
    g->key_max = key_max;
    g->value_max = value_max;
    /* The body: the key beyond the head's SHM_KEY_INLINE bytes, then two value buffers. */
    g->buf_off = key_max > SHM_KEY_INLINE ? (uint32_t)round_up(key_max - SHM_KEY_INLINE, 8) : 0;
    g->buf_size = (uint32_t)(sizeof(struct shm_vbuf) + round_up(value_max, 8));
    g->body_size = (uint32_t)round_up(g->buf_off + 2ull * g->buf_size, SHM_LINE);
    /* Capacity. At least 1.5 x max_size (load below 2/3, with room for tombstones awaiting
     * their epoch). Small tables get 4 x: probes then rarely pass other keys' slots, which is
     * what costs when several processes work at once (measured, 2 processes on distinct keys:
     * 1.57x the 1-process throughput at 49 % load, 1.72x at 24 %, 1.91x at 12 %; 1 process:
     * 31 -> 25 ns per increment) and space their heads as far apart as fits, up to
     * SHM_HEAD_STRIDE_SMALL (layout.h) — all within SHM_SMALL_TABLE_BYTES of slots. The limit
     * keeps the default table's slots (10000 keys: 65536 slots, 256-byte strides, 60 MiB) the
     * size of a container's default /dev/shm when it is named (traffic.h). The mapping is
     * touched lazily, so the headroom costs address space, and memory only where keys land. */
    static const uint32_t strides[] = {SHM_HEAD_STRIDE_SMALL, SHM_HEAD_STRIDE_SMALL / 2, SHM_HEAD_STRIDE_SMALL / 4};
    g->capacity = SHM_MIN_CAPACITY;
    while (g->capacity < 4 * max_size)
        g->capacity <<= 1;
    g->head_stride = 0;
    for (size_t i = 0; i < sizeof strides / sizeof strides[0] && !g->head_stride; i++)
        if (g->capacity * (strides[i] + (uint64_t)g->body_size) <= SHM_SMALL_TABLE_BYTES) g->head_stride = strides[i];
    if (!g->head_stride) {
        g->head_stride = SHM_HEAD_SIZE;
        g->capacity = SHM_MIN_CAPACITY;
        while (g->capacity < max_size + max_size / 2)
            g->capacity <<= 1;
    }
    g->parts_off = round_up(sizeof(struct shm_header), SHM_LINE);
    long page = sysconf(_SC_PAGESIZE);
    g->touched_off = round_up(g->parts_off + (uint64_t)SHM_MAX_PARTS * sizeof(struct shm_part), SHM_LINE);
    uint64_t chunks = (g->capacity * g->head_stride + (1ull << SHM_CHUNK_SHIFT) - 1) >> SHM_CHUNK_SHIFT;
    g->heads_off = round_up(g->touched_off + (chunks + 63) / 64 * 8, (uint64_t)page);
    g->bodies_off = round_up(g->heads_off + g->capacity * g->head_stride, (uint64_t)page);
    g->map_size = round_up(g->bodies_off + g->capacity * g->body_size, (uint64_t)page);
}

/* A word that changes whenever the binary layout of the mapping would: struct sizes (which
 * include pthread_mutex_t's), alignment and the geometry. FNV-1a over the numbers. */
static uint32_t layout_word(const struct geometry *g)
{
    uint64_t parts[] = {sizeof(struct shm_header),
                        sizeof(struct shm_part),
                        sizeof(struct shm_slot),
                        SHM_KEY_INLINE,
                        __builtin_offsetof(struct shm_slot, vseq),
                        __builtin_offsetof(struct shm_slot, key),
                        __builtin_offsetof(struct shm_slot, counter),
                        g->buf_off,
                        sizeof(struct shm_vbuf),
                        sizeof(pthread_mutex_t),
                        SHM_MAX_PARTS,
                        g->capacity,
                        g->max_size,
                        g->key_max,
                        g->value_max,
                        g->body_size,
                        g->head_stride,
                        g->heads_off,
                        g->bodies_off,
                        g->touched_off};
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        for (int b = 0; b < 8; b++)
            h = (h ^ (uint8_t)(parts[i] >> (8 * b))) * 16777619u;
    return h;
}

static int init_mapping(unsigned char *base, const struct geometry *g, uint64_t cleanup_ms, char *err, size_t errlen)
{
    struct shm_header *h = (struct shm_header *)base;
    h->format = SHM_FORMAT_VERSION;
    h->layout = layout_word(g);
    h->map_size = g->map_size;
    h->capacity = g->capacity;
    h->max_size = g->max_size;
    h->key_max = g->key_max;
    h->value_max = g->value_max;
    h->body_size = g->body_size;
    h->head_stride = g->head_stride;
    h->max_parts = SHM_MAX_PARTS;
    h->parts_off = g->parts_off;
    h->heads_off = g->heads_off;
    h->bodies_off = g->bodies_off;
    h->touched_off = g->touched_off;
    h->cleanup_ms = cleanup_ms;
    if (getrandom(&h->hash_seed, sizeof h->hash_seed, 0) != sizeof h->hash_seed)
        h->hash_seed = (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid();
    atomic_init(&h->epoch, 2); /* start above 0 so stamps never underflow */

    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    struct shm_part *parts = (struct shm_part *)(base + g->parts_off);
    for (uint32_t i = 0; i < SHM_MAX_PARTS; i++) {
        int rc = pthread_mutex_init(&parts[i].lock, &a);
        if (rc) {
            pthread_mutexattr_destroy(&a);
            return fail(err, errlen, SHM_EIO, "pthread_mutex_init of participant %u: %s", i, strerror(rc));
        }
    }
    pthread_mutexattr_destroy(&a);
    /* Published last: an attacher that sees the magic sees everything above. */
    atomic_thread_fence(memory_order_release);
    h->magic = SHM_MAGIC;
    return SHM_OK;
}

/* The immutable part of a header, read once: every check and the handle use this copy, so a
 * header changed after the checks cannot get past them. */
struct header_snap {
    struct geometry g;
    uint64_t cleanup_ms, hash_seed;
};

#define CLEANUP_MS_MAX (UINT64_C(1) << 40)

static int validate(const unsigned char *base, size_t file_size, struct header_snap *out, char *err, size_t errlen,
                    const char *what)
{
    struct shm_header h;
    memcpy(&h, base, __builtin_offsetof(struct shm_header, epoch)); /* the fields below epoch only */
    if (h.magic != SHM_MAGIC)
        return fail(err, errlen, SHM_ECORRUPT, "%s: bad magic %#llx (not a traffic table, or overwritten)", what,
                    (unsigned long long)h.magic);
    if (h.format != SHM_FORMAT_VERSION)
        return fail(err, errlen, SHM_ECORRUPT,
                    "%s: table format version %u%s, this library reads format %u (%s): a table is never "
                    "converted in place; stop its users, remove it (traffic_memory_unlink) and let it be created "
                    "anew",
                    what, h.format, h.format == 4 ? " (256-byte slot heads)" : h.format < 4 ? " (an older library)" : "",
                    SHM_FORMAT_VERSION, "128-byte slot heads");
    if (h.key_max < 1 || h.key_max > SHM_KEY_LIMIT || h.value_max < 1 || h.value_max > SHM_VALUE_LIMIT ||
        h.max_size < 1 || h.max_size > SHM_MAX_SIZE_LIMIT)
        return fail(err, errlen, SHM_ECORRUPT, "%s: geometry out of range", what);
    if (h.cleanup_ms < 1 || h.cleanup_ms > CLEANUP_MS_MAX)
        return fail(err, errlen, SHM_ECORRUPT, "%s: cleanup interval %llu ms out of range", what,
                    (unsigned long long)h.cleanup_ms);
    struct geometry g;
    geometry_compute(&g, h.max_size, h.key_max, h.value_max);
    if (h.layout != layout_word(&g) || h.capacity != g.capacity || h.body_size != g.body_size ||
        h.head_stride != g.head_stride || h.heads_off != g.heads_off || h.bodies_off != g.bodies_off ||
        h.parts_off != g.parts_off || h.touched_off != g.touched_off || h.map_size != g.map_size ||
        h.max_parts != SHM_MAX_PARTS)
        return fail(err, errlen, SHM_ECORRUPT, "%s: layout word %#x does not match this build's %#x", what, h.layout,
                    layout_word(&g));
    if (file_size && file_size != h.map_size)
        return fail(err, errlen, SHM_ECORRUPT, "%s: file is %zu bytes, header says %llu", what, file_size,
                    (unsigned long long)h.map_size);
    out->g = g;
    out->cleanup_ms = h.cleanup_ms;
    out->hash_seed = h.hash_seed;
    return SHM_OK;
}

/* ---- backing for the pages of a named table (layout.h) ------------------------------------- */

/* 0 or an errno. A file system without fallocate (EOPNOTSUPP) cannot be helped: 0. */
static int reserve_fd(int fd, uint64_t off, uint64_t len)
{
    for (;;) {
        if (fallocate(fd, 0, (off_t)off, (off_t)len) == 0) return 0;
        if (errno == EINTR) continue;
        return errno == EOPNOTSUPP ? 0 : errno;
    }
}

int shm_reserve(struct shm_table *t, uint64_t off, uint64_t len)
{
    if (t->fd < 0) return SHM_OK;
    int e = reserve_fd(t->fd, off, len);
    return e == 0 ? SHM_OK : e == ENOSPC || e == ENOMEM || e == EFBIG ? SHM_EFULL : SHM_EIO;
}

int shm_body_reserve(struct shm_table *t, struct shm_slot *s)
{
    if (t->fd < 0) return SHM_OK;
    uint64_t off = t->bodies_off + shm_slot_index(t, s) * (uint64_t)t->body_size;
    uint64_t first = (off - t->bodies_off) >> SHM_BODY_GRANULE_SHIFT;
    uint64_t last = (off + t->body_size - 1 - t->bodies_off) >> SHM_BODY_GRANULE_SHIFT;
    for (uint64_t g = first; g <= last; g++) {
        uint64_t bit = 1ull << (g % 64);
        /* This process's record only: fallocate is idempotent, so processes that reserve the
         * same granule each once cost a syscall each, never a wrong answer. */
        if (atomic_load_explicit(&t->body_reserved[g / 64], memory_order_acquire) & bit) continue;
        uint64_t start = t->bodies_off + (g << SHM_BODY_GRANULE_SHIFT), end = start + (1ull << SHM_BODY_GRANULE_SHIFT);
        if (end > t->map_size) end = t->map_size;
        int rc = shm_reserve(t, start, end - start);
        if (rc) return rc;
        atomic_fetch_or_explicit(&t->body_reserved[g / 64], bit, memory_order_release);
    }
    return SHM_OK;
}

/* ---- process-wide list of tables (fork handling) ----------------------------------------- */

static pthread_mutex_t tables_mu = PTHREAD_MUTEX_INITIALIZER;
static struct shm_table *tables;
static _Atomic uint64_t table_uids = 1;

void shm_tables_register(struct shm_table *t)
{
    pthread_mutex_lock(&tables_mu);
    t->next = tables;
    tables = t;
    pthread_mutex_unlock(&tables_mu);
}

void shm_tables_unregister(struct shm_table *t)
{
    pthread_mutex_lock(&tables_mu);
    for (struct shm_table **p = &tables; *p; p = &(*p)->next)
        if (*p == t) {
            *p = t->next;
            break;
        }
    pthread_mutex_unlock(&tables_mu);
}

static void atfork_prepare(void)
{
    pthread_mutex_lock(&tables_mu);
}
static void atfork_parent(void)
{
    pthread_mutex_unlock(&tables_mu);
}
static void atfork_child(void)
{
    /* Only the forking thread exists now. References that other threads held in the parent
     * are gone with them; the parent's reaper thread is not ours. */
    struct shm_table **p = &tables;
    while (*p) {
        struct shm_table *t = *p;
        if (atomic_load(&t->closed)) {
            *p = t->next;
            munmap(t->base, t->map_size);
            if (t->fd >= 0) close(t->fd);
            free(t->body_reserved);
            free(t);
            continue;
        }
        atomic_store(&t->refs, 1);
        pthread_mutex_init(&t->reaper_mu, NULL);
        t->reaper_owner_pid = 0;
        p = &t->next;
    }
    shm_part_atfork_child();
    pthread_mutex_unlock(&tables_mu);
}

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static void process_init(void)
{
    shm_part_process_init();
    struct timespec res;
    if (clock_getres(CLOCK_MONOTONIC_COARSE, &res) == 0)
        /* Four ticks: the coarse clock can lag more than one tick when the vCPU that keeps
         * time is descheduled; entries this close to expiry read the precise clock. */
        shm_coarse_margin_ms = 4 * ((int64_t)res.tv_sec * 1000 + (res.tv_nsec + 999999) / 1000000) + 1;
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

/* ---- open / close ------------------------------------------------------------------------ */

/* fd: the named table's file (duplicated here), or -1 for an anonymous table. */
static int make_handle(unsigned char *base, size_t size, const struct header_snap *hs, int fd, struct shm_table **out)
{
    struct shm_table *t = calloc(1, sizeof *t);
    if (!t) return SHM_ENOMEM;
    const struct geometry *g = &hs->g;
    t->fd = -1;
    if (fd >= 0) {
        uint64_t granules = ((g->map_size - g->bodies_off) >> SHM_BODY_GRANULE_SHIFT) + 1;
        t->body_reserved = calloc((granules + 63) / 64, sizeof *t->body_reserved);
        t->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
        if (!t->body_reserved || t->fd < 0) {
            if (t->fd >= 0) close(t->fd);
            free(t->body_reserved);
            free(t);
            return SHM_ENOMEM;
        }
    }
    t->heads_off = g->heads_off;
    t->bodies_off = g->bodies_off;
    t->base = base;
    t->map_size = size;
    t->h = (struct shm_header *)base;
    t->parts = (struct shm_part *)(base + g->parts_off);
    t->heads = base + g->heads_off;
    t->bodies = base + g->bodies_off;
    t->touched = (_Atomic uint64_t *)(base + g->touched_off);
    t->capacity = g->capacity;
    t->mask = g->capacity - 1;
    t->max_size = g->max_size;
    t->key_max = g->key_max;
    t->value_max = g->value_max;
    t->cleanup_ms = hs->cleanup_ms;
    t->hash_seed = hs->hash_seed;
    t->body_size = g->body_size;
    t->head_shift = (uint32_t)__builtin_ctz(g->head_stride);
    t->buf_off = g->buf_off;
    t->buf_size = g->buf_size;
    t->uid = atomic_fetch_add(&table_uids, 1);
    atomic_init(&t->refs, 1);
    pthread_mutex_init(&t->reaper_mu, NULL);
    shm_huge_consider(t); /* an existing table may be dense already (huge.c) */
    shm_tables_register(t);
    *out = t;
    return SHM_OK;
}

static int check_params(const shm_params *p, char *err, size_t errlen)
{
    if (p->max_size > SHM_MAX_SIZE_LIMIT)
        return fail(err, errlen, SHM_EINVAL, "max_size %llu is over %llu", (unsigned long long)p->max_size,
                    (unsigned long long)SHM_MAX_SIZE_LIMIT);
    if (p->key_max > SHM_KEY_LIMIT)
        return fail(err, errlen, SHM_EINVAL, "key_max %u is over %u", p->key_max, SHM_KEY_LIMIT);
    if (p->value_max > SHM_VALUE_LIMIT)
        return fail(err, errlen, SHM_EINVAL, "value_max %u is over %u", p->value_max, SHM_VALUE_LIMIT);
    if (p->mode & ~0777u) return fail(err, errlen, SHM_EINVAL, "mode %o has bits beyond 0777", p->mode);
    if (p->name && !shm_name_valid(p->name))
        return fail(err, errlen, SHM_EINVAL, "table name \"%.210s\" is not 1-%d of [A-Za-z0-9._-]", p->name,
                    SHM_NAME_MAX);
    return SHM_OK;
}

static void params_geometry(const shm_params *p, struct geometry *g)
{
    geometry_compute(g, p->max_size ? p->max_size : SHM_DEFAULT_MAX_SIZE, p->key_max ? p->key_max : SHM_DEFAULT_KEY_MAX,
                     p->value_max ? p->value_max : SHM_DEFAULT_VALUE_MAX);
}

static int open_anonymous(const shm_params *p, struct shm_table **out, char *err, size_t errlen)
{
    struct geometry g;
    params_geometry(p, &g);
    void *base = mmap(NULL, g.map_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED)
        return fail(err, errlen, errno_status(errno), "mmap of %llu bytes: %s", (unsigned long long)g.map_size,
                    strerror(errno));
    struct header_snap hs;
    int rc = init_mapping(base, &g, p->cleanup_ms ? p->cleanup_ms : SHM_DEFAULT_CLEANUP_MS, err, errlen);
    if (rc == SHM_OK) rc = validate(base, 0, &hs, err, errlen, "the new table");
    if (rc == SHM_OK) rc = make_handle(base, g.map_size, &hs, -1, out);
    if (rc) munmap(base, g.map_size);
    return rc;
}

/* Maps an existing table file and validates it against the build and the requested
 * geometry (fields left 0 in p accept whatever the table has). */
static int attach_fd(int fd, const shm_params *p, const char *path, struct shm_table **out, char *err, size_t errlen)
{
    struct stat st;
    if (fstat(fd, &st) < 0) return fail(err, errlen, SHM_EIO, "fstat %s: %s", path, strerror(errno));
    if ((size_t)st.st_size < sizeof(struct shm_header))
        return fail(err, errlen, SHM_ECORRUPT, "%s: %lld bytes is too small for a traffic table", path,
                    (long long)st.st_size);
    unsigned char *base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
    if (base == MAP_FAILED) return fail(err, errlen, errno_status(errno), "mmap %s: %s", path, strerror(errno));
    struct header_snap hs;
    int rc = validate(base, (size_t)st.st_size, &hs, err, errlen, path);
    if (rc == SHM_OK && ((p->max_size && p->max_size != hs.g.max_size) || (p->key_max && p->key_max != hs.g.key_max) ||
                         (p->value_max && p->value_max != hs.g.value_max)))
        rc = fail(err, errlen, SHM_EINVAL,
                  "%s exists with max_size=%llu key_max=%u value_max=%u, which differs from the requested geometry",
                  path, (unsigned long long)hs.g.max_size, hs.g.key_max, hs.g.value_max);
    if (rc == SHM_OK) rc = make_handle(base, (size_t)st.st_size, &hs, fd, out);
    if (rc) munmap(base, (size_t)st.st_size);
    return rc;
}

static int create_named(const shm_params *p, const char *path, struct shm_table **out, char *err, size_t errlen)
{
    struct geometry g;
    params_geometry(p, &g);
    char tmp[sizeof SHM_DIR + SHM_NAME_MAX + 64];
    uint64_t r = 0;
    (void)!getrandom(&r, sizeof r, 0);
    snprintf(tmp, sizeof tmp, SHM_DIR ".traffic-new.%d.%llx", (int)getpid(), (unsigned long long)r);
    mode_t mode = p->mode ? p->mode : 0600;
    int fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0) return fail(err, errlen, errno_status(errno), "create %s: %s", tmp, strerror(errno));
    int rc = SHM_OK;
    void *base = MAP_FAILED;
    if (fchmod(fd, mode) < 0 || ftruncate(fd, (off_t)g.map_size) < 0)
        rc = fail(err, errlen, errno_status(errno), "size %s to %llu bytes: %s", tmp, (unsigned long long)g.map_size,
                  strerror(errno));
    /* The front (header, participants, bitmap) is written now: give it backing first, so that
     * a full /dev/shm is an error here rather than a SIGBUS (layout.h). */
    if (rc == SHM_OK && (errno = reserve_fd(fd, 0, g.heads_off)) != 0)
        rc = fail(err, errlen, errno == ENOSPC ? SHM_EFULL : errno_status(errno),
                  "reserve the first %llu bytes of %s: %s", (unsigned long long)g.heads_off, tmp, strerror(errno));
    if (rc == SHM_OK) {
        base = mmap(NULL, g.map_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
        if (base == MAP_FAILED) rc = fail(err, errlen, errno_status(errno), "mmap %s: %s", tmp, strerror(errno));
    }
    if (rc == SHM_OK) rc = init_mapping(base, &g, p->cleanup_ms ? p->cleanup_ms : SHM_DEFAULT_CLEANUP_MS, err, errlen);
    if (rc == SHM_OK && link(tmp, path) < 0) {
        rc = errno == EEXIST ? 1 /* lost the race: attach to the winner's */
                             : fail(err, errlen, errno_status(errno), "link %s: %s", path, strerror(errno));
    }
    unlink(tmp);
    struct header_snap hs;
    if (rc == SHM_OK) rc = validate(base, 0, &hs, err, errlen, "the new table");
    if (rc == SHM_OK) rc = make_handle(base, g.map_size, &hs, fd, out);
    close(fd);
    if (rc != SHM_OK && base != MAP_FAILED) munmap(base, g.map_size);
    return rc;
}

int shm_open_table(const shm_params *p, shm_table **out, char *err, size_t errlen)
{
    pthread_once(&init_once, process_init);
    if (err && errlen) err[0] = '\0';
    int rc = check_params(p, err, errlen);
    if (rc) return rc;
    if (!p->name) return open_anonymous(p, out, err, errlen);

    char path[sizeof SHM_DIR + sizeof SHM_PREFIX + SHM_NAME_MAX];
    snprintf(path, sizeof path, SHM_DIR SHM_PREFIX "%s", p->name);
    for (int attempt = 0; attempt < 8; attempt++) {
        int fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
        if (fd >= 0) {
            rc = attach_fd(fd, p, path, out, err, errlen);
            close(fd);
            return rc;
        }
        if (errno != ENOENT) return fail(err, errlen, errno_status(errno), "open %s: %s", path, strerror(errno));
        rc = create_named(p, path, out, err, errlen);
        if (rc != 1) return rc; /* created, or failed; 1: someone else created it first */
    }
    return fail(err, errlen, SHM_EIO, "%s keeps appearing and vanishing", path);
}

int shm_unlink_table(const char *name, char *err, size_t errlen)
{
    if (!name || !shm_name_valid(name))
        return fail(err, errlen, SHM_EINVAL, "table name \"%.210s\" is not 1-%d of [A-Za-z0-9._-]",
                    name ? name : "(null)", SHM_NAME_MAX);
    char path[sizeof SHM_DIR + sizeof SHM_PREFIX + SHM_NAME_MAX];
    snprintf(path, sizeof path, SHM_DIR SHM_PREFIX "%s", name);
    if (unlink(path) < 0) return fail(err, errlen, errno_status(errno), "unlink %s: %s", path, strerror(errno));
    return SHM_OK;
}

void shm_table_unref(struct shm_table *t)
{
    if (atomic_fetch_sub(&t->refs, 1) != 1) return;
    shm_tables_unregister(t);
    munmap(t->base, t->map_size);
    if (t->fd >= 0) close(t->fd);
    free(t->body_reserved);
    pthread_mutex_destroy(&t->reaper_mu);
    free(t);
}

uint32_t shm_key_max(const shm_table *t)
{
    return t->key_max;
}
uint32_t shm_value_max(const shm_table *t)
{
    return t->value_max;
}
