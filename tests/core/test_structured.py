"""Structured output (issue 13): response_format=<pydantic model | JSON schema dict> sends the
schema the provider setting asks for and returns resp.parsed; an answer that does not parse raises
StructuredOutputError and is never cached; cache hits and streams parse the same way. Real HTTP to
the FakeServer; the schema sent is read from its request log."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from modelwire import RequestValidationError, StructuredOutputError
from modelwire.testing import FakeServer, Reply


class City(BaseModel):
    name: str
    population: int
    country: str | None = None


class Town(BaseModel):  # the same fields under another name: another schema, another cache key
    name: str
    population: int
    country: str | None = None


PARIS = {"name": "Paris", "population": 2102650, "country": "FR"}
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False}


def _cached(make_client: Any) -> Any:
    return make_client(middleware=["cache"], cache={"backend": "memory"})


def _json_object_client(make_client: Any, server: FakeServer, **extra: Any) -> Any:
    local = {"kind": "openai_compatible", "api_base": server.openai_url, "structured_output": "json_object"}
    return make_client(providers={"local": local}, **extra)


@pytest.mark.parametrize("target", ["openai/gpt-4o", "azure/dep", "local/llama"])
async def test_pydantic_model_sends_strict_json_schema_and_parses(make_client, server: FakeServer, target: str) -> None:
    server.script(Reply.json(PARIS))
    resp = await make_client().acomplete("Describe Paris", model=target, response_format=City)
    assert isinstance(resp.parsed, City) and resp.parsed.population == 2102650
    sent = server.requests[-1].json
    fmt = sent["response_format"]
    assert fmt["type"] == "json_schema"
    assert (fmt["json_schema"]["name"], fmt["json_schema"]["strict"]) == ("City", True)
    schema = fmt["json_schema"]["schema"]
    assert schema["additionalProperties"] is False and schema["required"] == ["name", "population", "country"]
    assert set(schema["properties"]) == {"name", "population", "country"}
    assert [m["role"] for m in sent["messages"]] == ["user"]  # no schema message in json_schema mode


def test_sync_complete_parses(make_client, server: FakeServer) -> None:
    server.script(Reply.json(PARIS))
    assert make_client().complete("Paris?", model="openai/gpt-4o", response_format=City).parsed == City(**PARIS)


async def test_json_object_mode_sends_the_schema_in_a_system_message(make_client, server: FakeServer) -> None:
    server.script(Reply.completion("```json\n" + json.dumps(PARIS) + "\n```"))  # local models fence JSON
    resp = await _json_object_client(make_client, server).acomplete("Describe Paris", model="local/llama",
                                                                    response_format=City)
    assert resp.parsed == City(**PARIS)
    sent = server.requests[-1].json
    assert sent["response_format"] == {"type": "json_object"}
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    system = sent["messages"][0]["content"]
    schema = json.loads(system[system.index("{"):])
    assert schema["properties"]["population"] == {"title": "Population", "type": "integer"}


async def test_json_object_mode_extends_an_existing_system_message(make_client, server: FakeServer) -> None:
    server.script(Reply.json(PARIS))
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Paris?"}]
    await _json_object_client(make_client, server).acomplete(messages, model="local/llama", response_format=City)
    sent = server.requests[-1].json["messages"]
    assert [m["role"] for m in sent] == ["system", "user"]
    assert sent[0]["content"].startswith("You are terse.\n\n") and '"population"' in sent[0]["content"]
    assert messages[0] == {"role": "system", "content": "You are terse."}  # the caller's messages untouched


async def test_structured_output_setting_is_validated(make_client, server: FakeServer) -> None:
    from modelwire import ConfigurationError

    local = {"kind": "openai_compatible", "api_base": server.openai_url, "structured_output": "xml"}
    with pytest.raises(ConfigurationError, match="structured_output"):
        make_client(providers={"local": local})


@pytest.mark.parametrize(
    ("answer", "error_type", "loc"),
    [("Sure! Paris has 2.1 million people.", "json_invalid", ()),
     (json.dumps({"name": "Paris", "population": "many"}), "int_parsing", ("population",)),
     (json.dumps({"name": "Paris"}), "missing", ("population",))],
    ids=["not-json", "wrong-type", "missing-field"],
)
async def test_invalid_answer_raises_and_is_not_cached(
    make_client, server: FakeServer, answer: str, error_type: str, loc: tuple[str, ...]
) -> None:
    client = _cached(make_client)
    server.script(Reply.completion(answer), Reply.completion(answer))
    for _ in range(2):
        with pytest.raises(StructuredOutputError) as info:
            await client.acomplete("Paris?", model="openai/gpt-4o", response_format=City)
        error = info.value
        assert error.text == answer
        assert (error.errors[0]["type"], tuple(error.errors[0]["loc"])) == (error_type, loc)
        assert "City" in str(error) and error.provider == "openai" and not error.retryable
    assert server.calls("chat") == 2  # the second call went upstream: nothing was stored


async def test_cache_hit_parses(make_client, server: FakeServer) -> None:
    client = _cached(make_client)
    server.script(Reply.json(PARIS), Reply.json(PARIS))
    first = await client.acomplete("Paris?", model="openai/gpt-4o", response_format=City)
    hit = await client.acomplete("Paris?", model="openai/gpt-4o", response_format=City)
    assert not first.cached and hit.cached and server.calls("chat") == 1
    assert isinstance(hit.parsed, City) and hit.parsed == first.parsed and hit.parsed is not first.parsed
    other = await client.acomplete("Paris?", model="openai/gpt-4o", response_format=Town)  # another schema
    assert isinstance(other.parsed, Town) and not other.cached and server.calls("chat") == 2
    async with client.astream("Paris?", model="openai/gpt-4o", response_format=City) as replay:
        async for _ in replay:
            pass
    assert replay.completion().parsed == City(**PARIS) and server.calls("chat") == 2


async def test_dict_schema(make_client, server: FakeServer) -> None:
    server.script(Reply.json({"a": 3}), Reply.json({"a": "three"}))
    client = make_client()
    resp = await client.acomplete("a?", model="openai/gpt-4o", response_format=SCHEMA)
    assert resp.parsed == {"a": 3}
    fmt = server.requests[-1].json["response_format"]
    assert fmt == {"type": "json_schema", "json_schema": {"name": "response", "schema": SCHEMA, "strict": True}}
    with pytest.raises(StructuredOutputError) as info:
        await client.acomplete("a?", model="openai/gpt-4o", response_format=SCHEMA)
    assert info.value.errors[0]["loc"] == ("a",) and "not of type 'integer'" in info.value.errors[0]["msg"]


async def test_dict_schema_that_is_not_strict_is_sent_as_written(make_client, server: FakeServer) -> None:
    loose = {"title": "Answer", "type": "object", "properties": {"a": {"type": "integer"}}}
    server.script(Reply.json({"a": 1, "b": 2}))
    resp = await make_client().acomplete("a?", model="openai/gpt-4o", response_format=loose)
    assert resp.parsed == {"a": 1, "b": 2}
    inner = server.requests[-1].json["response_format"]["json_schema"]
    assert (inner["name"], inner["schema"], inner["strict"]) == ("Answer", loose, False)


async def test_openai_json_schema_wrapper_is_sent_unchanged_and_parsed(make_client, server: FakeServer) -> None:
    wrapper = {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA, "strict": True}}
    server.script(Reply.json({"a": 1}))
    resp = await make_client().acomplete("a?", model="openai/gpt-4o", response_format=wrapper)
    assert resp.parsed == {"a": 1} and server.requests[-1].json["response_format"] == wrapper


async def test_json_object_mode_of_openai_is_unchanged(make_client, server: FakeServer) -> None:
    server.script(Reply.completion("not json at all"))
    resp = await make_client().acomplete("x", model="openai/gpt-4o", response_format={"type": "json_object"})
    assert resp.text == "not json at all" and resp.parsed is None  # no schema asked for: no parsing


@pytest.mark.parametrize("bad", [5, "json", str, {"type": "json_schema", "json_schema": {"name": "x"}}],
                         ids=["int", "str", "plain-class", "wrapper-without-schema"])
async def test_bad_response_format_refused_before_the_network(make_client, server: FakeServer, bad: Any) -> None:
    with pytest.raises(RequestValidationError, match="response_format"):
        await make_client().acomplete("x", model="openai/gpt-4o", response_format=bad)
    assert server.calls("chat") == 0


async def test_stream_completion_parsed(make_client, server: FakeServer) -> None:
    server.script(Reply.json(PARIS, stream=True))
    async with make_client().astream("Paris?", model="openai/gpt-4o", response_format=City) as stream:
        texts = [c.text async for c in stream if c.text]
    assert len(texts) > 1 and "".join(texts) == json.dumps(PARIS)  # text streams as usual
    assert stream.completion().parsed == City(**PARIS)
    assert server.requests[-1].json["response_format"]["json_schema"]["name"] == "City"


def test_sync_stream_invalid_answer_raises_at_completion_and_is_not_cached(make_client, server: FakeServer) -> None:
    client = _cached(make_client)
    server.script(Reply.stream(['{"name": ', '"Paris"}']), Reply.stream(['{"name": ', '"Paris"}']))
    for _ in range(2):
        with client.stream("Paris?", model="openai/gpt-4o", response_format=City) as stream:
            assert "".join(c.text for c in stream) == '{"name": "Paris"}'
            with pytest.raises(StructuredOutputError) as info:
                stream.completion()
            assert info.value.errors[0]["loc"] == ("population",)
            assert stream.get_final_completion().parsed is None
    assert server.calls("chat") == 2


async def test_a_tool_call_answer_is_not_parsed(make_client, server: FakeServer) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    server.script(Reply.completion("", finish_reason="tool_calls", tool_calls=[call]))
    resp = await make_client().acomplete("x", model="openai/gpt-4o", response_format=City,
                                         tools=[{"type": "function", "function": {"name": "lookup"}}])
    assert resp.parsed is None and resp.tool_calls[0].name == "lookup"


async def test_with_cache_retry_and_limiter_on(make_client, server: FakeServer) -> None:
    client = make_client(middleware=["cache", "retry", "ratelimit"], cache={"backend": "memory"},
                         retry={"max_attempts": 2, "base_delay": 0},
                         ratelimit={"limits": [{"match": "openai/*", "rpm": 600, "tpm": 100_000}]})
    server.script(Reply.error(500), Reply.json(PARIS))  # retried once, then parsed and stored
    first = await client.acomplete("Paris?", model="openai/gpt-4o", response_format=City)
    hit = await client.acomplete("Paris?", model="openai/gpt-4o", response_format=City)
    assert first.parsed == hit.parsed == City(**PARIS) and hit.cached
    assert server.calls("chat") == 2
