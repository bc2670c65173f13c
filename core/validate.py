"""Check a request before anything else sees it: every problem is a RequestValidationError
that names what was wrong, raised before any middleware or network call."""

from __future__ import annotations

import json
from collections.abc import Callable
from operator import is_
from typing import Any

from .errors import RequestValidationError

__all__ = ["Encoded", "check_params", "check_serializable", "encode_request", "normalize_messages"]

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# Roles whose message must say something: an empty or blank one is a bug in the caller's code
# (assistant turns may be empty beside tool calls; a tool may return nothing).
_SPEAKING = frozenset({"system", "developer", "user"})
# Content part types and the field each must carry (OpenAI chat format); other types pass as
# long as they are objects with a 'type' (providers add their own).
_PART_FIELDS = {"text": "text", "image_url": "image_url", "input_audio": "input_audio", "file": "file"}


def normalize_messages(prompt_or_messages: Any) -> list[dict[str, Any]]:
    """A prompt string becomes one user message; a list is checked message by message.

    >>> normalize_messages("hi")
    [{'role': 'user', 'content': 'hi'}]
    """
    if isinstance(prompt_or_messages, str):
        if not prompt_or_messages:
            raise RequestValidationError("the prompt is an empty string")
        if prompt_or_messages.isspace():
            raise RequestValidationError("the prompt is blank (only whitespace)")
        return [{"role": "user", "content": prompt_or_messages}]
    if not isinstance(prompt_or_messages, list):
        raise RequestValidationError(
            f"messages must be a prompt string or a list of message dicts, got {type(prompt_or_messages).__name__}"
        )
    if not prompt_or_messages:
        raise RequestValidationError("messages is an empty list")
    for i, message in enumerate(prompt_or_messages):
        _check_message(i, message)
    _check_tool_flow(prompt_or_messages)
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
    elif isinstance(content, str):
        if role in _SPEAKING and (not content or content.isspace()):
            raise RequestValidationError(f"{where}.content ({role}) is {'blank' if content else 'an empty string'}")
    elif isinstance(content, list):
        _check_parts(where, role, content)
    else:
        raise RequestValidationError(
            f"{where}.content must be a string or a list of parts, got {type(content).__name__}"
        )
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise RequestValidationError(f"{where} is a tool message without a 'tool_call_id'")


def _check_tool_flow(messages: list[dict[str, Any]]) -> None:
    """Assistant ``tool_calls`` entries are whole, and every tool result answers a call made by an
    earlier assistant message: OpenAI answers anything else with a 400 after the request was sent
    (and billed nothing but a round trip); a local server may answer nonsense instead."""
    called: set[str] = set()
    for i, message in enumerate(messages):
        role = message["role"]
        if role == "assistant" and message.get("tool_calls") is not None:
            calls = message["tool_calls"]
            if not isinstance(calls, list):
                raise RequestValidationError(f"messages[{i}].tool_calls must be a list, got {type(calls).__name__}")
            for j, call in enumerate(calls):
                called.add(_check_call(f"messages[{i}].tool_calls[{j}]", call))
        elif role == "tool" and message["tool_call_id"] not in called:
            raise RequestValidationError(
                f"messages[{i}] is a tool result for tool_call_id {message['tool_call_id']!r}, which no earlier "
                "assistant message's tool_calls has"
            )


def _check_call(where: str, call: Any) -> str:
    """The id of one assistant ``tool_calls`` entry in OpenAI's shape."""
    if not isinstance(call, dict):
        hint = " (send ToolCall.to_dict())" if hasattr(call, "to_dict") else ""
        raise RequestValidationError(f"{where} must be a dict (id, type, function){hint}, got {type(call).__name__}")
    if not isinstance(call.get("id"), str) or not call["id"]:
        raise RequestValidationError(f"{where} has no 'id'")
    function = call.get("function")
    if not isinstance(function, dict):
        raise RequestValidationError(f"{where} has no 'function' object")
    if not isinstance(function.get("name"), str) or not function["name"]:
        raise RequestValidationError(f"{where}.function has no 'name'")
    if not isinstance(function.get("arguments"), str):
        kind = type(function.get("arguments")).__name__
        raise RequestValidationError(f"{where}.function.arguments must be a JSON string, got {kind}")
    return str(call["id"])


def _check_parts(where: str, role: str, parts: list[Any]) -> None:
    """Content parts are objects with a ``type``; litellm would fail on anything else while building
    the request (and report it as a retryable connection error)."""
    if not parts:
        raise RequestValidationError(f"{where}.content is an empty list of parts")
    said = False
    for j, part in enumerate(parts):
        at = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise RequestValidationError(
                f"{at} must be a dict such as {{'type': 'text', 'text': ...}}, got {type(part).__name__}: {part!r:.60}"
            )
        kind = part.get("type")
        if not isinstance(kind, str) or not kind:
            raise RequestValidationError(f"{at} has no 'type' (e.g. 'text', 'image_url')")
        field = _PART_FIELDS.get(kind)
        if field is not None and part.get(field) is None:
            raise RequestValidationError(f"{at} is a {kind!r} part without {field!r}")
        if kind == "text":
            text = part["text"]
            if not isinstance(text, str):
                raise RequestValidationError(f"{at}.text must be a string, got {type(text).__name__}")
            said = said or not text.isspace() and bool(text)
        else:
            said = True
    if role in _SPEAKING and not said:
        raise RequestValidationError(f"{where}.content ({role}) has only blank text parts")


# Well-known sampling parameters: (allowed types, lowest, highest). bool is refused where a number
# is expected (True is an int in Python, never a temperature). llama.cpp answers a wrongly typed
# value with a 500, which would be retried as a server error.
_NUMBER = (int, float)
_PARAMS: dict[str, tuple[tuple[type[int] | type[float], ...], float | None, float | None]] = {
    "temperature": (_NUMBER, 0, None),
    "top_p": (_NUMBER, 0, 1),
    "presence_penalty": (_NUMBER, None, None),
    "frequency_penalty": (_NUMBER, None, None),
    "n": ((int,), 1, None),
    "max_tokens": ((int,), 1, None),
    "max_completion_tokens": ((int,), 1, None),
    "seed": ((int,), None, None),
    "top_logprobs": ((int,), 0, None),
}


def check_params(params: dict[str, Any]) -> None:
    """Check the types and ranges of well-known parameters, naming the key.

    ``logit_bias`` keys given as ints (as with the openai SDK) are turned into the strings the wire
    carries anyway (litellm fails on int keys); other keys must be token ids.
    """
    # only the well-known keys the request has (usually two of nine), in _PARAMS order as before
    for key in [k for k in _PARAMS if k in params]:
        types, low, high = _PARAMS[key]
        value = params.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            kind = "an integer" if types == (int,) else "a number"
            raise RequestValidationError(f"parameter {key!r} must be {kind}, got {type(value).__name__}: {value!r:.60}")
        number = float(value)
        if (low is not None and number < low) or (high is not None and number > high):
            bounds = f">= {low}" if high is None else f"between {low} and {high}"
            raise RequestValidationError(f"parameter {key!r} must be {bounds}, got {value!r}")
    stop = params.get("stop")
    if stop is not None and not isinstance(stop, str):
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise RequestValidationError(f"parameter 'stop' must be a string or a list of strings, got {stop!r:.60}")
    if params.get("logit_bias") is not None:
        params["logit_bias"] = _logit_bias(params["logit_bias"])
    headers = params.get("extra_headers")
    if headers is not None:
        pairs = headers.items() if isinstance(headers, dict) else [(None, None)]
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in pairs):
            raise RequestValidationError("parameter 'extra_headers' must be a dict of strings to strings")


def _logit_bias(bias: Any) -> dict[str, Any]:
    if not isinstance(bias, dict):
        kind = type(bias).__name__
        raise RequestValidationError(f"parameter 'logit_bias' must be a dict of token id to bias, got {kind}")
    out: dict[str, Any] = {}
    for token, value in bias.items():
        if isinstance(token, bool) or not isinstance(token, (int, str)) or not str(token).isdigit():
            raise RequestValidationError(f"parameter 'logit_bias' key {token!r} is not a token id (an integer)")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RequestValidationError(
                f"parameter 'logit_bias' value for token {token!r} must be a number, got {type(value).__name__}"
            )
        out[str(token)] = value
    return out


#: Strict JSON, built once (json.dumps with options builds a new encoder per call).
_STRICT = json.JSONEncoder(allow_nan=False, ensure_ascii=False)


def check_serializable(messages: list[dict[str, Any]], params: dict[str, Any]) -> int:
    """Check that the payload is strict JSON in valid UTF-8; return its size in bytes.

    NaN/Infinity, objects JSON cannot encode and lone surrogates are refused, naming the field.
    """
    try:
        return len(_STRICT.encode([messages, params]).encode("utf-8"))
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError):
        pass
    for label, value in [*((f"messages[{i}]", m) for i, m in enumerate(messages)), *params.items()]:
        try:
            json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise RequestValidationError(f"{label} contains invalid Unicode (a lone surrogate)") from None
        except ValueError as exc:
            if "ircular" in str(exc):
                raise RequestValidationError(f"{label} contains itself (a circular reference)") from None
            raise RequestValidationError(f"{label} contains NaN or Infinity, which JSON cannot carry") from None
        except RecursionError:
            raise RequestValidationError(f"{label} is nested too deeply for JSON") from None
        except TypeError as exc:
            raise RequestValidationError(f"{label} is not JSON-serialisable: {exc}") from None
    raise RequestValidationError("the request is not JSON-serialisable")  # pragma: no cover


# The request is encoded once, in the form the cache key hashes (sorted keys, no spaces, UTF-8
# kept), so that a large prompt is not encoded again for the key (issue 14).


def _refuse(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _canonical_strict() -> Callable[[Any], str]:
    """``json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    allow_nan=False).encode``, with its C encoder built once: ``encode`` builds one per call,
    about 2 us of a short request.

    Without the circular-reference check (``markers=None``): a list or dict that holds itself
    raises RecursionError, which :func:`encode_request` hands to the precise check."""
    make = getattr(json.encoder, "c_make_encoder", None)  # not in the stubs: CPython's C accelerator
    if make is None:  # no C accelerator (another interpreter): the stdlib's encoder as it is
        return json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
    encoder = make(None, _refuse, json.encoder.encode_basestring, None, ":", ",", True, False, False)
    return lambda value: "".join(encoder(value, 0))


_CANONICAL_STRICT = _canonical_strict()
#: What the canonical form escapes in a string (``json.encoder.encode_basestring``: the quote,
#: the backslash and the control characters, nothing else since UTF-8 is kept), the likeliest
#: in a prompt first.
_ESCAPED = ["\n", '"', "\\", "\t", "\r", *(c for c in json.encoder.ESCAPE_DCT if c not in "\n\"\\\t\r")]


def _long_string(text: str, out: list[str]) -> None:
    """Append ``encode_basestring(text)`` to ``out``. A long text that holds one kind of escaped
    character at most (often none, or only newlines) is written with one search per escaped
    character and at most one replace, several times faster than the C escaper's per-character
    loop on a prompt of a megabyte; a text holding two kinds or more goes to the C escaper."""
    found = None
    for char in _ESCAPED:
        if char in text:
            if found is not None:
                out.append(json.encoder.encode_basestring(text))
                return
            found = char
    if found is not None:
        text = text.replace(found, json.encoder.ESCAPE_DCT[found])
    out += ('"', text, '"')


#: Values a message may hold for its encoding to be reused: immutable, and never an integral float
#: (which the cache key writes as an integer).
_SCALARS = (str, int, bool, type(None))
#: A message text from which on :func:`_long_string` writes it (below, the C encoder is faster).
_LONG = 16_384
#: Each message with its keys and values, as checked.
_Shape = tuple[tuple[dict[str, Any], tuple[str, ...], tuple[Any, ...]], ...]


class Encoded:
    """The strict JSON of the messages and of the params as :func:`encode_request` checked them,
    kept on the :class:`~modelwire.Request` so that the cache key can reuse them.

    Each part is handed out only while it is provably as it was: the same list of the same dicts
    holding the same immutable values (``shape``), the same params dict with the same plain values,
    so a hook or middleware that changes them in place or replaces them makes the key encode them
    afresh.
    """

    __slots__ = ("_messages", "_messages_json", "_params", "_params_json", "_params_shape", "_shape")

    def __init__(self, messages: list[dict[str, Any]], messages_json: bytes, shape: _Shape | None,
                 params: dict[str, Any], params_json: bytes) -> None:
        self._messages, self._messages_json, self._shape = messages, messages_json, shape
        self._params, self._params_json = params, params_json
        self._params_shape = _plain(params)

    def messages_json(self, messages: list[dict[str, Any]]) -> bytes | None:
        """The UTF-8 canonical JSON of ``messages``, or None when it cannot be proven current."""
        shape = self._shape
        if shape is None or messages is not self._messages or len(messages) != len(shape):
            return None
        for message, (kept, keys, values) in zip(messages, shape, strict=True):
            # identity, not ==: True == 1 and 1 == 1.0, yet each is written differently
            if message is not kept or len(message) != len(keys) or not (
                all(map(is_, message, keys)) and all(map(is_, message.values(), values))
            ):
                return None
        return self._messages_json

    def params_json(self, params: dict[str, Any]) -> bytes | None:
        """The UTF-8 canonical JSON of ``params`` as the cache key writes it, or None when it cannot
        be proven current and plain (nested values and integral floats take the key's own walk)."""
        shape = self._params_shape
        if shape is None or params is not self._params or len(params) != len(shape[0]) or not (
            all(map(is_, params, shape[0])) and all(map(is_, params.values(), shape[1]))
        ):
            return None
        return self._params_json


def _plain(params: dict[str, Any]) -> tuple[tuple[str, ...], tuple[Any, ...]] | None:
    """The params' keys and values when each value is written alike by the strict encoder and the
    cache key (an immutable scalar, never an integral float), else None."""
    for value in params.values():
        kind = type(value)
        if kind not in _SCALARS and (kind is not float or value.is_integer()):
            return None
    return tuple(params), tuple(params.values())


def _shape(messages: list[dict[str, Any]]) -> tuple[_Shape | None, int]:
    """Each message with its keys and values, when all are immutable scalars under string keys
    (else None), and the length of the longest string value."""
    out = []
    longest = 0
    for message in messages:
        for key, value in message.items():
            kind = type(value)
            if type(key) is not str or kind not in _SCALARS:
                return None, 0
            if kind is str and len(value) > longest:
                longest = len(value)
        out.append((message, tuple(message), tuple(message.values())))
    return tuple(out), longest


def _messages_text(shape: _Shape) -> str:
    """The canonical JSON of the messages ``shape`` holds, long texts by :func:`_long_string`
    (pieces joined once: each concatenation would copy a long text again)."""
    out: list[str] = []
    for _, keys, values in shape:
        out.append(",{" if out else "[{")
        comma = ""
        for key, value in sorted(zip(keys, values, strict=True)):  # keys are unique: never compares values
            out += (comma, _CANONICAL_STRICT(key), ":")
            if type(value) is str and len(value) > _LONG:
                _long_string(value, out)
            else:
                out.append(_CANONICAL_STRICT(value))
            comma = ","
        out.append("}")
    out.append("]" if out else "[]")
    return "".join(out)


def encode_request(messages: list[dict[str, Any]], params: dict[str, Any]) -> tuple[int, Encoded | None]:
    """Check that the payload is strict JSON in valid UTF-8, as :func:`check_serializable` does,
    encoding it once; return its size in bytes (compact JSON of ``[messages, params]``) and the
    :class:`Encoded` form the cache key reuses (None when the payload cannot be sorted, e.g. mixed
    int and str keys).

    :raises RequestValidationError: naming the field, as :func:`check_serializable`.
    """
    shape, longest = _shape(messages)
    try:
        text = _messages_text(shape) if shape is not None and longest > _LONG else _CANONICAL_STRICT(messages)
        messages_json = text.encode("utf-8")
        params_json = _CANONICAL_STRICT(params).encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError):
        # a precise error naming the field; or keys that cannot be sorted, which is no error
        return check_serializable(messages, params), None
    return len(messages_json) + len(params_json) + 3, Encoded(messages, messages_json, shape, params, params_json)
