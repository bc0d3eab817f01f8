"""MemoryBackend: libtraffic's shared-memory table, one for every worker of a server.

``MemoryBackend()`` is an anonymous table: every process forked after it was created shares
it, so under ``gunicorn --preload`` (the app, and the table, made in the master before it
forks its workers) the limit holds for the whole server. ``MemoryBackend(name="myapp")`` is
the named table /dev/shm/traffic.myapp, which unrelated processes of the same user attach to
by name: the one to use when workers are spawned rather than forked (``uvicorn --workers``)
or when gunicorn does not preload the app.

The wrong choice is easy to make and silent in tests (one process behaves the same either
way), so an anonymous table created in a process that is itself a server's worker - spawned
by multiprocessing, or a gunicorn worker after the fork - warns
(PerProcessLimitWarning): each worker would get its own table and the limit would multiply by
the number of workers.

Calls run directly on the event loop's thread: a memory call is ~100 ns, lock-free, and never
waits for another process (an insert into a full table waits at most 200 ms for room).
"""

import json
import sys
import warnings

from .. import _traffic
from ._native import NativeBackend, decode_value, encode_value, ttl_seconds, with_fallback, with_params


class PerProcessLimitWarning(RuntimeWarning):
    """An anonymous MemoryBackend made in a worker: the limit will not be shared."""


def _frames():
    frame = sys._getframe(2)
    while frame is not None:
        yield frame
        frame = frame.f_back


def _worker_origin():
    """Why this process looks like one of several workers that do not share an anonymous table
    made here, or None. Read from the call stack, which runs the server's own code."""
    try:
        import multiprocessing

        spawned = multiprocessing.parent_process() is not None
    except Exception:  # pragma: no cover - multiprocessing unavailable
        spawned = False
    if spawned:
        # uvicorn runs each worker as subprocess_started(config, ...); with --reload alone
        # there is one worker, and its own table is the whole server's.
        config_type = getattr(sys.modules.get("uvicorn.config"), "Config", None)
        for frame in _frames():
            config = frame.f_locals.get("config")
            if config_type is not None and isinstance(config, config_type):
                if getattr(config, "workers", 1) <= 1:
                    return None
                return f"a worker of uvicorn --workers {config.workers} (each one a new process)"
        return "a process started by multiprocessing (a worker of a server that spawns them)"
    # A gunicorn worker: some frame up the stack runs a gunicorn Worker's method (init_process
    # loading the app without --preload, or run() serving a request). The master loading the
    # app with --preload runs the Arbiter's, and its children then inherit the table.
    workers = sys.modules.get("gunicorn.workers.base")
    if workers is not None:
        for frame in _frames():
            if isinstance(frame.f_locals.get("self"), workers.Worker):
                return "a gunicorn worker, after the fork (the app is not preloaded)"
    return None


class MemoryBackend(NativeBackend):
    """In-memory storage shared by every process of a server (libtraffic's memory backend).

    :param max_size: most keys kept; the least recently used go beyond it.
    :param cleanup_interval: seconds between passes of the background reaper.
    :param name: None for an anonymous table (shared with processes forked after this call);
        a name (1-200 of ``A-Za-z0-9._-``) for /dev/shm/traffic.NAME, shared by name.
    :param value_max: longest value in bytes (default 256; a new table only).
    :param key_max: longest key in bytes (default 250; a new table only).
    :param mode: permission bits of a new named table (default 0o600).
    :param fallback: the URL of a store that answers while this one is down (libtraffic's
        fallback=, with fallback_backoff and fallback_backoff_max; see RedisBackend.from_url).
        A memory table is never down, so this is for symmetry with the other backends.
    """

    _kind = "memory"

    def __init__(self, max_size=10000, cleanup_interval=60, *, name=None, value_max=None, key_max=None, mode=None,
                 fallback=None, fallback_backoff=None, fallback_backoff_max=None):
        super().__init__()
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, not {type(name).__name__}")
        if name == "":
            name = None
        self.name = name
        self.max_size = max_size
        self.cleanup_interval = cleanup_interval
        if name is None:
            origin = _worker_origin()
            if origin is not None:
                warnings.warn(
                    f"MemoryBackend() without a name was created in {origin}: this process gets a table of "
                    "its own, so every worker counts separately and the limit multiplies by the number of "
                    'workers. Use MemoryBackend(name="myapp") (or create the backend before the fork: '
                    "gunicorn --preload).",
                    PerProcessLimitWarning,
                    stacklevel=2,
                )
        if fallback is None and fallback_backoff is None and fallback_backoff_max is None:
            self._store = _traffic.open_memory(
                name, int(max_size), float(cleanup_interval), int(key_max or 0), int(value_max or 0), int(mode or 0)
            )
        else:
            url = with_params(f"memory://{name or ''}", [
                ("max_size", int(max_size)), ("cleanup_interval", float(cleanup_interval)),
                ("key_max", int(key_max) if key_max else None), ("value_max", int(value_max) if value_max else None),
                ("mode", f"{int(mode):o}" if mode else None)])
            # A memory primary answers by itself (it never fails with EUNAVAILABLE or
            # ETIMEDOUT), so its calls keep the GIL with or without a fallback.
            self._store = _traffic.open_url(with_fallback(url, fallback, fallback_backoff, fallback_backoff_max),
                                            False)
        # The limiter calls this directly, without a coroutine in between (see RateLimiter).
        self._limit_now = self._store.limit

    def _open(self):
        store = self._store
        if store is None:
            from ..errors import InvalidArgumentError

            raise InvalidArgumentError("the backend is closed", _traffic.EINVAL)
        return store

    # The seed's methods, each one direct library call on this thread.

    async def get(self, key):
        return decode_value(self._open().get(key))

    async def set(self, key, value, *, ttl):
        self._open().set(key, encode_value(value), ttl_seconds(ttl))

    async def delete(self, key):
        self._open().delete(key)

    async def exists(self, key):
        return self._open().exists(key)

    async def increment(self, key, amount=1, *, ttl=None):
        return self._open().increment(key, amount, ttl_seconds(ttl))

    async def ttl(self, key):
        return self._open().ttl(key)

    async def clear(self):
        self._open().clear()

    async def decide(self, key, rule, cost=1):
        return self._open().limit(key, rule, cost)

    async def start_cleanup(self):
        self._open().start_cleanup()

    async def stop_cleanup(self):
        self._open().stop_cleanup()

    def get_stats(self):
        """The table's statistics (keys, capacity, hits, evictions, decisions, ...) as a dict."""
        return json.loads(self._open().stats())

    async def close(self):
        """Closes this process's handle. A named table stays in /dev/shm (see unlink)."""
        store, self._store = self._store, None
        self._limit_now = None
        if store is not None:
            store.close()

    @staticmethod
    def unlink(name):
        """Removes the named table /dev/shm/traffic.NAME; False if there was none. Processes
        that have it open keep using it until they close it."""
        return _traffic.memory_unlink(name)

    def __repr__(self):
        where = f"name={self.name!r}" if self.name else "anonymous"
        return f"<MemoryBackend {where} max_size={self.max_size}>"
