"""Turn the JSON of one chat-completion stream event into :class:`~modelwire.Chunk` objects.

Works on plain dicts (``json.loads`` output), not on pydantic models: a stream of 100k events
must not pay a model validation per event. Shapes accepted, from the reliability matrix:

- OpenAI chunks, the ``choices: []`` usage chunk (P7), usage on every chunk (vLLM, S23: the last
  value wins, it is cumulative), usage on the finish chunk or with ``choices`` null/missing and an
  extra ``timings`` object (llama.cpp, S24);
- Azure annotation chunks: ``prompt_filter_results`` with ``choices: []`` and ``id: ""``, choices
  without ``delta`` that carry ``content_filter_results`` / ``content_filter_offsets`` (S02, S03);
  their content goes to :attr:`Chunk.metadata`, never to the text;
- error events: ``{"error": {...}}`` (OpenAI, llama.cpp, LM Studio) and vLLM's top-level
  ``{"object": "error", ...}`` become the mapped :class:`~modelwire.ModelwireError` (S12-S14).

Anything else that is not a JSON object of that shape is a :class:`~modelwire.StreamProtocolError`:
a malformed event is never dropped silently (S19).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from modelwire.errors import ModelwireError, StreamInterruptedError, StreamProtocolError
from modelwire.types import Chunk, ToolCallDelta, Usage

from .status import error_for_status

__all__ = ["DONE", "EventParser"]

#: Returned by :meth:`EventParser.parse` for the ``[DONE]`` sentinel.
DONE: list[Chunk] = []

# Delta and choice fields that are not text but that a caller may want (reasoning models, Azure).
_DELTA_EXTRAS = ("reasoning_content", "reasoning", "refusal")
_CHOICE_EXTRAS = ("content_filter_results", "content_filter_offsets", "logprobs")
# error.type values that tell the HTTP status the server would have sent before streaming.
_TYPE_STATUS = {
    "server_error": 500,
    "internal_server_error": 500,
    "service_unavailable_error": 503,
    "invalid_request_error": 400,
    "badrequesterror": 400,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "authentication_error": 401,
    "not_found_error": 404,
}


class EventParser:
    """Parses events of one stream; ``provider``/``model``/``headers`` label the errors it raises."""

    __slots__ = ("headers", "model", "provider", "request_id")

    def __init__(self, provider: str, model: str, headers: Mapping[str, str], request_id: str | None) -> None:
        self.provider = provider
        self.model = model
        self.headers = headers
        self.request_id = request_id

    def parse(self, data: str, event: str | None = None) -> list[Chunk]:
        """Chunks for one event (often none: a role-only delta carries nothing); :data:`DONE` for ``[DONE]``."""
        if data.startswith("[DONE]"):
            return DONE
        try:
            obj = json.loads(data)
        except ValueError:
            raise self.protocol_error(f"malformed JSON in a stream event: {data[:120]!r}") from None
        if not isinstance(obj, dict):
            raise self.protocol_error(f"a stream event is not a JSON object: {data[:120]!r}")
        if obj.get("error") or obj.get("object") == "error" or event == "error":
            raise self.error_event(obj)
        return self.chunks(obj)

    def chunks(self, obj: dict[str, Any]) -> list[Chunk]:
        choices = obj.get("choices")
        out: list[Chunk] = []
        if choices:
            if not isinstance(choices, list):
                raise self.protocol_error(f"'choices' is a {type(choices).__name__}, not a list")
            for choice in choices:
                chunk = self._choice(choice)
                if chunk is not None:
                    out.append(chunk)
        prompt_filter = obj.get("prompt_filter_results")
        if prompt_filter is not None:
            if not out:
                out.append(Chunk())
            out[0].metadata["prompt_filter_results"] = prompt_filter
        usage = obj.get("usage")
        if usage:
            parsed = Usage.from_dict(usage)
            if parsed is None:
                raise self.protocol_error(f"'usage' is a {type(usage).__name__}, not an object")
            if out:
                out[-1].usage = parsed
            else:
                out.append(Chunk(usage=parsed))
        return out

    def _choice(self, choice: Any) -> Chunk | None:
        if not isinstance(choice, dict):
            raise self.protocol_error(f"a choice is a {type(choice).__name__}, not an object")
        delta = choice.get("delta")
        text = ""
        tool_calls: list[ToolCallDelta] = []
        metadata: dict[str, Any] = {}
        if delta:
            if not isinstance(delta, dict):
                raise self.protocol_error(f"'delta' is a {type(delta).__name__}, not an object")
            content = delta.get("content")
            if content:
                if not isinstance(content, str):
                    raise self.protocol_error(f"'delta.content' is a {type(content).__name__}, not a string")
                text = content
            raw_calls = delta.get("tool_calls")
            if raw_calls:
                tool_calls = self._tool_calls(raw_calls)
            if len(delta) > 2 or not (text or raw_calls):  # look for the rarer fields
                for key in _DELTA_EXTRAS:
                    value = delta.get(key)
                    if value:
                        metadata[key] = value
        finish = choice.get("finish_reason")
        if len(choice) > 3 or delta is None:
            for key in _CHOICE_EXTRAS:
                value = choice.get(key)
                if value is not None:
                    metadata[key] = value
        if not (text or tool_calls or finish or metadata):
            return None  # role-only or empty deltas carry nothing a caller needs
        if finish is not None and not isinstance(finish, str):
            raise self.protocol_error(f"'finish_reason' is a {type(finish).__name__}, not a string")
        index = choice.get("index") or 0
        if metadata:
            return Chunk(text, tool_calls, finish, None, index, False, metadata)
        return Chunk(text, tool_calls, finish, None, index)

    def _tool_calls(self, raw: Any) -> list[ToolCallDelta]:
        if not isinstance(raw, list):
            raise self.protocol_error(f"'tool_calls' is a {type(raw).__name__}, not a list")
        calls = []
        for position, call in enumerate(raw):
            if not isinstance(call, dict):
                raise self.protocol_error("a tool_calls entry is not an object")
            function = call.get("function") or {}
            arguments = function.get("arguments") or ""
            if not isinstance(arguments, str):
                arguments = json.dumps(arguments)  # some local servers send the object itself
            index = call.get("index")
            calls.append(
                ToolCallDelta(
                    index=index if isinstance(index, int) else position,
                    id=call.get("id") or None,
                    name=function.get("name") or None,
                    arguments=arguments,
                )
            )
        return calls

    # -- errors ----------------------------------------------------------------------------------

    def protocol_error(self, message: str) -> StreamProtocolError:
        return StreamProtocolError(message, provider=self.provider, model=self.model, request_id=self.request_id)

    def interrupted(
        self, message: str, cls: type[StreamInterruptedError] = StreamInterruptedError
    ) -> StreamInterruptedError:
        return cls(message, provider=self.provider, model=self.model, request_id=self.request_id)

    def error_event(self, obj: dict[str, Any]) -> ModelwireError:
        """The error a server reported inside a 200 stream, mapped like an HTTP error."""
        err = obj.get("error")
        if not isinstance(err, dict):
            # vLLM's top-level form, LM Studio's {"error": "text", "message": ...}, or a bare string.
            err = {k: v for k, v in obj.items() if k not in ("object", "error")} | (
                {"message": err} if isinstance(err, str) else {}
            )
        message = str(err.get("message") or obj.get("message") or "the server reported an error inside the stream")
        code, kind = err.get("code"), err.get("type")
        status = code if isinstance(code, int) and 100 <= code < 600 else None
        if status is None and isinstance(code, str) and code.isdigit():
            status = int(code)
        if status is None and isinstance(kind, str):
            status = _TYPE_STATUS.get(kind.lower())
        extras = {k: v for k, v in err.items() if k != "message" and isinstance(v, (str, int, float)) and v != ""}
        detail = ", ".join(f"{k}={v}" for k, v in extras.items())
        text = f"{message} ({detail}; sent inside the stream)" if detail else f"{message} (sent inside the stream)"
        return error_for_status(status, self.headers, text[:400], None, provider=self.provider, model=self.model)
