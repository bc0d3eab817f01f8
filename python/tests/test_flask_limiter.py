"""End to end: flask-limiter on traffic+memory://NAME under gunicorn -w 4 (sync workers, the app
loaded in each worker after the fork), for each of limits' strategies: 200 requests, each over
a fresh connection, from 8 client threads -> exactly 50 of @limiter.limit("50/minute") pass
across the workers, with flask-limiter's headers. The same app on limits' own memory://
(a store per worker) shows what users get today: recorded, not asserted.
"""

import json
import sys
import time

import pytest

from test_servers import LIMIT, REQUESTS, Server, hammer, request

GUNICORN = [sys.executable, "-m", "gunicorn", "-w", "4", "-b", "127.0.0.1:{port}", "--graceful-timeout", "3",
            "flask_limited_app:app"]
STRATEGIES = ["fixed-window", "fixed-window-elastic-expiry", "moving-window"]


def serve(strategy, uri, tmp_path):
    server = Server(GUNICORN, f"{strategy} {uri}", tmp_path, 4)
    try:
        answers = hammer(server.port)
        served_by = {json.loads(request(server.port, "/health")[2])["pid"] for _ in range(20)}
    except BaseException:
        print(server.output())
        raise
    finally:
        server.stop()
    return answers, served_by


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_gunicorn_workers_share_the_limit(strategy, tmp_path, table_name):
    # value_max: the moving window's log of 50 requests takes 8 + 8 x 50 bytes
    answers, served_by = serve(strategy, f"traffic+memory://{table_name}?value_max=512", tmp_path)
    passed = [a for a in answers if a[0] == 200]
    denied = [a for a in answers if a[0] == 429]
    assert len(passed) == LIMIT and len(denied) == REQUESTS - LIMIT, [a[0] for a in answers]
    now = time.time()
    for status, headers, _ in answers:
        assert headers["x-ratelimit-limit"] == str(LIMIT)
        assert now - 5 <= int(headers["x-ratelimit-reset"]) <= now + 60 * 9 / 8 + 1
        assert 0 <= int(headers["retry-after"]) <= 60 * 9 / 8 + 1
    # remaining is read after the hit, while other workers hit too: at most what was left
    assert all(0 <= int(h["x-ratelimit-remaining"]) < LIMIT for _, h, _ in passed)
    assert all(h["x-ratelimit-remaining"] == "0" for _, h, _ in denied)
    pids = {json.loads(body)["pid"] for _, _, body in passed}
    assert len(pids | served_by) >= 2, f"only worker(s) {pids | served_by} answered"
    print(f"\nflask-limiter {strategy} on traffic+memory://NAME, gunicorn -w 4: {len(passed)}/{REQUESTS} passed "
          f"across workers {sorted(pids)}")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_limits_own_memory_is_per_worker(strategy, tmp_path):
    answers, _ = serve(strategy, "memory://", tmp_path)
    passed = [a for a in answers if a[0] == 200]
    pids = {json.loads(body)["pid"] for _, _, body in passed}
    print(f"\nflask-limiter {strategy} on memory://, gunicorn -w 4: {len(passed)}/{REQUESTS} passed a limit of "
          f"{LIMIT}, served by {len(pids)} workers")
