"""End to end: limited_app.py (@rate_limit(50, 60)) under real servers on loopback.

gunicorn -k uvicorn.workers.UvicornWorker -w 4 (preloaded anonymous memory, named memory,
SQLite, Redis) and uvicorn --workers 3 (named memory): 200 requests, each over a fresh
connection, from 8 client threads -> exactly 50 pass across the workers, the other 150 get 429
with the headers. The same app on a per-process store (an anonymous table made in each
worker) shows the failure the package exists to fix: recorded, not asserted - and it warns.

Every server runs on a free loopback port, in its own session, and is stopped by its pid.
"""

import concurrent.futures
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import unique
from redis_harness import pick_port

HERE = os.path.dirname(os.path.abspath(__file__))
READY_S = 30.0  # longest wait for a server's first answer
REQUESTS = 200
LIMIT = 50


def _die_with_parent():
    from redis_harness import _die_with_parent as d

    d()


class Server:
    def __init__(self, argv, store, tmp_path, workers):
        self.port = pick_port()
        self.workers = workers
        self.log = tmp_path / f"server-{self.port}.log"
        env = dict(os.environ, TRAFFIC_TEST_STORE=store)
        env["PYTHONPATH"] = os.pathsep.join([HERE, env.get("PYTHONPATH", "")])
        argv = [a.replace("{port}", str(self.port)) for a in argv]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, cwd=HERE, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        deadline = time.monotonic() + READY_S
        pids = set()
        while time.monotonic() < deadline and len(pids) < workers:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.output()}")
            try:
                status, _, body = request(self.port, "/health")
                if status == 200:
                    pids.add(json.loads(body)["pid"])
            except OSError:
                time.sleep(0.05)
        if not pids:
            self.stop()
            raise RuntimeError(f"server did not answer within {READY_S} s:\n{self.output()}")

    def output(self):
        return self.log.read_text(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the session this test started: server and workers
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def request(port, path, timeout=10.0):
    """One GET over a new connection: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def hammer(port):
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda _: request(port, "/limited"), range(REQUESTS)))


def check_exact(answers):
    passed = [a for a in answers if a[0] == 200]
    denied = [a for a in answers if a[0] == 429]
    assert len(passed) == LIMIT, f"{len(passed)} passed"
    assert len(denied) == REQUESTS - LIMIT
    for status, headers, body in answers:
        assert headers["x-ratelimit-limit"] == str(LIMIT)
        assert int(headers["x-ratelimit-reset"]) >= int(time.time())
    assert sorted(int(h["x-ratelimit-remaining"]) for _, h, _ in passed) == list(range(LIMIT))
    for _, headers, body in denied:
        assert headers["x-ratelimit-remaining"] == "0"
        assert 1 <= int(headers["retry-after"]) <= 120
        assert json.loads(body) == {"detail": "Rate limit exceeded"}
    return {json.loads(body)["pid"] for _, _, body in passed}


GUNICORN = [sys.executable, "-m", "gunicorn", "-k", "uvicorn.workers.UvicornWorker", "-w", "4",
            "-b", "127.0.0.1:{port}", "--graceful-timeout", "3", "limited_app:app"]
UVICORN = [sys.executable, "-m", "uvicorn", "limited_app:app", "--workers", "3", "--host", "127.0.0.1",
           "--port", "{port}"]


def run(argv, store, tmp_path, workers):
    server = Server(argv, store, tmp_path, workers)
    try:
        answers = hammer(server.port)
        pids = check_exact(answers)
        # several workers answered, so the 50 were counted across processes
        served_by = {json.loads(request(server.port, "/health")[2])["pid"] for _ in range(20)}
        assert len(pids | served_by) >= 2, f"only worker(s) {pids | served_by} answered"
        print(f"\n{store.split(':')[0]} {argv[2]}: {LIMIT}/{REQUESTS} passed across workers {sorted(pids)}")
    except BaseException:
        print(server.output())
        raise
    finally:
        server.stop()
    assert "PerProcessLimitWarning" not in server.output()


def test_gunicorn_preloaded_anonymous_memory(tmp_path):
    run(GUNICORN[:3] + ["--preload"] + GUNICORN[3:], "memory", tmp_path, 4)


def test_gunicorn_named_memory(tmp_path, table_name):
    run(GUNICORN, f"named:{table_name}", tmp_path, 4)


def test_gunicorn_sqlite(tmp_path):
    run(GUNICORN, f"sqlite:{tmp_path / 'limits.db'}", tmp_path, 4)


def redis_with_decisions(redis_harness):
    """A redis-server, after checking that this libtraffic decides on Redis (see conftest)."""
    import asyncio

    import traffic
    from conftest import needs_decisions

    server = redis_harness.server()

    async def probe():
        b = await traffic.RedisBackend.from_url(server.url)
        try:
            await needs_decisions(b)
        finally:
            await b.close()

    asyncio.run(probe())
    return server


def test_gunicorn_redis(tmp_path, redis_harness):
    server = redis_with_decisions(redis_harness)
    run(GUNICORN, f"redis:{server.url}", tmp_path, 4)
    server.stop()


def test_uvicorn_workers_named_memory(tmp_path, table_name):
    run(UVICORN, f"named:{table_name}", tmp_path, 3)


def test_per_process_store_shows_the_failure(tmp_path):
    """An anonymous table made in each worker (gunicorn without --preload): each worker counts
    for itself. The number that passes depends on how connections spread over the workers, so
    it is recorded, not asserted; the warning that points to the fix is asserted."""
    server = Server(GUNICORN, "memory", tmp_path, 4)
    try:
        answers = hammer(server.port)
    finally:
        server.stop()
    passed = [a for a in answers if a[0] == 200]
    pids = {json.loads(b)["pid"] for s, _, b in passed}
    print(f"\nper-process tables (gunicorn -w 4 without --preload, MemoryBackend()): {len(passed)}/{REQUESTS} "
          f"passed a limit of {LIMIT}, served by {len(pids)} workers")
    assert "PerProcessLimitWarning" in server.output()
    assert 'MemoryBackend(name="myapp")' in server.output()


def test_event_loop_serves_while_redis_is_frozen(tmp_path, redis_harness):
    """A limited request waiting on a SIGSTOPped Redis (up to its timeout) does not stop the
    same worker from answering other requests."""
    redis = redis_with_decisions(redis_harness)
    server = Server([sys.executable, "-m", "uvicorn", "limited_app:app", "--host", "127.0.0.1",
                     "--port", "{port}"], f"redis:{redis.url.replace('/0', '/0?timeout=3')}", tmp_path, 1)
    try:
        assert request(server.port, "/limited")[0] == 200  # connections made
        redis.pause(True)
        result = {}
        waiting = threading.Thread(target=lambda: result.update(r=request(server.port, "/limited", 30)))
        waiting.start()
        time.sleep(0.3)
        health = [request(server.port, "/health") for _ in range(5)]
        still_waiting = waiting.is_alive()
        redis.pause(False)
        waiting.join(30)
        assert all(h[0] == 200 for h in health)
        assert still_waiting, "the limited request finished before /health was served"
        assert result["r"][0] in (200, 500)  # 500: the store's timeout (skip_on_error=False)
        assert request(server.port, "/limited")[0] == 200  # recovered
    except BaseException:
        print(server.output())
        raise
    finally:
        redis.pause(False)
        server.stop()
        redis.stop()
