"""GenAI semantic conventions: modelwire's requests and outcomes as OpenTelemetry attributes.

Names follow the GenAI conventions as published in opentelemetry-semantic-conventions 0.66b2
(the conventions have since moved to their own repository, semantic-conventions-genai, with the
same names for everything used here). They are spelled out rather than imported: that package
marks them deprecated-in-place and is not a dependency of the ``otel`` extra.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from modelwire.types import Completion, Request

from ..observer import Outcome, error_type

__all__ = [
    "DURATION_BUCKETS",
    "TOKEN_BUCKETS",
    "Target",
    "output_messages",
    "input_messages",
    "request_attributes",
    "response_attributes",
]

OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
ERROR_TYPE = "error.type"
TOKEN_TYPE = "gen_ai.token.type"

#: Bucket boundaries the conventions advise for durations (s) and token counts.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)

#: provider kind -> gen_ai.provider.name; any other kind is reported as configured.
_PROVIDER_NAMES = {"openai": "openai", "azure": "azure.ai.openai"}

#: request parameter -> attribute, for scalar parameters.
_PARAMS = {
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "top_k": "gen_ai.request.top_k",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "seed": "gen_ai.request.seed",
}


class Target:
    """What the conventions say about one configured provider: its ``gen_ai.provider.name`` and
    the server it talks to. Computed once per provider, not per request."""

    __slots__ = ("address", "name", "port")

    def __init__(self, provider: Any) -> None:
        config = getattr(provider, "config", None)
        kind = str(getattr(config, "kind", None) or getattr(provider, "name", "") or "unknown")
        self.name = _PROVIDER_NAMES.get(kind, kind)
        base = getattr(config, "api_base", None) or ("https://api.openai.com/v1" if kind == "openai" else None)
        self.address: str | None = None
        self.port: int | None = None
        if base:
            parts = urlsplit(str(base))
            self.address = parts.hostname
            try:
                self.port = parts.port or (443 if parts.scheme == "https" else 80)
            except ValueError:  # a malformed port: report the host alone
                self.port = None


def operation(request: Request) -> str:
    """``chat`` for completions; an operation a middleware recorded (``embeddings``) otherwise."""
    return str(request.state.get("operation") or "chat")


def metric_attributes(request: Request, target: Target) -> dict[str, Any]:
    """The attributes every metric carries (low cardinality: no ids, no content)."""
    attrs: dict[str, Any] = {OPERATION: operation(request), PROVIDER: target.name, REQUEST_MODEL: request.model}
    if target.address:
        attrs[SERVER_ADDRESS] = target.address
    if target.port:
        attrs[SERVER_PORT] = target.port
    return attrs


def request_attributes(request: Request, target: Target) -> dict[str, Any]:
    """The span's attributes known before the call."""
    attrs = metric_attributes(request, target)
    attrs["gen_ai.request.stream"] = request.stream
    params = request.params
    for key, name in _PARAMS.items():
        value = params.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            attrs[name] = value
    stop = params.get("stop")
    if isinstance(stop, str):
        attrs["gen_ai.request.stop_sequences"] = [stop]
    elif isinstance(stop, (list, tuple)) and all(isinstance(s, str) for s in stop):
        attrs["gen_ai.request.stop_sequences"] = list(stop)
    n = params.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n != 1:
        attrs["gen_ai.request.choice.count"] = n
    return attrs


def _raw_field(response: Completion | None, key: str) -> Any:
    raw = response.raw if response is not None else None
    if isinstance(raw, dict):  # cache hits carry the JSON form
        return raw.get(key)
    return getattr(raw, key, None)


def response_attributes(outcome: Outcome) -> dict[str, Any]:
    """The span's attributes known at the end (response, usage, error)."""
    attrs: dict[str, Any] = {"modelwire.cache.hit": outcome.cached, "modelwire.attempts": outcome.request.attempt}
    response_id = _raw_field(outcome.response, "id")
    if isinstance(response_id, str):
        attrs["gen_ai.response.id"] = response_id
    response_model = _raw_field(outcome.response, "model")
    if isinstance(response_model, str):
        attrs[RESPONSE_MODEL] = response_model
    if outcome.finish_reasons:
        attrs["gen_ai.response.finish_reasons"] = list(outcome.finish_reasons)
    if outcome.stream:
        attrs["modelwire.stream.end_reason"] = outcome.end_reason
        if outcome.first_chunk is not None:
            attrs["gen_ai.response.time_to_first_chunk"] = outcome.first_chunk
    usage = outcome.usage
    if usage is not None:
        attrs["gen_ai.usage.input_tokens"] = usage.prompt_tokens
        attrs["gen_ai.usage.output_tokens"] = usage.completion_tokens
        cached = getattr(usage, "cached_prompt_tokens", None)  # Usage details land in a parallel change
        if isinstance(cached, int):
            attrs["gen_ai.usage.cache_read.input_tokens"] = cached
        reasoning = getattr(usage, "reasoning_tokens", None)
        if isinstance(reasoning, int):
            attrs["gen_ai.usage.reasoning.output_tokens"] = reasoning
    if outcome.error is not None:
        attrs[ERROR_TYPE] = error_type(outcome.error)
        status = getattr(outcome.error, "status", None)
        if isinstance(status, int):
            attrs["modelwire.error.status"] = status
    return attrs


def _parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    if isinstance(content, list):
        return [
            {"type": "text", "content": p.get("text", "")} if isinstance(p, dict) and p.get("type") == "text"
            else {"type": str(p.get("type", "unknown")) if isinstance(p, dict) else "unknown"}
            for p in content
        ]
    return []


def input_messages(request: Request) -> str:
    """``gen_ai.input.messages`` (opt-in content): the request's messages as the conventions'
    JSON shape, role plus text parts (images and other parts by type only)."""
    return json.dumps([{"role": m.get("role"), "parts": _parts(m.get("content"))} for m in request.messages])


def output_messages(outcome: Outcome) -> str | None:
    """``gen_ai.output.messages`` (opt-in content), None when there is no answer."""
    if outcome.text is None or not outcome.ok:
        return None
    message: dict[str, Any] = {"role": "assistant", "parts": [{"type": "text", "content": outcome.text}]}
    if outcome.finish_reasons:
        message["finish_reason"] = outcome.finish_reasons[0]
    return json.dumps([message])
