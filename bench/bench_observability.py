"""What the ``otel`` and ``prometheus`` middleware cost per request, side by side with them off.

Three paths, each timed with its variants interleaved call by call in one run (``common.measure``):

- miss, in-process provider: no network, so the figure is modelwire's own work per call;
- cache hit (memory backend): the cheapest request there is, where a plugin's share is largest;
- miss over loopback HTTP through litellm: what a real call pays, relative to its own cost.

``otel`` runs with an SDK TracerProvider (BatchSpanProcessor to an in-memory exporter) and
MeterProvider (in-memory reader), as a host that exports would; ``otel (no-op api)`` with the API's
default providers, as a host that installed the extra but configured nothing.

    .venv/bin/python bench/bench_observability.py [N]
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import sys
from collections.abc import Awaitable, Callable
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("OPENAI_API_KEY", "sk-bench-0123456789abcdef")

import structlog
from common import InstantPlugin, measure
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

import modelwire
from modelwire.testing import FakeServer

MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


def sdk_providers() -> tuple[dict[str, Any], InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(spans))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return {"tracer_provider": tracer_provider, "meter_provider": meter_provider}, spans


def variants(base: list[str], providers: dict[str, Any], plugins: tuple[object, ...] = ()) -> dict[str, Any]:
    """One client per variant: off, otel (SDK), otel (no-op api), prometheus, both."""
    otel, _ = sdk_providers()
    sections = {"otel": otel, "prometheus": {"registry": CollectorRegistry()}}
    shapes = {
        "off": base,
        "otel": ["otel", *base],
        "otel (no-op api)": ["otel", *base],
        "prometheus": ["prometheus", *base],
        "otel + prometheus": ["otel", "prometheus", *base],
    }
    clients = {}
    for label, middleware in shapes.items():
        config: dict[str, Any] = {"middleware": middleware, "providers": providers, "cache": {"backend": "memory"}}
        if label != "otel (no-op api)":
            config.update(sections)
        clients[label] = modelwire.Client(config=config, plugins=plugins)
    return clients


def calls(clients: dict[str, Any], model: str, fresh: bool) -> dict[str, Callable[[], Awaitable[Any]]]:
    counter = iter(range(10**9))

    def make(client: Any) -> Callable[[], Awaitable[Any]]:
        async def call() -> Any:
            # a miss bench sends a new prompt each time, so a listed cache could never answer it
            content = f"{MESSAGES[0]['content']} #{next(counter)}" if fresh else MESSAGES[0]["content"]
            return await client.acomplete([{"role": "user", "content": content}], model=model)

        return call

    return {label: make(client) for label, client in clients.items()}


def ratios(title: str, times: dict[str, list[float]]) -> None:
    off = statistics.median(times["off"])
    print(f"  {title}: p50 ratio to off")
    for label, t in times.items():
        p50 = statistics.median(t)
        print(f"    {label:<22} {p50 / off:6.2f}x   (+{(p50 - off) * 1e6:7.1f} us per call)")
    print()


async def main(n: int) -> None:
    # The bench is an application: info events (one per request) are not printed or timed.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger("modelwire").setLevel(logging.WARNING)

    print(f"miss, in-process provider, {n} calls per variant")
    clients = variants([], {"instant": {"kind": "instant"}}, (InstantPlugin(),))
    ratios("miss, in-process", await measure(calls(clients, "instant/m", fresh=True), n))

    print(f"cache hit (memory), {n} calls per variant")
    clients = variants(["cache"], {"instant": {"kind": "instant"}}, (InstantPlugin(),))
    hits = calls(clients, "instant/m", fresh=False)
    for call in hits.values():
        await call()  # store the answer: every timed call is a hit
    ratios("cache hit", await measure(hits, n))

    with FakeServer() as server:
        http_n = max(50, n // 10)
        print(f"miss over loopback HTTP (litellm), {http_n} calls per variant")
        clients = variants([], {"openai": {"api_base": server.openai_url}})
        ratios("miss, loopback HTTP", await measure(calls(clients, "openai/gpt-4o", fresh=True), http_n))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000))
