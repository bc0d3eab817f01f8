"""NativeBackend: the seed's Backend methods over one libtraffic handle (a _traffic.Store).

Values: a dict (or any JSON value) is stored as its compact JSON text; bytes are stored as
they are (to share keys with C programs). get() decodes JSON, so it returns the dict that was
set, an int for a counter (the library reads a counter as its decimal text, as Redis does),
a dict for a rate-limit state (traffic_get shows it as JSON), and the raw bytes of anything
that is not JSON.

Where calls run: a store whose calls can wait (SQLite's locks, a Redis server that is slow or
frozen, up to its timeout) runs each one in this backend's thread pool, the C call releasing
the GIL, so the event loop goes on serving other requests meanwhile. The memory backend's
calls take ~100 ns and never wait on another process, so MemoryBackend calls them directly.
The pool is made on first use and again in a child after fork() (a forked child has no
threads but the one that forked).
"""

import asyncio
import concurrent.futures
import json
import os
import urllib.parse

from .base import Backend

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_loads = json.loads

# Threads per backend for the calls that may wait. The library's own pool (pool_size
# connections per process) bounds how many run at once; the rest queue there, within the
# store's timeout, rather than in Python.
POOL_THREADS = 8


def encode_value(value):
    """The bytes stored for value: bytes as they are, anything else as compact JSON."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return value
    return _dumps(value).encode()


def decode_value(raw):
    """The value read back: JSON decoded, or the raw bytes when they are not JSON."""
    if raw is None:
        return None
    try:
        return _loads(raw)
    except ValueError:
        return raw


def quote(text):
    """text as a URL component: every byte but unreserved ones percent-encoded, as libtraffic
    decodes them (userinfo, paths, parameter values)."""
    return urllib.parse.quote(str(text), safe="")


def with_params(url, params):
    """url with `name=value` parameters added (values percent-encoded); None values left out."""
    pairs = [f"{name}={quote(value)}" for name, value in params if value is not None]
    if not pairs:
        return url
    return url + ("&" if "?" in url else "?") + "&".join(pairs)


def with_fallback(url, fallback=None, fallback_backoff=None, fallback_backoff_max=None):
    """url with libtraffic's fallback= parameters (traffic.h, "When the store is down"): a store
    that answers while this one is down, and the circuit breaker's back-off. The fallback's URL
    is percent-encoded whole, so its own parameters stay its own."""
    if fallback is None:
        if fallback_backoff is not None or fallback_backoff_max is not None:
            from .. import _traffic
            from ..errors import InvalidArgumentError

            raise InvalidArgumentError("fallback_backoff and fallback_backoff_max need a fallback URL", _traffic.EINVAL)
        return url
    if not isinstance(fallback, str):
        raise TypeError(f"fallback must be a store URL (str), not {type(fallback).__name__}")
    return with_params(url, [("fallback", fallback), ("fallback_backoff", fallback_backoff),
                             ("fallback_backoff_max", fallback_backoff_max)])


def ttl_seconds(ttl):
    """The seed passes ttl as seconds; None means no expiry (the library's 0)."""
    return 0.0 if ttl is None else float(ttl)


class NativeBackend(Backend):
    """A Backend whose state lives in a libtraffic store; calls run in a thread pool."""

    _store = None  # the _traffic.Store, once open
    _kind = "traffic"

    def __init__(self):
        self._pool = None
        self._pool_pid = None

    # ---- where calls run ---------------------------------------------------------------------

    def _executor(self):
        if self._pool is None or self._pool_pid != os.getpid():
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=POOL_THREADS, thread_name_prefix=f"traffic-{self._kind}"
            )
            self._pool_pid = os.getpid()
        return self._pool

    async def _open_store(self):
        """The store, opened on first use by subclasses that open lazily (SQLite)."""
        if self._store is None:
            from ..errors import InvalidArgumentError

            raise InvalidArgumentError("the backend is closed", -2)
        return self._store

    async def _run(self, method, *args):
        store = self._store if self._store is not None else await self._open_store()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor(), getattr(store, method), *args)

    # ---- the seed's methods ------------------------------------------------------------------

    async def get(self, key):
        return decode_value(await self._run("get", key))

    async def set(self, key, value, *, ttl):
        await self._run("set", key, encode_value(value), ttl_seconds(ttl))

    async def delete(self, key):
        await self._run("delete", key)

    async def exists(self, key):
        return await self._run("exists", key)

    async def increment(self, key, amount=1, *, ttl=None):
        """Adds amount to the counter key (created at 0 with ttl, None: no expiry)."""
        return await self._run("increment", key, amount, ttl_seconds(ttl))

    async def ttl(self, key):
        """Seconds left before key expires, -1.0 if it never does, None if absent."""
        return await self._run("ttl", key)

    async def clear(self):
        await self._run("clear")

    async def decide(self, key, rule, cost=1):
        """One rate-limit decision: one traffic_limit call inside the store."""
        return await self._run("limit", key, rule, cost)

    async def start_cleanup(self):
        """Starts this process's background reaper (the store elects one at a time)."""
        await self._run("start_cleanup")

    async def stop_cleanup(self):
        await self._run("stop_cleanup")

    async def close(self):
        store, self._store = self._store, None
        if store is not None:
            # close() waits for this handle's calls in flight: off the event loop too.
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor(), store.close)
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    async def _stats(self):
        return _loads(await self._run("stats"))

    @property
    def closed(self):
        return self._store is None or self._store.closed
