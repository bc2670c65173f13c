"""Shared limits in processes forked after the limiter was used (gunicorn --preload,
multiprocessing's fork start method): real ``os.fork()``, a real SQLite file and a real
redis-server (issue 9, item 13).

Before the fix a child's worker pool had no thread: every backend call timed out and the child
fell back to a limiter of its own, so parent and children together sent about 3x the limit.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import modelwire
from modelwire.testing import FakeServer, RedisServer
from tests.forking import CHILD_LIMIT, collect_child, fork_child
from tests.plugins.ratelimit.test_middleware import MODEL, chat_times, max_in_window

MakeClient = Callable[..., modelwire.Client]
RATE = 4
PER_PROCESS = 6
CHILDREN = 2
#: A generous bound for a child (it needs about (CHILDREN + 1) * PER_PROCESS / RATE s): the
#: test asserts completion and the shared limit, never speed.


def _burst(client: modelwire.Client, label: str) -> dict[str, Any]:
    async def run() -> list[str]:
        calls = [client.acomplete(f"{label} {i}", model=MODEL) for i in range(PER_PROCESS)]
        return [type(r).__name__ for r in await asyncio.gather(*calls, return_exceptions=True)]

    outcomes = modelwire.portal.run(run())
    state = client.middleware[0].describe()
    return {"outcomes": outcomes, "backend_errors": state["backend_errors"],
            "fallback_admissions": state["fallback_admissions"], "admitted": state["admitted"]}


def _burst_and_close(client: modelwire.Client, label: str) -> dict[str, Any]:
    report = _burst(client, label)
    client.close()
    return report


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_parent_and_forked_children_share_one_limit(
    make_client: MakeClient, server: FakeServer, tmp_path: Path, redis_server: RedisServer, backend: str
) -> None:
    section: dict[str, Any] = {"backend": backend, "workers": CHILDREN + 1,
                               "limits": [{"match": MODEL, "rps": RATE}]}
    if backend == "sqlite":
        section["path"] = str(tmp_path / "limits.sqlite")
    else:
        section.update(url=redis_server.url, key_prefix=f"fork:{time.time_ns()}:")
    client = make_client(middleware=["ratelimit"], ratelimit=section)
    client.complete("warm up", model="openai/warmup")  # not limited: litellm's first-call cost
    # The parent uses the limiter before forking: its worker thread, connection and buckets exist.
    client.complete("parent before the fork", model=MODEL)

    children = [fork_child(functools.partial(_burst_and_close, client, f"child{n}")) for n in range(CHILDREN)]
    parent = _burst(client, "parent")
    deadline = time.monotonic() + CHILD_LIMIT
    reports = [collect_child(pid, read, deadline) for pid, read in children]

    for report in [parent, *reports]:
        assert "error" not in report, report
        assert report["outcomes"] == ["Completion"] * PER_PROCESS, report
        # every admission went through the shared store: no timeout, no silent per-process limiter
        assert report["backend_errors"] == 0 and report["fallback_admissions"] == 0, report
    assert [r["admitted"] for r in reports] == [PER_PROCESS] * CHILDREN  # a child's counters are its own
    times = chat_times(server, "gpt-4o")
    assert len(times) == 1 + (CHILDREN + 1) * PER_PROCESS
    # counted at the server in every sliding 1 s window: one limit for all three processes
    arrivals = [(round(r.time - times[0], 3), r.json["messages"][-1]["content"])
                for r in server.requests if r.route == "chat" and r.json["model"] == "gpt-4o"]
    assert max_in_window(times, 1.0) <= RATE, arrivals
    client.close()
