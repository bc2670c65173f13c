"""Where the rate-limit counts live: the common backend surface and the memory backend.

The shared SQLite and Redis backends are in :mod:`.stores`.

All three keep pyrate-limiter buckets (sliding-window logs) behind one pyrate ``Limiter`` with
a bucket factory of our own, and admit with ``Limiter.try_acquire_async`` (non-blocking: the
waiting, in arrival order and up to a deadline, is done by :mod:`.engine`). On top
of pyrate they add what reconciliation and provider feedback need: ``refund`` (free part of a
token reservation), ``charge`` (add tokens the estimate missed), a shared ``cooldown`` and
``usage`` for ``modelwire limits``.

SQLite and Redis calls are blocking, so each backend runs them on one dedicated worker thread
(never on the event loop) with a time limit; any failure there surfaces as
:class:`BackendUnavailable`, which the engine turns into the configured policy.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import math
import time
import uuid
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pyrate_limiter import AbstractBucket, BucketFactory, InMemoryBucket, Limiter, Rate, RateItem

__all__ = ["SEP", "Backend", "BackendUnavailable", "MemoryBackend", "ThreadBucket", "ThreadedBackend"]

T = TypeVar("T")

#: Separates the bucket id from the per-request ticket in pyrate item names (tickets never contain it).
SEP = "#"
_LEAK_EVERY_MS = 2000


def _now_ms(bucket: AbstractBucket) -> int:
    """The bucket's clock in ms (monotonic for memory, wall clock for SQLite and Redis)."""
    return int(bucket.now())  # type: ignore[no-untyped-call]


class BackendUnavailable(Exception):
    """The shared store failed or timed out. Deliberately not a ``TimeoutError``: pyrate's
    ``try_acquire_async`` would swallow that and report a plain rejection."""


def _wait_seconds(rate: Rate | None, last: tuple[int, int] | None, weight: int, now_ms: int) -> float:
    """Seconds until a rejected item of ``weight`` fits, from the bucket's recorded verdict."""
    if rate is None:
        return 0.001  # lost a race for pyrate's lock (another thread): try again at once
    if weight > rate.limit:
        return math.inf
    if last is None or last[0] != weight:
        return 0.001
    return max(0.001, (last[1] - now_ms) / 1000)


class _Factory(BucketFactory):
    """Routes ``"<bucket id>#<ticket>"`` items to their bucket. Leaking is done by the backends
    on the acquire path, so no pyrate Leaker thread is started per limiter."""

    def __init__(self) -> None:
        self.buckets: dict[str, AbstractBucket] = {}

    def wrap_item(self, name: str, weight: int = 1) -> RateItem:
        bucket = self.buckets[name.rsplit(SEP, 1)[0]]
        return RateItem(name, _now_ms(bucket), weight)

    def get(self, item: RateItem) -> AbstractBucket:
        return self.buckets[item.name.rsplit(SEP, 1)[0]]

    def schedule_leak(self, new_bucket: AbstractBucket) -> None:
        return None


class Backend:
    """Common surface of the three backends; ``name`` is ``memory``, ``sqlite`` or ``redis``."""

    name = "memory"

    def __init__(self) -> None:
        self.factory = _Factory()
        self.limiter = Limiter(self.factory, buffer_ms=0)
        self.rates: dict[str, list[Rate]] = {}
        self._instance = uuid.uuid4().hex[:8]
        self._tickets = itertools.count()

    def ticket(self) -> str:
        """A name unique to one reservation across processes and hosts."""
        return f"{self._instance}-{next(self._tickets)}"

    def after_fork(self) -> None:
        """Called in a forked child: a ticket name copied from the parent would let this process
        refund or move the parent's reservations, so the child takes a name of its own."""
        self._instance = uuid.uuid4().hex[:8]
        self._tickets = itertools.count()

    def has(self, bucket_id: str) -> bool:
        return bucket_id in self.factory.buckets

    async def ensure(self, bucket_id: str, rates: list[Rate], refundable: bool) -> None:
        """Create the bucket ``bucket_id`` with ``rates`` unless it exists."""
        raise NotImplementedError

    async def acquire(self, bucket_id: str, ticket: str, weight: int) -> float:
        """Take ``weight`` units: 0.0 when admitted, else seconds until it could fit (inf: never)."""
        admitted = await self.limiter.try_acquire_async(f"{bucket_id}{SEP}{ticket}", weight, blocking=False)
        if admitted:
            return 0.0
        return self._rejected_wait(self.factory.buckets[bucket_id], weight)

    def _rejected_wait(self, bucket: AbstractBucket, weight: int) -> float:
        raise NotImplementedError

    async def refund(self, bucket_id: str, ticket: str, units: int) -> None:
        raise NotImplementedError

    def restamp_now(self, bucket_id: str, ticket: str, ago: float = 0.0) -> Callable[[], Awaitable[None]] | None:
        """Move the reservation of ``ticket`` later, to ``ago`` seconds before now (never earlier).

        Called on the event loop from the provider's send signal, so it must not block: the
        memory backend moves the entry at once and returns None; a shared backend reads the
        clock now and returns the store update to await.
        """
        raise NotImplementedError

    async def charge(self, bucket_id: str, ticket: str, units: int) -> None:
        raise NotImplementedError

    async def cooldown(self, key: str) -> float:
        """Seconds left in the shared pause of ``key`` (0.0 when none)."""
        raise NotImplementedError

    async def set_cooldown(self, key: str, seconds: float) -> None:
        """Pause ``key`` for all callers for ``seconds`` (never shortens a longer pause)."""
        raise NotImplementedError

    async def usage(self, bucket_id: str) -> list[tuple[Rate, int]]:
        """Units counted in each rate's current window."""
        raise NotImplementedError

    async def bucket_ids(self) -> list[str]:
        """Buckets this backend knows (for a shared store: created by any process)."""
        return sorted(self.factory.buckets)

    async def aclose(self) -> None:
        return None


class _MemoryBucket(InMemoryBucket):
    """InMemoryBucket that remembers where each refundable reservation sits, and leaks itself."""

    def __init__(self, rates: list[Rate], refundable: bool) -> None:
        super().__init__(rates)
        self.refundable = refundable
        self.stamps: OrderedDict[str, int] = OrderedDict()
        self._last_leak = 0

    def put(self, item: RateItem) -> bool:
        ok = super().put(item)
        if ok and self.refundable:
            self.stamps[item.name] = item.timestamp
            if len(self.stamps) > 10_000:
                self.stamps.popitem(last=False)
        if item.timestamp - self._last_leak > _LEAK_EVERY_MS:
            self._last_leak = item.timestamp
            self.leak(item.timestamp)
        return ok

    def refund(self, name: str, units: int) -> None:
        with self._lock:
            stamp = self.stamps.pop(name, None)
            if stamp is None:
                return
            i = bisect_left(self.items, stamp, key=lambda it: it.timestamp)
            keep: list[RateItem] = []
            j = i
            while j < len(self.items) and self.items[j].timestamp == stamp:
                entry = self.items[j]
                if entry.name == name and units > 0:
                    units -= 1
                else:
                    keep.append(entry)
                j += 1
            self.items[i:j] = keep

    def restamp(self, name: str, ago: float = 0.0) -> None:
        """Move the entries of ``name`` to ``ago`` s before now, keeping the log sorted by time."""
        now = _now_ms(self) - int(ago * 1000)
        with self._lock:
            stamp = self.stamps.get(name)
            if stamp is None or stamp >= now:
                return
            i = bisect_left(self.items, stamp, key=lambda it: it.timestamp)
            moved: list[RateItem] = []
            j = i
            while j < len(self.items) and self.items[j].timestamp == stamp:
                if self.items[j].name == name:
                    moved.append(RateItem(name, now, self.items[j].weight))
                    del self.items[j]
                else:
                    j += 1
            if moved:
                k = bisect_right(self.items, now, key=lambda it: it.timestamp)
                self.items[k:k] = moved
                self.stamps[name] = now
                self.stamps.move_to_end(name)

    def charge(self, name: str, units: int) -> None:
        item = RateItem(name, _now_ms(self), units)
        with self._lock:
            i = bisect_right(self.items, item.timestamp, key=lambda it: it.timestamp)
            self.items[i:i] = [item] * units

    def usage(self) -> list[tuple[Rate, int]]:
        now = _now_ms(self)
        with self._lock:
            return [
                (rate, len(self.items) - bisect_left(self.items, now - rate.interval, key=lambda it: it.timestamp))
                for rate in self.rates
            ]


class MemoryBackend(Backend):
    """Counts in this process only (the pyrate ``InMemoryBucket``)."""

    name = "memory"

    def __init__(self) -> None:
        super().__init__()
        self._cooldowns: dict[str, float] = {}

    async def ensure(self, bucket_id: str, rates: list[Rate], refundable: bool) -> None:
        self.ensure_now(bucket_id, rates, refundable)

    def ensure_now(self, bucket_id: str, rates: list[Rate], refundable: bool) -> None:
        if bucket_id not in self.factory.buckets:
            self.factory.buckets[bucket_id] = _MemoryBucket(rates, refundable)
            self.rates[bucket_id] = rates

    async def acquire(self, bucket_id: str, ticket: str, weight: int) -> float:
        """What ``Limiter.try_acquire_async(blocking=False)`` does for a memory bucket, without its
        per-thread asyncio lock and its awaitable checks at every step (a memory bucket's ``put``
        is synchronous): the limiter cost ~140 us per call (rps + tpm), this saves about a third."""
        if weight == 0:
            return 0.0
        bucket = self.factory.buckets[bucket_id]
        lock: Any = self.limiter.lock  # an RLock: this limiter was built from a factory
        if not lock.acquire(blocking=False):
            return _wait_seconds(None, None, weight, 0)  # another thread holds it: try again at once
        try:
            admitted = bucket.put(RateItem(f"{bucket_id}{SEP}{ticket}", _now_ms(bucket), weight))
        finally:
            lock.release()
        return 0.0 if admitted else self._rejected_wait(bucket, weight)

    def _rejected_wait(self, bucket: AbstractBucket, weight: int) -> float:
        return _wait_seconds(bucket.failing_rate, bucket._last_wait, weight, _now_ms(bucket))

    def _bucket(self, bucket_id: str) -> _MemoryBucket:
        bucket = self.factory.buckets[bucket_id]
        assert isinstance(bucket, _MemoryBucket)
        return bucket

    async def refund(self, bucket_id: str, ticket: str, units: int) -> None:
        self._bucket(bucket_id).refund(f"{bucket_id}{SEP}{ticket}", units)

    def restamp_now(self, bucket_id: str, ticket: str, ago: float = 0.0) -> Callable[[], Awaitable[None]] | None:
        self._bucket(bucket_id).restamp(f"{bucket_id}{SEP}{ticket}", ago)
        return None

    async def charge(self, bucket_id: str, ticket: str, units: int) -> None:
        self._bucket(bucket_id).charge(f"{bucket_id}{SEP}{ticket}+", units)

    async def cooldown(self, key: str) -> float:
        return self.cooldown_now(key)

    def cooldown_now(self, key: str) -> float:
        until = self._cooldowns.get(key)
        if until is None:
            return 0.0
        left = until - time.monotonic()
        if left <= 0:
            self._cooldowns.pop(key, None)
            return 0.0
        return left

    async def set_cooldown(self, key: str, seconds: float) -> None:
        until = time.monotonic() + seconds
        self._cooldowns[key] = max(until, self._cooldowns.get(key, 0.0))

    async def usage(self, bucket_id: str) -> list[tuple[Rate, int]]:
        return self._bucket(bucket_id).usage()


class ThreadBucket(AbstractBucket):
    """An async face for a blocking pyrate bucket: every call runs on the backend's thread.

    ``put`` also captures the verdict (failing rate, recorded wait) in the same thread hop, so
    the wait is read consistently with the decision that produced it.
    """

    is_async = True

    def __init__(
        self,
        inner: AbstractBucket,
        run: Callable[[Callable[[], Any]], Any],
        refundable: bool,
        on_leak: Callable[[], Any] | None = None,
    ) -> None:
        self.inner = inner
        self._run = run
        self._on_leak = on_leak
        self._rates = inner.rates
        self.refundable = refundable
        self.verdict: tuple[Rate | None, tuple[int, int] | None, int] = (None, None, 0)
        self.stamps: OrderedDict[str, int] = OrderedDict()
        self._last_leak = 0

    def now(self) -> int:
        return _now_ms(self.inner)  # wall-clock ms, the same in every process

    async def put(self, item: RateItem) -> bool:
        def op() -> tuple[bool, Rate | None, tuple[int, int] | None, int]:
            ok = bool(self.inner.put(item))
            if item.timestamp - self._last_leak > _LEAK_EVERY_MS:
                self._last_leak = item.timestamp
                self.inner.leak(item.timestamp)
                if self._on_leak is not None:
                    self._on_leak()
            return ok, self.inner.failing_rate, self.inner._last_wait, _now_ms(self.inner)

        ok, rate, last, now = await self._run(op)
        admitted = bool(ok)
        self.verdict = (rate, last, now)
        self.failing_rate = rate  # pyrate's limiter reads it after a rejected put
        if admitted and self.refundable:
            self.stamps[item.name] = item.timestamp
            if len(self.stamps) > 10_000:
                self.stamps.popitem(last=False)
        return admitted

    async def leak(self, current_timestamp: int | None = None) -> int:
        return int(await self._run(lambda: self.inner.leak(current_timestamp)))

    async def flush(self) -> None:
        await self._run(self.inner.flush)

    async def count(self) -> int:
        return int(await self._run(self.inner.count))

    async def peek(self, index: int) -> RateItem | None:
        result: RateItem | None = await self._run(lambda: self.inner.peek(index))
        return result


class ThreadedBackend(Backend):
    """Shared plumbing of SQLite and Redis: one worker thread, a time limit per call."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout
        self._executor = self._new_executor()

    def _new_executor(self) -> concurrent.futures.ThreadPoolExecutor:
        return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"modelwire-ratelimit-{self.name}")

    def after_fork(self) -> None:
        """In a forked child the parent's worker thread does not exist (the copied pool would
        never run a call again) and its connection and buckets belong to the parent: start a
        pool of our own and let buckets and connection be made again on first use. The old pool
        is dropped, not shut down: its thread is not ours to join."""
        super().after_fork()
        self._executor = self._new_executor()
        self.factory.buckets.clear()
        self._forget_store()

    def _forget_store(self) -> None:
        """Drop (never close) the connection inherited from the parent."""
        return None

    async def run(self, fn: Callable[[], T]) -> T:
        """Run the blocking ``fn`` on the worker thread; any failure is BackendUnavailable."""
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._executor, fn)
            # The store's own timeouts bound the thread; this bounds the caller even if they fail.
            return await asyncio.wait_for(future, self.timeout * 2 + 0.05)
        except asyncio.CancelledError:
            raise
        except BackendUnavailable:
            raise
        except asyncio.TimeoutError as exc:
            message = f"{self.name} limiter backend did not answer within {self.timeout * 2:.2f} s"
            raise BackendUnavailable(message) from exc
        except Exception as exc:
            raise BackendUnavailable(f"{self.name} limiter backend failed: {type(exc).__name__}: {exc}") from exc

    def _rejected_wait(self, bucket: AbstractBucket, weight: int) -> float:
        assert isinstance(bucket, ThreadBucket)
        rate, last, now = bucket.verdict
        return _wait_seconds(rate, last, weight, now)

    def _wrapped(self, bucket_id: str) -> ThreadBucket:
        bucket = self.factory.buckets[bucket_id]
        assert isinstance(bucket, ThreadBucket)
        return bucket

    async def aclose(self) -> None:
        try:
            await self.run(self._close_store)
        except BackendUnavailable:
            pass
        self._executor.shutdown(wait=False, cancel_futures=True)
        # A closed client may be used again (Client.close(), then a call): the worker (its
        # thread starts on first use), the connection and the buckets are made again then.
        self._executor = self._new_executor()
        self.factory.buckets.clear()

    def _close_store(self) -> None:
        return None
