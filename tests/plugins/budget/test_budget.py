"""The budget middleware in one process: real HTTP to the loopback server, which counts every
upstream call; caps in tokens and USD, cache hits, scopes, period reset, concurrency, errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

import modelwire
from modelwire.errors import BudgetExceededError, ConfigurationError, RequestValidationError
from modelwire.plugins.budget import BudgetMiddleware, budget_of
from modelwire.testing import FakeServer, Reply, capture_events
from tests.conftest import SENTINEL_KEY

MakeClient = Callable[..., modelwire.Client]
MODEL = "openai/gpt-4o-mini"
# The FakeServer's echo of a one-word prompt "x" bills 10 prompt + 2 completion tokens ("echo: x").
USED = 12
# The estimate of "x" with max_tokens=20: ceil(1 / 4) + 4 per message = 5 prompt, 20 completion.
ESTIMATE = 25


def tokens_budget(tokens: int, *, match: str = "openai/*", scope: str = "global", period: str = "day",
                  **section: Any) -> dict[str, Any]:
    return {"limits": [{"match": match, "tokens": tokens, "period": period, "scope": scope}], **section}


def budget(client: modelwire.Client) -> BudgetMiddleware:
    found = budget_of(client)
    assert found is not None
    return found


async def spend_until_refused(client: modelwire.Client, model: str = MODEL, limit: int = 30,
                              **kwargs: Any) -> tuple[int, BudgetExceededError]:
    """Sequential calls until the budget refuses one: (answered calls, the refusal)."""
    for answered in range(limit):
        try:
            await client.acomplete("x", model=model, max_tokens=20, **kwargs)
        except BudgetExceededError as exc:
            return answered, exc
    raise AssertionError(f"the budget never refused a call in {limit}")


async def test_tokens_cap_stops_calls_before_the_network(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["budget"], budget=tokens_budget(100))
    answered, refusal = await spend_until_refused(client)
    # Admitted while spent + estimate <= cap: 12 * n + 25 <= 100 holds for n = 0..6.
    assert answered == 7 and server.calls() == 7
    for _ in range(3):  # past the cap: refused every time, nothing reaches the server
        with pytest.raises(BudgetExceededError):
            await client.acomplete("x", model=MODEL, max_tokens=20)
    assert server.calls() == 7
    [row] = await budget(client).usage()
    assert (row["spent"], row["reserved"], row["limit"]) == (7 * USED, 0, 100)  # settled with the real usage
    assert refusal.spent == 7 * USED and refusal.needed == ESTIMATE


async def test_other_models_are_not_capped(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["budget"], budget=tokens_budget(30, match="openai/gpt-4o-mini"))
    await spend_until_refused(client)
    for _ in range(3):
        await client.acomplete("x", model="openai/gpt-4o", max_tokens=20)
        await client.acomplete("x", model="local/llama3", max_tokens=20)
    assert server.calls() == 1 + 6


def _litellm_price(model: str) -> tuple[float, float]:
    import litellm

    entry = litellm.model_cost[model]
    return entry["input_cost_per_token"], entry["output_cost_per_token"]


async def test_usd_cap_for_a_known_openai_model(make_client: MakeClient, server: FakeServer) -> None:
    await make_client().acomplete("warm", model="local/warm")  # imports litellm (its bundled price map)
    inp, out = _litellm_price("gpt-4o-mini")
    used, estimate = 10 * inp + 2 * out, 5 * inp + 20 * out
    cap = 4.5 * used + estimate  # room for 5 calls: 4 * used + estimate <= cap < 5 * used + estimate
    client = make_client(middleware=["budget"],
                         budget={"limits": [{"match": "openai/*", "usd": cap, "period": "month"}]})
    answered, refusal = await spend_until_refused(client)
    assert answered == 5 and server.calls() == 1 + 5
    assert refusal.unit == "usd" and refusal.spent == pytest.approx(5 * used)
    assert refusal.needed == pytest.approx(estimate)
    [row] = await budget(client).usage()
    assert row["spent"] == pytest.approx(5 * used)  # what Completion.cost says, summed


async def test_usd_cap_for_a_configured_local_price(make_client: MakeClient, server: FakeServer) -> None:
    prices = {"local/llama3": {"input": 1000.0, "output": 2000.0}}  # USD per million tokens
    used, estimate = 10 * 1e-3 + 2 * 2e-3, 5 * 1e-3 + 20 * 2e-3  # 0.014 and 0.045
    client = make_client(middleware=["budget"], prices=prices,
                         budget={"limits": [{"match": "local/*", "usd": 2.5 * used + estimate, "period": "day"}]})
    answered, _ = await spend_until_refused(client, model="local/llama3")
    assert answered == 3 and server.calls() == 3
    response = None
    with pytest.raises(BudgetExceededError):
        response = await client.acomplete("x", model="local/llama3", max_tokens=20)
    assert response is None and server.calls() == 3
    # A model with no known price cannot be held to a USD cap: said before any network call.
    with pytest.raises(ConfigurationError, match=r'local/unpriced has no known price: add \[prices."local/unpriced"\]'):
        await client.acomplete("x", model="local/unpriced")
    assert server.calls() == 3


async def test_cache_hits_cost_nothing(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["cache", "budget"], cache={"backend": "memory"},
                         budget=tokens_budget(ESTIMATE + USED - 1))  # room for one call, not two
    first = await client.acomplete("x", model=MODEL, max_tokens=20)
    hits = [await client.acomplete("x", model=MODEL, max_tokens=20) for _ in range(5)]
    assert not first.cached and all(hit.cached for hit in hits)
    async with client.astream("x", model=MODEL, max_tokens=20) as stream:
        assert "".join([c.text async for c in stream]) == first.text  # the cache replays it as a stream
    [row] = await budget(client).usage()
    assert row["spent"] == USED and server.calls() == 1
    with pytest.raises(BudgetExceededError):  # a miss still needs the budget
        await client.acomplete("y", model=MODEL, max_tokens=20)
    assert server.calls() == 1


async def test_namespace_scope_isolates_tenants(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["cache", "budget"], cache={"backend": "null"},
                         budget=tokens_budget(ESTIMATE + USED - 1, scope="namespace"))
    per_call = {"budget": {"namespace": "tenant-a"}}
    await client.acomplete("x", model=MODEL, max_tokens=20, options=per_call)
    with pytest.raises(BudgetExceededError) as refused:
        await client.acomplete("x", model=MODEL, max_tokens=20, options=per_call)
    assert refused.value.scope == "namespace:tenant-a"
    # Another tenant has its own total; the cache's namespace option names the tenant too.
    await client.acomplete("x", model=MODEL, max_tokens=20, options={"cache": {"namespace": "tenant-b"}})
    await client.acomplete("x", model=MODEL, max_tokens=20)  # no tenant given: "default"
    with pytest.raises(BudgetExceededError) as refused_b:
        await client.acomplete("x", model=MODEL, max_tokens=20, options={"budget": {"namespace": "tenant-b"}})
    assert refused_b.value.scope == "namespace:tenant-b"
    assert server.calls() == 3
    rows = {row["subject"]: row["spent"] for row in await budget(client).usage()}
    assert rows == {"tenant-a": USED, "tenant-b": USED, "default": USED}


async def test_model_scope_counts_each_model_apart(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["budget"], budget=tokens_budget(ESTIMATE + USED - 1, scope="model"))
    for model in ("openai/gpt-4o-mini", "openai/gpt-4o"):
        await client.acomplete("x", model=model, max_tokens=20)
        with pytest.raises(BudgetExceededError) as refused:
            await client.acomplete("x", model=model, max_tokens=20)
        assert refused.value.scope == f"model:{model}"
    assert server.calls() == 2


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_the_budget_resets_at_the_period_boundary(make_client: MakeClient, server: FakeServer,
                                                        tmp_path: Any, backend: str) -> None:
    section = tokens_budget(ESTIMATE + USED - 1, period="hour", backend=backend, path=str(tmp_path / "b.sqlite"))
    client = make_client(middleware=["budget"], budget=section)
    mw = budget(client)
    boundary = datetime(2030, 1, 1, 14, 0, tzinfo=timezone.utc)
    mw.clock = lambda: boundary.timestamp() - 1  # 13:59:59 UTC
    await client.acomplete("x", model=MODEL, max_tokens=20)
    with pytest.raises(BudgetExceededError) as refused:
        await client.acomplete("x", model=MODEL, max_tokens=20)
    assert refused.value.resets_at == boundary and refused.value.period == "hour"
    mw.clock = lambda: boundary.timestamp()  # 14:00:00 UTC: a new period, a new total
    await client.acomplete("x", model=MODEL, max_tokens=20)
    assert server.calls() == 2
    [row] = await mw.usage()
    assert row["start"] == boundary.isoformat() and row["spent"] == USED


@pytest.mark.parametrize("backend", ["memory", "sqlite", "redis"])
async def test_concurrent_calls_cannot_overshoot_the_cap(make_client: MakeClient, server: FakeServer,
                                                         tmp_path: Any, backend: str, request: Any) -> None:
    section: dict[str, Any] = {"backend": backend}
    if backend == "sqlite":
        section["path"] = str(tmp_path / "b.sqlite")
    if backend == "redis":
        section["url"] = request.getfixturevalue("redis_server").url
        section["key_prefix"] = f"test:{tmp_path.name}:"
    client = make_client(middleware=["budget"], budget=tokens_budget(3 * ESTIMATE, **section))
    await client.awarmup()
    results = await asyncio.gather(*(client.acomplete("x", model=MODEL, max_tokens=20) for _ in range(12)),
                                   return_exceptions=True)
    refused = [r for r in results if isinstance(r, BudgetExceededError)]
    answered = [r for r in results if isinstance(r, modelwire.Completion)]
    assert len(refused) + len(answered) == 12
    # The cap fits 3 estimates: at most 3 are in flight at once, and each later admission must fit
    # after the real (smaller) usage of earlier ones: 12 * settled + 25 * in flight <= 75.
    assert server.calls() == len(answered) <= 5
    assert len(answered) >= 3
    rows = await budget(client).usage()
    assert rows[0]["spent"] == USED * len(answered) <= 3 * ESTIMATE and rows[0]["reserved"] == 0


async def test_budget_exceeded_error(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["cache", "budget", "fallback", "retry", "circuit"],
                         fallback={"chains": {MODEL: ["local/llama3"]}},
                         budget=tokens_budget(ESTIMATE + USED - 1, period="day"))
    await client.acomplete("x", model=MODEL, max_tokens=20)
    with capture_events() as logs, pytest.raises(BudgetExceededError) as refused:
        await client.acomplete("y", model=MODEL, max_tokens=20)
    error = refused.value
    now = datetime.now(timezone.utc)
    assert error.resets_at.tzinfo is not None and error.resets_at.utcoffset() == timedelta(0)
    assert error.resets_at == datetime(now.year, now.month, now.day, tzinfo=timezone.utc) + timedelta(days=1) or (
        now.hour == 0 and now.minute == 0)  # the call straddled midnight UTC
    assert (error.limit, error.spent, error.needed) == (ESTIMATE + USED - 1, USED, ESTIMATE)
    assert (error.unit, error.period, error.scope, error.match) == ("tokens", "day", "global", "openai/*")
    assert not error.retryable and error.request_sent is False and error.status is None
    assert (error.provider, error.model) == ("openai", "gpt-4o-mini")
    text = str(error)
    for part in ("openai/*", "global", "36 tokens per day", "12 tokens spent", "needs about 25",
                 error.resets_at.isoformat()):
        assert part in text
    assert isinstance(error, modelwire.ModelwireError) and not isinstance(error, modelwire.ProviderError)
    # Neither retried, nor sent to the fallback, nor counted by the circuit: one upstream call in all.
    assert server.calls() == 1
    assert SENTINEL_KEY not in repr(vars(error)) + text
    [event] = [e for e in logs if e["event"] == "budget.exceeded"]
    assert event["log_level"] == "warning" and event["limit"] == ESTIMATE + USED - 1 and event["scope"] == "global"


async def test_failed_attempts_the_provider_may_have_billed(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["budget", "retry"], retry={"base_delay": 0.01, "max_attempts": 3},
                         budget=tokens_budget(1000))
    mw = budget(client)
    # An HTTP error answer is not billed: two 500s then an answer cost the answer only.
    server.script(Reply.error(500), Reply.error(500))
    await client.acomplete("x", model=MODEL, max_tokens=20)
    [row] = await mw.usage()
    assert row["spent"] == USED and server.calls() == 3
    # A connection cut after the request was sent: its usage is unknown, the estimate is charged.
    server.script(Reply(body={"partial": True}, content_length=10_000))
    await client.acomplete("x", model=MODEL, max_tokens=20)
    [row] = await mw.usage()
    assert row["spent"] == USED + ESTIMATE + USED and row["reserved"] == 0


async def test_streams_settle_at_their_end(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["budget"], budget=tokens_budget(1000))
    mw = budget(client)
    async with client.astream("x", model=MODEL, max_tokens=20) as stream:
        assert [c.text async for c in stream]
        [row] = await mw.usage()
        assert row["reserved"] == 0  # settled when the last chunk was read
    assert row["spent"] == USED  # the final chunk's usage
    # A provider that sends no usage: the estimate is charged.
    server.script(Reply.stream(["a", "b"], usage=False))
    async with client.astream("x", model=MODEL, max_tokens=20) as stream:
        [c async for c in stream]
    [row] = await mw.usage()
    assert row["spent"] == USED + ESTIMATE
    # A consumer that stops reading early: the provider ran until then, usage unknown: the estimate.
    server.script(Reply.stream(["a"] * 50, event_delay=0.01))
    async with client.astream("x", model=MODEL, max_tokens=20) as stream:
        async for _ in stream:
            break
    [row] = await mw.usage()
    assert row["spent"] == USED + 2 * ESTIMATE and row["reserved"] == 0


async def test_a_stream_is_refused_before_the_network(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["budget"], budget=tokens_budget(ESTIMATE - 1))
    with pytest.raises(BudgetExceededError):
        async with client.astream("x", model=MODEL, max_tokens=20) as stream:
            [c async for c in stream]
    assert server.calls() == 0


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ({"limits": [{"match": "*", "usd": 1.0, "tokens": 10, "period": "day"}]}, "budget.limits.0"),
        ({"limits": [{"match": "*", "period": "day"}]}, "budget.limits.0"),
        ({"limits": [{"usd": 1.0, "period": "week"}]}, "budget.limits.0.period"),
        ({"limits": [{"usd": 1.0}]}, "budget.limits.0.period"),
        ({"limits": [{"usd": -1.0, "period": "day"}]}, "budget.limits.0.usd"),
        ({"limits": [{"usd": 1.0, "period": "day", "scope": "tenant"}]}, "budget.limits.0.scope"),
        ({"limits": [{"usd": 1.0, "period": "day", "cap": 3}]}, "budget.limits.0.cap"),
        ({"limit": []}, "budget.limit"),
        ({"backend": "sqlite"}, "budget.path"),
        ({"backend": "redis"}, "budget.url"),
        ({"limits": [{"usd": 1.0, "period": "day"}, {"usd": 2.0, "period": "day"}]}, "budget.limits.1"),
    ],
)
def test_bad_config_fails_at_client_construction(make_client: MakeClient, section: dict[str, Any],
                                                 named: str) -> None:
    with pytest.raises(ConfigurationError, match=named.replace(".", r"\.")):
        make_client(middleware=["budget"], budget=section)


async def test_bad_per_call_options(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["budget"], budget=tokens_budget(1000, scope="namespace"))
    with pytest.raises(RequestValidationError, match=r"options\.budget\.tenant"):
        await client.acomplete("x", model=MODEL, options={"budget": {"tenant": "a"}})
    with pytest.raises(RequestValidationError, match=r"options\.budget\.namespace"):
        await client.acomplete("x", model=MODEL, options={"budget": {"namespace": "a b/c"}})
    assert server.calls() == 0


def test_limits_without_the_middleware_are_reported(make_client: MakeClient) -> None:
    with capture_events() as logs:
        make_client(middleware=["cache"], budget=tokens_budget(100))
        make_client(middleware=["cache", "budget"], budget=tokens_budget(100))
        make_client(middleware=["cache"])
    [event] = [e for e in logs if e["event"] == "budget.not_enabled"]
    assert event["log_level"] == "warning" and event["limits"] == 1
