"""Fixtures shared by the Python suites: real stores only (a memory table, a SQLite file in a
temporary directory, a redis-server started here on a free loopback port)."""

import os
import sys
import uuid

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import traffic  # noqa: E402  (PYTHONPATH=build/python, set by CTest)
from redis_harness import Harness  # noqa: E402


@pytest.fixture(scope="session")
def redis_harness():
    h = Harness()
    yield h
    h.stop()


@pytest.fixture(scope="session")
def redis_server(redis_harness):
    return redis_harness.server()


def unique(prefix="t"):
    return f"{prefix}{uuid.uuid4().hex[:12]}"


@pytest.fixture
def table_name():
    name = unique("pytest.")
    yield name
    traffic.MemoryBackend.unlink(name)


BACKENDS = ["memory", "memory-named", "sqlite", "redis"]


@pytest.fixture(params=BACKENDS)
async def backend(request, tmp_path):
    """Each built-in backend, opened the way the seed's users open it."""
    kind = request.param
    if kind == "memory":
        b = traffic.MemoryBackend()
    elif kind == "memory-named":
        name = unique("pytest.")
        b = traffic.MemoryBackend(name=name)
        request.addfinalizer(lambda: traffic.MemoryBackend.unlink(name))
    elif kind == "sqlite":
        b = traffic.SQLiteBackend(tmp_path / "limits.db")
        await b.initialize()
    else:
        server = request.getfixturevalue("redis_server")
        b = await traffic.RedisBackend.from_url(server.url, key_prefix=unique("pytest:") + ":")
    b.kind = kind
    yield b
    await b.close()


async def needs_decisions(backend):
    """Skips when this libtraffic's backend has no traffic_limit yet (Redis before the
    limit-redis branch is merged): the only skip of these suites, and it says why."""
    try:
        await backend.decide("probe:decisions", traffic.make_rule(1, 1))
    except traffic.NotSupportedError as e:
        pytest.skip(f"{getattr(backend, 'kind', type(backend).__name__)}: {e}")
    await backend.delete("probe:decisions")
