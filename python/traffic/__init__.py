"""traffic: rate limits that hold for the whole server, with fastapi_traffic's API.

A fastapi_traffic user changes an import and nothing else::

    from traffic import MemoryBackend, RateLimiter, rate_limit

    limiter = RateLimiter(MemoryBackend(name="myapp"))   # the RateLimiter that @rate_limit uses

    @app.on_event("startup")
    async def startup():
        await limiter.initialize()

    @app.get("/api")
    @rate_limit(100, 60)
    async def api(request: Request): ...

and the limit is 100 a minute for the whole server, however many gunicorn or uvicorn workers
serve it: the state lives in libtraffic's store (a shared-memory table, a SQLite file or
Redis), and each decision is one atomic step inside it.

The FastAPI/Starlette parts (rate_limit, RateLimitMiddleware, RateLimitDependency,
RateLimitExceeded) are imported on first use, so the backends work without Starlette.
Importing traffic offers the `limits` package (flask-limiter, slowapi) the storage URIs
traffic+memory://NAME, traffic+sqlite:///PATH, traffic+redis://... (traffic.limits_storage),
whichever of the two is imported first.
"""

import sys

from . import _traffic
from ._traffic import Decision, Rule
from .backends import Backend, MemoryBackend, PerProcessLimitWarning, RedisBackend, SQLiteBackend
from .errors import (
    BufferRangeError,
    CorruptError,
    CounterOverflowError,
    InvalidArgumentError,
    KeyNotFoundError,
    NotSupportedError,
    OutOfMemoryError,
    PermissionDeniedError,
    StoreFullError,
    StoreIOError,
    StoreTimeoutError,
    TooBigError,
    TrafficError,
    UnavailableError,
    WrongTypeError,
)
from .limiter import (
    Algorithm,
    RateLimitConfig,
    RateLimiter,
    RateLimitInfo,
    client_address,
    default_key_extractor,
    forwarded_key_extractor,
    get_limiter,
    make_rule,
    set_limiter,
)

__version__ = "0.1.0"

from . import _limits_hook  # noqa: E402

_limits_hook.register()  # the traffic+ URIs for the `limits` package: now, or when it is imported

_INTEGRATION = {"rate_limit", "RateLimitMiddleware", "RateLimitDependency", "RateLimitExceeded"}


def __getattr__(name):
    if name in _INTEGRATION:
        from . import integration

        return getattr(integration, name)
    raise AttributeError(f"module 'traffic' has no attribute {name!r}")


__all__ = [
    "Algorithm",
    "Backend",
    "BufferRangeError",
    "CorruptError",
    "CounterOverflowError",
    "Decision",
    "InvalidArgumentError",
    "KeyNotFoundError",
    "MemoryBackend",
    "NotSupportedError",
    "OutOfMemoryError",
    "PerProcessLimitWarning",
    "PermissionDeniedError",
    "RateLimitConfig",
    "RateLimitDependency",
    "RateLimitExceeded",
    "RateLimitInfo",
    "RateLimitMiddleware",
    "RateLimiter",
    "RedisBackend",
    "Rule",
    "SQLiteBackend",
    "StoreFullError",
    "StoreIOError",
    "StoreTimeoutError",
    "TooBigError",
    "TrafficError",
    "UnavailableError",
    "WrongTypeError",
    "client_address",
    "default_key_extractor",
    "forwarded_key_extractor",
    "get_limiter",
    "make_rule",
    "rate_limit",
    "set_limiter",
]
