"""The lean hit path (issue 14): the cache key stays byte-identical across the rewrite (entries
stored by an older modelwire keep hitting), a hit hands out values the caller may mutate freely,
and hooks nobody else implements are skipped without changing what a plugin that does sees."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import pytest

import modelwire
from modelwire.plugins.cache import cache_of
from modelwire.plugins.cache.keys import _normal, canonical, default_key
from modelwire.testing import FakeServer, Reply
from modelwire.types import Request

MakeClient = Callable[..., modelwire.Client]

KEY = "sk-SENTINEL-0123456789abcdefghij"
MESSAGES = [{"role": "system", "content": "Be brief, é ✓."}, {"role": "user", "content": "What is 2+2?"}]
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}}}}}]

# Keys as modelwire computed them before the hit path was reworked (commit b08215b): pinned so
# that no optimisation of the request encoding silently turns every stored entry into a miss.
GOLDEN: list[tuple[str, dict[str, Any], str]] = [
    ("openai/gpt-4o", {"temperature": 0, "max_tokens": 16},
     "openai-3341b60c2080a898:v1:d2dd3340c87eb7c84e2c852425279fa018b9fdfc21998e6dce013e72f17b9d34"),
    ("openai/gpt-4o", {"temperature": 1.0, "top_p": 0.5, "seed": 7, "stop": ["\n"], "tools": TOOLS,
                       "tool_choice": "auto", "logit_bias": {50256: -100}, "timeout": 30,
                       "extra_body": {"num_ctx": 2048}},
     "openai-3341b60c2080a898:v1:dbb5dfba84e5b42505dc68e790bb3ce4be44eed4b12000e9e2964bf830eccc50"),
    ("local/llama3", {}, "local:v1:53485a22d31fd9b3f8213f1fb3f2755c8f5d3af2643ce4dd3e39e5fb88f391b0"),
]


@pytest.fixture
def offline_client(monkeypatch: pytest.MonkeyPatch) -> modelwire.Client:
    """A cached client whose providers point at a fixed address (part of the key); nothing is sent."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    return modelwire.Client(config={"middleware": ["cache"], "providers": {
        "openai": {"api_base": "http://127.0.0.1:9/v1", "api_key_env": "OPENAI_API_KEY"},
        "local": {"kind": "openai_compatible", "api_base": "http://127.0.0.1:9/v1"},
    }})


@pytest.mark.parametrize(("model", "params", "expected"), GOLDEN, ids=["plain", "every-param", "keyless-local"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_golden_cache_key_is_unchanged(offline_client: modelwire.Client, model: str, params: dict[str, Any],
                                       expected: str, stream: bool) -> None:
    request = offline_client.request(MESSAGES, model=model, stream=stream, **params)
    assert cache_of(offline_client).key_for(request) == expected


def test_golden_default_key_without_provider() -> None:
    request = Request("openai", "m", [{"role": "user", "content": "x"}], {"temperature": 0.5})
    assert default_key(request, None, "ns") == "v1:9d1fbbe45cae7886972443f4d13959d1b22fd47bcbfcfcb870ea3b378428bc2a"


def _reference_canonical(value: Any) -> str:
    """canonical() as it was before its fast path: always through _normal."""
    return json.dumps(_normal(value, ""), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    leaves: list[Any] = [
        rng.choice([0.0, -0.0, 1.0, 2.5, 1e300, 2.0**53, 2.0**53 + 2, 1e16, -7.0, 0.1, float("inf")]),
        rng.randint(-5, 5), rng.choice(["a", "1.0]", "x.0", "é ✓", "", "v1.0,"]), None, rng.random() < 0.5,
    ]
    if depth >= 3 or rng.random() < 0.3:
        return rng.choice(leaves)
    if rng.random() < 0.5:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys: list[Any] = ["a", "b", "content", "1", "Z"] if rng.random() < 0.8 else [1, 2, "a", 3.5, None]
    return {rng.choice(keys): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def test_canonical_fast_path_writes_what_the_full_walk_writes() -> None:
    rng = random.Random(14)
    for _ in range(3000):
        value = _random_value(rng)
        try:
            expected = _reference_canonical(value)
        except modelwire.RequestValidationError:  # None and "null" as keys of one dict: ambiguous
            with pytest.raises(modelwire.RequestValidationError):
                canonical(value)
            continue
        assert canonical(value) == expected, value


# -- hits share nothing mutable with the stored entry (decoded once in the memory backend) ----------

CALL = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}


async def test_memory_hit_decodes_once_and_hands_out_copies(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["cache"])
    server.script(Reply.completion("four", tool_calls=[CALL]))
    first = await client.acomplete(MESSAGES, model="openai/gpt-4o")
    hits = [await client.acomplete(MESSAGES, model="openai/gpt-4o") for _ in range(2)]
    assert not first.cached and all(h.cached for h in hits) and server.calls() == 1
    stored = list(cache_of(client).store.backend.data.values())  # type: ignore[attr-defined]
    assert len(stored) == 1 and isinstance(stored[0], bytes) and json.loads(stored[0])["text"] == "four"
    assert stored[0].entry is not None  # decoded by the first hit, reused by the next ones
    a, b = hits
    assert a.raw == b.raw and a.raw is not b.raw and a.raw["choices"][0] is not b.raw["choices"][0]
    assert a.usage == b.usage and a.usage is not b.usage
    assert a.tool_calls == b.tool_calls and a.tool_calls[0] is not b.tool_calls[0]
    a.text = "tampered"
    a.raw["choices"][0]["message"]["content"] = "tampered"
    a.raw["usage"]["total_tokens"] = -1
    a.tool_calls[0].arguments = "{}"
    a.tool_calls.append(a.tool_calls[0])
    assert a.usage is not None
    a.usage.prompt_tokens = -1
    again = await client.acomplete(MESSAGES, model="openai/gpt-4o")
    assert again.text == "four" and again.raw["choices"][0]["message"]["content"] == "four"
    assert again.raw["usage"]["total_tokens"] > 0 and again.usage is not None and again.usage.prompt_tokens > 0
    assert [(c.name, c.arguments) for c in again.tool_calls] == [("add", '{"a": 1}')]
    assert server.calls() == 1


async def test_memory_stream_hit_hands_out_fresh_chunks_and_metadata(make_client: MakeClient,
                                                                     server: FakeServer) -> None:
    client = make_client(middleware=["cache"])
    reply = Reply.stream(["fo", "ur"], tool_calls=[CALL])
    assert reply.events is not None
    reply.events.insert(1, {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
                            "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {
                                "hate": {"filtered": False, "severity": "safe"}}}]})
    server.script(reply)
    live = [c async for c in client.astream(MESSAGES, model="azure/gpt-4o")]
    replay = [c async for c in client.astream(MESSAGES, model="azure/gpt-4o")]
    assert server.calls() == 1 and all(c.cached for c in replay)
    filtered = [c for c in replay if "prompt_filter_results" in c.metadata]
    assert len(filtered) == 1 and len(live) == len(replay)
    filtered[0].metadata["prompt_filter_results"][0]["content_filter_results"]["hate"]["filtered"] = True
    deltas = [d for c in replay for d in c.tool_calls]
    deltas[0].name = "tampered"
    again = [c async for c in client.astream(MESSAGES, model="azure/gpt-4o")]
    meta = next(c.metadata for c in again if "prompt_filter_results" in c.metadata)
    assert meta["prompt_filter_results"][0]["content_filter_results"]["hate"]["filtered"] is False
    assert [d.name for c in again for d in c.tool_calls if d.name] == ["add"]
    assert "".join(c.text for c in again) == "four" and server.calls() == 1
