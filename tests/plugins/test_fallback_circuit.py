"""Circuit breaker, alone and with retry and fallback (rows R05, R10, B04 for [circuit])."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import structlog

import modelwire
from modelwire.cli import main as cli_main
from modelwire.plugins.circuit import CircuitMiddleware
from modelwire.testing import FakeServer, Reply


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


def circuit_of(client: modelwire.Client) -> CircuitMiddleware:
    return next(m for m in client.middleware if isinstance(m, CircuitMiddleware))


async def test_opens_after_consecutive_failures_then_half_open_probe(make_client: Any, server: FakeServer) -> None:
    client = make_client(middleware=["circuit"], circuit={"failure_threshold": 3, "cooldown": 10})
    mw = circuit_of(client)
    clock = Clock()
    mw.clock = clock
    server.script(*[Reply.error(500)] * 3)
    for _ in range(3):
        with pytest.raises(modelwire.ServerError):
            await client.acomplete("hi", model="local/llama")
    with pytest.raises(modelwire.CircuitOpenError) as info:
        await client.acomplete("hi", model="local/llama")
    assert server.calls() == 3  # fail fast: no upstream call while open
    assert 9 < info.value.retry_after <= 10 and info.value.retryable is False  # type: ignore[operator]
    assert mw.describe()["circuits"]["local"]["state"] == "open"
    # other provider instances have their own circuit
    assert (await client.acomplete("hi", model="openai/gpt-4o")).text == "echo: hi"
    # after the cooldown one probe goes through; a failed probe opens the circuit again
    clock.offset += 10.5
    server.script(Reply.error(502))
    with pytest.raises(modelwire.ServerError):
        await client.acomplete("probe 1", model="local/llama")
    with pytest.raises(modelwire.CircuitOpenError):
        await client.acomplete("hi", model="local/llama")
    clock.offset += 10.5
    assert (await client.acomplete("probe 2", model="local/llama")).text == "echo: probe 2"
    assert mw.describe()["circuits"]["local"]["state"] == "closed"
    assert server.calls() == 6


async def test_half_open_lets_exactly_one_probe_through(make_client: Any, server: FakeServer) -> None:
    client = make_client(middleware=["circuit"], circuit={"failure_threshold": 1, "cooldown": 5})
    mw = circuit_of(client)
    clock = Clock()
    mw.clock = clock
    server.script(Reply.error(500))
    with pytest.raises(modelwire.ServerError):
        await client.acomplete("hi", model="local/llama")
    clock.offset += 6
    server.script(Reply(body=Reply.completion("slow probe").body, delay=0.5))
    probe = asyncio.create_task(client.acomplete("probe", model="local/llama"))
    await asyncio.sleep(0.2)
    others = await asyncio.gather(*[client.acomplete(f"x{i}", model="local/llama") for i in range(5)],
                                  return_exceptions=True)
    assert all(isinstance(o, modelwire.CircuitOpenError) for o in others)
    assert (await probe).text == "slow probe"
    assert server.calls() == 2 and mw.breaker("local").state == "closed"


async def test_client_errors_and_429_do_not_open(make_client: Any, server: FakeServer) -> None:
    client = make_client(middleware=["circuit"], circuit={"failure_threshold": 2})
    server.script(Reply.error(500), Reply.error(400, "bad"), Reply.error(500), Reply.error(429, "slow"),
                  Reply.error(429, "slow"), Reply.error(500))
    for _ in range(6):
        with pytest.raises(modelwire.ProviderError) as info:
            await client.acomplete("hi", model="local/llama")
        assert not isinstance(info.value, modelwire.CircuitOpenError)
    # 500, 400 (resets: the provider answered), 500, 429, 429 (neutral), 500 -> two in a row: open
    assert circuit_of(client).breaker("local").state == "open"


async def test_failure_ratio(make_client: Any, server: FakeServer) -> None:
    client = make_client(middleware=["circuit"],
                         circuit={"failure_threshold": 100, "failure_ratio": 0.5, "min_requests": 4, "window": 60})
    server.script(Reply.completion(), Reply.error(500), Reply.completion(), Reply.error(500))
    for _ in range(3):
        try:
            await client.acomplete("hi", model="local/llama")
        except modelwire.ServerError:
            pass
    assert circuit_of(client).breaker("local").state == "closed"  # only 3 calls: below min_requests
    for _ in range(1):
        try:
            await client.acomplete("hi", model="local/llama")
        except modelwire.ServerError:
            pass
    assert circuit_of(client).breaker("local").state == "open"  # 2 of 4 failed


async def test_r10_saturated_deployment_skipped_for_cooldown(make_client: Any, server: FakeServer) -> None:
    client = make_client(
        middleware=["fallback", "retry", "circuit"],
        retry={"max_attempts": 1},
        circuit={"failure_threshold": 3, "cooldown": 30, "count_rate_limits": True},
        fallback={"chains": {"azure/*": ["local/healthy"]}},
    )
    server.script(*[Reply.error(429, "Rate limit is exceeded. Try again in 1 seconds.")] * 50, match="deploy-a")
    for i in range(10):
        response = await client.acomplete(f"q{i}", model="azure/deploy-a")
        assert response.provider == "local"
    hits = sum(1 for r in server.requests if "deploy-a" in r.path)
    assert hits == 3  # skipped after the threshold; all traffic went to the healthy target
    assert server.calls() == 3 + 10


async def test_r05_retry_storm_contained_and_recovers(make_client: Any, server: FakeServer) -> None:
    client = make_client(
        middleware=["retry", "circuit"],
        retry={"max_attempts": 3, "base_delay": 0.05, "max_delay": 0.1},
        circuit={"failure_threshold": 5, "cooldown": 0.5},
    )
    server.script(*[Reply.error(503, "overloaded")] * 10_000, match="gpt-4o")
    results = await asyncio.gather(*[client.acomplete(f"c{i}", model="openai/gpt-4o") for i in range(100)],
                                   return_exceptions=True)
    assert all(isinstance(r, (modelwire.ServiceUnavailableError, modelwire.CircuitOpenError)) for r in results)
    outage_calls = server.calls()
    assert outage_calls <= 100 * 3
    assert outage_calls < 130  # the first wave only: retries met an open circuit instead of the server
    server.reset()  # the outage ends
    await asyncio.sleep(0.6)  # cooldown: the next request is the probe
    assert (await client.acomplete("probe", model="openai/gpt-4o")).text == "echo: probe"
    ok = await asyncio.gather(*[client.acomplete(f"after{i}", model="openai/gpt-4o") for i in range(20)])
    assert len(ok) == 20 and server.calls() == 21


async def test_stream_failure_before_first_chunk_counts(make_client: Any, server: FakeServer) -> None:
    client = make_client(middleware=["circuit"], circuit={"failure_threshold": 2})
    server.script(Reply(events=[], ending="abort"), Reply.error(503))
    for _ in range(2):
        with pytest.raises(modelwire.ProviderError):
            async for _chunk in client.astream("hi", model="local/llama"):
                pass
    with pytest.raises(modelwire.CircuitOpenError):
        async for _chunk in client.astream("hi", model="local/llama"):
            pass
    assert server.calls() == 2


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"failure_threshold": 0}, "circuit.failure_threshold"),
        ({"failure_threshold": None}, "circuit.failure_threshold"),
        ({"cooldown": 0}, "circuit.cooldown"),
        ({"cooldown": -5}, "circuit.cooldown"),
        ({"failure_ratio": 1.5}, "circuit.failure_ratio"),
        ({"failure_ratio": float("nan")}, "circuit.failure_ratio"),
        ({"threshold": 3}, "circuit.threshold"),
    ],
)
def test_b04_circuit_config_errors(make_client: Any, server: FakeServer, section: dict[str, Any], key: str) -> None:
    with pytest.raises(modelwire.ConfigurationError, match=key.replace(".", r"\.")):
        make_client(middleware=["circuit"], circuit=section)
    assert server.calls() == 0


def test_state_in_modelwire_plugins(tmp_path: Path, server: FakeServer, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELWIRE_DISABLE_ENTRYPOINTS", "1")
    config = tmp_path / "modelwire.toml"
    config.write_text(
        'middleware = ["fallback", "retry", "circuit"]\n'
        f'[providers.local]\nkind = "openai_compatible"\napi_base = "{server.openai_url}"\n'
        '[circuit]\nfailure_threshold = 7\n'
        '[fallback.chains]\n"local/a" = ["local/b"]\n'
    )
    saved = structlog.get_config()
    try:
        assert cli_main(["--config", str(config), "plugins"]) == 0
    finally:
        structlog.configure(**saved)  # the CLI configures structlog for its process; undo it for later tests
    out = capsys.readouterr().out
    assert '"local": {"state": "closed"' in out and '"failure_threshold": 7' in out
    assert "fallback -> retry -> circuit -> provider" in out
