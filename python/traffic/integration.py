"""FastAPI / Starlette: the @rate_limit decorator, a dependency and an ASGI middleware.

All three make one decision per request (RateLimiter.hit: one traffic_limit call on the
built-in backends), answer a denied request with ``status_code`` (429), ``{"detail":
error_message}`` and the headers X-RateLimit-Limit / -Remaining / -Reset and Retry-After, and
add the first three to every allowed response. An allowed request of the leaky bucket is held
for its ``delay`` (asyncio.sleep, so the worker serves others meanwhile) before the endpoint
runs: that is what makes the bucket leak evenly.

Keys: ``{key_prefix}:{where}:{client}``, where ``where`` names the limit's place the same way
in every worker - the endpoint function's module and name for the decorator, the route's
method and path for the dependency, "global" for the middleware.

@rate_limit works on any endpoint, whether or not it declares ``request: Request`` or
``response: Response``: the wrapper's signature gets the ones it lacks (FastAPI fills them in)
and passes the endpoint only what it asked for.
"""

import asyncio
import functools
import inspect
import typing

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .errors import TrafficError
from .limiter import (
    Algorithm,
    RateLimitConfig,
    RateLimiter,
    RateLimitInfo,
    default_key_extractor,
    fit_key,
    get_limiter,
)


class RateLimitExceeded(HTTPException):
    """A denied request: FastAPI answers it with status_code, {"detail": ...} and the headers."""

    def __init__(self, message="Rate limit exceeded", *, status_code=429, headers=None, info=None):
        super().__init__(status_code=status_code, detail=message, headers=headers)
        self.info = info
        self.retry_after = info.retry_after if info is not None else None


async def _maybe_await(value):
    if inspect.isawaitable(value):
        return await value
    return value


async def _decide(request, config, where, limiter=None):
    """The request's RateLimitInfo, or None when exempt (or skipped on an error). Raises
    RateLimitExceeded when denied (_Reply when on_blocked answered instead)."""
    if config.exempt_when is not None and await _maybe_await(config.exempt_when(request)):
        return None
    limiter = limiter or get_limiter()
    try:
        key = _key(request, config, where, limiter)
        decision = await limiter.hit(key, config)
    except TrafficError:
        if config.skip_on_error:
            return None
        raise
    info = RateLimitInfo(decision, key)
    if not decision.allowed:
        await _refuse(request, config, info)
    if decision.delay > 0:
        await asyncio.sleep(decision.delay)
    return info


def _key(request, config, where, limiter):
    """The store key of request's client: {key_prefix}:{where}:{client}."""
    return fit_key(f"{config.key_prefix}:{where}:{limiter.client_key(request, config)}")


async def _refuse(request, config, info):
    """A denied request: raises RateLimitExceeded, or _Reply with on_blocked's Response."""
    headers = info.headers() if config.include_headers else None
    if config.on_blocked is not None:
        reply = await _maybe_await(config.on_blocked(request, info))
        if isinstance(reply, Response):
            if headers:
                reply.headers.update(headers)
            raise _Reply(reply)
    raise RateLimitExceeded(config.error_message, status_code=config.status_code, headers=headers, info=info)


def _set_headers(response, raw):
    """Sets the (name, value) bytes pairs on a Starlette Response, replacing any it has."""
    headers = response.headers
    for name, value in raw:
        headers[name.decode("latin-1")] = value.decode("latin-1")


class _Reply(Exception):
    """on_blocked returned a Response: send it instead of the 429."""

    def __init__(self, response):
        super().__init__()
        self.response = response


def _endpoint_id(func):
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


def _resolved_signature(func):
    """func's signature with string annotations resolved in func's own globals (the wrapper
    lives in this module, where FastAPI would look them up otherwise)."""
    sig = inspect.signature(func)
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception:
        return sig
    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()]
    return sig.replace(parameters=params, return_annotation=hints.get("return", sig.return_annotation))


def _find(sig, cls):
    for p in sig.parameters.values():
        ann = p.annotation
        if isinstance(ann, type) and issubclass(ann, cls):
            return p.name
    return None


def rate_limit(
    limit,
    window_size=60.0,
    *,
    algorithm=Algorithm.SLIDING_WINDOW_COUNTER,
    key_prefix="ratelimit",
    key_extractor=default_key_extractor,
    burst_size=None,
    include_headers=True,
    error_message="Rate limit exceeded",
    status_code=429,
    skip_on_error=False,
    cost=1,
    exempt_when=None,
    on_blocked=None,
    limiter=None,
):
    """Limits a FastAPI endpoint to `limit` requests per `window_size` seconds per client.

    ``limiter`` (an addition to the seed's arguments) picks a RateLimiter; by default the one
    get_limiter() returns at each request - the last RateLimiter created.
    """
    config = RateLimitConfig(
        limit=limit,
        window_size=window_size,
        algorithm=algorithm,
        key_prefix=key_prefix,
        key_extractor=key_extractor,
        burst_size=burst_size,
        include_headers=include_headers,
        error_message=error_message,
        status_code=status_code,
        skip_on_error=skip_on_error,
        cost=cost,
        exempt_when=exempt_when,
        on_blocked=on_blocked,
    )

    def decorator(func):
        sig = _resolved_signature(func)
        request_name = _find(sig, Request)
        response_name = _find(sig, Response)
        params = list(sig.parameters.values())
        # Parameters FastAPI should fill for us, placed before any **kwargs.
        extra = []
        if request_name is None:
            extra.append(inspect.Parameter("_traffic_request", inspect.Parameter.KEYWORD_ONLY, annotation=Request))
        if response_name is None:
            extra.append(inspect.Parameter("_traffic_response", inspect.Parameter.KEYWORD_ONLY, annotation=Response))
        var_kw = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
        params = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD] + extra + var_kw
        is_async = asyncio.iscoroutinefunction(func)
        where = _endpoint_id(func)
        req_key = request_name or "_traffic_request"
        resp_key = response_name or "_traffic_response"

        @functools.wraps(func)
        async def wrapper(*args, **kwargs):
            request = kwargs[req_key] if request_name else kwargs.pop(req_key, None)
            response = kwargs[resp_key] if response_name else kwargs.pop(resp_key, None)
            if request is None:  # called directly, not by FastAPI: find the request among the arguments
                request = next((a for a in args if isinstance(a, Request)), None)
            raw = None  # the headers to add to the reply
            if request is not None:
                lim = limiter or get_limiter()
                # Only for RateLimiter's own hit: a subclass that overrides it (metrics, logging)
                # is called on every backend, as by the dependency and the middleware.
                limit_now = None
                if config.exempt_when is None and getattr(type(lim), "hit", None) is RateLimiter.hit:
                    limit_now = getattr(lim.backend, "_limit_now", None)
                if limit_now is None:  # any backend: through RateLimiter.hit
                    try:
                        info = await _decide(request, config, where, lim)
                    except _Reply as r:
                        return r.response
                    if info is not None and config.include_headers:
                        raw = info.raw_headers()
                else:
                    # The memory backend's fast path: the decision and the headers are one C
                    # call each, with no coroutine between (what _decide does, less its
                    # Python-level objects on the way of a request that passes).
                    try:
                        key = _key(request, config, where, lim)
                        decision = limit_now(key, config.rule, config.cost)
                    except TrafficError:
                        if not config.skip_on_error:
                            raise
                        decision = None
                    if decision is not None:
                        if not decision.allowed:
                            try:
                                await _refuse(request, config, RateLimitInfo(decision, key))
                            except _Reply as r:
                                return r.response
                        if config.include_headers:  # X-RateLimit-Reset counts from the decision
                            raw = decision.raw_headers()
                        if decision.delay > 0:
                            await asyncio.sleep(decision.delay)
            if is_async:
                result = await func(*args, **kwargs)
            else:
                result = await run_in_threadpool(func, *args, **kwargs)
            if raw is not None:
                if isinstance(result, Response):
                    _set_headers(result, raw)
                elif response is not None:
                    if response_name:  # the endpoint's own: it may have set these already
                        _set_headers(response, raw)
                    else:  # FastAPI's fresh one, whose headers FastAPI copies to the reply
                        response.raw_headers.extend(raw)
            return result

        wrapper.__signature__ = sig.replace(parameters=_ordered(params))
        wrapper.rate_limit_config = config
        return wrapper

    return decorator


def _ordered(params):
    """Parameters in a valid order: keyword-only ones after the positional ones."""
    kinds = [inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
             inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD]
    return sorted(params, key=lambda p: kinds.index(p.kind))


class RateLimitDependency:
    """``Depends(RateLimitDependency(100, 60))``: the same limit as a FastAPI dependency
    (on a route, a router or the whole app). Returns the RateLimitInfo (None when exempt)."""

    def __init__(self, limit, window_size=60.0, *, limiter=None, **options):
        self.config = RateLimitConfig(limit=limit, window_size=window_size, **options)
        self.limiter = limiter

    async def __call__(self, request: Request, response: Response):
        route = request.scope.get("route")
        where = f"{request.method}:{getattr(route, 'path', None) or request.url.path}"
        try:
            info = await _decide(request, self.config, where, self.limiter)
        except _Reply as r:
            # A dependency cannot return a response: send on_blocked's through the exception.
            raise HTTPException(status_code=r.response.status_code, detail=r.response.body.decode(errors="replace"),
                                headers=dict(r.response.headers)) from None
        if info is not None and self.config.include_headers:
            response.headers.update(info.headers())
        return info


class RateLimitMiddleware:
    """An ASGI middleware that limits every HTTP request of the app per client:
    ``app.add_middleware(RateLimitMiddleware, limit=1000, window_size=60)``.

    ``exempt_paths`` are paths (exact, or prefixes ending in "/") left alone; the other
    arguments are @rate_limit's. Keys: ``{key_prefix}:global:{client}``.
    """

    def __init__(self, app, *, limit=100, window_size=60.0, limiter=None, exempt_paths=(), **options):
        self.app = app
        self.config = RateLimitConfig(limit=limit, window_size=window_size, **options)
        self.limiter = limiter
        self.exact = {p for p in exempt_paths if not p.endswith("/")}
        self.prefixes = tuple(p for p in exempt_paths if p.endswith("/"))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if path in self.exact or (self.prefixes and path.startswith(self.prefixes)):
            return await self.app(scope, receive, send)
        request = Request(scope, receive)
        try:
            info = await _decide(request, self.config, "global", self.limiter)
        except _Reply as r:
            return await r.response(scope, receive, send)
        except RateLimitExceeded as e:
            reply = JSONResponse({"detail": e.detail}, status_code=e.status_code, headers=e.headers)
            return await reply(scope, receive, send)
        if info is None or not self.config.include_headers:
            return await self.app(scope, receive, send)
        raw = info.raw_headers()

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = list(message.get("headers", ())) + raw
            await send(message)

        return await self.app(scope, receive, send_with_headers)


__all__ = ["RateLimitExceeded", "RateLimitDependency", "RateLimitMiddleware", "rate_limit"]
