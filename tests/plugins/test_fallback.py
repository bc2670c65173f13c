"""Fallback middleware against the loopback server (rows T05, T13, R11 and the fallback rules)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import modelwire
from modelwire.plugins.fallback import FallbackMiddleware, error_kind
from modelwire.testing import FakeServer, Reply, capture_events

CTX = "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens."
FILTERED = {"error": {"message": "The response was filtered due to the prompt triggering Azure OpenAI's content "
                      "management policy.", "type": None, "param": "prompt", "code": "content_filter", "status": 400}}


@pytest.fixture
def fb_client(make_client: Callable[..., modelwire.Client]) -> Callable[..., modelwire.Client]:
    def make(retry: dict[str, Any] | None = None, **fallback: Any) -> modelwire.Client:
        return make_client(middleware=["fallback", "retry"], retry=retry or {"max_attempts": 1}, fallback=fallback)

    return make


def chat_models(server: FakeServer) -> list[str]:
    """Where each chat request went: Azure deployment path or the OpenAI-style body model."""
    out = []
    for r in server.requests:
        if r.route != "chat":
            continue
        out.append(r.path.split("/")[3] if r.path.startswith("/openai/") else r.json["model"])
    return out


async def test_chain_taken_after_retries(fb_client: Any, server: FakeServer) -> None:
    client = fb_client(retry={"max_attempts": 2, "base_delay": 0.01},
                       chains={"openai/gpt-4o": ["azure/gpt4o-deploy", "local/llama"]})
    server.script(Reply.error(503), Reply.error(503), match="gpt-4o")
    server.script(Reply.completion("from azure"), match="gpt4o-deploy")
    with capture_events() as logs:
        response = await client.acomplete("hi", model="openai/gpt-4o")
    assert response.text == "from azure" and response.provider == "azure" and response.model == "gpt4o-deploy"
    assert chat_models(server) == ["gpt-4o", "gpt-4o", "gpt4o-deploy"]
    ok = [e for e in logs if e["event"] == "llm.response"][0]
    assert ok["fallback_from"] == "openai/gpt-4o" and ok["fallback_depth"] == 1 and ok["attempt"] == 1


async def test_final_error_lists_every_attempt(fb_client: Any, server: FakeServer) -> None:
    client = fb_client(chains={"openai/gpt-4o": ["azure/gpt4o-deploy", "local/llama"]})
    server.script(Reply.error(500), Reply.error(429, "slow down"), Reply.error(502))
    with pytest.raises(modelwire.ServerError) as info:
        await client.acomplete("hi", model="openai/gpt-4o")
    err = info.value
    assert [t for t, _ in err.tried] == ["openai/gpt-4o", "azure/gpt4o-deploy", "local/llama"]
    assert [type(e).__name__ for _, e in err.tried] == ["ServerError", "RateLimitError", "ServerError"]
    for target in ("openai/gpt-4o", "azure/gpt4o-deploy", "local/llama"):
        assert target in str(err)
    assert server.calls() == 3


async def test_t13_context_window_goes_to_bigger_model_only_if_configured(fb_client: Any, server: FakeServer) -> None:
    client = fb_client(
        chains={"openai/gpt-4o": ["local/llama"]},
        by_error={"context_window": {"openai/gpt-4o": ["openai/gpt-4o-long"]}},
    )
    server.script(Reply.error(400, CTX, type="invalid_request_error", code="context_length_exceeded"), match="gpt-4o")
    response = await client.acomplete("a very long prompt", model="openai/gpt-4o")
    assert response.model == "gpt-4o-long" and chat_models(server) == ["gpt-4o", "gpt-4o-long"]
    # without a by_error entry, a context-window error is final (the general chain is not used)
    server.reset()
    server.script(Reply.error(400, CTX, type="invalid_request_error", code="context_length_exceeded"))
    with pytest.raises(modelwire.ContextWindowExceededError):
        await client.acomplete("long", model="local/other")
    assert server.calls() == 1


async def test_content_filter_never_falls_back(fb_client: Any, server: FakeServer) -> None:
    client = fb_client(chains={"azure/*": ["openai/gpt-4o", "local/llama"]}, by_error={"content_filter": {}})
    server.script(Reply(400, FILTERED))
    with pytest.raises(modelwire.ContentFilterError):
        await client.acomplete("something nasty", model="azure/gpt4o-deploy")
    assert server.calls() == 1


async def test_t05_quota_falls_back_once_without_retry_storm(make_client: Any, server: FakeServer) -> None:
    client = make_client(middleware=["fallback", "retry"], retry={"max_attempts": 4},
                         fallback={"chains": {"openai/gpt-4o": ["azure/gpt4o-deploy"]}})
    quota = Reply.error(429, "You exceeded your current quota, please check your plan and billing details.",
                        type="insufficient_quota", code="insufficient_quota")
    server.script(quota, quota, quota, quota)
    with pytest.raises(modelwire.QuotaExceededError) as info:
        await client.acomplete("hi", model="openai/gpt-4o")
    assert server.calls() == 2  # one call per target, no retries
    assert len(info.value.tried) == 2


async def test_r11_max_depth(fb_client: Any, server: FakeServer) -> None:
    targets = [f"local/m{i}" for i in range(8)]
    client = fb_client(max_depth=3, chains={"openai/gpt-4o": targets})
    server.script(*[Reply.error(500)] * 20)
    with pytest.raises(modelwire.ServerError) as info:
        await client.acomplete("hi", model="openai/gpt-4o")
    assert server.calls() == 4  # the first target and 3 fallbacks
    assert [t for t, _ in info.value.tried] == ["openai/gpt-4o", "local/m0", "local/m1", "local/m2"]


async def test_nested_chains_breadth_first_without_loops(fb_client: Any, server: FakeServer) -> None:
    client = fb_client(chains={"openai/a": ["openai/b", "openai/c"], "openai/b": ["openai/a", "openai/d"]})
    server.script(*[Reply.error(500)] * 3, match="")
    server.script(Reply.completion("d answered"), match="d")
    response = await client.acomplete("hi", model="openai/a")
    assert response.text == "d answered" and chat_models(server) == ["a", "b", "c", "d"]


async def test_client_errors_do_not_fall_back_by_default(fb_client: Any, server: FakeServer) -> None:
    client = fb_client(chains={"openai/gpt-4o": ["local/llama"]})
    server.script(Reply.error(400, "Invalid 'temperature'", type="invalid_request_error"))
    with pytest.raises(modelwire.BadRequestError):
        await client.acomplete("hi", model="openai/gpt-4o")
    assert server.calls() == 1
    with pytest.raises(modelwire.RequestValidationError):
        await client.acomplete([], model="openai/gpt-4o")
    assert server.calls() == 1


async def test_auth_failure_falls_back_and_missing_key_target_is_skipped(
    make_client: Any, server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_ENV", raising=False)
    client = make_client(
        middleware=["fallback"],
        providers={
            "openai": {"api_base": server.openai_url},
            "azure": {"api_base": server.url, "api_version": "2024-10-21", "api_key_env": "NO_SUCH_KEY_ENV"},
            "local": {"kind": "openai_compatible", "api_base": server.openai_url},
        },
        fallback={"chains": {"openai/gpt-4o": ["azure/dep", "local/llama"]}},
    )
    server.script(Reply.error(401, "Incorrect API key provided", code="invalid_api_key"))
    response = await client.acomplete("hi", model="openai/gpt-4o")
    assert response.provider == "local"
    assert chat_models(server) == ["gpt-4o", "llama"]  # azure was never called: its key is missing


async def test_stream_falls_back_only_before_first_chunk(fb_client: Any, server: FakeServer) -> None:
    client = fb_client(chains={"openai/gpt-4o": ["local/llama"]})
    server.script(Reply.error(503), match="gpt-4o")
    server.script(Reply.stream(["from", " local"]), match="llama")
    stream = client.astream("hi", model="openai/gpt-4o")
    assert "".join([c.text async for c in stream]) == "from local"
    assert chat_models(server) == ["gpt-4o", "llama"]
    final = stream.get_final_completion()
    assert (final.provider, final.model) == ("local", "llama")  # who really answered
    server.reset()
    server.script(Reply.stream(["partial"], finish_reason=None, usage=False, ending="abort"), match="gpt-4o")
    received = []
    with pytest.raises(modelwire.ProviderError):
        async for chunk in client.astream("hi", model="openai/gpt-4o"):
            received.append(chunk.text)
    assert received == ["partial"] and chat_models(server) == ["gpt-4o"]  # no switch after content


def test_error_kinds() -> None:
    assert error_kind(modelwire.ContextWindowExceededError("x")) == "context_window"
    assert error_kind(modelwire.QuotaExceededError("x")) == "quota"
    assert error_kind(modelwire.RateLimitExceeded("x")) == "rate_limit"
    assert error_kind(modelwire.CircuitOpenError("x")) == "unavailable"
    assert error_kind(modelwire.RequestValidationError("x")) is None


@pytest.mark.parametrize(
    ("section", "needle"),
    [
        ({"chains": {"openai/gpt-4o": ["nowhere/model"]}}, "fallback.chains"),
        ({"chains": {"openai/gpt-4o": ["no-slash"]}}, "provider/model"),
        ({"chains": {"openai/gpt-4o": ["local/*"]}}, "wildcard"),
        ({"by_error": {"context_window": {"openai/gpt-4o": ["ghost/x"]}}}, "fallback.by_error.context_window"),
        ({"by_error": {"typo_kind": {}}}, "fallback.by_error"),
        ({"on": ["sometimes"]}, "fallback.on"),
        ({"max_depth": -1}, "fallback.max_depth"),
        ({"max_depth": "3"}, "fallback.max_depth"),
        ({"chain": {}}, "fallback.chain"),
    ],
)
def test_b04_fallback_config_errors(make_client: Any, server: FakeServer, section: dict[str, Any],
                                    needle: str) -> None:
    with pytest.raises(modelwire.ConfigurationError, match=needle.replace(".", r"\.").replace("*", r"\*")):
        make_client(middleware=["fallback"], fallback=section)
    assert server.calls() == 0


def test_describe(fb_client: Any) -> None:
    client = fb_client(chains={"openai/gpt-4o": ["local/llama"]})
    mw = next(m for m in client.middleware if isinstance(m, FallbackMiddleware))
    assert mw.describe()["chains"] == {"openai/gpt-4o": ["local/llama"]}
