"""Exceptions: one class per libtraffic status, all subclasses of TrafficError.

Each carries the library's status code (``status``, a negative int), its name (``name``,
e.g. ``"TRAFFIC_EINVAL"``) and the library's message for the failure (``message``: the key's
length and the limit, the URL parameter, the server's reply). Statuses that mean "the caller
passed something wrong" also derive from ValueError, so ``except ValueError`` works as for any
Python API.
"""

from . import _traffic


class TrafficError(Exception):
    """A libtraffic call failed. ``status`` is the TRAFFIC_E… code, ``message`` the detail."""

    status = None

    def __init__(self, message, status=None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    @property
    def name(self):
        """The status's name, e.g. ``"TRAFFIC_ETIMEDOUT"``."""
        if self.status is None:
            return "TRAFFIC_E?"
        return _traffic.strerror(self.status).split(":", 1)[0]

    def __str__(self):
        return f"{self.name}: {self.message}"


class KeyNotFoundError(TrafficError):
    """TRAFFIC_ENOTFOUND: the key is absent or expired (get() returns None instead)."""

    status = _traffic.ENOTFOUND


class InvalidArgumentError(TrafficError, ValueError):
    """TRAFFIC_EINVAL: a bad argument, URL or rule."""

    status = _traffic.EINVAL


class TooBigError(TrafficError, ValueError):
    """TRAFFIC_ETOOBIG: a key or value over the backend's limit."""

    status = _traffic.ETOOBIG


class StoreFullError(TrafficError):
    """TRAFFIC_EFULL: no room, and nothing could be evicted."""

    status = _traffic.EFULL


class WrongTypeError(TrafficError):
    """TRAFFIC_ETYPE: increment on a value, or a rate limit on a key holding something else."""

    status = _traffic.ETYPE


class CounterOverflowError(TrafficError):
    """TRAFFIC_EOVERFLOW: the counter would leave the int64 range (it is unchanged)."""

    status = _traffic.EOVERFLOW


class StoreIOError(TrafficError):
    """TRAFFIC_EIO: an operating-system, SQLite or unexpected server failure."""

    status = _traffic.EIO


class UnavailableError(TrafficError):
    """TRAFFIC_EUNAVAILABLE: the server could not be reached."""

    status = _traffic.EUNAVAILABLE


class StoreTimeoutError(TrafficError):
    """TRAFFIC_ETIMEDOUT: the store did not answer in time (Redis timeout, SQLite lock)."""

    status = _traffic.ETIMEDOUT


class CorruptError(TrafficError):
    """TRAFFIC_ECORRUPT: a table or database that failed validation (left untouched)."""

    status = _traffic.ECORRUPT


class OutOfMemoryError(TrafficError):
    """TRAFFIC_ENOMEM."""

    status = _traffic.ENOMEM


class BufferRangeError(TrafficError):
    """TRAFFIC_ERANGE (the package sizes its buffers itself: seen only if a value keeps growing)."""

    status = _traffic.ERANGE


class PermissionDeniedError(TrafficError):
    """TRAFFIC_EPERM: the OS or the server refused (file mode, wrong password)."""

    status = _traffic.EPERM


class NotSupportedError(TrafficError):
    """TRAFFIC_ENOTSUP: not built into the library, or not done by this backend."""

    status = _traffic.ENOTSUP


_CLASSES = {
    cls.status: cls
    for cls in (
        KeyNotFoundError,
        InvalidArgumentError,
        TooBigError,
        StoreFullError,
        WrongTypeError,
        CounterOverflowError,
        StoreIOError,
        UnavailableError,
        StoreTimeoutError,
        CorruptError,
        OutOfMemoryError,
        BufferRangeError,
        PermissionDeniedError,
        NotSupportedError,
    )
}

_traffic.set_errors(_CLASSES, TrafficError)


def error_for(status, message):
    """The exception instance the library would raise for ``status``."""
    return _CLASSES.get(status, TrafficError)(message, status)


__all__ = ["TrafficError", "error_for"] + [cls.__name__ for cls in _CLASSES.values()]
