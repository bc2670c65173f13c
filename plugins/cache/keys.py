"""Cache keys: a versioned SHA-256 of the canonical JSON of everything that can change the answer.

The key covers the provider instance and kind, ``api_base``, ``api_version``, the model (or Azure
deployment), the messages with every field, and every parameter except the few that cannot change
the output (:data:`IGNORED_PARAMS`). A namespace keeps tenants apart: by default a fingerprint of
the provider's API key, so two keys never share entries.

>>> canonical({"b": 1, "a": "é"})
'{"a":"é","b":1}'
"""

from __future__ import annotations

import hashlib
import json
import re
from json.encoder import encode_basestring
from typing import Any

from modelwire.errors import RequestValidationError
from modelwire.types import Request

__all__ = [
    "IGNORED_PARAMS",
    "KEY_VERSION",
    "NAMESPACE_RE",
    "canonical",
    "default_key",
    "key_fingerprint",
    "provider_namespace",
]

#: Bumped whenever the key recipe or the stored value format changes: old entries become misses.
KEY_VERSION = "v1"

#: Parameters that change how a request travels, never what the model answers. The stream flag is
#: here on purpose: a whole request and a streamed one share their entry.
IGNORED_PARAMS = frozenset(
    {
        "timeout",
        "stream",
        "stream_options",
        "user",
        "metadata",
        "request_timeout",
        "num_retries",
        "max_retries",
    }
)

#: What a namespace may contain: it appears in backend keys and in Redis SCAN patterns.
NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,80}$")

_fingerprints: dict[str, str] = {}


def canonical(value: Any, path: str = "") -> str:
    """Canonical JSON: sorted keys, no spaces, UTF-8 kept, integral floats written as integers
    (``temperature=1`` and ``1.0`` are one request), so equal requests give equal text.

    A dict whose keys cannot be sorted together (``{1: -100, "a": 2}``) is sorted by the text its
    keys become in JSON, which is what the provider receives; two keys that become the same text
    (``1`` and ``"1"``) make an ambiguous request, refused with :class:`RequestValidationError`.

    >>> canonical({"b": 1.0, "a": "é", "c": {2: 0.5, "x": 1}})
    '{"a":"é","b":1,"c":{"2":0.5,"x":1}}'

    :param path: where ``value`` sits in a larger document, for the error naming an ambiguous key.
    """
    try:
        text = _CANONICAL.encode(value)
    except TypeError:  # keys that cannot be sorted together: _normal writes them as JSON text
        pass
    else:
        # Every integral float up to 2**53 is written "<digits>.0" before a ",", "]", "}" or the
        # end; without one (the usual request), _normal would change nothing: skip its walk, which
        # copies the whole request in Python. A match inside a string only costs the slow path.
        if _INTEGRAL_FLOAT.search(text) is None:
            return text
    return _CANONICAL.encode(_normal(value, path))


#: One encoder for every key (json.dumps with options builds a new one per call).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)
_INTEGRAL_FLOAT = re.compile(r"\.0(?=[,\]}]|$)")


#: Integral floats up to this size are exact integers; beyond it they are left as floats.
_EXACT = 2.0**53


def _normal(value: Any, path: str) -> Any:
    """``value`` with integral floats as ints and unsortable dict keys as their JSON text.

    Everything else is left as it is, so that keys of requests without such values do not change."""
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) <= _EXACT else value
    if isinstance(value, dict):
        out = {k: _normal(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
        try:
            sorted(out)
        except TypeError:
            return _text_keys(out, path)
        return out
    if isinstance(value, (list, tuple)):
        return [_normal(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _text_keys(value: dict[Any, Any], path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    seen: dict[str, Any] = {}
    for key, item in value.items():
        text = key if isinstance(key, str) else _json_key(key)
        if text in seen:
            raise RequestValidationError(
                f"{path or 'a dict'}: keys {seen[text]!r} and {key!r} are the same key once sent as JSON "
                f"({text!r}); use one of them"
            )
        seen[text], out[text] = key, item
    return out


def _json_key(key: Any) -> str:
    """The text ``json.dumps`` writes for a non-string dict key (repr for the ones it refuses)."""
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(key)
    return repr(key)


def key_fingerprint(api_key: str) -> str:
    """A short, one-way fingerprint of an API key (never the key itself)."""
    fp = _fingerprints.get(api_key)
    if fp is None:
        fp = hashlib.sha256(b"modelwire-cache-namespace\0" + api_key.encode()).hexdigest()[:16]
        if len(_fingerprints) < 1024:
            _fingerprints[api_key] = fp
    return fp


def provider_namespace(provider: Any) -> str:
    """The default namespace of ``provider``: its name plus its key's fingerprint.

    A keyless provider (a local server without ``api_key_env``) gets just its name.
    """
    api_key = getattr(provider, "api_key", None)
    key: str | None = None
    if api_key is not None:
        try:
            key = api_key()
        except Exception:  # a missing key was already refused in Client.request
            key = None
    required = bool(getattr(provider, "key_required", True)) or bool(getattr(provider.config, "api_key_env", None))
    if not key or not required:
        return str(provider.name)
    return f"{provider.name}-{key_fingerprint(key)}"


def _value(value: Any, path: str) -> str:
    """``canonical(value)`` of one member of the key's document, without an encoder for a string."""
    if value is None:
        return "null"
    if type(value) is str:
        return encode_basestring(value)  # what the encoder itself writes for it (UTF-8 kept)
    return canonical(value, path)


def default_key(request: Request, provider: Any | None, namespace: str) -> str:
    """The built-in key of ``request``: ``v1:<sha256>`` over the canonical JSON of the request.

    :param request: the prepared request.
    :param provider: the provider instance serving it (its kind, api_base, api_version and
        configured default params are part of the key), or None.
    :param namespace: the tenant namespace, hashed in as well.
    """
    config = getattr(provider, "config", None)
    defaults = getattr(config, "params", None)
    # The document hashed is canonical({"v", "ns", "provider", "kind", "api_base", "api_version",
    # "model", "messages", "params"}), written member by member in its sorted order (each member's
    # canonical text is its share of the whole's: test_hit_path pins it), so that the messages' and
    # the params' text can come from the encoding Client.request already made (a 1 MB prompt is
    # encoded once).
    encoded = request.encoded
    params_json: bytes | None = None
    if encoded is not None and not defaults and IGNORED_PARAMS.isdisjoint(request.params):
        params_json = encoded.params_json(request.params)
    if params_json is None:
        params: dict[str, Any] = dict(defaults or {})
        params.update(request.params)
        for name in IGNORED_PARAMS.intersection(params):
            del params[name]
        params_json = canonical(params, "params").encode("utf-8", "surrogatepass")
    messages = None if encoded is None else encoded.messages_json(request.messages)
    if messages is None:
        messages = canonical(request.messages, "messages").encode("utf-8", "surrogatepass")
    head, middle, tail = _frame(getattr(config, "api_base", None), getattr(config, "api_version", None),
                                getattr(config, "kind", None), request.model, namespace, request.provider)
    digest = hashlib.sha256(head)
    digest.update(messages)
    digest.update(middle)
    digest.update(params_json)
    digest.update(tail)
    return f"{KEY_VERSION}:{digest.hexdigest()}"


#: The key document's text around the messages and the params, per provider, model and namespace.
_frames: dict[tuple[Any, ...], tuple[bytes, bytes, bytes]] = {}


def _frame(*members: Any) -> tuple[bytes, bytes, bytes]:
    """The UTF-8 text before the messages, between them and the params, and after the params, for
    ``(api_base, api_version, kind, model, ns, provider)``; built once for string members."""
    try:
        frame = _frames.get(members)  # only string members are kept: equal only when written alike
    except TypeError:  # an unhashable member
        frame = None
    if frame is not None:
        return frame
    api_base, api_version, kind, model, namespace, provider = members
    frame = (
        f'{{"api_base":{_value(api_base, "api_base")},"api_version":{_value(api_version, "api_version")},'
        f'"kind":{_value(kind, "kind")},"messages":'.encode("utf-8", "surrogatepass"),
        f',"model":{_value(model, "model")},"ns":{_value(namespace, "ns")},"params":'.encode(
            "utf-8", "surrogatepass"),
        f',"provider":{_value(provider, "provider")},"v":{_value(KEY_VERSION, "v")}}}'.encode(
            "utf-8", "surrogatepass"),
    )
    if len(_frames) < 1024 and all(type(m) is str or m is None for m in members):
        _frames[members] = frame
    return frame
