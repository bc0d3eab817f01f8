"""traffic.limits_storage: the `limits` package's fixed window on libtraffic, by URI."""

import os

import pytest

limits = pytest.importorskip("limits")  # run_pytest.py has checked it is installed

import traffic  # noqa: E402
import traffic.limits_storage  # noqa: E402,F401  (registers the traffic+ schemes)
from limits import parse  # noqa: E402
from limits.storage import storage_from_string  # noqa: E402
from limits.strategies import FixedWindowElasticExpiryRateLimiter, FixedWindowRateLimiter  # noqa: E402



def uris(tmp_path, table_name, redis_server):
    return [f"traffic+memory://{table_name}", "traffic+memory://", f"traffic+sqlite://{tmp_path}/l.db",
            f"traffic+redis://127.0.0.1:{redis_server.port}/0?prefix=lim:"]


def test_fixed_window_by_uri(tmp_path, table_name, redis_server):
    for uri in uris(tmp_path, table_name, redis_server):
        storage = storage_from_string(uri)
        assert storage.check()
        limiter = FixedWindowRateLimiter(storage)
        item = parse("5/minute")
        assert [limiter.hit(item, "api", "10.0.0.1") for _ in range(7)] == [True] * 5 + [False] * 2, uri
        assert limiter.hit(item, "api", "10.0.0.2")  # another client
        assert not limiter.test(item, "api", "10.0.0.1")
        reset_at, remaining = limiter.get_window_stats(item, "api", "10.0.0.1")
        assert remaining == 0 and 0 < reset_at - __import__("time").time() <= 61
        limiter.clear(item, "api", "10.0.0.1")
        assert limiter.hit(item, "api", "10.0.0.1")
        storage.reset()
        assert limiter.get_window_stats(item, "api", "10.0.0.2")[1] == 5
        storage.close()


def test_shared_by_forked_workers(table_name):
    storage = storage_from_string(f"traffic+memory://{table_name}")
    limiter = FixedWindowRateLimiter(storage)
    item = parse("50/minute")
    pids = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:
            passed = sum(limiter.hit(item, "shared") for _ in range(40))
            os._exit(passed)
        pids.append(pid)
    total = sum(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids)
    assert total == 50  # 160 hits from 4 processes, one limit
    storage.close()


def test_elastic_expiry_is_refused(table_name):
    storage = storage_from_string(f"traffic+memory://{table_name}")  # limits keeps a weak reference
    limiter = FixedWindowElasticExpiryRateLimiter(storage)
    with pytest.raises(NotImplementedError):
        limiter.hit(parse("5/minute"), "x")
    storage.close()


def test_bad_uri():
    with pytest.raises(traffic.InvalidArgumentError):
        storage_from_string("traffic+memory://bad/name")
