"""Single-flight for asyncio: identical concurrent requests share one upstream call.

dogpile's own lock is a thread mutex and cannot coordinate coroutines, so this module keeps an
in-process table of flights, one per cache key. A flight runs the upstream call in its own task;
every caller (the one who started it and the ones who joined) is a *subscriber*:

- a whole request waits for the flight's result; a streamed request reads the flight's chunks,
  from the first one, as they arrive (late joiners get a replay of what came before);
- a subscriber that cancels or stops early only unsubscribes; the flight is cancelled (and its
  upstream connection closed) only when no subscriber is left;
- an upstream error reaches every subscriber, after the chunks that came before it.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Awaitable, Callable

from modelwire.types import Chunk, Completion

__all__ = ["Flight", "FlightTable", "clone_chunk", "iterate", "wait_result"]


def clone_chunk(chunk: Chunk, shared: bool) -> Chunk:
    """A copy a subscriber may mutate without touching the others' (or the stored) chunks."""
    out = copy.copy(chunk)
    out.tool_calls = [copy.copy(t) for t in chunk.tool_calls]
    out.metadata = dict(chunk.metadata)
    if shared:
        out.cached = True
        out.metadata["cache_shared"] = True
    return out


class Flight:
    """One upstream call shared by its subscribers.

    :ivar chunks: chunks received so far (streamed flights).
    :ivar result: the completion (whole flights), set when done.
    :ivar error: the exception the upstream call ended with, if any.
    """

    def __init__(self, key: str, stream: bool) -> None:
        self.key = key
        self.stream = stream
        self.chunks: list[Chunk] = []
        self.result: Completion | None = None
        #: The encoded entry (JSON bytes), so each subscriber decodes its own fresh copy.
        self.payload: bytes | None = None
        self.error: BaseException | None = None
        self.done = False
        self.subscribers = 0
        self.task: asyncio.Task[None] | None = None
        self.table: FlightTable | None = None
        self.loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()

    def publish(self, chunk: Chunk) -> None:
        self.chunks.append(chunk)
        self._wake()

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

    def _wake(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def changed(self, timeout: float | None) -> None:
        """Wait for the next chunk or the end; TimeoutError after ``timeout`` seconds."""
        if timeout is None:
            await self._changed.wait()
        else:
            await asyncio.wait_for(self._changed.wait(), timeout)

    async def release(self) -> None:
        """One subscriber left; the last one out cancels an unfinished flight and waits for it
        to close its upstream connection."""
        self.subscribers -= 1
        task = self.task
        if self.subscribers <= 0 and not self.done and task is not None and not task.done():
            self.retire()  # nobody may join a flight that is being cancelled
            task.cancel()
            await asyncio.wait([task])


class FlightTable:
    """The flights in progress, by key."""

    def __init__(self) -> None:
        self.flights: dict[str, Flight] = {}

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
                if self.flights.get(key) is flight:
                    del self.flights[key]
                if not flight.done:
                    flight.finish(error=asyncio.CancelledError())

        self.flights[key] = flight
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


async def iterate(flight: Flight, shared: bool, idle_timeout: float | None) -> AsyncIterator[Chunk]:
    """The flight's chunks from the first, then its error if it failed (subscribed already)."""
    i = 0
    while True:
        while i < len(flight.chunks):
            yield clone_chunk(flight.chunks[i], shared)
            i += 1
        if flight.done:
            if flight.error is not None:
                raise flight.error
            return
        await flight.changed(idle_timeout)


