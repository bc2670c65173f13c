"""Fixtures of the cache tests: a gate inside the cache that holds a shared stream until the test
lets it go on, so that tests order events by what happened, never by how long it took."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

import modelwire
from modelwire.middleware import CallNextStream, Middleware
from modelwire.types import Chunk, Request


class Gate(Middleware):
    """Inside the cache, so what it does happens inside the shared flight: after the stream's
    first chunk it waits until ``opened`` is set (the test decides when the stream goes on,
    whatever the machine's load); right after the flight published the second chunk (and woke
    its followers) it cancels ``victim``. That is the race asyncio.wait_for (Python <= 3.11)
    lost: wake-up and cancellation in the same loop iteration, and wait_for returned the result."""

    applies_to = ("stream",)
    opened: asyncio.Event | None = None
    victim: asyncio.Task[Any] | None = None

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


@pytest.fixture
def gate() -> Iterator[type[Gate]]:
    Gate.opened, Gate.victim = asyncio.Event(), None
    yield Gate
    Gate.opened.set()
    Gate.opened, Gate.victim = None, None
