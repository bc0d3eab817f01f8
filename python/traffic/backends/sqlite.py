"""SQLiteBackend: one SQLite file (WAL) shared by the processes of one host, kept across restarts.

``await initialize()`` opens the file (creating it and its schema); a call made before it
opens the file itself. Every call runs in a thread pool with the GIL released, so a writer
waiting for another process's lock (up to ``timeout``, 5 s by default) never stalls the event
loop. The library keeps a pool of connections per process and opens new ones in a child after
fork(), so one backend object works in every forked worker.
"""

import asyncio
import os
import urllib.parse

from .. import _traffic
from ..errors import InvalidArgumentError
from ._native import NativeBackend, with_fallback, with_params


class SQLiteBackend(NativeBackend):
    """SQLite storage backend for persistent rate limiting.

    :param db_path: path to the database file (str or os.PathLike); its directory must exist.
    :param cleanup_interval: seconds between sweeps of expired rows (one process at a time).
    :param pool_size: connections per process (1-64, default 4).
    :param timeout: seconds a call waits for other writers before StoreTimeoutError (default 5).
    :param fallback: the URL of a store that answers while this one times out (libtraffic's
        fallback=, e.g. "memory://myapp-fallback"), with fallback_backoff and fallback_backoff_max
        (see RedisBackend.from_url).
    """

    _kind = "sqlite"

    def __init__(self, db_path, cleanup_interval=300, *, pool_size=4, timeout=5.0, fallback=None,
                 fallback_backoff=None, fallback_backoff_max=None):
        super().__init__()
        self.db_path = os.fspath(db_path)
        self.cleanup_interval = cleanup_interval
        self.pool_size = pool_size
        self.timeout = timeout
        self._closed = False
        self._opening = None
        self._url = None
        if fallback is not None or fallback_backoff is not None or fallback_backoff_max is not None:
            url = with_params("sqlite://" + urllib.parse.quote(self.db_path, safe="/"), [
                ("cleanup_interval", float(cleanup_interval)), ("pool_size", int(pool_size)),
                ("timeout", float(timeout))])
            self._url = with_fallback(url, fallback, fallback_backoff, fallback_backoff_max)
        self.fallback = fallback

    async def initialize(self):
        """Opens the database, creating the file and its schema if absent (WAL mode)."""
        await self._open_store()

    async def _open_store(self):
        if self._closed:
            raise InvalidArgumentError("the backend is closed", _traffic.EINVAL)
        if self._store is None:
            # One open at a time, however many requests arrive before it finishes.
            if self._opening is None or self._opening[0] != os.getpid():
                self._opening = (os.getpid(), asyncio.Lock())
            async with self._opening[1]:
                if self._store is None:
                    loop = asyncio.get_running_loop()
                    if self._url is not None:
                        self._store = await loop.run_in_executor(self._executor(), _traffic.open_url, self._url, True)
                    else:
                        self._store = await loop.run_in_executor(
                            self._executor(),
                            _traffic.open_sqlite,
                            self.db_path,
                            float(self.cleanup_interval),
                            int(self.pool_size),
                            float(self.timeout),
                        )
        return self._store

    async def get_stats(self):
        """The database's statistics (rows, expired_pending, file and WAL size, ...) as a dict."""
        return await self._stats()

    async def close(self):
        self._closed = True
        await super().close()

    def __repr__(self):
        return f"<SQLiteBackend {self.db_path!r}>"
