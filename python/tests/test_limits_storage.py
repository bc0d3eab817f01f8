"""traffic.limits_storage: the `limits` package's storage interface on libtraffic, by URI.

Real stores only: a named memory table, a SQLite file, a redis-server started on a free
loopback port. The strategies' proof: 4 forked processes hit one 100/hour item 60 times each
and exactly 100 pass, for each strategy on each store; the same on limits' own memory://
(per process) is printed, not asserted.
"""

import asyncio
import math
import os
import subprocess
import sys
import time

import pytest

limits = pytest.importorskip("limits")  # run_pytest.py has checked it is installed

import traffic  # noqa: E402  (registers the traffic+ schemes: limits is imported above)
from conftest import unique  # noqa: E402
from limits import parse  # noqa: E402
from limits.aio import strategies as aio_strategies  # noqa: E402
from limits.storage import storage_from_string  # noqa: E402
from limits.strategies import (  # noqa: E402
    FixedWindowElasticExpiryRateLimiter,
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
)
from traffic.limits_storage import COUNT_MAX, AsyncTrafficStorage, TrafficStorage  # noqa: E402

STORES = ["memory", "sqlite", "redis"]
STRATEGIES = [FixedWindowRateLimiter, FixedWindowElasticExpiryRateLimiter, MovingWindowRateLimiter]
WORKERS, HITS, LIMIT = 4, 60, 100


@pytest.fixture
def store_uri(request, tmp_path):
    """A traffic+ URI of each store, with room in the memory table for logs of 100 requests."""

    def make(kind):
        if kind == "memory":
            name = unique("pytest.")
            request.addfinalizer(lambda: traffic.MemoryBackend.unlink(name))
            return f"traffic+memory://{name}?value_max=1024"
        if kind == "sqlite":
            return f"traffic+sqlite://{tmp_path}/limits.db"
        server = request.getfixturevalue("redis_server")
        return f"traffic+redis://127.0.0.1:{server.port}/0?prefix={unique('lim')}:"

    return make


@pytest.fixture(params=STORES)
def storage(request, store_uri):
    s = storage_from_string(store_uri(request.param))
    s.kind = request.param
    yield s
    s.close()


def test_registered_schemes():
    for scheme in ("memory", "sqlite", "redis", "redis+unix", "redis+sentinel", "redis+cluster"):
        assert limits.storage.registry.SCHEMES[f"traffic+{scheme}"] is TrafficStorage
        assert limits.storage.registry.SCHEMES[f"async+traffic+{scheme}"] is AsyncTrafficStorage


@pytest.mark.parametrize("first", ["traffic", "limits"])
def test_registered_whichever_is_imported_first(first):
    """import traffic does not import limits (0.2 s); the schemes are there once both are."""
    second = "limits" if first == "traffic" else "traffic"
    code = (
        f"import sys, {first}\n"
        "print('limits' in sys.modules)\n"
        f"import {second}\n"
        "from limits.storage import storage_from_string\n"
        "s = storage_from_string('traffic+memory://')\n"
        "print(type(s).__name__, s.incr('k', 60), s.incr('k', 60))\n"
        "import limits.util\n"  # the package's resources still load through its own loader
        "print(len(limits.util.get_package_data('resources/redis/lua_scripts/incr_expire.lua')) > 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == [str(first == "limits"), "TrafficStorage 1 2", "True"]


def test_every_method(storage):
    s = storage
    now = time.time()
    assert s.check()
    # the fixed window: a counter whose TTL is set when it is created
    assert s.incr("fw", 60) == 1
    assert s.incr("fw", 60, amount=3) == 4
    assert s.incr("fw", 30, False, 2) == 6  # a later expiry does not move it
    assert s.get("fw") == 6
    assert now + 58 <= s.get_expiry("fw") <= time.time() + 60
    s.clear("fw")
    assert s.get("fw") == 0
    assert s.get_expiry("fw") == int(time.time()) or s.get_expiry("fw") == int(time.time()) - 1
    # elastic expiry: every hit counts and moves the expiry
    assert s.incr("el", 60, elastic_expiry=True) == 1
    assert s.incr("el", 60, elastic_expiry=True, amount=4) == 5
    assert s.get("el") == 5
    assert now + 58 <= s.get_expiry("el") <= time.time() + 60 * 9 / 8 + 1
    # the moving window: the exact log
    assert [s.acquire_entry("mw", 3, 60) for _ in range(4)] == [True, True, True, False]
    start, count = s.get_moving_window("mw", 3, 60)
    assert count == 3 and int(now) - 1 <= start <= time.time()
    assert s.acquire_entry("mw2", 5, 60, amount=2) and not s.acquire_entry("mw2", 5, 60, amount=4)
    start, count = s.get_moving_window("mw2", 5, 60)  # not full: the start is read from the log
    assert count == 2 and int(now) - 1 <= start <= time.time()
    assert s.get_moving_window("absent", 5, 60)[1] == 0
    assert s.get("mw") == 3
    # the sliding window counter (limits >= 4.1's interface)
    assert [s.acquire_sliding_window_entry("sw", 4, 3600) for _ in range(5)] == [True] * 4 + [False]
    previous, previous_ttl, current, current_ttl = s.get_sliding_window("sw", 3600)
    assert current == 4 and previous * previous_ttl / 3600 + current == 4
    assert 3600 < current_ttl <= 7200
    s.clear_sliding_window("sw", 3600)
    assert s.get_sliding_window("sw", 3600) == (0, 0.0, 0, 0.0)
    # reset: every limit of the store
    assert s.reset() is None
    assert (s.get("el"), s.get("mw"), s.get_moving_window("mw", 3, 60)[1]) == (0, 0, 0)


def test_elastic_and_moving_windows_in_time(store_uri):
    """The windows' ends, on the stores' own clocks: an elastic window lives while hits come
    less than its expiry apart and ends after a pause; a moving window frees each entry
    `expiry` after it was admitted. One timeline for the three stores."""
    stores = [storage_from_string(store_uri(kind)) for kind in STORES]
    t0 = time.time()

    def at(t):
        time.sleep(max(0.0, t0 + t - time.time()))

    fixed = [s.incr("fixed", 2) for s in stores]
    elastic = [[s.incr("el", 2, True)] for s in stores]
    moving = [[s.acquire_entry("mw", 3, 2), s.acquire_entry("mw", 3, 2)] for s in stores]
    at(1.2)
    for s, e, m in zip(stores, elastic, moving):
        e.append(s.incr("el", 2, True))
        m.append(s.acquire_entry("mw", 3, 2))
        m.append(s.acquire_entry("mw", 3, 2))  # full: the two of t0 and this one
        start, count = s.get_moving_window("mw", 3, 2)
        assert count == 3 and int(t0) <= start <= t0 + 0.5  # the oldest: admitted at t0
    at(2.4)
    for s, e, m in zip(stores, elastic, moving):
        e.append(s.incr("el", 2, True))  # 1.2 s after the last hit: the same window
        fixed.append(s.incr("fixed", 2))  # the fixed window of t0 ended at 2.0
        start, count = s.get_moving_window("mw", 3, 2)  # t0's two entries have left
        assert count == 1 and int(t0 + 1.2) <= start <= t0 + 1.7
        m.append(s.acquire_entry("mw", 3, 2))
    at(2.4 + 2 * 9 / 8 + 0.45)  # beyond 9/8 of the expiry after the last elastic hit
    for s, e in zip(stores, elastic):
        e.append(s.incr("el", 2, True))
    assert fixed == [1] * 6
    assert elastic == [[1, 2, 3, 1]] * 3
    assert moving == [[True, True, True, False, True]] * 3
    for s in stores:
        s.close()


def _hit_in_children(limiter, item, key, workers=WORKERS, hits=HITS):
    """workers forked processes, released together, each hitting `hits` times: the passes."""
    r, w = os.pipe()
    pids = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            code = 255
            try:
                os.close(w)
                os.read(r, 1)  # wait for the start
                code = sum(limiter.hit(item, key) for _ in range(hits))
            finally:
                os._exit(code)
        pids.append(pid)
    os.close(r)
    os.write(w, b"x" * workers)
    os.close(w)
    codes = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids]
    assert all(0 <= c <= hits for c in codes), codes
    return sum(codes)


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("kind", STORES)
def test_forked_processes_share_one_limit(store_uri, kind, strategy):
    storage = storage_from_string(store_uri(kind))
    limiter = strategy(storage)
    item = parse(f"{LIMIT}/hour")
    passed = _hit_in_children(limiter, item, "shared")
    assert passed == LIMIT  # 240 hits from 4 processes, one limit
    reset, remaining = limiter.get_window_stats(item, "shared")
    assert remaining == 0
    assert time.time() + 3500 <= reset <= time.time() + 3600 * 9 / 8 + 1
    assert not limiter.test(item, "shared")
    storage.close()


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda c: c.__name__)
def test_limits_own_memory_is_per_process(strategy):
    """What users get today: limits' memory:// is copied into each forked process. Recorded."""
    storage = storage_from_string("memory://")
    passed = _hit_in_children(strategy(storage), parse(f"{LIMIT}/hour"), "shared")
    print(f"\nlimits' memory:// with {strategy.__name__}: {passed} of {WORKERS * HITS} passed "
          f"under one {LIMIT}/hour limit in {WORKERS} forked processes")
    storage.timer.cancel()


@pytest.mark.parametrize("kind", STORES)
async def test_async_strategies(store_uri, kind):
    uri = "async+" + store_uri(kind)
    storage = storage_from_string(uri)
    assert isinstance(storage, AsyncTrafficStorage) and await storage.check()
    item = parse("5/minute")
    for strategy in (aio_strategies.FixedWindowRateLimiter, aio_strategies.FixedWindowElasticExpiryRateLimiter,
                     aio_strategies.MovingWindowRateLimiter):
        limiter = strategy(storage)
        key = strategy.__name__
        results = await asyncio.gather(*[limiter.hit(item, key) for _ in range(12)])
        assert sum(results) == 5, (strategy.__name__, results)
        reset, remaining = await limiter.get_window_stats(item, key)
        assert remaining == 0 and time.time() + 50 <= reset <= time.time() + 68
        assert not await limiter.test(item, key)
        await limiter.clear(item, key)
        assert await limiter.hit(item, key)
    assert await storage.incr("a", 60, amount=2) == 2 and await storage.get("a") == 2
    assert await storage.get_expiry("a") >= int(time.time()) + 58
    assert await storage.acquire_sliding_window_entry("sw", 3, 3600, 3)
    assert (await storage.get_sliding_window("sw", 3600))[2] == 3
    await storage.clear_sliding_window("sw", 3600)
    assert await storage.reset() is None and await storage.get("a") == 0
    storage.close()


def test_sliding_window_counter_rolls(store_uri):
    """get_sliding_window places the stored counts in the store's windows: after a window
    boundary the current count becomes the previous one, weighted by what is left of it, and
    the store decides on that same estimate. Windows are aligned on the store's clock: memory
    CLOCK_MONOTONIC, SQLite and Redis the wall clock (this host's)."""
    for kind in STORES:
        s = storage_from_string(store_uri(kind))
        clock = time.monotonic if kind == "memory" else time.time
        time.sleep(1.0 - clock() % 1.0 + 0.05)  # early in a window of 1 s
        assert [s.acquire_sliding_window_entry("sw", 10, 1, 3) for _ in range(4)] == [True] * 3 + [False]
        time.sleep(1.0 - clock() % 1.0 + 0.5)  # half-way through the next window
        previous, previous_ttl, current, current_ttl = s.get_sliding_window("sw", 1)
        assert (previous, current) == (9, 0), kind
        assert 0.3 < previous_ttl < 0.6 and math.isclose(current_ttl, previous_ttl + 1)
        est = previous * previous_ttl / 1  # limits' weighted count; it only falls from here
        cost = math.floor(10 - est)
        assert not s.acquire_sliding_window_entry("sw", 10, 1, cost + 2)
        assert s.acquire_sliding_window_entry("sw", 10, 1, cost)
        s.close()


@pytest.mark.parametrize("kind", STORES)
def test_strategy_switch_replaces_the_state(store_uri, kind):
    """limits names a key after the limit: a strategy changed on a live store finds the old
    one's state there, and the first hit replaces it."""
    s = storage_from_string(store_uri(kind))
    item = parse("3/minute")
    assert FixedWindowRateLimiter(s).hit(item, "x")
    assert MovingWindowRateLimiter(s).get_window_stats(item, "x")[1] == 3  # read: not its state
    assert [MovingWindowRateLimiter(s).hit(item, "x") for _ in range(4)] == [True] * 3 + [False]
    assert FixedWindowElasticExpiryRateLimiter(s).hit(item, "x")
    assert s.get(item.key_for("x")) == 1
    assert FixedWindowRateLimiter(s).hit(item, "x")
    assert s.get(item.key_for("x")) == 1
    s.close()


def test_moving_window_bounds(store_uri, table_name):
    """The exact log's bounds raise at the first hit, naming them and the way out."""
    s = storage_from_string(f"traffic+memory://{table_name}")  # value_max 256: logs of 31
    limiter = MovingWindowRateLimiter(s)
    assert limiter.hit(parse("31/hour"), "ok")
    with pytest.raises(traffic.InvalidArgumentError, match=r"value_max >= 808 .*fixed-window"):
        limiter.hit(parse("100/hour"), "x")
    with pytest.raises(traffic.InvalidArgumentError, match=r"10000.*fixed-window"):
        limiter.get_window_stats(parse("20000/day"), "x")
    with pytest.raises(traffic.InvalidArgumentError, match=r"12.7 days"):
        limiter.hit(parse("1/month"), "x")
    s.close()
    big = storage_from_string(store_uri("sqlite"))
    with pytest.raises(traffic.InvalidArgumentError, match=r"10000"):
        MovingWindowRateLimiter(big).hit(parse("10001/hour"), "x")
    assert MovingWindowRateLimiter(big).hit(parse("10000/hour"), "x")
    big.close()


def test_elastic_count_saturates(table_name):
    s = storage_from_string(f"traffic+memory://{table_name}")
    assert s.incr("e", 60, True, COUNT_MAX - 1) == COUNT_MAX - 1
    assert s.incr("e", 60, True, 1) == COUNT_MAX
    assert s.incr("e", 60, True, 5) == COUNT_MAX + 5  # over any limit, not counted
    assert s.get("e") == COUNT_MAX
    s.close()


def test_check_is_false_while_redis_is_frozen(redis_harness):
    server = redis_harness.server()
    s = storage_from_string(f"traffic+redis://127.0.0.1:{server.port}/0?timeout=0.3")
    assert s.check()
    server.pause(True)
    try:
        assert not s.check()
    finally:
        server.pause(False)
    deadline = time.monotonic() + 5  # the handle reconnects after its back-off (<= 1 s)
    while not s.check() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert s.check()
    s.close()
    server.stop()


def test_fallback_url_passes_through(redis_harness, table_name):
    """The rest of the URI is libtraffic's URL: fallback= included."""
    server = redis_harness.server()
    s = storage_from_string(f"traffic+redis://127.0.0.1:{server.port}/0?timeout=0.3&fallback=memory://{table_name}")
    limiter = FixedWindowRateLimiter(s)
    item = parse("3/minute")
    assert limiter.hit(item, "k")
    server.stop()  # the primary is gone: the host's table answers
    assert [limiter.hit(item, "k") for _ in range(4)] == [True] * 3 + [False]
    s.close()


def test_bad_uris_and_options():
    with pytest.raises(traffic.InvalidArgumentError):
        storage_from_string("traffic+memory://bad/name")
    with pytest.raises(traffic.InvalidArgumentError, match="URL parameter"):
        storage_from_string("traffic+memory://x?socket_timeout=1")
    with pytest.raises(traffic.InvalidArgumentError, match="storage options"):
        storage_from_string("traffic+memory://", socket_timeout=1)
    with pytest.raises(limits.errors.ConfigurationError):
        storage_from_string("traffic+mongodb://x")


def test_weighted_count_is_limits_formula(storage):
    """limits' SlidingWindowCounterRateLimiter (>= 4.1) computes previous * ttl / expiry +
    current from get_sliding_window; the store decided on the same estimate."""
    s = storage
    for n in range(1, 6):
        assert s.acquire_sliding_window_entry("w", 5, 3600)
        previous, previous_ttl, current, current_ttl = s.get_sliding_window("w", 3600)
        assert math.isclose(previous * previous_ttl / 3600 + current, n)
    assert not s.acquire_sliding_window_entry("w", 5, 3600)
