"""Retry across transport faults and streams (rows T17-T20, T24, R06, R07, S07, S08), real time, small values."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

import modelwire
from modelwire.testing import FakeServer, Reply, capture_events


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


async def test_t17_connection_refused(make_client: Any) -> None:
    port = closed_port()
    client = make_client(
        middleware=["retry"],
        retry={"max_attempts": 3, "base_delay": 0.05, "max_delay": 0.1, "deadline": 10},
        providers={"local": {"kind": "openai_compatible", "api_base": f"http://127.0.0.1:{port}/v1"}},
    )
    await client.awarmup()  # litellm's import is not part of the retry budget measured here
    started = time.monotonic()
    with capture_events() as logs:
        with pytest.raises(modelwire.ProviderConnectionError) as info:
            await client.acomplete("hi", model="local/llama")
    assert time.monotonic() - started < 10.0  # within the deadline
    err = info.value
    assert err.attempts == 3 and err.status is None and err.request_sent is False
    assert "ConnectionRefused" in str(err) or "Connect" in str(err)
    failed = [e for e in logs if e["event"] == "llm.attempt_failed"]
    assert [e["attempt"] for e in failed] == [1, 2, 3]
    # refused means nothing was sent: no duplicate-charge warning
    assert not any(e.get("possible_duplicate_charge") for e in logs)


async def test_t18_no_headers_per_attempt_timeout(make_client: Any, server: FakeServer) -> None:
    client = make_client(middleware=["retry"], retry={"max_attempts": 2, "attempt_timeout": 1.5, "base_delay": 0.01})
    # reads the request, sends nothing for 6 s; 1.5 s leaves a loaded machine room to send each attempt
    late = Reply(body=Reply.completion("too late").body, delay=6.0)
    server.script(late, late)
    await client.awarmup()  # litellm's import must not eat the first attempt's 1.5 s
    # without the timeout the late answer would arrive after 6 s and succeed: the error is the proof
    with pytest.raises(modelwire.ProviderTimeoutError) as info:
        await client.acomplete("hi", model="openai/gpt-4o")
    assert server.calls() == 2 and info.value.attempts == 2
    assert "attempt_timeout" in str(info.value)
    # the client closed its sockets; the server notices when its 6 s delay for attempt 2 is over
    assert await wait_until(lambda: server.open_connections == 0, timeout=20)


async def test_t18_provider_read_timeout_is_mapped(make_client: Any, server: FakeServer) -> None:
    client = make_client(
        middleware=["retry"],
        retry={"max_attempts": 1},
        providers={"openai": {"api_base": server.openai_url, "timeout": 0.3}},
    )
    server.script(Reply(body={"late": True}, delay=5.0))  # far past 0.3 s, however late the loop runs
    with pytest.raises(modelwire.ProviderTimeoutError) as info:
        await client.acomplete("hi", model="openai/gpt-4o")
    assert info.value.status is None and info.value.request_sent is True and info.value.retryable


async def test_t19_slow_drip_total_deadline(make_client: Any, server: FakeServer) -> None:
    # a per-read timeout of 2 s never fires: a byte arrives every 0.1 s (the body takes ~20 s); the
    # 4 s deadline leaves a loaded machine room to send the request before it
    client = make_client(middleware=["retry"], retry={"deadline": 4.0},
                         providers={"openai": {"api_base": server.openai_url, "timeout": 2.0}})
    server.script(Reply(body=Reply.completion("x" * 200).body, drip=0.1))
    await client.awarmup()
    started = time.monotonic()
    with pytest.raises(modelwire.ProviderTimeoutError, match="deadline"):
        await client.acomplete("hi", model="openai/gpt-4o")
    assert 3.8 < time.monotonic() - started < 15.0  # the deadline, not the ~20 s body
    assert server.calls() == 1  # the deadline is total: no retry after it


@pytest.mark.parametrize("retry_on_timeout", [True, False])
async def test_r06_ambiguous_timeout_double_billing(make_client: Any, server: FakeServer,
                                                    retry_on_timeout: bool) -> None:
    client = make_client(
        middleware=["retry"],
        retry={"max_attempts": 2, "base_delay": 0.01, "retry_on_timeout": retry_on_timeout},
        providers={"openai": {"api_base": server.openai_url, "timeout": 0.3}},
    )
    slow = Reply(body=Reply.completion("billed").body, delay=5.0)  # answers long after the client gave up
    server.script(slow, slow)
    with capture_events() as logs:
        with pytest.raises(modelwire.ProviderTimeoutError):
            await client.acomplete("write a novel", model="openai/gpt-4o")
    if retry_on_timeout:
        assert server.calls() == 2  # the server saw two full requests: both may be billed
        second = [e for e in logs if e["event"] == "llm.attempt_failed" and e["attempt"] == 2]
        assert second and second[0]["possible_duplicate_charge"] is True
    else:
        assert server.calls() == 1
        assert not any(e.get("possible_duplicate_charge") for e in logs)


async def test_t24_short_body_retried_and_flagged(make_client: Any, server: FakeServer) -> None:
    client = make_client(middleware=["retry"], retry={"base_delay": 0.01})
    server.script(Reply(body=Reply.completion("cut").body, content_length=5000), Reply.completion("whole"))
    with capture_events() as logs:
        response = await client.acomplete("hi", model="openai/gpt-4o")
    assert response.text == "whole" and server.calls() == 2
    failed = [e for e in logs if e["event"] == "llm.attempt_failed"]
    assert failed[0]["error_class"] == "ProviderConnectionError"
    done = [e for e in logs if e["event"] == "llm.response"]
    assert done[0]["possible_duplicate_charge"] is True  # the first body was being sent: possibly billed


async def test_t20_non_json_200_retried_once(make_client: Any, server: FakeServer) -> None:
    client = make_client(middleware=["retry"], retry={"max_attempts": 5, "base_delay": 0.01})
    server.script(Reply(200, "<html>proxy says hi</html>"), Reply(200, "still not json"), Reply.completion())
    with pytest.raises(modelwire.InvalidResponseError) as info:
        await client.acomplete("hi", model="openai/gpt-4o")
    assert server.calls() == 2 and info.value.status == 200
    assert "not json" in str(info.value)


# -- streams ------------------------------------------------------------------------------------------


async def test_s07_reset_before_first_chunk_is_retried(make_client: Any, server: FakeServer) -> None:
    client = make_client(middleware=["retry"], retry={"base_delay": 0.01})
    server.script(Reply(events=[], ending="abort"), Reply.stream(["Hello", " world"]))
    pieces = [c.text async for c in client.astream("hi", model="openai/gpt-4o")]
    assert "".join(pieces) == "Hello world"
    assert server.calls() == 2


async def test_s08_no_silent_restart_after_content(make_client: Any, server: FakeServer) -> None:
    client = make_client(middleware=["retry"], retry={"max_attempts": 4, "base_delay": 0.01})
    server.script(Reply.stream(["one", " two", " three"], finish_reason=None, usage=False, ending="abort"),
                  Reply.stream(["must", " not", " appear"]))
    received: list[str] = []
    with pytest.raises(modelwire.ProviderError) as info:
        async for chunk in client.astream("hi", model="openai/gpt-4o"):
            received.append(chunk.text)
    assert "".join(received).startswith("one")
    assert "must" not in "".join(received)
    assert server.calls() == 1
    assert isinstance(info.value, (modelwire.StreamInterruptedError, modelwire.ProviderConnectionError))


async def test_r07_retry_wraps_request_creation_and_first_chunk(make_client: Any, server: FakeServer) -> None:
    """A retry decorator on a generator only wraps its construction (llama_index#21346): here the
    HTTP error at creation and a reset before the first chunk are both retried."""
    client = make_client(middleware=["retry"], retry={"max_attempts": 3, "base_delay": 0.01})
    server.script(Reply.error(503), Reply(events=[], ending="abort"), Reply.stream(["finally"]))
    stream = client.astream("hi", model="openai/gpt-4o")
    assert server.calls() == 0  # building the stream sends nothing
    text = "".join([c.text async for c in stream])
    assert text == "finally" and server.calls() == 3
    assert stream.request.attempt == 3


async def test_stream_first_chunk_timeout_is_retried(make_client: Any, server: FakeServer) -> None:
    client = make_client(middleware=["retry"], retry={"attempt_timeout": 1.5, "base_delay": 0.01})
    server.script(Reply.stream(["slow"], event_delay=6.0), Reply.stream(["fast"]))
    await client.awarmup()  # litellm's import is not part of the first attempt's 1.5 s
    text = "".join([c.text async for c in client.astream("hi", model="openai/gpt-4o")])
    assert text == "fast" and server.calls() == 2
