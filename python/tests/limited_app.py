"""The FastAPI app the server tests run under gunicorn and uvicorn: @rate_limit(50, 60), as a
user would write it. TRAFFIC_TEST_STORE picks the store:

    memory              MemoryBackend(), made at import (shared when gunicorn --preload forks)
    named:NAME          MemoryBackend(name=NAME)
    sqlite:PATH         SQLiteBackend(PATH)
    redis:URL           await RedisBackend.from_url(URL) at startup, as the seed's docs do it
"""

import os

from fastapi import FastAPI, Request

from traffic import MemoryBackend, RateLimiter, RedisBackend, SQLiteBackend, rate_limit

store = os.environ["TRAFFIC_TEST_STORE"]
kind, _, arg = store.partition(":")
app = FastAPI()
limiter = None

if kind == "memory":
    limiter = RateLimiter(MemoryBackend())
elif kind == "named":
    limiter = RateLimiter(MemoryBackend(name=arg))
elif kind == "sqlite":
    limiter = RateLimiter(SQLiteBackend(arg))
elif kind != "redis":
    raise SystemExit(f"unknown TRAFFIC_TEST_STORE {store!r}")


@app.on_event("startup")
async def startup():
    global limiter
    if kind == "redis":
        limiter = RateLimiter(await RedisBackend.from_url(arg, key_prefix="e2e:"))
    await limiter.initialize()


@app.on_event("shutdown")
async def shutdown():
    await limiter.close()


@app.get("/limited")
@rate_limit(50, 60)
async def limited(request: Request):
    return {"pid": os.getpid()}


@app.get("/health")
async def health():
    return {"pid": os.getpid()}
