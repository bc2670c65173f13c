"""Retry middleware against the loopback server (rows T01-T04, T08, T09, T11, T12, T16, R01-R04, R08).

Timing rows replace the middleware's ``sleep``/``clock`` on the instance the client built (the
tenacity pattern); the HTTP, litellm and mapping paths are real. A few rows keep real small delays.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

import modelwire
from modelwire.hookspecs import hookimpl
from modelwire.plugins.retry import RetryMiddleware, backoff_delay
from modelwire.testing import FakeServer, Reply, capture_events

P1 = ("Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Used 29000, "
      "Requested 2000.")


class FakeTime:
    """Replaces the retry middleware's sleep and clock: sleeping advances the clock at once."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return time.monotonic() + self.offset

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.offset += seconds
        await asyncio.sleep(0)


def retry_mw(client: modelwire.Client) -> RetryMiddleware:
    return next(m for m in client.middleware if isinstance(m, RetryMiddleware))


def fake_time(client: modelwire.Client) -> FakeTime:
    ft = FakeTime()
    mw = retry_mw(client)
    mw.sleep, mw.clock = ft.sleep, ft.clock
    return ft


@pytest.fixture
def retry_client(make_client: Callable[..., modelwire.Client]) -> Callable[..., modelwire.Client]:
    def make(**retry: Any) -> modelwire.Client:
        return make_client(middleware=["retry"], retry=retry)

    return make


# -- Retry-After ----------------------------------------------------------------------------------


async def test_t01_429_retry_after_two_seconds(retry_client: Any, server: FakeServer) -> None:
    client = retry_client()
    ft = fake_time(client)
    server.script(
        Reply.error(429, P1, type="tokens", code="rate_limit_exceeded", headers={"retry-after": "2"}),
        Reply.completion("ok"),
    )
    with capture_events() as logs:
        response = await client.acomplete("hi", model="openai/gpt-4o")
    assert response.text == "ok"
    assert server.calls() == 2
    assert ft.sleeps == [2.0]
    done = [e for e in logs if e["event"] == "llm.response"]
    assert done and done[-1]["attempt"] == 2 and done[-1]["retry_delay"] == 2.0
    failed = [e for e in logs if e["event"] == "llm.attempt_failed"]
    assert [e["attempt"] for e in failed] == [1] and failed[0]["error_class"] == "RateLimitError"


async def test_t02_retry_after_ms_wins(retry_client: Any, server: FakeServer) -> None:
    client = retry_client()
    ft = fake_time(client)
    headers = {"retry-after-ms": "1500", "retry-after": "2"}
    server.script(Reply.error(429, P1, type="tokens", code="rate_limit_exceeded", headers=headers), Reply.completion())
    await client.acomplete("hi", model="openai/gpt-4o")
    assert ft.sleeps == [1.5]
    assert server.calls() == 2


@pytest.mark.parametrize("value", ["121", "86400", "retry-after-ms:120001"])
async def test_t03_retry_after_beyond_cap_fails_fast(retry_client: Any, server: FakeServer, value: str) -> None:
    client = retry_client(max_attempts=5)
    ft = fake_time(client)
    header = {"retry-after-ms": value.split(":")[1]} if ":" in value else {"retry-after": value}
    server.script(Reply.error(429, P1, type="tokens", code="rate_limit_exceeded", headers=header), Reply.completion())
    started = time.monotonic()
    with pytest.raises(modelwire.RateLimitError) as info:
        await client.acomplete("hi", model="openai/gpt-4o")
    assert time.monotonic() - started < 5
    assert server.calls() == 1 and ft.sleeps == []
    expected = 120.001 if ":" in value else float(value)
    assert info.value.retry_after == pytest.approx(expected)
    assert info.value.attempts == 1 and info.value.retryable


async def test_t03_http_date_beyond_cap_and_boundary_at_cap(retry_client: Any, server: FakeServer) -> None:
    import email.utils

    client = retry_client(max_retry_after=60)
    ft = fake_time(client)
    far = email.utils.formatdate(time.time() + 3600, usegmt=True)
    server.script(Reply.error(429, P1, headers={"retry-after": far}))
    with pytest.raises(modelwire.RateLimitError) as info:
        await client.acomplete("hi", model="openai/gpt-4o")
    assert server.calls() == 1 and info.value.retry_after == pytest.approx(3600, abs=5)
    server.script(Reply.error(429, P1, headers={"retry-after": "60"}), Reply.completion("at the cap"))
    assert (await client.acomplete("hi", model="openai/gpt-4o")).text == "at the cap"
    assert ft.sleeps == [60.0] and server.calls() == 3


MALFORMED = [
    "", "-10", "0", "inf", "nan", "9" * 35, "Zun, 29 Sep 2023 16:26:57 GMT", "Fri, 29 Sep 100000 16:26:57 GMT",
    "Fri, 29 Sep 2000 16:26:57 GMT", "soon",
]


@pytest.mark.parametrize("value", MALFORMED)
async def test_t04_malformed_retry_after_falls_back_to_backoff(retry_client: Any, server: FakeServer,
                                                                value: str) -> None:
    client = retry_client(base_delay=0.5, max_delay=8)
    ft = fake_time(client)
    server.script(Reply.error(429, "Rate limited", headers={"retry-after": value}), Reply.completion("ok"))
    assert (await client.acomplete("hi", model="openai/gpt-4o")).text == "ok"
    assert server.calls() == 2
    assert len(ft.sleeps) == 1 and 0 <= ft.sleeps[0] <= 0.5  # first backoff envelope, not the header


async def test_t04_absurd_retry_after_does_not_mask_status_error(retry_client: Any, server: FakeServer) -> None:
    client = retry_client()
    server.script(Reply.error(400, "bad param", type="invalid_request_error", headers={"retry-after": "Zun, 99 Foo"}))
    with pytest.raises(modelwire.BadRequestError) as info:
        await client.acomplete("hi", model="openai/gpt-4o")
    assert info.value.status == 400 and server.calls() == 1


async def test_reset_header_hint_used_when_no_retry_after(retry_client: Any, server: FakeServer) -> None:
    client = retry_client()
    ft = fake_time(client)
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1s",
               "x-ratelimit-remaining-tokens": "100", "x-ratelimit-reset-tokens": "6m0s"}
    server.script(Reply.error(429, "Rate limit reached on requests per min (RPM)", type="requests",
                              code="rate_limit_exceeded", headers=headers), Reply.completion())
    await client.acomplete("hi", model="openai/gpt-4o")
    assert ft.sleeps == [1.0]
    # a hint longer than max_retry_after is not a reason to fail fast: plain backoff instead
    server.script(Reply.error(429, "Rate limit reached on tokens per min (TPM)", type="tokens",
                              headers={"x-ratelimit-reset-tokens": "6m0s"}), Reply.completion())
    await client.acomplete("hi", model="openai/gpt-4o")
    assert 0 <= ft.sleeps[1] <= 0.5 and server.calls() == 4


async def test_t08_azure_429_retried_with_retry_after(retry_client: Any, server: FakeServer) -> None:
    client = retry_client()
    ft = fake_time(client)
    body = {"error": {"code": "429", "message": "Requests to the ChatCompletions_Create Operation under Azure OpenAI "
                      "API version 2024-10-21 have exceeded token rate limit. Please retry after 1 second."}}
    server.script(Reply(429, body, headers={"Retry-After": "1", "x-ratelimit-remaining-requests": "5"}),
                  Reply.completion("azure ok"))
    response = await client.acomplete("hi", model="azure/gpt4o-deploy")
    assert response.text == "azure ok" and ft.sleeps == [1.0]
    assert [r.path for r in server.requests] == ["/openai/deployments/gpt4o-deploy/chat/completions"] * 2


async def test_t08_azure_daily_quota_fails_fast(retry_client: Any, server: FakeServer) -> None:
    client = retry_client()
    body = {"error": {"code": "429", "message": "... exceeded call rate limit ... Please retry after 86400 seconds."}}
    server.script(Reply(429, body, headers={"Retry-After": "86400"}))
    with pytest.raises(modelwire.RateLimitError) as info:
        await client.acomplete("hi", model="azure/gpt4o-deploy")
    assert info.value.retry_after == 86400 and server.calls() == 1
    assert info.value.provider == "azure" and info.value.model == "gpt4o-deploy"


# -- what is retried, how often ---------------------------------------------------------------------


async def test_t09_r01_500_always_exact_attempt_count(retry_client: Any, server: FakeServer) -> None:
    client = retry_client(max_attempts=4, base_delay=0.01, max_delay=0.02)  # real small sleeps
    server.script(*[Reply.error(500)] * 10)
    with pytest.raises(modelwire.ServerError) as info:
        await client.acomplete("hi", model="openai/gpt-4o")
    assert server.calls() == 4  # 1 + 3 retries: litellm/SDK retries are off
    assert info.value.attempts == 4 and info.value.status == 500
    assert info.value.request_id == "req-4"
    assert retry_mw(client).stats["retries"] == 3


async def test_default_is_three_attempts(retry_client: Any, server: FakeServer) -> None:
    client = retry_client()
    ft = fake_time(client)
    server.script(*[Reply.error(502, "<html><body><h1>502 Bad Gateway</h1>cloudflare</body></html>")] * 5)
    with pytest.raises(modelwire.ServerError) as info:
        await client.acomplete("hi", model="openai/gpt-4o")
    assert server.calls() == 3 and len(ft.sleeps) == 2
    assert info.value.status == 502 and "Bad Gateway" in str(info.value)  # T10: retried, body excerpt kept


@pytest.mark.parametrize("with_header", [False, True])
@pytest.mark.parametrize("shape", ["overloaded", "service_unavailable"])
async def test_t11_503_overloaded(retry_client: Any, server: FakeServer, shape: str, with_header: bool) -> None:
    client = retry_client()
    ft = fake_time(client)
    headers = {"retry-after": "3"} if with_header else {}
    if shape == "overloaded":
        reply = Reply.error(503, "That model is currently overloaded with other requests.", type="server_error",
                            headers=headers)
    else:
        reply = Reply.error(503, "Our servers are currently overloaded. Please try again later.",
                            type="service_unavailable_error", code="server_is_overloaded", headers=headers)
    server.script(reply, reply, reply)
    with pytest.raises(modelwire.ServiceUnavailableError):
        await client.acomplete("hi", model="openai/gpt-4o")
    assert server.calls() == 3
    if with_header:
        assert ft.sleeps == [3.0, 3.0]
    else:
        assert all(0 <= s <= 1.0 for s in ft.sleeps)


async def test_t12_x_should_retry_is_obeyed(retry_client: Any, server: FakeServer) -> None:
    client = retry_client()
    fake_time(client)
    server.script(Reply.error(500, headers={"x-should-retry": "false"}))
    with pytest.raises(modelwire.ServerError) as info:
        await client.acomplete("hi", model="openai/gpt-4o")
    assert server.calls() == 1 and info.value.retryable is False
    server.script(Reply.error(400, "try me again", type="invalid_request_error", headers={"x-should-retry": "true"}),
                  Reply.completion("second time lucky"))
    assert (await client.acomplete("hi", model="openai/gpt-4o")).text == "second time lucky"
    assert server.calls() == 3


@pytest.mark.parametrize("status", [408, 409])
async def test_t16_408_and_409_are_retried(retry_client: Any, server: FakeServer, status: int) -> None:
    client = retry_client()
    fake_time(client)
    server.script(Reply.error(status, "try again"), Reply.completion("fine"))
    assert (await client.acomplete("hi", model="openai/gpt-4o")).text == "fine"
    assert server.calls() == 2


NON_RETRYABLE = [
    (Reply.error(400, "Invalid value for 'temperature'", type="invalid_request_error"), modelwire.BadRequestError),
    (Reply.error(401, "Incorrect API key provided", code="invalid_api_key"), modelwire.AuthenticationError),
    (Reply.error(403, "You are not allowed to sample from this model"), modelwire.PermissionDeniedError),
    (Reply.error(404, "The model `gpt-9` does not exist", code="model_not_found"), modelwire.NotFoundError),
    (Reply.error(422, "Unprocessable"), modelwire.BadRequestError),
    (Reply(404, {"error": {"code": "DeploymentNotFound", "message": "The API deployment for this resource does not "
                           "exist. If you created the deployment within the last 5 minutes, please wait a moment and "
                           "try again."}}), modelwire.NotFoundError),
    (Reply(404, {"error": {"code": "404", "message": "Resource not found"}}), modelwire.NotFoundError),
    (Reply(400, {"error": {"message": "The response was filtered due to the prompt triggering Azure OpenAI's content "
                           "management policy.", "type": None, "param": "prompt", "code": "content_filter",
                           "status": 400, "innererror": {"code": "ResponsibleAIPolicyViolation"}}}),
     modelwire.ContentFilterError),
    (Reply.error(400, "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 "
                 "tokens.", type="invalid_request_error", code="context_length_exceeded"),
     modelwire.ContextWindowExceededError),
    (Reply.error(429, "You exceeded your current quota, please check your plan and billing details.",
                 type="insufficient_quota", code="insufficient_quota"), modelwire.QuotaExceededError),
    (Reply.error(429, "Your credit balance is too low.", type="credit_balance_exhausted",
                 code="credit_balance_exhausted"), modelwire.QuotaExceededError),
    (Reply.error(429, "Request too large for gpt-4o on tokens per min (TPM): Limit 30000, Requested 61337. The input "
                 "or output tokens must be reduced in order to run successfully.", type="tokens",
                 code="rate_limit_exceeded"), modelwire.QuotaExceededError),
]


@pytest.mark.parametrize(("reply", "kind"), NON_RETRYABLE, ids=lambda v: getattr(v, "__name__", ""))
async def test_r03_t05_t06_non_retryable_called_once(retry_client: Any, server: FakeServer, reply: Reply,
                                                     kind: type[Exception]) -> None:
    client = retry_client(max_attempts=5)
    ft = fake_time(client)
    server.script(reply, Reply.completion("must not be reached"))
    with pytest.raises(kind) as info:
        await client.acomplete("hi", model="openai/gpt-4o")
    assert server.calls() == 1 and ft.sleeps == []
    assert info.value.retryable is False  # type: ignore[attr-defined]


async def test_r03_configuration_errors_never_reach_the_wire(retry_client: Any, server: FakeServer) -> None:
    client = retry_client(max_attempts=5)
    with pytest.raises(modelwire.UnknownProviderError):
        await client.acomplete("hi", model="nope/bar")
    with pytest.raises(modelwire.UnknownProviderError):
        await client.acomplete("hi", model="gpt-4o")
    assert server.calls() == 0


# -- backoff, deadline, cancellation ------------------------------------------------------------------


def test_r02_backoff_formula() -> None:
    assert [backoff_delay(n, 0.5, 8.0, "openai", 0.0) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 8, 8]
    assert backoff_delay(3, 0.5, 8.0, "openai", 0.999) == pytest.approx(2 * 0.75, rel=1e-3)
    assert backoff_delay(3, 0.5, 8.0, "full", 0.5) == 1.0
    assert backoff_delay(2000, 0.5, 8.0, "full", 0.999) <= 8.0  # no overflow for huge n


@pytest.mark.parametrize("jitter", ["full", "openai"])
async def test_r02_envelope_and_distinct_delays(retry_client: Any, server: FakeServer, jitter: str) -> None:
    client = retry_client(max_attempts=5, jitter=jitter)
    ft = fake_time(client)
    server.script(*[Reply.error(500)] * 5)
    with pytest.raises(modelwire.ServerError):
        await client.acomplete("hi", model="openai/gpt-4o")
    assert len(ft.sleeps) == 4
    low = 0.75 if jitter == "openai" else 0.0
    for n, delay in enumerate(ft.sleeps, start=1):
        ceiling = min(8.0, 0.5 * 2 ** (n - 1))
        assert low * ceiling <= delay <= ceiling
    # 100 concurrent callers failing at once spread out instead of retrying in lockstep; each
    # caller's own model takes its one 503, so a fast caller's retry never takes a slow caller's
    # first answer (on a busy machine first attempts can arrive after others' retries)
    ft.sleeps.clear()
    for i in range(100):
        server.script(Reply.error(503), match=f"m{i:03d}x")
    results = await asyncio.gather(*[client.acomplete(f"c{i}", model=f"openai/m{i:03d}x") for i in range(100)])
    assert len(results) == 100 and server.calls() == 5 + 200
    assert len(ft.sleeps) == 100 and len(set(ft.sleeps)) == 100


async def test_r04_deadline_beats_attempts(retry_client: Any, server: FakeServer) -> None:
    client = retry_client(max_attempts=100, deadline=2.0, jitter="openai")
    ft = fake_time(client)
    server.script(*[Reply.error(500)] * 100)
    await client.awarmup()  # the fake clock runs with real time too: litellm's import must not eat the deadline
    with pytest.raises(modelwire.ServerError) as info:
        await client.acomplete("hi", model="openai/gpt-4o")
    assert sum(ft.sleeps) < 2.0
    assert 2 <= server.calls() <= 4 and info.value.attempts == server.calls()


async def test_r04_deadline_real_time(retry_client: Any, server: FakeServer) -> None:
    client = retry_client(max_attempts=100, deadline=3.0, base_delay=0.05, max_delay=0.05, jitter="openai")
    server.script(*[Reply.error(500)] * 100)
    await client.awarmup()  # litellm's import is not part of the deadline measured here
    started = time.monotonic()
    with pytest.raises(modelwire.ProviderError):
        await client.acomplete("hi", model="openai/gpt-4o")
    elapsed = time.monotonic() - started
    # it stops at the deadline: the last attempt is cut by it, or the next sleep would pass it
    assert 3.0 - 0.05 - 0.01 <= elapsed < 15.0
    assert 2 <= server.calls() < 100  # it did retry (one attempt takes far less than 3 s), and stopped


async def test_r08_cancel_during_backoff_sleep(retry_client: Any, server: FakeServer) -> None:
    client = retry_client(base_delay=5.0, max_delay=5.0, jitter="openai")  # a real sleep of >= 3.75 s
    server.script(Reply.error(500), Reply.completion())
    await client.awarmup()
    task = asyncio.create_task(client.acomplete("hi", model="openai/gpt-4o"))
    until = time.monotonic() + 30
    while not (server.calls() == 1 and retry_mw(client).stats["retries"] == 1) and time.monotonic() < until:
        await asyncio.sleep(0.02)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 3.0  # the backoff sleep (>= 3.75 s) was interrupted
    await asyncio.sleep(0.3)
    assert server.calls() == 1


# -- per call, hooks ----------------------------------------------------------------------------------


async def test_per_call_options(retry_client: Any, server: FakeServer) -> None:
    client = retry_client(max_attempts=5)
    fake_time(client)
    server.script(Reply.error(500), Reply.error(500))
    with pytest.raises(modelwire.ServerError):
        await client.acomplete("hi", model="openai/gpt-4o", options={"retry": {"max_attempts": 1}})
    assert server.calls() == 1
    with pytest.raises(modelwire.RequestValidationError, match="max_attempts"):
        await client.acomplete("hi", model="openai/gpt-4o", options={"retry": {"max_attempts": 0}})
    assert server.calls() == 1


async def test_hooks_retry_scheduled_and_error_retryable(make_client: Any, server: FakeServer) -> None:
    seen: list[tuple[int, float, str]] = []

    class Plugin:
        @hookimpl
        def modelwire_retry_scheduled(self, request: Any, error: Any, attempt: int, delay: float) -> None:
            seen.append((attempt, delay, type(error).__name__))

        @hookimpl
        def modelwire_error_retryable(self, request: Any, error: Any) -> bool | None:
            return False if getattr(error, "status", None) == 502 else None

    client = make_client(plugins=(Plugin(),), middleware=["retry"])
    fake_time(client)
    server.script(Reply.error(500), Reply.error(429, "slow down", headers={"retry-after": "1"}), Reply.completion())
    await client.acomplete("hi", model="openai/gpt-4o")
    assert [(a, n) for a, _, n in seen] == [(1, "ServerError"), (2, "RateLimitError")] and seen[1][1] == 1.0
    server.script(Reply.error(502))  # the hook says 502 is final for this plugin's provider
    with pytest.raises(modelwire.ServerError):
        await client.acomplete("hi", model="openai/gpt-4o")
    assert server.calls() == 4


async def test_plugins_command_shows_retry_state(retry_client: Any) -> None:
    state = retry_mw(retry_client(max_attempts=4)).describe()
    assert state["max_attempts"] == 4 and state["retries"] == 0
