"""Tokens per minute: reserve an estimate, reconcile with the usage the server reports (L08)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

import modelwire
from modelwire.errors import PayloadTooLargeError, RateLimitError, RateLimitExceeded
from modelwire.testing import FakeServer, Reply
from tests.plugins.ratelimit.test_middleware import MODEL

# "hi" is estimated at 1 + 4 (one message) = 5 prompt tokens; with max_tokens=400 a request reserves 405.
MAX_TOKENS = 400


def usage(total: int) -> dict[str, int]:
    return {"prompt_tokens": 5, "completion_tokens": total - 5, "total_tokens": total}


def tpm_client(make_client: Callable[..., modelwire.Client], **section: object) -> modelwire.Client:
    return make_client(middleware=["ratelimit"], ratelimit={
        "max_wait": 0, "limits": [{"match": "openai/*", "tpm": 1000}], **section})


def test_reconciliation_frees_budget_when_usage_is_below_the_estimate(
    make_client: Callable[..., modelwire.Client], server: FakeServer
) -> None:
    client = tpm_client(make_client)
    server.script(*[Reply.completion("short", usage=usage(50)) for _ in range(6)])
    for _ in range(6):  # 6 x 405 reserved would be far above 1000; 6 x 50 spent is not
        client.complete("hi", model=MODEL, max_tokens=MAX_TOKENS)
    assert server.calls() == 6


def test_L08_known_usage_keeps_tokens_in_the_window_and_a_large_request_waits(
    make_client: Callable[..., modelwire.Client], server: FakeServer
) -> None:
    client = tpm_client(make_client)
    server.script(*[Reply.completion("long", usage=usage(405)) for _ in range(3)])
    client.complete("hi", model=MODEL, max_tokens=MAX_TOKENS)
    client.complete("hi", model=MODEL, max_tokens=MAX_TOKENS)
    # 810 spent + 405 > 1000: it would wait (not be sent for a 429), longer than max_wait: fails at once
    with pytest.raises(RateLimitExceeded, match="the limiter needs") as info:
        client.complete("hi", model=MODEL, max_tokens=MAX_TOKENS, options={"ratelimit": {"max_wait": 0.5}})
    assert info.value.needed is not None and 50 < info.value.needed <= 61
    assert server.calls() == 2
    spent = sum(405 for r in server.requests if r.route == "chat")
    assert spent <= 1000


def test_usage_above_the_estimate_is_charged(make_client: Callable[..., modelwire.Client], server: FakeServer) -> None:
    client = tpm_client(make_client)
    server.script(Reply.completion("very long", usage=usage(900)))
    client.complete("hi", model=MODEL, max_tokens=MAX_TOKENS)  # reserved 405, spent 900
    with pytest.raises(RateLimitExceeded):
        client.complete("hi", model=MODEL, max_tokens=MAX_TOKENS)  # 900 + 405 > 1000
    assert server.calls() == 1


def test_a_request_larger_than_the_whole_budget_fails_at_once(
    make_client: Callable[..., modelwire.Client], server: FakeServer
) -> None:
    client = tpm_client(make_client, max_wait=60)
    start = time.monotonic()
    with pytest.raises(PayloadTooLargeError, match="tpm = 1000"):
        client.complete("hi", model=MODEL, max_tokens=2000)
    assert time.monotonic() - start < 30 and server.calls() == 0  # not after sitting out max_wait = 60
    assert client.middleware[0].describe()["too_large"] == 1


def test_default_max_tokens_is_reserved_when_the_call_sets_none(
    make_client: Callable[..., modelwire.Client], server: FakeServer
) -> None:
    client = tpm_client(make_client, default_max_tokens=600)
    server.script(Reply.completion("x", usage=usage(605)))
    client.complete("hi", model=MODEL)
    with pytest.raises(RateLimitExceeded):
        client.complete("hi", model=MODEL)  # another 605 does not fit
    assert server.calls() == 1


def test_a_provider_429_frees_the_whole_reservation(
    make_client: Callable[..., modelwire.Client], server: FakeServer
) -> None:
    client = tpm_client(make_client, default_cooldown=0)
    server.script(Reply.error(429, "Rate limit reached", type="rate_limit_error"))
    with pytest.raises(RateLimitError):
        client.complete("hi", model=MODEL, max_tokens=600)
    client.complete("hi", model=MODEL, max_tokens=600)  # 605 fits only if the first reservation was freed
    assert server.calls() == 2


async def test_streams_reconcile_with_their_final_usage(
    make_client: Callable[..., modelwire.Client], server: FakeServer
) -> None:
    client = tpm_client(make_client)
    for _ in range(4):
        stream = client.astream("hi", model=MODEL, max_tokens=MAX_TOKENS)
        assert "".join([chunk.text async for chunk in stream]) == "echo: hi"
        assert stream.usage is not None  # the server reports ~13 tokens; 4 x 405 would not fit
    assert server.calls() == 4


def test_litellm_token_counter_estimator(make_client: Callable[..., modelwire.Client], server: FakeServer) -> None:
    client = tpm_client(make_client, estimator="litellm")
    server.script(*[Reply.completion("x", usage=usage(20)) for _ in range(3)])
    for _ in range(3):
        client.complete("hello " * 50, model=MODEL, max_tokens=300)
    assert server.calls() == 3
