"""Issue 9 item 7: nothing reachable from a modelwire error carries the API key.

``raise ... from None`` hides the chain in a traceback but keeps ``__context__``: the raw
litellm/openai exception, whose text (when the server echoes the key) and
``response.request.headers["authorization"]`` hold the key. Error reporters walk that chain, so
the test walks it too: ``__cause__``, ``__context__``, every attribute (``vars()``, slots,
``args``), containers, and response/request/headers objects, recursively.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import modelwire
from modelwire.testing import FakeServer, Reply

from ..conftest import SENTINEL_KEY
from .test_stream_wire import chunk

ECHO = f"Incorrect API key provided: {SENTINEL_KEY}. You can find your API key at https://x/account/api-keys."
_ATTRS = ("response", "request", "headers", "body", "message", "text", "url", "_request", "_response")


def reachable(root: object, limit: int = 5000) -> Iterator[object]:
    """Every object reachable from ``root`` through exception links, attributes and containers."""
    seen: set[int] = set()
    todo: list[tuple[object, int]] = [(root, 0)]
    while todo and len(seen) < limit:
        obj, depth = todo.pop()
        if id(obj) in seen or depth > 12:
            continue
        seen.add(id(obj))
        yield obj
        if isinstance(obj, (str, bytes, int, float, bool, type(None), type)):
            continue
        nxt: list[object] = []
        if isinstance(obj, BaseException):
            nxt += [obj.__cause__, obj.__context__, *obj.args]
        if isinstance(obj, dict):
            nxt += [*obj.keys(), *obj.values()]
        elif isinstance(obj, (list, tuple, set, frozenset)):
            nxt += list(obj)
        try:
            nxt += list(vars(obj).values())
        except TypeError:
            pass
        for name in getattr(type(obj), "__slots__", ()):
            nxt.append(getattr(obj, name, None))
        for name in _ATTRS:
            try:
                nxt.append(getattr(obj, name, None))
            except Exception:  # a lazy property may refuse (an httpx response without a request)
                pass
        items = getattr(obj, "items", None)
        if callable(items) and not isinstance(obj, dict):
            try:
                nxt += [v for pair in items() for v in pair]
            except Exception:
                pass
        todo += [(n, depth + 1) for n in nxt if n is not None]


def leaks(error: BaseException) -> list[str]:
    found = []
    for obj in reachable(error):
        for text in (_safe(repr, obj), _safe(str, obj)):
            if SENTINEL_KEY in text:
                found.append(f"{type(obj).__module__}.{type(obj).__name__}: {text[:160]}")
    return found


def _safe(fn: Any, obj: object) -> str:
    try:
        return str(fn(obj))
    except Exception:
        return ""


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (Reply.error(401, ECHO, type="invalid_request_error", code="invalid_api_key"), modelwire.AuthenticationError),
        (Reply.error(500, f"upstream failed for Bearer {SENTINEL_KEY}"), modelwire.ServerError),
        (Reply(body={"late": True}, delay=3.0), modelwire.ProviderTimeoutError),
    ],
    ids=["401-echo", "500", "timeout"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_nothing_reachable_from_the_error_holds_the_key(
    make_client: Any, server: FakeServer, reply: Reply, expected: type[Exception], stream: bool
) -> None:
    if stream and reply.delay:
        reply = Reply(events=[chunk("late", "stop")], delay=3.0)
    server.script(reply)
    client = make_client(providers={"openai": {"api_base": server.openai_url, "timeout": 0.5}})
    with pytest.raises(modelwire.ModelwireError) as info:
        if stream:
            async for _ in client.astream("hi", model="openai/gpt-4o", options={"stream": {"first_token_timeout": 30}}):
                pass
        else:
            await client.acomplete("hi", model="openai/gpt-4o")
    error = info.value
    assert isinstance(error, expected) or (stream and isinstance(error, modelwire.StreamInterruptedError)), error
    assert SENTINEL_KEY in server.requests[0].headers["authorization"]  # the key was really in use
    assert error.__context__ is None and error.__cause__ is None
    assert leaks(error) == []


@pytest.mark.parametrize(
    "reply",
    [
        Reply(events=[chunk("partial")], ending="abort"),
        Reply(events=[chunk("a"), {"error": {"message": f"mid-stream failure {SENTINEL_KEY}", "type": "server_error"}}],
              ending="eof"),
        Reply(events=[chunk("a"), '{"choices": [' + SENTINEL_KEY]),
    ],
    ids=["reset", "error-event", "bad-json"],
)
async def test_stream_failures_hold_no_key(make_client: Any, server: FakeServer, reply: Reply) -> None:
    server.script(reply)
    client = make_client(middleware=["retry"], retry={"base_delay": 0})
    with pytest.raises(modelwire.ProviderError) as info:
        async for _ in client.astream("hi", model="openai/gpt-4o"):
            pass
    assert info.value.__context__ is None and info.value.__cause__ is None
    assert leaks(info.value) == []


def test_the_walk_finds_a_key_in_a_chain() -> None:
    # negative control: the walker does see a key held by a context's response headers
    class Response:
        def __init__(self) -> None:
            self.headers = {"authorization": f"Bearer {SENTINEL_KEY}"}

    inner = RuntimeError("raw")
    inner.response = Response()  # type: ignore[attr-defined]
    try:
        try:
            raise inner
        except RuntimeError:
            raise modelwire.ProviderError("mapped") from None
    except modelwire.ProviderError as exc:
        assert leaks(exc) != []
