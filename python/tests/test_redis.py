"""RedisBackend.from_url: the seed's URL forms (password, Sentinel with sentinel_master, a host
list for Cluster) and libtraffic's, on real servers; key prefixes; a frozen server."""

import asyncio
import time

import pytest

import traffic
from traffic import _traffic
from traffic.backends.redis import redis_options
from conftest import needs_decisions


def test_url_forms():
    o = redis_options("redis://:pw%40x@db.example:6380/3")
    assert (o["mode"], o["hosts"], o["password"], o["user"], o["db"]) == (_traffic.REDIS_TCP, "db.example:6380",
                                                                          "pw@x", None, 3)
    o = redis_options("redis://alice:pw@h:1/0")
    assert (o["user"], o["password"]) == ("alice", "pw")
    o = redis_options("redis://h1:26379,h2:26379/2", sentinel_master="mymaster")
    assert (o["mode"], o["hosts"], o["master"], o["db"]) == (_traffic.REDIS_SENTINEL, "h1:26379,h2:26379",
                                                             "mymaster", 2)
    o = redis_options("redis+sentinel://h1:26379/mymaster/1")
    assert (o["mode"], o["master"], o["db"]) == (_traffic.REDIS_SENTINEL, "mymaster", 1)
    o = redis_options("redis://n1:7000,n2:7001,n3:7002")
    assert (o["mode"], o["hosts"]) == (_traffic.REDIS_CLUSTER, "n1:7000,n2:7001,n3:7002")
    o = redis_options("redis+cluster://n1:7000")
    assert o["mode"] == _traffic.REDIS_CLUSTER
    o = redis_options("unix:///run/redis.sock?db=4")
    assert (o["mode"], o["path"], o["db"]) == (_traffic.REDIS_UNIX, "/run/redis.sock", 4)
    o = redis_options("redis://h/0?timeout=0.5&pool_size=2", key_prefix="app:", socket_timeout=2,
                      decode_responses=True, max_connections=8)
    assert (o["timeout"], o["pool_size"], o["prefix"]) == (2.0, 8, "app:")
    assert redis_options("redis://h/0")["prefix"] == ""  # the seed's default: no prefix
    assert redis_options("redis://h/0?prefix=x:")["prefix"] == "x:"


async def test_key_prefix_isolates(redis_server):
    a = await traffic.RedisBackend.from_url(redis_server.url, key_prefix="myapp:ratelimit:")
    b = await traffic.RedisBackend.from_url(redis_server.url, key_prefix="other:")
    await a.set("k", {"from": "a"}, ttl=60)
    await b.set("k", {"from": "b"}, ttl=60)
    assert redis_server.cmd("EXISTS", "myapp:ratelimit:k") == 1
    await a.clear()
    assert await a.get("k") is None
    assert await b.get("k") == {"from": "b"}
    stats = await b.get_stats()
    assert stats["backend"] == "redis" and stats["keys"] >= 1
    await a.close()
    await b.close()


async def test_no_prefix_by_default(redis_server):
    b = await traffic.RedisBackend.from_url(redis_server.url)
    await b.increment("seed-default-key", 5)
    assert redis_server.cmd("GET", "seed-default-key") == "5"  # a plain Redis integer
    await b.delete("seed-default-key")
    await b.close()


async def test_sentinel_seed_form(redis_harness):
    master, sentinel = redis_harness.sentinel_set("pymaster")
    url = f"redis://127.0.0.1:{sentinel.port},127.0.0.1:{sentinel.port}/0"
    b = await traffic.RedisBackend.from_url(url, sentinel_master="pymaster", key_prefix="s:")
    await b.set("k", {"via": "sentinel"}, ttl=60)
    assert master.cmd("GET", "s:k").endswith('{"via":"sentinel"}')
    assert await b.get("k") == {"via": "sentinel"}
    await b.close()
    ours = await traffic.RedisBackend.from_url(f"redis+sentinel://127.0.0.1:{sentinel.port}/pymaster/0",
                                               key_prefix="s:")
    assert await ours.get("k") == {"via": "sentinel"}
    await ours.close()
    with pytest.raises(traffic.TrafficError):
        await traffic.RedisBackend.from_url(url, sentinel_master="unknown-master", timeout=0.5)
    sentinel.stop()
    master.stop()


async def test_cluster_seed_form(redis_harness):
    nodes = redis_harness.cluster(3)
    url = ",".join(f"127.0.0.1:{n.port}" for n in nodes)
    b = await traffic.RedisBackend.from_url(f"redis://{url}", key_prefix="c:")
    for i in range(50):
        await b.set(f"k{i}", {"i": i}, ttl=60)
        await b.increment(f"n{i}", i)
    for i in range(50):
        assert await b.get(f"k{i}") == {"i": i}
    owners = {n.port for n in nodes if n.cmd("DBSIZE") > 0}
    assert len(owners) == 3  # the keys really are spread over the masters
    await needs_decisions(b)
    rule = traffic.make_rule(10, 60, traffic.Algorithm.FIXED_WINDOW)
    allowed = sum([(await b.decide("rl", rule)).allowed for _ in range(15)])
    assert allowed == 10
    await b.clear()
    assert all(n.cmd("DBSIZE") == 0 for n in nodes)
    await b.close()
    for n in nodes:
        n.stop()


async def test_unix_socket(redis_harness, tmp_path):
    sock = tmp_path / "r.sock"
    server = redis_harness.server(extra=[f"unixsocket {sock}", "unixsocketperm 700"])
    b = await traffic.RedisBackend.from_url(f"unix://{sock}?db=1", key_prefix="u:")
    await b.set("k", {"v": 1}, ttl=60)
    assert await b.get("k") == {"v": 1}
    assert server.cmd("SELECT", 1) == "OK"
    await b.close()
    server.stop()


async def test_frozen_server_does_not_stall_the_loop(redis_harness):
    """A call to a SIGSTOPped server fails within the timeout, and the loop runs meanwhile."""
    server = redis_harness.server()
    b = await traffic.RedisBackend.from_url(server.url, timeout=1.0)
    await b.set("k", {"v": 1}, ttl=60)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    t = asyncio.create_task(ticker())
    server.pause(True)
    try:
        start = time.monotonic()
        with pytest.raises((traffic.StoreTimeoutError, traffic.UnavailableError)):
            await b.get("k")
        elapsed = time.monotonic() - start
        assert ticks >= 10, f"the loop ran {ticks} times during {elapsed:.2f} s"
    finally:
        server.pause(False)
        t.cancel()
    # recovers by itself on the same backend
    for _ in range(100):
        try:
            assert await b.get("k") == {"v": 1}
            break
        except traffic.TrafficError:
            await asyncio.sleep(0.05)
    else:
        pytest.fail("no recovery after SIGCONT")
    await b.close()
    server.stop()
