"""Map whatever litellm, the openai SDK, httpx or aiohttp raised to modelwire's hierarchy.

The order of evidence, most reliable first:

1. litellm's own words for a 200 that was not a completion (non-JSON, HTML, empty, no ``choices``,
   an ``error`` object inside a 200): :class:`~modelwire.InvalidResponseError` or the class the
   embedded error names.
2. A transport failure anywhere in the cause chain with no HTTP response (refused, reset, body
   cut short, timeouts): litellm reports those as a synthetic 500 or 408, which would be wrong.
3. The HTTP status; the body text refines it (context window, content filter, quota).

Once the status, headers and body are dug out of the chain, the error is built by
:mod:`modelwire.providers.wire.status`, the mapping the direct route uses for the same answer.
Raw httpx / aiohttp / OS exceptions (the direct route's transport failures) are mapped here too.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from modelwire import errors as e

from .wire.status import (
    build_error,
    error_for_status,
    error_in_200,
    no_choices_error,
    not_json_200,
    parse_duration,
    parse_retry_after,
    rate_limit_hint,
    request_id,
)

__all__ = ["detached", "map_exception", "parse_duration", "parse_retry_after", "rate_limit_hint", "request_id"]

_PREFIX = re.compile(
    r"^(?:litellm\.\w+:\s*|\w+(?:Error|Exception):\s*|\w*Exception(?:\s+\w+)?\s+-\s+|Timeout Error:\s*|"
    r"APITimeoutError\s+-\s+)"
)
_INVALID_BODY = "Empty or invalid response from LLM endpoint"
_NO_CHOICES = re.compile(r"no 'choices'|'choices' that is not a list")

# Class names (anywhere in an exception's MRO) that identify transport failures, so that no
# transport library has to be imported here.
_TIMEOUT_NAMES = {"TimeoutException", "TimeoutError", "ServerTimeoutError", "APITimeoutError", "ReadTimeout"}
_CONNECT_NAMES = {
    "ConnectTimeout", "ConnectionTimeoutError", "ClientConnectorError", "ConnectError", "ConnectionRefusedError",
    "ClientConnectorDNSError", "gaierror",
}
_CONNECTION_NAMES = {
    "APIConnectionError", "TransportError", "ClientError", "ConnectionError", "OSError", "RemoteProtocolError",
    "ClientPayloadError", "HttpProcessingError", "ServerDisconnectedError", "IncompleteReadError",
}


# -- walking the exception chain -----------------------------------------------------------------


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        yield node
        node = node.__cause__ or node.__context__


def _names(exc: BaseException) -> set[str]:
    return {c.__name__ for c in type(exc).__mro__}


def _headers_of(exc: BaseException) -> Mapping[str, str] | None:
    for node in _chain(exc):
        headers = getattr(node, "litellm_response_headers", None)
        if headers is None:
            headers = getattr(getattr(node, "response", None), "headers", None)
        if headers is not None and hasattr(headers, "get") and hasattr(headers, "items"):
            return headers  # type: ignore[no-any-return]
    return None


def _http_status(exc: BaseException) -> int | None:
    """The status of a real HTTP response in the chain (not litellm's synthetic 500/408)."""
    for node in _chain(exc):
        if _is_response_error(node):
            status = getattr(getattr(node, "response", None), "status_code", None) or getattr(node, "status", None)
            if isinstance(status, int):
                return status
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) and 100 <= status < 600 else None


def _is_response_error(node: BaseException) -> bool:
    """An HTTP response really arrived (litellm's own classes subclass the SDK's status errors
    even when they wrap a broken connection, so they do not count)."""
    if type(node).__module__.startswith("litellm"):
        return False
    names = _names(node)
    return "APIStatusError" in names or "HTTPStatusError" in names or "ClientResponseError" in names


def _body_of(exc: BaseException) -> str | None:
    for node in _chain(exc):
        body = getattr(node, "body", None)
        if isinstance(body, (dict, list)):
            return json.dumps(body)
        if isinstance(body, str) and body:
            return body
        response = getattr(node, "response", None)
        text = getattr(response, "text", None)
        if isinstance(text, str) and text:
            return text
    return None


def _embedded_error(exc: BaseException) -> BaseException | None:
    """litellm raises a bare ``Exception`` with ``status_code`` for a 200 whose body is ``{"error": ...}``."""
    for node in _chain(exc):
        if type(node) is Exception and hasattr(node, "status_code"):
            return node
    return None


# Python's own errors for a value of the wrong shape: raised while litellm turns our arguments into
# an HTTP request (content parts that are not dicts, logit_bias keys that are not strings...).
_BUILD_ERRORS = (TypeError, AttributeError, KeyError, IndexError)


def _build_failure(exc: BaseException) -> BaseException | None:
    """The root error when litellm failed before sending (it reports that as a retryable
    ``APIConnectionError``), else None.

    Only litellm's own wrappers around a plain Python error count: any openai/httpx/aiohttp node
    means the transport was involved, and litellm says "Invalid response object" when the same
    Python errors come from converting a response that did arrive.
    """
    chain = list(_chain(exc))
    root = chain[-1]
    if len(chain) < 2 or not isinstance(root, _BUILD_ERRORS) or type(root).__module__ != "builtins":
        return None
    for node in chain[:-1]:
        if not type(node).__module__.startswith("litellm") or "Invalid response object" in str(node):
            return None
    return root


def _transport(exc: BaseException) -> tuple[type[e.ProviderError], bool] | None:
    """(class, request_sent) when the chain shows a transport failure, else None."""
    chain = list(_chain(exc))
    names = set().union(*(_names(n) for n in chain))
    if isinstance(exc, asyncio.CancelledError):
        return None
    connect_phase = bool(names & _CONNECT_NAMES)
    if names & _TIMEOUT_NAMES or any(isinstance(n, (asyncio.TimeoutError, TimeoutError)) for n in chain):
        return e.ProviderTimeoutError, not connect_phase
    if names & _CONNECTION_NAMES:
        return e.ProviderConnectionError, not connect_phase
    return None


# -- the mapping ------------------------------------------------------------------------------


def detached(error: e.ModelwireError) -> e.ModelwireError:
    """``error`` without links to the exceptions it was mapped from, ready to raise.

    ``raise ... from None`` only hides ``__context__`` from tracebacks: the raw litellm/openai
    exception stays reachable, and its text or ``response.request.headers`` can hold the API key.
    Raise the result outside any ``except`` block, or Python links the handled exception again.
    """
    error.__cause__ = None
    error.__context__ = None
    return error


def map_exception(exc: BaseException, *, provider: str, model: str) -> e.ModelwireError:
    """Turn ``exc`` into the matching :class:`~modelwire.ModelwireError` subclass.

    :param exc: what litellm, the SDK or the transport raised.
    :param provider: the provider instance name, for the error's context.
    :param model: the model or deployment, for the error's context.
    """
    if isinstance(exc, e.ModelwireError):
        return exc
    unsent = _build_failure(exc)
    if unsent is not None:
        return unbuildable(f"{type(unsent).__name__}: {unsent}", provider=provider, model=model)
    headers = _headers_of(exc)
    raw_text = str(getattr(exc, "message", None) or exc) or type(exc).__name__
    text = _short(raw_text)
    body = _body_of(exc)
    where: dict[str, Any] = {"provider": provider, "model": model}
    if _INVALID_BODY in raw_text:
        received = raw_text.split("Received:", 1)[-1].split(". Check the", 1)[0].strip()
        return not_json_200(received, headers, body or text, **where)
    if _NO_CHOICES.search(raw_text):
        vllm = "'message'" in raw_text and ("'object'" in raw_text or "'code'" in raw_text)
        return no_choices_error(text, headers, body or text, vllm_error=vllm, **where)
    embedded = _embedded_error(exc)
    if embedded is not None:
        detail = _short(str(getattr(embedded, "message", None) or embedded or text))
        return error_in_200(getattr(embedded, "status_code", None), detail, headers, body or text, **where)
    fallback_id = getattr(exc, "request_id", None)
    has_response = any(_is_response_error(n) for n in _chain(exc))
    transport = None if has_response else _transport(exc)
    if transport is not None:
        kind, sent = transport
        return build_error(kind, _with_root_cause(text, exc), status=None, headers=headers, body=body,
                           sent=sent, fallback_request_id=fallback_id, **where)
    error = error_for_status(_http_status(exc), headers, text, body, type_name=type(exc).__name__, raw=raw_text,
                             fallback_request_id=fallback_id, **where)
    if error.status is None and type(error) is e.ProviderError and (transport := _transport(exc)) is not None:
        kind, sent = transport
        return build_error(kind, error.message, status=None, headers=headers, body=body, sent=sent,
                           fallback_request_id=fallback_id, **where)
    return error


def unbuildable(detail: str, *, provider: str, model: str) -> e.RequestValidationError:
    """The request could not be turned into an HTTP request: the caller's mistake, nothing was sent."""
    refused = e.RequestValidationError(
        f"the request could not be built, nothing was sent ({_short(detail)}); check the messages and parameters",
        provider=provider,
        model=model,
        retryable=False,
    )
    refused.request_sent = False
    return refused


def _with_root_cause(text: str, exc: BaseException) -> str:
    """"Connection error." says little: name the transport's own exception too."""
    root = list(_chain(exc))[-1]
    if root is exc:
        return text
    detail = str(root).strip()
    return f"{text} ({type(root).__name__}{': ' + detail[:200] if detail else ''})"


def _short(text: str) -> str:
    """Drop litellm's class-name prefixes and keep the first lines of the provider's message."""
    text = text.strip()
    while True:
        stripped = _PREFIX.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped.strip()
    return text[:400] if text else "provider error"
