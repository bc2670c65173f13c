"""client.embed / aembed: vectors in input order for each provider kind, batches, concurrency,
the middleware contract for embeddings, retry/fallback, the limiter's charge and bad input.
Everything talks real HTTP to the loopback server (its /v1/embeddings answers fake_vector(text))."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import modelwire
from modelwire import Embeddings, Middleware, Request, hookimpl
from modelwire.errors import (
    CircuitOpenError,
    InvalidResponseError,
    ModelwireError,
    RateLimitExceeded,
    RequestValidationError,
)
from modelwire.middleware import CallNext
from modelwire.testing import FakeServer, Reply, capture_events
from modelwire.testing.server import fake_vector
from modelwire.types import Completion

MakeClient = Callable[..., modelwire.Client]


def sent_inputs(server: FakeServer) -> list[list[str]]:
    """The texts of each embeddings request the server received, in arrival order."""
    return [r.json["input"] for r in server.requests if r.route == "embeddings"]


# -- each provider kind -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "path"),
    [
        ("openai/text-embedding-3-small", "/v1/embeddings"),
        ("azure/emb-deployment", "/openai/deployments/emb-deployment/embeddings"),
        ("local/nomic-embed-text", "/v1/embeddings"),
    ],
)
def test_vectors_in_input_order_for_each_provider_kind(
    make_client: MakeClient, server: FakeServer, modelwire_api_key: str, model: str, path: str
) -> None:
    texts = [f"document {i}: {'word ' * (i % 5)}" for i in range(12)]
    client = make_client()
    result = client.embed(texts, model=model)
    assert isinstance(result, Embeddings)
    assert result.vectors == [fake_vector(t) for t in texts]
    assert result.from_cache == [False] * 12 and result.cached is False
    assert result.provider == model.split("/")[0] and result.model == model.split("/")[1]
    assert result.usage is not None and result.usage.prompt_tokens == sum(max(1, len(t.split())) for t in texts)
    assert result.usage.completion_tokens == 0
    (req,) = [r for r in server.requests if r.route == "embeddings"]
    assert req.path == path
    assert req.json["input"] == texts
    if model.startswith("azure/"):
        assert req.query == {"api-version": "2024-10-21"}
        assert req.headers["api-key"] == modelwire_api_key
    elif model.startswith("openai/"):
        assert req.headers["authorization"] == f"Bearer {modelwire_api_key}"
        assert req.json["model"] == "text-embedding-3-small"
    client.close()


def test_aembed_and_module_level_embed(
    make_client: MakeClient, server: FakeServer, modelwire_config: dict[str, Any], tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = make_client()

    async def main() -> Embeddings:
        try:
            return await client.aembed(["b", "a"], model="local/text-embedding-3-small", dimensions=4)
        finally:
            await client.aclose()

    result = asyncio.run(main())
    assert result.vectors == [fake_vector("b", 4), fake_vector("a", 4)]
    assert server.requests[-1].json["dimensions"] == 4

    config = tmp_path / "modelwire.toml"
    config.write_text(f'[providers.local]\nkind = "openai_compatible"\napi_base = "{server.openai_url}"\n')
    monkeypatch.setenv("MODELWIRE_CONFIG", str(config))
    monkeypatch.setattr(modelwire, "_default", None)  # a default client built from this config
    assert modelwire.embed(["x", "y"], model="local/m") == [fake_vector("x"), fake_vector("y")]
    modelwire.default_client().close()


def test_answers_out_of_order_are_put_back_by_index(make_client: MakeClient, server: FakeServer) -> None:
    reply = Reply.embeddings(["a", "b", "c"])
    reply.body["data"].reverse()  # some servers answer in completion order, each item with its index
    server.script(reply, match="/embeddings")
    client = make_client()
    assert client.embed(["a", "b", "c"], model="local/e").vectors == [fake_vector(t) for t in "abc"]
    client.close()


def test_a_short_answer_is_an_invalid_response(make_client: MakeClient, server: FakeServer) -> None:
    server.script(Reply.embeddings(["a"]), match="/embeddings")
    client = make_client()
    with pytest.raises(InvalidResponseError, match="1 embeddings for 2 texts"):
        client.embed(["a", "b"], model="local/e")
    client.close()


# -- batches and concurrency ------------------------------------------------------------------


def test_default_batch_sizes_per_kind(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client()
    openai_texts = [f"o{i}" for i in range(300)]
    local_texts = [f"l{i}" for i in range(130)]
    assert client.embed(openai_texts, model="openai/e").vectors == [fake_vector(t) for t in openai_texts]
    assert sorted(len(batch) for batch in sent_inputs(server)) == [44, 256]  # batches go out concurrently
    server.reset()
    assert client.embed(local_texts, model="local/e").vectors == [fake_vector(t) for t in local_texts]
    assert sorted(len(batch) for batch in sent_inputs(server)) == [2, 64, 64]
    client.close()


def test_large_batch_is_split_and_sent_with_bounded_concurrency(
    make_client: MakeClient, server: FakeServer, modelwire_config: dict[str, Any]
) -> None:
    providers = dict(modelwire_config["providers"])
    providers["local"] = {**providers["local"], "embed_batch_size": 10, "embed_concurrency": 3}
    client = make_client(providers=providers)
    server.embed_delay = 0.5  # each answer waits: batches overlap at the server when sent together
    texts = [f"t{i}" for i in range(95)]
    result = client.embed(texts, model="local/e")
    assert result.vectors == [fake_vector(t) for t in texts]
    batches = sent_inputs(server)
    assert len(batches) == 10 and all(1 <= len(b) <= 10 for b in batches)
    assert sorted(t for b in batches for t in b) == sorted(texts)  # each text sent exactly once
    assert all(b == texts[texts.index(b[0]) : texts.index(b[0]) + len(b)] for b in batches)  # contiguous
    # never more than embed_concurrency at once; more than one, else nothing ran concurrently
    assert 2 <= server.max_in_flight <= 3
    client.close()


def test_a_failed_batch_fails_the_call(make_client: MakeClient, server: FakeServer,
                                       modelwire_config: dict[str, Any]) -> None:
    providers = dict(modelwire_config["providers"])
    providers["local"] = {**providers["local"], "embed_batch_size": 2, "embed_concurrency": 1}
    client = make_client(providers=providers)
    server.script(Reply.embeddings(["a", "b"]), Reply.error(401, "bad key", type="invalid_request_error"),
                  match="/embeddings")
    with pytest.raises(ModelwireError) as info:
        client.embed(["a", "b", "c", "d", "e", "f"], model="local/e")
    assert info.value.status == 401
    assert len(sent_inputs(server)) == 2  # the third batch was never sent
    client.close()


# -- retry, fallback ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["openai/e", "azure/e", "local/e"])
def test_one_upstream_call_per_attempt_without_retry_middleware(
    make_client: MakeClient, server: FakeServer, model: str
) -> None:
    # litellm's openai route turns max_retries=0 into 2 for embeddings; the SDK client must not retry
    client = make_client()
    server.script(Reply.error(503, "overloaded"), Reply.error(503, "overloaded"), match="/embeddings")
    with pytest.raises(ModelwireError) as info:
        client.embed(["x"], model=model)
    assert info.value.status == 503
    assert server.calls("embeddings") == 1
    assert client.complete("hi", model=model).text == "echo: hi"  # chat unaffected afterwards
    client.close()


def test_no_api_key_in_errors_or_logs(make_client: MakeClient, server: FakeServer, modelwire_api_key: str) -> None:
    client = make_client()
    server.script(Reply.error(401, f"Incorrect API key provided: {modelwire_api_key}", type="invalid_request_error"),
                  match="/embeddings")
    with capture_events() as logs, pytest.raises(ModelwireError) as info:
        client.embed(["x"], model="azure/e")
    error = info.value
    assert error.status == 401 and error.__cause__ is None and error.__context__ is None
    assert modelwire_api_key not in f"{error} {error!r} {vars(error)}"
    assert modelwire_api_key not in repr(logs)
    client.close()


def test_retry_on_500_then_success(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["retry"], retry={"base_delay": 0.01, "max_delay": 0.05})
    server.script(Reply.error(500), match="/embeddings")
    result = client.embed(["one", "two"], model="openai/e")
    assert result.vectors == [fake_vector("one"), fake_vector("two")]
    assert sent_inputs(server) == [["one", "two"], ["one", "two"]]
    client.close()


def test_400_is_not_retried(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["retry"], retry={"base_delay": 0.01, "max_delay": 0.05})
    server.script(Reply.error(400, "bad input", type="invalid_request_error"), match="/embeddings")
    with pytest.raises(ModelwireError) as info:
        client.embed(["one"], model="openai/e")
    assert info.value.status == 400 and info.value.provider == "openai"
    assert server.calls("embeddings") == 1
    client.close()


def test_fallback_to_another_target(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["fallback"], fallback={"chains": {"openai/e": ["local/e2"]}})
    server.script(Reply.error(503, "overloaded"), match="/embeddings")
    result = client.embed(["x"], model="openai/e")
    assert result.vectors == [fake_vector("x")] and result.provider == "local"
    assert [r.json["model"] for r in server.requests if r.route == "embeddings"] == ["e", "e2"]
    client.close()


def test_circuit_opens_on_embedding_failures(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["circuit"], circuit={"failure_threshold": 2})
    server.script(*[Reply.error(500)] * 2, match="/embeddings")
    for _ in range(2):
        with pytest.raises(ModelwireError):
            client.embed(["x"], model="openai/e")
    with pytest.raises(CircuitOpenError):
        client.embed(["x"], model="openai/e")
    assert server.calls("embeddings") == 2  # refused before the network
    client.close()


# -- the limiter --------------------------------------------------------------------------------


def test_tpm_charged_by_input_tokens_and_one_permit_per_upstream_call(
    make_client: MakeClient, server: FakeServer, modelwire_config: dict[str, Any]
) -> None:
    providers = dict(modelwire_config["providers"])
    providers["local"] = {**providers["local"], "embed_batch_size": 100}
    # default_max_tokens = 1024 would not fit in tpm = 500: an embeddings request reserves no output
    client = make_client(providers=providers, middleware=["ratelimit"],
                         ratelimit={"limits": [{"match": "local/*", "tpm": 500}]})
    limiter = client.middleware[0]
    text = "word " * 30  # the server charges 30 tokens (one per word); the estimate is 38 (chars / 4)
    result = client.embed([text] * 10, model="local/e")  # 300 tokens, in one request
    assert result.usage is not None and result.usage.prompt_tokens == 300
    assert limiter.engine.stats.admitted == 1
    with pytest.raises(RateLimitExceeded):  # 300 used + 380 estimated > 500: no waiting allowed
        client.embed([text] * 10, model="local/e", options={"ratelimit": {"max_wait": 0}})
    client.embed(["tiny"], model="local/e", options={"ratelimit": {"max_wait": 0}})  # 300 + 1 fits
    assert server.calls("embeddings") == 2
    assert limiter.engine.stats.admitted == 2 and limiter.engine.stats.rejections == 1
    client.close()


def test_one_request_permit_per_upstream_call(make_client: MakeClient, server: FakeServer,
                                              modelwire_config: dict[str, Any]) -> None:
    providers = dict(modelwire_config["providers"])
    providers["local"] = {**providers["local"], "embed_batch_size": 100}
    client = make_client(providers=providers, middleware=["cache", "ratelimit"],
                         ratelimit={"limits": [{"match": "local/*", "rpm": 6000, "tpm": 10_000_000}]})
    limiter = client.middleware[1]
    texts = [f"t{i}" for i in range(250)]
    client.embed(texts, model="local/e")
    assert server.calls("embeddings") == 3  # 100 + 100 + 50
    assert limiter.engine.stats.admitted == 3
    client.embed(texts, model="local/e")  # every text cached: no call, no permit
    assert server.calls("embeddings") == 3 and limiter.engine.stats.admitted == 3
    client.close()


# -- the middleware contract ------------------------------------------------------------------


class ChatOnly(Middleware):
    """Declares nothing about embeddings: chat only."""

    calls = 0

    async def ahandle(self, request: Request, call_next: CallNext) -> Completion:
        ChatOnly.calls += 1
        return await call_next(request)

    async def ahandle_stream(self, request: Request, call_next: Any) -> Any:
        async for chunk in call_next(request):
            yield chunk


class Shout(Middleware):
    """Declares embeddings; rewrites the texts in on_request (both operations)."""

    applies_to = ("whole", "stream", "embeddings")
    seen: list[str] = []

    async def on_request(self, request: Request) -> Request:
        Shout.seen.append(request.operation)
        if request.operation == "embeddings":
            return request.replace(params={**request.params, "input": [t.upper() for t in request.params["input"]]})
        return request


class Plugin:
    @hookimpl
    def modelwire_register_middleware(self, register: Any) -> None:
        register("chat_only", ChatOnly)
        register("shout", Shout)


def test_chat_only_middleware_is_passed_by_visibly_and_declared_ones_see_the_operation(
    make_client: MakeClient, server: FakeServer
) -> None:
    ChatOnly.calls, Shout.seen = 0, []
    client = make_client(plugins=(Plugin(),), middleware=["chat_only", "shout"])
    with capture_events() as logs:
        result = client.embed(["abc"], model="local/e")
        client.embed(["def"], model="local/e")
    assert result.vectors == [fake_vector("ABC")]
    assert sent_inputs(server) == [["ABC"], ["DEF"]]
    assert ChatOnly.calls == 0 and Shout.seen == ["embeddings", "embeddings"]
    skipped = [e for e in logs if e["event"] == "embed.middleware_skipped"]
    assert len(skipped) == 1 and skipped[0]["middleware"] == ["chat_only"]  # said once per client
    client.complete("hi", model="local/m")
    assert ChatOnly.calls == 1 and Shout.seen[-1] == "chat"
    client.close()


def test_modelwire_plugins_shows_the_operations(tmp_path: Any, server: FakeServer) -> None:
    import subprocess
    import sys

    config = tmp_path / "modelwire.toml"
    config.write_text('middleware = ["cache", "retry"]\n')
    env = {"MODELWIRE_CONFIG": str(config), "PATH": "/usr/bin:/bin", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    out = subprocess.run([sys.executable, "-m", "modelwire.cli", "plugins"], capture_output=True, text=True,
                         env=env, check=True, timeout=120).stdout
    lines = {line.split()[0]: line for line in out.splitlines() if "operations:" in line}
    assert "operations: chat, embeddings" in lines["cache"] and "operations: chat, embeddings" in lines["retry"]
    assert "operations: chat " in lines["otel"]  # declared for chat only: passed by for embeddings


def test_hooks_see_the_operation(make_client: MakeClient, server: FakeServer) -> None:
    seen: list[tuple[str, str, Any]] = []

    class Observer:
        @hookimpl
        def modelwire_request_prepare(self, request: Request) -> None:
            seen.append(("prepare", request.operation, list(request.params.get("input", []))))

        @hookimpl
        def modelwire_response_received(self, request: Request, response: Any) -> None:
            seen.append(("response", request.operation, type(response).__name__))

    providers = {"local": {"kind": "openai_compatible", "api_base": server.openai_url, "embed_batch_size": 2}}
    client = make_client(plugins=(Observer(),), providers=providers)
    with capture_events() as logs:
        client.embed(["a", "b", "c"], model="local/e")
    # one logical request: prepared and answered once, sent as two batches
    assert seen == [("prepare", "embeddings", ["a", "b", "c"]), ("response", "embeddings", "Embeddings")]
    assert sorted(sent_inputs(server)) == [["a", "b"], ["c"]]  # batches go out concurrently
    (response,) = [e for e in logs if e["event"] == "llm.response"]
    assert response["operation"] == "embeddings" and response["texts"] == 3 and response["batches"] == 2
    assert response["completion_tokens"] == 0 and response["prompt_tokens"] == 3
    assert not [e for e in logs if e["event"] == "observer_failed"]
    client.close()


# -- bad input: a typed error before any network call -----------------------------------------


@pytest.mark.parametrize(
    ("texts", "params", "message"),
    [
        ([], {}, "texts is empty"),
        (["ok", 3], {}, "texts[1] must be a str, got int"),
        (["ok", ""], {}, "texts[1] is an empty string"),
        ("just one", {}, "texts must be a list of strings, got a single str"),
        (None, {}, "texts must be a list of strings, got NoneType"),
        (["ok"], {"encoding_format": "base64"}, "encoding_format must be 'float'"),
        (["ok"], {"dimensions": 0}, "dimensions must be a positive int"),
        (["ok"], {"input": ["other"]}, "parameter 'input' is not allowed"),
        (["ok"], {"options": {"cache": {"nope": 1}}}, "options.cache"),
    ],
)
def test_bad_input_is_refused_before_the_network(
    make_client: MakeClient, server: FakeServer, texts: Any, params: dict[str, Any], message: str
) -> None:
    client = make_client(middleware=["cache", "retry", "ratelimit"])
    with pytest.raises(RequestValidationError) as info:
        client.embed(texts, model="openai/e", **params)
    assert message in str(info.value)
    with pytest.raises(RequestValidationError):
        asyncio.run(client.aembed(texts, model="openai/e", **params))
    assert server.requests == []
    client.close()


def test_provider_without_embeddings_is_refused_before_the_network(
    make_client: MakeClient, server: FakeServer
) -> None:
    class NoEmbed(modelwire.Provider):
        async def acomplete(self, request: Request) -> Completion:
            return Completion("x", "stop", request.model, self.name)

    class Kinds:
        @hookimpl
        def modelwire_register_providers(self, register: Any) -> None:
            register("noembed", NoEmbed)

    client = make_client(plugins=(Kinds(),))
    with pytest.raises(RequestValidationError, match="'noembed' .* does not support embeddings"):
        client.embed(["a"], model="noembed/m")
    assert server.requests == []
    client.close()


def test_embeddings_guide_blocks_run(tmp_path: Any) -> None:
    """docs/embeddings.md runs, through the same runner as the other guides."""
    from tests.docs.test_doc_blocks import test_guide_blocks_run as run_guide

    run_guide("embeddings.md", tmp_path)


def test_demo_step(make_client: MakeClient, server: FakeServer) -> None:
    from modelwire import demo

    client = make_client(middleware=["cache"])
    lines: list[str] = []
    demo._embeddings(client, server, lines.append)
    (line,) = lines
    assert "2 vectors of 8 floats" in line
    assert line.endswith("from_cache=[True, False, True], sent upstream: [['blue']]")
    client.close()


def test_a_provider_with_only_the_sync_embed(make_client: MakeClient, server: FakeServer) -> None:
    class SyncEmbed(modelwire.Provider):
        def embed(self, request: Request) -> Embeddings:  # a blocking SDK: run in a worker thread
            return Embeddings([[float(len(t))] for t in request.params["input"]], request.model, self.name)

    class Kinds:
        @hookimpl
        def modelwire_register_providers(self, register: Any) -> None:
            register("syncembed", SyncEmbed)

    client = make_client(plugins=(Kinds(),), middleware=["cache", "retry"])
    assert client.embed(["a", "bb", "ccc"], model="syncembed/m").vectors == [[1.0], [2.0], [3.0]]
    assert client.embed(["bb"], model="syncembed/m").cached is True
    client.close()
