"""The direct route (issue 14): its setting, what it sends, and that it needs no litellm.

The rest of tests/providers runs against both transports (tests/providers/conftest.py); these
tests compare the two routes side by side or check what only the direct route promises.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import modelwire
from modelwire.testing import FakeServer, Reply

TOOLS = [{"type": "function", "function": {"name": "w", "parameters": {"type": "object", "properties": {}}}}]


@pytest.mark.parametrize(
    ("section", "says"),
    [
        ({"kind": "openai_compatible", "transport": "fast"}, "'providers.p.transport'"),
        ({"kind": "openai_compatible", "transport": 1}, "'providers.p.transport'"),
        ({"kind": "mine", "transport": "direct"}, "'providers.p.transport': 'direct' is not available for kind 'mine'"),
    ],
)
def test_bad_transport_is_a_config_error_at_build_time(server: FakeServer, section: dict[str, Any], says: str) -> None:
    from modelwire.providers.litellm_base import LiteLLMProvider

    class Mine(LiteLLMProvider):  # a litellm-based third-party kind: no direct route
        pass

    class Plugin:
        @modelwire.hookimpl
        def modelwire_register_providers(self, register: Callable[[str, type[Any]], None]) -> None:
            register("mine", Mine)

    with pytest.raises(modelwire.ConfigurationError) as info:
        modelwire.Client(config={"providers": {"p": {**section, "api_base": server.openai_url}}}, plugins=(Plugin(),))
    assert says in str(info.value)
    assert server.calls() == 0


@pytest.mark.parametrize("transport", ["litellm"])  # both routes inside: one run
def test_same_request_on_the_wire(make_client: Callable[..., modelwire.Client], server: FakeServer) -> None:
    """Both routes send the same body for the same call (params passthrough, stream_options,
    tools, response_format, extra_body), per kind, whole and streamed."""
    from pydantic import BaseModel

    class Answer(BaseModel):
        city: str

    bodies: dict[str, list[Any]] = {}
    for transport in ("litellm", "direct"):
        client = make_client(providers={
            "openai": {"api_base": server.openai_url, "transport": transport, "params": {"top_p": 0.5}},
            "azure": {"api_base": server.url, "api_version": "2024-10-21", "transport": transport},
            "local": {"kind": "openai_compatible", "api_base": server.openai_url, "transport": transport},
        })
        start = len(server.requests)
        for model in ("openai/gpt-4o", "azure/dep", "local/llama"):
            server.script(Reply.completion('{"city": "Paris"}'))
            client.complete("hi", model=model, temperature=0.2, tools=TOOLS, tool_choice="auto", seed=7, max_tokens=5,
                            stop=["x"], logit_bias={"1": 2}, extra_body={"top_k": 3}, response_format=Answer)
            list(client.stream("hi", model=model, temperature=0.2, stream_options={"include_usage": False}))
            list(client.stream("hi", model=model, n=1))
            client.embed(["a", "b"], model=model)
        bodies[transport] = [(r.path, r.query, r.json) for r in server.requests[start:]]
        client.close()
    for sent_litellm, sent_direct in zip(bodies["litellm"], bodies["direct"], strict=True):
        if sent_litellm[0].endswith("embeddings"):
            sent_litellm[2].pop("encoding_format", None)  # litellm asks Azure for base64 and decodes it
        assert sent_litellm == sent_direct


@pytest.mark.parametrize("transport", ["litellm"])  # both routes inside: one run
def test_cache_entries_are_shared_across_transports(
    make_client: Callable[..., modelwire.Client], server: FakeServer, tmp_path: Path
) -> None:
    """Same request, same cache key: a direct client hits what a litellm client stored."""
    cache = {"backend": "file", "path": str(tmp_path / "cache")}
    answers = []
    for transport in ("litellm", "direct"):
        client = make_client(middleware=["cache"], cache=cache, providers={
            "local": {"kind": "openai_compatible", "api_base": server.openai_url, "transport": transport}})
        answers.append(client.complete("same", model="local/m", temperature=0))
        client.close()
    assert server.calls() == 1
    assert [a.cached for a in answers] == [False, True] and answers[1].text == "echo: same"


class Observe:
    """Sets ``on_send`` as the rate limiter does and records what the provider reported."""

    name = "observe"

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.sent_at: list[int] = []
        self.headers: list[Any] = []

    @modelwire.hookimpl
    def modelwire_register_middleware(self, register: Callable[[str, type[Any]], None]) -> None:
        outer = self

        class Middleware(modelwire.Middleware):
            async def ahandle(self, request: modelwire.Request, call_next: Any) -> modelwire.Completion:
                request.state["on_send"] = lambda: outer.sent_at.append(outer.server.calls())
                return await call_next(request)

            async def ahandle_stream(self, request: modelwire.Request, call_next: Any) -> AsyncIterator[Any]:
                request.state["on_send"] = lambda: outer.sent_at.append(outer.server.calls())
                async for chunk in call_next(request):
                    yield chunk
                outer.headers.append(request.state.get("response_headers"))

        register("observe", Middleware)


async def test_on_send_and_stream_headers(
    make_client: Callable[..., modelwire.Client], server: FakeServer, transport: str
) -> None:
    observe = Observe(server)
    client = make_client(plugins=(observe,), middleware=["observe"])
    await client.acomplete("one", model="openai/gpt-4o")
    async for _ in client.astream("two", model="azure/dep"):
        pass
    # called before the server saw each request (litellm calls logger_fn again after a stream)
    assert sorted(set(observe.sent_at)) == [0, 1] and observe.sent_at[0] == 0
    if transport == "direct":
        assert observe.sent_at == [0, 1]
    assert len(observe.headers) == 1 and observe.headers[0]["x-request-id"] == "req-2"


def test_a_direct_only_process_never_imports_litellm(server: FakeServer, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import json, os, sys
        os.environ["OPENAI_API_KEY"] = os.environ["AZURE_OPENAI_API_KEY"] = "sk-test"
        import modelwire
        providers = {{
            "openai": {{"api_base": "{server.openai_url}", "transport": "direct"}},
            "azure": {{"api_base": "{server.url}", "api_version": "2024-10-21", "transport": "direct"}},
            "local": {{"kind": "openai_compatible", "api_base": "{server.openai_url}", "transport": "direct"}},
        }}
        client = modelwire.Client(config={{"providers": providers, "preload": True}})  # default middleware
        client.warmup()
        texts = [client.complete("hi", model=m).text for m in ("openai/a", "azure/b", "local/c")]
        texts.append("".join(c.text for c in client.stream("s", model="local/c")))
        vectors = client.embed(["x"], model="openai/e").vectors
        client.close()
        print(json.dumps({{"texts": texts, "n": len(vectors), "loaded": sorted(
            m for m in ("litellm", "openai") if m in sys.modules)}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["texts"] == ["echo: hi"] * 3 + ["echo: s"] and result["n"] == 1
    assert result["loaded"] == []
