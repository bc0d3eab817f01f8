"""Backend: the abstract base of every store, and what a custom backend inherits.

The seed's interface, unchanged: async get / set(key, value, *, ttl) / delete / exists /
increment(key, amount=1) / clear / close, and ``async with``. Values are state dicts.

Above the seed's methods sits ``decide(key, rule, cost)``, the one call RateLimiter makes per
request. The built-in backends answer it with one ``traffic_limit`` call inside their store
(atomic across every process that shares it). A subclass that only implements the seed's
methods gets the default below: the algorithm's state kept as a dict through its own get and
set, decided by the library's own arithmetic (``traffic_limit_apply``), under a lock that
makes decisions atomic within this process - not across processes, which only the store
itself can do: override ``decide`` for that.
"""

import abc
import asyncio
import math
import time
import weakref

from .. import _traffic
from ..errors import WrongTypeError


def _algorithm_name(rule):
    return _traffic.algorithm_name(rule.algorithm)


class Backend(abc.ABC):
    """Abstract base class for rate limit storage backends."""

    @abc.abstractmethod
    async def get(self, key):
        """The stored state dict for key, or None if absent or expired."""

    @abc.abstractmethod
    async def set(self, key, value, *, ttl):
        """Stores value (a dict) under key for ttl seconds."""

    @abc.abstractmethod
    async def delete(self, key):
        """Removes key (no error if absent)."""

    @abc.abstractmethod
    async def exists(self, key):
        """True if key is present and not expired."""

    @abc.abstractmethod
    async def increment(self, key, amount=1):
        """Atomically adds amount to the counter key and returns the new value."""

    @abc.abstractmethod
    async def clear(self):
        """Removes every key of this store."""

    @abc.abstractmethod
    async def close(self):
        """Releases the store's resources."""

    async def __aenter__(self):
        return self

    async def __aexit__(self, exc_type, exc, tb):
        await self.close()

    # ---- the limiter's one call --------------------------------------------------------------

    async def decide(self, key, rule, cost=1):
        """One rate-limit decision for key under rule (a traffic.Rule): a traffic.Decision.

        This default keeps the state as ``{"algorithm": ..., "a": ..., "b": ..., "c": ...,
        "log": [[t_us, n], ...]}`` through get and set, on the wall clock in microseconds.
        """
        # One lock per event loop (an asyncio.Lock belongs to the loop it first waits in, and a
        # backend may outlive a loop: tests, or asyncio.run called twice).
        locks = self.__dict__.get("_traffic_decide_locks")
        if locks is None:
            locks = self.__dict__["_traffic_decide_locks"] = weakref.WeakKeyDictionary()
        loop = asyncio.get_running_loop()
        lock = locks.get(loop)
        if lock is None:
            lock = locks[loop] = asyncio.Lock()
        async with lock:
            name = _algorithm_name(rule)
            stored = await self.get(key)
            if stored is None:
                state = (0, 0, 0, ())
            elif isinstance(stored, dict) and stored.get("algorithm") == name:
                state = (int(stored["a"]), int(stored["b"]), int(stored["c"]), stored.get("log") or ())
            else:
                raise WrongTypeError(f"key {key!r} holds something other than a {name} state", _traffic.ETYPE)
            now_us = time.time_ns() // 1000
            changed, (a, b, c, log), decision = _traffic.limit_apply(rule, state, now_us, cost)
            if changed:
                # The state is useless once the key is back to its unused state: expire it then.
                ttl = max(math.ceil(decision.reset_after * 1000) / 1000, 0.001)
                value = {"algorithm": name, "a": a, "b": b, "c": c}
                if log:
                    value["log"] = [list(e) for e in log]
                await self.set(key, value, ttl=ttl)
            return decision
