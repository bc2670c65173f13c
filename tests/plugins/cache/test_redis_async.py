"""The Redis cache's reads through ``redis.asyncio`` on the event loop (issue 14, row 5): no thread
hop on a hit, one client per event loop, closed and never leaked, never shared with a forked child,
with the store's timeout, circuit breaker and counters. Real redis-server, real processes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis

import modelwire
from modelwire.plugins.cache import cache_of
from modelwire.testing import FakeServer, RedisServer, capture_events
from tests.forking import run_forked

from .test_redis import DelayProxy, comes_back, redis_cache

MakeClient = Callable[..., modelwire.Client]
MODEL = "openai/gpt-4o"


def _reads(client: modelwire.Client) -> Any:
    """The backend's per-loop asyncio clients (:class:`~modelwire.plugins.cache.redis_backend.LoopClients`)."""
    return cache_of(client).store.backend.reads  # type: ignore[attr-defined]


async def test_hits_need_no_cache_thread(make_client: MakeClient, server: FakeServer,
                                         redis_server: RedisServer) -> None:
    """Every worker thread of the cache is held: a hit (whole, stream, sync API) is still served,
    because the read does not wait for a thread. Before, each read queued behind the held workers
    until the backend timeout and became a miss."""
    client = make_client(middleware=["cache"],
                         cache=redis_cache(redis_server.url, timeout=3.0, distributed_lock=False))
    await client.acomplete("q", model=MODEL)
    store = cache_of(client).store
    executor = store.executor()
    release = threading.Event()
    held = [executor.submit(release.wait, 60) for _ in range(executor._max_workers)]
    try:
        whole = await client.acomplete("q", model=MODEL)
        stream = client.astream("q", model=MODEL)
        text = "".join([c.text async for c in stream])
        sync = await asyncio.to_thread(client.complete, "q", model=MODEL)  # the portal loop's client
    finally:
        release.set()
    assert all(not f.cancelled() for f in held)
    assert whole.cached and stream.cached and sync.cached and text == "echo: q", (whole.cached, stream.cached)
    assert server.calls() == 1
    assert store.metrics.errors == 0 and store.metrics.hits == 3
    assert store.metrics.bytes_read > 0
    await client.aclose()
    client.close()


async def test_cancelled_read_propagates_and_leaves_connections_clean(make_client: MakeClient, server: FakeServer,
                                                                      redis_server: RedisServer) -> None:
    """A caller cancelled during its read gets CancelledError (never swallowed into a miss), the
    cancellation is no backend error, and the late reply is never read by a later command."""
    proxy = DelayProxy(redis_server.port)
    try:
        client = make_client(middleware=["cache"], cache=redis_cache(proxy.url, timeout=30.0, circuit_failures=1000))
        prompts = [f"sentinel-{i}" for i in range(4)]
        for p in prompts:
            await client.acomplete(p, model=MODEL)
        backend = cache_of(client).store.backend
        reading = asyncio.Event()
        aget = backend.aget

        async def signalled(key: str) -> bytes | None:
            reading.set()
            return await aget(key)

        backend.aget = signalled  # type: ignore[method-assign]
        proxy.delay = 1.0  # the reply arrives after the caller is gone
        task = asyncio.create_task(client.acomplete(prompts[0], model=MODEL))
        await asyncio.wait_for(reading.wait(), 30)
        await asyncio.sleep(0.05)  # the GET is on the wire
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
        metrics = cache_of(client).metrics
        assert metrics.errors == 0 and metrics.timeouts == 0, metrics
        await asyncio.sleep(1.5)  # the late reply has reached its socket by now
        proxy.delay = 0.0
        results = [await client.acomplete(p, model=MODEL) for p in reversed(prompts)]
        assert [r.text for r in results] == [f"echo: {p}" for p in reversed(prompts)]
        assert all(r.cached for r in results) and server.calls() == len(prompts)
        await client.aclose()
    finally:
        proxy.close()


async def test_redis_stopped_mid_run_reads_miss_and_open_the_circuit(make_client: MakeClient, server: FakeServer,
                                                                     own_redis: RedisServer) -> None:
    """The pooled read connection dies with Redis: each read is a miss with a warning (op get),
    the circuit opens, the requests succeed; a restarted Redis is read again on a new connection."""
    client = make_client(middleware=["cache"], cache=redis_cache(own_redis.url, timeout=1.0, circuit_failures=2,
                                                                 circuit_reset=0.3, distributed_lock=False))
    await client.acomplete("q", model=MODEL)
    assert (await client.acomplete("q", model=MODEL)).cached  # the loop's read connection is open
    own_redis.stop()
    with capture_events() as logs:
        for _ in range(4):
            response = await client.acomplete("q", model=MODEL)
            assert response.text == "echo: q" and not response.cached
    reads = [e for e in logs if e["event"] == "cache.backend_error" and e["op"] == "get"]
    assert reads and all(e["log_level"] == "warning" for e in reads)
    assert "sk-" not in json.dumps(logs, default=str)
    cache = cache_of(client)
    assert cache.metrics.errors >= 2 and cache.metrics.circuit_skips >= 1 and cache.store.circuit_open
    with RedisServer(port=own_redis.port):
        await asyncio.sleep(0.4)
        await comes_back(client, "q")
        assert not cache.store.circuit_open
        await client.aclose()


async def test_read_timeout_is_the_store_timeout(make_client: MakeClient, server: FakeServer,
                                                 redis_server: RedisServer) -> None:
    """A Redis that does not answer: the read gives up after the store's timeout, counted as a
    timeout and an error once each, and the request is a miss."""
    proxy = DelayProxy(redis_server.port)
    try:
        client = make_client(middleware=["cache"], cache=redis_cache(proxy.url, timeout=0.2, circuit_failures=1000,
                                                                     distributed_lock=False))
        proxy.delay = 60.0
        response = await asyncio.wait_for(client.acomplete("q", model=MODEL), 30)
        assert response.text == "echo: q" and not response.cached
        metrics = cache_of(client).metrics
        # the read timed out, and the write after the answer too (sync path, in a thread)
        assert metrics.timeouts == metrics.errors == 2, metrics
    finally:
        proxy.close()


_LOOPS_SCRIPT = r"""
import asyncio, gc, json, sys, warnings
warnings.simplefilter("always", ResourceWarning)
import redis
import modelwire
from modelwire.plugins.cache import cache_of

config, redis_url = json.loads(sys.argv[1]), sys.argv[2]
client = modelwire.Client(config=config)
reads = cache_of(client).store.backend.reads
report = {}
client.complete("q", model="openai/gpt-4o")
report["portal_hit"] = client.complete("q", model="openai/gpt-4o").cached

async def closing_host():
    hit = (await client.acomplete("q", model="openai/gpt-4o")).cached
    loops = reads.open_loops()
    await client.aclose()  # closes this loop's client
    return hit, loops, reads.open_loops()

async def forgetful_host():  # never closes: its client closes when asyncio.run ends the loop
    return (await client.acomplete("q", model="openai/gpt-4o")).cached

report["closing_host"] = asyncio.run(closing_host())
report["forgetful_host"] = asyncio.run(forgetful_host())
report["after_hosts"] = reads.open_loops()
client.close()
report["after_close"] = reads.open_loops()
gc.collect()
checker = redis.Redis.from_url(redis_url)
report["redis_clients"] = len(checker.client_list()) - 1  # without the checker
checker.close()
print(json.dumps(report))
"""


def test_loop_clients_closed_quietly(modelwire_config: dict[str, Any], server: FakeServer,
                                     own_redis: RedisServer) -> None:
    """The portal loop and two host loops each read through their own client: one closed by
    ``aclose`` on its loop, one when its loop ended, the portal's by ``close()``. No connection is
    left open on the Redis side and nothing is printed ("Unclosed", "Task was destroyed")."""
    config = {**modelwire_config, "middleware": ["cache"], "cache": redis_cache(own_redis.url, timeout=5.0)}
    env = {**os.environ, "PYTHONWARNINGS": "always::ResourceWarning"}
    proc = subprocess.run([sys.executable, "-c", _LOOPS_SCRIPT, json.dumps(config), own_redis.url],
                          capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    report = json.loads(proc.stdout)
    assert report["portal_hit"] and report["forgetful_host"]
    assert report["closing_host"] == [True, 2, 1]  # the portal's and its own; then the portal's
    assert report["after_hosts"] == 1  # the forgetful host's closed with its loop
    assert report["after_close"] == 0
    assert report["redis_clients"] == 0, "a Redis connection was left open"
    assert server.calls() == 1


def _child_reads(client: modelwire.Client, url: str) -> dict[str, Any]:
    reads = _reads(client)
    inherited = reads.open_loops()  # the parent's clients were set aside at the fork
    hit = client.complete("q", model=MODEL)
    ids = sorted(c["id"] for c in redis.Redis.from_url(url).client_list() if c["cmd"] == "get")
    report = {"inherited": inherited, "hit": hit.cached, "loops": reads.open_loops(), "get_ids": ids,
              "errors": cache_of(client).metrics.errors}
    client.close()
    return report


def test_forked_child_reads_on_its_own_connection(make_client: MakeClient, server: FakeServer,
                                                  own_redis: RedisServer) -> None:
    client = make_client(middleware=["cache"], cache=redis_cache(own_redis.url, distributed_lock=False))
    client.complete("q", model=MODEL)
    assert client.complete("q", model=MODEL).cached  # the parent's portal loop has a read connection
    checker = redis.Redis.from_url(own_redis.url)
    parent_ids = sorted(c["id"] for c in checker.client_list() if c["cmd"] == "get")
    assert len(parent_ids) == 1

    report = run_forked(lambda: _child_reads(client, own_redis.url))

    assert "error" not in report, report
    assert report["inherited"] == 0 and report["loops"] == 1
    assert report["hit"] and report["errors"] == 0
    child_ids = set(report["get_ids"]) - set(parent_ids)
    assert len(child_ids) == 1, report  # the child's own connection, beside the parent's
    # the parent's connection is intact: its replies were never read by the child
    for _ in range(3):
        assert client.complete("q", model=MODEL).cached
    assert cache_of(client).metrics.errors == 0 and server.calls() == 1
    client.close()
    checker.close()


REDIS_PASSWORD = "p4ss-SECRET-7731"


@pytest.mark.parametrize("reachable", [True, False])
async def test_read_errors_never_show_the_redis_password(make_client: MakeClient, server: FakeServer,
                                                         own_redis: RedisServer, reachable: bool) -> None:
    """A URL with a wrong password (the server wants another one) or no Redis at all: the read's
    warnings name the error, never the password."""
    from modelwire.testing.redis import free_port

    if reachable:
        redis.Redis.from_url(own_redis.url).config_set("requirepass", "another-one")
    port = own_redis.port if reachable else free_port()
    url = f"redis://default:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    client = make_client(middleware=["cache"], cache=redis_cache(url, circuit_failures=1000, distributed_lock=False))
    with capture_events() as logs:
        for _ in range(2):
            assert (await client.acomplete("q", model=MODEL)).text == "echo: q"
    reads = [e for e in logs if e["event"] == "cache.backend_error" and e["op"] == "get"]
    assert len(reads) == 2, logs
    assert REDIS_PASSWORD not in json.dumps(logs, default=str)
    assert cache_of(client).metrics.errors >= 2
    await client.aclose()
