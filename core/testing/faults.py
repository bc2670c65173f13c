"""Misbehaviour chosen by model name, so a fault can be provoked from outside the test process.

:class:`FakeServer` plays scripted replies first; a server whose ``responder`` is a
:class:`Faults` answers the remaining chat requests by the model name they ask for::

    modelwire complete "hi" --model local/fail-429     # -> RateLimitError, retry_after = 1.0

Every other model name gets the server's echo. For Azure the deployment name counts as the model.
The names and what they do are in :data:`FAULTS` (``python -m modelwire.testing`` prints them).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from .server import RecordedRequest, Reply

__all__ = ["FAULTS", "Fault", "Faults", "model_of"]


@dataclass(frozen=True)
class Fault:
    """One named fault: ``reply(stream)`` builds the answer for a whole or a streamed request."""

    description: str
    reply: Callable[[bool], Reply]


def _error(status: int, message: str, type: str, code: str | None = None, **headers: str) -> Callable[[bool], Reply]:
    # Errors come before any body, so whole and streamed requests get the same answer.
    return lambda stream: Reply.error(status, message, type=type, code=code, headers=headers)


def _tool_call(stream: bool) -> Reply:
    if not stream:
        function = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
        call = {"id": "call_1", "type": "function", "function": function}
        return Reply.completion("", finish_reason="tool_calls", tool_calls=[call])
    start = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    parts = [{"index": 0, "function": {"arguments": piece}} for piece in ('{"city": ', '"Paris"}')]
    events = [_delta({"role": "assistant", "tool_calls": [start]})]
    events += [_delta({"tool_calls": [part]}) for part in parts]
    events.append(_delta({}, "tool_calls"))
    return Reply(events=events)


def _delta(delta: dict[str, object], finish_reason: str | None = None) -> dict[str, object]:
    return {"id": "chatcmpl-fault", "object": "chat.completion.chunk", "created": 0, "model": "tool-call",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


_WORDS = ("This", " answer", " is", " cut", " short", " here")

def _slow(stream: bool) -> Reply:
    reply = Reply.stream(_WORDS) if stream else Reply.completion("".join(_WORDS))
    reply.delay = 3.0
    return reply


#: The fault names a model can carry, in the order ``python -m modelwire.testing`` lists them.
FAULTS: dict[str, Fault] = {
    "fail-400": Fault("400 invalid request -> BadRequestError",
                      _error(400, "Invalid value for 'temperature'.", "invalid_request_error")),
    "fail-401": Fault("401 bad key -> AuthenticationError",
                      _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")),
    "fail-403": Fault("403 no access to the model -> PermissionDeniedError",
                      _error(403, "Project does not have access to this model.", "invalid_request_error")),
    "fail-404": Fault("404 unknown model -> NotFoundError",
                      _error(404, "The model does not exist.", "invalid_request_error", "model_not_found")),
    "fail-429": Fault("429 with Retry-After: 1 -> RateLimitError (retried by the retry middleware)",
                      _error(429, "Rate limit reached. Please try again in 1s.", "requests", "rate_limit_exceeded",
                             **{"retry-after": "1"})),
    "quota": Fault("429 insufficient_quota -> QuotaExceededError (never retried)",
                   _error(429, "You exceeded your current quota.", "insufficient_quota", "insufficient_quota")),
    "fail-500": Fault("500 -> ServerError", _error(500, "The server had an error.", "server_error")),
    "fail-503": Fault("503 overloaded -> ServiceUnavailableError",
                      _error(503, "The server is overloaded.", "service_unavailable_error", "server_is_overloaded")),
    "context-window": Fault("400 context_length_exceeded -> ContextWindowExceededError",
                            _error(400, "This model's maximum context length is 8192 tokens.",
                                   "invalid_request_error", "context_length_exceeded")),
    "flaky": Fault("every odd request to this model gets a 500, every even one the echo", lambda stream: Reply()),
    "length": Fault("answers with finish_reason 'length' (a truncated answer)",
                    lambda stream: Reply.stream(_WORDS, finish_reason="length") if stream
                    else Reply.completion("".join(_WORDS), finish_reason="length")),
    "tool-call": Fault("asks to call get_weather(city='Paris'); streamed as tool-call deltas", _tool_call),
    "slow": Fault("waits 3 s before answering (try a provider timeout below that)", _slow),
    "stall": Fault("streamed: one word, then nothing; whole: no answer at all (until the client leaves)",
                   lambda stream: Reply(events=[_delta({"content": _WORDS[0]})], ending="stall") if stream
                   else Reply(delay=3600.0)),
    "stream-cut": Fault("the connection is reset mid-answer -> StreamInterruptedError / ProviderConnectionError",
                        lambda stream: Reply.stream(_WORDS, finish_reason=None, usage=False, ending="abort")
                        if stream else Reply(body=Reply.completion("cut").body, content_length=10_000)),
}


def model_of(req: RecordedRequest) -> str:
    """The model a chat request asks for: the body's ``model``, else the Azure deployment."""
    body = req.json if req.body else None
    model = body.get("model") if isinstance(body, dict) else None
    if isinstance(model, str) and model:
        return model
    parts = req.path.split("/")
    return parts[3] if req.path.startswith("/openai/deployments/") and len(parts) > 3 else ""


class Faults:
    """A ``FakeServer.responder`` that answers :data:`FAULTS` model names; thread-safe."""

    def __init__(self) -> None:
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, req: RecordedRequest) -> Reply | None:
        name = model_of(req)
        fault = FAULTS.get(name)
        if fault is None:
            return None
        if name == "flaky":
            with self._lock:
                self._seen[name] += 1
                odd = self._seen[name] % 2 == 1
            return Reply.error(500, "The server had an error (flaky).", type="server_error") if odd else None
        body = req.json if req.body else None
        return fault.reply(bool(isinstance(body, dict) and body.get("stream")))
