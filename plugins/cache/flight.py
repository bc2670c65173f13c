"""Single-flight for asyncio: identical concurrent requests share one upstream call.

dogpile's own lock is a thread mutex and cannot coordinate coroutines, so this module keeps an
in-process table of flights, one per cache key. A flight runs the upstream call in its own task;
every caller (the one who started it and the ones who joined) is a *subscriber*:

- a whole request waits for the flight's result; a streamed request reads the flight's chunks,
  from the first one, as they arrive (late joiners get a replay of what came before);
- every subscriber gets the leader's answer itself (a copy of it), never a re-read of the store,
  whose entry may already have expired by the time a subscriber wakes up;
- a subscriber that cancels or stops early only unsubscribes; the flight is cancelled (and its
  upstream connection closed) only when no subscriber is left;
- an upstream error reaches every subscriber, after the chunks that came before it, each as its
  own copy (one shared object would collect every subscriber's traceback frames);
- a stream that can no longer be stored stops *buffering*: it leaves the table (nobody may
  join it, as the chunks a joiner would need are gone) and keeps only the chunks some
  subscriber has not read yet, so its memory stays bounded by the slowest reader's lag.

Waiting never uses ``asyncio.wait_for``: up to Python 3.11 it returns the result when the
caller's cancellation races with the awaited event, which swallowed the cancellation of a
follower woken by a chunk (it then returned the whole answer instead of CancelledError).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Awaitable, Callable

from modelwire.types import Chunk, Completion

from .codec import Frozen, raw_json

__all__ = ["Cursor", "Flight", "FlightTable", "clone_chunk", "follower_copy", "fresh_error", "iterate", "wait_result"]

#: A flight that stopped buffering trims (and lets its readers catch up) past this many chunks.
_TRIM_FLOOR = 64


def clone_chunk(chunk: Chunk, shared: bool) -> Chunk:
    """A copy a subscriber may mutate without touching the others' (or the stored) chunks."""
    out = copy.copy(chunk)
    out.tool_calls = [copy.copy(t) for t in chunk.tool_calls]
    out.metadata = dict(chunk.metadata)
    if shared:
        out.cached = True
        out.metadata["cache_shared"] = True
    return out


def follower_copy(flight: Flight) -> Completion:
    """The leader's completion for one follower: objects of its own, marked cached (it cost no
    upstream call), ``raw`` in its JSON form as on any cache hit. The JSON form is made once per
    flight and thawed per follower (1,000 followers each dumped the pydantic raw body before)."""
    result = flight.result
    assert result is not None
    if flight.frozen_raw is None:
        flight.frozen_raw = Frozen(raw_json(result.raw))
    return Completion(result.text, result.finish_reason, result.model, result.provider, copy.copy(result.usage),
                      copy.deepcopy(result.tool_calls), True, flight.frozen_raw.thaw())


def fresh_error(error: BaseException) -> BaseException:
    """A copy of ``error`` for one subscriber: same class, message, attributes and cause, no
    traceback. Raising the one shared object from N subscribers appends every raise's frames to
    its ``__traceback__`` (1,505 frames for 500 callers) and lets one caller see another's."""
    try:
        out = type(error).__new__(type(error), *error.args)
        out.__dict__.update(error.__dict__)
    except Exception:  # an exotic exception class that cannot be rebuilt: drop the traceback only
        return error.with_traceback(None)
    out.args = error.args
    out.__cause__ = error.__cause__
    out.__context__ = error.__context__
    out.__suppress_context__ = error.__suppress_context__
    return out


class Cursor:
    """Where one subscriber is in a streamed flight: the absolute index of its next chunk."""

    __slots__ = ("pos",)

    def __init__(self) -> None:
        self.pos = 0


class Flight:
    """One upstream call shared by its subscribers.

    :ivar chunks: the chunks held (streamed flights); ``chunks[0]`` is chunk number ``base``.
        While ``buffering``, every chunk from the first is held.
    :ivar buffering: False once the stream cannot be stored (``dropped`` says why).
    :ivar buffered_bytes: a lower bound of the size of the entry the held stream would make.
    :ivar result: the completion (whole flights), set when done.
    :ivar error: the exception the upstream call ended with, if any.
    :ivar served_by: ``(provider, model)`` that answered, when a fallback sent it elsewhere.
    """

    def __init__(self, key: str, stream: bool) -> None:
        self.key = key
        self.stream = stream
        self.chunks: list[Chunk] = []
        self.base = 0
        self.buffering = True
        self.dropped: str | None = None
        self.buffered_bytes = 0
        self.result: Completion | None = None
        #: ``result.raw`` as JSON data, made for the first follower (see :func:`follower_copy`)
        self.frozen_raw: Frozen | None = None
        #: The encoded entry (JSON bytes) the leader stores; never read back by subscribers.
        self.payload: bytes | None = None
        self.error: BaseException | None = None
        self.served_by: tuple[str, str] | None = None
        self.done = False
        self.subscribers = 0
        self.cursors: list[Cursor] = []
        self.task: asyncio.Task[None] | None = None
        self.table: FlightTable | None = None
        self.loop = asyncio.get_running_loop()
        self._waiters: list[asyncio.Future[None]] = []

    # -- subscribers -------------------------------------------------------------------------------

    def subscribe(self) -> Cursor:
        """Count one more subscriber; its cursor starts at the first chunk (a full replay)."""
        self.subscribers += 1
        cursor = Cursor()
        self.cursors.append(cursor)
        return cursor

    async def release(self, cursor: Cursor) -> None:
        """One subscriber left; the last one out cancels an unfinished flight and waits for it
        to close its upstream connection."""
        self.subscribers -= 1
        if cursor in self.cursors:
            self.cursors.remove(cursor)
        task = self.task
        if self.subscribers <= 0 and not self.done and task is not None and not task.done():
            self.retire()  # nobody may join a flight that is being cancelled
            task.cancel()
            await asyncio.wait([task])

    # -- the leader's side -------------------------------------------------------------------------

    def publish(self, chunk: Chunk, size: int = 0) -> None:
        """Add a chunk (``size``: its share of the stored entry, counted while buffering)."""
        self.chunks.append(chunk)
        if self.buffering:
            self.buffered_bytes += size
        elif len(self.chunks) >= _TRIM_FLOOR:
            self._trim()
        self._wake()

    async def make_room(self) -> None:
        """After a publish, when the stream stopped buffering and its readers lag: give them a
        turn (each drains every chunk it can when it runs), then drop what they read. One read
        of the upstream can carry hundreds of buffered events without the loop turning; this
        keeps the chunks held near ``_TRIM_FLOOR`` whatever the load. A subscriber that stops
        reading without leaving still holds what it has not read."""
        if not self.buffering and len(self.chunks) >= _TRIM_FLOOR:
            await asyncio.sleep(0)
            self._trim()

    def stop_buffering(self, reason: str) -> None:
        """The stream will not be stored: stop holding chunks every subscriber has read."""
        if not self.buffering:
            return
        self.buffering, self.dropped = False, reason
        self.retire()
        self._trim()

    def _trim(self) -> None:
        upto = min((c.pos for c in self.cursors), default=self.base + len(self.chunks))
        if upto > self.base:
            del self.chunks[: upto - self.base]
            self.base = upto

    def finish(self, result: Completion | None = None, error: BaseException | None = None) -> None:
        self.result, self.error, self.done = result, error, True
        self._wake()

    def retire(self) -> None:
        """Leave the table now: later requests must not join (an answer that will not be stored)."""
        if self.table is not None and self.table.flights.get(self.key) is self:
            del self.table.flights[self.key]

    async def settled(self) -> None:
        """Wait until the flight's task has ended (its answer stored), without cancelling it."""
        if self.task is not None and not self.task.done():
            await asyncio.wait([self.task])

    # -- waiting -------------------------------------------------------------------------------------

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def changed(self, timeout: float | None) -> None:
        """Wait for the next chunk or the end; TimeoutError after ``timeout`` seconds.

        Each waiter awaits its own future: a cancelled waiter cancels only that future, and
        the cancellation always reaches the caller (see the module docstring)."""
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._waiters.append(waiter)
        timer = None if timeout is None else self.loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class FlightTable:
    """The flights in progress, by key."""

    def __init__(self) -> None:
        #: The flights a request may still join, by key.
        self.flights: dict[str, Flight] = {}
        #: Every flight whose task has not ended, joinable or not (retired ones included).
        self.running: set[Flight] = set()

    def held_chunks(self) -> int:
        """Chunks held in memory by running flights (bounded once a stream stops buffering)."""
        return sum(len(f.chunks) for f in self.running)

    def get(self, key: str) -> Flight | None:
        flight = self.flights.get(key)
        if flight is not None and flight.loop is not asyncio.get_running_loop():
            return None  # a flight on another event loop cannot be awaited from this one
        return flight

    def start(self, key: str, stream: bool, run: Callable[[Flight], Awaitable[None]]) -> Flight:
        """Start a flight for ``key``; ``run(flight)`` does the upstream work and must call
        ``flight.finish``. The flight leaves the table when ``run`` returns."""
        flight = Flight(key, stream)

        async def body() -> None:
            try:
                await run(flight)
            except BaseException as exc:  # CancelledError included: subscribers must not hang
                if not flight.done:
                    flight.finish(error=exc)
                if not isinstance(exc, Exception):
                    raise
            finally:
                self.running.discard(flight)
                if self.flights.get(key) is flight:
                    del self.flights[key]
                if not flight.done:
                    flight.finish(error=asyncio.CancelledError())

        self.flights[key] = flight
        self.running.add(flight)
        flight.table = self
        flight.task = asyncio.get_running_loop().create_task(body(), name=f"modelwire-cache-flight-{key[-12:]}")
        return flight


async def wait_result(flight: Flight, timeout: float | None) -> Flight:
    """Wait until ``flight`` is done (the caller subscribed already); TimeoutError after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while not flight.done:
        left = None if deadline is None else deadline - loop.time()
        if left is not None and left <= 0:
            raise TimeoutError
        await flight.changed(left)
    return flight


async def iterate(
    flight: Flight, cursor: Cursor, shared: bool, idle_timeout: float | None, deadline: float | None = None
) -> AsyncIterator[Chunk]:
    """The flight's chunks from ``cursor`` on, then its error if it failed (subscribed already).

    TimeoutError when no chunk comes for ``idle_timeout`` seconds or at ``deadline`` (loop time)."""
    while True:
        while cursor.pos < flight.base + len(flight.chunks):
            chunk = flight.chunks[cursor.pos - flight.base]
            cursor.pos += 1
            yield clone_chunk(chunk, shared)
        if flight.done:
            if flight.error is not None:
                raise fresh_error(flight.error)
            return
        wait = idle_timeout
        if deadline is not None:
            left = deadline - flight.loop.time()
            if left <= 0:
                raise TimeoutError
            wait = left if wait is None else min(wait, left)
        await flight.changed(wait)
