"""Shared backends: two real OS processes on one SQLite file (L02) and on a real Redis (L03),
a failing backend under both policies (L06), and limiter lifecycle (L11)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

import modelwire
from modelwire.errors import RateLimiterUnavailableError, RateLimitExceeded
from modelwire.testing import FakeServer, RedisServer
from tests.conftest import SENTINEL_KEY
from tests.plugins.ratelimit.test_middleware import MODEL, chat_times, max_in_window

RATE = 10
PER_WORKER = 20


def _worker(url: str, section: dict[str, Any], start: Any, results: Any) -> None:
    """One OS process: its own Client against the shared server and limiter backend."""
    os.environ["OPENAI_API_KEY"] = SENTINEL_KEY
    config = {"middleware": ["ratelimit"], "providers": {"openai": {"api_base": url}}, "ratelimit": section}
    client = modelwire.Client(config=config)
    client.complete("warm up", model="openai/warmup")  # not matched by the limit: litellm's first-call cost
    start.wait(60)

    async def run() -> list[str]:
        calls = [client.acomplete(f"{os.getpid()} {i}", model=MODEL) for i in range(PER_WORKER)]
        return [type(r).__name__ for r in await asyncio.gather(*calls, return_exceptions=True)]

    outcomes = modelwire.portal.run(run())
    state = client.middleware[0].describe()
    client.close()
    results.put((outcomes, state["backend_errors"], state["fallback_admissions"]))


def _two_processes(server: FakeServer, section: dict[str, Any]) -> None:
    times = _run_two(server, section)
    # Counted at the server, in every sliding 1 s window: a permit counts from the answer (never
    # before the arrival), so this holds on a saturated machine too; unshared limits would show 2x.
    assert max_in_window(times, 1.0) <= RATE
    assert times[-1] - times[0] >= (2 * PER_WORKER / RATE) - 1 - 0.2


def _run_two(server: FakeServer, section: dict[str, Any]) -> list[float]:
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(server.openai_url, section, start, results)) for _ in range(2)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 90
    while sum(1 for r in server.requests if r.json["model"] == "warmup") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    start.set()
    reports = [results.get(timeout=90) for _ in procs]
    for p in procs:
        p.join(10)
    for outcomes, backend_errors, fallbacks in reports:
        assert outcomes == ["Completion"] * PER_WORKER
        assert backend_errors == 0 and fallbacks == 0  # no "database is locked", no silent local fallback
    times = chat_times(server, "gpt-4o")
    assert len(times) == 2 * PER_WORKER
    return times


@pytest.mark.slow
def test_L02_two_processes_share_one_sqlite_limit(server: FakeServer, tmp_path: Any) -> None:
    section = {"backend": "sqlite", "path": str(tmp_path / "limits.sqlite"), "workers": 2,
               "limits": [{"match": "openai/gpt-4o", "rps": RATE}]}
    _two_processes(server, section)


@pytest.mark.slow
def test_L03_two_processes_share_one_redis_limit(server: FakeServer, redis_server: RedisServer) -> None:
    section = {"backend": "redis", "url": redis_server.url, "key_prefix": f"l03-{time.time()}:", "workers": 2,
               "limits": [{"match": "openai/gpt-4o", "rps": RATE}]}
    _two_processes(server, section)


@pytest.mark.slow
def test_L04_negative_control_memory_limits_in_two_processes_add_up(server: FakeServer) -> None:
    """Why ``memory`` with ``workers > 1`` is refused: each process (here declaring itself alone)
    allows the full rate, so the server sees about twice the limit."""
    times = _run_two(server, {"backend": "memory", "limits": [{"match": "openai/gpt-4o", "rps": RATE}]})
    assert max_in_window(times, 1.0) > RATE  # each process alone keeps the limit; together they exceed it


# -- L06: the backend fails ------------------------------------------------------------------------


def _redis_client(make_client: Callable[..., modelwire.Client], url: str, policy: str) -> modelwire.Client:
    return make_client(middleware=["ratelimit"], ratelimit={
        "backend": "redis", "url": url, "on_backend_error": policy, "backend_timeout": 0.3, "backend_retry": 30,
        "limits": [{"match": "openai/*", "rps": 2}],
    })


def test_L06_redis_stopped_fail_local_falls_back_to_the_same_rates(
    make_client: Callable[..., modelwire.Client], server: FakeServer
) -> None:
    with RedisServer() as own:
        client = _redis_client(make_client, own.url, "local")
        client.complete("before", model=MODEL)
        own.stop()
        start = time.monotonic()
        for i in range(3):
            client.complete(f"after {i}", model=MODEL)
        elapsed = time.monotonic() - start
    state = client.middleware[0].describe()
    assert state["backend_errors"] >= 1 and state["fallback_admissions"] == 3
    assert 0.9 <= elapsed < 10.0  # still limited (rps 2, locally); a hang would be endless
    assert max_in_window(chat_times(server, "gpt-4o")[1:], 1.0) <= 2


def test_L06_redis_stopped_fail_closed_refuses_with_a_typed_error(
    make_client: Callable[..., modelwire.Client], server: FakeServer
) -> None:
    with RedisServer() as own:
        client = _redis_client(make_client, own.url, "closed")
        client.complete("before", model=MODEL)
        own.stop()
        for _ in range(2):
            start = time.monotonic()
            with pytest.raises(RateLimiterUnavailableError):
                client.complete("after", model=MODEL)
            assert time.monotonic() - start < 5.0  # bounded by backend_timeout (0.3 s), never a hang
    assert server.calls() == 1
    assert SENTINEL_KEY not in str(client.middleware[0].describe())


@pytest.mark.parametrize("policy", ["local", "closed"])
def test_L06_frozen_redis_never_hangs(make_client: Callable[..., modelwire.Client], policy: str) -> None:
    with RedisServer() as own:
        client = _redis_client(make_client, own.url, policy)
        client.complete("before", model=MODEL)
        own.pause()
        try:
            start = time.monotonic()
            try:
                client.complete("frozen", model=MODEL)
            except RateLimiterUnavailableError:
                assert policy == "closed"
            else:
                assert policy == "local"
            assert time.monotonic() - start < 6.0  # bounded by backend_timeout (0.3 s), never a hang
        finally:
            own.resume()


def test_L06_unusable_sqlite_path_follows_the_policy(
    make_client: Callable[..., modelwire.Client], tmp_path: Any
) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    bad = str(tmp_path / "a-file" / "limits.sqlite")
    for policy in ("local", "closed"):
        client = make_client(middleware=["ratelimit"], ratelimit={
            "backend": "sqlite", "path": bad, "on_backend_error": policy, "limits": [{"rps": 5}]})
        if policy == "closed":
            with pytest.raises(RateLimiterUnavailableError, match="sqlite"):
                client.complete("x", model=MODEL)
        else:
            assert client.complete("x", model=MODEL).text == "echo: x"
            assert client.middleware[0].describe()["fallback_admissions"] == 1
        client.close()


# -- L11: lifecycle ----------------------------------------------------------------------------------


def test_L11_creating_and_closing_limiters_leaks_no_threads_or_connections(
    make_client: Callable[..., modelwire.Client], redis_server: RedisServer
) -> None:
    probe = redis.Redis.from_url(redis_server.url)

    def connections() -> int:
        return int(probe.info("clients")["connected_clients"])

    def cycle() -> None:
        client = make_client(middleware=["ratelimit"], ratelimit={
            "backend": "redis", "url": redis_server.url, "key_prefix": "l11:", "limits": [{"rps": 1000}]})
        client.complete("x", model=MODEL)
        client.close()

    cycle()
    time.sleep(0.2)
    threads, conns = threading.active_count(), connections()
    for _ in range(20):
        cycle()
    until = time.monotonic() + 10  # closing threads and sockets may take a moment on a loaded machine
    while (threading.active_count() > threads + 1 or connections() > conns + 1) and time.monotonic() < until:
        time.sleep(0.05)
    assert threading.active_count() <= threads + 1
    assert connections() <= conns + 1
    probe.close()


# -- close, then use again (issue 9, P2) -----------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_close_then_reuse_reopens_the_shared_backend(
    make_client: Callable[..., modelwire.Client], server: FakeServer, tmp_path: Any, redis_server: RedisServer,
    backend: str,
) -> None:
    section: dict[str, Any] = {"backend": backend, "limits": [{"match": "openai/*", "rps": 1}]}
    if backend == "sqlite":
        section["path"] = str(tmp_path / "limits.sqlite")
    else:
        section.update(url=redis_server.url, key_prefix=f"reuse-{time.time_ns()}:")
    client = make_client(middleware=["ratelimit"], ratelimit=section)
    client.complete("before close", model=MODEL)
    client.close()
    # The store still holds the first request's permit: the reopened backend sees it (a silent
    # local fallback would not, and would admit at once).
    with pytest.raises(RateLimitExceeded):
        client.complete("right after close", model=MODEL, options={"ratelimit": {"max_wait": 0.0}})
    assert client.complete("after close", model=MODEL).text == "echo: after close"
    client.close()
    assert client.complete("after a second close", model=MODEL).text == "echo: after a second close"
    state = client.middleware[0].describe()
    assert state["backend_errors"] == 0 and state["fallback_admissions"] == 0, state
    client.close()
