"""Storage backends for rate limit state (the seed's fastapi_traffic.backends)."""

from .base import Backend
from .memory import MemoryBackend, PerProcessLimitWarning
from .redis import RedisBackend
from .sqlite import SQLiteBackend

__all__ = ["Backend", "MemoryBackend", "PerProcessLimitWarning", "RedisBackend", "SQLiteBackend"]
