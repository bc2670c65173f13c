"""Storage for the cache, on dogpile.cache backends, holding JSON bytes only.

dogpile's regions pickle values; modelwire never lets them: it talks to the backends' byte-level
methods (``get_serialized``/``set_serialized``) or stores its own bytes, so a shared Redis or a
dbm file only ever holds JSON (see :mod:`modelwire.plugins.cache.codec`).

Every backend here is synchronous. ``offload`` says whether the middleware must call it from a
worker thread (file, redis: real I/O) or may call it inline on the event loop (memory, null:
dict work that takes microseconds, where a thread hop would cost more than the work). The one
exception is Redis's read, which also has an asyncio twin (``async_get``, :meth:`Backend.aget`):
the hit path reads on the event loop, without the thread hop. The Redis backend is in
:mod:`.redis_backend`.
"""

from __future__ import annotations

import dbm
import json
import threading
from collections import OrderedDict
from typing import Any, Protocol

from dogpile.cache import api as _api
from dogpile.cache.backends import file as _file
from dogpile.cache.backends import memory as _memory

__all__ = [
    "STATS_KEY",
    "Backend",
    "DistributedLock",
    "FileBackend",
    "LRUDict",
    "MemBackend",
    "NullBackend",
    "Stored",
    "key_text",
]

# dogpile.cache ships no type hints: its backends are handled as Any.
NO_VALUE: Any = _api.NO_VALUE
MemoryBackend: Any = _memory.MemoryBackend
DBMBackend: Any = _file.DBMBackend

#: ``modelwire cache stats`` runs in its own process, so file and redis backends also keep the
#: counters of every process that used them, under this key (outside every namespace).
STATS_KEY = "__modelwire_cache_stats__"


class DistributedLock(Protocol):
    def acquire(self, wait: bool = True) -> Any: ...

    def release(self) -> Any: ...


class Backend:
    """The byte store the middleware uses. Keys are ``<namespace>:<version>:<digest>`` strings."""

    name = "base"
    #: Whether calls must run in a worker thread (real I/O) rather than on the event loop.
    offload = False
    #: Whether :meth:`aget` reads without blocking the event loop (then the store uses it).
    async_get = False

    def get(self, key: str) -> bytes | None:
        raise NotImplementedError

    def set(self, key: str, value: bytes, ttl: float | None) -> None:
        raise NotImplementedError

    async def aget(self, key: str) -> bytes | None:
        """:meth:`get` on the event loop, for a backend with ``async_get``."""
        raise NotImplementedError

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        """:meth:`get` of each key (one round trip where the store allows: embeddings batches)."""
        return [self.get(key) for key in keys]

    def set_many(self, items: list[tuple[str, bytes]], ttl: float | None) -> None:
        """:meth:`set` of each ``(key, value)``."""
        for key, value in items:
            self.set(key, value, ttl)

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def clear(self, namespace: str | None = None) -> int:
        """Delete every entry (of ``namespace``); returns how many were deleted."""
        raise NotImplementedError

    def count(self) -> int:
        """Number of stored entries."""
        raise NotImplementedError

    def mutex(self, key: str) -> DistributedLock | None:
        """A lock shared by every process using this backend, or None when there is none."""
        return None

    def add_stats(self, deltas: dict[str, int]) -> None:
        """Add ``deltas`` to the counters shared by every process (no-op when not shared)."""

    def read_stats(self) -> dict[str, int]:
        """The shared counters, or an empty dict when this backend keeps none."""
        return {}

    def close(self) -> None:
        """Release connections."""

    async def aclose(self) -> None:
        """Release the running event loop's connections (those of :meth:`aget`)."""

    def after_fork(self) -> None:
        """Called in a forked child before its first call: renew what the fork left unusable
        (locks another thread of the parent may have held)."""


class LRUDict(OrderedDict[str, Any]):
    """A dict bounded to ``max_entries`` and ``max_bytes`` (of bytes values): reads refresh an
    entry, writes evict the least recently used."""

    def __init__(self, max_entries: int, max_bytes: int | None = None) -> None:
        super().__init__()
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.size = 0
        self.lock = threading.Lock()  # the sync API and the CLI may touch it from other threads

    def get(self, key: str, default: Any = None) -> Any:
        with self.lock:
            value = super().get(key, default)
            if value is not default:
                self.move_to_end(key)
            return value

    def __setitem__(self, key: str, value: Any) -> None:
        with self.lock:
            old = super().get(key)
            if old is not None:
                self.size -= _size(old)
            super().__setitem__(key, value)
            self.size += _size(value)
            self.move_to_end(key)
            while len(self) > self.max_entries or (self.max_bytes is not None and self.size > self.max_bytes):
                _, evicted = self.popitem(last=False)
                self.size -= _size(evicted)

    def __delitem__(self, key: str) -> None:
        value = super().__getitem__(key)
        super().__delitem__(key)
        self.size -= _size(value)

    def pop(self, key: str, default: Any = None) -> Any:
        if key in self:
            value = super().__getitem__(key)
            del self[key]
            return value
        return default


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (bytes, str)) else 0


class Stored(bytes):
    """A value of the memory backend: its JSON bytes, plus ``entry``, the decoded document once
    a read decoded it (:func:`~.codec.read_entry`), so that later hits decode nothing."""

    entry: dict[str, Any] | None = None


class MemBackend(Backend):
    """dogpile's MemoryBackend over a bounded LRU dict (dogpile's own dict grows forever).

    Values are kept as :class:`Stored` bytes and handed out as they are (bytes are immutable;
    the decoded entry they carry is read-only by contract, copied by the codec on every hit).
    """

    name = "memory"

    def __init__(self, max_entries: int, max_bytes: int | None = None) -> None:
        self.data = LRUDict(max_entries, max_bytes)
        self._dogpile: Any = MemoryBackend({"cache_dict": self.data})

    def get(self, key: str) -> bytes | None:
        value = self.data.get(key)  # what dogpile's MemoryBackend.get does, one call less per hit
        return None if value is None else value if type(value) is Stored else bytes(value)

    def set(self, key: str, value: bytes, ttl: float | None) -> None:
        self._dogpile.set(key, Stored(value))

    def delete(self, key: str) -> None:
        with self.data.lock:
            self.data.pop(key, None)

    def clear(self, namespace: str | None = None) -> int:
        with self.data.lock:
            keys = [k for k in self.data if namespace is None or k.startswith(namespace + ":")]
            for k in keys:
                del self.data[k]
        return len(keys)

    def count(self) -> int:
        return len(self.data)

    def after_fork(self) -> None:
        self.data.lock = threading.Lock()  # a parent thread may have held it at the fork


class NullBackend(Backend):
    """Stores nothing: every read is a miss (single-flight still applies)."""

    name = "null"

    def get(self, key: str) -> bytes | None:
        return None

    def set(self, key: str, value: bytes, ttl: float | None) -> None:
        return None

    def delete(self, key: str) -> None:
        return None

    def clear(self, namespace: str | None = None) -> int:
        return 0

    def count(self) -> int:
        return 0


class FileBackend(Backend):
    """dogpile's DBMBackend: one dbm file guarded by flock read/write lock files, so several
    processes can share it. Expiry lives in the stored JSON (dbm has none)."""

    name = "file"
    offload = True

    def __init__(self, path: str) -> None:
        self.path = path
        self._dogpile: Any = DBMBackend({"filename": path})

    def get(self, key: str) -> bytes | None:
        try:
            value = self._dogpile.get_serialized(key)
        except (ValueError, SyntaxError, *dbm.error) as exc:
            self._recreate(exc)
            raise
        return None if value is NO_VALUE else bytes(value)

    def set(self, key: str, value: bytes, ttl: float | None) -> None:
        try:
            self._dogpile.set_serialized(key, value)
        except (ValueError, SyntaxError, *dbm.error) as exc:
            self._recreate(exc)
            raise

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        try:  # one open and one lock for the whole batch, not one per key
            values = self._dogpile.get_serialized_multi(keys)
        except (ValueError, SyntaxError, *dbm.error) as exc:
            self._recreate(exc)
            raise
        return [None if v is NO_VALUE else bytes(v) for v in values]

    def set_many(self, items: list[tuple[str, bytes]], ttl: float | None) -> None:
        try:
            self._dogpile.set_serialized_multi(dict(items))
        except (ValueError, SyntaxError, *dbm.error) as exc:
            self._recreate(exc)
            raise

    def _recreate(self, exc: BaseException) -> None:
        """The dbm file is unreadable (truncated or overwritten index): start an empty one, under
        the write lock so another process never sees it half-made. The caller's op still fails
        (a miss with a warning); the next one works again."""
        from modelwire.log import logger

        with self._dogpile._use_rw_lock(True):
            try:
                with dbm.open(self.path, "r"):
                    return  # another process repaired it meanwhile
            except Exception:
                pass
            with dbm.open(self.path, "n"):
                pass
        logger.warning("cache.file_recreated", path=self.path, error_class=type(exc).__name__)

    def delete(self, key: str) -> None:
        self._dogpile.delete(key)

    def clear(self, namespace: str | None = None) -> int:
        with self._dogpile._dbm_file(True) as db:
            prefix = None if namespace is None else namespace + ":"
            texts = {k: key_text(k) for k in db.keys()}
            keys = [k for k, text in texts.items() if text != STATS_KEY and (prefix is None or text.startswith(prefix))]
            for k in keys:
                del db[k]
        return len(keys)

    def count(self) -> int:
        with self._dogpile._dbm_file(False) as db:
            return sum(1 for k in db.keys() if key_text(k) != STATS_KEY)

    def add_stats(self, deltas: dict[str, int]) -> None:
        with self._dogpile._dbm_file(True) as db:  # the write lock makes read-modify-write atomic
            try:
                current = json.loads(db[STATS_KEY])
            except Exception:
                current = {}
            for name, n in deltas.items():
                current[name] = int(current.get(name, 0)) + n
            db[STATS_KEY] = json.dumps(current)

    def read_stats(self) -> dict[str, int]:
        with self._dogpile._dbm_file(False) as db:
            try:
                return {str(k): int(v) for k, v in json.loads(db[STATS_KEY]).items()}
            except KeyError:
                return {}


def key_text(key: bytes | str) -> str:
    """A backend key as text (dbm and redis-py hand keys back as bytes)."""
    return key.decode("utf-8", "replace") if isinstance(key, bytes) else key
