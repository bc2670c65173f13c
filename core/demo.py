"""``modelwire demo``: a tour of the real pipeline against the bundled loopback server.

No API key and no model server are needed: the demo starts :class:`~modelwire.testing.FakeServer`,
points an OpenAI, an Azure and a local provider at it, and sends real requests through litellm.
Each plugin adds its own step through ``modelwire_register_demo_steps``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from .client import Client
from .config import DEFAULT_MIDDLEWARE
from .testing import FakeServer
from .types import Completion

__all__ = ["demo_config", "run_demo"]

_DEMO_KEY_ENV = "MODELWIRE_DEMO_KEY"


def demo_config(server: FakeServer, middleware: list[str] | None = None) -> dict[str, Any]:
    """A config whose three providers all talk to ``server``."""
    return {
        "middleware": list(DEFAULT_MIDDLEWARE if middleware is None else middleware),
        "providers": {
            "openai": {"api_base": server.openai_url, "api_key_env": _DEMO_KEY_ENV},
            "azure": {"api_base": server.url, "api_version": "2024-10-21", "api_key_env": _DEMO_KEY_ENV},
            "local": {"kind": "openai_compatible", "api_base": server.openai_url},
        },
    }


def run_demo(echo: Callable[[str], None] = print, middleware: list[str] | None = None) -> int:
    """Run the tour; returns the process exit code."""
    os.environ.setdefault(_DEMO_KEY_ENV, "sk-demo-not-a-real-key")
    with FakeServer() as server:
        client = Client(config=demo_config(server, middleware))
        echo(f"modelwire demo: loopback server at {server.url}")
        echo(f"middleware (outermost first): {', '.join(client.config.middleware) or 'none'}\n")
        echo("1. A completion from each provider kind, through litellm")
        for model in ("openai/gpt-4o", "azure/my-deployment", "local/llama3"):
            start = time.perf_counter()
            response = client.complete(f"Hello from {model.split('/')[0]}", model=model)
            ms = (time.perf_counter() - start) * 1000
            echo(
                f"   {model:<22} -> {response.text!r}  ({_tokens(response)} tokens, {ms:.0f} ms)"
            )
        azure = next(r for r in reversed(server.requests) if r.path.startswith("/openai/"))
        echo(f"   (Azure went to {azure.path}?api-version={azure.query.get('api-version')} with an api-key header)")
        echo("\n2. A stream, printed as it arrives")
        with client.stream("Stream these words to me one by one", model="local/llama3") as stream:
            pieces = [chunk.text for chunk in stream if chunk.text]
        echo("   " + " | ".join(pieces))
        final = stream.get_final_completion()
        echo(f"   finish_reason={final.finish_reason}, usage={final.usage}")
        echo("\n3. Embeddings: one vector per text, in input order (the cache sends only new texts)")
        _embeddings(client, server, echo)
        echo("\n4. Tool calls and structured output")
        _tools(client, server, echo)
        for n, (title, step) in enumerate(client.registry.demo_steps.items(), start=5):
            echo(f"\n{n}. {title}")
            step(client, server, echo)
        echo(f"\nThe server saw {server.calls()} chat requests. Point modelwire at a real provider with a")
        echo("modelwire.toml (see README) and run: modelwire complete 'Say hi' --model openai/gpt-4o")
    return 0


def _embeddings(client: Client, server: FakeServer, echo: Callable[[str], None]) -> None:
    model = "openai/text-embedding-3-small"
    first = client.embed(["red", "green"], model=model)
    before = server.calls("embeddings")
    second = client.embed(["green", "blue", "red"], model=model)
    sent = [r.json["input"] for r in server.requests if r.route == "embeddings"][before:]
    echo(f"   {len(first.vectors)} vectors of {len(first.vectors[0])} floats; then 3 texts: from_cache="
         f"{second.from_cache}, sent upstream: {sent}")


def _tools(client: Client, server: FakeServer, echo: Callable[[str], None]) -> None:
    from pydantic import BaseModel

    from .testing import Reply

    class City(BaseModel):
        name: str
        population: int

    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    server.script(Reply.stream(["Checking."], finish_reason="tool_calls", tool_calls=[call]))
    question = {"role": "user", "content": "Weather in Paris? (demo)"}
    with client.stream([question], model="openai/gpt-4o", tools=tools) as stream:
        deltas = sum(len(chunk.tool_calls) for chunk in stream)
    tool_call = stream.completion().tool_calls[0]
    echo(f"   streamed as {deltas} deltas, assembled: {tool_call.name}({tool_call.arguments_json()})")
    messages = [question, {"role": "assistant", "content": None, "tool_calls": [tool_call.to_dict()]},
                {"role": "tool", "tool_call_id": tool_call.id, "content": '{"temp_c": 21}'}]
    answer = client.complete(messages, model="openai/gpt-4o", tools=tools)
    echo(f"   tool result sent back (role 'tool', id {tool_call.id}) -> {answer.text[:40]!r}")
    server.script(Reply.json({"name": "Paris", "population": 2102650}))
    city = client.complete("Describe Paris as JSON (demo)", model="local/llama3", response_format=City)
    echo(f"   response_format=City -> parsed {city.parsed!r}")


def _tokens(response: Completion) -> str:
    return str(response.usage.total_tokens) if response.usage else "?"
