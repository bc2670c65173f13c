"""Check a request before anything else sees it: every problem is a RequestValidationError
that names what was wrong, raised before any middleware or network call."""

from __future__ import annotations

import json
from typing import Any

from .errors import RequestValidationError

__all__ = ["normalize_messages", "check_serializable"]

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def normalize_messages(prompt_or_messages: Any) -> list[dict[str, Any]]:
    """A prompt string becomes one user message; a list is checked message by message.

    >>> normalize_messages("hi")
    [{'role': 'user', 'content': 'hi'}]
    """
    if isinstance(prompt_or_messages, str):
        if not prompt_or_messages:
            raise RequestValidationError("the prompt is an empty string")
        return [{"role": "user", "content": prompt_or_messages}]
    if not isinstance(prompt_or_messages, list):
        raise RequestValidationError(
            f"messages must be a prompt string or a list of message dicts, got {type(prompt_or_messages).__name__}"
        )
    if not prompt_or_messages:
        raise RequestValidationError("messages is an empty list")
    for i, message in enumerate(prompt_or_messages):
        _check_message(i, message)
    return prompt_or_messages


def _check_message(i: int, message: Any) -> None:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise RequestValidationError(f"{where} must be a dict, got {type(message).__name__}")
    role = message.get("role")
    if role is None:
        raise RequestValidationError(f"{where} has no 'role'")
    if role not in _ROLES:
        raise RequestValidationError(f"{where}.role {role!r} is not one of {', '.join(sorted(_ROLES))}")
    content = message.get("content")
    if content is None:
        if role != "assistant" or not (message.get("tool_calls") or message.get("function_call")):
            raise RequestValidationError(f"{where} ({role}) has no content")
    elif not isinstance(content, (str, list)):
        raise RequestValidationError(
            f"{where}.content must be a string or a list of parts, got {type(content).__name__}"
        )
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise RequestValidationError(f"{where} is a tool message without a 'tool_call_id'")


def check_serializable(messages: list[dict[str, Any]], params: dict[str, Any]) -> int:
    """Check that the payload is strict JSON in valid UTF-8; return its size in bytes.

    NaN/Infinity, objects JSON cannot encode and lone surrogates are refused, naming the field.
    """
    try:
        return len(json.dumps([messages, params], allow_nan=False, ensure_ascii=False).encode("utf-8"))
    except (TypeError, ValueError, UnicodeEncodeError):
        pass
    for label, value in [*((f"messages[{i}]", m) for i, m in enumerate(messages)), *params.items()]:
        try:
            json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise RequestValidationError(f"{label} contains invalid Unicode (a lone surrogate)") from None
        except ValueError:
            raise RequestValidationError(f"{label} contains NaN or Infinity, which JSON cannot carry") from None
        except TypeError as exc:
            raise RequestValidationError(f"{label} is not JSON-serialisable: {exc}") from None
    raise RequestValidationError("the request is not JSON-serialisable")  # pragma: no cover
