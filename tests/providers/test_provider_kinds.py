"""A whole and a streamed completion through each provider kind, checked on the server side."""

from __future__ import annotations

import asyncio

import pytest

from modelwire.testing import FakeServer, Reply

from ..conftest import SENTINEL_KEY

MODELS = ["openai/gpt-4o", "azure/my-deploy", "local/llama3"]


@pytest.mark.parametrize("model", MODELS)
def test_complete_each_kind(make_client, server: FakeServer, model: str) -> None:
    client = make_client()
    response = client.complete("hello there", model=model, temperature=0.2)
    assert response.text == "echo: hello there"
    assert response.finish_reason == "stop"
    assert response.provider == model.split("/")[0]
    assert response.model == model.split("/")[1]
    assert response.usage is not None and response.usage.total_tokens > 0
    assert not response.cached
    assert server.calls() == 1
    body = server.requests[0].json
    assert body["temperature"] == 0.2
    assert body["messages"] == [{"role": "user", "content": "hello there"}]


@pytest.mark.parametrize("model", MODELS)
async def test_astream_each_kind(make_client, server: FakeServer, model: str) -> None:
    client = make_client()
    async with client.astream("one two three", model=model) as stream:
        pieces = [chunk.text async for chunk in stream]
    assert "".join(pieces) == "echo: one two three"
    final = stream.get_final_completion()
    assert final.finish_reason == "stop"
    assert final.usage is not None  # include_usage is asked for by default
    assert server.requests[0].json["stream_options"] == {"include_usage": True}


def test_sync_stream_is_incremental(make_client, server: FakeServer) -> None:
    server.script(Reply.stream(["a", "b", "c"], event_delay=0.05))
    client = make_client()
    with client.stream("x", model="local/m") as stream:
        first = next(stream)
        # the server is still sending: only part of the stream was requested yet
        assert first.text == "a"
        rest = [c.text for c in stream]
    assert "".join([first.text, *rest]) == "abc"


def test_azure_wire_format(make_client, server: FakeServer) -> None:
    make_client().complete("hi", model="azure/prod-gpt4o")
    req = server.requests[0]
    assert req.path == "/openai/deployments/prod-gpt4o/chat/completions"
    assert req.query["api-version"] == "2024-10-21"
    assert req.headers["api-key"] == SENTINEL_KEY
    assert "authorization" not in req.headers


def test_openai_wire_format(make_client, server: FakeServer) -> None:
    make_client().complete("hi", model="openai/gpt-4o")
    req = server.requests[0]
    assert req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == f"Bearer {SENTINEL_KEY}"
    assert req.json["model"] == "gpt-4o"


def test_local_server_needs_no_key(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import modelwire

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    client = modelwire.Client(
        config={"providers": {"vllm-a": {"kind": "openai_compatible", "api_base": server.openai_url}}}
    )
    assert client.complete("hi", model="vllm-a/qwen").text == "echo: hi"


def test_several_instances_of_one_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    import modelwire

    with FakeServer() as a, FakeServer() as b:
        client = modelwire.Client(
            config={
                "providers": {
                    "vllm-a": {"kind": "openai_compatible", "api_base": a.openai_url},
                    "vllm-b": {"kind": "openai_compatible", "api_base": b.openai_url},
                }
            }
        )
        client.complete("1", model="vllm-a/m")
        client.complete("2", model="vllm-b/m")
        client.complete("3", model="vllm-b/m")
        assert (a.calls(), b.calls()) == (1, 2)


async def test_sync_call_inside_running_loop(make_client, server: FakeServer) -> None:
    client = make_client()
    # a blocking call from a coroutine must not deadlock: it runs on modelwire's own loop
    assert client.complete("inside", model="local/m").text == "echo: inside"
    assert [c.text for c in client.stream("s", model="local/m") if c.text] == ["echo:", " s"]


def test_sync_calls_from_threads(make_client, server: FakeServer) -> None:
    from concurrent.futures import ThreadPoolExecutor

    client = make_client()
    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(lambda i: client.complete(f"t{i}", model="local/m").text, range(16)))
    assert texts == [f"echo: t{i}" for i in range(16)]
    assert server.calls() == 16


async def test_async_concurrency(make_client, server: FakeServer) -> None:
    client = make_client()
    results = await asyncio.gather(*(client.acomplete(f"c{i}", model="local/m") for i in range(20)))
    assert [r.text for r in results] == [f"echo: c{i}" for i in range(20)]


def test_messages_list_and_tool_params_reach_the_server(make_client, server: FakeServer) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    tools = [{"type": "function", "function": {"name": "w", "parameters": {"type": "object", "properties": {}}}}]
    make_client().complete(messages, model="openai/gpt-4o", tools=tools, seed=7)
    body = server.requests[0].json
    assert body["messages"][3]["tool_call_id"] == "call_1"
    assert body["tools"][0]["function"]["name"] == "w"
    assert body["seed"] == 7


def test_module_level_functions(server: FakeServer, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import modelwire

    config = tmp_path / "modelwire.toml"
    config.write_text(
        'default_model = "local/llama3"\n'
        f'[providers.local]\nkind = "openai_compatible"\napi_base = "{server.openai_url}"\n'
    )
    monkeypatch.setenv("MODELWIRE_CONFIG", str(config))
    monkeypatch.setattr(modelwire, "_default", None)
    assert modelwire.complete("module level") == "echo: module level"
    assert list(modelwire.stream_complete("a b")) == ["echo:", " a", " b"]
    assert modelwire.default_client().config.source == str(config)


def test_check_reports_plainly(make_client, server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import modelwire
    from modelwire.testing import free_port

    client = make_client()
    for name in ("openai", "azure", "local"):
        result = client.check(name)
        assert result.ok, result.message
        assert "test-model" in (result.models or [])
    server.api_key = "sk-the-right-key-000000"
    bad = client.check("openai")
    assert not bad.ok and "rejected" in bad.message and SENTINEL_KEY not in bad.message
    dead = modelwire.Client(
        config={"providers": {"x": {"kind": "openai_compatible", "api_base": f"http://127.0.0.1:{free_port()}/v1"}}}
    )
    assert "cannot reach" in dead.check("x").message
    server.api_key = None
    server.api_versions = {"2024-10-21"}
    wrong_version = modelwire.Client(
        config={"providers": {"azure": {"api_base": server.url, "api_version": "1999-01-01"}}}
    )
    message = wrong_version.check("azure").message
    assert "404" in message and "api_version" in message
    assert (
        "needs an API key" in make_client(providers={"openai": {"api_key_env": "UNSET_VAR_X"}}).check("openai").message
    )
