"""Run coroutines and async iterators from synchronous code.

The sync API (``Client.complete``, ``Client.stream``) drives the one async pipeline on a private
event loop in a daemon thread. That works from plain scripts, from threads, and from inside a
running event loop (the caller's loop is blocked for the call, but nothing deadlocks, because the
work happens on the other loop). The thread starts on first use and is restarted after a fork.
At interpreter exit the loop is stopped and the thread joined: a daemon thread frozen in the
middle of an import (litellm imports lazily from background tasks) would otherwise deadlock
finalizers that import too.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

__all__ = ["iterate", "run"]

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_pid = 0
_thread: threading.Thread | None = None


def _portal_loop() -> asyncio.AbstractEventLoop:
    global _loop, _pid, _thread
    loop = _loop
    if loop is not None and _pid == os.getpid():
        return loop
    with _lock:
        if _loop is None or _pid != os.getpid():
            _loop = asyncio.new_event_loop()
            _pid = os.getpid()
            _thread = threading.Thread(target=_loop.run_forever, name="modelwire-portal", daemon=True)
            _thread.start()
        return _loop


@atexit.register
def _stop_portal() -> None:
    loop, thread = _loop, _thread
    if loop is not None and thread is not None and _pid == os.getpid() and thread.is_alive():
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on the portal loop and return its result."""
    loop = _portal_loop()
    if _running_loop() is loop:
        coro.close()
        raise RuntimeError("modelwire: a sync call was made from inside modelwire's own event loop")
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise


def iterate(agen: AsyncIterator[T]) -> Iterator[T]:
    """Iterate ``agen`` from sync code, one item per round trip; closing the iterator closes it."""
    try:
        while True:
            try:
                yield run(agen.__anext__())  # type: ignore[arg-type]
            except StopAsyncIteration:
                return
    finally:
        aclose = getattr(agen, "aclose", None)
        if aclose is not None:
            run(aclose())


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
