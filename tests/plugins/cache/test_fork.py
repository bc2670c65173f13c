"""The file and Redis caches in a process forked after use (gunicorn --preload, multiprocessing's
fork start method): real ``os.fork()``, a real redis-server (issue 9, item 13, cache part)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import modelwire
from modelwire.plugins.cache import cache_of
from modelwire.testing import FakeServer, RedisServer
from tests.forking import run_forked

MakeClient = Callable[..., modelwire.Client]
MODEL = "openai/gpt-4o"
#: A generous bound for the child: it needs milliseconds; before the fix every backend call in
#: the child timed out (here after 5 s) and a Redis miss waited for the distributed lock
#: (``lock_timeout`` + 1 s + timeout; ~31 s with the defaults).


def _child_calls(client: modelwire.Client) -> dict[str, Any]:
    cache = cache_of(client)
    stored = client.complete("stored by the parent", model=MODEL)
    fresh = client.complete("new in the child", model=MODEL)
    again = client.complete("new in the child", model=MODEL)
    report = {
        "stored": [stored.text, stored.cached],
        "fresh": [fresh.text, fresh.cached],
        "again": [again.text, again.cached],
        "metrics": cache.metrics.flat(),
    }
    client.close()
    return report


@pytest.mark.parametrize("backend", ["file", "redis"])
def test_cache_works_in_a_forked_child(make_client: MakeClient, server: FakeServer, tmp_path: Path,
                                       redis_server: RedisServer, backend: str) -> None:
    # a 5 s backend timeout: on a busy machine a call must not time out (it would count as an error)
    section: dict[str, Any] = {"backend": "file", "path": str(tmp_path / "cache")} if backend == "file" else \
        {"backend": "redis", "url": redis_server.url, "key_prefix": f"fork:{time.time_ns()}:", "lock_timeout": 5.0}
    section["timeout"] = 5.0
    client = make_client(middleware=["cache"], cache=section)
    # the parent uses the cache first: its worker threads (and with Redis the lock) exist
    client.complete("stored by the parent", model=MODEL)
    assert client.complete("stored by the parent", model=MODEL).cached
    parent_metrics = dict(cache_of(client).metrics.flat())
    calls = server.calls()

    report = run_forked(lambda: _child_calls(client))

    assert "error" not in report, report
    assert report["stored"] == ["echo: stored by the parent", True], "the parent's entry is a hit in the child"
    assert report["fresh"] == ["echo: new in the child", False]
    assert report["again"] == ["echo: new in the child", True]
    assert server.calls() == calls + 1, "one upstream call: the child's new question"
    child = report["metrics"]
    # the child's own counts only (not the parent's), and no backend call failed or timed out
    assert (child["hits"], child["misses"], child["stores"]) == (2, 1, 1), child
    assert child["errors"] == 0 and child["timeouts"] == 0 and child["circuit_skips"] == 0, child
    # the parent is untouched, and sees what the child stored (a shared backend)
    assert cache_of(client).metrics.flat() == parent_metrics
    assert client.complete("new in the child", model=MODEL).cached and server.calls() == calls + 1
    client.close()
