"""Cache keys, tenant isolation, value safety and per-call controls (matrix C01, C03, C04, C09,
C18, C19), counted on the loopback server."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

import modelwire
from modelwire.plugins.cache import CacheMiddleware, cache_of
from modelwire.plugins.cache.keys import canonical, default_key
from modelwire.testing import FakeServer, capture_events
from modelwire.types import Request

MakeClient = Callable[..., modelwire.Client]

MESSAGES = [{"role": "user", "content": "What is 2+2?"}]
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}]


def cached_client(make_client: MakeClient, **cache: Any) -> modelwire.Client:
    return make_client(middleware=["cache"], cache=cache)


# -- C01: every parameter that can change the answer is in the key -------------------------------

VARIATIONS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("model", {"model": "openai/gpt-4o"}, {"model": "openai/gpt-4o-mini"}),
    ("temperature", {"temperature": 0.0}, {"temperature": 0.7}),
    ("top_p", {"top_p": 1.0}, {"top_p": 0.5}),
    ("max_tokens", {"max_tokens": 10}, {"max_tokens": 11}),
    ("seed", {"seed": 1}, {"seed": 2}),
    ("stop", {"stop": ["\n"]}, {"stop": ["."]}),
    ("n", {"n": 1}, {"n": 2}),
    ("tools", {"tools": TOOLS}, {"tools": [{**TOOLS[0], "function": {**TOOLS[0]["function"], "name": "sub"}}]}),
    ("tool_choice", {"tools": TOOLS, "tool_choice": "auto"}, {"tools": TOOLS, "tool_choice": "none"}),
    ("response_format", {"response_format": {"type": "text"}}, {"response_format": {"type": "json_object"}}),
    ("logit_bias", {"logit_bias": {"50256": -100}}, {"logit_bias": {"50256": 100}}),
    ("provider extra", {"extra_body": {"num_ctx": 2048}}, {"extra_body": {"num_ctx": 4096}}),
]


@pytest.mark.parametrize(("name", "first", "second"), VARIATIONS, ids=[v[0] for v in VARIATIONS])
async def test_c01_each_variation_misses_identical_hits(
    make_client: MakeClient, server: FakeServer, name: str, first: dict[str, Any], second: dict[str, Any]
) -> None:
    client = cached_client(make_client)
    a = {"model": "openai/gpt-4o", **first}
    b = {"model": "openai/gpt-4o", **second}
    await client.acomplete(MESSAGES, **a)
    await client.acomplete(MESSAGES, **b)
    assert server.calls() == 2, f"changing {name} must be a miss"
    again = await client.acomplete(MESSAGES, **a)
    assert again.cached and server.calls() == 2, "the identical request must be a hit"


async def test_c01_deployment_api_base_and_api_version(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(
        middleware=["cache"],
        providers={
            "azure": {"api_base": server.url, "api_version": "2024-10-21"},
            "azure2": {"kind": "azure", "api_base": server.url, "api_version": "2024-06-01"},
            "openai": {"api_base": server.openai_url},
            "openai2": {"kind": "openai", "api_base": server.openai_url + "/"},
        },
    )
    await client.acomplete(MESSAGES, model="azure/dep-a")
    await client.acomplete(MESSAGES, model="azure/dep-b")  # another deployment
    await client.acomplete(MESSAGES, model="azure2/dep-a")  # another api_version
    await client.acomplete(MESSAGES, model="openai/gpt-4o")
    await client.acomplete(MESSAGES, model="openai2/gpt-4o")  # another api_base (and instance)
    assert server.calls() == 5
    assert (await client.acomplete(MESSAGES, model="azure/dep-a")).cached
    assert server.calls() == 5


async def test_c01_message_fields_tool_call_id_and_name_are_in_the_key(make_client: MakeClient,
                                                                       server: FakeServer) -> None:
    client = cached_client(make_client)
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{}"}}]}
    base = [MESSAGES[0], call, {"role": "tool", "tool_call_id": "call_1", "content": "4"}]
    other_call = {**call, "tool_calls": [{**call["tool_calls"][0], "id": "call_2"}]}  # a result must answer a call
    other_id = [MESSAGES[0], other_call, {"role": "tool", "tool_call_id": "call_2", "content": "4"}]
    named = [{**MESSAGES[0], "name": "alice"}]
    for messages in (base, other_id, MESSAGES, named):
        await client.acomplete(messages, model="openai/gpt-4o", tools=TOOLS)
    assert server.calls() == 4


async def test_c01_parameters_that_cannot_change_the_answer_share_the_entry(
    make_client: MakeClient, server: FakeServer
) -> None:
    client = cached_client(make_client)
    await client.acomplete(MESSAGES, model="openai/gpt-4o", temperature=0)
    hit = await client.acomplete(MESSAGES, model="openai/gpt-4o", temperature=0, timeout=30, user="u-42",
                                 metadata={"trace": "x"})
    assert hit.cached and server.calls() == 1


# -- C03: no collisions from argument joining ------------------------------------------------------


def test_c03_canonical_json_does_not_collide() -> None:
    def key(content: Any, **params: Any) -> str:
        return default_key(Request("openai", "m", [{"role": "user", "content": content}], params), None, "ns")

    assert key("a b") != key(["a", "b"])
    assert key("a", stop=["b"]) != key("a b")
    assert key("a", stop="b c") != key("a", stop=["b", "c"])
    assert key("x", logit_bias={"1": 2}) != key("x", logit_bias={"12": ""})
    assert key("x", a=1, b=2) == key("x", b=2, a=1)  # order of keyword arguments does not matter
    assert key("é") != key("e")
    assert canonical({"b": [1, "é"], "a": None}) == '{"a":null,"b":[1,"é"]}'


# -- C04: tenants never share entries --------------------------------------------------------------


async def test_c04_two_api_keys_two_namespaces(make_client: MakeClient, server: FakeServer,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENANT_B_KEY", "sk-tenant-b-abcdefghijklmnop")
    client = make_client(
        middleware=["cache"],
        providers={
            "openai": {"api_base": server.openai_url},
            "tenant_b": {"kind": "openai", "api_base": server.openai_url, "api_key_env": "TENANT_B_KEY"},
        },
    )
    await client.acomplete(MESSAGES, model="openai/gpt-4o")
    second = await client.acomplete(MESSAGES, model="tenant_b/gpt-4o")
    assert not second.cached and server.calls() == 2
    cache = cache_of(client)
    ns_a = cache.namespace_for(client.request(MESSAGES, model="openai/gpt-4o"))
    ns_b = cache.namespace_for(client.request(MESSAGES, model="tenant_b/gpt-4o"))
    assert ns_a != ns_b and "sk-" not in ns_a + ns_b


async def test_c04_same_provider_key_rotated_is_a_new_namespace(make_client: MakeClient, server: FakeServer,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    client = cached_client(make_client)
    await client.acomplete(MESSAGES, model="openai/gpt-4o")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-another-tenant-0123456789")
    assert not (await client.acomplete(MESSAGES, model="openai/gpt-4o")).cached
    assert server.calls() == 2


async def test_c04_per_call_namespace_isolates_tenants_sharing_a_key(make_client: MakeClient,
                                                                     server: FakeServer) -> None:
    client = cached_client(make_client)
    await client.acomplete(MESSAGES, model="openai/gpt-4o", options={"cache": {"namespace": "tenant-a"}})
    b = await client.acomplete(MESSAGES, model="openai/gpt-4o", options={"cache": {"namespace": "tenant-b"}})
    a = await client.acomplete(MESSAGES, model="openai/gpt-4o", options={"cache": {"namespace": "tenant-a"}})
    assert not b.cached and a.cached and server.calls() == 2


# -- C09: a caller mutating a response cannot change the cache -------------------------------------


async def test_c09_mutation_safety(make_client: MakeClient, server: FakeServer) -> None:
    client = cached_client(make_client)
    first = await client.acomplete(MESSAGES, model="openai/gpt-4o", tools=TOOLS)
    first.text = "tampered"
    hit = await client.acomplete(MESSAGES, model="openai/gpt-4o", tools=TOOLS)
    hit.text = "tampered again"
    hit.tool_calls.append({"evil": True})
    assert hit.raw is not None
    hit.raw["choices"] = []
    assert hit.usage is not None
    hit.usage.total_tokens = -1
    again = await client.acomplete(MESSAGES, model="openai/gpt-4o", tools=TOOLS)
    assert again.text == "echo: What is 2+2?" and again.tool_calls == [] and again.raw is not None
    assert again.raw["choices"] and again.usage is not None and again.usage.total_tokens > 0
    assert server.calls() == 1
    # a stream replay hands out fresh chunks too
    chunks = [c async for c in client.astream(MESSAGES, model="openai/gpt-4o", tools=TOOLS)]
    chunks[0].text = "x"
    chunks[0].metadata["cache_hit"] = "x"
    replay = [c async for c in client.astream(MESSAGES, model="openai/gpt-4o", tools=TOOLS)]
    assert replay[0].text == "echo: What is 2+2?" and replay[0].metadata["cache_hit"] is True


async def test_values_are_json_never_pickle(make_client: MakeClient, server: FakeServer) -> None:
    client = cached_client(make_client)
    await client.acomplete(MESSAGES, model="openai/gpt-4o")
    cache = cache_of(client)
    stored = list(cache.store.backend.data.values())  # type: ignore[attr-defined]
    assert len(stored) == 1 and isinstance(stored[0], bytes)
    doc = json.loads(stored[0])
    assert doc["kind"] == "completion" and doc["text"] == "echo: What is 2+2?"


# -- C18: a huge prompt gets a fixed-length key; huge values are not stored -------------------------


async def test_c18_huge_prompt_and_value(make_client: MakeClient, server: FakeServer) -> None:
    client = cached_client(make_client, max_value_bytes=100_000)
    cache = cache_of(client)
    huge = "x" * (5 * 1024 * 1024)
    key = cache.key_for(client.request(huge, model="openai/gpt-4o"))
    small = cache.key_for(client.request("hi", model="openai/gpt-4o"))
    assert len(key) == len(small) < 120
    # the echo answer is as large as the prompt: above max_value_bytes, so not stored
    await client.acomplete(huge, model="openai/gpt-4o")
    await client.acomplete(huge, model="openai/gpt-4o")
    assert server.calls() == 2
    assert cache.metrics.skipped["too_large"] == 2 and cache.metrics.stores == 0


# -- C19: bypass, no_store, refresh, ttl ------------------------------------------------------------


async def test_c19_bypass_no_store_refresh_ttl(make_client: MakeClient, server: FakeServer) -> None:
    client = cached_client(make_client)
    model = "openai/gpt-4o"
    await client.acomplete(MESSAGES, model=model, options={"cache": {"no_store": True}})
    await client.acomplete(MESSAGES, model=model, options={"cache": {"ttl": 0}})
    assert server.calls() == 2 and cache_of(client).metrics.stores == 0
    await client.acomplete(MESSAGES, model=model)  # stored now
    assert server.calls() == 3
    bypass = await client.acomplete(MESSAGES, model=model, options={"cache": {"bypass": True}})
    assert not bypass.cached and server.calls() == 4
    server.script(modelwire.testing.Reply.completion("fresh answer"))
    refreshed = await client.acomplete(MESSAGES, model=model, options={"cache": {"refresh": True}})
    assert refreshed.text == "fresh answer" and not refreshed.cached and server.calls() == 5
    hit = await client.acomplete(MESSAGES, model=model)
    assert hit.cached and hit.text == "fresh answer" and server.calls() == 5
    # no_store still reads
    assert (await client.acomplete(MESSAGES, model=model, options={"cache": {"no_store": True}})).cached
    assert cache_of(client).metrics.skipped == {"no_store": 1, "ttl_0": 1}


async def test_c19_bypass_on_streams(make_client: MakeClient, server: FakeServer) -> None:
    client = cached_client(make_client)
    [c async for c in client.astream(MESSAGES, model="openai/gpt-4o")]
    stream = client.astream(MESSAGES, model="openai/gpt-4o", options={"cache": {"bypass": True}})
    [c async for c in stream]
    assert not stream.cached and server.calls() == 2


async def test_per_call_ttl_expires(make_client: MakeClient, server: FakeServer) -> None:
    import asyncio

    client = cached_client(make_client)
    # 1 s: the second call is a hit even when a busy machine delays it by a good fraction of that
    await client.acomplete(MESSAGES, model="openai/gpt-4o", options={"cache": {"ttl": 1.0}})
    assert (await client.acomplete(MESSAGES, model="openai/gpt-4o")).cached
    await asyncio.sleep(1.1)
    assert not (await client.acomplete(MESSAGES, model="openai/gpt-4o")).cached
    assert server.calls() == 2


# -- configuration and options are validated before any network call ------------------------------


@pytest.mark.parametrize(
    ("cache", "named"),
    [
        ({"backend": "mongo"}, "cache.backend"),
        ({"ttl": -1}, "cache.ttl"),
        ({"max_entries": 0}, "cache.max_entries"),
        ({"timeout": "fast"}, "cache.timeout"),
        ({"backend": "file"}, "cache.path"),
        ({"backend": "redis"}, "cache.url"),
        ({"namespace": "a b*"}, "cache.namespace"),
        ({"colour": "red"}, "cache.colour"),
    ],
)
def test_bad_config_names_the_key(make_client: MakeClient, server: FakeServer, cache: dict[str, Any],
                                  named: str) -> None:
    with pytest.raises(modelwire.ConfigurationError, match=named.replace(".", r"\.")):
        make_client(middleware=["cache"], cache=cache)
    assert server.calls() == 0


@pytest.mark.parametrize(
    ("options", "named"),
    [({"ttl": -1}, "options.cache.ttl"), ({"bypas": True}, "options.cache.bypas"),
     ({"namespace": "x:y"}, "options.cache.namespace")],
)
async def test_bad_options_are_refused_before_the_network(make_client: MakeClient, server: FakeServer,
                                                          options: dict[str, Any], named: str) -> None:
    client = cached_client(make_client)
    with pytest.raises(modelwire.RequestValidationError, match=named.replace(".", r"\.")):
        await client.acomplete(MESSAGES, model="openai/gpt-4o", options={"cache": options})
    assert server.calls() == 0


def test_middleware_is_registered_and_configurable(make_client: MakeClient) -> None:
    client = cached_client(make_client, backend="null")
    assert isinstance(client.middleware[0], CacheMiddleware)
    assert client.middleware[0].describe()["backend"] == "null"


# -- the canonical form: mixed-type dict keys, integral floats, stable otherwise ------------------------


def params_key(**params: Any) -> str:
    return default_key(Request("openai", "m", [{"role": "user", "content": "x"}], params), None, "ns")


def test_dict_param_with_mixed_key_types_is_keyed_as_sent() -> None:
    # JSON turns 1234 into "1234": both dicts are the same request on the wire, so one key
    assert params_key(extra_body={"bias": {1234: -100, "5678": 50}}) == \
        params_key(extra_body={"bias": {"1234": -100, "5678": 50}})
    assert params_key(extra_body={"bias": {1234: -100, "a": 1}}) != params_key(extra_body={"bias": {1234: -50, "a": 1}})
    with pytest.raises(modelwire.RequestValidationError, match=r"extra_body\.bias: keys 1 and '1'"):
        params_key(extra_body={"bias": {1: 1, "1": 2}})  # the same JSON key twice: ambiguous


def test_integral_floats_and_ints_share_a_key_other_keys_unchanged() -> None:
    assert params_key(temperature=1) == params_key(temperature=1.0)
    assert params_key(top_p=1.0, max_tokens=16.0) == params_key(top_p=1, max_tokens=16)
    assert params_key(temperature=0.5) != params_key(temperature=1.0)
    assert canonical({"t": [1.0, -0.0, 2.5, 1e300]}) == '{"t":[1,0,2.5,1e+300]}'
    # inputs without integral floats or mixed keys keep their key text (no key version bump)
    assert canonical({2: "a", 10: "b"}) == '{"2":"a","10":"b"}'
    assert canonical({"b": [1, "é"], "a": None, "c": 0.25}) == '{"a":null,"b":[1,"é"],"c":0.25}'
    assert params_key(temperature=0.7).startswith("v1:")


async def test_mixed_keys_and_integral_floats_through_the_client(make_client: MakeClient, server: FakeServer) -> None:
    client = cached_client(make_client)
    first = await client.acomplete(MESSAGES, model="openai/gpt-4o", temperature=1.0)
    again = await client.acomplete(MESSAGES, model="openai/gpt-4o", temperature=1)
    assert not first.cached and again.cached and server.calls() == 1
    assert isinstance(server.requests[0].json["temperature"], float)  # sent as given: 1.0
    with pytest.raises(modelwire.RequestValidationError, match="opts"):
        await client.acomplete(MESSAGES, model="openai/gpt-4o", extra_body={"opts": {1: "a", "1": "b"}})
    # mixed key types no longer break the cache key (it was a TypeError in the pipeline); what
    # the transport makes of such a body is its own business, the cache computed its key
    with capture_events() as events, pytest.raises(modelwire.ModelwireError) as caught:
        await client.acomplete(MESSAGES, model="openai/gpt-4o", extra_body={"opts": {7: "a", "b": 2}})
    assert "TypeError" not in str(caught.value)
    assert not [e for e in events if e["event"] == "cache.key_hook_failed"]
    assert server.calls() == 1
