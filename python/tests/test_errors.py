"""Errors: each library status raises its TrafficError subclass with the status and the
library's message; bad arguments are also ValueError."""

import pytest

import traffic
from traffic import _traffic
from conftest import needs_decisions


async def test_key_too_long(backend):
    with pytest.raises(traffic.TooBigError) as e:
        await backend.set("k" * 251, {"v": 1}, ttl=60)
    assert isinstance(e.value, ValueError)
    assert e.value.status == _traffic.ETOOBIG
    assert e.value.name == "TRAFFIC_ETOOBIG"
    assert "250" in e.value.message
    await backend.set("k" * 250, {"v": 1}, ttl=60)  # the longest key is fine
    assert await backend.get("k" * 250) == {"v": 1}


async def test_empty_key(backend):
    with pytest.raises(traffic.InvalidArgumentError) as e:
        await backend.get("")
    assert isinstance(e.value, ValueError) and e.value.status == _traffic.EINVAL
    assert "empty" in e.value.message


async def test_nul_in_key(backend):
    with pytest.raises(ValueError) as e:
        await backend.set("a\0b", {"v": 1}, ttl=60)
    assert isinstance(e.value, traffic.InvalidArgumentError)


async def test_key_type(backend):
    with pytest.raises(TypeError):
        await backend.get(12)


@pytest.mark.parametrize("ttl", [-1, float("nan"), float("inf")])
async def test_bad_ttl(backend, ttl):
    with pytest.raises(traffic.InvalidArgumentError) as e:
        await backend.set("k", {"v": 1}, ttl=ttl)
    assert isinstance(e.value, ValueError)
    assert "ttl" in e.value.message


async def test_ttl_is_keyword_only(backend):
    with pytest.raises(TypeError):
        await backend.set("k", {"v": 1}, 60)


async def test_increment_on_a_value(backend):
    await backend.set("dict", {"count": 1}, ttl=60)
    with pytest.raises(traffic.WrongTypeError) as e:
        await backend.increment("dict")
    assert e.value.status == _traffic.ETYPE
    assert "dict" in str(e.value)


async def test_increment_overflow(backend):
    await backend.increment("big", 2**63 - 2)
    with pytest.raises(traffic.CounterOverflowError):
        await backend.increment("big", 5)
    assert await backend.get("big") == 2**63 - 2  # unchanged


async def test_memory_value_too_big():
    b = traffic.MemoryBackend(max_size=10)
    with pytest.raises(traffic.TooBigError) as e:
        await b.set("k", {"x": "y" * 300}, ttl=60)
    assert isinstance(e.value, ValueError) and "256" in e.value.message
    await b.close()


async def test_rate_limit_on_a_value(backend):
    await needs_decisions(backend)
    await backend.set("v", {"count": 1}, ttl=60)
    with pytest.raises(traffic.WrongTypeError):
        await backend.decide("v", traffic.make_rule(5, 60))


@pytest.mark.parametrize(
    "args",
    [
        dict(limit=0),
        dict(limit=5, window_size=0),
        dict(limit=5, window_size=float("nan")),
        dict(limit=5, window_size=-1),
        dict(limit=2**21),  # over a window algorithm's 2^20 - 1
        dict(limit=5, algorithm=traffic.Algorithm.TOKEN_BUCKET, burst_size=-1),
    ],
)
def test_bad_rules(args):
    with pytest.raises(traffic.InvalidArgumentError) as e:
        traffic.make_rule(**args)
    assert isinstance(e.value, ValueError) and e.value.message


def test_unknown_algorithm():
    with pytest.raises(ValueError):
        traffic.make_rule(5, 60, "no_such_algorithm")


def test_bad_cost():
    with pytest.raises(ValueError):
        traffic.RateLimitConfig(limit=5, cost=-1)


def test_rule_parse():
    r = traffic.Rule.parse("token_bucket:100/60s,burst=20")
    assert (r.algorithm, r.limit, r.window, r.burst) == (_traffic.TOKEN_BUCKET, 100, 60.0, 20)
    with pytest.raises(traffic.InvalidArgumentError):
        traffic.Rule.parse("bucket:1/0s")


def test_memory_bad_options():
    with pytest.raises(traffic.InvalidArgumentError):
        traffic.MemoryBackend(name="bad/name")
    with pytest.raises(traffic.InvalidArgumentError):
        traffic.MemoryBackend(max_size=10, value_max=10**6)
    with pytest.raises(TypeError):
        traffic.MemoryBackend(name=5)


async def test_sqlite_errors(tmp_path):
    not_sqlite = tmp_path / "not.db"
    not_sqlite.write_bytes(b"this is not a database file" * 100)
    with pytest.raises(traffic.CorruptError) as e:
        await traffic.SQLiteBackend(not_sqlite).initialize()
    assert str(not_sqlite) in e.value.message or "database" in e.value.message
    with pytest.raises(traffic.StoreIOError):
        await traffic.SQLiteBackend(tmp_path / "no" / "such" / "dir.db").initialize()
    with pytest.raises(traffic.InvalidArgumentError):
        await traffic.SQLiteBackend(tmp_path).initialize()  # a directory


async def test_redis_unreachable():
    from redis_harness import pick_port

    with pytest.raises(traffic.UnavailableError) as e:
        await traffic.RedisBackend.from_url(f"redis://127.0.0.1:{pick_port()}/0", timeout=0.5)
    assert e.value.status == _traffic.EUNAVAILABLE
    assert "127.0.0.1" in e.value.message


async def test_redis_wrong_password(redis_harness):
    server = redis_harness.server(password="s3cret")
    with pytest.raises(traffic.PermissionDeniedError):
        await traffic.RedisBackend.from_url(f"redis://:wrong@127.0.0.1:{server.port}/0")
    b = await traffic.RedisBackend.from_url(f"redis://:s3cret@127.0.0.1:{server.port}/0")  # the seed's form
    await b.set("k", {"v": 1}, ttl=60)
    assert await b.get("k") == {"v": 1}
    await b.close()
    server.stop()


async def test_redis_bad_urls():
    for url in ["rediss://127.0.0.1:6379/0", "http://127.0.0.1/", "redis://127.0.0.1:6379/x",
                "redis://h1:1,h2:2/3", "redis://127.0.0.1:6379/0?nonsense=1"]:
        with pytest.raises(traffic.InvalidArgumentError):
            await traffic.RedisBackend.from_url(url)
    with pytest.raises(TypeError):
        await traffic.RedisBackend.from_url("redis://127.0.0.1:6379/0", no_such_option=1)
    with pytest.raises(traffic.InvalidArgumentError):  # a sentinel master for a Cluster URL
        await traffic.RedisBackend.from_url("redis+cluster://h1:1,h2:2", sentinel_master="m")
    with pytest.raises(traffic.InvalidArgumentError):  # two different prefixes
        await traffic.RedisBackend.from_url("redis://127.0.0.1:6379/0?prefix=a:", key_prefix="b:")


async def test_closed_backend_refuses(backend):
    await backend.close()
    for call in (backend.get("k"), backend.set("k", {}, ttl=1), backend.increment("k"), backend.clear()):
        with pytest.raises(traffic.InvalidArgumentError):
            await call


def test_errors_are_distinct_classes():
    seen = set()
    for status in range(-1, -15, -1):
        exc = traffic.errors.error_for(status, "m")
        assert isinstance(exc, traffic.TrafficError) and exc.status == status
        seen.add(type(exc))
    assert len(seen) == 14
