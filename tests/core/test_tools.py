"""Tool calls (issue 13): typed ToolCall from whole and streamed answers, arguments_json(), a
stream cut mid-call, tool results validated before the network, cached tool calls. Real HTTP to
the FakeServer."""

from __future__ import annotations

from typing import Any

import pytest

from modelwire import Completion, ModelwireError, RequestValidationError, StreamInterruptedError
from modelwire.errors import ToolArgumentsError
from modelwire.testing import FakeServer, Reply
from modelwire.tools import ToolCall

from ..providers.test_stream_wire import chunk

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
CALLS = [
    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
    {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": '{"tz": "UTC"}'}},
]


def _check_calls(calls: list[ToolCall]) -> None:
    assert all(type(c) is ToolCall for c in calls)
    assert [(c.id, c.name, c.complete) for c in calls] == [
        ("call_1", "get_weather", True), ("call_2", "get_time", True)
    ]
    assert [c.arguments_json() for c in calls] == [{"city": "Paris"}, {"tz": "UTC"}]
    assert calls[0].arguments == '{"city": "Paris"}'  # the raw string, as the model wrote it


@pytest.mark.parametrize("target", ["openai/gpt-4o", "azure/dep", "local/llama"])
async def test_whole_answer_tool_calls_are_typed(make_client, server: FakeServer, target: str) -> None:
    server.script(Reply.completion("", finish_reason="tool_calls", tool_calls=CALLS))
    resp = await make_client().acomplete("weather?", model=target, tools=TOOLS)
    assert resp.finish_reason == "tool_calls"
    _check_calls(resp.tool_calls)
    assert resp.tool_calls[0]["function"]["name"] == "get_weather"  # the dict view older code reads
    assert server.requests[-1].json["tools"] == TOOLS
    assert resp.raw.choices[0].message.tool_calls[0].id == "call_1"  # raw stays litellm's response


async def test_stream_assembles_tool_calls(make_client, server: FakeServer) -> None:
    server.script(Reply.stream(["Let me look."], finish_reason="tool_calls", tool_calls=CALLS))
    async with make_client().astream("weather?", model="openai/gpt-4o", tools=TOOLS) as stream:
        deltas = [d for c in [c async for c in stream] for d in c.tool_calls]
    assert len(deltas) == 6  # one opening delta and two argument halves per call
    final = stream.completion()
    assert isinstance(final, Completion)
    assert (final.text, final.finish_reason) == ("Let me look.", "tool_calls")
    assert final.usage is not None and final.usage.total_tokens > 0
    _check_calls(final.tool_calls)
    assert stream.get_final_completion() is final


def test_sync_stream_completion(make_client, server: FakeServer) -> None:
    server.script(Reply.stream([], finish_reason="tool_calls", tool_calls=CALLS))
    with make_client().stream("weather?", model="local/llama", tools=TOOLS) as stream:
        for _ in stream:
            pass
        _check_calls(stream.completion().tool_calls)


def test_completion_before_the_end_raises(make_client, server: FakeServer) -> None:
    server.script(Reply.stream(["a", "b"]))
    with make_client().stream("x", model="openai/gpt-4o") as stream:
        next(stream)
        with pytest.raises(ModelwireError, match="not finished"):
            stream.completion()


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ('{"city": "Par', r"call_9 \(lookup\): arguments are not valid JSON: Unterminated string"),
        ("{'city': 'Paris'}", r"call_9 \(lookup\): arguments are not valid JSON: Expecting property name"),
        ('["Paris"]', r"call_9 \(lookup\): arguments must be a JSON object, got list"),
    ],
)
async def test_arguments_json_invalid(make_client, server: FakeServer, arguments: str, match: str) -> None:
    call = {"id": "call_9", "type": "function", "function": {"name": "lookup", "arguments": arguments}}
    server.script(Reply.completion("", finish_reason="tool_calls", tool_calls=[call]))
    resp = await make_client().acomplete("x", model="openai/gpt-4o", tools=TOOLS)
    with pytest.raises(ToolArgumentsError, match=match) as info:
        resp.tool_calls[0].arguments_json()
    assert isinstance(info.value, ModelwireError)
    assert info.value.call is resp.tool_calls[0] and resp.tool_calls[0].arguments == arguments


def test_arguments_json_empty_is_no_arguments() -> None:
    assert ToolCall("c", "now", "").arguments_json() == {}


async def test_stream_cut_mid_tool_call_attaches_partial_calls(make_client, server: FakeServer) -> None:
    start = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    events = [chunk(None, delta={"tool_calls": [start]}),
              chunk(None, delta={"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Pa'}}]})]
    server.script(Reply(events=events, ending="eof"))
    stream = make_client().astream("weather?", model="openai/gpt-4o", tools=TOOLS)
    with pytest.raises(StreamInterruptedError) as info:
        async for _ in stream:
            pass
    partial = info.value.partial_tool_calls
    assert [(c.id, c.name, c.arguments, c.complete) for c in partial] == [
        ("call_1", "get_weather", '{"city": "Pa', False)
    ]
    with pytest.raises(ToolArgumentsError, match="incomplete"):
        partial[0].arguments_json()
    with pytest.raises(ModelwireError, match="interrupted"):
        stream.completion()


ASSISTANT = {"role": "assistant", "content": None, "tool_calls": CALLS[:1]}
USER = {"role": "user", "content": "weather in Paris?"}
RESULT = {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'}


def _with_call(**function: Any) -> dict[str, Any]:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}", **function}}
    return {"role": "assistant", "content": None, "tool_calls": [call]}


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([USER, ASSISTANT, {"role": "tool", "content": "21"}],
         r"messages\[2\] is a tool message without a 'tool_call_id'"),
        ([USER, ASSISTANT, {**RESULT, "tool_call_id": "call_7"}],
         r"messages\[2\] is a tool result for tool_call_id 'call_7'"),
        ([USER, RESULT, ASSISTANT], r"messages\[1\] is a tool result for tool_call_id 'call_1'"),
        ([USER, {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function":
          {"name": "f", "arguments": "{}"}}]}], r"messages\[1\].tool_calls\[0\] has no 'id'"),
        ([USER, _with_call(name=None)], r"messages\[1\].tool_calls\[0\].function has no 'name'"),
        ([USER, _with_call(arguments={"city": "Paris"})],
         r"messages\[1\].tool_calls\[0\].function.arguments must be a JSON string, got dict"),
        ([USER, {"role": "assistant", "content": None, "tool_calls": "call_1"}],
         r"messages\[1\].tool_calls must be a list"),
        ([USER, {"role": "assistant", "content": None, "tool_calls": [ToolCall("call_1", "f", "{}")]}],
         r"messages\[1\].tool_calls\[0\] must be a dict .*ToolCall.to_dict"),
    ],
)
async def test_bad_tool_messages_refused_before_the_network(
    make_client, server: FakeServer, messages: list[dict[str, Any]], match: str
) -> None:
    with pytest.raises(RequestValidationError, match=match):
        await make_client().acomplete(messages, model="openai/gpt-4o", tools=TOOLS)
    assert server.calls("chat") == 0


async def test_tool_results_sent_back(make_client, server: FakeServer) -> None:
    server.script(Reply.completion("", finish_reason="tool_calls", tool_calls=CALLS[:1]), Reply.completion("21 C"))
    client = make_client()
    first = await client.acomplete([USER], model="openai/gpt-4o", tools=TOOLS)
    messages = [USER, {"role": "assistant", "content": None, "tool_calls": [c.to_dict() for c in first.tool_calls]},
                {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": '{"temp": 21}'}]
    assert (await client.acomplete(messages, model="openai/gpt-4o", tools=TOOLS)).text == "21 C"
    sent = server.requests[-1].json["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["function"] == CALLS[0]["function"] and sent[2]["tool_call_id"] == "call_1"


@pytest.mark.parametrize("stream_first", [False, True], ids=["whole-then-hit", "stream-then-hit"])
async def test_cached_tool_calls_are_typed(make_client, server: FakeServer, stream_first: bool) -> None:
    client = make_client(middleware=["cache"], cache={"backend": "memory"})
    if stream_first:
        server.script(Reply.stream([], finish_reason="tool_calls", tool_calls=CALLS))
        async with client.astream("weather?", model="openai/gpt-4o", tools=TOOLS) as stream:
            async for _ in stream:
                pass
    else:
        server.script(Reply.completion("", finish_reason="tool_calls", tool_calls=CALLS))
        await client.acomplete("weather?", model="openai/gpt-4o", tools=TOOLS)
    hit = await client.acomplete("weather?", model="openai/gpt-4o", tools=TOOLS)
    assert hit.cached and server.calls("chat") == 1
    _check_calls(hit.tool_calls)
    async with client.astream("weather?", model="openai/gpt-4o", tools=TOOLS) as replay:
        async for _ in replay:
            pass
    _check_calls(replay.completion().tool_calls)
    assert server.calls("chat") == 1


def test_cache_entry_keeps_openai_shape() -> None:
    from modelwire.plugins.cache.codec import completion_from_entry, entry_from_completion

    entry = entry_from_completion(Completion("", "tool_calls", "m", "p", tool_calls=[ToolCall.from_dict(CALLS[0])]))
    assert entry["tool_calls"] == [CALLS[0]]  # on disk: OpenAI's dict, readable by older and newer versions
    assert completion_from_entry(entry).tool_calls == [ToolCall("call_1", "get_weather", '{"city": "Paris"}')]


def test_demo_has_a_tools_and_structured_output_step(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelwire.demo import run_demo

    monkeypatch.setenv("MODELWIRE_DEMO_KEY", "sk-demo-not-a-real-key")
    lines: list[str] = []
    assert run_demo(lines.append) == 0
    text = "\n".join(lines)
    assert "4. Tool calls and structured output" in text
    assert "assembled: get_weather({'city': 'Paris'})" in text
    assert "parsed City(name='Paris', population=2102650)" in text


async def test_local_server_quirks_arguments_as_object_and_no_index(make_client, server: FakeServer) -> None:
    """Some local servers (llama.cpp-style templates, Ollama) send a whole call in one delta without
    an ``index``, and the arguments as a JSON object instead of a string."""
    whole = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    server.script(Reply(events=[chunk(None, delta={"role": "assistant", "tool_calls": [whole]}),
                                chunk(None, "tool_calls")]),
                  Reply.completion("", finish_reason="tool_calls", tool_calls=[whole]))
    client = make_client()
    async with client.astream("weather?", model="local/llama", tools=TOOLS) as stream:
        async for _ in stream:
            pass
    resp = await client.acomplete("weather?", model="local/llama", tools=TOOLS)
    for call in (stream.completion().tool_calls[0], resp.tool_calls[0]):
        assert (call.id, call.name, call.arguments_json()) == ("call_1", "get_weather", {"city": "Paris"})
        assert isinstance(call.arguments, str)
