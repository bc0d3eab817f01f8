"""The limiter: Algorithm, RateLimitConfig, RateLimiter and the client key, as the seed has them.

A decision is one call: ``RateLimiter.hit(key, config)`` asks the backend's ``decide`` (for the
built-in backends one ``traffic_limit`` inside the store, atomic across every worker that
shares it) and gets back a ``traffic.Decision``: allowed, limit, remaining, reset_after,
retry_after and delay. Nothing is read and then written from Python, so two workers can never
both take the last request of a window.

The client key defaults to the socket's peer address. Behind a reverse proxy that address is
the proxy's, and every client would share one limit; ``RateLimiter(backend,
trusted_proxies=["127.0.0.1", "10.0.0.0/8"])`` then takes the client from X-Forwarded-For,
walking it from the right past the trusted proxies. The header is never read otherwise: a
client that sends one itself would choose its own key.
"""

import enum
import hashlib
import ipaddress
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from . import _traffic
from .backends.base import Backend
from .backends.memory import MemoryBackend

Rule = _traffic.Rule
Decision = _traffic.Decision


class Algorithm(str, enum.Enum):
    """The rate-limit algorithms (traffic.h "Rate limits" gives each one's formula)."""

    TOKEN_BUCKET = "token_bucket"
    SLIDING_WINDOW = "sliding_window"
    FIXED_WINDOW = "fixed_window"
    LEAKY_BUCKET = "leaky_bucket"
    SLIDING_WINDOW_COUNTER = "sliding_window_counter"

    @property
    def number(self):
        """The library's traffic_algorithm value."""
        return _ALGORITHM_NUMBERS[self]

    @property
    def is_bucket(self):
        return self in (Algorithm.TOKEN_BUCKET, Algorithm.LEAKY_BUCKET)


_ALGORITHM_NUMBERS = {
    Algorithm.SLIDING_WINDOW_COUNTER: _traffic.SLIDING_WINDOW_COUNTER,
    Algorithm.FIXED_WINDOW: _traffic.FIXED_WINDOW,
    Algorithm.SLIDING_WINDOW: _traffic.SLIDING_WINDOW,
    Algorithm.TOKEN_BUCKET: _traffic.TOKEN_BUCKET,
    Algorithm.LEAKY_BUCKET: _traffic.LEAKY_BUCKET,
}


def make_rule(limit, window_size=60.0, algorithm=Algorithm.SLIDING_WINDOW_COUNTER, burst_size=None):
    """A checked traffic.Rule (InvalidArgumentError, a ValueError, for a rule out of bounds).
    burst_size is the bucket's capacity (token) or queue depth (leaky), None for `limit`; the
    window algorithms have no burst, and ignore it as the seed does."""
    algorithm = Algorithm(algorithm)
    burst = int(burst_size) if burst_size is not None and algorithm.is_bucket else 0
    return Rule(algorithm.number, int(limit), float(window_size), burst)


# ---- the client's key ------------------------------------------------------------------------


def _networks(trusted):
    if trusted is None:
        return ()
    if isinstance(trusted, str):
        trusted = [trusted]
    return tuple(ipaddress.ip_network(t, strict=False) for t in trusted)


def _trusted(addr, networks):
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in n for n in networks)


def peer_address(request):
    """The socket's peer address of a Starlette request or ASGI scope ("unknown" if none)."""
    scope = request if isinstance(request, dict) else request.scope
    client = scope.get("client")
    return client[0] if client else "unknown"


def client_address(request, trusted_proxies=()):
    """The client's address: the peer, or when the peer is a trusted proxy, the rightmost
    X-Forwarded-For address that is not one (all trusted: the leftmost)."""
    peer = peer_address(request)
    networks = trusted_proxies if isinstance(trusted_proxies, tuple) else _networks(trusted_proxies)
    if not networks or not _trusted(peer, networks):
        return peer
    scope = request if isinstance(request, dict) else request.scope
    hops = []
    for name, value in scope.get("headers") or ():
        if name == b"x-forwarded-for":
            hops.extend(h.strip() for h in value.decode("latin-1").split(","))
    client = peer
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return client  # a malformed hop: trust nothing to its left
        client = hop
        if not _trusted(hop, networks):
            return hop
    return client


def default_key_extractor(request):
    """The seed's default key: the client's address (the peer's, see RateLimiter's trusted_proxies)."""
    return peer_address(request)


def forwarded_key_extractor(trusted_proxies):
    """A key extractor that reads X-Forwarded-For behind the given proxies (addresses or CIDRs)."""
    networks = _networks(trusted_proxies)

    def extract(request):
        return client_address(request, networks)

    return extract


def fit_key(key):
    """A store key of at most 250 bytes: longer ones keep their start and end a hash."""
    if len(key) <= _traffic.KEY_MAX // 4:  # at most 4 UTF-8 bytes a character: fits
        return key
    raw = key.encode()
    if len(raw) <= _traffic.KEY_MAX:
        return key
    digest = hashlib.blake2b(raw, digest_size=16).hexdigest()
    return raw[: _traffic.KEY_MAX - 33].decode("utf-8", "ignore") + "#" + digest


# ---- configuration and results -----------------------------------------------------------------


@dataclass
class RateLimitConfig:
    """One limit: what @rate_limit, the middleware and the dependency are given."""

    limit: int
    window_size: float = 60.0
    algorithm: Algorithm = Algorithm.SLIDING_WINDOW_COUNTER
    key_prefix: str = "ratelimit"
    key_extractor: Callable[[Any], str] = default_key_extractor
    burst_size: Optional[int] = None
    include_headers: bool = True
    error_message: str = "Rate limit exceeded"
    status_code: int = 429
    skip_on_error: bool = False
    cost: int = 1
    exempt_when: Optional[Callable[[Any], Any]] = None
    on_blocked: Optional[Callable[[Any, Any], Any]] = None
    rule: Rule = field(init=False, repr=False)

    def __post_init__(self):
        self.algorithm = Algorithm(self.algorithm)
        if isinstance(self.cost, bool) or not isinstance(self.cost, int) or self.cost < 0:
            raise _invalid(f"cost must be an int >= 0, not {self.cost!r}")
        self.rule = make_rule(self.limit, self.window_size, self.algorithm, self.burst_size)


def _invalid(message):
    from .errors import InvalidArgumentError

    return InvalidArgumentError(message, _traffic.EINVAL)


class RateLimitInfo:
    """A decision as the HTTP side sees it: the figures and the headers to send."""

    __slots__ = ("allowed", "limit", "remaining", "reset_after", "retry_after", "delay", "key", "now")

    def __init__(self, decision, key=None, now=None):
        self.allowed = decision.allowed
        self.limit = decision.limit
        self.remaining = decision.remaining
        self.reset_after = decision.reset_after
        self.retry_after = decision.retry_after
        self.delay = decision.delay
        self.key = key
        self.now = time.time() if now is None else now

    @property
    def reset_at(self):
        """Wall-clock time (Unix seconds) at which the key is back to its unused state."""
        return self.now + self.reset_after

    def headers(self):
        return decision_headers(self, self.now)

    def raw_headers(self):
        """The same headers as ASGI wants them: a list of lower-case (name, value) bytes."""
        return _raw_headers(self, self.now)

    def __repr__(self):
        return (f"RateLimitInfo(allowed={self.allowed}, limit={self.limit}, remaining={self.remaining}, "
                f"reset_after={self.reset_after:.3f}, retry_after={self.retry_after:.3f}, delay={self.delay:.3f})")


def _raw_headers(d, now):
    # The formulas live in one place, the extension's headers_list (Decision.raw_headers uses
    # it too); int() and float(): a user's backend may return any decision-like object.
    return _traffic.raw_headers(bool(d.allowed), int(d.limit), int(d.remaining), float(d.reset_after),
                                0.0 if d.allowed else float(d.retry_after), float(now))


_HEADER_NAMES = {b"x-ratelimit-limit": "X-RateLimit-Limit", b"x-ratelimit-remaining": "X-RateLimit-Remaining",
                 b"x-ratelimit-reset": "X-RateLimit-Reset", b"retry-after": "Retry-After"}


def decision_headers(d, now=None):
    """X-RateLimit-Limit, -Remaining, -Reset (Unix seconds, rounded up) and, when denied,
    Retry-After (whole seconds, rounded up; a request that can never pass gets none)."""
    raw = _raw_headers(d, time.time() if now is None else now)
    return {_HEADER_NAMES[name]: value.decode() for name, value in raw}


# ---- the limiter ---------------------------------------------------------------------------------

_default_limiter = None


def get_limiter():
    """The RateLimiter that @rate_limit uses: the last one created (or set_limiter's). When
    there is none yet, one on an anonymous MemoryBackend() is made (see its warning about
    workers)."""
    global _default_limiter
    if _default_limiter is None:
        _default_limiter = RateLimiter(MemoryBackend())
    return _default_limiter


def set_limiter(limiter):
    """Makes limiter the one @rate_limit and the middleware use when not given one."""
    global _default_limiter
    _default_limiter = limiter


class RateLimiter:
    """Decides requests against a Backend. Creating one makes it the one @rate_limit uses.

    :param backend: any Backend (MemoryBackend() if None).
    :param trusted_proxies: addresses or networks (CIDR) of the reverse proxies in front of
        the app; the default key then comes from X-Forwarded-For (see client_address).
    """

    def __init__(self, backend=None, *, trusted_proxies=None):
        if backend is None:
            backend = MemoryBackend()
        if not isinstance(backend, Backend):
            raise TypeError(f"backend must be a traffic Backend, not {type(backend).__name__}")
        self.backend = backend
        self.trusted_proxies = _networks(trusted_proxies)
        self._initialized = False
        set_limiter(self)

    async def initialize(self):
        """Opens the backend if it opens lazily (SQLite) and starts its background cleanup."""
        init = getattr(self.backend, "initialize", None)
        if init is not None:
            await init()
        start = getattr(self.backend, "start_cleanup", None)
        if start is not None:
            await start()
        self._initialized = True
        set_limiter(self)

    async def close(self):
        """Closes the backend."""
        await self.backend.close()

    async def __aenter__(self):
        await self.initialize()
        return self

    async def __aexit__(self, *exc):
        await self.close()

    def client_key(self, request, config):
        """The key of request's client under config (before the prefix)."""
        if config.key_extractor is default_key_extractor:
            if self.trusted_proxies:
                return client_address(request, self.trusted_proxies)
            return peer_address(request)
        return str(config.key_extractor(request))

    async def hit(self, key, config, cost=None):
        """One decision on the full key under config (a RateLimitConfig or a Rule): a Decision."""
        rule = config if isinstance(config, Rule) else config.rule
        if cost is None:
            cost = 1 if isinstance(config, Rule) else config.cost
        limit_now = getattr(self.backend, "_limit_now", None)
        if limit_now is not None:
            return limit_now(key, rule, cost)
        return await self.backend.decide(key, rule, cost)

    async def check(self, request, config, scope="global"):
        """Decides request under config and returns a RateLimitInfo (the seed's check)."""
        key = fit_key(f"{config.key_prefix}:{scope}:{self.client_key(request, config)}")
        return RateLimitInfo(await self.hit(key, config), key)

    async def reset(self, key):
        """Forgets the state of a full key (its next request starts afresh)."""
        await self.backend.delete(key)

    async def peek(self, key, config):
        """What a request would get now, without consuming (cost 0)."""
        return await self.hit(key, config, 0)
