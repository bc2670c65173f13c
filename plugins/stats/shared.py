"""Stores that add up the counters of every process: a SQLite file (one host) or Redis (many).

A process never writes per request: its recorder adds its deltas every ``flush_interval``
seconds from a background thread, at exit, and on :func:`~modelwire.plugins.stats.flush`. Both
stores only ever *add* (``value = value + delta``), so concurrent writers need no coordination.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any, Protocol

from modelwire.plugins.sqlite import connect_shared

__all__ = ["RedisStore", "SQLiteStore", "Store", "make_store"]


class Store(Protocol):
    """Where the counters of all processes add up."""

    name: str

    def add(self, deltas: dict[str, float]) -> None:
        """Add each delta to its counter, all or nothing."""

    def read(self) -> dict[str, float]:
        """Every counter's total."""

    def clear(self) -> None:
        """Forget every counter."""


class SQLiteStore:
    """One table ``mw_stats(key, value)`` in the file at ``path``."""

    name = "sqlite"

    def __init__(self, path: str, timeout: float) -> None:
        self.path = os.path.abspath(os.path.expanduser(path))
        self.timeout = timeout
        self._conn: sqlite3.Connection | None = None
        self._pid = 0

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():  # a connection must not cross a fork
            conn = connect_shared(self.path, self.timeout)
            conn.execute("CREATE TABLE IF NOT EXISTS mw_stats (key TEXT PRIMARY KEY, value REAL NOT NULL)")
            conn.commit()
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def add(self, deltas: dict[str, float]) -> None:
        conn = self._connection()
        with conn:  # one transaction
            conn.executemany(
                "INSERT INTO mw_stats (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
                list(deltas.items()),
            )

    def read(self) -> dict[str, float]:
        return {str(k): float(v) for k, v in self._connection().execute("SELECT key, value FROM mw_stats")}

    def clear(self) -> None:
        conn = self._connection()
        with conn:
            conn.execute("DELETE FROM mw_stats")


class RedisStore:
    """One hash at ``key``; ``HINCRBYFLOAT`` per counter in one MULTI/EXEC."""

    name = "redis"

    def __init__(self, url: str, key: str, timeout: float) -> None:
        import redis

        self.key = key
        self.client: Any = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)

    def add(self, deltas: dict[str, float]) -> None:
        pipe = self.client.pipeline(transaction=True)
        for name, delta in deltas.items():
            pipe.hincrbyfloat(self.key, name, delta)
        pipe.execute()

    def read(self) -> dict[str, float]:
        return {k.decode(): float(v) for k, v in self.client.hgetall(self.key).items()}

    def clear(self) -> None:
        self.client.delete(self.key)


def make_store(config: Any) -> Store | None:
    """The store for a validated ``[stats]`` section; None for ``backend = "memory"``."""
    if config.backend == "sqlite":
        return SQLiteStore(config.path, config.timeout)
    if config.backend == "redis":
        return RedisStore(config.url, config.key, config.timeout)
    return None
