"""Where spend adds up: this process (memory), the processes of one host (SQLite) or every host
(Redis).

Each limit has one record per scope subject and period: ``spent`` (settled) and ``reserved``
(estimates of calls in flight). :meth:`Store.reserve` checks and reserves every limit a request
falls under in one atomic step (a lock, a SQLite ``BEGIN IMMEDIATE`` transaction, a Lua script),
so concurrent callers in any number of processes cannot together pass a cap by more than
what their reservations under-estimated. Records expire a day after their period ends.

Blocking calls: the middleware runs the SQLite and Redis stores in a worker thread. Connections
are opened per process: a forked child opens its own on first use.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from modelwire.forks import reset_after_fork
from modelwire.plugins.sqlite import connect_shared

__all__ = ["Charge", "MemoryStore", "Record", "RedisStore", "SQLiteStore", "Store", "make_store"]

#: Records are kept this long after their period ended (``modelwire budget`` shows the last one).
_GRACE = 86_400.0
#: Float sums of prices drift by ulps: a call that fits the cap exactly must not be refused.
_TOLERANCE = 1e-9


@dataclass(slots=True)
class Charge:
    """One limit a request falls under: the record ``key``, the amount to reserve, its cap."""

    key: str
    amount: float
    cap: float
    expires: float
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Record:
    """One limit's record as stored."""

    key: str
    spent: float
    reserved: float
    cap: float
    meta: dict[str, Any]


def _over(used: float, amount: float, cap: float) -> bool:
    return used + amount > cap * (1 + _TOLERANCE)


class Store(Protocol):
    name: str

    def reserve(self, charges: list[Charge], now: float) -> tuple[int, float] | None:
        """Reserve every charge, or none: None on success, else ``(index, used)`` of the first
        charge that does not fit (``used`` = spent + reserved of its record)."""

    def settle(self, settled: list[tuple[str, float, float]]) -> None:
        """For each ``(key, reserved, actual)``: release the reservation, add the actual spend."""

    def read(self, now: float) -> list[Record]:
        """Every record whose grace period has not ended."""

    def close(self) -> None:
        """Release connections."""


class MemoryStore:
    """A dict behind a lock: the limits of this process only."""

    name = "memory"

    def __init__(self) -> None:
        self._records: dict[str, Record] = {}
        self._expires: dict[str, float] = {}
        self._lock = threading.Lock()
        reset_after_fork(self, MemoryStore._after_fork)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()  # a lock held by another thread at fork stays held forever

    def reserve(self, charges: list[Charge], now: float) -> tuple[int, float] | None:
        with self._lock:
            records = self._records
            for i, charge in enumerate(charges):
                record = records.get(charge.key)
                used = record.spent + record.reserved if record is not None else 0.0
                if _over(used, charge.amount, charge.cap):
                    return i, used
            for charge in charges:
                record = records.get(charge.key)
                if record is None:
                    record = records[charge.key] = Record(charge.key, 0.0, 0.0, charge.cap, charge.meta)
                    self._expires[charge.key] = charge.expires
                    self._prune(now)
                record.reserved += charge.amount
        return None

    def _prune(self, now: float) -> None:
        for key in [k for k, expires in self._expires.items() if expires < now]:
            self._records.pop(key, None)
            self._expires.pop(key, None)

    def settle(self, settled: list[tuple[str, float, float]]) -> None:
        with self._lock:
            for key, reserved, actual in settled:
                record = self._records.get(key)
                if record is not None:
                    record.reserved = max(0.0, record.reserved - reserved)
                    record.spent += actual

    def read(self, now: float) -> list[Record]:
        with self._lock:
            self._prune(now)
            return [Record(r.key, r.spent, r.reserved, r.cap, dict(r.meta)) for r in self._records.values()]

    def close(self) -> None:
        pass


class SQLiteStore:
    """One table ``mw_budget`` in the file at ``path``; reservations in ``BEGIN IMMEDIATE``."""

    name = "sqlite"

    def __init__(self, path: str, timeout: float) -> None:
        self.path = os.path.abspath(os.path.expanduser(path))
        self.timeout = timeout
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._lock = threading.Lock()  # one connection, used by one thread at a time
        self._pruned = 0.0
        reset_after_fork(self, SQLiteStore._after_fork)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._conn = None  # the parent's; never used (or closed) here

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():  # a connection must not cross a fork
            conn = connect_shared(self.path, self.timeout, isolation_level=None)
            # WAL + NORMAL: a commit survives the process crashing (not a power cut) without an
            # fsync per reservation, which cost ~20 ms per request with the default FULL.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS mw_budget (key TEXT PRIMARY KEY, spent REAL NOT NULL DEFAULT 0, "
                "reserved REAL NOT NULL DEFAULT 0, cap REAL NOT NULL, expires REAL NOT NULL, meta TEXT NOT NULL)"
            )
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def reserve(self, charges: list[Charge], now: float) -> tuple[int, float] | None:
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")  # takes the write lock first: no two processes check at once
            try:
                for i, charge in enumerate(charges):
                    row = conn.execute("SELECT spent + reserved FROM mw_budget WHERE key = ?", (charge.key,)).fetchone()
                    used = float(row[0]) if row else 0.0
                    if _over(used, charge.amount, charge.cap):
                        conn.execute("ROLLBACK")
                        return i, used
                conn.executemany(
                    "INSERT INTO mw_budget (key, reserved, cap, expires, meta) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET reserved = reserved + excluded.reserved, cap = excluded.cap",
                    [(c.key, c.amount, c.cap, c.expires, json.dumps(c.meta)) for c in charges],
                )
                if now - self._pruned > 60:
                    conn.execute("DELETE FROM mw_budget WHERE expires < ?", (now,))
                    self._pruned = now
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return None

    def settle(self, settled: list[tuple[str, float, float]]) -> None:
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "UPDATE mw_budget SET reserved = MAX(0, reserved - ?), spent = spent + ? WHERE key = ?",
                    [(reserved, actual, key) for key, reserved, actual in settled],
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def read(self, now: float) -> list[Record]:
        with self._lock:
            rows = self._connection().execute(
                "SELECT key, spent, reserved, cap, meta FROM mw_budget WHERE expires >= ? ORDER BY key", (now,)
            ).fetchall()
        return [Record(str(k), float(s), float(r), float(c), json.loads(m)) for k, s, r, c, m in rows]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None


# KEYS: the records. ARGV: amount_i, cap_i (i = 1..n), then meta_i, then expire-at_i (epoch s).
_RESERVE = """
local n = #KEYS
for i = 1, n do
  local v = redis.call('HMGET', KEYS[i], 'spent', 'reserved')
  local used = tonumber(v[1] or '0') + tonumber(v[2] or '0')
  local cap = tonumber(ARGV[2 * i])
  if used + tonumber(ARGV[2 * i - 1]) > cap * (1 + 1e-9) then
    return {i, tostring(used)}
  end
end
for i = 1, n do
  redis.call('HINCRBYFLOAT', KEYS[i], 'reserved', ARGV[2 * i - 1])
  redis.call('HSET', KEYS[i], 'cap', ARGV[2 * i], 'meta', ARGV[2 * n + i])
  redis.call('EXPIREAT', KEYS[i], ARGV[3 * n + i])
end
return {0, '0'}
"""

# KEYS: the records. ARGV: reserved_i, actual_i. A record that expired meanwhile is not recreated.
_SETTLE = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local left = redis.call('HINCRBYFLOAT', KEYS[i], 'reserved', -tonumber(ARGV[2 * i - 1]))
    if tonumber(left) < 0 then redis.call('HSET', KEYS[i], 'reserved', '0') end
    redis.call('HINCRBYFLOAT', KEYS[i], 'spent', ARGV[2 * i])
  end
end
return 0
"""


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


class RedisStore:
    """One hash per record (``spent``, ``reserved``, ``cap``, ``meta``), expiring a day after
    its period; check-and-reserve and settle are Lua scripts (atomic on the server)."""

    name = "redis"

    def __init__(self, url: str, key_prefix: str, timeout: float) -> None:
        import redis

        self.prefix = key_prefix
        # redis-py's pool notices a fork (pid check) and opens fresh connections in the child.
        self.client: Any = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._reserve = self.client.register_script(_RESERVE)
        self._settle = self.client.register_script(_SETTLE)

    def reserve(self, charges: list[Charge], now: float) -> tuple[int, float] | None:
        args: list[Any] = []
        for c in charges:
            args += [repr(c.amount), repr(c.cap)]
        args += [json.dumps(c.meta) for c in charges]
        args += [int(c.expires) + 1 for c in charges]
        index, used = self._reserve(keys=[c.key for c in charges], args=args)
        return None if int(index) == 0 else (int(index) - 1, float(used))

    def settle(self, settled: list[tuple[str, float, float]]) -> None:
        args: list[Any] = []
        for _, reserved, actual in settled:
            args += [repr(reserved), repr(actual)]
        self._settle(keys=[key for key, _, _ in settled], args=args)

    def read(self, now: float) -> list[Record]:
        records = []
        for key in sorted(self.client.scan_iter(match=_glob_escape(self.prefix) + "*", count=500)):
            raw = self.client.hgetall(key)
            if not raw:
                continue
            values = {k.decode(): v.decode() for k, v in raw.items()}
            records.append(Record(key.decode(), float(values.get("spent", 0)), float(values.get("reserved", 0)),
                                  float(values.get("cap", 0)), json.loads(values.get("meta", "{}"))))
        return records

    def close(self) -> None:
        self.client.close()




def make_store(config: Any) -> Store:
    """The store a validated ``[budget]`` section names."""
    if config.backend == "sqlite":
        return SQLiteStore(config.path, config.timeout)
    if config.backend == "redis":
        return RedisStore(config.url, config.key_prefix, config.timeout)
    return MemoryStore()
