"""Micro-benchmark of the Python package: what one call costs from asyncio, per backend.

    PYTHONPATH=build/python /usr/bin/python3 bench/python_bench.py [--n 200000] [--redis URL] [--sqlite PATH]

Each figure is the best of --rounds rounds of --n sequential awaited calls on one key, in one
event loop, in one process (so ratios within a run compare like with like):

    C increment             _traffic.Store.increment called directly (the floor: the C call)
    await increment         await MemoryBackend.increment(key)            (issue target <= 2 us)
    await limiter.hit       await RateLimiter.hit(key, config): one decision   (target <= 3 us)
    await limiter.check     the same from a request: client key, prefix, RateLimitInfo
    decorated endpoint      a request through @rate_limit's wrapper, headers included

SQLite and Redis calls run in a thread pool (the GIL released), so their figure is mostly the
hand-off to a thread and back, plus the store's own work.
"""

import argparse
import asyncio
import os
import platform
import tempfile
import time

import traffic
from traffic import Algorithm, RateLimitConfig, RateLimiter


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


async def best(label, n, rounds, make_call, per=1):
    results = []
    for _ in range(rounds):
        call = make_call()
        t = time.perf_counter()
        await call(n)
        results.append((time.perf_counter() - t) / n / per)
    us = min(results) * 1e6
    print(f"  {label:<28} {us:8.3f} us/call")
    return us


class FakeRequest:
    """What the limiter reads of a Starlette request: its ASGI scope."""

    def __init__(self):
        self.scope = {"type": "http", "client": ("203.0.113.7", 50000), "headers": []}


async def bench_backend(name, backend, n, rounds):
    print(f"{name}:")
    limiter = RateLimiter(backend)
    await limiter.initialize()
    await backend.clear()
    config = RateLimitConfig(limit=10**6, window_size=3600, algorithm=Algorithm.SLIDING_WINDOW_COUNTER)
    request = FakeRequest()
    out = {}

    if isinstance(backend, traffic.MemoryBackend):
        store = backend._store

        async def c_increment(k):
            inc = store.increment
            for _ in range(k):
                inc("bench:c")

        out["c"] = await best("C increment", n, rounds, lambda: c_increment)

    async def increment(k):
        for _ in range(k):
            await backend.increment("bench:inc")

    async def hit(k):
        for _ in range(k):
            await limiter.hit("bench:hit", config)

    async def check(k):
        for _ in range(k):
            await limiter.check(request, config)

    out["increment"] = await best("await increment", n, rounds, lambda: increment)
    try:
        out["hit"] = await best("await limiter.hit", n, rounds, lambda: hit)
        out["check"] = await best("await limiter.check", n, rounds, lambda: check)
    except traffic.NotSupportedError as e:
        print(f"  decisions: {e}")
    await limiter.close()
    return out


async def bench_decorator(n, rounds):
    """A request through @rate_limit's wrapper as FastAPI calls it (no HTTP, no routing)."""
    from starlette.requests import Request
    from starlette.responses import Response

    limiter = RateLimiter(traffic.MemoryBackend())
    await limiter.initialize()

    async def endpoint(request: Request):
        return {"ok": True}

    limited = traffic.rate_limit(10**6, 3600)(endpoint)
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "client": ("203.0.113.7", 1),
             "query_string": b""}

    async def plain(k):
        for _ in range(k):  # FastAPI makes the Request and a Response for the headers either way
            Response()
            await endpoint(Request(scope))

    async def decorated(k):
        for _ in range(k):
            await limited(request=Request(scope), _traffic_response=Response())

    print("@rate_limit (memory):")
    base = await best("endpoint alone", n, rounds, lambda: plain)
    full = await best("decorated endpoint", n, rounds, lambda: decorated)
    print(f"  {'the decorator adds':<28} {full - base:8.3f} us/request")
    await limiter.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--redis", help="redis:// URL of a server to measure too")
    ap.add_argument("--sqlite", help="SQLite file to measure too (default: a temporary one)")
    args = ap.parse_args()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}")
    await bench_backend("memory://", traffic.MemoryBackend(), args.n, args.rounds)
    await bench_decorator(args.n, args.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.sqlite or os.path.join(tmp, "bench.db")
        await bench_backend(f"sqlite ({path})", traffic.SQLiteBackend(path), max(args.n // 50, 100), args.rounds)
    if args.redis:
        backend = await traffic.RedisBackend.from_url(args.redis, key_prefix="bench:")
        await bench_backend(f"redis ({args.redis})", backend, max(args.n // 50, 100), args.rounds)


if __name__ == "__main__":
    asyncio.run(main())
