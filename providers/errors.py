"""Map whatever litellm, the openai SDK, httpx or aiohttp raised to modelwire's hierarchy.

The order of evidence, most reliable first:

1. litellm's own words for a 200 that was not a completion (non-JSON, HTML, empty, no ``choices``,
   an ``error`` object inside a 200): :class:`~modelwire.InvalidResponseError` or the class the
   embedded error names.
2. A transport failure anywhere in the cause chain with no HTTP response (refused, reset, body
   cut short, timeouts): litellm reports those as a synthetic 500 or 408, which would be wrong.
3. The HTTP status; the body text refines it (context window, content filter, quota).

Every mapped error carries provider, model, status, request id, ``retry_after`` when the
provider said how long to wait, a body excerpt, ``retryable`` and ``request_sent`` (False when the
request surely never reached the server, so a retry cannot bill twice).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import re
import time
from collections.abc import Iterator, Mapping
from typing import Any

from modelwire import errors as e

__all__ = ["detached", "map_exception", "parse_duration", "parse_retry_after", "rate_limit_hint", "request_id"]

_CONTEXT = re.compile(
    r"context_length_exceeded|maximum context length|context window|exceed_context_size|"
    r"exceeds the available context|context size has been exceeded",
    re.IGNORECASE,
)
_CONTENT_FILTER = re.compile(r"content_filter|content management policy|ResponsibleAIPolicyViolation", re.I)
_QUOTA = re.compile(r"insufficient_quota|credit_balance_exhausted|exceeded your current quota|Request too large", re.I)
_TRY_AGAIN = re.compile(r"try again in (\d+(?:\.\d+)?(?:ms|s|m|h)(?:\d+(?:\.\d+)?(?:ms|s))?)", re.I)
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_PREFIX = re.compile(
    r"^(?:litellm\.\w+:\s*|\w+(?:Error|Exception):\s*|\w*Exception(?:\s+\w+)?\s+-\s+|Timeout Error:\s*|"
    r"APITimeoutError\s+-\s+)"
)
_INVALID_BODY = "Empty or invalid response from LLM endpoint"
_NO_CHOICES = re.compile(r"no 'choices'|'choices' that is not a list")
_MAX_SANE_SECONDS = 10 * 365 * 86400.0

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


# -- Retry-After and friends ---------------------------------------------------------------------


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds to wait according to ``retry-after-ms``, then ``retry-after`` (seconds or an
    HTTP date). Malformed, negative, infinite or absurd values give None, never an exception.

    >>> parse_retry_after({"retry-after-ms": "1500", "retry-after": "2"})
    1.5
    """
    if not headers:
        return None
    lower = _lower(headers)
    ms = _number(lower.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000.0
    raw = lower.get("retry-after")
    if raw is None:
        return None
    seconds = _number(raw)
    if seconds is not None:
        return seconds
    try:
        parsed = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None or parsed.tzinfo is None:
        return None
    delta = parsed.timestamp() - (time.time() if now is None else now)
    return delta if 0 <= delta <= _MAX_SANE_SECONDS else None


def parse_duration(raw: str | None) -> float | None:
    """A Go-style duration (``6m0s``, ``1s``, ``12ms``, ``1.2s``, ``1h2m``) in seconds, or None.

    >>> parse_duration("6m0s"), parse_duration("12ms"), parse_duration("soon")
    (360.0, 0.012, None)
    """
    if not raw or not isinstance(raw, str):
        return None
    text = raw.strip()
    if text in ("0", "-1") or text.startswith("-"):
        return None  # Azure's "-1"/"0" sentinels mean "unknown", not "now"
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    total, pos = 0.0, 0
    for match in _GO_DURATION.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * units[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0 or not math.isfinite(total) or total > _MAX_SANE_SECONDS:
        return None
    return total


def rate_limit_hint(headers: Mapping[str, str] | None, text: str = "", limit_type: str | None = None) -> float | None:
    """A softer hint than Retry-After: ``x-ratelimit-reset-requests/tokens`` for the exhausted
    limit, else OpenAI's "Please try again in 644ms". These say when the window is full again,
    which over-estimates the wait, so the retry policy never fails fast because of them."""
    lower = _lower(headers) if headers else {}
    resets: dict[str, float] = {}
    for kind in ("requests", "tokens"):
        value = parse_duration(lower.get(f"x-ratelimit-reset-{kind}"))
        if value is not None and value > 0:
            resets[kind] = value
    if resets:
        exhausted = [k for k in resets if _number(lower.get(f"x-ratelimit-remaining-{k}")) == 0]
        if limit_type in resets:
            return resets[limit_type]
        return max(resets[k] for k in exhausted) if exhausted else min(resets.values())
    match = _TRY_AGAIN.search(text)
    return parse_duration(match.group(1)) if match else None


def request_id(headers: Mapping[str, str] | None) -> str | None:
    """The provider's request id (OpenAI ``x-request-id``, Azure ``apim-request-id``)."""
    if not headers:
        return None
    lower = _lower(headers)
    for name in ("x-request-id", "apim-request-id", "request-id"):
        value = lower.get(name)
        if value:
            return str(value)
    return None


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    try:
        return {str(k).lower(): str(v) for k, v in headers.items()}
    except Exception:  # a header object that cannot be iterated must not mask the real error
        return {}


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError, OverflowError):
        return None
    if math.isnan(value) or value < 0 or value > _MAX_SANE_SECONDS:
        return None
    return value


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
        detail = _short(f"{type(unsent).__name__}: {unsent}")
        refused = e.RequestValidationError(
            f"the request could not be built, nothing was sent ({detail}); check the messages and parameters",
            provider=provider,
            model=model,
            retryable=False,
        )
        refused.request_sent = False
        return refused
    headers = _headers_of(exc)
    raw_text = str(getattr(exc, "message", None) or exc) or type(exc).__name__
    text = _short(raw_text)
    body = _body_of(exc)
    kw: dict[str, Any] = {
        "provider": provider,
        "model": model,
        "request_id": request_id(headers) or getattr(exc, "request_id", None) or None,
        "body": body or text,
    }
    http_status = _http_status(exc)
    has_response = any(_is_response_error(n) for n in _chain(exc))
    kind: type[e.ProviderError]
    retryable: bool | None = None
    sent: bool | None = True
    if _INVALID_BODY in raw_text:
        kind, retryable, kw["status"] = e.InvalidResponseError, True, 200
        received = raw_text.split("Received:", 1)[-1].split(". Check the", 1)[0].strip()
        text = f"the provider answered 200 with a body that is not JSON: {received[:200]}"
    elif _NO_CHOICES.search(raw_text):
        kw["status"] = 200
        if "'message'" in raw_text and ("'object'" in raw_text or "'code'" in raw_text):
            kind, retryable = e.ServerError, True
            text = "the provider answered 200 with a top-level error object (vLLM shape) instead of a completion"
        else:
            kind = e.InvalidResponseError
            text = "the provider answered 200 without a list of choices: " + text
    elif (embedded := _embedded_error(exc)) is not None:
        code = getattr(embedded, "status_code", None)
        kw["status"] = 200
        detail = _short(str(getattr(embedded, "message", None) or embedded or text))
        text = f"the provider answered 200 with an error body: {detail}"
        numeric = _int(code)
        if numeric == 422:  # litellm's stand-in when the embedded error has no code
            numeric = None
        kind = _class_for(numeric, f"{code} {text}", "") if numeric and numeric >= 400 else _class_for(None, text, "")
        if kind is e.ProviderError:
            kind = e.ServerError
    elif not has_response and (transport := _transport(exc)) is not None:
        kind, sent = transport
        kw["status"] = None
        text = _with_root_cause(text, exc)
    else:
        kw["status"] = http_status
        kind = _class_for(http_status, f"{text} {body or ''}", type(exc).__name__)
        text = _describe(kind, http_status, text, body, provider, model, raw_text)
        if http_status is None and kind is e.ProviderError and (transport := _transport(exc)) is not None:
            kind, sent = transport
    if issubclass(kind, e.RateLimitError):
        kw["limit_type"] = _limit_type(f"{text} {body or ''}")
    error = kind(text, **kw)
    error.request_sent = sent
    _set_retry_after(error, headers, f"{text} {body or ''}")
    should = str(_lower(headers).get("x-should-retry", "")).lower() if headers else ""
    if should in ("true", "false") and not isinstance(error, (e.QuotaExceededError, e.ContentFilterError)):
        retryable = should == "true"  # the server knows best (openai-python semantics)
    if retryable is not None:
        error.retryable = retryable
    return error


def _set_retry_after(error: e.ModelwireError, headers: Mapping[str, str] | None, text: str) -> None:
    exact = parse_retry_after(headers)
    if exact is not None and exact > 0:
        error.retry_after, error.retry_after_source = exact, "header"
    elif isinstance(error, e.RateLimitError):
        hint = rate_limit_hint(headers, text, error.limit_type)
        if hint is not None:
            error.retry_after, error.retry_after_source = hint, "hint"


def _class_for(status: int | None, text: str, type_name: str) -> type[e.ProviderError]:
    if status == 400 or status == 422 or "BadRequest" in type_name or "UnprocessableEntity" in type_name:
        if _CONTEXT.search(text) or "ContextWindow" in type_name:
            return e.ContextWindowExceededError
        if _CONTENT_FILTER.search(text) or "ContentPolicy" in type_name:
            return e.ContentFilterError
        return e.BadRequestError
    if status == 401 or type_name == "AuthenticationError":
        return e.AuthenticationError
    if status == 403 or type_name == "PermissionDeniedError":
        return e.PermissionDeniedError
    if status == 404 or type_name == "NotFoundError":
        return e.NotFoundError
    if status == 408:
        return e.ProviderTimeoutError
    if status == 429 or type_name == "RateLimitError":
        return e.QuotaExceededError if _QUOTA.search(text) else e.RateLimitError
    if status == 503 or type_name == "ServiceUnavailableError":
        return e.ServiceUnavailableError
    if (status is not None and status >= 500) or status == 409:
        if _CONTEXT.search(text):  # llama.cpp has reported context overflow as a 500
            return e.ContextWindowExceededError
        return e.ServerError
    if status is not None and 400 <= status < 500:
        return e.BadRequestError
    if _CONTEXT.search(text):
        return e.ContextWindowExceededError
    if _CONTENT_FILTER.search(text):
        return e.ContentFilterError
    return e.ProviderError


def _describe(
    kind: type[e.ProviderError], status: int | None, text: str, body: str | None, provider: str, model: str, raw: str
) -> str:
    """A message a person can act on, for the cases where the provider's own is cryptic."""
    if status is not None and text.startswith("Error code:") and body:
        excerpt = re.sub(r"<[^>]+>", " ", body)
        excerpt = re.sub(r"\s+", " ", excerpt).strip()[:200]
        text = f"HTTP {status} with a non-JSON body: {excerpt or body[:200]}"
    if kind is e.NotFoundError:
        blob = f"{raw} {body or ''}"
        if "DeploymentNotFound" in blob:
            text = (
                f"Azure deployment '{model}' does not exist on provider '{provider}' (DeploymentNotFound): "
                f"check the deployment name (models are addressed as '{provider}/<deployment>'); "
                "a deployment created in the last 5 minutes may not be ready yet"
            )
        elif "Resource not found" in blob:
            text = (
                f"'{provider}' answered 404 Resource not found: on Azure this means a missing or unsupported "
                f"api-version or an api_base that is not the resource endpoint; check providers.{provider}.api_version "
                f"and providers.{provider}.api_base"
            )
    return text


def _with_root_cause(text: str, exc: BaseException) -> str:
    """"Connection error." says little: name the transport's own exception too."""
    root = list(_chain(exc))[-1]
    if root is exc:
        return text
    detail = str(root).strip()
    return f"{text} ({type(root).__name__}{': ' + detail[:200] if detail else ''})"


def _limit_type(text: str) -> str | None:
    low = text.lower()
    if "tokens per min" in low or '"type": "tokens"' in low or "(tpm)" in low:
        return "tokens"
    if "requests per min" in low or '"type": "requests"' in low or "(rpm)" in low:
        return "requests"
    return None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _short(text: str) -> str:
    """Drop litellm's class-name prefixes and keep the first lines of the provider's message."""
    text = text.strip()
    while True:
        stripped = _PREFIX.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped.strip()
    return text[:400] if text else "provider error"
