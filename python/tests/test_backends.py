"""The seed's Backend API on every built-in backend: memory (anonymous and named), SQLite, Redis."""

import asyncio
import json
import os
import subprocess
import sys

import pytest

import traffic
from conftest import needs_decisions

JSON_VALUES = [
    {"count": 1},
    {"tokens": 9.5, "last_update": 1712345678.125, "nested": {"a": [1, 2, {"b": None}]}},
    {"unicode": "h\u00e9llo \u2603 \U0001f600", "empty": "", "quote": 'a"b\\c'},
    {"t": True, "f": False, "n": None, "big": 2**62, "neg": -17, "list": []},
    {},
    [1, "two", 3.0],
    "just a string",
    42,
]


async def test_set_get_dict(backend):
    await backend.set("k", {"count": 1}, ttl=60)
    assert await backend.get("k") == {"count": 1}
    assert await backend.exists("k") is True


@pytest.mark.parametrize("value", JSON_VALUES)
async def test_json_round_trip(backend, value):
    await backend.set("json", value, ttl=60)
    got = await backend.get("json")
    assert got == value
    assert json.dumps(got, sort_keys=True) == json.dumps(value, sort_keys=True)


async def test_get_missing_is_none(backend):
    assert await backend.get("absent") is None
    assert await backend.exists("absent") is False


async def test_set_replaces(backend):
    await backend.set("k", {"v": 1}, ttl=60)
    await backend.set("k", {"v": 2, "more": "x"}, ttl=60)
    assert await backend.get("k") == {"v": 2, "more": "x"}


async def test_delete(backend):
    await backend.set("k", {"v": 1}, ttl=60)
    await backend.delete("k")
    assert await backend.get("k") is None
    await backend.delete("k")  # absent: no error
    assert await backend.exists("k") is False


async def test_ttl_expires(backend):
    await backend.set("short", {"v": 1}, ttl=0.2)
    await backend.set("long", {"v": 2}, ttl=60)
    assert await backend.exists("short")
    left = await backend.ttl("long")
    assert 59 < left <= 60
    await asyncio.sleep(0.35)
    assert await backend.get("short") is None
    assert await backend.exists("short") is False
    assert await backend.get("long") == {"v": 2}


async def test_ttl_none_is_no_expiry(backend):
    await backend.set("forever", {"v": 1}, ttl=None)
    assert await backend.ttl("forever") == -1.0
    assert await backend.ttl("absent") is None


async def test_increment(backend):
    assert await backend.increment("c") == 1
    assert await backend.increment("c") == 2
    assert await backend.increment("c", 10) == 12
    assert await backend.increment("c", amount=-5) == 7
    assert await backend.get("c") == 7  # a counter reads as its number
    assert await backend.increment("c2", 3, ttl=0.2) == 3
    await asyncio.sleep(0.35)
    assert await backend.increment("c2") == 1  # expired: starts again at 0


async def test_increment_concurrent_tasks_exact(backend):
    async def worker():
        for _ in range(50):
            await backend.increment("shared")

    await asyncio.gather(*(worker() for _ in range(8)))
    assert await backend.get("shared") == 400


async def test_clear(backend):
    for i in range(20):
        await backend.set(f"k{i}", {"i": i}, ttl=60)
    await backend.increment("counter")
    await backend.clear()
    for i in range(20):
        assert await backend.get(f"k{i}") is None
    assert await backend.get("counter") is None


async def test_async_with_closes(backend):
    async with backend as b:
        assert b is backend
        await b.set("k", {"v": 1}, ttl=60)
    with pytest.raises(traffic.TrafficError) as e:
        await backend.get("k")
    assert "closed" in e.value.message
    await backend.close()  # closing twice is fine


async def test_stats(backend):
    await backend.set("k", {"v": 1}, ttl=60)
    await backend.get("k")
    await backend.get("absent")
    if backend.kind.startswith("memory"):
        stats = backend.get_stats()  # sync on memory, as the seed
    else:
        stats = await backend.get_stats()  # async on Redis (and SQLite)
    assert stats["backend"] == backend.kind.split("-")[0]
    assert stats["keys"] >= 1
    assert stats["hits"] >= 1 and stats["misses"] >= 1
    assert stats["sets"] >= 1


async def test_cleanup_start_stop(backend):
    await backend.start_cleanup()
    await backend.start_cleanup()  # twice is fine
    await backend.set("k", {"v": 1}, ttl=60)
    assert await backend.get("k") == {"v": 1}
    await backend.stop_cleanup()
    await backend.stop_cleanup()


async def test_bytes_values_are_stored_as_they_are(backend):
    await backend.set("raw", b"\x00\x01not json\xff", ttl=60)
    assert await backend.get("raw") == b"\x00\x01not json\xff"


async def test_rate_limit_state_readable(backend):
    await needs_decisions(backend)
    rule = traffic.make_rule(5, 60, traffic.Algorithm.TOKEN_BUCKET)
    d = await backend.decide("rl", rule)
    assert d.allowed and d.remaining == 4
    state = await backend.get("rl")
    assert state["algorithm"] == "token_bucket"


async def test_sqlite_operations_before_initialize(tmp_path):
    b = traffic.SQLiteBackend(str(tmp_path / "lazy.db"), cleanup_interval=10)
    await b.set("k", {"v": 1}, ttl=60)  # opens the file itself
    assert await b.get("k") == {"v": 1}
    await b.close()
    again = traffic.SQLiteBackend(tmp_path / "lazy.db")
    await again.initialize()
    assert await again.get("k") == {"v": 1}  # persistent
    await again.close()


async def test_sqlite_initialize_concurrently(tmp_path):
    b = traffic.SQLiteBackend(tmp_path / "c.db")
    await asyncio.gather(*(b.initialize() for _ in range(5)), b.set("k", {"v": 1}, ttl=60))
    assert await b.get("k") == {"v": 1}
    await b.close()


async def test_named_memory_shared_with_another_process(table_name):
    b = traffic.MemoryBackend(name=table_name)
    await b.set("from-parent", {"v": 1}, ttl=60)
    code = f"""
import asyncio, traffic
async def main():
    b = traffic.MemoryBackend(name={table_name!r})
    assert await b.get("from-parent") == {{"v": 1}}
    await b.set("from-child", {{"v": 2}}, ttl=60)
    for _ in range(100): await b.increment("n")
asyncio.run(main())
"""
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ.copy())
    assert await b.get("from-child") == {"v": 2}
    assert await b.get("n") == 100
    await b.close()
    assert traffic.MemoryBackend.unlink(table_name) is True
    assert traffic.MemoryBackend.unlink(table_name) is False


async def test_anonymous_memory_shared_across_fork():
    b = traffic.MemoryBackend()
    pids = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                store = b._store
                for _ in range(1000):
                    store.increment("forked")
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert await b.get("forked") == 3000
    await b.close()


async def test_memory_options(table_name):
    b = traffic.MemoryBackend(max_size=100, cleanup_interval=1, name=table_name, value_max=1024)
    stats = b.get_stats()
    assert stats["max_size"] == 100
    await b.set("big", {"x": "y" * 900}, ttl=60)
    assert (await b.get("big"))["x"] == "y" * 900
    with pytest.raises(traffic.TooBigError):
        await b.set("bigger", {"x": "y" * 1100}, ttl=60)
    await b.close()
    with pytest.raises(traffic.InvalidArgumentError):  # the existing table has value_max 1024
        traffic.MemoryBackend(name=table_name, value_max=2048)


async def test_memory_eviction_at_max_size():
    b = traffic.MemoryBackend(max_size=50)
    for i in range(500):
        await b.set(f"k{i}", {"i": i}, ttl=60)
    stats = b.get_stats()
    assert stats["keys"] <= 50 and stats["evictions"] > 0
    assert await b.get("k499") == {"i": 499}
    await b.close()


async def test_large_values(backend):
    value = {"blob": "x" * 200_000}
    if backend.kind.startswith("memory"):  # limited to value_max (256 bytes by default)
        with pytest.raises(traffic.TooBigError):
            await backend.set("large", value, ttl=60)
        return
    await backend.set("large", value, ttl=60)
    assert await backend.get("large") == value


async def test_sqlite_is_off_the_event_loop(tmp_path):
    """A write waiting for another process's lock leaves the loop free to run other tasks."""
    import sqlite3

    path = tmp_path / "busy.db"
    b = traffic.SQLiteBackend(path, pool_size=2)
    b.timeout = 5.0
    await b.initialize()
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, held by "another program"
    ticks = 0
    done = asyncio.Event()

    async def ticker():
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    t = asyncio.create_task(ticker())
    write = asyncio.create_task(b.set("k", {"v": 1}, ttl=60))
    await asyncio.sleep(0.3)
    assert not write.done()  # still waiting for the lock...
    assert ticks >= 5  # ...while the loop ran the ticker
    holder.execute("COMMIT")
    await write
    done.set()
    await t
    assert await b.get("k") == {"v": 1}
    holder.close()
    await b.close()
