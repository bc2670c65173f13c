"""The provider contract: a test class a provider plugin runs against itself, as dogpile.cache's
backends run its shared backend tests.

Subclass :class:`ProviderContract` in a test module (the name must start with ``Test``), say how
to configure the provider, and run pytest::

    from modelwire.testing.contract import ProviderContract

    class TestMyProvider(ProviderContract):
        provider_config = {"kind": "mine", "api_base": "{openai_url}"}
        plugins = (my_plugin_module,)        # when not installed through an entry point

The fixtures come from modelwire's pytest plugin (``fake_server``); tests are plain functions
(async paths run under ``asyncio.run``), so the suite needs no pytest-asyncio settings.

Two kinds of checks:

- Always: whole and streamed completions through the sync and async API, the types of what comes
  back, ``finish_reason``, usage consistency, a stream left early ending quietly.
- With the :data:`WIRE` capability (a provider that talks HTTP to an OpenAI-style server at the
  ``api_base`` of its config; the default): the :class:`~modelwire.testing.FakeServer` is scripted
  to check exact text and usage, ``finish_reason="length"``, error mapping into the modelwire
  hierarchy (401, 429 with Retry-After, 500, connection refused; no key in any error; no hidden
  retries), a cut stream, cancellation closing the upstream connection, and the ``timeout``,
  ``first_token_timeout`` and ``idle_timeout`` settings. :data:`TOOLS` adds tool calls (whole and
  as stream deltas), :data:`STREAM_USAGE` usage at the end of a stream.

A provider that does not talk to an OpenAI-style server declares ``capabilities = frozenset()``:
the wire checks are skipped with that reason, and :meth:`ProviderContract.expected_text` lets it
say what its answer to a prompt must be.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

from .pytest_plugin import KEY_ENVS
from .redis import free_port
from .server import FakeServer, Reply

if TYPE_CHECKING:
    from modelwire import Client, Completion, ModelwireError

__all__ = ["STREAM_USAGE", "TOOLS", "WIRE", "ProviderContract"]

#: Talks HTTP to an OpenAI-style chat server at the config's api_base (scriptable with FakeServer).
WIRE = "wire"
#: Passes tool calls through, whole and as stream deltas (needs WIRE).
TOOLS = "tools"
#: Reports usage at the end of a stream (needs WIRE).
STREAM_USAGE = "stream_usage"

PROMPT = "Say something for the contract"
USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
#: How long a scripted stall lasts; a timeout under test must fire long before it.
STALL = 30.0


class ProviderContract:
    """Subclass it and set :attr:`provider_config`; see the module docs."""

    #: The ``[providers.<name>]`` section. In strings, ``{url}`` becomes the server's base URL
    #: (``http://127.0.0.1:<port>``, Azure's form) and ``{openai_url}`` that URL + ``/v1``.
    provider_config: ClassVar[dict[str, Any]] = {}
    #: The instance name the suite configures the provider under.
    provider_name: ClassVar[str] = "contract"
    #: The model (or deployment) asked for: requests go to ``provider_name/model``.
    model: ClassVar[str] = "contract-model"
    #: Plugin objects or module names given to the Client (for plugins not installed as entry points).
    plugins: ClassVar[tuple[object, ...]] = ()
    #: What the provider can do; the checks that need a missing capability are skipped.
    capabilities: ClassVar[frozenset[str]] = frozenset({WIRE, TOOLS, STREAM_USAGE})
    #: The key the suite puts in ``$MODELWIRE_CONTRACT_KEY``, ``$OPENAI_API_KEY`` and
    #: ``$AZURE_OPENAI_API_KEY``; it must never appear in an error.
    api_key: ClassVar[str] = "sk-contract-0123456789abcdefghij"

    def expected_text(self, prompt: str) -> str | None:
        """The answer the provider must give to ``prompt`` when the server is not scripted; None
        skips the content check. Wire providers get the server's scripted text instead."""
        return None

    # -- fixtures and helpers ------------------------------------------------------------------

    @pytest.fixture
    def contract_server(self, fake_server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> FakeServer:
        for env in ("MODELWIRE_CONTRACT_KEY", *KEY_ENVS):
            monkeypatch.setenv(env, self.api_key)
        return fake_server

    @pytest.fixture
    def client(self, contract_server: FakeServer) -> Iterator[Client]:
        client = self.make_client(contract_server.url)
        yield client
        client.close()

    def make_client(self, url: str, **settings: Any) -> Client:
        """A Client with only this provider, pointed at ``url``; ``settings`` go into its section."""
        from modelwire import Client

        section = {**_fill(self.provider_config, url), **settings}
        return Client(config={"middleware": [], "providers": {self.provider_name: section}}, plugins=self.plugins)

    @property
    def target(self) -> str:
        return f"{self.provider_name}/{self.model}"

    def require(self, *capabilities: str) -> None:
        missing = [c for c in capabilities if c not in self.capabilities]
        if missing:
            pytest.skip(f"{type(self).__name__} does not declare the capability {', '.join(missing)}")

    def check_completion(self, response: Completion, text: str | None) -> None:
        from modelwire import Completion, Usage

        assert isinstance(response, Completion), type(response)
        assert isinstance(response.text, str) and response.provider == self.provider_name
        assert response.finish_reason is not None, "a finished completion names its finish_reason"
        if text is not None:
            assert response.text == text
        if response.usage is not None:
            assert isinstance(response.usage, Usage)
            u = response.usage
            assert min(u.prompt_tokens, u.completion_tokens) >= 0 and u.total_tokens >= u.completion_tokens

    def collect(self, client: Client, **kwargs: Any) -> tuple[list[Any], Completion]:
        """Stream ``PROMPT`` with the sync API; the chunks and the assembled completion."""
        with client.stream(PROMPT, model=self.target, **kwargs) as stream:
            chunks = list(stream)
        return chunks, stream.get_final_completion()

    def fail(self, client: Client, stream: bool) -> ModelwireError:
        from modelwire import ModelwireError

        with pytest.raises(ModelwireError) as info:
            if stream:
                self.collect(client)
            else:
                client.complete(PROMPT, model=self.target)
        error = info.value
        shown = f"{error!s} {error!r} {error.body} {vars(error)}"
        assert self.api_key not in shown, "the API key leaked into an error"
        return error

    # -- always --------------------------------------------------------------------------------

    def test_complete(self, client: Client, contract_server: FakeServer) -> None:
        wire = WIRE in self.capabilities
        if wire:
            contract_server.script(Reply.completion("contract answer", usage=USAGE))
        response = client.complete(PROMPT, model=self.target)
        self.check_completion(response, "contract answer" if wire else self.expected_text(PROMPT))
        if wire:
            assert response.finish_reason == "stop" and response.usage is not None
            assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (11, 7)
            assert contract_server.calls() == 1
            sent = contract_server.requests[-1].json
            assert sent["messages"][-1]["content"] == PROMPT and not sent.get("stream")

    def test_acomplete(self, client: Client, contract_server: FakeServer) -> None:
        if WIRE in self.capabilities:
            contract_server.script(Reply.completion("async answer"))
        response = asyncio.run(client.acomplete(PROMPT, model=self.target))
        self.check_completion(response, "async answer" if WIRE in self.capabilities else self.expected_text(PROMPT))

    def test_stream(self, client: Client, contract_server: FakeServer) -> None:
        from modelwire import Chunk

        wire = WIRE in self.capabilities
        if wire:
            contract_server.script(Reply.stream(["con", "tract", " stream"], usage=USAGE))
        chunks, final = self.collect(client)
        assert chunks and all(isinstance(c, Chunk) for c in chunks)
        assert "".join(c.text for c in chunks) == final.text
        self.check_completion(final, "contract stream" if wire else self.expected_text(PROMPT))
        assert [c.finish_reason for c in chunks if c.finish_reason] == [final.finish_reason]
        if wire:
            assert final.finish_reason == "stop" and contract_server.requests[-1].json["stream"] is True
        if STREAM_USAGE in self.capabilities:
            assert final.usage is not None and final.usage.total_tokens == 18

    def test_astream(self, client: Client, contract_server: FakeServer) -> None:
        if WIRE in self.capabilities:
            contract_server.script(Reply.stream(["a", "sync"]))

        async def run() -> tuple[str, str]:
            async with client.astream(PROMPT, model=self.target) as stream:
                texts = [chunk.text async for chunk in stream]
            return "".join(texts), stream.get_final_completion().text

        joined, final = asyncio.run(run())
        assert joined == final
        expected = "async" if WIRE in self.capabilities else self.expected_text(PROMPT)
        if expected is not None:
            assert final == expected

    def test_stream_left_early_ends_quietly(self, client: Client, contract_server: FakeServer) -> None:
        wire = WIRE in self.capabilities
        if wire:
            contract_server.script(Reply.stream([f"w{i} " for i in range(200)], event_delay=0.01))
        with client.stream(PROMPT, model=self.target) as stream:
            for _ in stream:
                break
        assert stream.end_reason == "cancelled_by_consumer"
        if wire:
            _wait_closed(contract_server)

    # -- wire: content -------------------------------------------------------------------------

    def test_finish_reason_length(self, client: Client, contract_server: FakeServer) -> None:
        self.require(WIRE)
        contract_server.script(Reply.completion("trunc", finish_reason="length"),
                               Reply.stream(["trun", "c"], finish_reason="length"))
        assert client.complete(PROMPT, model=self.target).finish_reason == "length"
        chunks, final = self.collect(client)
        assert final.finish_reason == "length" and final.text == "trunc"

    def test_tool_calls(self, client: Client, contract_server: FakeServer) -> None:
        self.require(WIRE, TOOLS)
        call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}
        contract_server.script(Reply.completion("", finish_reason="tool_calls", tool_calls=[call]))
        response = client.complete(PROMPT, model=self.target, tools=[_TOOL])
        assert response.finish_reason == "tool_calls"
        assert [(c.id, c.name) for c in response.tool_calls] == [("call_1", "lookup")]
        assert response.tool_calls[0].arguments_json() == {"q": "x"}
        assert contract_server.requests[-1].json["tools"][0]["function"]["name"] == "lookup"

    def test_tool_call_deltas(self, client: Client, contract_server: FakeServer) -> None:
        from modelwire import ToolCallDelta

        self.require(WIRE, TOOLS)
        first = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": ""}}
        second = {"index": 1, "id": "call_2", "type": "function", "function": {"name": "clock", "arguments": ""}}
        events = [_chunk({"role": "assistant", "tool_calls": [first]}), _chunk({"tool_calls": [_args(0, '{"q": ')]}),
                  _chunk({"tool_calls": [second]}), _chunk({"tool_calls": [_args(0, '"x"}')]}),
                  _chunk({"tool_calls": [_args(1, "{}")]}), _chunk({}, "tool_calls")]
        contract_server.script(Reply(events=events))
        chunks, final = self.collect(client, tools=[_TOOL])
        deltas = [d for c in chunks for d in c.tool_calls]
        assert deltas and all(isinstance(d, ToolCallDelta) for d in deltas)
        assert [d.index for d in deltas] == [0, 0, 1, 0, 1]
        assert (deltas[0].id, deltas[0].name) == ("call_1", "lookup")
        assert "".join(d.arguments for d in deltas if d.index == 0) == '{"q": "x"}'
        assert final.finish_reason == "tool_calls"
        assert [c.name for c in final.tool_calls] == ["lookup", "clock"]
        assert final.tool_calls[0].arguments_json() == {"q": "x"}

    # -- wire: errors --------------------------------------------------------------------------

    @pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
    @pytest.mark.parametrize("case", ["401", "429", "500"])
    def test_error_mapping(self, client: Client, contract_server: FakeServer, case: str, stream: bool) -> None:
        import modelwire

        self.require(WIRE)
        reply, kind, retryable = {
            "401": (Reply.error(401, f"Incorrect API key provided: {self.api_key}.", type="invalid_request_error",
                                code="invalid_api_key"), modelwire.AuthenticationError, False),
            "429": (Reply.error(429, "Rate limit reached for requests.", type="requests", code="rate_limit_exceeded",
                                headers={"retry-after": "2"}), modelwire.RateLimitError, True),
            "500": (Reply.error(500), modelwire.ServerError, True),
        }[case]
        contract_server.script(reply)
        error = self.fail(client, stream)
        assert isinstance(error, kind), f"{case} became {type(error).__name__}: {error}"
        assert error.status == int(case) and error.retryable is retryable
        assert (error.provider, error.model) == (self.provider_name, self.model)
        if case == "429":
            assert error.retry_after == 2.0
        assert contract_server.calls() == 1, "the provider retried on its own (retries belong to the middleware)"

    @pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
    def test_connection_refused(self, contract_server: FakeServer, stream: bool) -> None:
        import modelwire

        self.require(WIRE)
        client = self.make_client(f"http://127.0.0.1:{free_port()}")  # nothing listens there
        try:
            error = self.fail(client, stream)
        finally:
            client.close()
        assert isinstance(error, modelwire.ProviderConnectionError), f"{type(error).__name__}: {error}"
        assert error.retryable and error.provider == self.provider_name

    def test_stream_cut_is_interrupted(self, client: Client, contract_server: FakeServer) -> None:
        import modelwire

        self.require(WIRE)
        contract_server.script(Reply.stream(["part", "ial"], finish_reason=None, usage=False, ending="eof"))
        error = self.fail(client, stream=True)
        assert isinstance(error, modelwire.StreamInterruptedError) and error.partial_text == "partial"

    # -- wire: cancellation closes the upstream ------------------------------------------------

    def test_cancelled_stream_closes_upstream(self, client: Client, contract_server: FakeServer) -> None:
        self.require(WIRE)
        contract_server.script(Reply.stream([f"w{i} " for i in range(300)], event_delay=0.01))

        async def run() -> None:
            got: list[Any] = []

            async def consume() -> None:
                async for chunk in client.astream(PROMPT, model=self.target):
                    got.append(chunk)

            task = asyncio.create_task(consume())
            while len(got) < 3 and not task.done():
                await asyncio.sleep(0.005)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(run())
        _wait_closed(contract_server)

    def test_cancelled_request_closes_upstream(self, client: Client, contract_server: FakeServer) -> None:
        self.require(WIRE)
        reply = Reply.completion("too late")
        reply.drip = 0.1  # headers, then a byte now and then: the server sees the client leave
        contract_server.script(reply)

        async def run() -> None:
            task = asyncio.create_task(client.acomplete(PROMPT, model=self.target))
            deadline = time.monotonic() + STALL / 2
            while contract_server.calls() == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(run())
        _wait_closed(contract_server)

    # -- wire: timeouts ------------------------------------------------------------------------

    def test_timeout(self, contract_server: FakeServer) -> None:
        import modelwire

        self.require(WIRE)
        reply = Reply.completion("too late")
        reply.delay = STALL
        contract_server.script(reply)
        client = self.make_client(contract_server.url, timeout=0.5)
        start = time.monotonic()
        try:
            error = self.fail(client, stream=False)
        finally:
            client.close()
        elapsed = time.monotonic() - start
        assert isinstance(error, modelwire.ProviderTimeoutError), f"{type(error).__name__}: {error}"
        assert 0.45 <= elapsed < STALL / 2, elapsed  # never early; and not the server's answer

    def test_first_token_timeout(self, contract_server: FakeServer) -> None:
        import modelwire

        self.require(WIRE)
        contract_server.script(Reply(events=[], ending="stall"))
        client = self.make_client(contract_server.url, first_token_timeout=0.5)
        start = time.monotonic()
        try:
            error = self.fail(client, stream=True)
        finally:
            client.close()
        assert isinstance(error, modelwire.StreamIdleTimeoutError) and error.chunks == 0
        assert 0.45 <= time.monotonic() - start < STALL / 2
        _wait_closed(contract_server)

    def test_idle_timeout(self, contract_server: FakeServer) -> None:
        import modelwire

        self.require(WIRE)
        contract_server.script(Reply(events=[_chunk({"content": "a"})], ending="stall"))
        client = self.make_client(contract_server.url, idle_timeout=0.5)
        start = time.monotonic()
        try:
            error = self.fail(client, stream=True)
        finally:
            client.close()
        assert isinstance(error, modelwire.StreamIdleTimeoutError) and error.partial_text == "a"
        assert 0.45 <= time.monotonic() - start < STALL / 2
        _wait_closed(contract_server)


_TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}


def _fill(value: Any, url: str) -> Any:
    """``{url}`` and ``{openai_url}`` replaced in every string of ``value`` (dicts and lists too)."""
    if isinstance(value, str):
        return value.replace("{openai_url}", url + "/v1").replace("{url}", url)
    if isinstance(value, dict):
        return {k: _fill(v, url) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, url) for v in value]
    return value


def _chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-contract", "object": "chat.completion.chunk", "created": 0, "model": "contract",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


def _args(index: int, piece: str) -> dict[str, Any]:
    return {"index": index, "function": {"arguments": piece}}


def _wait_closed(server: FakeServer, timeout: float = 10.0) -> None:
    """Wait until the client closed every connection to ``server``."""
    deadline = time.monotonic() + timeout
    while server.open_connections and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.open_connections == 0, "the upstream connection was left open"
