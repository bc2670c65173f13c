"""The stream object's life: early stop, cancellation, garbage collection, memory, sync use, n > 1,
tool calls, repeat guard, logs. Rows S25-S31 of the reliability matrix."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
import tracemalloc
from typing import Any

import pytest

import modelwire
from modelwire.testing import FakeServer, Reply, capture_events

from ..providers.test_stream_wire import chunk, collect, stream_client, usage_chunk, wait_closed


def long_reply(n: int = 300, delay: float = 0.01) -> Reply:
    return Reply.stream([f"w{i} " for i in range(n)], event_delay=delay)


# -- S25, S26: stopping early -------------------------------------------------------------------


async def test_s25_break_in_context_closes_upstream(make_client, server: FakeServer) -> None:
    server.script(long_reply())
    client = make_client()
    with capture_events() as logs:
        async with client.astream("x", model="local/m") as stream:
            async for _ in stream:
                if stream.chunks == 3:
                    break
    await wait_closed(server)
    assert server.disconnects == 1
    assert stream.end_reason == "cancelled_by_consumer" and stream.text == "w0 w1 w2 "
    ends = [e for e in logs if e["event"] == "llm.stream_end"]
    assert [e["reason"] for e in ends] == ["cancelled_by_consumer"] and ends[0]["chunks"] == 3
    with pytest.raises(modelwire.ModelwireError):
        stream.get_final_completion()
    await stream.aclose()  # idempotent
    assert [e["event"] for e in logs].count("llm.stream_end") == 1


async def test_s25_dropped_stream_is_closed_by_garbage_collection(make_client, server: FakeServer) -> None:
    server.script(long_reply())
    client = make_client()
    with capture_events() as logs:
        stream = client.astream("x", model="local/m")
        await stream.__anext__()
        del stream
        gc.collect()
        await wait_closed(server)
    assert [e["reason"] for e in logs if e["event"] == "llm.stream_end"] == ["cancelled_by_consumer"]


async def test_s26_cancelled_task_propagates_and_closes(make_client, server: FakeServer) -> None:
    server.script(long_reply())
    client = make_client()
    got: list[Any] = []

    async def consume() -> None:
        async for c in client.astream("x", model="local/m"):
            got.append(c)

    with capture_events() as logs:
        task = asyncio.create_task(consume())
        while len(got) < 3:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_closed(server)
    assert [e["reason"] for e in logs if e["event"] == "llm.stream_end"] == ["cancelled"]


# -- S27: memory and log volume -----------------------------------------------------------------


async def _drain_text(client: modelwire.Client) -> int:
    async with client.astream("x", model="local/m") as stream:
        async for _ in stream:
            pass
    return len(stream.text)


async def test_s27_long_stream_bounded_memory_and_no_per_chunk_logs(make_client, server: FakeServer) -> None:
    n = 100_000
    piece = b"data: " + json.dumps(chunk("abcd ")).encode() + b"\n\n"  # pre-encoded: the server stays cheap
    client = make_client()
    await collect(client)  # warm up litellm's import and client cache first (echo reply)
    m = 20_000  # a second, shorter run: what it leaves behind must not grow
    server.script(Reply(events=[piece] * n + [chunk(None, "stop")]), Reply(events=[piece] * m + [chunk(None, "stop")]))
    gc.collect()
    tracemalloc.start()
    try:
        with capture_events() as logs:
            before = tracemalloc.get_traced_memory()[0]
            assert await _drain_text(client) == 5 * n
            gc.collect()
            first, peak = tracemalloc.get_traced_memory()
            assert await _drain_text(client) == 5 * m
            gc.collect()
            second = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # The text is 500 kB; litellm's own wrapper keeps every chunk object (hundreds of MB here).
    assert peak - before < 8 * 2**20, f"peak growth {(peak - before) / 2**20:.1f} MB"
    assert second - first < 2**20, "a second long stream grew memory"
    assert len(logs) == 2  # one llm.response per stream, nothing per chunk


# -- S28: repeat guard --------------------------------------------------------------------------


async def test_s28_repeat_guard_trips_when_enabled(make_client, server: FakeServer) -> None:
    looping = [chunk("la la ")] * 50 + [chunk(None, "stop")]
    server.script(Reply(events=looping), Reply(events=looping))
    client = make_client()
    _, _, error = await collect(client, options={"stream": {"stream_repeat_limit": 10}})
    assert type(error) is modelwire.StreamRepetitionError and error.chunks == 9
    stream, _, error = await collect(client)  # off by default
    assert error is None and stream.chunks == 51


# -- S30, S31: choices and tool calls -----------------------------------------------------------


async def test_s30_n_choices_assembled_per_index(make_client, server: FakeServer) -> None:
    events = []
    for word in ("a", "b", "c"):
        events += [chunk(f"{word}{i}", index=i) for i in (2, 0, 1)]
    events += [chunk(None, "stop", index=i) for i in range(3)] + [usage_chunk(3, 9)]
    server.script(Reply(events=events))
    stream, _, error = await collect(make_client(), n=3)
    assert error is None
    finals = stream.get_final_completions()
    assert [f.text for f in finals] == ["a0b0c0", "a1b1c1", "a2b2c2"]
    assert stream.choice_text(2) == "a2b2c2" and all(f.finish_reason == "stop" for f in finals)
    assert finals[1].usage == modelwire.Usage(3, 9, 12)


async def test_s30_a_choice_without_finish_is_interrupted(make_client, server: FakeServer) -> None:
    server.script(Reply(events=[chunk("x", index=0), chunk("y", index=1), chunk(None, "stop", index=0)], ending="eof"))
    _, _, error = await collect(make_client(), n=2)
    assert type(error) is modelwire.StreamInterruptedError


def tool_delta(index: int, arguments: str, call_id: str | None = None, name: str | None = None) -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id:
        call.update(id=call_id, type="function")
        call["function"]["name"] = name
    return chunk(None, delta={"tool_calls": [call]})


TOOL_EVENTS = [
    tool_delta(0, "", "call_a", "get_weather"), tool_delta(0, '{"city": "Pa'), tool_delta(1, "", "call_b", "get_time"),
    tool_delta(0, 'ris"}'), tool_delta(1, '{"tz": "UTC"}'),
]


async def test_s31_tool_call_deltas_assembled(make_client, server: FakeServer) -> None:
    server.script(Reply(events=[*TOOL_EVENTS, chunk(None, "tool_calls")]))
    stream, _, error = await collect(make_client())
    assert error is None
    calls = stream.get_final_completion().tool_calls
    assert [c["id"] for c in calls] == ["call_a", "call_b"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert calls[1]["function"]["name"] == "get_time"


async def test_s31_tool_call_cut_mid_arguments_is_incomplete(make_client, server: FakeServer) -> None:
    server.script(Reply(events=TOOL_EVENTS[:2], ending="abort"))
    stream, _, error = await collect(make_client())
    assert type(error) is modelwire.StreamInterruptedError
    assert error.partial_tool_calls == (modelwire.ToolCall("call_a", "get_weather", '{"city": "Pa', complete=False),)
    with pytest.raises(modelwire.ModelwireError):
        stream.get_final_completion()  # nothing to execute


# -- sync streams -------------------------------------------------------------------------------


async def test_sync_stream_from_a_thread_while_a_loop_runs(make_client, server: FakeServer) -> None:
    server.script(Reply.stream([f"p{i} " for i in range(10)], event_delay=0.1))
    client = make_client()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    def consume() -> tuple[str, list[float]]:
        arrivals = []
        with client.stream("x", model="local/m") as stream:
            for c in stream:
                if c.text:
                    arrivals.append(time.monotonic())
        return stream.get_final_completion().text, arrivals

    tick = asyncio.create_task(ticker())
    text, arrivals = await asyncio.to_thread(consume)
    tick.cancel()
    assert text == "".join(f"p{i} " for i in range(10))
    # chunk by chunk as the server sends (0.9 s from first to last), not one buffer
    assert arrivals[-1] - arrivals[0] >= 0.45
    assert ticks >= 5  # this loop kept running meanwhile (a blocked loop would not tick at all)


def test_sync_stream_break_and_close_release_the_connection(make_client, server: FakeServer) -> None:
    server.script(long_reply(), long_reply())
    client = make_client()
    with client.stream("x", model="local/m") as stream:
        for _ in stream:
            break
    stream2 = client.stream("x", model="local/m")
    next(stream2)
    stream2.close()
    end = time.monotonic() + 5
    while server.open_connections and time.monotonic() < end:
        time.sleep(0.02)
    assert server.open_connections == 0 and server.disconnects == 2


def test_sync_stream_dropped_in_a_thread_is_closed(make_client, server: FakeServer) -> None:
    server.script(long_reply())
    client = make_client()

    def worker() -> None:
        stream = client.stream("x", model="local/m")
        next(stream)
        del stream
        gc.collect()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(30)
    end = time.monotonic() + 5
    while server.open_connections and time.monotonic() < end:
        time.sleep(0.02)
    assert server.open_connections == 0 and server.disconnects == 1


def test_sync_stream_interruption_carries_partial_text(make_client, server: FakeServer) -> None:
    server.script(Reply(events=[chunk("par"), chunk("tial")], ending="eof"))
    received = []
    with pytest.raises(modelwire.StreamInterruptedError) as info:
        with make_client().stream("x", model="local/m") as stream:
            for c in stream:
                received.append(c.text)
    assert info.value.partial_text == "partial" == "".join(received)


def test_stream_complete_module_function(make_client, server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modelwire, "_default", make_client())
    assert "".join(modelwire.stream_complete("one two", model="local/m")) == "echo: one two"


# -- logs (O02) ---------------------------------------------------------------------------------


async def test_one_log_event_per_stream_end(make_client, server: FakeServer) -> None:
    server.script(Reply.stream(["a", "b"]), Reply(events=[chunk("a")], ending="abort"))
    client = make_client()
    with capture_events() as logs:
        await collect(client)
        await collect(client)
    ok, failed, end = logs
    assert ok["event"] == "llm.response" and ok["stream_reason"] == "stop" and ok["usage_known"] is True
    assert ok["chunks"] == 4 and ok["first_token_ms"] > 0
    assert failed["event"] == "llm.attempt_failed" and failed["error_class"] == "StreamInterruptedError"
    assert end["event"] == "llm.stream_end" and end["reason"] == "interrupted" and end["usage_known"] is False
    assert end["chunks"] == 1 and end["log_level"] == "warning"


# -- X07, X08: many streams ---------------------------------------------------------------------


async def test_x07_event_loop_keeps_turning_under_200_streams(make_client, server: FakeServer) -> None:
    client = make_client()
    await collect(client)  # warm up (litellm import, client cache)
    n = 200
    for _ in range(n):
        server.script(Reply.stream([f"t{i} " for i in range(100)], event_delay=0.01))
    lags: list[float] = []
    flowing = asyncio.Event()
    first_chunks = 0
    done = False

    async def one() -> int:
        nonlocal first_chunks
        async with client.astream("x", model="local/m") as stream:
            async for _ in stream:
                if stream.chunks == 1:
                    first_chunks += 1
                    if first_chunks == n:
                        flowing.set()
        return stream.chunks

    async def probe() -> None:
        # Steady state: all 200 streams are open and delivering. (Opening 200 at once costs litellm's
        # ~5 ms of CPU per call in one burst; that is request setup, reported by bench/bench_stream.py.)
        await flowing.wait()
        loop = asyncio.get_running_loop()
        while not done:
            start = loop.time()
            await asyncio.sleep(0.01)
            lags.append(loop.time() - start - 0.01)

    task = asyncio.create_task(probe())
    loop = asyncio.get_running_loop()
    start = loop.time()
    counts = await asyncio.gather(*(one() for _ in range(n)))
    total = loop.time() - start
    done = True
    await task
    assert counts == [102] * n
    # What holds under any load: the loop kept turning while 200 streams delivered (the probe ran
    # throughout, no single stall took a large share of the run). The lag figures themselves are
    # speed, measured by bench/bench_stream.py.
    assert len(lags) >= 10, f"the probe ran {len(lags)} times in {total:.1f} s"
    assert max(lags) < total / 4, f"one stall of {max(lags):.2f} s in a {total:.1f} s run"


_X08_CHILD = r"""
import asyncio, json, os
os.environ["OPENAI_API_KEY"] = "sk-x08-not-a-real-key"
import modelwire
from modelwire.testing import FakeServer, Reply

async def main():
    with FakeServer() as server:
        client = modelwire.Client(config={"middleware": [], "providers": {
            "local": {"kind": "openai_compatible", "api_base": server.openai_url, "first_token_timeout": 15}}})
        outcomes = []

        async def one(i, abandon):
            try:
                async with client.astream("x", model="local/m") as stream:
                    async for _ in stream:
                        if abandon and stream.chunks == 2:
                            break
                outcomes.append("abandoned" if abandon else "ok")
            except modelwire.RateLimitError:
                outcomes.append("429")
            except Exception as exc:
                outcomes.append(type(exc).__name__)

        for wave in range(2):
            for i in range(40):
                server.script(Reply.error(429, "slow down", type="rate_limit_error") if i % 8 == 0
                              else Reply.stream([f"w{k} " for k in range(60)], event_delay=0.01))
            await asyncio.gather(*(one(i, i % 2 == 1 and i % 8 != 0) for i in range(40)))
        for _ in range(200):
            if server.open_connections <= 10:
                break
            await asyncio.sleep(0.02)
        print(json.dumps({"outcomes": outcomes, "open": server.open_connections, "disconnects": server.disconnects}))

asyncio.run(main())
"""


def test_x08_pool_hygiene_more_streams_than_pool(tmp_path: Any) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "AIOHTTP_CONNECTOR_LIMIT_PER_HOST": "10", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    proc = subprocess.run([sys.executable, "-c", _X08_CHILD], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    outcomes = result["outcomes"]
    # 80 streams through a pool of 10: every one ends as scripted, none waits for a leaked slot
    assert sorted(set(outcomes)) == ["429", "abandoned", "ok"], outcomes
    # replies are served in arrival order, so which stream got a 429 varies; the totals do not
    abandoned = outcomes.count("abandoned")
    assert len(outcomes) == 80 and outcomes.count("429") == 10 and abandoned >= 25
    assert result["open"] <= 10  # only idle keep-alive connections of the pool remain
    assert result["disconnects"] >= abandoned  # every abandoned stream's connection was closed


def test_thread_safety_of_sync_streams(make_client, server: FakeServer) -> None:
    client = make_client()
    texts: list[str] = []

    def worker(i: int) -> None:
        with client.stream(f"thread {i}", model="local/m") as stream:
            texts.append("".join(c.text for c in stream))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(texts) == sorted(f"echo: thread {i}" for i in range(8))


async def test_stream_settings_from_provider_config(make_client, server: FakeServer) -> None:
    client = stream_client(make_client, server, idle_timeout=12, first_token_timeout=34, max_stream_duration=56)
    config = client.providers["local"].config
    assert (config.idle_timeout, config.first_token_timeout, config.max_stream_duration) == (12, 34, 56)


# -- issue 9 item 11: SyncStream.close() from another thread -------------------------------------


def _consume_in_thread(stream: Any) -> tuple[threading.Thread, list[str], dict[str, Any], threading.Event]:
    got: list[str] = []
    outcome: dict[str, Any] = {}
    arrived = threading.Event()

    def consume() -> None:
        try:
            for c in stream:
                got.append(c.text)
                arrived.set()
            outcome["end"] = "stopped"
        except BaseException as exc:  # the test asserts on whatever ended the loop
            outcome["end"] = exc

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    return thread, got, outcome, arrived


def _wait_disconnects(server: FakeServer, count: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while server.disconnects < count and time.monotonic() < end:
        time.sleep(0.02)
    assert server.disconnects >= count, "the upstream connection was not closed"


@pytest.mark.parametrize("before_first_chunk", [False, True], ids=["mid-stream", "before-first-chunk"])
def test_sync_close_from_another_thread_stops_a_blocked_next(
    make_client, server: FakeServer, before_first_chunk: bool
) -> None:
    events = [] if before_first_chunk else [chunk("a"), chunk("b")]
    server.script(Reply(events=events, ending="stall"))  # then the server sends nothing, forever
    client = stream_client(make_client, server, idle_timeout=30, first_token_timeout=30)
    stream = client.stream("x", model="local/m")
    thread, got, outcome, arrived = _consume_in_thread(stream)
    if before_first_chunk:
        deadline = time.monotonic() + 30
        while server.calls() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    else:
        assert arrived.wait(30)
    time.sleep(0.3)  # let the consumer block in next() on the stalled server
    start = time.monotonic()
    stream.close()  # raised RuntimeError (aclose(): asynchronous generator is already running)
    thread.join(10)
    # the idle/first-token timeout is 30 s: ending well within 10 s means close() ended it
    assert not thread.is_alive() and time.monotonic() - start < 10
    assert outcome["end"] == "stopped", outcome
    assert got == ([] if before_first_chunk else ["a", "b"])
    assert stream.end_reason == "cancelled_by_consumer"
    _wait_disconnects(server, 1)
    assert next(stream, None) is None  # closed stays closed
    stream.close()  # idempotent
    with pytest.raises(modelwire.ModelwireError, match="not finished"):
        stream.get_final_completion()


def test_sync_close_from_the_consuming_thread_still_works(make_client, server: FakeServer) -> None:
    server.script(long_reply())
    client = make_client()
    with client.stream("x", model="local/m") as stream:
        for _ in stream:
            if stream.chunks == 3:
                break
    assert stream.end_reason == "cancelled_by_consumer" and stream.chunks == 3
    _wait_disconnects(server, 1)
