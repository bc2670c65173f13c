"""Invalidation API, metrics, ``modelwire cache stats|clear`` and the demo step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import modelwire
from modelwire.plugins.cache import CacheError, cache_of
from modelwire.plugins.cache.cli import demo_step
from modelwire.testing import FakeServer, Reply
from tests.conftest import SENTINEL_KEY

MakeClient = Callable[..., modelwire.Client]
MODEL = "openai/gpt-4o"


async def test_invalidate_one_entry(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["cache"])
    cache = cache_of(client)
    await client.acomplete("a", model=MODEL)
    await client.acomplete("b", model=MODEL)
    assert await cache.ainvalidate(client.request("a", model=MODEL))
    assert not (await client.acomplete("a", model=MODEL)).cached
    assert (await client.acomplete("b", model=MODEL)).cached
    assert server.calls() == 3


async def test_clear_namespace_and_all(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["cache"])
    cache = cache_of(client)
    for ns in ("tenant-a", "tenant-b"):
        await client.acomplete("q", model=MODEL, options={"cache": {"namespace": ns}})
    await client.acomplete("q", model=MODEL)  # the default namespace (key fingerprint)
    assert await cache.aclear("tenant-a") == 1
    assert not (await client.acomplete("q", model=MODEL, options={"cache": {"namespace": "tenant-a"}})).cached
    assert (await client.acomplete("q", model=MODEL, options={"cache": {"namespace": "tenant-b"}})).cached
    assert (await client.acomplete("q", model=MODEL)).cached
    assert await cache.aclear() == 3
    assert not (await client.acomplete("q", model=MODEL)).cached
    assert server.calls() == 5
    with pytest.raises(ValueError):
        await cache.aclear("bad namespace*")


async def test_admin_ops_raise_a_typed_error_when_the_backend_is_down(make_client: MakeClient,
                                                                      server: FakeServer) -> None:
    from modelwire.testing.redis import free_port

    client = make_client(middleware=["cache"], cache={"backend": "redis", "url": f"redis://127.0.0.1:{free_port()}/0"})
    with pytest.raises(CacheError):
        await cache_of(client).aclear()
    assert issubclass(CacheError, modelwire.ModelwireError)


async def test_metrics(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["cache"])
    server.script(Reply.completion("cut", finish_reason="length"))
    await client.acomplete("long", model=MODEL)
    await client.acomplete("q", model=MODEL)
    await client.acomplete("q", model=MODEL)
    stats = (await cache_of(client).astats())
    process = stats["process"]
    assert stats["backend"] == "memory" and stats["entries"] == 1 and stats["circuit"] == "closed"
    assert process["hits"] == 1 and process["misses"] == 2 and process["stores"] == 1
    assert process["skipped"] == {"length": 1} and process["errors"] == 0
    assert process["bytes_written"] > 0 and process["bytes_read"] == process["bytes_written"]
    assert client.middleware[0].describe()["hits"] == 1


def test_sync_api(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["cache"])
    client.complete("q", model=MODEL)
    assert client.complete("q", model=MODEL).cached
    cache = cache_of(client)
    assert cache.stats()["process"]["hits"] == 1
    assert cache.invalidate(client.request("q", model=MODEL))
    assert cache.clear() == 0
    assert not client.complete("q", model=MODEL).cached


def test_cli_stats_and_clear(server: FakeServer, tmp_path: Path, make_client: MakeClient) -> None:
    cache_path = tmp_path / "cache"
    config = tmp_path / "modelwire.toml"
    config.write_text(
        'middleware = ["cache"]\n'
        f'[providers.openai]\napi_base = "{server.openai_url}"\n'
        f'[cache]\nbackend = "file"\npath = "{cache_path}"\n'
    )
    client = make_client(middleware=["cache"], cache={"backend": "file", "path": str(cache_path), "timeout": 5.0})
    client.complete("q", model=MODEL)
    client.complete("q", model=MODEL, options={"cache": {"namespace": "tenant-a"}})
    assert client.complete("q", model=MODEL).cached
    client.close()  # flushes this process's counters to the shared file

    env = {**os.environ, "OPENAI_API_KEY": SENTINEL_KEY, "MODELWIRE_CONFIG": str(config)}

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "modelwire.cli", *args], capture_output=True, text=True,
                              env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    stats = json.loads(cli("cache", "stats"))
    assert stats["backend"] == "file" and stats["entries"] == 2
    assert stats["all_processes"]["hits"] == 1 and stats["all_processes"]["stores"] == 2
    assert "deleted 1 entries" in cli("cache", "clear", "--namespace", "tenant-a")
    assert json.loads(cli("cache", "stats"))["entries"] == 1
    assert "deleted 1 entries" in cli("cache", "clear")
    assert json.loads(cli("cache", "stats"))["entries"] == 0
    assert SENTINEL_KEY not in json.dumps(stats)


def test_demo_step(make_client: MakeClient, server: FakeServer) -> None:
    lines: list[str] = []
    client = make_client()  # cache not enabled: the step builds its own client
    demo_step(client, server, lines.append)
    text = "\n".join(lines)
    assert "cache hit" in text and "upstream calls: 1" in text and "saved" in text, text
