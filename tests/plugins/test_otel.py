"""The ``otel`` middleware against the loopback server, read with the OpenTelemetry SDK's in-memory
span exporter and metric reader. Each test builds its own TracerProvider and MeterProvider and
passes them in the config: no global provider is set."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

import modelwire  # noqa: E402
from modelwire.testing import FakeServer, Reply  # noqa: E402

USAGE = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17, "prompt_tokens_details": {"cached_tokens": 4}}


@dataclass
class Otel:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    config: dict[str, Any]

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def points(self, name: str) -> list[Any]:
        """Data points of metric ``name`` (collected now)."""
        data = self.reader.get_metrics_data()
        found = []
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found


@pytest.fixture
def otel() -> Iterator[Otel]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Otel(spans, reader, {"tracer_provider": tracer_provider, "meter_provider": meter_provider})
    tracer_provider.shutdown()
    meter_provider.shutdown()


@pytest.fixture
def otel_client(make_client: Callable[..., modelwire.Client], otel: Otel) -> Callable[..., modelwire.Client]:
    def make(middleware: tuple[str, ...] = (), capture_content: bool = False, **config: Any) -> modelwire.Client:
        return make_client(middleware=["otel", *middleware], otel={**otel.config, "capture_content": capture_content},
                           **config)

    return make


def events(span: ReadableSpan, name: str) -> list[dict[str, Any]]:
    return [dict(e.attributes or {}) for e in span.events if e.name == name]


# -- whole requests --------------------------------------------------------------------------------


async def test_whole_request_span_and_metrics(otel_client: Any, otel: Otel, server: FakeServer) -> None:
    client = otel_client()
    server.script(Reply.completion("Hi there", usage=USAGE))
    response = await client.acomplete("Say hi", model="openai/gpt-4o", temperature=0.2, max_tokens=50, top_p=0.9,
                                      stop=["\n\n"])
    assert response.text == "Hi there"
    [span] = otel.finished()
    assert span.name == "chat gpt-4o"
    assert span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.UNSET
    attrs = dict(span.attributes or {})
    expected = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.request.stream": False,
        "gen_ai.request.temperature": 0.2,
        "gen_ai.request.max_tokens": 50,
        "gen_ai.request.top_p": 0.9,
        "gen_ai.request.stop_sequences": ("\n\n",),
        "gen_ai.response.id": "chatcmpl-test",
        "gen_ai.response.model": "test-model",
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 5,
        "gen_ai.usage.cache_read.input_tokens": 4,
        "server.address": "127.0.0.1",
        "server.port": server.port,
        "modelwire.cache.hit": False,
        "modelwire.attempts": 1,
    }
    assert {k: attrs.get(k) for k in expected} == expected
    assert "error.type" not in attrs
    assert not any(k.startswith(("gen_ai.input", "gen_ai.output")) for k in attrs)  # content is opt-in
    assert events(span, "modelwire.attempt") == [{"modelwire.attempt": 1, "modelwire.outcome": "ok"}]

    [duration] = otel.points("gen_ai.client.operation.duration")
    assert duration.count == 1 and duration.sum > 0
    assert dict(duration.attributes) == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.model": "test-model", "server.address": "127.0.0.1", "server.port": server.port,
    }
    tokens = {p.attributes["gen_ai.token.type"]: (p.count, p.sum) for p in otel.points("gen_ai.client.token.usage")}
    assert tokens == {"input": (1, 12), "output": (1, 5)}
    assert otel.points("gen_ai.client.operation.time_to_first_chunk") == []  # streams only


@pytest.mark.parametrize(("model", "provider_name"), [("azure/my-deploy", "azure.ai.openai"),
                                                      ("local/llama3", "openai_compatible")])
async def test_provider_name_by_kind(otel_client: Any, otel: Otel, server: FakeServer, model: str,
                                     provider_name: str) -> None:
    client = otel_client()
    await client.acomplete("hi", model=model)
    [span] = otel.finished()
    assert span.name == f"chat {model.split('/')[1]}"
    assert span.attributes["gen_ai.provider.name"] == provider_name
    assert span.attributes["server.port"] == server.port


async def test_error_sets_error_type_and_no_message(otel_client: Any, otel: Otel, server: FakeServer) -> None:
    client = otel_client()
    secret_prompt = "my-private-prompt-text"
    server.script(Reply.error(400, f"Invalid value in '{secret_prompt}'", type="invalid_request_error"))
    with pytest.raises(modelwire.BadRequestError):
        await client.acomplete(secret_prompt, model="openai/gpt-4o")
    [span] = otel.finished()
    assert span.attributes["error.type"] == "BadRequestError"
    assert span.attributes["modelwire.error.status"] == 400
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "BadRequestError"
    [attempt] = events(span, "modelwire.attempt")
    assert attempt["modelwire.outcome"] == "error" and attempt["error.type"] == "BadRequestError"
    exported = json.dumps([dict(span.attributes or {}), [dict(e.attributes or {}) for e in span.events],
                           span.status.description])
    assert secret_prompt not in exported  # neither prompt nor error message without capture_content
    [duration] = otel.points("gen_ai.client.operation.duration")
    assert duration.attributes["error.type"] == "BadRequestError"
    assert otel.points("gen_ai.client.token.usage") == []


async def test_retried_request_is_one_span_with_an_event_per_attempt(
    otel_client: Any, otel: Otel, server: FakeServer
) -> None:
    client = otel_client(["retry"], retry={"base_delay": 0.01, "max_delay": 0.02, "max_attempts": 3})
    server.script(Reply.error(500), Reply.completion("ok"))
    response = await client.acomplete("hi", model="openai/gpt-4o")
    assert response.text == "ok" and server.calls() == 2
    [span] = otel.finished()
    assert span.attributes["modelwire.attempts"] == 2
    assert "error.type" not in span.attributes and span.status.status_code is StatusCode.UNSET
    names = [e.name for e in span.events]
    assert names == ["modelwire.attempt", "modelwire.retry", "modelwire.attempt"]
    failed, retry, ok = (dict(e.attributes or {}) for e in span.events)
    assert failed["modelwire.attempt"] == 1 and failed["error.type"] == "ServerError"
    assert failed["modelwire.error.status"] == 500 and failed["modelwire.attempt.duration"] >= 0
    assert retry["modelwire.attempt"] == 1 and 0 <= retry["modelwire.retry.delay"] <= 0.02
    assert ok == {"modelwire.attempt": 2, "modelwire.outcome": "ok"}
    [duration] = otel.points("gen_ai.client.operation.duration")
    assert duration.count == 1  # one logical operation, not one per attempt


async def test_cache_hit(otel_client: Any, otel: Otel, server: FakeServer) -> None:
    client = otel_client(["cache"], cache={"backend": "memory"})
    server.script(Reply.completion("cached answer", usage=USAGE))
    first = await client.acomplete("same", model="openai/gpt-4o")
    second = await client.acomplete("same", model="openai/gpt-4o")
    assert (first.cached, second.cached, server.calls()) == (False, True, 1)
    miss, hit = otel.finished()
    assert miss.attributes["modelwire.cache.hit"] is False
    assert hit.attributes["modelwire.cache.hit"] is True
    assert events(hit, "modelwire.cache_hit") == [{"modelwire.cache.result": "hit"}]
    assert events(hit, "modelwire.attempt") == []  # no provider call
    assert hit.attributes["gen_ai.usage.input_tokens"] == 12  # what the answer carries
    durations = otel.points("gen_ai.client.operation.duration")
    assert sum(p.count for p in durations) == 2
    tokens = {p.attributes["gen_ai.token.type"]: p.count for p in otel.points("gen_ai.client.token.usage")}
    assert tokens == {"input": 1, "output": 1}  # the hit consumed no tokens


async def test_limiter_wait_event(otel_client: Any, otel: Otel, server: FakeServer) -> None:
    client = otel_client(["ratelimit"], ratelimit={"limits": [{"match": "openai/*", "rps": 2}]})
    for i in range(3):
        await client.acomplete(f"call {i}", model="openai/gpt-4o")
    waits = [w for span in otel.finished() for w in events(span, "modelwire.ratelimit.wait")]
    assert waits, "3 calls at 2 rps: at least one waited for the limiter"
    assert all(0 < w["modelwire.ratelimit.wait"] < 5 for w in waits)


# -- streams ---------------------------------------------------------------------------------------


async def test_stream_span_ends_with_the_stream(otel_client: Any, otel: Otel, server: FakeServer) -> None:
    client = otel_client()
    server.script(Reply.stream(["Hel", "lo"], usage=USAGE))
    stream = client.astream("hi", model="openai/gpt-4o", max_tokens=20)
    first = await stream.__anext__()
    assert first is not None
    assert otel.finished() == []  # still open while the caller reads
    rest = [c async for c in stream]
    assert stream.text == "Hello" and rest
    [span] = otel.finished()
    attrs = dict(span.attributes or {})
    assert span.name == "chat gpt-4o"
    assert attrs["gen_ai.request.stream"] is True
    assert attrs["gen_ai.request.max_tokens"] == 20
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (12, 5)
    assert attrs["modelwire.stream.end_reason"] == "stop"
    assert 0 <= attrs["gen_ai.response.time_to_first_chunk"] <= span.end_time / 1e9 - span.start_time / 1e9
    assert "error.type" not in attrs
    [ttfc] = otel.points("gen_ai.client.operation.time_to_first_chunk")
    assert ttfc.count == 1 and dict(ttfc.attributes)["gen_ai.request.model"] == "gpt-4o"
    [duration] = otel.points("gen_ai.client.operation.duration")
    assert duration.count == 1 and duration.sum >= ttfc.sum
    tokens = {p.attributes["gen_ai.token.type"]: p.sum for p in otel.points("gen_ai.client.token.usage")}
    assert tokens == {"input": 12, "output": 5}


async def test_interrupted_stream_records_error_type(otel_client: Any, otel: Otel, server: FakeServer) -> None:
    client = otel_client()
    server.script(Reply.stream(["partial", " answer"], finish_reason=None, usage=False, ending="close"))
    stream = client.astream("hi", model="openai/gpt-4o")
    with pytest.raises(modelwire.StreamInterruptedError) as info:
        async for _ in stream:
            pass
    [span] = otel.finished()
    assert span.attributes["error.type"] == type(info.value).__name__
    assert span.attributes["modelwire.stream.end_reason"] == "error"
    assert span.status.status_code is StatusCode.ERROR
    [duration] = otel.points("gen_ai.client.operation.duration")
    assert duration.attributes["error.type"] == type(info.value).__name__


async def test_stream_closed_by_consumer_ends_the_span(otel_client: Any, otel: Otel, server: FakeServer) -> None:
    client = otel_client()
    server.script(Reply.stream(["a", "b", "c", "d"], event_delay=0.05))
    async with client.astream("hi", model="openai/gpt-4o") as stream:
        await stream.__anext__()
    [span] = otel.finished()
    assert span.attributes["modelwire.stream.end_reason"] == "cancelled_by_consumer"
    assert "error.type" not in span.attributes  # the caller chose to stop: not a failure


def test_sync_client_whole_and_stream(otel_client: Any, otel: Otel, server: FakeServer,
                                      caplog: pytest.LogCaptureFixture) -> None:
    """The sync client drives the chain on modelwire's loop, one task per read: the span's context
    is attached and detached within each read (a detach in another context would log an error)."""
    client = otel_client()
    with caplog.at_level(logging.ERROR, logger="opentelemetry"):
        assert client.complete("one", model="local/m").text
        assert "".join(c.text for c in client.stream("two", model="local/m"))
    assert [s.name for s in otel.finished()] == ["chat m", "chat m"]
    assert [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")] == []


# -- content, configuration, lightness --------------------------------------------------------------


async def test_capture_content_opt_in(otel_client: Any, otel: Otel, server: FakeServer) -> None:
    client = otel_client(capture_content=True)
    server.script(Reply.completion("the answer"))
    await client.acomplete([{"role": "system", "content": "be brief"}, {"role": "user", "content": "question"}],
                           model="openai/gpt-4o")
    server.script(Reply.stream(["streamed", " answer"]))
    assert "".join([c.text async for c in client.astream("q2", model="openai/gpt-4o")]) == "streamed answer"
    whole, streamed = otel.finished()
    assert json.loads(whole.attributes["gen_ai.input.messages"]) == [
        {"role": "system", "parts": [{"type": "text", "content": "be brief"}]},
        {"role": "user", "parts": [{"type": "text", "content": "question"}]},
    ]
    assert json.loads(whole.attributes["gen_ai.output.messages"]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "the answer"}], "finish_reason": "stop"}
    ]
    output = json.loads(streamed.attributes["gen_ai.output.messages"])
    assert output[0]["parts"][0]["content"] == "streamed answer"


async def test_nothing_recorded_when_not_listed(make_client: Any, otel: Otel, server: FakeServer) -> None:
    client = make_client(middleware=["retry"], otel=otel.config)  # configured, but not in `middleware`
    await client.acomplete("hi", model="openai/gpt-4o")
    assert "".join([c.text async for c in client.astream("hi", model="openai/gpt-4o")])
    assert otel.finished() == []
    assert otel.points("gen_ai.client.operation.duration") == []
    assert otel.points("gen_ai.client.token.usage") == []


def test_global_providers_are_left_alone(make_client: Any) -> None:
    before = trace.get_tracer_provider()
    make_client(middleware=["otel"])  # no providers given: uses the global (here a no-op proxy)
    assert trace.get_tracer_provider() is before


def test_bad_provider_in_config_is_named(make_client: Any) -> None:
    with pytest.raises(modelwire.ConfigurationError, match=r"otel\.tracer_provider.*get_tracer"):
        make_client(middleware=["otel"], otel={"tracer_provider": "not a provider"})
    with pytest.raises(modelwire.ConfigurationError, match=r"otel\.capture_contnet"):
        make_client(middleware=["otel"], otel={"capture_contnet": True})


def test_missing_extra_is_a_clear_error(make_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in sys.modules if n == "opentelemetry" or n.startswith("opentelemetry.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(modelwire.ConfigurationError, match=r"pip install 'modelwire\[otel\]'"):
        make_client(middleware=["otel"])


def test_not_imported_unless_enabled() -> None:
    code = (
        "import sys, modelwire\n"
        "modelwire.Client(config={'providers': {'local': {'kind': 'openai_compatible', "
        "'api_base': 'http://127.0.0.1:9/v1'}}})\n"
        "print(sorted(m for m in ('opentelemetry', 'prometheus_client') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
