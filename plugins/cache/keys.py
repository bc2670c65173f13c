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
from typing import Any

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


def canonical(value: Any) -> str:
    """Canonical JSON: sorted keys, no spaces, UTF-8 kept, so equal requests give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)


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


def default_key(request: Request, provider: Any | None, namespace: str) -> str:
    """The built-in key of ``request``: ``v1:<sha256>`` over the canonical JSON of the request.

    :param request: the prepared request.
    :param provider: the provider instance serving it (its kind, api_base, api_version and
        configured default params are part of the key), or None.
    :param namespace: the tenant namespace, hashed in as well.
    """
    config = getattr(provider, "config", None)
    params: dict[str, Any] = dict(getattr(config, "params", None) or {})
    params.update(request.params)
    for name in IGNORED_PARAMS.intersection(params):
        del params[name]
    payload = {
        "v": KEY_VERSION,
        "ns": namespace,
        "provider": request.provider,
        "kind": getattr(config, "kind", None),
        "api_base": getattr(config, "api_base", None),
        "api_version": getattr(config, "api_version", None),
        "model": request.model,
        "messages": request.messages,
        "params": params,
    }
    digest = hashlib.sha256(canonical(payload).encode("utf-8", "surrogatepass")).hexdigest()
    return f"{KEY_VERSION}:{digest}"
