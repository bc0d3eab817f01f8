"""What one `limits` hit() costs on traffic's storages against limits' own, in one process.

    PYTHONPATH=build/python /usr/bin/python3 bench/limits_bench.py [--n 200000] [--redis HOST:PORT]

For each strategy of limits (FixedWindowRateLimiter, FixedWindowElasticExpiryRateLimiter,
MovingWindowRateLimiter): sequential limiter.hit(item, key) calls that all pass (CASES), best
of --rounds rounds. Stores: limits' own memory:// (per process) and, with --redis, its
redis:// (redis-py) next to traffic+redis://; traffic+memory://NAME, traffic+sqlite://. SQLite
and Redis run n / 50 hits a round.
"""

import argparse
import os
import platform
import tempfile
import time

import traffic  # noqa: F401  (registers the traffic+ storage URIs)
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import FixedWindowElasticExpiryRateLimiter, FixedWindowRateLimiter, MovingWindowRateLimiter

# (column, strategy, item, hits per key): every hit passes. The moving window keeps a log of
# the admissions of the last hour, so its cost grows with the log: 100 per hour (keys rotate
# every 100 hits, the log averages 50), and 8000 per hour on one key (a memory table with
# value_max=65536, the largest, holds a log of 8191).
CASES = [
    ("FixedWindow", FixedWindowRateLimiter, parse("1000000/hour"), None),
    ("ElasticExpiry", FixedWindowElasticExpiryRateLimiter, parse("1000000/hour"), None),
    ("MovingWindow 100/h", MovingWindowRateLimiter, parse("100/hour"), 100),
    ("MovingWindow 8000/h", MovingWindowRateLimiter, parse("8000/hour"), 8000),
]


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def best(storage, strategy, item, per_key, n, rounds):
    limiter = strategy(storage)
    hit = limiter.hit
    per_key = per_key or n
    n = max(per_key, n - n % per_key)
    results = []
    for r in range(rounds):
        keys = [f"bench-{strategy.__name__}-{r}-{time.monotonic_ns()}-{k}" for k in range(n // per_key)]
        t = time.perf_counter()
        for key in keys:
            for _ in range(per_key):
                hit(item, key)
        results.append((time.perf_counter() - t) / n)
        assert limiter.get_window_stats(item, keys[-1])[1] == item.amount - per_key, "every hit must pass"
    return min(results) * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--redis", help="HOST:PORT of a redis-server to measure limits' redis:// and traffic+redis:// on")
    args = ap.parse_args()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}")
    name = f"bench.limits.{os.getpid()}"
    with tempfile.TemporaryDirectory() as tmp:
        stores = [("memory:// (limits')", "memory://", args.n),
                  ("traffic+memory://NAME", f"traffic+memory://{name}?value_max=65536", args.n),
                  ("traffic+sqlite://", f"traffic+sqlite://{tmp}/bench.db", max(args.n // 50, 100))]
        if args.redis:
            stores += [("redis:// (limits', redis-py)", f"redis://{args.redis}", max(args.n // 50, 100)),
                       ("traffic+redis://", f"traffic+redis://{args.redis}/0?prefix=bench:", max(args.n // 50, 100))]
        print(f"{'store':<30}" + "".join(f"{c[0]:>22}" for c in CASES))
        for label, uri, n in stores:
            storage = storage_from_string(uri)
            figures = [best(storage, strategy, item, per_key, n, args.rounds) for _, strategy, item, per_key in CASES]
            print(f"{label:<30}" + "".join(f"{us:19.2f} us" for us in figures), flush=True)
            if hasattr(storage, "close"):
                storage.close()
            if hasattr(storage, "timer"):
                storage.timer.cancel()
    traffic.MemoryBackend.unlink(name)


if __name__ == "__main__":
    main()
