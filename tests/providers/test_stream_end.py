"""When a stream has really ended (issue 9, items 4 and the empty-stream P2 row).

llama.cpp's server ends a running stream with a bare ``data: [DONE]`` (no finish_reason) when a
second request preempts it: content followed by [DONE] without any finish_reason is an
interruption unless the provider is configured as one that never sends a finish_reason. An empty
200 stream (nothing, or only [DONE]) is reported as its own class, :class:`EmptyStreamError`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import modelwire
from modelwire.testing import FakeServer, Reply, capture_events

from .test_stream_wire import chunk, collect, stream_client, usage_chunk

# What llama.cpp's server sent when a second request cut the running stream: content, then [DONE].
CUT = [chunk("", delta={"role": "assistant"}), chunk("Hel"), chunk("lo")]


async def test_content_then_done_without_finish_reason_is_interrupted(make_client, server: FakeServer) -> None:
    server.script(Reply(events=CUT), Reply(events=CUT))
    client = make_client(middleware=["retry"], retry={"base_delay": 0})
    with capture_events() as logs:
        stream, chunks, error = await collect(client)
    assert type(error) is modelwire.StreamInterruptedError and error.retryable
    assert (error.partial_text, error.chunks) == ("Hello", 2)
    assert "[DONE] but no finish_reason" in error.message and "accept_done_without_finish_reason" in error.message
    assert stream.end_reason == "interrupted" and stream.finish_reason is None
    assert server.calls() == 1  # content reached the caller: never restarted behind its back
    assert not [e for e in logs if e.get("stream_reason") == "done"]  # not logged as a success
    with pytest.raises(modelwire.ModelwireError, match="not finished"):
        stream.get_final_completion()


async def test_usage_but_no_finish_reason_before_done_is_interrupted(make_client, server: FakeServer) -> None:
    server.script(Reply(events=[chunk("a"), usage_chunk()]))
    _, _, error = await collect(make_client())
    assert type(error) is modelwire.StreamInterruptedError and error.usage_known


async def test_one_choice_without_finish_reason_is_interrupted(make_client, server: FakeServer) -> None:
    server.script(Reply(events=[chunk("a", index=0), chunk("b", index=1), chunk(None, "stop", index=0)]))
    _, _, error = await collect(make_client(), n=2)
    assert type(error) is modelwire.StreamInterruptedError


async def test_finish_reason_then_done_is_still_a_success(make_client, server: FakeServer) -> None:
    server.script(Reply(events=[*CUT, chunk(None, "length")]))
    stream, _, error = await collect(make_client())
    assert error is None and stream.get_final_completion().finish_reason == "length"


async def test_relaxed_provider_accepts_done_without_finish_reason(make_client, server: FakeServer) -> None:
    server.script(Reply(events=CUT), Reply(events=CUT))
    client = stream_client(make_client, server, accept_done_without_finish_reason=True)
    stream, _, error = await collect(client)
    assert error is None and stream.end_reason == "done"
    final = stream.get_final_completion()
    assert (final.text, final.finish_reason) == ("Hello", None)  # accepted, never invented
    # the per-call override works both ways
    _, _, error = await collect(client, options={"stream": {"accept_done_without_finish_reason": False}})
    assert type(error) is modelwire.StreamInterruptedError


async def test_relaxed_provider_still_refuses_an_empty_stream(make_client, server: FakeServer) -> None:
    server.script(Reply(events=[]))
    client = stream_client(make_client, server, accept_done_without_finish_reason=True)
    _, _, error = await collect(client)
    assert type(error) is modelwire.EmptyStreamError


def test_relax_setting_is_validated(make_client, server: FakeServer) -> None:
    with pytest.raises(modelwire.RequestValidationError, match="options.stream.accept_done_without_finish_reason"):
        make_client().stream("x", model="local/m", options={"stream": {"accept_done_without_finish_reason": "yes"}})
    with pytest.raises(modelwire.ConfigurationError, match="accept_done_without_finish_reason"):
        stream_client(make_client, server, accept_done_without_finish_reason="maybe")
    assert server.calls() == 0


# -- empty 200 streams ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        (Reply(events=[], ending="eof"), "no event at all"),
        (Reply(events=[]), "only [DONE]"),
        (Reply(events=[chunk("", delta={"role": "assistant"})]), "only [DONE]"),
        (Reply(events=[usage_chunk()]), "only [DONE]"),
        (Reply(events=[usage_chunk()], ending="eof"), "only usage"),
    ],
)
async def test_empty_stream_is_reported_as_such(make_client, server: FakeServer, reply: Reply, says: str) -> None:
    server.script(reply)
    _, chunks, error = await collect(make_client())
    assert type(error) is modelwire.EmptyStreamError and error.retryable
    assert "empty stream" in error.message and says in error.message
    assert error.partial_text == "" and all(not c.text for c in chunks)


async def test_empty_stream_retries_are_bounded_by_max_attempts(make_client, server: FakeServer) -> None:
    # docs/streaming.md: a context overflow answered with an empty 200 stream is retried like any
    # interruption; retry.max_attempts (in [retry], or per call) bounds it.
    server.script(*[Reply(events=[])] * 5)
    client = make_client(middleware=["retry"], retry={"base_delay": 0, "max_attempts": 3})
    _, _, error = await collect(client)
    assert type(error) is modelwire.EmptyStreamError and server.calls() == 3
    server.reset()
    server.script(*[Reply(events=[])] * 5)
    once = make_client(middleware=["retry"], retry={"base_delay": 0, "max_attempts": 1})
    _, _, error = await collect(once)
    assert type(error) is modelwire.EmptyStreamError and server.calls() == 1


# -- whole responses ----------------------------------------------------------------------------


async def test_whole_response_without_finish_reason_is_accepted(make_client, server: FakeServer) -> None:
    # Decision (docs/streaming.md): a whole body is complete JSON or it fails to parse, so a missing
    # finish_reason cannot hide a cut; litellm reports it as "stop".
    server.script(Reply.completion("the whole answer", finish_reason=None))
    client = make_client(middleware=["retry"], retry={"base_delay": 0})
    response = await client.acomplete("hi", model="local/m")
    assert response.text == "the whole answer" and server.calls() == 1


# -- the CLI ------------------------------------------------------------------------------------


def test_cli_stream_cut_by_the_server_exits_non_zero(server: FakeServer, tmp_path: Path) -> None:
    config = tmp_path / "modelwire.toml"
    config.write_text(
        f'middleware = []\n[providers.local]\nkind = "openai_compatible"\napi_base = "{server.openai_url}"\n'
    )
    server.script(Reply(events=CUT))
    env = {**os.environ, "MODELWIRE_CONFIG": str(config), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    done = subprocess.run(
        [sys.executable, "-m", "modelwire.cli", "complete", "--stream", "-m", "local/m", "hi"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )
    assert done.returncode != 0, done
    assert done.stdout.startswith("Hello")  # what did arrive was shown
    assert "StreamInterruptedError" in done.stderr and "no finish_reason" in done.stderr
    assert server.calls() == 1
