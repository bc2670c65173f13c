"""The cache for embeddings: one entry per text, so a batch sends upstream only the texts it has
not seen.

An entry's key is ``<namespace>:emb-v1:<sha256>`` over the canonical JSON of the provider
(instance, kind, ``api_base``, ``api_version``), the model, the parameters that can change a
vector (``dimensions``...; not ``timeout`` or ``user``) and the text. The ``emb-`` prefix and its
own version keep these entries apart from completions (``v1:...``) and let the recipe change on
its own. Values are JSON (``{"v": "emb-v1", "kind": "embedding", "vector": [...], "exp": ...}``).

A batch is looked up in one backend call, the missing texts go upstream in one request (the
batch the client made, minus the hits), and their vectors are stored in one backend call before
the answer returns. A failed request stores nothing. A backend failure degrades to misses, like
completions. ``modelwire_cache_key`` and ``modelwire_cache_should_store`` are not consulted:
they decide for a whole request, and here the unit is one text (docs/embeddings.md).
Per-call options ``bypass``, ``refresh``, ``no_store``, ``ttl`` and ``namespace`` apply.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING, Any

from modelwire.log import logger
from modelwire.middleware import CallNextEmbed
from modelwire.types import Embeddings, Request, Usage

from .keys import IGNORED_PARAMS, canonical

if TYPE_CHECKING:
    from .middleware import CacheMiddleware

__all__ = ["EMBED_KEY_VERSION", "handle_embed", "text_key"]

#: Bumped whenever the per-text key recipe or the stored value changes: old entries become misses.
EMBED_KEY_VERSION = "emb-v1"


def text_key(request: Request, provider: Any | None, text: str) -> str:
    """The key (without namespace) of ``text`` embedded as ``request`` asks."""
    config = getattr(provider, "config", None)
    params = {k: v for k, v in request.params.items() if k != "input" and k not in IGNORED_PARAMS}
    payload = {
        "v": EMBED_KEY_VERSION,
        "provider": request.provider,
        "kind": getattr(config, "kind", None),
        "api_base": getattr(config, "api_base", None),
        "api_version": getattr(config, "api_version", None),
        "model": request.model,
        "params": params,
        "text": text,
    }
    digest = hashlib.sha256(canonical(payload).encode("utf-8", "surrogatepass")).hexdigest()
    return f"{EMBED_KEY_VERSION}:{digest}"


def _decode(data: Any) -> list[float] | None:
    """The stored vector, or None for an expired, foreign or corrupt entry (a miss)."""
    try:
        doc = json.loads(data)
    except (ValueError, TypeError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("v") != EMBED_KEY_VERSION or doc.get("kind") != "embedding":
        return None
    exp, vector = doc.get("exp"), doc.get("vector")
    if (exp is not None and exp <= time.time()) or not isinstance(vector, list):
        return None
    return [float(x) for x in vector]


def _encode(vector: list[float], ttl: float | None) -> bytes:
    doc = {"v": EMBED_KEY_VERSION, "kind": "embedding", "vector": vector, "exp": time.time() + ttl if ttl else None}
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


async def _read_many(cache: CacheMiddleware, keys: list[str]) -> list[list[float] | None]:
    # One hop off the event loop and one backend round trip for the whole batch, not one per text.
    raw = await cache.store.call("get_many", cache.store.backend.get_many, keys)
    if cache.store.failed(raw):
        return [None] * len(keys)
    cache.metrics.bytes_read += sum(len(d) for d in raw if d is not None)
    return [_decode(d) if d is not None else None for d in raw]


async def _write_many(cache: CacheMiddleware, items: list[tuple[str, bytes]], ttl: float | None) -> None:
    if not cache.store.failed(await cache.store.call("set_many", cache.store.backend.set_many, items, ttl)):
        cache.metrics.stores += len(items)
        cache.metrics.bytes_written += sum(len(v) for _, v in items)


async def handle_embed(cache: CacheMiddleware, request: Request, call_next: CallNextEmbed) -> Embeddings:
    """The cache middleware's ``ahandle_embed``: see the module docstring."""
    options = cache.options(request)
    log: dict[str, Any] = request.state.setdefault("log", {})
    if options.bypass:
        log["cache"] = "bypass"
        return await call_next(request)
    texts: list[str] = request.params["input"]
    provider = cache.context.providers.get(request.provider)
    namespace = cache.namespace_for(request, options)
    keys = [f"{namespace}:{text_key(request, provider, t)}" for t in texts]
    found = [None] * len(texts) if options.refresh else await _read_many(cache, keys)
    missing = [i for i, vector in enumerate(found) if vector is None]
    hits = len(texts) - len(missing)
    cache.metrics.hits += hits
    cache.metrics.misses += len(missing)
    log["cache"] = "hit" if not missing else ("miss" if not hits else "partial")
    log["cache_hits"] = hits
    if not missing:
        vectors = [v for v in found if v is not None]
        return Embeddings(vectors, request.model, request.provider, Usage(0, 0, 0), [True] * len(texts), cached=True)
    upstream = request if not hits else request.replace(params={**request.params, "input": [texts[i] for i in missing]})
    response = await call_next(upstream)  # a failure raises here: nothing is stored
    request.attempt = upstream.attempt
    ttl = options.ttl if options.ttl is not None else cache.config.ttl
    if options.no_store or options.ttl == 0:
        cache.metrics.skipped["no_store" if options.no_store else "ttl_0"] += 1
    else:
        try:
            items = [(keys[i], _encode(v, ttl)) for i, v in zip(missing, response.vectors, strict=True)]
        except (TypeError, ValueError) as exc:  # NaN in a vector, or a count that does not match
            logger.warning("cache.embedding_not_stored", error=str(exc)[:200])
        else:
            await _write_many(cache, items, ttl)  # stored before returning: read-your-writes
    merged = list(found)
    for i, vector in zip(missing, response.vectors, strict=False):
        merged[i] = vector
    return Embeddings(
        vectors=[v if v is not None else [] for v in merged],
        model=response.model,
        provider=response.provider,
        usage=response.usage,
        from_cache=[v is not None for v in found],
        cached=False,
        raw=response.raw if not hits else None,
        cost=response.cost,
    )
