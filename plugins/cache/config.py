"""The cache's settings: the ``[cache]`` section, the per-call options, and the backend they pick."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from modelwire.errors import ConfigurationError

from .backends import Backend, FileBackend, MemBackend, NullBackend
from .keys import NAMESPACE_RE
from .redis_backend import RedisCacheBackend

__all__ = ["CacheConfig", "CacheOptions", "check_namespace", "make_backend"]


def check_namespace(value: str | None) -> str | None:
    """``value`` if it is a valid namespace (it appears in backend keys and Redis SCAN patterns)."""
    if value is not None and not NAMESPACE_RE.match(value):
        raise ValueError("must be 1-80 characters of letters, digits, '_', '.', '-'")
    return value


class CacheConfig(BaseModel):
    """The ``[cache]`` section. See docs/cache.md for every key."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["memory", "file", "redis", "null"] = "memory"
    #: Seconds an entry lives; None = until evicted or cleared.
    ttl: float | None = Field(3600.0, gt=0)
    #: Memory backend: entries kept (least recently used evicted first).
    max_entries: int = Field(10_000, gt=0)
    #: Memory backend: total bytes of stored JSON kept (least recently used evicted first).
    max_bytes: int = Field(256 * 1024 * 1024, gt=0)
    #: File backend: the dbm file (``.dat``/``.dir`` and lock files are created beside it).
    path: str | None = None
    #: Redis backend: ``redis://host:port/db``.
    url: str | None = None
    key_prefix: str = Field("modelwire:cache:", min_length=1, max_length=100)
    #: Fixed namespace for every entry; None = per provider and API-key fingerprint.
    namespace: str | None = None
    #: Responses whose stored JSON is larger are not stored (a stream stops being buffered as
    #: soon as it is known to be larger).
    max_value_bytes: int = Field(1_000_000, gt=0)
    #: Seconds allowed for one backend call before it counts as a miss.
    timeout: float = Field(0.2, gt=0, le=30)
    #: Redis: the distributed lock expires after this many seconds (a crashed holder frees it).
    lock_timeout: float = Field(30.0, gt=0)
    distributed_lock: bool = True
    #: Seconds a request waits for an identical one in flight; None = its own ``timeout``
    #: parameter or the provider's timeout.
    wait_timeout: float | None = Field(None, gt=0)
    circuit_failures: int = Field(3, ge=1)
    circuit_reset: float = Field(10.0, gt=0)

    _ns = field_validator("namespace")(check_namespace)


class CacheOptions(BaseModel):
    """Per-call ``options={"cache": {...}}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Neither read nor store: the request goes upstream as if there were no cache.
    bypass: bool = False
    #: Read, but do not store the answer.
    no_store: bool = False
    #: Do not read; go upstream and store the fresh answer.
    refresh: bool = False
    #: Seconds this entry lives; 0 = do not store.
    ttl: float | None = Field(None, ge=0)
    namespace: str | None = None
    wait_timeout: float | None = Field(None, gt=0)

    _ns = field_validator("namespace")(check_namespace)


def make_backend(config: CacheConfig) -> Backend:
    """The backend ``config`` names; ConfigurationError naming the key when it cannot be built."""
    if config.backend == "memory":
        return MemBackend(config.max_entries, config.max_bytes)
    if config.backend == "null":
        return NullBackend()
    if config.backend == "file":
        if not config.path:
            raise ConfigurationError("config key 'cache.path' is required when cache.backend = \"file\"")
        try:
            return FileBackend(config.path)
        except OSError as exc:
            raise ConfigurationError(f"config key 'cache.path': cannot create the cache file: {exc}") from None
    if not config.url:
        raise ConfigurationError("config key 'cache.url' is required when cache.backend = \"redis\" (redis://host:6379/0)")
    try:
        return RedisCacheBackend(config.url, config.key_prefix, config.timeout, config.lock_timeout)
    except ValueError as exc:
        raise ConfigurationError(f"config key 'cache.url': {exc}") from None
