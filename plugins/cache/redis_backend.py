"""The Redis cache backend: dogpile's sync Redis backend for writes, locks, clear and stats (in the
cache's worker threads), and its reads on the event loop: one ``redis.asyncio`` client per loop.

Why: a hit through the sync client (redis-py in the cache's worker threads) paid a thread hop
(``run_in_executor`` and the wake-up back on the loop, 110-180 us p50 on a loaded 2-core machine)
on top of the round trip; an asyncio client reads on the loop without blocking it (bench row 5).
Only the hit path's GET moves: writes, locks, clear and stats stay on the sync client in threads
(dogpile's distributed lock is synchronous, and a write is off the caller's path anyway).

An asyncio connection belongs to the loop that opened it (driving it from another loop shifts
replies between callers: matrix C20, litellm#39319), and the portal loop and a host's loop both
call, so each loop gets its own client, created on its first read. It is closed by
:meth:`LoopClients.aclose` (the cache middleware's ``aclose``, for the loop it runs on) or, for a
loop that never called it, when that loop's work is done: a parked async generator is finalized
by ``loop.shutdown_asyncgens()``, which ``asyncio.run`` and the portal call before closing the loop
(:func:`modelwire.loops.close_at_loop_end`, as the provider transports).

A forked child never touches its parent's connections (they are the parent's sockets): they are
kept, unused and unclosed, for the child's lifetime (closing or collecting them would warn, and
for TLS write on the parent's session), and the child opens its own on its first read.

A cancelled or timed-out read leaves no half-read reply on a pooled connection: redis-py (>= 4.5.4,
CVE-2023-28858/28859) disconnects a connection whose read did not finish (matrix C15).
"""

from __future__ import annotations

import asyncio
import os
import weakref
from functools import partial
from typing import Any

from modelwire.forks import reset_after_fork
from modelwire.loops import close_at_loop_end

from .backends import NO_VALUE, STATS_KEY, Backend, DistributedLock, key_text

__all__ = ["LoopClients", "RedisCacheBackend"]

#: Per-loop clients inherited from a parent process: held so they are never collected (their
#: ``__del__`` would warn about "unclosed Connection" and close the parent's sockets' copies).
_inherited: list[Any] = []


class _Owned:
    """One loop's client, and the parked generator that closes it when the loop ends."""

    __slots__ = ("client", "pid", "finalizer")

    def __init__(self, client: Any) -> None:
        self.client = client
        self.pid = os.getpid()
        self.finalizer: Any = None

    def park(self, clients: LoopClients) -> None:
        """Close this client when its loop ends (call from a coroutine on that loop)."""
        self.finalizer = close_at_loop_end(partial(_close, clients, self))


async def _close(clients: LoopClients, owned: _Owned) -> None:
    # forgotten first: the parked generator holds its loop (its finalizer hook), which would keep
    # every ended loop alive as long as the client does
    clients.forget(owned)
    if owned.pid == os.getpid():  # a parent's connections are never closed by a child
        await owned.client.aclose()


class LoopClients:
    """A ``redis.asyncio.Redis`` per event loop for ``url``, with the sync client's settings:
    ``timeout`` as socket and connect timeout, no retries (the store's circuit breaker decides
    when to try again), no health-check PINGs."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Owned] = weakref.WeakKeyDictionary()
        # cleared in a forked child before it runs any code of its own: the parent's loop objects
        # may be collected in the child before its first cache call, which would drop (and warn
        # about) the parent's clients
        reset_after_fork(self, LoopClients.after_fork)

    def current(self) -> Any:
        """The running loop's client, created on first use (call from a coroutine)."""
        loop = asyncio.get_running_loop()
        owned = self._by_loop.get(loop)
        if owned is None:
            owned = self._by_loop[loop] = _Owned(self._new_client())
            owned.park(self)
        return owned.client

    def _new_client(self) -> Any:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        return aioredis.Redis.from_url(
            self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0), health_check_interval=0,
        )

    async def get(self, key: str) -> bytes | None:
        value = await self.current().get(key)
        return None if value is None else bytes(value)

    async def aclose(self) -> None:
        """Close the running loop's client; other loops' clients close when their loop ends."""
        owned = self._by_loop.get(asyncio.get_running_loop())
        if owned is not None:
            await owned.finalizer.aclose()  # runs its ``finally``: forgotten, then closed

    def forget(self, owned: _Owned) -> None:
        for loop, mine in list(self._by_loop.items()):
            if mine is owned:
                del self._by_loop[loop]

    def after_fork(self) -> None:
        """In a forked child: keep the parent's clients out of reach (never used, never closed)."""
        if self._by_loop:
            _inherited.extend(self._by_loop.values())
            self._by_loop = weakref.WeakKeyDictionary()

    def open_loops(self) -> int:
        """How many event loops have an open client (tests check that none is left)."""
        return len(self._by_loop)


class RedisCacheBackend(Backend):
    """dogpile's RedisBackend (sync redis-py), keys under ``key_prefix``, native expiry per entry,
    and dogpile's distributed lock (a Redis lock that expires after ``lock_timeout``)."""

    name = "redis"
    offload = True
    async_get = True

    def __init__(self, url: str, key_prefix: str, timeout: float, lock_timeout: float) -> None:
        from dogpile.cache.backends import redis as _redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.prefix = key_prefix
        self.lock_timeout = lock_timeout
        redis_backend: Any = _redis.RedisBackend
        self._dogpile: Any = redis_backend(
            {
                "url": url,
                "socket_timeout": timeout,
                "socket_connect_timeout": timeout,
                "distributed_lock": True,
                "thread_local_lock": False,
                "lock_timeout": lock_timeout,
                "lock_sleep": 0.02,
                # wait a little longer than a lock can live: a crashed holder's lock expires first
                "lock_blocking_timeout": lock_timeout + 1.0,
                # redis-py retries timeouts 3 times by default: that would multiply the cache
                # timeout; modelwire's circuit breaker decides when to try again instead.
                "connection_kwargs": {"retry": Retry(NoBackoff(), 0), "health_check_interval": 0},
            }
        )
        self.client = self._dogpile.writer_client
        self.reads = LoopClients(url, timeout)  # same server, timeouts and no-retry policy

    def get(self, key: str) -> bytes | None:
        value = self._dogpile.get_serialized(self.prefix + key)
        return None if value is NO_VALUE else bytes(value)

    async def aget(self, key: str) -> bytes | None:
        return await self.reads.get(self.prefix + key)

    def set(self, key: str, value: bytes, ttl: float | None) -> None:
        if ttl:
            self.client.set(self.prefix + key, value, px=max(1, int(ttl * 1000)))
        else:
            self.client.set(self.prefix + key, value)

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        values = self.client.mget([self.prefix + key for key in keys]) if keys else []
        return [None if v is None else bytes(v) for v in values]

    def set_many(self, items: list[tuple[str, bytes]], ttl: float | None) -> None:
        pipe = self.client.pipeline(transaction=False)  # one round trip
        for key, value in items:
            pipe.set(self.prefix + key, value, px=max(1, int(ttl * 1000)) if ttl else None)
        pipe.execute()

    def delete(self, key: str) -> None:
        self._dogpile.delete(self.prefix + key)

    def _scan(self, namespace: str | None) -> list[bytes]:
        pattern = _glob_escape(self.prefix + (namespace + ":" if namespace is not None else "")) + "*"
        stats = (self.prefix + STATS_KEY).encode()
        return [k for k in self.client.scan_iter(match=pattern, count=1000) if k != stats]

    def clear(self, namespace: str | None = None) -> int:
        keys = self._scan(namespace)
        for i in range(0, len(keys), 500):
            self.client.delete(*keys[i : i + 500])
        return len(keys)

    def count(self) -> int:
        return len(self._scan(None))

    def lock_name(self, key: str) -> str:
        """The Redis key of the distributed lock for ``key`` (tests simulate a crashed holder)."""
        return str(self._dogpile.lock_template.format(self.prefix + key))

    def mutex(self, key: str) -> DistributedLock | None:
        lock: DistributedLock | None = self._dogpile.get_mutex(self.prefix + key)
        return lock

    def add_stats(self, deltas: dict[str, int]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for name, n in deltas.items():
            pipe.hincrby(self.prefix + STATS_KEY, name, n)
        pipe.execute()

    def read_stats(self) -> dict[str, int]:
        raw = self.client.hgetall(self.prefix + STATS_KEY)
        return {key_text(k): int(v) for k, v in raw.items()}

    def close(self) -> None:
        self.client.close()

    async def aclose(self) -> None:
        await self.reads.aclose()

    def after_fork(self) -> None:
        self.reads.after_fork()


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)

