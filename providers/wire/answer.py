"""Whole answers (completions and embeddings) from their JSON, and the checks made on them.

The direct route parses the body itself (:func:`completion_from_json`); the litellm route hands
litellm's objects to the same embeddings reader and truncation check, so both report the same
usage, vectors and warnings for the same answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from modelwire.errors import InvalidResponseError, ModelwireError
from modelwire.log import logger
from modelwire.tools import ToolCall
from modelwire.types import Completion, Embeddings, Request, Usage

from .status import error_in_200, no_choices_error, not_json_200

__all__ = ["RawResponse", "completion_from_json", "embeddings_from", "excerpt", "parse_body", "warn_if_truncated"]

#: Finish reasons some OpenAI-compatible servers send, as litellm normalises them.
_FINISH = {"eos": "stop", "eos_token": "stop", "stop_sequence": "stop", "end_turn": "stop", "max_tokens": "length",
           "tool_use": "tool_calls"}


class RawResponse(dict):  # type: ignore[type-arg]
    """The provider's JSON body, plus the response headers where litellm keeps them
    (``_hidden_params["headers"]``: the rate limiter's ``use_headers`` reads them there)."""

    __slots__ = ("_hidden_params",)

    def __init__(self, body: dict[str, Any], headers: Mapping[str, str]) -> None:
        super().__init__(body)
        self._hidden_params = {"headers": dict(headers)}


def parse_body(
    content: bytes, headers: Mapping[str, str], *, provider: str, model: str, need: str
) -> tuple[dict[str, Any] | None, ModelwireError | None]:
    """The JSON object of a 200 body, or the error it amounts to (not JSON, an error object, no
    ``need`` key: ``"choices"`` or ``"data"``)."""
    text = content.decode("utf-8", "replace")
    try:
        obj = json.loads(content) if content.strip() else None
    except ValueError:
        obj = None
    where: dict[str, Any] = {"provider": provider, "model": model}
    if not isinstance(obj, dict):
        return None, not_json_200(repr(text[:200]), headers, text[:300] or "(empty body)", **where)
    err = obj.get("error")
    if err:
        detail = err if isinstance(err, str) else str((err.get("message") if isinstance(err, dict) else None)
                                                        or obj.get("message") or err)
        code = err.get("code") if isinstance(err, dict) else None
        return None, error_in_200(code, detail[:400], headers, detail[:400], **where)
    if obj.get("object") == "error":
        return None, no_choices_error(None, headers, text[:300], vllm_error=True, **where)
    found = obj.get(need)
    if need == "choices" and not isinstance(found, list):
        detail = f"'choices' is {'missing' if need not in obj else type(found).__name__} (keys: {sorted(obj)[:8]})"
        return None, no_choices_error(detail, headers, text[:300], **where)
    return obj, None


def completion_from_json(
    obj: dict[str, Any], headers: Mapping[str, str], provider: str, request: Request
) -> Completion:
    """A :class:`~modelwire.Completion` from a chat completion body (choices already a list)."""
    choices = obj["choices"]
    first = choices[0] if choices else None
    if not isinstance(first, dict):
        error = no_choices_error(None, headers, excerpt(obj), provider=provider, model=request.model)
        error.attempts = request.attempt
        raise error
    message = first.get("message") or {}
    usage = Usage.from_dict(obj.get("usage"))
    if usage is not None and usage.prompt_tokens:
        warn_if_truncated(provider, request, usage.prompt_tokens)
    finish = first.get("finish_reason")
    content = message.get("content")
    return Completion(
        text=content if isinstance(content, str) else "",
        finish_reason=_FINISH.get(finish, finish) if finish else "stop",  # litellm says "stop" for none
        model=request.model,
        provider=provider,
        usage=usage,
        tool_calls=[ToolCall.from_dict(call) for call in message.get("tool_calls") or ()],
        raw=RawResponse(obj, headers),
    )


def embeddings_from(name: str, request: Request, data: Any, usage: Any, raw: Any) -> Embeddings:
    """:class:`~modelwire.Embeddings` from an embeddings answer's ``data`` and ``usage`` (dicts or
    litellm's objects); vectors in input order, one per text or an error."""
    texts = request.params["input"]
    data = data or []
    vectors: list[list[float] | None] = [None] * len(texts)
    for position, item in enumerate(data):
        index = _get(item, "index", position)
        vector = _get(item, "embedding", None)
        if isinstance(index, int) and 0 <= index < len(texts) and isinstance(vector, list):
            vectors[index] = [float(v) for v in vector]
    if len(data) != len(texts) or any(v is None for v in vectors):
        raise InvalidResponseError(
            f"the provider answered {len(data)} embeddings for {len(texts)} texts",
            provider=name,
            model=request.model,
            status=200,
            body=excerpt(raw),
            attempts=request.attempt,
        )
    prompt = int(_get(usage, "prompt_tokens", 0) or 0)
    total = int(_get(usage, "total_tokens", 0) or prompt)
    return Embeddings(
        vectors=[v for v in vectors if v is not None],
        model=request.model,
        provider=name,
        usage=Usage(prompt, 0, total) if usage is not None else None,
        from_cache=[False] * len(texts),
        raw=raw,
    )


def _get(item: Any, key: str, default: Any) -> Any:
    return item.get(key, default) if isinstance(item, dict) else getattr(item, key, default)


def excerpt(response: Any) -> str:
    """The first 300 characters of a response (a pydantic object, a dict or anything else)."""
    dump = getattr(response, "model_dump_json", None)
    try:
        if dump is not None:
            return str(dump())[:300]
        if isinstance(response, dict):
            return json.dumps(response)[:300]
        return str(response)[:300]
    except Exception:  # an excerpt must never hide the real error
        return type(response).__name__


#: Below this many estimated prompt tokens the estimate is too rough to judge truncation.
_TRUNCATION_MIN_ESTIMATE = 512


def warn_if_truncated(provider: str, request: Request, prompt_tokens: int) -> None:
    """Warn when the provider counted far fewer prompt tokens than the prompt can hold.

    Ollama's OpenAI endpoint silently cuts prompts longer than its context (2048/4096) and answers
    200. Roughly 4 characters make a token in English; a count under a third of that estimate is
    not tokenizer variance. Skipped for small prompts and for 0 (Ollama reports 0 when cached).
    """
    chars = 0
    for message in request.messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(str(part.get("text", ""))) for part in content if isinstance(part, dict))
    estimate = chars // 4
    if estimate >= _TRUNCATION_MIN_ESTIMATE and prompt_tokens * 3 < estimate:
        logger.warning(
            "llm.prompt_truncated_suspected",
            provider=provider,
            model=request.model,
            prompt_tokens=prompt_tokens,
            estimated_prompt_tokens=estimate,
            hint="the server may have cut the prompt to its context size (Ollama does this with 200 OK)",
        )
