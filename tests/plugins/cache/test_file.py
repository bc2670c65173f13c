"""The file backend (dogpile's DBMBackend): two processes, a corrupted file, old-format entries
(matrix C17)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import modelwire
from modelwire.plugins.cache import cache_of
from modelwire.testing import FakeServer, capture_events

MakeClient = Callable[..., modelwire.Client]
MODEL = "openai/gpt-4o"


def _writer(server_url: str, path: str, prompts: list[str], barrier: Any) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    client = modelwire.Client(config={
        "middleware": ["cache"],
        "providers": {"openai": {"api_base": server_url}},
        "cache": {"backend": "file", "path": path, "timeout": 5.0},
    })
    from modelwire.providers.litellm_base import litellm

    litellm()
    barrier.wait(60)
    for prompt in prompts:
        assert client.complete(prompt, model=MODEL).text == f"echo: {prompt}"
    client.close()


async def test_c17_two_processes_share_one_file(server: FakeServer, tmp_path: Path, make_client: MakeClient) -> None:
    path = str(tmp_path / "shared-cache")
    prompts = [f"prompt {i}" for i in range(40)]
    make_client()  # sets the API key in the environment the workers inherit
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_writer, args=(server.openai_url, path, prompts[:30], barrier)),
        ctx.Process(target=_writer, args=(server.openai_url, path, prompts[10:], barrier)),
    ]
    for p in procs:
        p.start()
    for p in procs:
        await asyncio.to_thread(p.join, 120)
    assert [p.exitcode for p in procs] == [0, 0]
    calls = server.calls()
    assert 40 <= calls <= 60
    client = make_client(middleware=["cache"], cache={"backend": "file", "path": path, "timeout": 5.0})
    results = [await client.acomplete(p, model=MODEL) for p in prompts]
    assert [r.text for r in results] == [f"echo: {p}" for p in prompts]
    assert all(r.cached for r in results) and server.calls() == calls
    stats = await cache_of(client).astats()
    assert stats["entries"] == 40 and stats["all_processes"]["stores"] >= 40
    await client.aclose()


async def test_c17_truncated_data_file_is_a_miss_with_a_warning(make_client: MakeClient, server: FakeServer,
                                                               tmp_path: Path) -> None:
    path = tmp_path / "cache"
    client = make_client(middleware=["cache"], cache={"backend": "file", "path": str(path), "timeout": 5.0})
    await client.acomplete("q", model=MODEL)
    assert (await client.acomplete("q", model=MODEL)).cached
    data = path.with_suffix(".dat")
    data.write_bytes(data.read_bytes()[:20])
    with capture_events() as logs:
        response = await client.acomplete("q", model=MODEL)
    assert response.text == "echo: q" and not response.cached and server.calls() == 2
    assert any(e["event"] == "cache.corrupt_entry" and e["log_level"] == "warning" for e in logs)
    assert cache_of(client).metrics.corrupt == 1
    assert (await client.acomplete("q", model=MODEL)).cached  # stored again
    await client.aclose()


async def test_c17_garbage_index_file_is_recreated(make_client: MakeClient, server: FakeServer, tmp_path: Path) -> None:
    path = tmp_path / "cache"
    client = make_client(middleware=["cache"], cache={"backend": "file", "path": str(path), "timeout": 5.0})
    await client.acomplete("q", model=MODEL)
    path.with_suffix(".dir").write_bytes(b"\x00\xffnot a dbm index (\n")
    with capture_events() as logs:
        response = await client.acomplete("q", model=MODEL)
    assert response.text == "echo: q" and server.calls() == 2
    events = {e["event"] for e in logs}
    assert "cache.backend_error" in events and "cache.file_recreated" in events
    await client.acomplete("q", model=MODEL)
    assert (await client.acomplete("q", model=MODEL)).cached, "the cache works again after the repair"
    await client.aclose()


@pytest.mark.parametrize(
    "stored",
    [pickle.dumps({"text": "from pickle"}), b'{"text": "no version"}', b'{"v": 0, "kind": "completion"}', b"\xff\xfe"],
    ids=["pickle", "no-version", "old-version", "not-utf8"],
)
async def test_c17_old_or_foreign_entries_are_misses(make_client: MakeClient, server: FakeServer, tmp_path: Path,
                                                     stored: bytes) -> None:
    client = make_client(middleware=["cache"],
                         cache={"backend": "file", "path": str(tmp_path / "cache"), "timeout": 5.0})
    cache = cache_of(client)
    key = cache.key_for(client.request("q", model=MODEL))
    cache.store.backend.set(key, stored, None)
    with capture_events() as logs:
        response = await client.acomplete("q", model=MODEL)
    assert response.text == "echo: q" and not response.cached and server.calls() == 1
    assert any(e["event"] == "cache.corrupt_entry" for e in logs)
    assert (await client.acomplete("q", model=MODEL)).cached and server.calls() == 1
    await client.aclose()
