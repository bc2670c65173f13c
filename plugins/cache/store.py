"""The middleware's view of a backend: a short timeout on every call, a circuit breaker, counters.

A backend that fails or answers slowly never fails a request: the operation counts as an error,
is logged as a warning, and the request goes on as a miss. After ``circuit_failures`` failures in
a row the backend is skipped for ``circuit_reset`` seconds; then one call probes it again, so
the cache comes back by itself when Redis does.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from modelwire.log import logger

from .backends import Backend, DistributedLock

__all__ = ["CacheMetrics", "Store"]

T = TypeVar("T")

_FAILED: Any = object()

#: Counters flushed to a shared backend at most this often (seconds), in the background.
_FLUSH_EVERY = 2.0


@dataclass
class CacheMetrics:
    """Counters of one cache middleware (this process).

    ``skipped`` counts responses not stored, by reason; ``errors`` backend calls that failed or
    timed out (``timeouts`` is the timed-out part); ``circuit_skips`` calls not even tried because
    the circuit was open; ``coalesced`` requests answered by another identical request in flight.
    """

    hits: int = 0
    misses: int = 0
    stores: int = 0
    coalesced: int = 0
    errors: int = 0
    timeouts: int = 0
    corrupt: int = 0
    circuit_skips: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def reset(self) -> None:
        """Zero every counter in place (a forked child starts its own counts)."""
        for name, value in vars(self).items():
            if isinstance(value, int):
                setattr(self, name, 0)
        self.skipped.clear()

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in vars(self).items() if k != "skipped"}
        out["skipped"] = dict(self.skipped)
        return out

    def flat(self) -> dict[str, int]:
        out = {k: v for k, v in vars(self).items() if isinstance(v, int)}
        out.update({f"skipped.{k}": v for k, v in self.skipped.items()})
        return out


class Store:
    """Calls ``backend`` with a timeout, off the event loop when it does I/O.

    After ``os.fork()`` (gunicorn ``--preload``, multiprocessing's fork start method) the child
    inherits the parent's thread pool object but none of its threads: work submitted to it would
    wait forever (each call timing out, the first distributed lock stalling ``lock_timeout``).
    The first call in a new process therefore starts a fresh pool, fresh backend locks and
    zeroed counters (the parent keeps counting and flushing its own).

    :param backend: the byte store.
    :param timeout: seconds allowed for one get/set/delete.
    :param circuit_failures: failures in a row that open the circuit.
    :param circuit_reset: seconds the circuit stays open before a probe.
    """

    def __init__(self, backend: Backend, timeout: float, circuit_failures: int, circuit_reset: float) -> None:
        self.backend = backend
        self.timeout = timeout
        self.circuit_failures = circuit_failures
        self.circuit_reset = circuit_reset
        self.metrics = CacheMetrics()
        self._failures = 0
        self._open_until = 0.0
        self._executor: ThreadPoolExecutor | None = None
        self._flushed: dict[str, int] = {}
        self._last_flush = time.monotonic()
        self._pid = os.getpid()

    @property
    def circuit_open(self) -> bool:
        return self._failures >= self.circuit_failures and time.monotonic() < self._open_until

    def _check_fork(self) -> None:
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._executor = None  # the parent's workers do not exist here; never shut their pool down
        self.metrics.reset()
        self._flushed = {}
        self._last_flush = time.monotonic()
        self._failures, self._open_until = 0, 0.0
        self.backend.after_fork()

    def executor(self) -> ThreadPoolExecutor:
        self._check_fork()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="modelwire-cache")
        return self._executor

    async def call(self, op: str, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T | Any:
        """``fn(*args)`` within the timeout; returns ``_FAILED`` (see :meth:`failed`) on any error."""
        self._check_fork()
        if self.circuit_open:
            self.metrics.circuit_skips += 1
            return _FAILED
        if not self.backend.offload:
            try:
                result = fn(*args)
            except Exception as exc:
                self._failure(op, exc)
                return _FAILED
            self._failures = 0
            return result
        future = asyncio.get_running_loop().run_in_executor(self.executor(), fn, *args)
        return await self._settle(op, future, timeout or self.timeout)

    async def acall(self, op: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T | Any:
        """``await fn(*args)`` on the event loop (an asyncio client), with :meth:`call`'s
        timeout, circuit breaker and counters; returns ``_FAILED`` on any error.

        The client must leave nothing behind when the await is cancelled (redis.asyncio
        disconnects a connection whose reply it did not read: no late reply reaches the next
        command on that connection)."""
        self._check_fork()
        if self.circuit_open:
            self.metrics.circuit_skips += 1
            return _FAILED
        if sys.version_info < (3, 11):  # no asyncio.timeout: a task, awaited as call() awaits a thread
            return await self._settle(op, asyncio.ensure_future(fn(*args)), self.timeout)
        # asyncio.timeout tells its own expiry from the caller's cancellation, which it lets
        # through (wait_for up to 3.11 may swallow it); no task, no thread hop.
        timer = asyncio.timeout(self.timeout)
        try:
            async with timer:
                result = await fn(*args)
        except TimeoutError as exc:
            if timer.expired():
                self._timed_out(op, self.timeout)
            else:
                self._failure(op, exc)
            return _FAILED
        except Exception as exc:
            self._failure(op, exc)
            return _FAILED
        self._success(asyncio.get_running_loop())
        return result

    async def _settle(self, op: str, future: asyncio.Future[Any], timeout: float) -> Any:
        """The result of ``future`` within ``timeout``, or ``_FAILED``; a cancellation of the
        caller cancels ``future`` and propagates."""
        # What asyncio.wait does for one future, without its sets and callbacks per call (about
        # 15 us less per offloaded op here): the caller awaits a waiter that the result or the
        # timer resolves, never ``future`` itself, so a cancellation is always the caller's and
        # always propagates (wait_for up to 3.11 may swallow one racing with the result).
        loop = future.get_loop()
        waiter = loop.create_future()
        wake = partial(_wake, waiter)
        timer = loop.call_later(timeout, wake)
        future.add_done_callback(wake)
        try:
            await waiter
        except BaseException:
            _abandon(future)  # not started yet: never run it; running: its result is dropped
            raise
        finally:
            timer.cancel()
        if not future.done():
            _abandon(future)
            self._timed_out(op, timeout)
            return _FAILED
        try:
            result = future.result()
        except Exception as exc:
            self._failure(op, exc)
            return _FAILED
        self._success(future.get_loop())
        return result

    def _timed_out(self, op: str, timeout: float) -> None:
        self.metrics.timeouts += 1
        self._failure(op, TimeoutError(f"no answer within {timeout} s"))

    def _success(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._failures >= self.circuit_failures:
            logger.warning("cache.backend_recovered", backend=self.backend.name)
        self._failures = 0
        self._maybe_flush(loop)

    @staticmethod
    def failed(result: Any) -> bool:
        return result is _FAILED

    def _failure(self, op: str, exc: BaseException) -> None:
        self.metrics.errors += 1
        if "Timeout" in type(exc).__name__ and not isinstance(exc, TimeoutError):
            self.metrics.timeouts += 1  # the client library's own socket timeout (redis.TimeoutError)
        self._failures += 1
        opening = self._failures >= self.circuit_failures
        if opening:
            self._open_until = time.monotonic() + self.circuit_reset
        logger.warning(
            "cache.backend_error",
            backend=self.backend.name,
            op=op,
            error_class=type(exc).__name__,
            error=str(exc)[:200],
            circuit="open" if opening else "closed",
            skip_seconds=self.circuit_reset if opening else None,
        )

    # -- operations ---------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        if self.backend.async_get:  # the hit path: no thread hop
            result = await self.acall("get", self.backend.aget, key)
        else:
            result = await self.call("get", self.backend.get, key)
        if self.failed(result) or result is None:
            return None
        self.metrics.bytes_read += len(result)
        data: bytes = result
        return data

    async def set(self, key: str, value: bytes, ttl: float | None) -> bool:
        result = await self.call("set", self.backend.set, key, value, ttl)
        if self.failed(result):
            return False
        self.metrics.stores += 1
        self.metrics.bytes_written += len(value)
        return True

    async def delete(self, key: str) -> bool:
        return not self.failed(await self.call("delete", self.backend.delete, key))

    async def lock(self, key: str, wait: float) -> DistributedLock | None:
        """Acquire the backend's distributed lock for ``key`` (waiting up to ``wait`` seconds);
        None when there is no such lock, it could not be had in time, or the backend failed."""
        self._check_fork()
        mutex = self.backend.mutex(key)
        if mutex is None:
            return None
        got = await self.call("lock", mutex.acquire, True, timeout=wait)
        if self.failed(got) or not got:
            return None
        return mutex

    async def unlock(self, mutex: DistributedLock) -> None:
        await self.call("unlock", _release, mutex)

    # -- shared counters ----------------------------------------------------------------------

    def _maybe_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        if time.monotonic() - self._last_flush >= _FLUSH_EVERY:
            self._last_flush = time.monotonic()
            deltas = self._deltas()
            if deltas:
                loop.run_in_executor(self.executor(), _quiet, self.backend.add_stats, deltas)

    def _deltas(self) -> dict[str, int]:
        now = self.metrics.flat()
        deltas = {k: v - self._flushed.get(k, 0) for k, v in now.items() if v != self._flushed.get(k, 0)}
        self._flushed = now
        return deltas

    async def close(self) -> None:
        if self.backend.offload and not self.circuit_open:
            deltas = self._deltas()
            if deltas:
                await self.call("stats", self.backend.add_stats, deltas, timeout=max(self.timeout, 1.0))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        try:
            await self.backend.aclose()
        except Exception:
            pass
        try:
            self.backend.close()
        except Exception:
            pass


def _release(mutex: DistributedLock) -> None:
    try:
        mutex.release()
    except Exception as exc:  # the lock expired (lock_timeout) and someone else may hold it now
        logger.warning("cache.lock_release_failed", error_class=type(exc).__name__)


def _wake(waiter: asyncio.Future[None], *_: Any) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _abandon(future: asyncio.Future[Any]) -> None:
    """Cancel ``future``; a task that still ends with an error is not reported as unretrieved."""
    future.cancel()
    future.add_done_callback(lambda f: f.cancelled() or f.exception())


def _quiet(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:
        pass
