"""The store's offloaded calls (file and Redis writes, locks, stats: a worker thread awaited on
the loop): a caller's cancellation always propagates, even when it lands with the result, and a
timeout drops the worker's late result."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from modelwire.plugins.cache.backends import FileBackend
from modelwire.plugins.cache.store import Store


def _store(tmp_path: Path, timeout: float = 30.0) -> Store:
    return Store(FileBackend(str(tmp_path / "cache")), timeout, circuit_failures=1000, circuit_reset=1.0)


async def test_cancellation_landing_with_the_result_propagates(tmp_path: Path) -> None:
    """The worker queues the caller's cancellation just before its result: both reach the loop in
    the same iteration (the race asyncio.wait_for up to 3.11 loses: it returns the result and the
    cancellation is gone). The caller must see CancelledError every time."""
    store = _store(tmp_path)
    loop = asyncio.get_running_loop()
    task: asyncio.Task[Any] | None = None

    def work() -> str:
        assert task is not None
        loop.call_soon_threadsafe(task.cancel)
        return "late"

    for _ in range(50):
        task = asyncio.create_task(store.call("get", work))
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
    assert store.metrics.errors == 0 and store.metrics.timeouts == 0
    assert await store.call("get", lambda: "next") == "next"
    await store.close()


async def test_cancelled_while_running_propagates_and_result_is_dropped(tmp_path: Path) -> None:
    store = _store(tmp_path)
    started, release = threading.Event(), threading.Event()

    def work() -> str:
        started.set()
        release.wait(30)
        return "late"

    task = asyncio.create_task(store.call("get", work))
    assert await asyncio.to_thread(started.wait, 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    assert store.metrics.errors == 0
    assert await store.call("get", lambda: "next") == "next"
    await store.close()


async def test_timeout_gives_up_and_counts_once(tmp_path: Path) -> None:
    store = _store(tmp_path, timeout=0.2)
    release = threading.Event()
    try:
        result = await store.call("get", release.wait, 30)
        assert store.failed(result)
        assert store.metrics.timeouts == 1 and store.metrics.errors == 1
    finally:
        release.set()
    assert await store.call("get", lambda: "next") == "next"
    await store.close()
