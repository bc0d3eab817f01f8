"""The FastAPI app of bench/python_http.sh: one endpoint, limited per client (a limit high
enough that every request passes, so each figure is the cost of deciding, not of refusing).
TRAFFIC_BENCH_STORE picks the limiter:

    none                no limiter (the baseline)
    headers             no limiter, but the three X-RateLimit-* headers a passing request gets
                        (fixed values): what sending them costs the HTTP server by itself
    memory              @rate_limit on MemoryBackend() (anonymous, run with gunicorn --preload)
    redis:URL           @rate_limit on RedisBackend.from_url(URL)
    limits:URL          the `limits` package (python3-limits): FixedWindowRateLimiter on its
                        RedisStorage (redis-py), called from the endpoint as slowapi does
"""

import os

from fastapi import FastAPI, Request

store = os.environ.get("TRAFFIC_BENCH_STORE", "none")
kind, _, arg = store.partition(":")
LIMIT = 1_000_000  # the most a window algorithm counts exactly is 2^20 - 1
app = FastAPI()

if kind in ("memory", "redis"):
    from traffic import MemoryBackend, RateLimiter, RedisBackend, rate_limit

    limiter = RateLimiter(MemoryBackend()) if kind == "memory" else None

    @app.on_event("startup")
    async def startup():
        global limiter
        if kind == "redis":
            limiter = RateLimiter(await RedisBackend.from_url(arg, key_prefix="bench:"))
        await limiter.initialize()

    @app.get("/")
    @rate_limit(LIMIT, 60)
    async def root(request: Request):
        return {"ok": True}

elif kind == "limits":
    from limits import RateLimitItemPerMinute
    from limits.storage import RedisStorage
    from limits.strategies import FixedWindowRateLimiter

    item = RateLimitItemPerMinute(LIMIT)
    storage = strategy = None

    @app.on_event("startup")
    async def startup():  # in each worker: redis-py's connections do not survive the fork
        global storage, strategy
        storage = RedisStorage(arg)  # the strategy keeps only a weak reference to it
        strategy = FixedWindowRateLimiter(storage)

    @app.get("/")
    async def root(request: Request):
        if not strategy.hit(item, "bench", request.client.host):
            return {"limited": True}
        return {"ok": True}

elif kind == "headers":
    from fastapi import Response

    RAW = [(b"x-ratelimit-limit", b"1000000"), (b"x-ratelimit-remaining", b"999999"),
           (b"x-ratelimit-reset", b"1767225600")]

    @app.get("/")
    async def root(request: Request, response: Response):
        response.raw_headers.extend(RAW)
        return {"ok": True}

else:

    @app.get("/")
    async def root(request: Request):
        return {"ok": True}
