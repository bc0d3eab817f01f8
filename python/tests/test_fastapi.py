"""@rate_limit, the middleware and the dependency in real FastAPI apps (Starlette's TestClient):
the issue's usage as written, headers, 429s, the seed's options, endpoints of every shape.

This module uses postponed annotations on purpose: FastAPI must still see the endpoints'
types through the decorator."""

from __future__ import annotations

import asyncio
import time

import pytest
from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.testclient import TestClient

import traffic
from traffic import (
    Algorithm,
    MemoryBackend,
    RateLimitDependency,
    RateLimiter,
    RateLimitMiddleware,
    rate_limit,
)
from test_limiter import DictBackend


@pytest.fixture
def table(table_name):
    return table_name


def test_the_issue_usage_as_written(table):
    app = FastAPI()
    limiter = RateLimiter(MemoryBackend(name=table))  # the RateLimiter that @rate_limit uses

    @app.on_event("startup")
    async def startup():
        await limiter.initialize()

    @app.on_event("shutdown")
    async def shutdown():
        await limiter.close()

    @app.get("/api")
    @rate_limit(3, 60)
    async def api(request: Request):
        return {"ok": True}

    with TestClient(app) as client:
        before = time.time()
        answers = [client.get("/api") for _ in range(5)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429, 429]
    assert answers[0].json() == {"ok": True}
    assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["2", "1", "0", "0", "0"]
    for a in answers:
        assert a.headers["X-RateLimit-Limit"] == "3"
        assert before < int(a.headers["X-RateLimit-Reset"]) <= before + 2 * 60 + 1
    denied = answers[3]
    assert denied.json() == {"detail": "Rate limit exceeded"}
    assert 1 <= int(denied.headers["Retry-After"]) <= 120
    assert "Retry-After" not in answers[0].headers


def test_endpoint_shapes():
    app = FastAPI()
    RateLimiter(MemoryBackend())

    @app.get("/noreq/{item_id}")
    @rate_limit(2, 60)
    async def no_request(item_id: int, q: str = "x"):
        return {"item_id": item_id, "q": q}

    @app.get("/sync")
    @rate_limit(2, 60)
    def sync_endpoint(request: Request):
        return {"sync": True}

    @app.get("/response-param")
    @rate_limit(2, 60)
    async def with_response(request: Request, response: Response):
        response.headers["X-Mine"] = "1"
        return {"ok": 1}

    @app.get("/returns-response")
    @rate_limit(2, 60)
    async def returns_response(request: Request):
        return PlainTextResponse("plain")

    @app.post("/body")
    @rate_limit(2, 60)
    async def with_body(payload: dict, request: Request):
        return payload

    with TestClient(app) as client:
        r = client.get("/noreq/7?q=hello")
        assert r.status_code == 200 and r.json() == {"item_id": 7, "q": "hello"}
        assert r.headers["X-RateLimit-Remaining"] == "1"
        assert client.get("/noreq/x").status_code == 422  # validation still works through the wrapper
        r = client.get("/sync")
        assert r.status_code == 200 and r.json() == {"sync": True} and r.headers["X-RateLimit-Limit"] == "2"
        r = client.get("/response-param")
        assert r.headers["X-Mine"] == "1" and r.headers["X-RateLimit-Remaining"] == "1"
        r = client.get("/returns-response")
        assert r.text == "plain" and r.headers["X-RateLimit-Remaining"] == "1"
        r = client.post("/body", json={"a": 1})
        assert r.json() == {"a": 1} and r.headers["X-RateLimit-Remaining"] == "1"
        # each endpoint has its own limit
        for path in ("/noreq/1", "/sync", "/response-param", "/returns-response"):
            assert client.get(path).status_code == 200
            assert client.get(path).status_code == 429
        assert client.post("/body", json={}).status_code == 200
        assert client.post("/body", json={}).status_code == 429
    # FastAPI's schema shows the endpoint's own parameters, not the ones the wrapper adds
    params = [p["name"] for p in app.openapi()["paths"]["/noreq/{item_id}"]["get"]["parameters"]]
    assert params == ["item_id", "q"]


def test_seed_options():
    app = FastAPI()
    RateLimiter(MemoryBackend())
    blocked = []

    @app.get("/custom")
    @rate_limit(1, 60, status_code=503, error_message="slow down", include_headers=False)
    async def custom(request: Request):
        return {}

    @app.get("/cost")
    @rate_limit(10, 60, algorithm=Algorithm.FIXED_WINDOW, cost=4)
    async def cost(request: Request):
        return {}

    @app.get("/exempt")
    @rate_limit(1, 60, exempt_when=lambda request: request.headers.get("x-admin") == "yes")
    async def exempt(request: Request):
        return {}

    async def on_blocked(request, info):
        blocked.append(info)
        return JSONResponse({"custom": "blocked", "retry": info.retry_after > 0}, status_code=418)

    @app.get("/onblocked")
    @rate_limit(1, 60, on_blocked=on_blocked)
    async def onblocked(request: Request):
        return {}

    @app.get("/onblocked-none")
    @rate_limit(1, 60, on_blocked=lambda request, info: blocked.append("none"))
    async def onblocked_none(request: Request):
        return {}

    @app.get("/by-key")
    @rate_limit(1, 60, key_extractor=lambda request: request.headers.get("x-api-key", "anon"))
    async def by_key(request: Request):
        return {}

    @app.get("/token")
    @rate_limit(100, 60, algorithm=Algorithm.TOKEN_BUCKET, burst_size=2, key_prefix="tok")
    async def token(request: Request):
        return {}

    with TestClient(app) as client:
        assert client.get("/custom").status_code == 200
        r = client.get("/custom")
        assert r.status_code == 503 and r.json() == {"detail": "slow down"}
        assert "X-RateLimit-Limit" not in r.headers and "Retry-After" not in r.headers
        assert [client.get("/cost").status_code for _ in range(3)] == [200, 200, 429]
        assert client.get("/exempt").status_code == 200
        assert client.get("/exempt").status_code == 429
        assert client.get("/exempt", headers={"x-admin": "yes"}).status_code == 200
        assert client.get("/onblocked").status_code == 200
        r = client.get("/onblocked")
        assert r.status_code == 418 and r.json() == {"custom": "blocked", "retry": True}
        assert r.headers["Retry-After"] and blocked and blocked[0].allowed is False
        assert client.get("/onblocked-none").status_code == 200
        assert client.get("/onblocked-none").status_code == 429 and blocked[-1] == "none"
        assert client.get("/by-key", headers={"x-api-key": "a"}).status_code == 200
        assert client.get("/by-key", headers={"x-api-key": "b"}).status_code == 200
        assert client.get("/by-key", headers={"x-api-key": "a"}).status_code == 429
        assert [client.get("/token").status_code for _ in range(3)] == [200, 200, 429]
        assert client.get("/token").headers["X-RateLimit-Limit"] == "2"


class FailingBackend(DictBackend):
    async def get(self, key):
        raise traffic.UnavailableError("the store is down", -8)


def test_skip_on_error():
    app = FastAPI()
    limiter = RateLimiter(FailingBackend())

    @app.get("/open")
    @rate_limit(1, 60, skip_on_error=True, limiter=limiter)
    async def fail_open(request: Request):
        return {"served": True}

    @app.get("/closed")
    @rate_limit(1, 60, limiter=limiter)
    async def fail_closed(request: Request):
        return {"served": True}

    with TestClient(app, raise_server_exceptions=False) as client:
        assert [client.get("/open").status_code for _ in range(3)] == [200, 200, 200]
        assert client.get("/closed").status_code == 500


def test_skip_on_error_on_memory():
    """The memory backend's fast path in @rate_limit honours skip_on_error too: a key that holds
    a plain value (TRAFFIC_ETYPE for a decision) passes with skip_on_error, fails without."""
    app = FastAPI()
    limiter = RateLimiter(MemoryBackend())

    @app.get("/open")
    @rate_limit(1, 60, skip_on_error=True, limiter=limiter, key_extractor=lambda request: "k")
    async def fail_open(request: Request):
        return {"served": True}

    @app.get("/closed")
    @rate_limit(1, 60, limiter=limiter, key_extractor=lambda request: "k")
    async def fail_closed(request: Request):
        return {"served": True}

    for endpoint in (fail_open, fail_closed):
        key = f"ratelimit:{traffic.integration._endpoint_id(endpoint.__wrapped__)}:k"
        asyncio.run(limiter.backend.set(key, "not a state", ttl=60))
    with TestClient(app, raise_server_exceptions=False) as client:
        assert [client.get("/open").status_code for _ in range(3)] == [200, 200, 200]
        assert "X-RateLimit-Limit" not in client.get("/open").headers
        assert client.get("/closed").status_code == 500


def test_limiter_subclass_hit_is_called():
    """A RateLimiter subclass that overrides hit (metrics, logging) is called by @rate_limit on
    the memory backend too (its fast path is only for RateLimiter's own hit); a key_prefix
    changed on the config after decoration is used."""
    calls = []

    class Counting(RateLimiter):
        async def hit(self, key, config, cost=None):
            calls.append(key)
            return await super().hit(key, config, cost)

    app = FastAPI()
    counting = Counting(MemoryBackend())
    plain = RateLimiter(MemoryBackend())

    @app.get("/counted")
    @rate_limit(2, 60, limiter=counting)
    async def counted(request: Request):
        return {}

    @app.get("/prefixed")
    @rate_limit(5, 60, limiter=plain, key_extractor=lambda request: "c")
    async def prefixed(request: Request):
        return {}

    prefixed.rate_limit_config.key_prefix = "changed"
    with TestClient(app) as client:
        assert [client.get("/counted").status_code for _ in range(3)] == [200, 200, 429]
        assert len(calls) == 3
        assert client.get("/prefixed").status_code == 200
    key = f"changed:{traffic.integration._endpoint_id(prefixed.__wrapped__)}:c"
    assert asyncio.run(plain.backend.exists(key))


def test_custom_backend_in_an_app():
    app = FastAPI()
    backend = DictBackend()
    RateLimiter(backend)

    @app.get("/api")
    @rate_limit(2, 60, algorithm=Algorithm.SLIDING_WINDOW)
    async def api(request: Request):
        return {}

    with TestClient(app) as client:
        assert [client.get("/api").status_code for _ in range(4)] == [200, 200, 429, 429]
    (key,) = [k for k in backend.data if k.startswith("ratelimit:")]
    assert backend.data[key][0]["algorithm"] == "sliding_window" and len(backend.data[key][0]["log"]) == 2


def test_leaky_bucket_delay_is_awaited():
    app = FastAPI()
    RateLimiter(MemoryBackend())
    served = []

    @app.get("/leaky")
    @rate_limit(4, 2.0, algorithm=Algorithm.LEAKY_BUCKET, burst_size=1)  # one leaves every 0.5 s
    async def leaky(request: Request):
        served.append(time.monotonic())
        return {}

    @app.get("/other")
    async def other():
        served.append(("other", time.monotonic()))
        return {}

    async def run():
        import httpx

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            start = time.monotonic()
            first, second, third, other_r = await asyncio.gather(
                client.get("/leaky"), client.get("/leaky"), _later(client.get("/leaky"), 0.05),
                _later(client.get("/other"), 0.1))
            return start, first, second, other_r, third

    start, first, second, other_r, third = asyncio.run(run())
    assert first.status_code == 200 and second.status_code == 200 and other_r.status_code == 200
    leaky_times = sorted(t for t in served if not isinstance(t, tuple))
    other_time = [t for tag, t in (s for s in served if isinstance(s, tuple))][0]
    # the second request was held for its delay (about 0.5 s) before the endpoint ran...
    assert leaky_times[1] - start >= 0.45
    # ...and the worker served another request meanwhile
    assert other_time < leaky_times[1]
    assert third.status_code == 429  # the queue (burst 1) is full meanwhile
    assert int(third.headers["Retry-After"]) >= 1


async def _later(coro, delay):
    await asyncio.sleep(delay)
    return await coro


def test_middleware():
    app = FastAPI()
    limiter = RateLimiter(MemoryBackend())
    app.add_middleware(RateLimitMiddleware, limit=3, window_size=60, limiter=limiter,
                       exempt_paths=["/health", "/static/"])

    @app.get("/a")
    async def a():
        return {"a": 1}

    @app.get("/b")
    async def b():
        return PlainTextResponse("b")

    @app.get("/health")
    async def health():
        return {}

    @app.get("/static/x")
    async def static():
        return {}

    with TestClient(app) as client:
        codes = [client.get("/a").status_code, client.get("/b").status_code, client.get("/a").status_code]
        assert codes == [200, 200, 200]
        r = client.get("/b")
        assert r.status_code == 429 and r.json() == {"detail": "Rate limit exceeded"}
        assert r.headers["X-RateLimit-Limit"] == "3" and int(r.headers["Retry-After"]) >= 1
        for _ in range(5):
            assert client.get("/health").status_code == 200
            assert client.get("/static/x").status_code == 200
    assert "X-RateLimit-Limit" not in TestClient(app).get("/health").headers


def test_middleware_headers_on_allowed():
    app = FastAPI()
    app.add_middleware(RateLimitMiddleware, limit=5, window_size=60, limiter=RateLimiter(MemoryBackend()))

    @app.get("/")
    async def root():
        return {}

    with TestClient(app) as client:
        r = client.get("/")
        assert r.status_code == 200 and r.headers["X-RateLimit-Remaining"] == "4"


def test_dependency():
    app = FastAPI()
    RateLimiter(MemoryBackend())
    per_route = RateLimitDependency(2, 60)

    @app.get("/dep")
    async def dep(info=Depends(per_route)):
        return {"remaining": info.remaining}

    @app.get("/dep2", dependencies=[Depends(RateLimitDependency(1, 60, algorithm=Algorithm.FIXED_WINDOW))])
    async def dep2():
        return {}

    with TestClient(app) as client:
        r = client.get("/dep")
        assert r.json() == {"remaining": 1} and r.headers["X-RateLimit-Remaining"] == "1"
        assert client.get("/dep").status_code == 200
        r = client.get("/dep")
        assert r.status_code == 429 and "Retry-After" in r.headers
        assert client.get("/dep2").status_code == 200
        assert client.get("/dep2").status_code == 429
