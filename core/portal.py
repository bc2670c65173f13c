"""Run coroutines and async iterators from synchronous code.

The sync API (``Client.complete``, ``Client.stream``) drives the one async pipeline on a private
event loop in a daemon thread. That works from plain scripts, from threads, and from inside a
running event loop (the caller's loop is blocked for the call, but nothing deadlocks, because the
work happens on the other loop). The thread starts on first use and is restarted after a fork.

At interpreter exit the loop is stopped and the thread joined: a daemon thread frozen in the
middle of an import would otherwise deadlock finalizers that import too. A sync call made after
that (an ``atexit`` handler registered before ``import modelwire``, a ``__del__`` that calls
``client.close()``) runs on a fresh event loop in the calling thread instead of waiting for a loop
nobody runs any more.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import os
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

from .errors import SyncCallError

__all__ = ["is_portal_loop", "iterate", "run"]

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_pid = 0
_thread: threading.Thread | None = None
#: pid whose portal was stopped at exit; from then on sync calls run on a loop of their own.
_stopped_pid = 0
_exit_lock = threading.Lock()
_exit_loop: asyncio.AbstractEventLoop | None = None
#: Seconds the exit handler gives the loop to close its sessions and async generators.
_EXIT_GRACE = 5.0


def _portal_loop() -> asyncio.AbstractEventLoop | None:
    """The portal loop, started on first use; None once the exit handler stopped it."""
    global _loop, _pid, _thread
    loop = _loop
    pid = os.getpid()
    if loop is not None and _pid == pid:
        return loop
    with _lock:
        if _stopped_pid == pid:
            return None
        if _loop is None or _pid != pid:
            _loop = asyncio.new_event_loop()
            _pid = pid
            _thread = threading.Thread(target=_loop.run_forever, name="modelwire-portal", daemon=True)
            _thread.start()
        return _loop


def is_portal_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` is the portal's (it lives until exit, so its resources do too)."""
    return loop is _loop and _pid == os.getpid()


@atexit.register
def _stop_portal() -> None:
    global _stopped_pid, _loop
    with _lock:
        _stopped_pid = os.getpid()
        loop, thread, pid = _loop, _thread, _pid
        _loop = None
    if loop is None or thread is None or pid != os.getpid() or not thread.is_alive():
        return
    try:
        asyncio.run_coroutine_threadsafe(_wind_down(), loop).result(_EXIT_GRACE)
    except Exception:  # the process is exiting: a stuck or failing cleanup must not keep it alive
        pass
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=_EXIT_GRACE)
    if not thread.is_alive():
        loop.close()


async def _wind_down() -> None:
    """What ``asyncio.run`` does before it closes its loop. The tasks left (litellm's logging
    worker) are cancelled and awaited, so none is "destroyed but pending" at exit; closing the
    live async generators releases what they hold (this loop's HTTP clients, see
    :mod:`modelwire.providers.transport`) while the loop still runs."""
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_asyncgens()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on the portal loop and return its result.

    :raises SyncCallError: when called from modelwire's own loop (a hook or middleware making a
        blocking call: it would wait for itself), or after exit from inside a running loop.
    """
    running = _running_loop()
    loop = _portal_loop()
    if loop is None:
        return _run_after_exit(coro, running)
    if running is loop:
        coro.close()
        raise SyncCallError(
            "a blocking modelwire call (complete, stream, close...) was made from code running on "
            "modelwire's own event loop (a hook or middleware): it would wait for itself. Use the "
            "async API there (await client.acomplete(...), client.astream(...), await client.aclose())"
        )
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise


def _run_after_exit(coro: Coroutine[Any, Any, T], running: asyncio.AbstractEventLoop | None) -> T:
    """After the exit handler: run on a loop of our own in this thread (nobody runs the portal
    loop any more). One loop serves every such call, so a sync stream can span several."""
    global _exit_loop
    if running is not None:
        coro.close()
        raise SyncCallError(
            "a blocking modelwire call was made from a running event loop after modelwire shut down "
            "at interpreter exit; use the async API (await client.acomplete(...)) there"
        )
    with _exit_lock:  # a loop runs in one thread at a time
        if _exit_loop is None or _exit_loop.is_closed():
            _exit_loop = asyncio.new_event_loop()
            _exit_loop.set_default_executor(_InlineExecutor())
        return _exit_loop.run_until_complete(coro)


class _InlineExecutor(concurrent.futures.ThreadPoolExecutor):
    """Runs submitted work in the calling thread. After interpreter shutdown began, thread pools
    refuse new work ("cannot schedule new futures"), yet litellm hands part of every call to
    ``run_in_executor``; at exit nothing else needs the loop, so blocking it is harmless."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


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
