"""Storages for the `limits` package (and flask-limiter, slowapi above it) on libtraffic.

A limits user switches by URI: importing ``traffic`` registers the schemes (at once if limits
was imported first, else when limits is imported), and

    storage_uri="traffic+memory://myapp"          # flask-limiter: Limiter(..., storage_uri=...)

makes every worker of the server count in one place.

    traffic+memory://            an anonymous table (create it before the server forks)
    traffic+memory://NAME        the named table /dev/shm/traffic.NAME
    traffic+sqlite:///PATH       a SQLite file
    traffic+redis://..., traffic+redis+unix://..., traffic+redis+sentinel://...,
    traffic+redis+cluster://...  Redis
    async+traffic+...://...      the same for limits.aio (async strategies)

The rest of the URI is libtraffic's URL as it is, parameters included (value_max, prefix,
timeout, fallback=URL, ...). Options passed to storage_from_string (flask-limiter's
RATELIMIT_STORAGE_OPTIONS) are refused: they belong in the URL.

Each storage operation is one atomic step inside the store, for every process and host that
shares it:

    incr                 (fixed window) one traffic_increment: the key's TTL is set when the
                         increment creates it, as limits' own storages do.
    incr elastic_expiry  one traffic_limit_at on a fixed_window state, decided at one constant
                         instant (ELASTIC_AT_US) with limit COUNT_MAX: the window never ends by
                         the algorithm's clock, every admitted hit counts and moves the key's
                         TTL to `expiry` from the store's real clock (traffic.h: the storage TTL
                         follows reset_after, which is `expiry` at that instant). So the
                         count goes on while hits keep coming less than `expiry` apart, and the
                         key expires `expiry` after the last one - limits' elastic expiry,
                         without a read-then-write. Two differences, both on the strict side:
                         the memory and SQLite backends move an expiry with up to an eighth of
                         slack (+2 ms) so that a busy key does not rewrite it at every hit, so
                         there the window ends between `expiry` and 9/8 `expiry` after the last
                         hit (exactly `expiry` on Redis); and the count stops at COUNT_MAX
                         (1048575), where a further hit is reported over it but no longer moves
                         the expiry.
    acquire_entry        one traffic_limit on the exact sliding window (TRAFFIC_SLIDING_WINDOW,
                         the log of admitted requests): limits' moving window.
    acquire_sliding_window_entry   one traffic_limit on the sliding window counter (limits >= 4.1).
    get, get_expiry, clear, reset, check    one traffic_get / ttl / delete / clear / exists.
    get_moving_window, get_sliding_window   read-only: a peek (traffic_limit with cost 0, which
                         changes nothing) and, where the count alone does not say where the
                         window starts, one read of the state; the two are matched (see there).

The moving window's bounds are the exact log's: a limit of at most 10000 per window on every
backend, and on the memory backend 8 + 8 * limit <= the table's value_max (default 256, so 31
requests) and a window of at most 12.7 days. A moving window beyond them raises
InvalidArgumentError at its first hit, naming the bound and the way out (for memory, a table
made with ?value_max=N, e.g. traffic+memory://myapp?value_max=8008 for limits up to 1000);
nothing is approximated silently. The fixed window and the sliding window counter have no
such bound below 1048575.

One key, one strategy: limits names a key after the limit, not the strategy, so a strategy
changed on a live store (SQLite, Redis, a named table) finds the old strategy's state there;
the first hit replaces it (TRAFFIC_ETYPE: delete, then decide again), and reads see it as 0.
"""

import asyncio
import concurrent.futures
import json
import math
import os
import time
import warnings

import limits.storage
from limits.storage import MovingWindowSupport, Storage

from . import _traffic
from .errors import InvalidArgumentError, TrafficError, WrongTypeError

PREFIX = "traffic+"
ASYNC_PREFIX = "async+"
SCHEMES = ("memory", "sqlite", "redis", "redis+unix", "redis+sentinel", "redis+cluster")

COUNT_MAX = _traffic.WINDOW_LIMIT_MAX  # elastic windows count up to this; peeks use it as limit
ELASTIC_AT_US = 1_000_000  # the instant of every elastic decision: a whole ms, so S = it exactly
MATCH_TRIES = 3  # reads of a state and a peek that disagree (a hit in between) are redone
RULES_MAX = 4096  # cached rules; limits' items are a few per application

_FIXED = _traffic.FIXED_WINDOW
_LOG = _traffic.SLIDING_WINDOW
_SWC = _traffic.SLIDING_WINDOW_COUNTER

# limits >= 4.1: the sliding window counter's storage interface, offered when it exists.
_SyncSWC = getattr(limits.storage, "SlidingWindowCounterSupport", None)
if _SyncSWC is None:
    from limits.storage import base as _sync_base

    _SyncSWC = getattr(_sync_base, "SlidingWindowCounterSupport", None)

try:  # limits.aio: limits >= 2.1
    import limits.aio.storage as _aio_storage
    from limits.aio.storage import MovingWindowSupport as AsyncMovingWindowSupport
    from limits.aio.storage import Storage as AsyncStorage

    _AsyncSWC = getattr(_aio_storage, "SlidingWindowCounterSupport", None)
    if _AsyncSWC is None:
        from limits.aio.storage import base as _aio_base

        _AsyncSWC = getattr(_aio_base, "SlidingWindowCounterSupport", None)
except ImportError:  # pragma: no cover - Debian's limits has it
    AsyncStorage = None


def _invalid(message):
    return InvalidArgumentError(message, _traffic.EINVAL)


class _Core:
    """The storage operations on one libtraffic handle, synchronous; TrafficStorage calls them
    directly, AsyncTrafficStorage from its thread pool (or directly for a memory table)."""

    def __init__(self, uri, options):
        if not uri.startswith(PREFIX):
            raise _invalid(f"{uri!r} is not a traffic+ URI")
        url = uri[len(PREFIX):]
        scheme = url.split("://", 1)[0].lower()
        if scheme not in SCHEMES:
            raise _invalid(f"{uri!r}: unknown scheme {PREFIX}{scheme} (want {', '.join(PREFIX + s for s in SCHEMES)})")
        if options:
            raise _invalid(
                f"{uri}: storage options {sorted(options)} are not taken by traffic+ storages; "
                "give libtraffic's URL parameters instead (e.g. ?timeout=0.5&pool_size=8)"
            )
        self.uri = uri
        # A memory call takes ~100 ns and never waits: it keeps the GIL. A store that can wait
        # (SQLite's locks, a server, or a memory table with a fallback over the network)
        # releases it for the duration of each call.
        self.nogil = scheme != "memory" or "fallback=" in url
        if scheme == "memory" and not url[len("memory://"):].split("?", 1)[0]:
            from .backends.memory import _worker_origin

            origin = _worker_origin()
            if origin is not None:
                from .backends.memory import PerProcessLimitWarning

                warnings.warn(
                    f"{uri!r} (an anonymous table) was opened in {origin}: this process gets a table of its "
                    "own, so every worker counts separately and the limit multiplies by the number of workers. "
                    "Use traffic+memory://NAME (or open it before the fork: gunicorn --preload).",
                    PerProcessLimitWarning,
                    stacklevel=4,
                )
        self.store = _traffic.open_url(url, self.nogil)
        self._rules = {}

    # ---- rules --------------------------------------------------------------------------------

    def rule(self, algorithm, limit, window):
        key = (algorithm, limit, window)
        r = self._rules.get(key)
        if r is None:
            if len(self._rules) >= RULES_MAX:
                self._rules.clear()
            r = self._rules[key] = _traffic.Rule(algorithm, limit, float(window))
        return r

    def log_rule(self, limit, expiry):
        try:
            return self.rule(_LOG, limit, expiry)
        except InvalidArgumentError as e:
            raise self._log_bound(limit, expiry, e) from None

    def _log_bound(self, limit, expiry, e):
        return _invalid(
            f"limits' moving window of {limit} per {expiry} s on {self.uri}: {e.message}. The moving window is "
            f"traffic's exact log of requests (at most {_traffic.SLIDING_WINDOW_LIMIT_MAX} per window; on memory "
            "8 + 8 x limit bytes of the table's value_max, at most "
            f"{_traffic.MEMORY_VALUE_MAX_LIMIT}); above that use the fixed-window strategy"
        )

    # ---- one decision, replacing another strategy's state ---------------------------------------

    def decide(self, key, rule, cost):
        try:
            return self.store.limit(key, rule, cost)
        except WrongTypeError:
            # Another strategy's state under this limit's key (limits names keys after the
            # limit): a strategy changed on a live store. Replace it.
            self.store.delete(key)
            return self.store.limit(key, rule, cost)

    def peek(self, key, rule):
        """The decision a cost-0 request gets (changes nothing); None when the key holds another
        strategy's state."""
        try:
            return self.store.limit(key, rule, 0)
        except WrongTypeError:
            return None

    # ---- limits' Storage ----------------------------------------------------------------------

    def incr(self, key, expiry, elastic_expiry=False, amount=1):
        if elastic_expiry:
            return self.incr_elastic(key, expiry, amount)
        try:
            return self.store.increment(key, amount, float(expiry))
        except WrongTypeError:
            self.store.delete(key)
            return self.store.increment(key, amount, float(expiry))

    def incr_elastic(self, key, expiry, amount):
        rule = self.rule(_FIXED, COUNT_MAX, expiry)
        try:
            d = self.store.limit_at(key, rule, amount, ELASTIC_AT_US)
        except WrongTypeError:
            self.store.delete(key)
            d = self.store.limit_at(key, rule, amount, ELASTIC_AT_US)
        count = COUNT_MAX - d.remaining
        # Denied only past COUNT_MAX: report the count the hit would have made, over any limit.
        return count if d.allowed else count + amount

    def get(self, key):
        raw = self.store.get(key)
        if raw is None:
            return 0
        if raw[:1] != b"{":
            try:
                return int(raw)  # a counter reads as its decimal text
            except ValueError:
                raise WrongTypeError(f"{key!r} holds a value that is not a limits counter", _traffic.ETYPE) from None
        state = json.loads(raw)
        algorithm = state.get("algorithm")
        if algorithm == "fixed_window":  # an elastic window
            return state["count"]
        if algorithm == "sliding_window":
            return sum(n for _, n in state["log"])
        return 0

    def get_expiry(self, key):
        now = time.time()
        ttl = self.store.ttl(key)
        return int(now + ttl) if ttl is not None and ttl > 0 else int(now)

    def check(self):
        try:
            self.store.exists("traffic:check")
        except TrafficError:
            return False
        return True

    def reset(self):
        self.store.clear()

    def clear(self, key):
        self.store.delete(key)

    # ---- the moving window: traffic's exact log ---------------------------------------------------

    def acquire_entry(self, key, limit, expiry, amount=1):
        rule = self.log_rule(limit, expiry)
        try:
            return self.decide(key, rule, amount).allowed
        except InvalidArgumentError as e:  # the memory table's bounds
            raise self._log_bound(limit, expiry, e) from None

    def get_moving_window(self, key, limit, expiry):
        """(start, count): the count of the log's live entries and the time (Unix seconds) of the
        oldest, which limits adds `expiry` to for the window's reset.

        The count is the peek's, one atomic read. The start: when the log is full, the peek's
        retry_after is exactly the oldest entry's expiry. Otherwise it is read from the state
        (traffic_get: the log as JSON, in the store's clock), placed in time by the peek that
        follows it: reset_after = t_last + W - now gives the store's now, and the entries live
        then must add up to the peek's count. A hit in between breaks that sum (the read lacks
        it), and the pair is read again; after MATCH_TRIES the newest entry stands for the
        oldest (a later reset time, never an earlier one)."""
        rule = self.log_rule(limit, expiry)
        w_us = round(expiry * 1e6)
        d = None
        for _ in range(MATCH_TRIES):
            raw = self.store.get(key)
            try:
                d = self.store.limit(key, rule, 0)
            except WrongTypeError:
                return int(time.time()), 0
            except InvalidArgumentError as e:
                raise self._log_bound(limit, expiry, e) from None
            now = time.time()
            count = limit - d.remaining
            if count <= 0:
                return int(now), 0
            if d.retry_after > 0:  # full: the oldest entry frees the first slot
                return int(now + d.retry_after - expiry), count
            if raw is None or raw[:1] != b"{":
                continue
            log = json.loads(raw).get("log") or []
            if not log:
                continue
            store_now = log[-1][0] + w_us - round(d.reset_after * 1e6)
            live = [(t, n) for t, n in log if t + w_us > store_now]
            if live and sum(n for _, n in live) == count:
                return int(now - (store_now - live[0][0]) / 1e6), count
        return int(now + d.reset_after - expiry), count

    # ---- the sliding window counter (limits >= 4.1) ---------------------------------------------

    def acquire_sliding_window_entry(self, key, limit, expiry, amount=1):
        return self.decide(key, self.rule(_SWC, limit, expiry), amount).allowed

    def get_sliding_window(self, key, expiry):
        """(previous count, its weight in seconds, current count, seconds to the end of the next
        window), as limits' SlidingWindowCounterRateLimiter reads them.

        The state (traffic_get: the window's previous and current counts as stored) and a peek
        under the limit COUNT_MAX: its reset_after is (i + 2) W - now when the stored window is
        the current one (C > 0), (i + 1) W - now when it has become the previous one, 0 when it
        is older - which tells both the counts' places and how far into its window the clock is.
        The peek's remaining, floor(L - est), must then equal what those counts give (the same
        IEEE operations as limit.c); a hit in between makes them differ and the pair is read
        again (MATCH_TRIES)."""
        w_us = round(expiry * 1e6)
        rule = self.rule(_SWC, COUNT_MAX, expiry)
        found = (0, 0.0, 0, 0.0)
        for _ in range(MATCH_TRIES):
            raw = self.store.get(key)
            if raw is None or raw[:1] != b"{":
                return 0, 0.0, 0, 0.0
            state = json.loads(raw)
            if state.get("algorithm") != "sliding_window_counter":
                return 0, 0.0, 0, 0.0
            d = self.peek(key, rule)
            if d is None or d.reset_after <= 0:
                return 0, 0.0, 0, 0.0
            reset_us = round(d.reset_after * 1e6)
            if reset_us > w_us:  # the stored window is the current one
                previous, current, left_us = state["previous"], state["current"], reset_us - w_us
            else:  # it has become the previous one
                previous, current, left_us = state["current"], 0, reset_us
            found = (previous, left_us / 1e6 if previous else 0.0, current, (left_us + w_us) / 1e6)
            est = previous * (float(left_us) / float(w_us)) + current
            if math.floor(COUNT_MAX - est) == d.remaining:
                break
        return found

    def clear_sliding_window(self, key, expiry):
        self.store.delete(key)

    def close(self):
        self.store.close()


def _bases(*classes):
    return tuple(c for c in classes if c is not None)


class TrafficStorage(*_bases(_Core, Storage, MovingWindowSupport, _SyncSWC)):
    """limits' Storage (fixed window, elastic expiry, moving window, and the sliding window
    counter on limits >= 4.1) over one libtraffic handle; see the module's documentation.
    The operations are _Core's own methods: no frame between limits and the library call."""

    STORAGE_SCHEME = [PREFIX + s for s in SCHEMES]

    def __init__(self, uri, wrap_exceptions=False, **options):
        Storage.__init__(self, uri)
        self.wrap_exceptions = wrap_exceptions  # limits >= 3.13: wrap errors in StorageError
        _Core.__init__(self, uri, options)

    @property
    def base_exceptions(self):
        return TrafficError

    def __repr__(self):
        return f"<TrafficStorage {self.uri!r}>"


if AsyncStorage is not None:

    class AsyncTrafficStorage(*_bases(AsyncStorage, AsyncMovingWindowSupport, _AsyncSWC)):
        """limits.aio's Storage over one libtraffic handle (async+traffic+...:// URIs).

        A memory table's calls run on the event loop's thread (~100 ns, never waiting); the
        others run in this storage's thread pool with the GIL released, so a store that waits
        (a SQLite lock, a slow or frozen Redis, up to its timeout) never stalls the loop. The
        pool is made on first use, and again in a child after fork()."""

        STORAGE_SCHEME = [ASYNC_PREFIX + PREFIX + s for s in SCHEMES]

        def __init__(self, uri, wrap_exceptions=False, **options):
            super().__init__(uri)
            self.wrap_exceptions = wrap_exceptions
            if not uri.startswith(ASYNC_PREFIX):
                raise _invalid(f"{uri!r} is not an async+traffic+ URI")
            self._core = _Core(uri[len(ASYNC_PREFIX):], options)
            self._pool = None
            self._pool_pid = None

        @property
        def base_exceptions(self):
            return TrafficError

        async def _call(self, name, *args):
            fn = getattr(self._core, name)
            if not self._core.nogil:
                return fn(*args)
            if self._pool is None or self._pool_pid != os.getpid():
                self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="traffic-limits")
                self._pool_pid = os.getpid()
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

        async def incr(self, key, expiry, elastic_expiry=False, amount=1):
            return await self._call("incr", key, expiry, elastic_expiry, amount)

        async def get(self, key):
            return await self._call("get", key)

        async def get_expiry(self, key):
            return await self._call("get_expiry", key)

        async def check(self):
            return await self._call("check")

        async def reset(self):
            return await self._call("reset")

        async def clear(self, key):
            return await self._call("clear", key)

        async def acquire_entry(self, key, limit, expiry, amount=1):
            return await self._call("acquire_entry", key, limit, expiry, amount)

        async def get_moving_window(self, key, limit, expiry):
            return await self._call("get_moving_window", key, limit, expiry)

        async def acquire_sliding_window_entry(self, key, limit, expiry, amount=1):
            return await self._call("acquire_sliding_window_entry", key, limit, expiry, amount)

        async def get_sliding_window(self, key, expiry):
            return await self._call("get_sliding_window", key, expiry)

        async def clear_sliding_window(self, key, expiry):
            return await self._call("clear_sliding_window", key, expiry)

        def close(self):
            """Closes the handle (it waits for calls in flight) and the thread pool."""
            self._core.close()
            if self._pool is not None:
                self._pool.shutdown(wait=False)
                self._pool = None

        def __repr__(self):
            return f"<AsyncTrafficStorage {self._core.uri!r}>"
