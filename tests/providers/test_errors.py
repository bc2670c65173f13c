"""Error mapping: every failure shape becomes the right modelwire error (rows T05-T08, T10, T11, T13-T15,
T20, T21, T23, T24, B07) over real HTTP; Retry-After and duration parsing (T04) as a table."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Callable
from typing import Any

import pytest

import modelwire
from modelwire.providers.errors import map_exception, parse_duration, parse_retry_after, rate_limit_hint
from modelwire.testing import FakeServer, Reply, capture_events

NOW = 1_700_000_000.0


def _date(offset: float) -> str:
    return email.utils.formatdate(NOW + offset, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "20"}, 20.0),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after": "-10"}, None),
        ({"retry-after": "60"}, 60.0),
        ({"retry-after": "61"}, 61.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": ""}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "9" * 35}, None),
        ({"retry-after": "Zun, 29 Sep 2023 16:26:57 GMT"}, None),
        ({"retry-after": "Fri, 29 Sep 100000 16:26:57 GMT"}, None),
        ({"retry-after": _date(-100)}, None),
        ({"retry-after": _date(20)}, 20.0),
        ({"retry-after": _date(121)}, 121.0),
        ({"Retry-After-Ms": "1500", "retry-after": "2"}, 1.5),
        ({"retry-after-ms": "junk", "retry-after": "2"}, 2.0),
        ({"retry-after-ms": "120001"}, 120.001),
        ({}, None),
    ],
)
def test_t04_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    got = parse_retry_after(headers, now=NOW)
    assert got == (pytest.approx(expected, abs=1.0) if expected is not None else None)


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("6m0s", 360.0), ("1s", 1.0), ("12ms", 0.012), ("1.2s", 1.2), ("1h2m3s", 3723.0), ("644ms", 0.644),
     ("9.816s", 9.816), ("0", None), ("-1", None), ("", None), ("soon", None), ("1x", None), ("s", None),
     ("5m junk", None), (None, None)],
)
def test_parse_duration(raw: str | None, seconds: float | None) -> None:
    got = parse_duration(raw)
    assert got == (pytest.approx(seconds) if seconds is not None else None)


def test_rate_limit_hint_picks_the_exhausted_limit() -> None:
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "120ms",
               "x-ratelimit-remaining-tokens": "5000", "x-ratelimit-reset-tokens": "6m0s"}
    assert rate_limit_hint(headers) == pytest.approx(0.12)
    assert rate_limit_hint(headers, limit_type="tokens") == 360.0
    azure = {"x-ratelimit-limit-tokens": "-1", "x-ratelimit-remaining-tokens": "-1", "x-ratelimit-reset-tokens": "0"}
    assert rate_limit_hint(azure) is None  # Azure's sentinels mean "unknown"
    assert rate_limit_hint({}, "Limit 30000, Used 29500. Please try again in 644ms. Visit") == pytest.approx(0.644)


@pytest.fixture
def client(make_client: Callable[..., modelwire.Client]) -> modelwire.Client:
    return make_client()


async def fail(client: modelwire.Client, model: str = "openai/gpt-4o") -> modelwire.ModelwireError:
    with pytest.raises(modelwire.ModelwireError) as info:
        await client.acomplete("hi", model=model)
    err = info.value
    assert err.__cause__ is None  # never a raw litellm/openai/httpx/aiohttp exception behind it
    return err


P6 = {"error": {"message": "The response was filtered due to the prompt triggering Azure OpenAI's content management "
                "policy. Please modify your prompt and retry.", "type": None, "param": "prompt",
                "code": "content_filter", "status": 400,
                "innererror": {"code": "ResponsibleAIPolicyViolation",
                               "content_filter_result": {"hate": {"filtered": True, "severity": "high"}}}}}

CASES: list[tuple[str, Reply, str, type[modelwire.ModelwireError], int | None, bool, str]] = [
    ("openai 500", Reply.error(500), "openai/gpt-4o", modelwire.ServerError, 500, True, "error while processing"),
    ("openai 503 P5", Reply.error(503, "Our servers are currently overloaded. Please try again later.",
                                  type="service_unavailable_error", code="server_is_overloaded"),
     "openai/gpt-4o", modelwire.ServiceUnavailableError, 503, True, "overloaded"),
    ("html 502", Reply(502, "<html><head><title>502 Bad Gateway</title></head><body>cloudflare</body></html>"),
     "openai/gpt-4o", modelwire.ServerError, 502, True, "502 Bad Gateway"),
    ("html 504", Reply(504, "<html><body>Gateway Time-out</body></html>"), "local/llama", modelwire.ServerError,
     504, True, "Gateway Time-out"),
    ("401", Reply.error(401, "Incorrect API key provided.", code="invalid_api_key"), "openai/gpt-4o",
     modelwire.AuthenticationError, 401, False, "Incorrect API key"),
    ("403", Reply.error(403, "Project does not have access to model"), "openai/gpt-4o",
     modelwire.PermissionDeniedError, 403, False, "access"),
    ("404 model", Reply.error(404, "The model `gpt-9` does not exist", code="model_not_found"), "openai/gpt-9",
     modelwire.NotFoundError, 404, False, "gpt-9"),
    ("azure DeploymentNotFound", Reply(404, {"error": {"code": "DeploymentNotFound", "message": "The API deployment "
                                                      "for this resource does not exist."}}),
     "azure/wrong-deploy", modelwire.NotFoundError, 404, False, "'wrong-deploy'"),
    ("azure Resource not found", Reply(404, {"error": {"code": "404", "message": "Resource not found"}}),
     "azure/dep", modelwire.NotFoundError, 404, False, "api_version"),
    ("azure 429 string code", Reply(429, {"error": {"code": "429", "message": "Requests ... have exceeded token "
                                                   "rate limit of your pricing tier. Please retry after 7 seconds."}},
                                    headers={"Retry-After": "7"}),
     "azure/dep", modelwire.RateLimitError, 429, True, "retry after 7"),
    ("azure content filter P6", Reply(400, P6), "azure/dep", modelwire.ContentFilterError, 400, False, "filtered"),
    ("context P10", Reply.error(400, "This model's maximum context length is 8192 tokens. However, your messages "
                                "resulted in 9000 tokens.", type="invalid_request_error",
                                code="context_length_exceeded"),
     "openai/gpt-4o", modelwire.ContextWindowExceededError, 400, False, "maximum context length"),
    ("deepseek context", Reply.error(400, "This model's maximum context length is 65536 tokens. However, you "
                                     "requested 70000 tokens (69000 in the messages, 1000 in the completion).",
                                     type="invalid_request_error", code="invalid_request_error"),
     "local/deepseek", modelwire.ContextWindowExceededError, 400, False, "65536"),
    ("llama.cpp 400 context", Reply(400, {"error": {"code": 400, "message": "request (4390 tokens) exceeds the "
                                                   "available context size (4096 tokens), try increasing it",
                                                   "type": "exceed_context_size_error", "n_prompt_tokens": 4390,
                                                   "n_ctx": 4096}}),
     "local/llama", modelwire.ContextWindowExceededError, 400, False, "4096"),
    ("llama.cpp 500 context", Reply(500, {"error": {"code": 500, "message": "Context size has been exceeded.",
                                                   "type": "server_error"}}),
     "local/llama", modelwire.ContextWindowExceededError, 500, False, "Context size"),
    ("vllm top-level 400", Reply(400, {"object": "error", "message": "max_tokens must be at least 1, got -3.",
                                       "type": "BadRequestError", "param": None, "code": 400}),
     "local/vllm", modelwire.BadRequestError, 400, False, "max_tokens must be"),
    ("quota P2", Reply.error(429, "You exceeded your current quota, please check your plan and billing details.",
                             type="insufficient_quota", code="insufficient_quota"),
     "openai/gpt-4o", modelwire.QuotaExceededError, 429, False, "quota"),
    ("request too large", Reply.error(429, "Request too large for gpt-4o on tokens per min (TPM): Limit 30000, "
                                      "Requested 61337.", type="tokens", code="rate_limit_exceeded"),
     "openai/gpt-4o", modelwire.QuotaExceededError, 429, False, "Request too large"),
    ("408", Reply.error(408, "Request timed out"), "openai/gpt-4o", modelwire.ProviderTimeoutError, 408, True,
     "timed out"),
    ("T20 text 200", Reply(200, "Hello, I am a plain text page"), "local/llama", modelwire.InvalidResponseError,
     200, True, "not JSON"),
    ("T20 html 200", Reply(200, "<html><body>login portal</body></html>"), "local/llama",
     modelwire.InvalidResponseError, 200, True, "login portal"),
    ("T20 empty 200", Reply(200, b""), "local/llama", modelwire.InvalidResponseError, 200, True, "not JSON"),
    ("T21 choices empty", Reply(200, {"id": "x", "object": "chat.completion", "created": 1, "model": "m",
                                      "choices": []}),
     "local/llama", modelwire.InvalidResponseError, 200, False, "choices"),
    ("T21 choices null", Reply(200, {"id": "x", "object": "chat.completion", "created": 1, "model": "m",
                                     "choices": None}),
     "local/llama", modelwire.InvalidResponseError, 200, False, "choices"),
    ("T23 error in 200", Reply(200, {"error": {"message": "The server had an error processing your request.",
                                              "type": "server_error", "param": None, "code": None}}),
     "openai/gpt-4o", modelwire.ServerError, 200, True, "error processing your request"),
    ("T23 lm studio", Reply(200, {"error": {"message": "Compute error."}, "message": "Compute error."}),
     "local/lmstudio", modelwire.ServerError, 200, True, "Compute error"),
    ("T23 context in 200", Reply(200, {"error": {"code": "server_error", "message": "the context window is full",
                                                 "type": "server_error"}}),
     "local/kronk", modelwire.ContextWindowExceededError, 200, False, "context window is full"),
    ("T23 vllm top-level in 200", Reply(200, {"object": "error", "message": "boom", "type": "InternalServerError",
                                              "code": 500}),
     "local/vllm", modelwire.ServerError, 200, True, "vLLM"),
]


@pytest.mark.parametrize(("name", "reply", "model", "kind", "status", "retryable", "needle"), CASES,
                         ids=[c[0] for c in CASES])
async def test_mapping_matrix(client: modelwire.Client, server: FakeServer, name: str, reply: Reply, model: str,
                              kind: type[modelwire.ModelwireError], status: int | None, retryable: bool,
                              needle: str) -> None:
    server.script(reply)
    err = await fail(client, model)
    assert type(err) is kind, f"{name}: got {type(err).__name__}: {err}"
    assert err.status == status and err.retryable is retryable
    assert needle.lower() in str(err).lower()
    provider, _, model_name = model.partition("/")
    assert err.provider == provider and err.model == model_name
    assert err.body  # a short excerpt of what the provider said
    assert err.attempts == 1
    if status is not None and status != 200:
        assert err.request_id == "req-1"  # the provider's x-request-id
    assert server.calls() == 1


async def test_t08_azure_429_retry_after_and_limit_type(client: modelwire.Client, server: FakeServer) -> None:
    server.script(Reply.error(429, "Rate limit reached for gpt-4o on tokens per min (TPM): Limit 30000.",
                              type="tokens", code="rate_limit_exceeded",
                              headers={"retry-after": "3", "x-request-id": "abc-123"}))
    err = await fail(client)
    assert isinstance(err, modelwire.RateLimitError)
    assert err.retry_after == 3.0 and err.retry_after_source == "header" and err.limit_type == "tokens"
    assert err.request_id == "abc-123"


async def test_t21_degraded_but_valid_completions(client: modelwire.Client, server: FakeServer) -> None:
    server.script(Reply(200, {"id": "x", "object": "chat.completion", "created": 1, "model": "m",
                              "choices": [{"index": 0, "message": {"role": "assistant"}, "finish_reason": "stop"}]}))
    response = await client.acomplete("hi", model="local/llama")
    assert response.text == "" and response.finish_reason == "stop"
    body = Reply.completion("no usage").body
    del body["usage"]
    server.script(Reply(200, body))
    response = await client.acomplete("hi", model="local/llama")
    assert response.text == "no usage" and response.finish_reason == "stop"


async def test_t24_short_body_is_a_connection_error(client: modelwire.Client, server: FakeServer) -> None:
    server.script(Reply(body=Reply.completion("cut").body, content_length=10_000))
    err = await fail(client)
    assert type(err) is modelwire.ProviderConnectionError and err.retryable and err.request_sent is True
    assert err.status is None


async def test_t17_refused_is_a_connection_error_not_sent(make_client: Any) -> None:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    client = make_client(providers={"local": {"kind": "openai_compatible", "api_base": f"http://127.0.0.1:{port}/v1"}})
    err = await fail(client, "local/llama")
    assert type(err) is modelwire.ProviderConnectionError and err.request_sent is False and err.status is None


def test_raw_transport_exceptions() -> None:
    import aiohttp
    import httpx

    request = httpx.Request("POST", "http://127.0.0.1:1/v1/chat/completions")
    cases: list[tuple[BaseException, type[modelwire.ModelwireError], bool | None]] = [
        (httpx.ConnectError("refused", request=request), modelwire.ProviderConnectionError, False),
        (httpx.ConnectTimeout("slow connect", request=request), modelwire.ProviderTimeoutError, False),
        (httpx.ReadTimeout("slow read", request=request), modelwire.ProviderTimeoutError, True),
        (httpx.RemoteProtocolError("peer closed connection without sending complete message body"),
         modelwire.ProviderConnectionError, True),
        (aiohttp.ServerDisconnectedError(), modelwire.ProviderConnectionError, True),
        (asyncio.TimeoutError(), modelwire.ProviderTimeoutError, True),
        (ConnectionResetError("reset"), modelwire.ProviderConnectionError, True),
    ]
    for exc, kind, sent in cases:
        err = map_exception(exc, provider="p", model="m")
        assert type(err) is kind, exc
        assert err.request_sent is sent, exc
    assert type(map_exception(ValueError("odd"), provider="p", model="m")) is modelwire.ProviderError


async def test_b07_silent_truncation_warning(client: modelwire.Client, server: FakeServer) -> None:
    long_prompt = "word " * 2000  # ~10000 characters, about 2500 tokens
    server.script(Reply.completion("ok", usage={"prompt_tokens": 2048 // 4, "completion_tokens": 1,
                                                "total_tokens": 513}))
    with capture_events() as logs:
        await client.acomplete(long_prompt, model="local/ollama")
    warned = [e for e in logs if e["event"] == "llm.prompt_truncated_suspected"]
    assert len(warned) == 1 and warned[0]["prompt_tokens"] == 512 and warned[0]["estimated_prompt_tokens"] >= 2000
    assert warned[0]["log_level"] == "warning"
    server.script(Reply.completion("ok", usage={"prompt_tokens": 2100, "completion_tokens": 1, "total_tokens": 2101}),
                  Reply.completion("ok", usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}))
    with capture_events() as logs:
        await client.acomplete(long_prompt, model="local/ollama")  # a plausible count: no warning
        await client.acomplete("short prompt", model="local/ollama")  # too short to judge
    assert not [e for e in logs if e["event"] == "llm.prompt_truncated_suspected"]


def test_retry_after_date_uses_wall_clock() -> None:
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    got = parse_retry_after({"retry-after": future})
    assert got is not None and 25 < got <= 30
