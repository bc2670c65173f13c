"""The ``cache`` middleware: answers repeated requests without a provider call.

Turn it on with two lines of config (``middleware = ["cache", ...]`` and a ``[cache]`` table)::

    [cache]
    backend = "file"          # memory | file | redis | null
    path = ".modelwire-cache"

Whole and streamed requests share entries; N identical concurrent requests make one upstream call
(:mod:`.flight`; with Redis also across processes, through dogpile's distributed lock); a
failing backend degrades to a miss (:mod:`.store`). Per call, ``options={"cache": {...}}``
takes ``bypass``, ``no_store``, ``refresh``, ``ttl``, ``namespace`` and ``wait_timeout``.

The middleware itself is in :mod:`.middleware`; this module holds the plugin's hooks.

>>> client = modelwire.Client(config={"middleware": ["cache"], ...})  # doctest: +SKIP
>>> cache_of(client).stats()["process"]["hits"]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from modelwire.hookspecs import hookimpl
from modelwire.lazy import lazy_attributes
from modelwire.types import Completion, Request

from .keys import default_key

if TYPE_CHECKING:
    from modelwire.middleware import Middleware

    from .admin import CacheError
    from .config import CacheConfig, CacheOptions
    from .middleware import CacheMiddleware, cache_of, default_refusal

__all__ = ["CacheConfig", "CacheError", "CacheMiddleware", "CacheOptions", "cache_of", "default_refusal"]

# The middleware and its config import pydantic and dogpile.cache: loaded when a client registers
# the middleware (or a user imports them), not when ``modelwire --help`` loads the plugin.
__getattr__ = lazy_attributes(__name__, {
    "CacheConfig": ".config", "CacheOptions": ".config", "CacheError": ".admin",
    "CacheMiddleware": ".middleware", "cache_of": ".middleware", "default_refusal": ".middleware",
})


# -- hooks ---------------------------------------------------------------------------------------


@hookimpl
def modelwire_register_middleware(register: Callable[[str, type[Middleware]], None]) -> None:
    from .middleware import CacheMiddleware

    register("cache", CacheMiddleware)


@hookimpl(trylast=True)
def modelwire_cache_key(request: Request) -> str | None:
    return default_key(request, request.state.get("cache.provider"), str(request.state.get("cache.namespace", "")))


@hookimpl(trylast=True)
def modelwire_cache_should_store(request: Request, response: Completion) -> bool | None:
    from .middleware import default_refusal

    return default_refusal(request, response) is None


@hookimpl
def modelwire_register_commands(register: Callable[..., None]) -> None:
    from .cli import run_command, setup_command

    register("cache", "cache statistics and invalidation (stats, clear)", setup_command, run_command)


@hookimpl
def modelwire_register_demo_steps(register: Callable[[str, Callable[..., Any]], None]) -> None:
    from .cli import demo_step

    register("A repeated request answered from the cache", demo_step)
