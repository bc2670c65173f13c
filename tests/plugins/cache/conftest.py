"""Fixtures of the cache tests: a gate inside the cache that holds a shared stream until the test
lets it go on, so that tests order events by what happened, never by how long it took."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

import modelwire
from modelwire.middleware import CallNext, CallNextStream, Middleware
from modelwire.types import Chunk, Completion, Request


class Gate(Middleware):
    """Inside the cache, so what it does happens inside the shared flight: a whole request waits
    before going upstream, a stream after its first chunk, until ``opened`` is set (the test
    decides when the flight goes on, whatever the machine's load). Right after the flight
    published a stream's second chunk (and woke its followers) it cancels ``victim``: the race
    asyncio.wait_for (Python <= 3.11) lost, wake-up and cancellation in the same loop iteration."""

    opened: asyncio.Event | None = None
    victim: asyncio.Task[Any] | None = None

    async def ahandle(self, request: Request, call_next: CallNext) -> Completion:
        if Gate.opened is not None:
            await Gate.opened.wait()
        return await call_next(request)

    async def ahandle_stream(self, request: Request, call_next: CallNextStream) -> AsyncIterator[Chunk]:
        seen = 0
        async for chunk in call_next(request):
            yield chunk
            seen += 1
            if seen == 1 and Gate.opened is not None:
                await Gate.opened.wait()
            if seen == 2 and Gate.victim is not None:
                Gate.victim.cancel()


class GatePlugin:
    @modelwire.hookimpl
    def modelwire_register_middleware(self, register: Callable[[str, type[Middleware]], None]) -> None:
        register("gate", Gate)


async def joined(flight_table: Any, subscribers: int) -> None:
    """Wait until the one flight in ``flight_table`` (FlightTable) has ``subscribers`` subscribers."""
    while not flight_table.flights or next(iter(flight_table.flights.values())).subscribers < subscribers:
        await asyncio.sleep(0.005)


def open_gate(gate: type[Gate]) -> None:
    assert gate.opened is not None
    gate.opened.set()


@pytest.fixture
def gate() -> Iterator[type[Gate]]:
    Gate.opened, Gate.victim = asyncio.Event(), None
    yield Gate
    Gate.opened.set()
    Gate.opened, Gate.victim = None, None
