"""The HTTP transport modelwire owns: pooled connections, sessions per event loop, resends."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

import modelwire
from modelwire.testing import FakeServer, Reply


@pytest.mark.parametrize("provider", ["openai", "azure", "local"])
def test_dead_pooled_connection_after_a_stream_is_not_reused(
    make_client: Callable[..., modelwire.Client], server: FakeServer, provider: str
) -> None:
    """Issue 9 item 5: 200, empty chunked body, keep-alive, then the server closes the socket."""
    client = make_client()
    server.script(Reply(events=[], ending="eof", close_after=0.5))
    with pytest.raises(modelwire.StreamInterruptedError):
        with client.stream("first", model=f"{provider}/m") as stream:
            for _ in stream:
                pass
    assert client.complete("second", model=f"{provider}/m").text == "echo: second"
    assert server.calls() == 2


def test_dead_pooled_connection_after_a_whole_answer_is_not_reused(
    make_client: Callable[..., modelwire.Client], server: FakeServer
) -> None:
    client = make_client()
    server.script(Reply(events=[], ending="done", close_after=0.5))  # a complete empty stream, then FIN
    with pytest.raises(modelwire.StreamInterruptedError):
        with client.stream("first", model="openai/m") as stream:
            list(stream)
    for i in range(3):
        assert client.complete(f"n{i}", model="openai/m").text == f"echo: n{i}"
    assert server.calls() == 4


def test_async_dead_pooled_connection(make_client: Callable[..., modelwire.Client], server: FakeServer) -> None:
    async def main() -> str:
        client = make_client()
        server.script(Reply(events=[], ending="eof", close_after=0.5))
        with pytest.raises(modelwire.StreamInterruptedError):
            async with client.astream("first", model="openai/m") as stream:
                async for _ in stream:
                    pass
        try:
            return (await client.acomplete("second", model="openai/m")).text
        finally:
            await client.aclose()

    assert asyncio.run(main()) == "echo: second"
    assert server.calls() == 2
