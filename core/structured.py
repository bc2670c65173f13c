"""Structured output: ``response_format=`` a pydantic model class or a JSON schema dict.

:func:`prepare` runs while the request is built (before any middleware): it turns the class or
schema into the JSON the provider expects, so the request, and the cache key made from it, carry
the schema and never a Python class. How it is asked for is the provider's
``structured_output`` setting:

- ``json_schema`` (default): ``{"type": "json_schema", "json_schema": {"name", "schema",
  "strict": true}}`` as OpenAI, Azure, vLLM, llama.cpp's server, Ollama (>= 0.5) and LM Studio take it;
- ``json_object``: ``{"type": "json_object"}`` plus the schema in a system message, for servers
  that know only JSON mode.

:func:`apply` runs when the answer is back (fresh, cached, or at a stream's end): it parses and
validates the text into ``Completion.parsed`` or raises :class:`StructuredOutputError`. The cache
asks :func:`failure` before storing, so an answer that does not parse is never stored.

>>> spec = prepare([{"role": "user", "content": "hi"}], {"response_format": {"type": "object"}}, "json_schema")[1]
>>> spec.name, apply_text(spec, '{"a": 1}')
('response', {'a': 1})
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from .errors import RequestValidationError, StructuredOutputError
from .types import Completion, Request

__all__ = ["STATE_KEY", "Mode", "Spec", "apply", "apply_text", "failure", "prepare"]

Mode = Literal["json_schema", "json_object"]
#: Where :func:`prepare` leaves the :class:`Spec` of a request (``Request.state`` is shared by
#: every copy a middleware makes, so the cache and the client read the same one).
STATE_KEY = "structured"
_NAME = re.compile(r"[^A-Za-z0-9_-]")
# An answer wrapped in a Markdown code fence (local models in JSON mode do this): the JSON inside.
_FENCE = re.compile(r"\A```(?:json)?\s*\n(.*?)\n?```\Z", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Spec:
    """What the answer must be: ``schema`` and the pydantic ``model`` class that validates it
    (None: a dict schema, validated with jsonschema)."""

    name: str
    schema: dict[str, Any]
    model: Any = None


def prepare(
    messages: list[dict[str, Any]], params: dict[str, Any], mode: Mode
) -> tuple[list[dict[str, Any]], Spec | None]:
    """Rewrite ``params["response_format"]`` (in place) into JSON and return the messages to send
    (a new list in ``json_object`` mode) with the :class:`Spec`; ``(messages, None)`` when the
    request asks for no structure.

    OpenAI's own dicts pass as given: ``{"type": "text"}`` and ``{"type": "json_object"}`` ask
    for no schema and get no parsing (as before this feature); ``{"type": "json_schema", ...}`` is
    sent unchanged and its answer parsed against its schema.

    :raises RequestValidationError: for a ``response_format`` that is neither a pydantic model
        class nor a dict, or a malformed ``json_schema`` wrapper.
    """
    fmt = params.get("response_format")
    if fmt is None:
        return messages, None
    spec = _spec(fmt)
    if spec is None:  # {"type": "text"}: nothing to parse
        return messages, None
    if mode == "json_schema":
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            return messages, spec  # OpenAI's own shape: sent as the caller wrote it
        # a class is made strict by _strict; a caller's schema is sent as written, strict when it
        # already meets strict mode's rules (OpenAI answers 400 to a strict schema that does not)
        strict = spec.model is not None or _is_strict(spec.schema)
        params["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": spec.name, "schema": spec.schema, "strict": strict},
        }
        return messages, spec
    params["response_format"] = {"type": "json_object"}
    return _with_schema_message(messages, spec), spec


def _spec(fmt: Any) -> Spec | None:
    if isinstance(fmt, type) and hasattr(fmt, "model_json_schema") and hasattr(fmt, "model_validate_json"):
        return Spec(_NAME.sub("_", fmt.__name__)[:64], _strict(fmt.model_json_schema()), fmt)
    if not isinstance(fmt, dict):
        raise RequestValidationError(
            "parameter 'response_format' must be a pydantic model class, a JSON schema dict or an OpenAI "
            f"response_format dict, got {type(fmt).__name__}: {fmt!r:.60}"
        )
    kind = fmt.get("type")
    if kind in ("text", "json_object"):
        return None  # OpenAI's plain modes are sent as given and answered with text, as before
    if kind == "json_schema":
        inner = fmt.get("json_schema")
        if not isinstance(inner, dict) or not isinstance(inner.get("schema"), dict):
            raise RequestValidationError(
                "parameter 'response_format' of type 'json_schema' needs 'json_schema': {'name': ..., 'schema': {...}}"
            )
        return Spec(str(inner.get("name") or "response"), inner["schema"])
    # any other dict is a JSON schema itself ({"type": "object", "properties": ...})
    title = fmt.get("title")
    name = title if isinstance(title, str) else "response"
    return Spec(_NAME.sub("_", name)[:64] or "response", fmt)


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's strict mode: every object closed (``additionalProperties: false``) and every
    property required; a ``default: null`` dropped. The same as openai's ``to_strict_json_schema``
    that litellm uses, without importing the SDK while the request is built."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and isinstance(node.get("properties"), dict):
                node.setdefault("additionalProperties", False)
                node["required"] = list(node["properties"])
            if "default" in node and node["default"] is None:
                del node["default"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def _is_strict(node: Any) -> bool:
    """Whether every object in the schema is closed and requires all its properties."""
    if isinstance(node, dict):
        if node.get("type") == "object":
            props = node.get("properties")
            if node.get("additionalProperties") is not False or not isinstance(props, dict):
                return False
            if sorted(node.get("required") or []) != sorted(props):
                return False
        return all(_is_strict(v) for v in node.values())
    if isinstance(node, list):
        return all(_is_strict(v) for v in node)
    return True


def _with_schema_message(messages: list[dict[str, Any]], spec: Spec) -> list[dict[str, Any]]:
    instruction = ("Answer with one JSON object and nothing else. It must match this JSON schema:\n"
                   + json.dumps(spec.schema, separators=(",", ":"), sort_keys=True))
    first = messages[0]
    if first.get("role") == "system" and isinstance(first.get("content"), str):
        # one system message: several confuse some local chat templates
        return [{**first, "content": f"{first['content']}\n\n{instruction}"}, *messages[1:]]
    return [{"role": "system", "content": instruction}, *messages]


def apply_text(spec: Spec, text: str) -> Any:
    """Parse and validate ``text`` against ``spec``.

    :raises StructuredOutputError: with ``text`` and ``errors`` when it does not parse or validate.
    """
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    if spec.model is not None:
        from pydantic import ValidationError

        try:
            return spec.model.model_validate_json(body)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False)
            raise _error(spec, text, [dict(e) for e in errors]) from None
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        raise _error(spec, text, [{"type": "json_invalid", "loc": (), "msg": f"Invalid JSON: {exc.msg}"}]) from None
    import jsonschema  # litellm's dependency; imported only when a dict schema is used

    found = sorted(jsonschema.Draft202012Validator(spec.schema).iter_errors(value), key=lambda e: list(e.path))
    if found:
        raise _error(spec, text, [{"type": e.validator, "loc": tuple(e.path), "msg": e.message} for e in found])
    return value


def _error(spec: Spec, text: str, errors: list[dict[str, Any]]) -> StructuredOutputError:
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc") or ()) or "the answer"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return StructuredOutputError(
        f"the answer does not match response_format {spec.name!r}: {where}: {first.get('msg')}{more}",
        text=text,
        errors=errors,
    )


def _applies(request: Request, response: Completion) -> Spec | None:
    spec = request.state.get(STATE_KEY)
    if not isinstance(spec, Spec):
        return None
    if response.tool_calls and not response.text.strip():
        return None  # the model called a tool instead of answering: nothing to parse yet
    return spec


def apply(request: Request, response: Completion) -> Completion:
    """Set ``response.parsed`` for a structured request (no-op otherwise).

    :raises StructuredOutputError: when the answer does not parse; ``provider``/``model`` set.
    """
    spec = _applies(request, response)
    if spec is None:
        return response
    try:
        response.parsed = apply_text(spec, response.text)
    except StructuredOutputError as exc:
        exc.provider, exc.model = response.provider, response.model
        raise
    return response


def failure(request: Request, response: Completion) -> StructuredOutputError | None:
    """The error :func:`apply` would raise for ``response``, None when it parses (or no structure
    was asked for): the cache's reason not to store it."""
    spec = _applies(request, response)
    if spec is None:
        return None
    try:
        apply_text(spec, response.text)
    except StructuredOutputError as exc:
        return exc
    return None
