"""What a stream must survive on the wire: rows S01-S06, S09-S15, S18-S24 of the reliability matrix.

Every test scripts the loopback server frame by frame and streams through the real pipeline
(Client -> provider -> litellm -> HTTP). Timeouts use small real values; bounds are generous above
(a loaded machine is slow) and strict below (a timeout must never fire early).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import modelwire
from modelwire.testing import FakeServer, Pause, Reply

__all__ = ["chunk", "collect", "stream_client", "wait_closed"]


def chunk(text: str | None = None, finish: str | None = None, index: int = 0, **extra: Any) -> dict[str, Any]:
    """One ``chat.completion.chunk`` event body."""
    delta: dict[str, Any] = {} if text is None else {"content": text}
    delta.update(extra.pop("delta", {}))
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
        "usage": None,
    }
    body.update(extra)
    return body


def usage_chunk(prompt: int = 5, completion: int = 7, **extra: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
            **extra}


def stream_client(make_client: Any, server: FakeServer, **settings: Any) -> modelwire.Client:
    """A client whose three providers carry the stream ``settings`` (timeouts...)."""
    providers = {
        "openai": {"api_base": server.openai_url, **settings},
        "azure": {"api_base": server.url, "api_version": "2024-10-21", **settings},
        "local": {"kind": "openai_compatible", "api_base": server.openai_url, **settings},
    }
    client: modelwire.Client = make_client(providers=providers)
    return client


async def collect(client: modelwire.Client, model: str = "local/m", **kwargs: Any) -> tuple[Any, list[Any], Any]:
    """Stream to the end; returns (stream, chunks, error or None)."""
    received: list[Any] = []
    stream = client.astream("hi", model=model, **kwargs)
    try:
        async with stream:
            async for c in stream:
                received.append(c)
    except modelwire.ModelwireError as exc:
        return stream, received, exc
    return stream, received, None


async def wait_closed(server: FakeServer, timeout: float = 5.0) -> None:
    """Wait until the server has no open connection (the client closed its side)."""
    end = time.monotonic() + timeout
    while server.open_connections and time.monotonic() < end:
        await asyncio.sleep(0.02)
    assert server.open_connections == 0, "the client kept the connection open"


# -- S01-S04: shapes that are fine --------------------------------------------------------------


async def test_s01_happy_path_with_usage(make_client, server: FakeServer) -> None:
    server.script(Reply(events=[chunk("", delta={"role": "assistant"}), chunk("Hel"), chunk("lo"), chunk(None, "stop"),
                                usage_chunk(3, 2)]))
    stream, chunks, error = await collect(make_client(), "openai/gpt-4o")
    assert error is None
    assert [c.text for c in chunks if c.text] == ["Hel", "lo"]
    final = stream.get_final_completion()
    assert (final.text, final.finish_reason) == ("Hello", "stop")
    assert final.usage == modelwire.Usage(3, 2, 5) and stream.usage_known
    assert server.requests[0].json["stream_options"] == {"include_usage": True}


async def test_s02_s03_azure_annotations(make_client, server: FakeServer) -> None:
    filters = {"hate": {"filtered": False, "severity": "safe"}}
    annotation = {"id": "", "object": "", "created": 0, "model": "", "usage": None,
                  "choices": [{"index": 0, "finish_reason": None, "content_filter_results": filters,
                               "content_filter_offsets": {"check_offset": 44, "start_offset": 44, "end_offset": 198}}]}
    server.script(Reply(events=[
        {"id": "", "object": "", "created": 0, "model": "", "choices": [], "usage": None,
         "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": filters}]},
        chunk(None, delta={"role": "assistant"}), chunk("Color"), annotation, chunk(" red"), chunk(None, "stop"),
        annotation,  # Azure's asynchronous filter may annotate after stop
    ]))
    stream, chunks, error = await collect(make_client(), "azure/dep")
    assert error is None
    assert stream.get_final_completion().text == "Color red"
    assert stream.metadata["prompt_filter_results"][0]["prompt_index"] == 0
    assert stream.metadata["content_filter_results"] == filters
    assert stream.metadata["content_filter_offsets"]["check_offset"] == 44
    assert all(c.text == "" for c in chunks if c.metadata)


async def test_s04_content_filter_mid_stream_raises_after_partial(make_client, server: FakeServer) -> None:
    blocked = {"protected_material_text": {"detected": True, "filtered": True}}
    server.script(Reply(events=[chunk("Once upon"), chunk(None, "content_filter", **{}),
                                {"id": "", "choices": [{"index": 0, "finish_reason": "content_filter",
                                                        "content_filter_results": blocked}]}]))
    client = make_client(middleware=["retry"], retry={"base_delay": 0})
    stream, chunks, error = await collect(client, "azure/dep")
    assert isinstance(error, modelwire.ContentFilterError) and not error.retryable
    assert error.partial_text == "Once upon" and error.chunks == len(chunks)
    assert stream.metadata["content_filter_results"] == blocked
    assert server.calls() == 1  # billed, never retried
    with pytest.raises(modelwire.ModelwireError):
        stream.get_final_completion()


# -- S05, S06: ends that are not an end ---------------------------------------------------------


async def test_s05_clean_eof_without_finish_is_interrupted(make_client, server: FakeServer) -> None:
    server.script(Reply(events=[chunk("Hel"), chunk("lo")], ending="eof"))
    stream, chunks, error = await collect(make_client())
    assert type(error) is modelwire.StreamInterruptedError
    assert (error.partial_text, error.chunks, error.usage_known) == ("Hello", 2, False)
    assert stream.finish_reason is None  # no fabricated "stop"
    assert stream.end_reason == "interrupted"
    with pytest.raises(modelwire.ModelwireError, match="not finished"):
        stream.get_final_completion()


async def test_s05_empty_body_is_not_a_success(make_client, server: FakeServer) -> None:
    # litellm 1.110 reports this one as finish_reason "stop"
    server.script(Reply(events=[], ending="eof"))
    _, chunks, error = await collect(make_client())
    assert type(error) is modelwire.EmptyStreamError and chunks == []


@pytest.mark.parametrize("ending", ["abort", "close"])
async def test_s06_reset_mid_stream(make_client, server: FakeServer, ending: str) -> None:
    server.script(Reply(events=[chunk("Hel"), chunk("lo")], ending=ending))
    _, _, error = await collect(make_client())
    assert type(error) is modelwire.StreamInterruptedError and error.retryable
    assert error.partial_text == "Hello" and error.chunks == 2
    assert error.__cause__ is None and "broke mid-stream" in error.message
    await wait_closed(server)


# -- S09-S11: timeouts --------------------------------------------------------------------------


async def test_s09_stall_mid_stream_idle_timeout(make_client, server: FakeServer) -> None:
    server.script(Reply(events=[chunk("a"), chunk("b")], ending="stall"))
    client = stream_client(make_client, server, idle_timeout=0.6)
    start = time.monotonic()
    _, _, error = await collect(client)
    elapsed = time.monotonic() - start
    assert type(error) is modelwire.StreamIdleTimeoutError and error.partial_text == "ab"
    assert 0.54 <= elapsed < 20, elapsed  # never early; the upper bound only catches a hang
    await wait_closed(server)
    assert server.disconnects == 1


async def test_s10_keepalive_comments_do_not_reset_idle(make_client, server: FakeServer) -> None:
    pings: list[Any] = [x for _ in range(200) for x in (Pause(0.15), b": ping\n\n")]
    server.script(Reply(events=[chunk("a"), *pings], ending="stall"))
    client = stream_client(make_client, server, idle_timeout=0.6)
    start = time.monotonic()
    _, _, error = await collect(client)
    elapsed = time.monotonic() - start
    assert type(error) is modelwire.StreamIdleTimeoutError
    assert 0.54 <= elapsed < 15, elapsed  # 200 pings would have kept it alive for 30 s
    await wait_closed(server)


async def test_s10_s29_total_duration_cap(make_client, server: FakeServer) -> None:
    # a chunk every 0.1 s for 6 s; the 3 s cap (which also covers building and sending the request)
    # leaves a loaded machine time to receive the first chunks
    steady = [x for i in range(60) for x in (Pause(0.1), chunk(f"w{i} "))]
    server.script(Reply(events=steady))
    client = stream_client(make_client, server, max_stream_duration=3.0, idle_timeout=2.0)
    start = time.monotonic()
    _, chunks, error = await collect(client)
    elapsed = time.monotonic() - start
    assert type(error) is modelwire.StreamDurationExceededError and not error.retryable
    assert 2.7 <= elapsed, elapsed  # never early; fewer than all chunks shows the cap fired
    assert 0 < len(chunks) < 60 and error.partial_text.startswith("w0 w1")
    await wait_closed(server)


async def test_s11_first_token_stall_after_headers(make_client, server: FakeServer) -> None:
    server.script(Reply(events=[], ending="stall"))
    client = stream_client(make_client, server, first_token_timeout=0.6)
    start = time.monotonic()
    _, _, error = await collect(client)
    elapsed = time.monotonic() - start
    assert type(error) is modelwire.StreamIdleTimeoutError and error.retryable and error.chunks == 0
    assert "first_token_timeout" in error.message
    assert 0.54 <= elapsed < 20, elapsed  # never early; the upper bound only catches a hang
    await wait_closed(server)


async def test_s11_first_token_counts_the_wait_for_headers(make_client, server: FakeServer) -> None:
    server.script(Reply(events=[chunk("late", "stop")], delay=3.0))
    client = stream_client(make_client, server, first_token_timeout=0.6)
    start = time.monotonic()
    _, _, error = await collect(client)
    assert type(error) is modelwire.StreamIdleTimeoutError  # the answer after 3 s was never waited for
    assert 0.54 <= time.monotonic() - start


async def test_s11_role_only_chunk_is_not_a_first_token(make_client, server: FakeServer) -> None:
    # idle (0.3 s) must not apply before content: the first-token limit (10 s, an honest margin for a
    # loaded machine) does
    server.script(Reply(events=[chunk(None, delta={"role": "assistant"}), Pause(1.0), chunk("hi", "stop")]))
    client = stream_client(make_client, server, first_token_timeout=10, idle_timeout=0.3)
    stream, _, error = await collect(client)
    assert error is None and stream.text == "hi"


async def test_per_call_stream_options_override_provider(make_client, server: FakeServer) -> None:
    server.script(Reply(events=[chunk("a")], ending="stall"))
    client = stream_client(make_client, server, idle_timeout=30)
    start = time.monotonic()
    _, _, error = await collect(client, options={"stream": {"idle_timeout": 0.4}})
    assert type(error) is modelwire.StreamIdleTimeoutError
    assert time.monotonic() - start < 15  # the provider's 30 s did not apply


def test_bad_stream_options_fail_before_the_network(make_client, server: FakeServer) -> None:
    client = make_client()
    with pytest.raises(modelwire.RequestValidationError, match="options.stream.idle"):
        client.stream("x", model="local/m", options={"stream": {"idle": 3}})
    with pytest.raises(modelwire.RequestValidationError, match="options.stream.idle_timeout"):
        client.stream("x", model="local/m", options={"stream": {"idle_timeout": -1}})
    with pytest.raises(modelwire.ConfigurationError, match="first_token_timeout"):
        stream_client(make_client, server, first_token_timeout=0)
    assert server.calls() == 0


# -- S12-S15, S19: faults inside the body ---------------------------------------------------------


async def test_s12_openai_error_event_mid_stream(make_client, server: FakeServer) -> None:
    msg = "The server had an error processing your request. Sorry about that!"
    server.script(Reply(events=[chunk("Hel"), {"error": {"message": msg, "type": "server_error", "param": None,
                                                          "code": None}}], ending="eof"))
    _, _, error = await collect(make_client(), "openai/gpt-4o")
    assert type(error) is modelwire.ServerError
    assert msg in error.message and "server_error" in error.message and error.partial_text == "Hel"
    assert error.request_id is not None


async def test_s13_vllm_top_level_error_object(make_client, server: FakeServer) -> None:
    server.script(Reply(events=[chunk("x"), {"object": "error", "message": "max_tokens is too large",
                                             "type": "BadRequestError", "param": None, "code": 400}], ending="eof"))
    _, _, error = await collect(make_client())
    assert type(error) is modelwire.BadRequestError and "max_tokens is too large" in error.message


async def test_s14_llamacpp_context_error_in_200_stream(make_client, server: FakeServer) -> None:
    err = {"code": 500, "message": "the request exceeds the available context size, try increasing it",
           "type": "exceed_context_size_error", "n_prompt_tokens": 1407, "n_ctx": 256}
    server.script(Reply(events=[{"error": err}], ending="eof"))
    _, _, error = await collect(make_client())
    assert type(error) is modelwire.ContextWindowExceededError
    assert "n_prompt_tokens=1407" in error.message and "n_ctx=256" in error.message


@pytest.mark.parametrize("bad", [b"\xff", b"\x80", b"\xe2\x82"])
async def test_s15_invalid_utf8(make_client, server: FakeServer, bad: bytes) -> None:
    line = b'data: {"choices":[{"index":0,"delta":{"content":"' + bad + b'"}}]}\n\n'
    server.script(Reply(events=[chunk("ok"), line, chunk("more"), chunk(None, "stop")], ending="stall"))
    _, _, error = await collect(make_client())
    assert type(error) is modelwire.StreamProtocolError and not error.retryable
    assert error.partial_text == "ok" and "UTF-8" in error.message
    await wait_closed(server)


async def test_s19_malformed_json_is_not_dropped(make_client, server: FakeServer) -> None:
    server.script(Reply(events=[chunk("a"), '{"choices":[', chunk("b"), chunk(None, "stop")]))
    _, _, error = await collect(make_client())
    assert type(error) is modelwire.StreamProtocolError and error.partial_text == "a"


@pytest.mark.parametrize("body", ['"just a string"', '{"choices": "nope"}', '{"choices": [{"delta": {"content": 5}}]}'])
async def test_s19_wrong_shapes_are_protocol_errors(make_client, server: FakeServer, body: str) -> None:
    server.script(Reply(events=[body, chunk(None, "stop")]))
    _, _, error = await collect(make_client())
    assert type(error) is modelwire.StreamProtocolError


# -- S18: SSE syntax ----------------------------------------------------------------------------


async def test_s18_sse_edge_syntax(make_client, server: FakeServer) -> None:
    server.script(Reply(events=[
        b'data: {"choices":[{"index":0,\ndata: "delta":{"content":"multi"}}]}\n\n',  # two data lines, one JSON
        b'event: message\r\nid: 7\r\nretry: 100\r\ndata: {"choices":[{"index":0,"delta":{"content":" crlf"}}]}\r\n\r\n',
        b'data:{"choices":[{"index":0,"delta":{"content":" cr"}}]}\r\r',  # CR only, no space after colon
        b': comment\n\nunknown: field\n\n',
        b'data: {"choices":[{"index":0,"delta":{"content":" \xe2\x80\xa8sep"}}]}\n\n',  # U+2028 inside JSON
        b'data: {"choices":[{"index":0,"delta":{"content":" \xc3',  # a character cut across two frames
        b'\xa9"},"finish_reason":"stop"}]}\n\n',
        b"data: [DONE]",  # no final blank line before the end of the body
    ], ending="eof"))
    stream, _, error = await collect(make_client())
    assert error is None
    assert stream.text == "multi crlf cr \u2028sep \u00e9" and stream.finish_reason == "stop"


# -- S20-S24: usage -----------------------------------------------------------------------------


async def test_s20_finish_and_usage_then_eof_without_done(make_client, server: FakeServer) -> None:
    server.script(Reply(events=[chunk("a"), chunk(None, "stop"), usage_chunk()], ending="eof"))
    stream, _, error = await collect(make_client())
    assert error is None and stream.get_final_completion().usage == modelwire.Usage(5, 7, 12)


async def test_s20_done_without_finish_reason_is_an_interruption(make_client, server: FakeServer) -> None:
    # llama.cpp cuts a preempted stream this way (issue 9 item 4; relaxed per provider: test_stream_end.py)
    server.script(Reply(events=[chunk("a")]))
    stream, _, error = await collect(make_client())
    assert type(error) is modelwire.StreamInterruptedError and error.partial_text == "a"
    assert stream.end_reason == "interrupted" and stream.finish_reason is None


async def test_s21_backend_ignores_include_usage(make_client, server: FakeServer) -> None:
    server.script(Reply.stream(["a", "b"], usage=False))
    stream, _, error = await collect(make_client())
    assert error is None
    assert stream.usage is None and not stream.usage_known
    assert stream.get_final_completion().usage is None  # unknown, never invented


async def test_s22_capability_flag_keeps_stream_options_off(make_client, server: FakeServer) -> None:
    client = stream_client(make_client, server, stream_usage=False)
    stream, _, error = await collect(client)
    assert error is None and "stream_options" not in server.requests[0].json
    assert not stream.usage_known


async def test_s22_backend_rejecting_stream_options_is_a_bad_request(make_client, server: FakeServer) -> None:
    server.script(Reply.error(400, "property 'stream_options' is unsupported, did you mean 'stream'?",
                              type="invalid_request_error"))
    client = make_client(middleware=["retry"], retry={"base_delay": 0})
    _, _, error = await collect(client)
    assert type(error) is modelwire.BadRequestError and "stream_options" in error.message
    assert server.calls() == 1


async def test_s23_usage_on_every_chunk_keeps_the_last(make_client, server: FakeServer) -> None:
    def u(n: int) -> dict[str, int]:
        return {"prompt_tokens": 4, "completion_tokens": n, "total_tokens": 4 + n}

    server.script(Reply(events=[chunk("a", usage=u(1)), chunk("b", usage=u(2)), chunk(None, "stop", usage=u(3)),
                                usage_chunk(4, 3)]))
    stream, _, _ = await collect(make_client())
    assert stream.get_final_completion().usage == modelwire.Usage(4, 3, 7)  # not 1+2+3+3


@pytest.mark.parametrize("tail", [
    [chunk("a"), chunk(None, "stop", usage={"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
                       timings={"predicted_ms": 12.5})],
    [chunk("a"), chunk(None, "stop"), {**usage_chunk(), "choices": None}],
    [chunk("a"), chunk(None, "stop"), {k: v for k, v in usage_chunk().items() if k != "choices"}],
])
async def test_s24_llamacpp_usage_shapes(make_client, server: FakeServer, tail: list[Any]) -> None:
    server.script(Reply(events=tail))
    stream, _, error = await collect(make_client())
    assert error is None and stream.get_final_completion().usage == modelwire.Usage(5, 7, 12)


# -- the fallback path: a litellm route without the raw body (hosted_vllm goes through litellm's
# own HTTP handler, not the OpenAI SDK) -------------------------------------------------------


class _HostedVLLMPlugin:
    """A throwaway provider kind on litellm's ``hosted_vllm/`` route."""

    @modelwire.hookimpl
    def modelwire_register_providers(self, register: Any) -> None:
        from modelwire.providers.litellm_base import LiteLLMProvider

        class HostedVLLM(LiteLLMProvider):
            prefix = "hosted_vllm"
            default_key_env = None
            key_required = False

        register("hosted_vllm", HostedVLLM)


def _vllm_client(make_client: Any, server: FakeServer, **settings: Any) -> modelwire.Client:
    client: modelwire.Client = make_client(
        plugins=(_HostedVLLMPlugin(),),
        providers={"vllm": {"kind": "hosted_vllm", "api_base": server.openai_url, **settings}},
    )
    return client


async def test_fallback_route_happy_path_and_checks(make_client, server: FakeServer) -> None:
    server.script(Reply.stream(["a", "b"]), Reply(events=[chunk("x"), chunk("y")], ending="eof"),
                  Reply(events=[chunk("x")], ending="stall"))
    client = _vllm_client(make_client, server, idle_timeout=0.5)
    stream, _, error = await collect(client, "vllm/m")
    assert error is None and stream.get_final_completion().text == "ab" and stream.usage_known
    _, _, error = await collect(client, "vllm/m")
    assert isinstance(error, modelwire.ProviderError) and error.partial_text == "xy"
    _, _, error = await collect(client, "vllm/m")
    assert type(error) is modelwire.StreamIdleTimeoutError and error.partial_text == "x"
