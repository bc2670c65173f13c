"""The ``prometheus`` middleware against the loopback server: a scripted mix of requests, then the
registry's samples. Each test uses a registry of its own unless it tests the default one."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("prometheus_client", reason="the prometheus extra is not installed")

from prometheus_client import REGISTRY, CollectorRegistry, Counter  # noqa: E402

import modelwire  # noqa: E402
from modelwire.testing import FakeServer, Reply  # noqa: E402

GPT = {"provider": "openai", "model": "gpt-4o"}


def usage(prompt: int, completion: int, cached: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                            "total_tokens": prompt + completion}
    if cached is not None:
        body["prompt_tokens_details"] = {"cached_tokens": cached}
    return body


class Samples:
    def __init__(self, registry: CollectorRegistry, prefix: str = "modelwire") -> None:
        self.registry, self.prefix = registry, prefix

    def __call__(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(f"{self.prefix}_{name}", labels)
        return 0.0 if value is None else value


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def prom_client(make_client: Callable[..., modelwire.Client],
                registry: CollectorRegistry) -> Callable[..., modelwire.Client]:
    def make(middleware: tuple[str, ...] = (), **config: Any) -> modelwire.Client:
        return make_client(middleware=["prometheus", *middleware], prometheus={"registry": registry}, **config)

    return make


async def test_scripted_mix(prom_client: Any, registry: CollectorRegistry, server: FakeServer) -> None:
    client = prom_client(("cache", "retry"), cache={"backend": "memory"},
                         retry={"base_delay": 0.01, "max_delay": 0.02, "max_attempts": 3})
    samples = Samples(registry)
    server.script(Reply.completion("one", usage=usage(12, 3, cached=4)))
    assert not (await client.acomplete("first", model="openai/gpt-4o")).cached  # ok, miss
    assert (await client.acomplete("first", model="openai/gpt-4o")).cached  # cache hit
    server.script(Reply.error(500), Reply.completion("two", usage=usage(20, 4)))
    await client.acomplete("second", model="openai/gpt-4o")  # ok after one retry
    server.script(Reply.error(400, "bad 'first' parameter", type="invalid_request_error"))
    with pytest.raises(modelwire.BadRequestError):
        await client.acomplete("third", model="openai/gpt-4o")  # error, not retried
    server.script(Reply.stream(["a", "b"], usage=usage(7, 2)))
    assert "".join([c.text async for c in client.astream("fourth", model="openai/gpt-4o")]) == "ab"
    server.script(Reply.stream(["partial"], finish_reason=None, usage=False, ending="close"))
    with pytest.raises(modelwire.StreamInterruptedError) as interrupted:
        async for _ in client.astream("fifth", model="openai/gpt-4o"):
            pass
    assert server.calls() == 6

    assert samples("requests_total", **GPT, outcome="ok") == 3
    assert samples("requests_total", **GPT, outcome="cache_hit") == 1
    assert samples("requests_total", **GPT, outcome="error") == 2
    assert samples("request_duration_seconds_count", **GPT, outcome="ok") == 3
    assert samples("request_duration_seconds_count", **GPT, outcome="cache_hit") == 1
    assert samples("request_duration_seconds_sum", **GPT, outcome="ok") > 0
    assert samples("errors_total", **GPT, error_type="BadRequestError") == 1
    assert samples("errors_total", **GPT, error_type=type(interrupted.value).__name__) == 1
    assert samples("retries_total", **GPT, error_type="ServerError") == 1
    assert samples("cache_hits_total", **GPT) == 1
    assert samples("cache_misses_total", **GPT) == 5
    assert samples("tokens_total", **GPT, type="input") == 12 + 20 + 7  # the hit consumed none
    assert samples("tokens_total", **GPT, type="output") == 3 + 4 + 2
    assert samples("tokens_total", **GPT, type="cache_read") == 4
    assert samples("time_to_first_chunk_seconds_count", **GPT) == 2  # both streams sent a chunk


async def test_labels_stay_low_cardinality(prom_client: Any, registry: CollectorRegistry, server: FakeServer) -> None:
    client = prom_client()
    server.script(Reply.error(400, "the prompt 'secret-prompt-42' is invalid", type="invalid_request_error"))
    with pytest.raises(modelwire.BadRequestError):
        await client.acomplete("secret-prompt-42", model="openai/gpt-4o")
    await client.acomplete("another prompt", model="local/llama3")
    allowed = {"provider", "model", "outcome", "error_type", "type", "le"}
    for family in registry.collect():
        for sample in family.samples:
            assert set(sample.labels) <= allowed, sample
            assert not any("prompt" in value for value in sample.labels.values()), sample


async def test_limiter_waits(prom_client: Any, registry: CollectorRegistry, server: FakeServer) -> None:
    client = prom_client(("ratelimit",), ratelimit={"limits": [{"match": "openai/*", "rps": 2}]})
    for i in range(3):
        await client.acomplete(f"call {i}", model="openai/gpt-4o")
    samples = Samples(registry)
    waits = samples("ratelimit_wait_seconds_count", **GPT)
    assert 1 <= waits <= 3  # 3 calls at 2 rps: at least one waited; at most one wait per attempt
    assert 0 < samples("ratelimit_wait_seconds_sum", **GPT) < 5 * waits


async def test_stream_closed_early_is_cancelled(prom_client: Any, registry: CollectorRegistry,
                                                server: FakeServer) -> None:
    client = prom_client()
    server.script(Reply.stream(["a", "b", "c"], event_delay=0.05))
    async with client.astream("hi", model="openai/gpt-4o") as stream:
        await stream.__anext__()
    samples = Samples(registry)
    assert samples("requests_total", **GPT, outcome="cancelled") == 1
    assert samples("requests_total", **GPT, outcome="ok") == 0
    assert samples("errors_total", **GPT, error_type="GeneratorExit") == 0


async def test_cost_counted_when_priced(prom_client: Any, registry: CollectorRegistry, server: FakeServer) -> None:
    """Cost comes from ``Completion.cost`` (the ``cost`` plugin): counted for provider calls, not
    for hits; what a hit saved is counted apart."""
    if "cost" not in getattr(modelwire.Completion, "__dataclass_fields__", {}):
        pytest.skip("Completion.cost is not in this tree yet")
    client = prom_client(("cache",), cache={"backend": "memory"},
                         prices={"local/priced": {"input": 1.0, "output": 2.0}})
    server.script(Reply.completion("priced", usage=usage(1_000_000, 500_000)))
    await client.acomplete("p", model="local/priced")
    await client.acomplete("p", model="local/priced")  # a hit: costs 0, saved 2.0
    samples = Samples(registry)
    assert samples("cost_usd_total", provider="local", model="priced") == pytest.approx(2.0)
    assert samples("cache_saved_usd_total", provider="local", model="priced") == pytest.approx(2.0)


async def test_two_clients_share_one_registry(prom_client: Any, registry: CollectorRegistry) -> None:
    first, second = prom_client(), prom_client()  # the same names, registered once
    await first.acomplete("a", model="local/m")
    await second.acomplete("b", model="local/m")
    assert Samples(registry)("requests_total", provider="local", model="m", outcome="ok") == 2


async def test_default_registry_and_prefix(make_client: Any) -> None:
    client = make_client(middleware=["prometheus"], prometheus={"prefix": "mwtest_default"})
    try:
        await client.acomplete("a", model="local/m")
        assert Samples(REGISTRY, "mwtest_default")("requests_total", provider="local", model="m", outcome="ok") == 1
    finally:
        metrics = client.middleware[0].metrics  # leave the process-wide registry as it was
        for collector in vars(metrics).values():
            REGISTRY.unregister(collector)


async def test_nothing_recorded_when_not_listed(make_client: Any, registry: CollectorRegistry) -> None:
    client = make_client(middleware=["retry"], prometheus={"registry": registry})
    await client.acomplete("a", model="local/m")
    assert [f.name for f in registry.collect()] == []


def test_bad_config_is_named(make_client: Any, registry: CollectorRegistry) -> None:
    with pytest.raises(modelwire.ConfigurationError, match=r"prometheus\.prefix.*metric name prefix"):
        make_client(middleware=["prometheus"], prometheus={"prefix": "1-bad"})
    with pytest.raises(modelwire.ConfigurationError, match=r"prometheus\.registry.*CollectorRegistry"):
        make_client(middleware=["prometheus"], prometheus={"registry": "default"})
    Counter("taken_requests", "a collector that is not modelwire's", registry=registry)
    with pytest.raises(modelwire.ConfigurationError, match=r"prometheus\.prefix.*choose another prefix"):
        make_client(middleware=["prometheus"], prometheus={"registry": registry, "prefix": "taken"})


def test_missing_extra_is_a_clear_error(make_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(modelwire.ConfigurationError, match=r"pip install 'modelwire\[prometheus\]'"):
        make_client(middleware=["prometheus"])


def test_imported_only_when_enabled() -> None:
    code = (
        "import sys, modelwire\n"
        "config = {'providers': {'local': {'kind': 'openai_compatible', 'api_base': 'http://127.0.0.1:9/v1'}}}\n"
        "modelwire.Client(config=config)\n"
        "before = 'prometheus_client' in sys.modules\n"
        "modelwire.Client(config={**config, 'middleware': ['prometheus']})\n"
        "print(before, 'prometheus_client' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False", "True"]
