"""The Client: builds the pipeline from config and plugins, and runs requests through it.

>>> client = Client(config={"providers": {"local": {"kind": "openai_compatible",
...                                                  "api_base": "http://127.0.0.1:8000/v1"}}})
>>> client.complete("Say hi", model="local/llama3").text  # doctest: +SKIP
"""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator, Callable
from time import perf_counter
from typing import Any

from . import portal, structured
from .config import CORE_KEYS, Config, load_config, validate_section
from .errors import (
    ConfigurationError,
    ModelwireError,
    PayloadTooLargeError,
    ProviderError,
    RequestValidationError,
    UnknownProviderError,
)
from .log import logger
from .middleware import (
    CallNext,
    CallNextEmbed,
    CallNextStream,
    Middleware,
    MiddlewareContext,
    aclose_stream,
    build_chain,
    build_embed_chain,
    check_options,
    check_paths,
)
from .provider import CheckResult, Provider
from .registry import Registry, build_registry
from .stream import AsyncStream, SyncStream
from .types import Chunk, Completion, Embeddings, Request
from .validate import check_params, encode_request, normalize_messages

__all__ = ["Client"]


class Client:
    """Entry point of modelwire.

    :param config: a dict shaped like ``modelwire.toml``, a path to such a file, or None to read
        ``MODELWIRE_CONFIG`` / ``./modelwire.toml`` / defaults.
    :param plugins: extra plugin objects or module names, registered after the built-ins and
        entry points (handy in tests and apps that ship their own middleware).
    """

    def __init__(
        self,
        config: dict[str, Any] | str | os.PathLike[str] | None = None,
        *,
        plugins: tuple[object, ...] | list[object] = (),
    ) -> None:
        self.config: Config = load_config(config)
        self.registry: Registry = build_registry(plugins, self.config.disable_plugins)
        self.registry.raise_failures()
        self.hook: Any = self.registry.hook
        self.providers: dict[str, Provider] = {
            name: self._make_provider(name, raw) for name, raw in self.config.providers.items()
        }
        self._lock = threading.Lock()
        sections = self._plugin_sections()
        context = MiddlewareContext(self.hook, self.providers, self.provider)
        names = self._middleware_names()
        classes = [self.registry.middleware[name] for name in names]
        for name, cls in zip(names, classes, strict=True):  # before any middleware opens a connection
            check_paths(name, cls, self.registry.origin[f"modelwire_register_middleware:{name}"])
        self.middleware: list[Middleware] = [
            cls(sections.get(name), context) for name, cls in zip(names, classes, strict=True)
        ]
        self.hook.modelwire_configure.call_historic(kwargs={"config": self.config})
        self._call: CallNext
        self._call_stream: CallNextStream
        self._call, self._call_stream = build_chain(
            list(zip(names, self.middleware, strict=True)), self._attempt, self._attempt_stream
        )
        self._call_embed: CallNextEmbed = build_embed_chain(
            list(zip(names, self.middleware, strict=True)), self._attempt_embed, self._split_embed
        )
        self._embed_skips_noted = False
        self.hook.modelwire_client_created(client=self)  # per-client plugin state (cost, stats)
        if self.config.preload:
            # Not a daemon: a thread killed mid-import at exit can deadlock finalizers that import.
            threading.Thread(target=self._preload, name="modelwire-preload").start()

    # -- building --------------------------------------------------------------------------------

    def _make_provider(self, name: str, raw: dict[str, Any]) -> Provider:
        kind = raw.get("kind") or (name if name in self.registry.providers else None)
        if kind not in self.registry.providers:
            known = ", ".join(sorted(self.registry.providers))
            what = f"kind {kind!r} is not registered" if kind else "has no 'kind' and its name is not a provider kind"
            raise UnknownProviderError(
                f"provider '{name}' {what} (registered kinds: {known})" + self.registry.failure_hint()
            )
        cls: type[Provider] = self.registry.providers[kind]
        config = validate_section(cls.Config, {**raw, "kind": kind}, f"providers.{name}")
        return cls(name, config)

    def _middleware_names(self) -> list[str]:
        names = self.config.middleware
        for name in names:
            if name not in self.registry.middleware:
                known = ", ".join(sorted(self.registry.middleware)) or "none"
                raise ConfigurationError(
                    f"config key 'middleware': {name!r} is not a registered middleware (registered: {known})"
                    + self.registry.failure_hint()
                )
        if len(set(names)) != len(names):
            raise ConfigurationError(f"config key 'middleware': a name is listed twice in {names}")
        return names

    def _plugin_sections(self) -> dict[str, Any]:
        validated: dict[str, Any] = {}
        for name, cls in self.registry.middleware.items():
            model = getattr(cls, "Config", None)
            if model is not None:
                validated[name] = validate_section(model, self.config.sections.get(name, {}), name)
        for key in self.config.sections:
            if key in self.registry.middleware and key not in validated:
                raise ConfigurationError(f"config key '{key}': middleware {key!r} takes no configuration")
            if key not in validated:
                known = sorted({*validated, *CORE_KEYS})
                raise ConfigurationError(
                    f"unknown config key '{key}' (known keys: {', '.join(known)})" + self.registry.failure_hint()
                )
        return validated

    def provider(self, name: str) -> Provider:
        """The provider instance ``name``; a registered kind not in the config gets defaults."""
        provider = self.providers.get(name)
        if provider is not None:
            return provider
        if name not in self.registry.providers:
            known = ", ".join(sorted({*self.providers, *self.registry.providers}))
            raise UnknownProviderError(
                f"unknown provider '{name}': configure [providers.{name}] or use one of: {known}"
                + self.registry.failure_hint(),
                provider=name,
            )
        with self._lock:
            return self.providers.setdefault(name, self._make_provider(name, {}))

    # -- requests --------------------------------------------------------------------------------

    def request(
        self,
        prompt: Any,
        *,
        model: str | None = None,
        stream: bool = False,
        options: dict[str, Any] | None = None,
        **params: Any,
    ) -> Request:
        """Build and validate a :class:`Request`; every problem is raised here, before any I/O."""
        provider, model_name = self.resolve(model or self.config.default_model)
        name = provider.name
        messages = normalize_messages(prompt)
        check_options(options, self.registry.middleware, provider.config)
        # before the JSON checks: a pydantic class becomes its schema (and the cache key with it)
        messages, structure = structured.prepare(
            messages, params, getattr(provider.config, "structured_output", "json_schema")
        )
        size, encoded = encode_request(messages, params)
        check_params(params)
        if size > self.config.max_request_bytes:
            raise PayloadTooLargeError(
                f"the request is {size} bytes, above max_request_bytes = {self.config.max_request_bytes}",
                provider=name,
                model=model_name,
            )
        request = Request(name, model_name, messages, params, stream, options or {})
        request.encoded = encoded
        if structure is not None:
            request.state[structured.STATE_KEY] = structure
        prepare = getattr(provider, "prepare", None)
        if prepare is not None:
            prepare(request)
        self.hook.modelwire_request_prepare(request=request)
        return request

    def resolve(self, model: str | None) -> tuple[Provider, str]:
        """The provider instance and model name of a ``provider/model`` address."""
        if not model:
            raise RequestValidationError("no model given and no default_model configured")
        name, _, model_name = model.partition("/")
        if not name or not model_name:
            raise UnknownProviderError(
                f"model {model!r} must be addressed as 'provider/model' (e.g. 'openai/gpt-4o', 'azure/<deployment>')",
                model=model,
            )
        return self.provider(name), model_name

    async def acomplete(self, prompt: Any, *, model: str | None = None, **kwargs: Any) -> Completion:
        """Complete ``prompt`` (a string or OpenAI-style messages) with ``model``.

        Extra keyword arguments are provider parameters (``temperature``, ``max_tokens``,
        ``tools``...) except ``options``, per-call middleware settings keyed by middleware name.
        """
        return await self._complete_prepared(self.request(prompt, model=model, **kwargs))

    def complete(self, prompt: Any, *, model: str | None = None, **kwargs: Any) -> Completion:
        """Blocking :meth:`acomplete`; safe from threads and from inside a running event loop."""
        request = self.request(prompt, model=model, **kwargs)  # errors surface in the caller's thread
        return portal.run(self._complete_prepared(request))

    async def _complete_prepared(self, request: Request) -> Completion:
        start = perf_counter()
        try:
            response = await self._call(request)
        except ModelwireError:
            raise
        except Exception as exc:
            raise _internal(exc, request) from exc
        latency = perf_counter() - start
        self.notify(self.hook.modelwire_response_received, request=request, response=response, latency=latency)
        return structured.apply(request, response)  # after the observers: a bad answer was still billed

    def astream(self, prompt: Any, *, model: str | None = None, **kwargs: Any) -> AsyncStream:
        """Stream a completion: ``async for chunk in client.astream(...)``; see :class:`AsyncStream`."""
        request = self.request(prompt, model=model, stream=True, **kwargs)
        return AsyncStream(self, request, self._call_stream(request))

    def stream(self, prompt: Any, *, model: str | None = None, **kwargs: Any) -> SyncStream:
        """Blocking :meth:`astream`: a real stream, pulled chunk by chunk."""
        return SyncStream(self.astream(prompt, model=model, **kwargs))

    async def aembed(
        self, texts: Any, *, model: str | None = None, options: dict[str, Any] | None = None, **params: Any
    ) -> Embeddings:
        """Embed ``texts`` (a list of non-empty strings) with ``model`` (default
        ``openai/text-embedding-3-small``); one vector per text, in input order.

        Extra keyword arguments are provider parameters (``dimensions``, ``user``...);
        ``options`` are per-call middleware settings. See docs/embeddings.md.
        """
        from . import embeddings

        return await self.embed_prepared(embeddings.prepare(self, texts, model, options, params))

    def embed(
        self, texts: Any, *, model: str | None = None, options: dict[str, Any] | None = None, **params: Any
    ) -> Embeddings:
        """Blocking :meth:`aembed`."""
        from . import embeddings

        request = embeddings.prepare(self, texts, model, options, params)  # errors in the caller's thread
        return portal.run(self.embed_prepared(request))

    async def embed_prepared(self, request: Request) -> Embeddings:
        """Run a prepared embeddings request through the embeddings chain and the observers."""
        if not self._embed_skips_noted:
            self._embed_skips_noted = True
            skipped = [n for n, mw in zip(self.config.middleware, self.middleware, strict=True)
                       if "embeddings" not in type(mw).applies_to]
            if skipped:  # declared chat-only: said once, so it is never a silent pass-by
                logger.info("embed.middleware_skipped", middleware=skipped, reason="declared for chat only")
        start = perf_counter()
        try:
            response = await self._call_embed(request)
        except ModelwireError:
            raise
        except Exception as exc:
            raise _internal(exc, request) from exc
        self.notify(self.hook.modelwire_response_received, request=request, response=response,
                    latency=perf_counter() - start)
        return response

    def check(self, provider: str) -> CheckResult:
        """Check that ``provider`` is reachable and its credentials work; never raises for
        network problems, it says what is wrong."""
        try:
            instance = self.provider(provider)
        except ConfigurationError as exc:
            return CheckResult(provider, False, exc.message)
        return instance.check()

    def stats(self) -> dict[str, Any]:
        """In-process metrics of this client: requests, errors, cache, limiter, tokens, cost,
        latency, by provider/model and in total (shape: docs/observability.md).

        :raises ConfigurationError: when no plugin collects them (``stats`` disabled).
        """
        snapshot: dict[str, Any] | None = self.hook.modelwire_stats_snapshot()
        if snapshot is None:
            raise ConfigurationError("no stats are collected: the 'modelwire.plugins.stats' plugin is disabled")
        return snapshot

    # -- warm-up and release ----------------------------------------------------------------------

    def _warm_targets(self) -> list[Any]:
        providers: list[Any] = list(self.providers.values())
        if not providers and "openai" in self.registry.providers:
            providers.append(self.provider("openai"))  # what a config-less client calls first
        return [*providers, *self.middleware]

    async def awarmup(self) -> None:
        """Import litellm and whatever the configured providers and middleware need, in worker
        threads (the event loop keeps serving); idempotent. A FastAPI lifespan can await it."""
        for target in self._warm_targets():
            warm = getattr(target, "awarmup", None)
            if warm is not None:
                await warm()

    def warmup(self) -> None:
        """Blocking :meth:`awarmup`."""
        portal.run(self.awarmup())

    def _preload(self) -> None:
        try:
            for target in self._warm_targets():
                warm = getattr(target, "warmup", None)
                if warm is not None:
                    warm()
        except Exception as exc:  # the first call imports again and raises where it can be seen
            logger.warning("preload_failed", error=f"{type(exc).__name__}: {exc}")

    async def aclose(self) -> None:
        """Release middleware resources and this loop's HTTP connections."""
        for mw in self.middleware:
            await mw.aclose()
        for provider in list(self.providers.values()):
            await provider.aclose()

    def close(self) -> None:
        portal.run(self.aclose())

    # -- the innermost step ----------------------------------------------------------------------

    async def _attempt(self, request: Request) -> Completion:
        start = perf_counter()
        try:
            return await self.provider(request.provider).acomplete(request)
        except BaseException as exc:
            raise self._failed(request, exc, start) from None

    async def _split_embed(self, request: Request, call_next: CallNextEmbed) -> Embeddings:
        from .embeddings import split

        return await split(self, request, call_next)

    async def _attempt_embed(self, request: Request) -> Embeddings:
        start = perf_counter()
        try:
            return await self.provider(request.provider).aembed(request)
        except BaseException as exc:
            raise self._failed(request, exc, start) from None

    async def _attempt_stream(self, request: Request) -> AsyncIterator[Chunk]:
        start = perf_counter()
        upstream = self.provider(request.provider).astream(request)
        try:
            async for chunk in upstream:
                yield chunk
        except GeneratorExit:
            raise
        except BaseException as exc:
            raise self._failed(request, exc, start) from None
        finally:
            await aclose_stream(upstream)

    def _failed(self, request: Request, exc: BaseException, start: float) -> BaseException:
        # ModelwireError and non-Exception signals (CancelledError, KeyboardInterrupt) pass as they are
        error = _internal(exc, request) if isinstance(exc, Exception) and not isinstance(exc, ModelwireError) else exc
        latency = perf_counter() - start
        attempt = request.attempt
        self.notify(self.hook.modelwire_request_failed, request=request, error=error, attempt=attempt, latency=latency)
        return error

    def notify(self, hook: Callable[..., Any], **kwargs: Any) -> None:
        """Call an observer hook; an observer that raises is logged, the request goes on."""
        try:
            hook(**kwargs)
        except Exception as exc:
            try:
                logger.error("observer_failed", hook=getattr(hook, "name", "?"), error=repr(exc))
            except Exception:
                pass


def _internal(exc: BaseException, request: Request) -> ModelwireError:
    """A non-modelwire exception from a plugin: wrap it so callers see one hierarchy."""
    return ProviderError(
        f"unexpected {type(exc).__name__} in the pipeline: {exc}",
        provider=request.provider,
        model=request.model,
        attempts=request.attempt,
    )
