"""RedisBackend: libtraffic's Redis backend (standalone, unix socket, Sentinel, Cluster).

``await RedisBackend.from_url(url, *, key_prefix="", sentinel_master=None, **kwargs)`` takes
the seed's URL forms and libtraffic's own:

    redis://[[user]:password@]host[:port][/db]        one server
    redis://h1:26379,h2:26379/0 + sentinel_master=M     Sentinel (the seed's form)
    redis://h1:6379,h2:6379                             Cluster (a comma-separated host list)
    unix:///path/to.sock?db=N, redis+unix://...         a unix socket
    redis+sentinel://h1:p1,h2:p2/MASTER[/db]            Sentinel (libtraffic's form)
    redis+cluster://h1:p1,h2:p2                         Cluster (libtraffic's form)

Query parameters: db, prefix, timeout, pool_size (and redis-py's socket_timeout,
max_connections), and libtraffic's fallback, fallback_backoff, fallback_backoff_max. Keyword arguments: password, username, db, timeout / socket_timeout /
socket_connect_timeout (seconds; the largest given wins), pool_size / max_connections;
redis-py's decode_responses, encoding, health_check_interval and retry_on_timeout are accepted
and have nothing to do here. rediss:// is refused: the hiredis this is built on has no TLS.

The seed's default key_prefix is "", so keys are stored under their own names; give one
(``key_prefix="myapp:ratelimit:"``) to share a database with other data - clear() removes
only the keys under it (SCAN + UNLINK, never FLUSHDB; with "" that is the whole database).

``fallback="memory://myapp-fallback"`` (keyword or URL parameter) names a store that answers
while Redis is down - libtraffic's fallback= (traffic.h, "When the store is down"): a call that
Redis fails with UnavailableError or StoreTimeoutError is answered by the fallback, a circuit
breaker shared by the host's processes (kept in the fallback's memory table) skips Redis for a
back-off interval (fallback_backoff, default 0.05 s, doubling up to fallback_backoff_max, 5 s)
and one probe per interval sees whether it is back. A Redis that cannot be reached at
from_url() does not fail it: the backend starts on the fallback. get_stats() tells which store
serves ("serving": "primary" or "fallback").

Every call runs in a thread pool with the GIL released: a server that is slow or frozen
(SIGSTOP) costs a worker thread up to ``timeout`` (1 s by default), never the event loop.
"""

import asyncio
import urllib.parse

from .. import _traffic
from ..errors import InvalidArgumentError
from ._native import NativeBackend, quote, with_fallback, with_params

# redis-py keyword arguments that configure its client, not the store: accepted, unused.
_IGNORED_KWARGS = {"decode_responses", "encoding", "encoding_errors", "health_check_interval", "retry_on_timeout",
                   "client_name", "single_connection_client"}


def _invalid(message):
    return InvalidArgumentError(message, _traffic.EINVAL)


def _split_hosts(netloc):
    """(user, password, hosts) of a URL's netloc; user and password percent-decoded or None."""
    user = password = None
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        if ":" in userinfo:
            user, password = userinfo.split(":", 1)
            password = urllib.parse.unquote(password)
        else:
            user = userinfo  # redis://name@host: a user name, as redis-py reads it
        user = urllib.parse.unquote(user) if user else None
    return user, password, netloc


def _db_number(text, where):
    try:
        db = int(text)
    except ValueError:
        raise _invalid(f"{where}: database {text!r} is not a number") from None
    if db < 0:
        raise _invalid(f"{where}: database {db} is negative")
    return db


def redis_options(url, key_prefix="", sentinel_master=None, **kwargs):
    """The typed options (a dict) that _traffic.open_redis takes for the seed's arguments."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "rediss":
        raise _invalid("rediss:// (TLS) is not supported: the hiredis libtraffic is built on has no TLS")
    if scheme not in ("redis", "unix", "redis+unix", "redis+sentinel", "redis+cluster"):
        raise _invalid(f"unknown URL scheme {parts.scheme!r} (want redis://, unix://, redis+sentinel://, ...)")
    user, password, hosts = _split_hosts(parts.netloc)
    opts = {"mode": _traffic.REDIS_TCP, "hosts": None, "path": None, "master": None, "user": user,
            "password": password, "db": 0, "prefix": None, "timeout": 0.0, "pool_size": 0,
            "fallback": None, "fallback_backoff": None, "fallback_backoff_max": None}
    path = urllib.parse.unquote(parts.path)
    if scheme in ("unix", "redis+unix"):
        opts["mode"] = _traffic.REDIS_UNIX
        if not path:
            raise _invalid(f"{url}: no socket path")
        opts["path"] = path
    elif scheme == "redis+sentinel" or (scheme == "redis" and sentinel_master):
        opts["mode"] = _traffic.REDIS_SENTINEL
        segments = [s for s in path.split("/") if s]
        if scheme == "redis+sentinel":  # /MASTER[/db]
            if not segments:
                raise _invalid(f"{url}: no master name")
            opts["master"] = segments.pop(0)
        if sentinel_master:
            if opts["master"] and opts["master"] != sentinel_master:
                raise _invalid(f"sentinel_master={sentinel_master!r} but the URL names {opts['master']!r}")
            opts["master"] = sentinel_master
        if len(segments) > 1:
            raise _invalid(f"{url}: unexpected path {path!r}")
        if segments:
            opts["db"] = _db_number(segments[0], url)
        opts["hosts"] = hosts
    else:
        cluster = scheme == "redis+cluster" or "," in hosts
        opts["mode"] = _traffic.REDIS_CLUSTER if cluster else _traffic.REDIS_TCP
        opts["hosts"] = hosts or None
        segment = path.strip("/")
        if segment:
            opts["db"] = _db_number(segment, url)
        if cluster and opts["db"] != 0:
            raise _invalid(f"{url}: a Redis Cluster has only database 0")
    if sentinel_master and opts["mode"] != _traffic.REDIS_SENTINEL:
        raise _invalid(f"sentinel_master is given but {url} is not a Sentinel URL")

    timeouts = []
    for name, values in urllib.parse.parse_qs(parts.query, keep_blank_values=True).items():
        value = values[-1]
        try:
            if name == "db":
                opts["db"] = _db_number(value, url)
            elif name == "prefix":
                opts["prefix"] = value
            elif name in ("timeout", "socket_timeout", "socket_connect_timeout"):
                timeouts.append(float(value))
            elif name in ("pool_size", "max_connections"):
                opts["pool_size"] = int(value)
            elif name in ("password", "username", "user"):
                opts["password" if name == "password" else "user"] = value
            elif name == "fallback":
                opts["fallback"] = value
            elif name in ("fallback_backoff", "fallback_backoff_max"):
                opts[name] = float(value)
            else:
                raise _invalid(f"{url}: unknown parameter {name!r}")
        except ValueError as e:
            if isinstance(e, InvalidArgumentError):
                raise
            raise _invalid(f"{url}: parameter {name}={value!r} is not a number") from None

    for name, value in kwargs.items():
        if name == "password":
            opts["password"] = value
        elif name in ("username", "user"):
            opts["user"] = value
        elif name == "db":
            opts["db"] = _db_number(str(value), name)
        elif name in ("timeout", "socket_timeout", "socket_connect_timeout"):
            if value is not None:
                timeouts.append(float(value))
        elif name in ("pool_size", "max_connections"):
            if value is not None:
                opts["pool_size"] = int(value)
        elif name == "fallback":
            if value is not None:
                opts["fallback"] = value
        elif name in ("fallback_backoff", "fallback_backoff_max"):
            if value is not None:
                opts[name] = float(value)
        elif name in _IGNORED_KWARGS:
            pass
        else:
            raise TypeError(f"RedisBackend.from_url() got an unexpected keyword argument {name!r}")
    if timeouts:
        opts["timeout"] = max(timeouts)
    if opts["mode"] == _traffic.REDIS_CLUSTER and opts["db"] != 0:
        raise _invalid("a Redis Cluster has only database 0")
    if opts["user"] and not opts["password"]:
        raise _invalid("a Redis user needs a password")

    if key_prefix and opts["prefix"] is not None and opts["prefix"] != key_prefix:
        raise _invalid(f"key_prefix={key_prefix!r} but the URL says prefix={opts['prefix']!r}")
    if opts["prefix"] is None:
        opts["prefix"] = key_prefix or ""
    return opts


def redis_url(opts):
    """libtraffic's URL for the typed options of redis_options() (with fallback= when given):
    the form traffic_open parses back into the same options (traffic.h, "Redis backend")."""
    auth = ""
    if opts["password"] is not None:
        auth = (quote(opts["user"]) if opts["user"] else "") + ":" + quote(opts["password"]) + "@"
    mode = opts["mode"]
    if mode == _traffic.REDIS_UNIX:
        url = f"redis+unix://{auth}{urllib.parse.quote(opts['path'], safe='/')}?db={opts['db']}"
    elif mode == _traffic.REDIS_SENTINEL:
        url = f"redis+sentinel://{auth}{opts['hosts']}/{quote(opts['master'])}/{opts['db']}"
    elif mode == _traffic.REDIS_CLUSTER:
        url = f"redis+cluster://{auth}{opts['hosts']}"
    else:
        url = f"redis://{auth}{opts['hosts'] or '127.0.0.1:6379'}/{opts['db']}"
    # The prefix always: the seed's default is "", libtraffic's "traffic:".
    url = with_params(url, [("prefix", opts["prefix"]), ("timeout", opts["timeout"] or None),
                            ("pool_size", opts["pool_size"] or None)])
    return with_fallback(url, opts["fallback"], opts["fallback_backoff"], opts["fallback_backoff_max"])


class RedisBackend(NativeBackend):
    """Redis storage backend for distributed rate limiting. Make one with ``await from_url(...)``."""

    _kind = "redis"

    def __init__(self, store, *, url=None, key_prefix=""):
        super().__init__()
        self._store = store
        self.url = url
        self.key_prefix = key_prefix

    @classmethod
    async def from_url(cls, url, *, key_prefix="", sentinel_master=None, **kwargs):
        """Connects (to every master of a cluster), authenticates and loads the Lua script."""
        opts = redis_options(url, key_prefix, sentinel_master, **kwargs)
        loop = asyncio.get_running_loop()
        if opts["fallback"] is not None:
            store = await loop.run_in_executor(None, _traffic.open_url, redis_url(opts), True)
            return cls(store, url=url, key_prefix=opts["prefix"])
        if opts["fallback_backoff"] is not None or opts["fallback_backoff_max"] is not None:
            raise _invalid("fallback_backoff and fallback_backoff_max need a fallback URL")
        store = await loop.run_in_executor(
            None,
            _traffic.open_redis,
            opts["mode"],
            opts["hosts"],
            opts["path"],
            opts["master"],
            opts["user"],
            opts["password"],
            opts["db"],
            opts["prefix"],
            opts["timeout"],
            opts["pool_size"],
        )
        return cls(store, url=url, key_prefix=opts["prefix"])

    async def get_stats(self):
        """Statistics from INFO and this handle (keys under the prefix, used memory, ...)."""
        return await self._stats()

    async def start_cleanup(self):
        """Nothing to do: Redis expires keys itself."""

    async def stop_cleanup(self):
        """Nothing to do: Redis expires keys itself."""

    def __repr__(self):
        return f"<RedisBackend {self.url!r} key_prefix={self.key_prefix!r}>"
