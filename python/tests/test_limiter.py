"""RateLimiter on every backend and on a user's own Backend subclass: exact quotas for each
algorithm, what a decision says, keys and trusted proxies."""

import asyncio
import time

import pytest

import traffic
from traffic import Algorithm, RateLimitConfig, RateLimiter
from traffic.limiter import client_address, fit_key
from conftest import needs_decisions


class DictBackend(traffic.Backend):
    """A user's custom backend: the seed's seven methods over a dict, nothing more."""

    def __init__(self):
        self.data = {}
        self.sets = []

    def _live(self, key):
        item = self.data.get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and time.monotonic() >= expires:
            del self.data[key]
            return None
        return item

    async def get(self, key):
        item = self._live(key)
        await asyncio.sleep(0)  # a real store awaits I/O here
        return None if item is None else item[0]

    async def set(self, key, value, *, ttl):
        await asyncio.sleep(0)
        self.sets.append((key, value, ttl))
        self.data[key] = (value, time.monotonic() + ttl if ttl else None)

    async def delete(self, key):
        self.data.pop(key, None)

    async def exists(self, key):
        return self._live(key) is not None

    async def increment(self, key, amount=1):
        item = self._live(key)
        value = (item[0] if item else 0) + amount
        self.data[key] = (value, item[1] if item else None)
        return value

    async def clear(self):
        self.data.clear()

    async def close(self):
        self.closed = True


@pytest.fixture(params=["memory", "memory-named", "sqlite", "redis", "custom"])
async def limiter(request, tmp_path):
    if request.param == "custom":
        backend = DictBackend()
        backend.kind = "custom"
    else:
        request.param  # the built-in ones come from conftest's backend fixture
        backend = await _builtin(request, tmp_path)
        await needs_decisions(backend)
    lim = RateLimiter(backend)
    await lim.initialize()
    yield lim
    await lim.close()


async def _builtin(request, tmp_path):
    import conftest

    kind = request.param
    if kind == "memory":
        return _kind(traffic.MemoryBackend(), kind)
    if kind == "memory-named":
        name = conftest.unique("pytest.")
        request.addfinalizer(lambda: traffic.MemoryBackend.unlink(name))
        return _kind(traffic.MemoryBackend(name=name), kind)
    if kind == "sqlite":
        return _kind(traffic.SQLiteBackend(tmp_path / "l.db"), kind)
    server = request.getfixturevalue("redis_server")
    return _kind(await traffic.RedisBackend.from_url(server.url, key_prefix=conftest.unique("pyl:") + ":"), kind)


def _kind(b, kind):
    b.kind = kind
    return b


QUOTAS = [
    # algorithm, limit, burst, requests admitted at once from an unused key
    (Algorithm.FIXED_WINDOW, 5, None, 5),
    (Algorithm.SLIDING_WINDOW_COUNTER, 5, None, 5),
    (Algorithm.SLIDING_WINDOW, 5, None, 5),
    (Algorithm.TOKEN_BUCKET, 5, 3, 3),
    (Algorithm.TOKEN_BUCKET, 5, None, 5),
    (Algorithm.LEAKY_BUCKET, 5, 2, 3),  # the one leaving now and a queue of 2
]


@pytest.mark.parametrize("algorithm,limit,burst,admitted", QUOTAS)
async def test_exact_quota(limiter, algorithm, limit, burst, admitted):
    config = RateLimitConfig(limit=limit, window_size=60, algorithm=algorithm, burst_size=burst)
    decisions = [await limiter.hit(f"q:{algorithm.value}", config) for _ in range(admitted + 4)]
    assert [d.allowed for d in decisions] == [True] * admitted + [False] * 4
    assert [d.remaining for d in decisions[:admitted]] == list(range(admitted - 1, -1, -1))
    assert all(d.limit == admitted for d in decisions)
    denied = decisions[-1]
    # the counter's estimate may keep a request out into the next window: up to 2 W
    assert 0 < denied.retry_after <= (120 if algorithm is Algorithm.SLIDING_WINDOW_COUNTER else 60)
    assert denied.reset_after > 0
    if algorithm is Algorithm.LEAKY_BUCKET:  # one leaves every 60/5 s (less the time between the calls)
        assert [d.delay for d in decisions[:admitted]] == pytest.approx([0, 12, 24], abs=0.5)
    else:
        assert all(d.delay == 0 for d in decisions)


async def test_concurrent_tasks_exact(limiter):
    config = RateLimitConfig(limit=20, window_size=60, algorithm=Algorithm.FIXED_WINDOW)
    results = await asyncio.gather(*(limiter.hit("together", config) for _ in range(60)))
    assert sum(d.allowed for d in results) == 20


async def test_denied_consumes_nothing_and_peek(limiter):
    config = RateLimitConfig(limit=2, window_size=60, algorithm=Algorithm.FIXED_WINDOW)
    assert (await limiter.peek("p", config)).remaining == 2
    await limiter.hit("p", config)
    assert (await limiter.peek("p", config)).remaining == 1
    await limiter.hit("p", config)
    for _ in range(3):
        assert not (await limiter.hit("p", config)).allowed
    await limiter.reset("p")
    assert (await limiter.hit("p", config)).allowed


async def test_cost(limiter):
    config = RateLimitConfig(limit=10, window_size=60, algorithm=Algorithm.FIXED_WINDOW, cost=4)
    assert [(await limiter.hit("c", config)).allowed for _ in range(3)] == [True, True, False]
    assert (await limiter.hit("c", config, cost=2)).allowed  # 8 + 2 = 10
    big = await limiter.hit("c2", RateLimitConfig(limit=3, window_size=60, cost=5))
    assert not big.allowed and big.retry_after == -1  # can never pass


async def test_window_refills(limiter):
    config = RateLimitConfig(limit=2, window_size=0.3, algorithm=Algorithm.FIXED_WINDOW)
    assert [(await limiter.hit("w", config)).allowed for _ in range(3)] == [True, True, False]
    await asyncio.sleep(0.4)
    assert (await limiter.hit("w", config)).allowed


async def test_custom_backend_state_goes_through_set():
    backend = DictBackend()
    lim = RateLimiter(backend)
    config = RateLimitConfig(limit=3, window_size=10, algorithm=Algorithm.TOKEN_BUCKET)
    d = await lim.hit("k", config)
    assert d.allowed
    key, value, ttl = backend.sets[-1]
    assert key == "k" and value["algorithm"] == "token_bucket" and 0 < ttl <= 10
    await backend.set("k", {"something": "else"}, ttl=60)
    with pytest.raises(traffic.WrongTypeError):
        await lim.hit("k", config)


def test_incomplete_subclass_is_refused():
    class Half(traffic.Backend):
        async def get(self, key):
            return None

    with pytest.raises(TypeError):
        Half()
    with pytest.raises(TypeError):
        RateLimiter(object())


async def test_limiter_is_the_default():
    a = RateLimiter(traffic.MemoryBackend())
    assert traffic.get_limiter() is a
    b = RateLimiter(traffic.MemoryBackend())
    assert traffic.get_limiter() is b
    await a.initialize()  # initialize makes it the default again
    assert traffic.get_limiter() is a
    traffic.set_limiter(None)
    made = traffic.get_limiter()  # made on demand: an anonymous memory table
    assert isinstance(made.backend, traffic.MemoryBackend)
    await a.close()
    await b.close()


def test_client_address_and_trusted_proxies():
    def scope(peer, *forwarded):
        return {"type": "http", "client": (peer, 5000),
                "headers": [(b"x-forwarded-for", f.encode()) for f in forwarded]}

    # Without trusted proxies the header is ignored: a client cannot choose its own key.
    assert client_address(scope("203.0.113.9", "1.2.3.4")) == "203.0.113.9"
    trusted = ["127.0.0.1", "10.0.0.0/8"]
    assert client_address(scope("127.0.0.1", "198.51.100.7"), trusted) == "198.51.100.7"
    # the rightmost address that is not a trusted proxy; what the client wrote to its left is ignored
    assert client_address(scope("10.1.1.1", "6.6.6.6, 198.51.100.7, 10.2.2.2"), trusted) == "198.51.100.7"
    assert client_address(scope("10.1.1.1", "6.6.6.6", "198.51.100.7"), trusted) == "198.51.100.7"
    # a peer that is not a trusted proxy: its header is not believed
    assert client_address(scope("203.0.113.9", "198.51.100.7"), trusted) == "203.0.113.9"
    # garbage in the chain: nothing to its left is trusted
    assert client_address(scope("127.0.0.1", "6.6.6.6, garbage, 10.0.0.5"), trusted) == "10.0.0.5"
    assert client_address(scope("127.0.0.1"), trusted) == "127.0.0.1"
    assert client_address({"type": "http", "headers": []}) == "unknown"
    assert client_address(scope("::1", "2001:db8::1"), ["::1"]) == "2001:db8::1"


async def test_limiter_trusted_proxies_key():
    lim = RateLimiter(traffic.MemoryBackend(), trusted_proxies=["127.0.0.0/8"])
    config = RateLimitConfig(limit=1, window_size=60)

    class Req:
        def __init__(self, peer, xff):
            self.scope = {"type": "http", "client": (peer, 1), "headers": [(b"x-forwarded-for", xff.encode())]}

    assert (await lim.check(Req("127.0.0.1", "198.51.100.1"), config)).allowed
    assert (await lim.check(Req("127.0.0.1", "198.51.100.2"), config)).allowed  # another client
    again = await lim.check(Req("127.0.0.1", "198.51.100.1"), config)
    assert not again.allowed and again.key == "ratelimit:global:198.51.100.1"
    await lim.close()


def test_fit_key():
    assert fit_key("short") == "short"
    long = "ratelimit:x:" + "é" * 300
    fitted = fit_key(long)
    assert len(fitted.encode()) <= 250 and fitted != fit_key(long + "x")


def test_headers():
    info = traffic.RateLimitInfo(traffic.make_rule(1, 1) and _Decision(False, 10, 0, 30.2, 4.1), now=1000.0)
    h = info.headers()
    assert h == {"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1031",
                 "Retry-After": "5"}
    never = traffic.RateLimitInfo(_Decision(False, 3, 0, 0.0, -1.0), now=1000.0)
    assert "Retry-After" not in never.headers()
    ok = traffic.RateLimitInfo(_Decision(True, 10, 7, 5.0, 0.0), now=1000.0)
    assert "Retry-After" not in ok.headers() and ok.headers()["X-RateLimit-Remaining"] == "7"


def test_raw_headers_match_the_text_ones():
    """RateLimitInfo.raw_headers (any backend) and Decision.raw_headers (the C decision, which
    @rate_limit sends on the memory backend's fast path) say what headers() says, rounding
    included."""
    cases = [_Decision(False, 10, 0, 30.2, 4.1), _Decision(False, 3, -2, 0.0, -1.0), _Decision(True, 10, 7, 5.0, 0.0),
             _Decision(False, 5, 0, 0.5, 0.2), _Decision(True, 2**40, 2**40 - 1, 1e8, 0.0)]
    for d in cases:
        info = traffic.RateLimitInfo(d, now=1000.25)
        text = {k.lower(): v for k, v in info.headers().items()}
        raw = info.raw_headers()
        assert all(isinstance(k, bytes) and isinstance(v, bytes) for k, v in raw)
        assert {k.decode(): v.decode() for k, v in raw} == text and len(raw) == len(text)
    assert dict(traffic.RateLimitInfo(cases[3], now=1000.25).raw_headers())[b"retry-after"] == b"1"

    store = traffic.MemoryBackend()._store
    rule = traffic.make_rule(2, 10, Algorithm.FIXED_WINDOW)
    for expect_allowed in (True, True, False):
        d = store.limit("raw-headers", rule, 1)
        assert d.allowed is expect_allowed
        for now in (1000.0, 1000.75):
            assert d.raw_headers(now) == traffic.RateLimitInfo(d, now=now).raw_headers()
        live = dict(d.raw_headers())  # now = the wall clock
        assert abs(int(live[b"x-ratelimit-reset"]) - (time.time() + d.reset_after)) < 2
    assert dict(d.raw_headers(0.0))[b"retry-after"] == b"%d" % max(1, -int(-d.retry_after // 1))
    with pytest.raises(TypeError):
        d.raw_headers(1.0, 2.0)
    assert d.raw_headers(now=1000.0) == d.raw_headers(1000.0)
    # out of range: saturated, never a cast the C language leaves undefined
    assert dict(d.raw_headers(float("nan")))[b"x-ratelimit-reset"] == b"0"
    assert dict(d.raw_headers(1e30))[b"x-ratelimit-reset"] == b"%d" % (2**63 - 1)
    assert dict(d.raw_headers(-1e30))[b"x-ratelimit-reset"] == b"%d" % -(2**63)
    # a user's backend may return floats, or no retry_after figure on an allowed request
    loose = traffic.RateLimitInfo(_Decision(True, 10.0, 7.0, 5.0, None), now=1000.0)
    assert dict(loose.raw_headers()) == {b"x-ratelimit-limit": b"10", b"x-ratelimit-remaining": b"7",
                                         b"x-ratelimit-reset": b"1005"}


class _Decision:
    def __init__(self, allowed, limit, remaining, reset_after, retry_after, delay=0.0):
        self.allowed, self.limit, self.remaining = allowed, limit, remaining
        self.reset_after, self.retry_after, self.delay = reset_after, retry_after, delay


def test_custom_backend_across_event_loops():
    """A custom backend used from two event loops in turn (asyncio.run twice) still decides."""
    backend = DictBackend()
    lim = RateLimiter(backend)
    config = RateLimitConfig(limit=3, window_size=60, algorithm=Algorithm.FIXED_WINDOW)

    async def burst():
        return [d.allowed for d in await asyncio.gather(*(lim.hit("loops", config) for _ in range(2)))]

    assert asyncio.run(burst()) == [True, True]
    assert asyncio.run(burst()) == [True, False]
