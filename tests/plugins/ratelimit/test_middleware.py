"""The ratelimit middleware in one process (memory backend): pacing measured on the server's
arrival timestamps, arrival order, deadlines, concurrency, config errors, observability."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

import modelwire
from modelwire.errors import ConfigurationError, RateLimitError, RateLimitExceeded
from modelwire.hookspecs import hookimpl
from modelwire.testing import FakeServer, Reply, capture_events
from modelwire.types import LimitSpec, Request

MODEL = "openai/gpt-4o"


def max_in_window(times: Sequence[float], window: float) -> int:
    """The sliding-window oracle: most arrivals within any ``window`` seconds (inclusive)."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(ordered):
        while t - ordered[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


def chat_times(server: FakeServer, model: str | None = None) -> list[float]:
    return [r.time for r in server.requests if r.route == "chat" and (model is None or r.json["model"] == model)]


def limited(make_client: Callable[..., modelwire.Client], **section: Any) -> modelwire.Client:
    return make_client(middleware=["ratelimit"], ratelimit=section)


async def burst(client: modelwire.Client, n: int, model: str = MODEL, **kwargs: Any) -> list[Any]:
    tasks = [asyncio.ensure_future(client.acomplete(f"request {i}", model=model, **kwargs)) for i in range(n)]
    return list(await asyncio.gather(*tasks, return_exceptions=True))


@pytest.fixture(autouse=True)
def warm_litellm(make_client: Callable[..., modelwire.Client], server: FakeServer) -> None:
    """Import litellm and make one call first, so its ~4 s first-call cost does not distort arrival times."""
    make_client().complete("warm up", model="local/warmup")
    server.reset()


# -- configuration (L04 and bad values) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "names"),
    [
        ({"workers": 2}, "ratelimit.workers"),  # L04: in-memory limiter with several workers
        ({"limits": [{"match": "openai/*", "rps": 0}]}, "ratelimit.limits.0.rps"),
        ({"limits": [{"match": "openai/*", "rpm": -5}]}, "ratelimit.limits.0.rpm"),
        ({"limits": [{"rps": 1}, {"match": "x", "tpm": 0}]}, "ratelimit.limits.1.tpm"),
        ({"limits": [{"concurrency": 0}]}, "ratelimit.limits.0.concurrency"),
        ({"limits": [{"match": "openai/*"}]}, "ratelimit.limits.0"),
        ({"limits": [{"rps": 1, "key": "{tenant}"}]}, "ratelimit.limits.0"),
        ({"backend": "sqlite"}, "ratelimit.path"),
        ({"backend": "redis"}, "ratelimit.url"),
        ({"backend": "postgres"}, "ratelimit.backend"),
        ({"max_wait": -1}, "ratelimit.max_wait"),
        ({"rps": 5}, "ratelimit.rps"),
    ],
)
def test_bad_config_is_a_configuration_error_naming_the_key(
    make_client: Callable[..., modelwire.Client], server: FakeServer, section: dict[str, Any], names: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        limited(make_client, **section)
    assert names in str(info.value)
    assert server.calls() == 0


def test_memory_with_several_workers_explains_the_shared_backends(make_client: Callable[..., modelwire.Client]) -> None:
    with pytest.raises(ConfigurationError, match="sqlite.*redis"):
        limited(make_client, backend="memory", workers=4, limits=[{"rps": 1}])
    limited(make_client, backend="sqlite", path="/tmp/x.sqlite", workers=4, limits=[{"rps": 1}]).close()


def test_bad_per_call_max_wait_is_refused_before_the_network(
    make_client: Callable[..., modelwire.Client], server: FakeServer
) -> None:
    client = limited(make_client, limits=[{"rps": 5}])
    with pytest.raises(modelwire.RequestValidationError, match="max_wait"):
        client.complete("hi", model=MODEL, options={"ratelimit": {"max_wait": -1}})
    assert server.calls() == 0


# -- pacing -------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_acceptance_twenty_rapid_calls_at_one_per_second(
    make_client: Callable[..., modelwire.Client], server: FakeServer
) -> None:
    """The project's original acceptance test."""
    client = limited(make_client, limits=[{"match": "openai/*", "rps": 1}])
    results = await burst(client, 20)
    assert all(isinstance(r, modelwire.Completion) for r in results), results
    times = chat_times(server)
    assert len(times) == 20
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # 1 s apart at the limiter; a request may reach the server up to 0.2 s later than the one before
    assert min(gaps) >= 0.8, gaps
    assert times[-1] - times[0] >= 18.8


@pytest.mark.parametrize("smooth", [True, False])
async def test_L01_single_process_never_more_than_r_in_any_second(
    make_client: Callable[..., modelwire.Client], server: FakeServer, smooth: bool
) -> None:
    rate = 5
    client = limited(make_client, limits=[{"match": "openai/*", "rps": rate, "smooth": smooth}])
    results = await burst(client, 5 * rate)
    assert all(isinstance(r, modelwire.Completion) for r in results), results
    times = chat_times(server)
    assert len(times) == 5 * rate
    assert max_in_window(times, 1.0) <= rate
    assert times[-1] - times[0] >= 4.0  # 25 requests at 5/s: four full windows after the first burst


async def test_callers_are_admitted_in_arrival_order(
    make_client: Callable[..., modelwire.Client], server: FakeServer
) -> None:
    client = limited(make_client, limits=[{"rps": 10, "smooth": True}])  # one every 100 ms
    await burst(client, 10)
    prompts = [r.json["messages"][-1]["content"] for r in server.requests if r.route == "chat"]
    assert prompts == [f"request {i}" for i in range(10)]


def test_rules_match_first_pattern_and_unmatched_models_are_not_limited(
    make_client: Callable[..., modelwire.Client], server: FakeServer
) -> None:
    client = limited(make_client, limits=[{"match": "openai/gpt-4o", "rps": 1}, {"match": "openai/*", "rps": 50}])
    mw = client.middleware[0]
    assert mw.spec(client.request("x", model="openai/gpt-4o")).rps == 1
    assert mw.spec(client.request("x", model="openai/gpt-4o-mini")).rps == 50
    assert mw.spec(client.request("x", model="local/llama3")) is None
    for _ in range(3):
        client.complete("not limited", model="local/llama3")
    assert client.middleware[0].describe()["admitted"] == 0  # never went through the limiter
    assert "limiter_wait_ms" not in client.request("x", model="local/llama3").state.get("log", {})


def test_key_template_gives_each_model_its_own_bucket(make_client: Callable[..., modelwire.Client]) -> None:
    client = limited(make_client, max_wait=0, limits=[{"match": "openai/*", "rps": 1, "key": "{target}"}])
    client.complete("a", model="openai/gpt-4o")
    client.complete("b", model="openai/gpt-4o-mini")  # another bucket: admitted at once
    with pytest.raises(RateLimitExceeded):
        client.complete("c", model="openai/gpt-4o")


# -- L07: waiting in asyncio and deadlines ---------------------------------------------------------


async def test_L07_wait_beyond_deadline_raises_rate_limit_exceeded_with_needed(
    make_client: Callable[..., modelwire.Client], server: FakeServer
) -> None:
    client = limited(make_client, limits=[{"rps": 1}])
    await client.acomplete("first", model=MODEL)
    # the limiter knew the wait was longer than max_wait: it failed at once, naming the wait,
    # instead of sitting out the deadline ("waited ... for its turn")
    with pytest.raises(RateLimitExceeded, match="the limiter needs") as info:
        await client.acomplete("second", model=MODEL, options={"ratelimit": {"max_wait": 0.05}})
    # about 1 s less however long the first call took after its permit: far above 0.05 under any load
    assert info.value.needed is not None and 0.05 < info.value.needed <= 1.1
    assert not isinstance(info.value, RateLimitError) and isinstance(info.value, modelwire.ModelwireError)
    assert server.calls() == 1


async def test_L07_waiting_does_not_block_the_event_loop(make_client: Callable[..., modelwire.Client]) -> None:
    client = limited(make_client, limits=[{"rps": 1}])
    await client.acomplete("first", model=MODEL)
    lags: list[float] = []

    async def ticker() -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.01)
            lags.append(time.monotonic() - before - 0.01)

    tick = asyncio.ensure_future(ticker())
    start = time.monotonic()
    await client.acomplete("second", model=MODEL)
    waited = time.monotonic() - start
    tick.cancel()
    assert client.middleware[0].describe()["waits"] == 1 and waited > 0
    # a blocked loop would tick once or twice in the whole wait; a busy machine slows the ticks,
    # it does not stop them (lag figures belong in bench/)
    assert len(lags) >= 10


def test_sync_callers_block_only_their_thread(make_client: Callable[..., modelwire.Client], server: FakeServer) -> None:
    client = limited(make_client, limits=[{"rps": 2}])
    done: list[float] = []
    start = time.monotonic()
    threads = [threading.Thread(target=lambda: done.append(client.complete("t", model=MODEL) and time.monotonic()))
               for _ in range(4)]
    for t in threads:
        t.start()
    ticks = 0
    while any(t.is_alive() for t in threads):  # the main thread keeps running meanwhile
        ticks += 1
        time.sleep(0.01)
    assert len(done) == 4 and ticks > 10
    assert max(done) - start >= 0.9
    assert max_in_window(chat_times(server), 1.0) <= 2


async def test_queued_callers_time_out_at_their_own_deadline(
    make_client: Callable[..., modelwire.Client], server: FakeServer
) -> None:
    client = limited(make_client, limits=[{"concurrency": 1}])
    server.script(Reply(body=Reply.completion("slow").body, delay=1.0))
    slow = asyncio.ensure_future(client.acomplete("slow", model=MODEL))
    await asyncio.sleep(0.2)
    start = time.monotonic()
    with pytest.raises(RateLimitExceeded, match="concurrency slot"):
        await client.acomplete("queued", model=MODEL, options={"ratelimit": {"max_wait": 0.3}})
    assert time.monotonic() - start >= 0.25
    assert not slow.done()  # it gave up at its own deadline, before the slot came free (1 s answer)
    await slow
    assert client.middleware[0].describe()["rejections"] == 1


async def test_concurrency_limits_requests_in_flight(
    make_client: Callable[..., modelwire.Client], server: FakeServer
) -> None:
    client = limited(make_client, limits=[{"concurrency": 2}])
    server.script(*[Reply(body=Reply.completion("slow").body, delay=0.4) for _ in range(6)])
    results = await burst(client, 6)
    assert all(isinstance(r, modelwire.Completion) for r in results), results
    times = chat_times(server)
    assert max_in_window(times, 0.3) <= 2  # each answer takes 0.4 s: a third arrival inside 0.3 s = 3 in flight
    assert times[-1] - times[0] >= 0.7
    assert client.middleware[0].describe()["in_flight"] == {}


async def test_streams_take_permits_and_release_the_slot_when_closed_early(
    make_client: Callable[..., modelwire.Client], server: FakeServer
) -> None:
    client = limited(make_client, limits=[{"rps": 2, "concurrency": 1}])
    start = time.monotonic()
    async with client.astream("stream one two three", model=MODEL) as stream:
        async for _ in stream:
            break  # stop early: the concurrency slot must come back
    full = client.astream("stream again", model=MODEL)
    text = "".join([chunk.text async for chunk in full])
    assert text == "echo: stream again"
    await client.acomplete("third", model=MODEL)  # rps 2: the third call waits for the window
    assert time.monotonic() - start >= 0.95  # (arrivals: litellm's first stream call adds ~0.4 s of its own)
    assert client.middleware[0].describe()["in_flight"] == {}


# -- observability -------------------------------------------------------------------------------


class _Delays:
    def __init__(self) -> None:
        self.seen: list[float] = []

    @hookimpl
    def modelwire_limit_delayed(self, request: Request, delay: float) -> None:
        self.seen.append(delay)


async def test_wait_is_logged_counted_and_announced(make_client: Callable[..., modelwire.Client]) -> None:
    delays = _Delays()
    client = make_client(plugins=(delays,), middleware=["ratelimit"], ratelimit={"limits": [{"rps": 1}]})
    with capture_events() as logs:
        await burst(client, 2)
    waits = [e["limiter_wait_ms"] for e in logs if e["event"] == "llm.response"]
    assert len(waits) == 2 and min(waits) < 800 <= max(waits)
    assert len(delays.seen) == 1 and delays.seen[0] >= 0.8
    state = client.middleware[0].describe()
    assert state["waits"] == 1 and state["admitted"] == 2 and state["rejections"] == 0


async def test_queue_depth_is_visible_while_callers_wait(make_client: Callable[..., modelwire.Client]) -> None:
    # nobody is admitted for a minute, however long the first call takes
    client = limited(make_client, limits=[{"match": "openai/*", "rpm": 1}], max_wait=120)
    await client.acomplete("first", model=MODEL)
    waiting = [asyncio.ensure_future(client.acomplete(f"w{i}", model=MODEL)) for i in range(3)]
    await asyncio.sleep(0.2)
    assert client.middleware[0].describe()["queue_depth"] == {"openai/*": 2}  # one head, two behind it
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)


class _TenantLimits:
    @hookimpl
    def modelwire_limit_spec(self, request: Request) -> LimitSpec | None:
        tenant = request.params.get("user")
        return LimitSpec(f"tenant:{tenant}", rps=1) if tenant else None


def test_limit_spec_hook_chooses_the_bucket(make_client: Callable[..., modelwire.Client]) -> None:
    client = make_client(plugins=(_TenantLimits(),), middleware=["ratelimit"], ratelimit={"max_wait": 0})
    client.complete("a", model=MODEL, user="alice")
    client.complete("b", model=MODEL, user="bob")  # another tenant, another bucket
    client.complete("c", model=MODEL)  # no tenant, no configured rule: not limited
    with pytest.raises(RateLimitExceeded, match="tenant:alice"):
        client.complete("d", model=MODEL, user="alice")


# -- CLI and demo ----------------------------------------------------------------------------------


def test_limits_command_shows_limits_and_current_usage(
    server: FakeServer, tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelwire.cli import main

    db = tmp_path / "limits.sqlite"
    config = tmp_path / "modelwire.toml"
    config.write_text(
        'middleware = ["ratelimit"]\n'
        f'[providers.openai]\napi_base = "{server.openai_url}"\n'
        f'[ratelimit]\nbackend = "sqlite"\npath = "{db}"\n'
        'limits = [{ match = "openai/*", rps = 5, rpm = 100, tpm = 50000 }]\n'
    )
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-000")
    client = modelwire.Client(config=str(config))
    for _ in range(3):
        client.complete("count me", model=MODEL, max_tokens=10)
    client.close()
    assert main(["--config", str(config), "limits"]) == 0
    out = capsys.readouterr().out
    assert "openai/*" in out and "rps=5" in out and "backend: sqlite" in out
    # smooth (the default): rpm 100 spaces requests 600 ms apart, which makes rps 5 redundant
    assert "3/100 per 1.0m" in out and "per 600ms" in out and "tokens (units)" in out


def test_demo_step_shows_a_paced_burst(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelwire.plugins.ratelimit import _demo_step

    monkeypatch.setenv("MODELWIRE_DEMO_KEY", "sk-demo-not-a-real-key")
    lines: list[str] = []
    _demo_step(None, server, lines.append)
    assert len(lines) == 9 and "waited" in lines[-1]
    assert max_in_window(chat_times(server, "llama3"), 1.0) <= 4
