"""A loopback OpenAI- and Azure-compatible HTTP server that can also misbehave.

It is a raw asyncio HTTP/1.1 server (no framework, so it can lie): it records every request,
answers chat completions (OpenAI ``/v1/chat/completions``, Azure
``/openai/deployments/<d>/chat/completions?api-version=...``), embeddings (``/v1/embeddings``,
``/openai/deployments/<d>/embeddings``: :func:`fake_vector` of each text) and model listings,
and plays scripted :class:`Reply` objects first. It runs on its own event loop in a daemon thread, so sync
code, async code and other processes can all talk to it.

>>> with FakeServer() as server:
...     server.script(Reply.error(500), Reply.completion("hi"))
...     # the next chat request gets a 500, the one after it "hi", later ones an echo
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

__all__ = ["FakeServer", "Pause", "RecordedRequest", "Reply", "fake_vector"]

Ending = Literal["done", "eof", "close", "abort", "stall"]


@dataclass(frozen=True)
class Pause:
    """In :attr:`Reply.events`: wait this many seconds before the next event."""

    seconds: float


@dataclass
class Reply:
    """One scripted answer.

    :param status: HTTP status.
    :param body: a dict (sent as JSON), str or bytes; ignored when ``events`` is set.
    :param headers: extra response headers.
    :param events: makes the reply an SSE stream: a dict is sent as ``data: <json>``, a str as
        ``data: <str>``, bytes as they are (any framing, comments, bad bytes), :class:`Pause` waits.
    :param delay: seconds to wait before sending the status line (a stall before headers).
    :param event_delay: seconds to wait before each event.
    :param ending: how the body ends: ``done`` (``data: [DONE]`` then a proper end), ``eof`` (a
        proper end of the chunked body without ``[DONE]``), ``close`` (FIN without the chunked
        terminator), ``abort`` (TCP reset), ``stall`` (send nothing more until the client leaves).
    :param content_length: a Content-Length to announce instead of the real one (a short body).
    :param drip: for a whole (non-stream) body: send it one byte at a time, this many seconds
        apart (a trickle that no per-read timeout ever catches).
    :param close_after: after a response that ended properly, wait this many seconds, then close
        the socket without reading anything more and without having announced it (no
        ``Connection: close``): a request the client sent on that pooled connection meanwhile is lost.
    """

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    events: list[Any] | None = None
    delay: float = 0.0
    event_delay: float = 0.0
    ending: Ending = "done"
    content_length: int | None = None
    drip: float = 0.0
    close_after: float | None = None

    @classmethod
    def completion(
        cls,
        text: str = "Hello from the modelwire test server.",
        *,
        finish_reason: str | None = "stop",
        usage: dict[str, int] | None = None,
        model: str = "test-model",
        tool_calls: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """A whole ``chat.completion`` body."""
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if tool_calls:
            message["tool_calls"] = tool_calls
        return cls(
            body={
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
                "usage": usage or _usage(text),
            },
            headers=dict(headers or {}),
        )

    @classmethod
    def stream(
        cls,
        pieces: Iterable[str] = ("Hello", " from", " the", " stream."),
        *,
        finish_reason: str | None = "stop",
        usage: dict[str, int] | bool = True,
        model: str = "test-model",
        ending: Ending = "done",
        event_delay: float = 0.0,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> Reply:
        """An OpenAI SSE stream: role chunk, one chunk per piece, finish chunk, usage chunk.

        ``tool_calls`` (OpenAI's whole-call dicts) are sent after the text as deltas: one that
        opens each call (index, id, name) and its arguments in two halves.
        """
        pieces = list(pieces)
        events: list[Any] = [_chunk(model, {"role": "assistant", "content": ""})]
        events += [_chunk(model, {"content": p}) for p in pieces]
        for i, call in enumerate(tool_calls or []):
            function = call.get("function") or {}
            start = {"index": i, "id": call.get("id"), "type": "function",
                     "function": {"name": function.get("name"), "arguments": ""}}
            arguments = str(function.get("arguments") or "")
            half = len(arguments) // 2
            events.append(_chunk(model, {"tool_calls": [start]}))
            events += [_chunk(model, {"tool_calls": [{"index": i, "function": {"arguments": part}}]})
                       for part in (arguments[:half], arguments[half:]) if part]
        if finish_reason is not None:
            events.append(_chunk(model, {}, finish_reason))
        if usage:
            usage_body = usage if isinstance(usage, dict) else _usage("".join(pieces))
            events.append({**_chunk(model, {}), "choices": [], "usage": usage_body})
        return cls(events=events, ending=ending, event_delay=event_delay)

    @classmethod
    def json(cls, value: Any, *, stream: bool = False, **kw: Any) -> Reply:
        """An answer whose text is ``value`` as JSON (a structured output), whole or streamed
        in a few pieces; ``kw`` go to :meth:`completion` / :meth:`stream`."""
        text = value if isinstance(value, str) else json.dumps(value)
        if not stream:
            return cls.completion(text, **kw)
        step = max(1, len(text) // 4)
        return cls.stream([text[i:i + step] for i in range(0, len(text), step)], **kw)

    @classmethod
    def embeddings(cls, texts: list[str], *, model: str = "test-embedding", dimensions: int = 8) -> Reply:
        """An OpenAI ``embedding`` list: :func:`fake_vector` of each text, one token per word."""
        data = [
            {"object": "embedding", "index": i, "embedding": fake_vector(t, dimensions)} for i, t in enumerate(texts)
        ]
        tokens = sum(max(1, len(t.split())) for t in texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return cls(body={"object": "list", "data": data, "model": model, "usage": usage})

    @classmethod
    def error(
        cls,
        status: int,
        message: str = "The server had an error while processing your request.",
        *,
        type: str | None = "server_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """An OpenAI-shaped error body."""
        err = {"message": message, "type": type, "param": None, "code": code}
        return cls(status=status, body={"error": err}, headers=dict(headers or {}))


@dataclass
class RecordedRequest:
    """One request as the server saw it. ``time`` is ``time.monotonic()`` at arrival."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    time: float

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def route(self) -> str:
        if self.path.endswith("/chat/completions"):
            return "chat"
        if self.path.endswith("/embeddings"):
            return "embeddings"
        return "models" if self.path.endswith("/models") else "other"


class FakeServer:
    """The server; use as a context manager or call :meth:`start` / :meth:`stop`.

    :param api_key: when set, requests must carry it (``Authorization: Bearer`` or ``api-key``),
        else they get a 401 like OpenAI's.
    """

    def __init__(self, api_key: str | None = None, host: str = "127.0.0.1") -> None:
        self.api_key = api_key
        #: Azure api-versions to accept; None accepts any (a missing one is always a 404).
        self.api_versions: set[str] | None = None
        self.host = host
        self.port = 0
        self.requests: list[RecordedRequest] = []
        self.disconnects = 0
        self.open_connections = 0
        #: Requests being answered right now, and the most seen at once (reset by :meth:`reset`).
        self.in_flight = 0
        self.max_in_flight = 0
        #: Seconds the built-in embeddings answer waits before replying (to observe concurrency).
        self.embed_delay = 0.0
        self._scripts: list[tuple[str | None, deque[Reply]]] = []
        #: ``(n, seconds)``: a chat request arriving when more than ``n`` arrived within the last
        #: ``seconds`` (itself included) gets a 429, like Azure's short enforcement windows.
        self.rate_limit: tuple[int, float] | None = None
        self.rate_limited = 0
        #: Answers chat requests that no script matched; None from it (or no responder) means the
        #: echo. ``python -m modelwire.testing`` and the pytest plugin put the fault table here.
        self.responder: Callable[[RecordedRequest], Reply | None] | None = None
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> FakeServer:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, self.host, self.port)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop = self._loop
            try:
                loop.run_forever()
            finally:  # the tasks stop() cancelled finish, then the loop is closed (no ResourceWarning)
                pending = asyncio.all_tasks(loop)
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.close()

        self._thread = threading.Thread(target=run, name="modelwire-fake-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        async def shutdown() -> None:
            server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        self._loop = self._server = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL without a path, e.g. ``http://127.0.0.1:40123`` (Azure's endpoint form)."""
        return f"http://{self.host}:{self.port}"

    @property
    def openai_url(self) -> str:
        """The OpenAI-style ``api_base``: :attr:`url` + ``/v1``."""
        return self.url + "/v1"

    # -- scripting and inspection --------------------------------------------------------------

    def script(self, *replies: Reply, match: str | None = None) -> None:
        """Queue replies for the next chat requests; with ``match``, only for requests whose
        path or model contains that string. Unscripted requests get an echo of the prompt."""
        with self._lock:
            self._scripts.append((match, deque(replies)))

    def reset(self) -> None:
        """Forget scripts, recorded requests and counters."""
        with self._lock:
            self._scripts.clear()
            self.requests.clear()
            self.disconnects = 0
            self.max_in_flight = 0

    def calls(self, route: str = "chat") -> int:
        """How many requests reached ``route`` (``chat``, ``embeddings``, ``models`` or ``other``)."""
        with self._lock:
            return sum(1 for r in self.requests if r.route == route)

    def _next_reply(self, req: RecordedRequest) -> Reply | None:
        model = str((req.json or {}).get("model", "")) if req.route in _SCRIPTED else ""
        with self._lock:
            for match, queue in self._scripts:
                if queue and (match is None or match in req.path or match in model):
                    return queue.popleft()
        return None

    # -- HTTP ------------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_connections += 1
        try:
            while True:
                req = await self._read_request(reader)
                if req is None:
                    break
                with self._lock:
                    self.requests.append(req)
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                try:
                    answered = await self._respond(req, writer, reader)
                finally:
                    self.in_flight -= 1
                if not answered:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            self.disconnects += 1
        except asyncio.CancelledError:
            pass
        finally:
            self.open_connections -= 1
            if not writer.is_closing():
                writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> RecordedRequest | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        parts = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        return RecordedRequest(method, parts.path, query, headers, body, time.monotonic())

    async def _respond(
        self, req: RecordedRequest, writer: asyncio.StreamWriter, reader: asyncio.StreamReader
    ) -> bool:
        reply = self._builtin_reply(req)
        if reply is None and req.route == "chat" and self.rate_limit is not None:
            reply = self._over_rate(req, *self.rate_limit)
        if reply is None:
            reply = self._next_reply(req) if req.route in _SCRIPTED else None
        if reply is None and req.route == "chat" and self.responder is not None:
            reply = self.responder(req)
        if reply is None:
            reply = self._echo(req)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.events is None:
            return await self._send_whole(reply, writer)
        return await self._send_stream(reply, writer, reader)

    def _over_rate(self, req: RecordedRequest, limit: int, seconds: float) -> Reply | None:
        with self._lock:
            recent = sum(1 for r in self.requests if r.route == "chat" and req.time - seconds < r.time <= req.time)
        if recent <= limit:
            return None
        self.rate_limited += 1
        message = f"Requests have exceeded the rate limit of {limit} per {seconds} s."
        return Reply.error(429, message, type="rate_limit_error", code="429", headers={"retry-after": "1"})

    def _builtin_reply(self, req: RecordedRequest) -> Reply | None:
        """Auth and Azure URL rules, answered the way the real services answer."""
        azure = req.path.startswith("/openai/")
        version = req.query.get("api-version")
        if azure and (version is None or (self.api_versions is not None and version not in self.api_versions)):
            return Reply(404, {"error": {"code": "404", "message": "Resource not found"}})
        if self.api_key is not None:
            given = req.headers.get("api-key") if azure else req.headers.get("authorization", "")[7:]
            if given != self.api_key:
                msg = "Incorrect API key provided. You can find your API key in your account settings."
                return Reply.error(401, msg, type="invalid_request_error", code="invalid_api_key")
        if req.route == "models":
            return Reply(body={"object": "list", "data": [{"id": "test-model", "object": "model"}]})
        if req.route == "other":
            return Reply.error(404, f"Unknown path {req.path}", type="invalid_request_error")
        return None

    def _echo(self, req: RecordedRequest) -> Reply:
        body = req.json or {}
        if req.route == "embeddings":
            texts = body.get("input")
            texts = [texts] if isinstance(texts, str) else [str(t) for t in texts or []]
            reply = Reply.embeddings(texts, model=str(body.get("model", "test-embedding")),
                                     dimensions=int(body.get("dimensions") or 8))
            reply.delay = self.embed_delay
            return reply
        user = [m for m in body.get("messages", []) if m.get("role") == "user"]
        content = user[-1].get("content") if user else ""
        text = f"echo: {content if isinstance(content, str) else json.dumps(content)}"
        model = str(body.get("model", "test-model"))
        if body.get("stream"):
            words = text.split(" ")
            pieces = [words[0]] + [" " + w for w in words[1:]]
            include = bool((body.get("stream_options") or {}).get("include_usage"))
            return Reply.stream(pieces, usage=include, model=model)
        return Reply.completion(text, model=model)

    async def _send_whole(self, reply: Reply, writer: asyncio.StreamWriter) -> bool:
        body = reply.body
        if isinstance(body, (dict, list)):
            data, ctype = json.dumps(body).encode(), "application/json"
        else:
            data = body.encode() if isinstance(body, str) else (body or b"")
            ctype = "text/html" if data.lstrip().startswith(b"<") else "text/plain"
        headers = {
            "content-type": ctype,
            "content-length": str(reply.content_length if reply.content_length is not None else len(data)),
            "x-request-id": f"req-{len(self.requests)}",
            **reply.headers,
        }
        if reply.drip:
            writer.write(_head(reply.status, headers))
            for i in range(len(data)):
                await asyncio.sleep(reply.drip)
                writer.write(data[i : i + 1])
                await writer.drain()
            return True
        writer.write(_head(reply.status, headers) + data)
        await writer.drain()
        if reply.content_length is not None and reply.content_length > len(data):
            writer.close()
            return False
        return True

    async def _send_stream(
        self, reply: Reply, writer: asyncio.StreamWriter, reader: asyncio.StreamReader
    ) -> bool:
        headers = {
            "content-type": "text/event-stream",
            "transfer-encoding": "chunked",
            "x-request-id": f"req-{len(self.requests)}",
            **reply.headers,
        }
        writer.write(_head(reply.status, headers))
        await writer.drain()
        events = list(reply.events or [])
        if reply.ending == "done":
            events.append("[DONE]")
        for event in events:
            if isinstance(event, Pause):
                await asyncio.sleep(event.seconds)
                continue
            if reply.event_delay:
                await asyncio.sleep(reply.event_delay)
            if isinstance(event, bytes):
                frame = event
            else:
                payload = event if isinstance(event, str) else json.dumps(event)
                frame = f"data: {payload}\n\n".encode()
            writer.write(b"%x\r\n%s\r\n" % (len(frame), frame))
            await writer.drain()
        if reply.ending in ("done", "eof"):
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            if reply.close_after is None:
                return True
            await asyncio.sleep(reply.close_after)
        if reply.ending == "abort":
            writer.transport.abort()
        elif reply.ending == "stall":
            await reader.read()  # returns when the client goes away
            self.disconnects += 1
        writer.close()
        return False


def fake_vector(text: str, dimensions: int = 8) -> list[float]:
    """The test server's embedding of ``text``: ``dimensions`` floats in [-1, 1] from its SHA-256."""
    out: list[float] = []
    counter = 0
    while len(out) < dimensions:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        out += [round(b / 127.5 - 1.0, 6) for b in digest]
        counter += 1
    return out[:dimensions]


#: Routes whose requests take scripted replies (``script(..., match="/embeddings")`` for embeddings only).
_SCRIPTED = ("chat", "embeddings")


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _usage(text: str) -> dict[str, int]:
    completion = max(1, len(text.split()))
    return {"prompt_tokens": 10, "completion_tokens": completion, "total_tokens": 10 + completion}


def _chunk(model: str, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        "usage": None,
    }


_REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    408: "Request Timeout", 409: "Conflict", 422: "Unprocessable Entity", 429: "Too Many Requests",
    500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}
