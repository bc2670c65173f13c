"""The ``modelwire demo`` step for streams: a stream cut mid-way, and one that stalls.

Streaming itself lives in the core (:mod:`modelwire.stream`) and the built-in providers
(:mod:`modelwire.providers.litellm_stream`); this plugin only shows it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from modelwire.errors import StreamIdleTimeoutError, StreamInterruptedError
from modelwire.hookspecs import hookimpl

__all__: list[str] = []

_STORY = ["Once", " upon", " a", " time,", " a", " stream", " was", " cut"]


@hookimpl
def modelwire_register_demo_steps(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("Streams that break: cut mid-way, then stalled (never reported as success)", _broken_streams)


def _broken_streams(client: Any, server: Any, echo: Callable[[str], None]) -> None:
    from modelwire.testing import Reply

    server.script(Reply.stream(_STORY, finish_reason=None, usage=False, ending="abort"), match="demo-cut")
    received: list[str] = []
    try:
        with client.stream("Tell me a story", model="local/demo-cut") as stream:
            for chunk in stream:
                received.append(chunk.text)
    except StreamInterruptedError as exc:
        echo(f"   the server reset the connection after {exc.chunks} chunks: {type(exc).__name__}")
        echo(f"   partial_text={exc.partial_text!r} (the caller saw {''.join(received)!r}; nothing cached)")
    else:
        echo("   unexpected: the cut stream ended without an error")
    server.script(Reply.stream(_STORY[:3], finish_reason=None, usage=False, ending="stall"), match="demo-stall")
    start = time.perf_counter()
    try:
        with client.stream("Tell me more", model="local/demo-stall", options={"stream": {"idle_timeout": 0.5}}) as s:
            for _ in s:
                pass
    except StreamIdleTimeoutError as exc:
        waited = time.perf_counter() - start
        echo(f"   a stall after {exc.chunks} chunks: {type(exc).__name__} after {waited:.1f} s (idle_timeout 0.5 s),")
        echo(f"   partial_text={exc.partial_text!r}; the connection was closed, the pool slot freed")
