"""A storage for the `limits` package (and flask-limiter, slowapi above it) on libtraffic.

Importing this module registers the URI schemes, so that a limits user switches by URI:

    import traffic.limits_storage            # registers traffic+memory:// and the others
    from limits import parse, storage, strategies

    limiter = strategies.FixedWindowRateLimiter(storage.storage_from_string("traffic+memory://myapp"))
    limiter.hit(parse("100/minute"), "api", client_ip)

    traffic+memory://            an anonymous table (create it before the server forks)
    traffic+memory://NAME        the named table /dev/shm/traffic.NAME
    traffic+sqlite://PATH        a SQLite file
    traffic+redis://..., traffic+redis+unix://..., traffic+redis+sentinel://...,
    traffic+redis+cluster://...  Redis (libtraffic's URL forms and parameters)

``import traffic`` registers them itself when limits was imported first (limits takes ~0.2 s
to import, so traffic does not import it unasked).

limits' fixed window is one ``traffic_increment`` per hit: atomic across every process and
host sharing the store, the key's TTL set when the increment creates it. The elastic-expiry
variant (a window moved on with every hit) and the moving window need more than a counter
and are not offered: limits reports them as unsupported by this storage.
"""

import time

from limits.storage import Storage

from . import _traffic
from .errors import TrafficError

PREFIX = "traffic+"


class TrafficStorage(Storage):
    """limits' Storage interface over one libtraffic handle."""

    STORAGE_SCHEME = [
        "traffic+memory",
        "traffic+sqlite",
        "traffic+redis",
        "traffic+redis+unix",
        "traffic+redis+sentinel",
        "traffic+redis+cluster",
    ]

    def __init__(self, uri, **options):
        super().__init__(uri, **options)
        if not uri.startswith(PREFIX):
            raise ValueError(f"{uri!r} is not a traffic+ URI")
        url = uri[len(PREFIX):]
        # limits calls storages synchronously: the GIL is released for the stores that may wait
        self._store = _traffic.open_url(url, not url.startswith("memory:"))

    def incr(self, key, expiry, elastic_expiry=False, amount=1):
        if elastic_expiry:
            raise NotImplementedError("traffic+ storages do not move a window's expiry on every hit")
        return self._store.increment(key, amount, float(expiry))

    def get(self, key):
        raw = self._store.get(key)
        return int(raw) if raw else 0

    def get_expiry(self, key):
        ttl = self._store.ttl(key)
        now = time.time()
        return int(now + ttl) if ttl is not None and ttl >= 0 else int(now)

    def check(self):
        try:
            self._store.exists("traffic:check")
        except TrafficError:
            return False
        return True

    def reset(self):
        self._store.clear()
        return None

    def clear(self, key):
        self._store.delete(key)

    def close(self):
        self._store.close()
