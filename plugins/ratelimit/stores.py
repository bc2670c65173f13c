"""The shared rate-limit backends: SQLite (the processes of one host) and Redis (many hosts).

Both run their blocking client on the backend's one worker thread (see
:class:`~.backends.ThreadedBackend`), keep pyrate-limiter buckets
(``SQLiteBucket`` / ``RedisBucket``), and add refund, charge, cooldown and usage on the same store.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pyrate_limiter import AbstractBucket, Rate

from modelwire.plugins.sqlite import connect_shared

from .backends import SEP, Backend, MemoryBackend, ThreadBucket, ThreadedBackend

__all__ = ["RedisBackend", "SQLiteBackend", "make_backend"]


#: SQLite connections a forked child inherited: never used, never closed (see _forget_store).
_INHERITED: list[sqlite3.Connection] = []


def _table(bucket_id: str) -> str:
    return "mw_" + hashlib.sha1(bucket_id.encode()).hexdigest()[:20]


class SQLiteBackend(ThreadedBackend):
    """One SQLite file shared by the processes of one host, serialised by a file lock
    (pyrate's ``SQLiteBucket`` with the ``filelock`` lock it uses for ``use_file_lock``)."""

    name = "sqlite"

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__(timeout)
        self.path = os.path.abspath(os.path.expanduser(path))
        self.lock = self._new_lock()
        self._conn: sqlite3.Connection | None = None

    def _new_lock(self) -> Any:
        from filelock import FileLock

        return FileLock(self.path + ".lock", timeout=self.timeout, poll_interval=0.002)

    def _forget_store(self) -> None:
        # Closing the parent's connection here would release this process's POSIX locks on the
        # database file (they belong to the process, not the descriptor), so it is kept open
        # and unused; the file lock object may have been copied while held: a fresh one.
        if self._conn is not None:
            _INHERITED.append(self._conn)
            self._conn = None
        self.lock = self._new_lock()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            with self.lock:
                conn = connect_shared(self.path, self.timeout, isolation_level="DEFERRED")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("CREATE TABLE IF NOT EXISTS mw_cooldown (key TEXT PRIMARY KEY, until_ms INTEGER)")
                conn.execute("CREATE TABLE IF NOT EXISTS mw_buckets (bucket TEXT PRIMARY KEY, tbl TEXT, rates TEXT)")
                conn.commit()
            self._conn = conn
        return self._conn

    async def ensure(self, bucket_id: str, rates: list[Rate], refundable: bool) -> None:
        if bucket_id in self.factory.buckets:
            return
        from pyrate_limiter import SQLiteBucket

        table = _table(bucket_id)

        def op() -> AbstractBucket:
            conn = self._connection()
            with self.lock:
                conn.execute(f"CREATE TABLE IF NOT EXISTS '{table}' (name VARCHAR, item_timestamp INTEGER)")
                conn.execute(f"CREATE INDEX IF NOT EXISTS 'idx_{table}_ts' ON '{table}' (item_timestamp)")
                conn.execute(f"CREATE INDEX IF NOT EXISTS 'idx_{table}_name' ON '{table}' (name)")
                conn.execute(
                    "INSERT OR REPLACE INTO mw_buckets VALUES (?, ?, ?)",
                    (bucket_id, table, ";".join(f"{r.limit}/{r.interval}" for r in rates)),
                )
                conn.commit()
            return SQLiteBucket(rates, conn, table, lock=self.lock)

        inner = await self.run(op)
        self.factory.buckets.setdefault(bucket_id, ThreadBucket(inner, self.run, refundable))
        self.rates[bucket_id] = rates

    async def refund(self, bucket_id: str, ticket: str, units: int) -> None:
        table, name = _table(bucket_id), f"{bucket_id}{SEP}{ticket}"
        self._wrapped(bucket_id).stamps.pop(name, None)

        def op() -> None:
            conn = self._connection()
            with self.lock:
                conn.execute(
                    f"DELETE FROM '{table}' WHERE rowid IN (SELECT rowid FROM '{table}' WHERE name = ? LIMIT ?)",
                    (name, units),
                )
                conn.commit()

        await self.run(op)

    def restamp_now(self, bucket_id: str, ticket: str, ago: float = 0.0) -> Callable[[], Awaitable[None]] | None:
        table, name = _table(bucket_id), f"{bucket_id}{SEP}{ticket}"
        stamps = self._wrapped(bucket_id).stamps
        now = time.time_ns() // 1_000_000 - int(ago * 1000)  # read now: the update runs later, on the worker
        if stamps.get(name, now) >= now:
            return None
        stamps[name] = now

        def op() -> None:
            conn = self._connection()
            with self.lock:
                conn.execute(f"UPDATE '{table}' SET item_timestamp = ? WHERE name = ? AND item_timestamp < ?",
                             (now, name, now))
                conn.commit()

        return lambda: self.run(op)

    async def charge(self, bucket_id: str, ticket: str, units: int) -> None:
        table, name = _table(bucket_id), f"{bucket_id}{SEP}{ticket}+"

        def op() -> None:
            conn = self._connection()
            now = time.time_ns() // 1_000_000
            with self.lock:
                conn.executemany(f"INSERT INTO '{table}' (name, item_timestamp) VALUES (?, ?)", [(name, now)] * units)
                conn.commit()

        await self.run(op)

    async def cooldown(self, key: str) -> float:
        def op() -> float:
            row = self._connection().execute("SELECT until_ms FROM mw_cooldown WHERE key = ?", (key,)).fetchone()
            return 0.0 if row is None else max(0.0, (int(row[0]) - time.time_ns() // 1_000_000) / 1000)

        return await self.run(op)

    async def set_cooldown(self, key: str, seconds: float) -> None:
        def op() -> None:
            conn = self._connection()
            until = time.time_ns() // 1_000_000 + int(seconds * 1000)
            with self.lock:
                conn.execute(
                    "INSERT INTO mw_cooldown VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET until_ms = "
                    "max(until_ms, excluded.until_ms)",
                    (key, until),
                )
                conn.commit()

        await self.run(op)

    async def usage(self, bucket_id: str) -> list[tuple[Rate, int]]:
        table, rates = _table(bucket_id), self.rates[bucket_id]

        def op() -> list[tuple[Rate, int]]:
            conn, now = self._connection(), time.time_ns() // 1_000_000
            return [
                (r, int(conn.execute(f"SELECT COUNT(*) FROM '{table}' WHERE item_timestamp >= ?", (now - r.interval,))
                        .fetchone()[0]))
                for r in rates
            ]

        return await self.run(op)

    async def bucket_ids(self) -> list[str]:
        def op() -> list[tuple[str, str]]:
            return list(self._connection().execute("SELECT bucket, rates FROM mw_buckets").fetchall())

        rows = await self.run(op)
        for bucket_id, rates in rows:
            if bucket_id not in self.rates:
                self.rates[bucket_id] = [Rate(int(a), int(b)) for a, b in (r.split("/") for r in rates.split(";"))]
        return sorted(bucket_id for bucket_id, _ in rows)

    def _close_store(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


_REFUND_LUA = """
local members = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[1])
local prefix, n, removed = ARGV[2], tonumber(ARGV[3]), 0
for _, m in ipairs(members) do
  if removed >= n then break end
  if string.sub(m, 1, #prefix) == prefix then
    redis.call('ZREM', KEYS[1], m)
    removed = removed + 1
  end
end
return removed
"""

_RESTAMP_LUA = """
local members = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[1])
local prefix, moved = ARGV[2], 0
for _, m in ipairs(members) do
  if string.sub(m, 1, #prefix) == prefix then
    redis.call('ZADD', KEYS[1], 'GT', ARGV[3], m)
    moved = moved + 1
  end
end
return moved
"""

def _put_item_script() -> str:
    """pyrate's check-and-insert script, counting every entry from the window start on.

    pyrate counts ``ZCOUNT key window_start now``, with ``now`` the new item's timestamp, read
    before the script runs. An entry another process (or this one) has just moved to its send
    time can be later than that ``now``: it was then not counted, and two processes sent
    within a few ms of each other under a limit of one per window. A moved entry is a request
    already sent, so it always counts.
    """
    from pyrate_limiter.buckets.redis_bucket import LuaScript

    bounded = "redis.call('ZCOUNT', bucket, window_start, now)"
    if bounded not in LuaScript.PUT_ITEM:  # a pyrate-limiter release changed its script
        raise RuntimeError("pyrate-limiter's Redis PUT_ITEM script changed; modelwire's limiter needs an update")
    return LuaScript.PUT_ITEM.replace(bounded, "redis.call('ZCOUNT', bucket, window_start, '+inf')")


_COOLDOWN_LUA = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
"""


class RedisBackend(ThreadedBackend):
    """Buckets in Redis sorted sets (pyrate's ``RedisBucket``), shared by every host; the
    cooldown is a key with a PX expiry. The client never retries: a dead or frozen Redis
    fails within ``timeout`` and the engine applies the policy."""

    name = "redis"

    def __init__(self, url: str, prefix: str, timeout: float) -> None:
        super().__init__(timeout)
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.prefix = prefix
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False, decode_responses=False,
        )
        self._refund = self.client.register_script(_REFUND_LUA)
        self._cooldown = self.client.register_script(_COOLDOWN_LUA)
        self._restamp = self.client.register_script(_RESTAMP_LUA)

    def _key(self, bucket_id: str) -> str:
        return f"{self.prefix}{bucket_id}"

    async def ensure(self, bucket_id: str, rates: list[Rate], refundable: bool) -> None:
        if bucket_id in self.factory.buckets:
            return
        from pyrate_limiter import RedisBucket

        key = self._key(bucket_id)

        def op() -> AbstractBucket:
            self.client.hset(f"{self.prefix}buckets", bucket_id, ";".join(f"{r.limit}/{r.interval}" for r in rates))
            return RedisBucket(rates, self.client, key, self.client.script_load(_put_item_script()))

        inner = await self.run(op)
        longest = max(r.interval for r in rates) * 2

        def expire() -> None:
            self.client.pexpire(key, longest)  # an abandoned bucket disappears on its own

        self.factory.buckets.setdefault(bucket_id, ThreadBucket(inner, self.run, refundable, expire))
        self.rates[bucket_id] = rates

    async def refund(self, bucket_id: str, ticket: str, units: int) -> None:
        name = f"{bucket_id}{SEP}{ticket}"
        stamp = self._wrapped(bucket_id).stamps.pop(name, None)
        if stamp is not None:
            await self.run(lambda: self._refund(keys=[self._key(bucket_id)], args=[stamp, name + ":", units]))

    def restamp_now(self, bucket_id: str, ticket: str, ago: float = 0.0) -> Callable[[], Awaitable[None]] | None:
        name = f"{bucket_id}{SEP}{ticket}"
        stamps = self._wrapped(bucket_id).stamps
        stamp, now = stamps.get(name), time.time_ns() // 1_000_000 - int(ago * 1000)
        if stamp is None or stamp >= now:
            return None
        stamps[name] = now

        async def update() -> None:
            await self.run(lambda: self._restamp(keys=[self._key(bucket_id)], args=[stamp, name + ":", now]))

        return update

    async def charge(self, bucket_id: str, ticket: str, units: int) -> None:
        name, key = f"{bucket_id}{SEP}{ticket}+", self._key(bucket_id)

        def op() -> None:
            now = time.time_ns() // 1_000_000
            self.client.zadd(key, {f"{name}:{i}": now for i in range(units)})

        await self.run(op)

    async def cooldown(self, key: str) -> float:
        ttl = await self.run(lambda: self.client.pttl(f"{self.prefix}{key}:cooldown"))
        return max(0.0, int(ttl) / 1000)

    async def set_cooldown(self, key: str, seconds: float) -> None:
        ms = max(1, int(seconds * 1000))
        await self.run(lambda: self._cooldown(keys=[f"{self.prefix}{key}:cooldown"], args=[ms]))

    async def usage(self, bucket_id: str) -> list[tuple[Rate, int]]:
        key, rates = self._key(bucket_id), self.rates[bucket_id]

        def op() -> list[tuple[Rate, int]]:
            now = time.time_ns() // 1_000_000
            return [(r, int(self.client.zcount(key, now - r.interval, "+inf"))) for r in rates]

        return await self.run(op)

    async def bucket_ids(self) -> list[str]:
        raw: dict[Any, Any] = await self.run(lambda: dict(self.client.hgetall(f"{self.prefix}buckets")))
        names = []
        for name, rates in raw.items():
            bucket_id = name.decode()
            names.append(bucket_id)
            if bucket_id not in self.rates:
                parsed = (r.split("/") for r in rates.decode().split(";"))
                self.rates[bucket_id] = [Rate(int(a), int(b)) for a, b in parsed]
        return sorted(names)

    def _close_store(self) -> None:
        self.client.close()
        self.client.connection_pool.disconnect()


def make_backend(kind: str, *, path: str | None, url: str | None, prefix: str, timeout: float) -> Backend:
    """The backend named by the ``[ratelimit]`` section (nothing connects until first use)."""
    if kind == "sqlite":
        assert path is not None
        return SQLiteBackend(path, timeout)
    if kind == "redis":
        assert url is not None
        return RedisBackend(url, prefix, timeout)
    return MemoryBackend()
