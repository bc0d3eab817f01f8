"""fallback= from Python: RedisBackend.from_url(url, fallback="memory://NAME") and the other
backends hand libtraffic's fallback= parameter to the library (traffic.h, "When the store is
down"), which answers from the fallback while the primary is down. Real redis-servers on
loopback, stopped by pid; named memory tables as the fallbacks."""

import os
import urllib.parse

import pytest

import traffic
from conftest import unique
from redis_harness import pick_port
from traffic.backends.redis import redis_options, redis_url

RULE = traffic.make_rule(3, 60, traffic.Algorithm.FIXED_WINDOW)


@pytest.fixture
def fallback_table():
    name = unique("pytest.fb.")
    yield name
    traffic.MemoryBackend.unlink(name)


async def allowed(backend, key, n):
    return [(await backend.decide(key, RULE)).allowed for _ in range(n)]


async def test_redis_down_is_answered_by_the_fallback(redis_harness, fallback_table):
    server = redis_harness.server()
    b = await traffic.RedisBackend.from_url(server.url, key_prefix="fb:", timeout=0.3,
                                            fallback=f"memory://{fallback_table}")
    assert await allowed(b, "k", 2) == [True, True]
    assert server.cmd("EXISTS", "fb:k") == 1  # decided by Redis
    assert (await b.get_stats())["serving"] == "primary"
    server.stop()
    # Redis is gone: the host's table answers, from its own state (empty): 3 more, then 429
    assert await allowed(b, "k", 4) == [True, True, True, False]
    stats = await b.get_stats()
    assert stats["serving"] == "fallback" and stats["backend"] == "memory"
    # the state is in the fallback table, where every process of the host reads it
    other = traffic.MemoryBackend(name=fallback_table)
    assert (await other.decide("k", RULE)).allowed is False
    await other.close()
    await b.close()


async def test_unreachable_at_open_starts_on_the_fallback(fallback_table):
    url = f"redis://127.0.0.1:{pick_port()}/0?timeout=0.3&fallback=memory://{fallback_table}"  # as a URL parameter
    b = await traffic.RedisBackend.from_url(url)
    assert await allowed(b, "k", 4) == [True, True, True, False]
    assert (await b.get_stats())["serving"] == "fallback"
    await b.close()
    with pytest.raises(traffic.UnavailableError):  # without a fallback the open fails
        await traffic.RedisBackend.from_url(f"redis://127.0.0.1:{pick_port()}/0", timeout=0.3)


async def test_redis_url_keeps_every_option(redis_harness, fallback_table, tmp_path):
    """The typed options travel through libtraffic's URL intact: a password and a prefix with
    URL-special characters, a database, a unix socket, the breaker's back-off."""
    password, prefix = "p@ss/w:rd&x%?", "a b&c/%:"
    sock = str(tmp_path / "redis?%.sock")
    server = redis_harness.server(password=password, extra=[f"unixsocket {sock}", "unixsocketperm 700"])
    b = await traffic.RedisBackend.from_url(f"redis://127.0.0.1:{server.port}/3", password=password,
                                            key_prefix=prefix, fallback=f"memory://{fallback_table}",
                                            fallback_backoff=0.01, fallback_backoff_max=1)
    await b.increment("n", 5)
    assert (await b.get_stats())["serving"] == "primary"
    await b.close()
    u = await traffic.RedisBackend.from_url(f"unix://{urllib.parse.quote(sock)}?db=3", password=password, key_prefix=prefix,
                                            fallback=f"memory://{fallback_table}")
    assert await u.get("n") == 5 and (await u.get_stats())["serving"] == "primary"
    await u.close()
    # what is stored where: db 3, under the prefix as given
    reply = _command_db(server, 3, "GET", prefix + "n")
    assert reply == "5"
    server.stop()


def _command_db(server, db, *args):
    import socket

    import redis_harness as h

    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as s:
        f = s.makefile("rb")
        for c in (("AUTH", server.password), ("SELECT", db), args):
            out = b"*%d\r\n" % len(c)
            for a in c:
                a = str(a).encode()
                out += b"$%d\r\n%s\r\n" % (len(a), a)
            s.sendall(out)
            reply = h._read(f)
    return reply


def test_redis_url_forms():
    """Each of the seed's URL forms becomes the libtraffic URL of the same options."""
    fb = "memory://fb?max_size=1000&cleanup_interval=5"
    cases = [
        (("redis://u:pw@h:1/2",), {}, "redis://u:pw@h:1/2?prefix="),
        (("redis://h1:1,h2:2",), {"key_prefix": "k:"}, "redis+cluster://h1:1,h2:2?prefix=k%3A"),
        (("redis://s1:1,s2:2/4",), {"sentinel_master": "m y"}, "redis+sentinel://s1:1,s2:2/m%20y/4?prefix="),
        (("redis+sentinel://:pw@s1:1/mymaster/1?timeout=0.5",), {}, "redis+sentinel://:pw@s1:1/mymaster/1?prefix=&timeout=0.5"),
        (("unix:///run/r.sock?db=2",), {"pool_size": 8}, "redis+unix:///run/r.sock?db=2&prefix=&pool_size=8"),
    ]
    for args, kw, want in cases:
        assert redis_url(redis_options(*args, **kw)) == want
        got = redis_url(redis_options(*args, fallback=fb, fallback_backoff=0.1, **kw))
        assert got == want + "&fallback=memory%3A%2F%2Ffb%3Fmax_size%3D1000%26cleanup_interval%3D5&fallback_backoff=0.1"


async def test_sqlite_and_memory_take_a_fallback(tmp_path, fallback_table, table_name):
    db = traffic.SQLiteBackend(tmp_path / "with fallback?.db", fallback=f"memory://{fallback_table}", pool_size=2)
    assert await allowed(db, "k", 4) == [True, True, True, False]
    stats = await db.get_stats()
    assert stats["serving"] == "primary" and stats["backend"] == "sqlite"
    await db.close()
    assert os.path.exists(tmp_path / "with fallback?.db")
    m = traffic.MemoryBackend(name=table_name, value_max=512, fallback=f"memory://{fallback_table}")
    assert await allowed(m, "k", 4) == [True, True, True, False]
    stats = m.get_stats()
    assert stats["serving"] == "primary" and stats["backend"] == "memory"
    await m.close()
    with pytest.raises(traffic.InvalidArgumentError, match="fallback"):
        traffic.MemoryBackend(name=table_name, fallback="memory://bad/name")
    with pytest.raises(traffic.InvalidArgumentError, match="fallback"):
        traffic.MemoryBackend(name=table_name, fallback_backoff=0.1)
