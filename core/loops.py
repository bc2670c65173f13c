"""Per-event-loop resources closed when their loop ends.

A resource bound to one event loop (an HTTP pool, an asyncio Redis client) must be closed on that
loop, before it closes. :func:`close_at_loop_end` parks an async generator on the running loop:
``loop.shutdown_asyncgens()``, which ``asyncio.run`` and modelwire's portal call before closing a
loop, finalizes it and so awaits the closing step; ``aclose()`` on the generator runs that step
at once (a client's own ``aclose``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

__all__ = ["close_at_loop_end"]


def close_at_loop_end(close: Callable[[], Awaitable[Any]]) -> AsyncGenerator[None, None]:
    """Park a generator on the running loop that awaits ``close()`` when the loop's async
    generators are shut down, or when the returned generator's ``aclose()`` is awaited.

    Call from a coroutine: the generator's first step only reaches its ``yield`` (nothing is
    awaited), so it is driven here by hand, which registers it with the running loop's
    async-generator hooks.
    """
    parked = _parked(close)
    try:
        parked.__anext__().send(None)
    except StopIteration:
        pass
    return parked


async def _parked(close: Callable[[], Awaitable[Any]]) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await close()
