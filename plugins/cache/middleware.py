"""The ``cache`` middleware: answers repeated requests without a provider call.

A request is looked up by its key (:mod:`.keys`); on a miss it starts a *flight* (:mod:`.flight`)
that identical concurrent requests join, whole or streamed, and whose answer is stored once it
is complete and the policy allows it (:func:`default_refusal`, the ``modelwire_cache_should_store``
hook, ``max_value_bytes``). Every backend call goes through :class:`~.store.Store`, so a failing
backend degrades to a miss.

>>> client = modelwire.Client(config={"middleware": ["cache"], ...})  # doctest: +SKIP
>>> cache_of(client).stats()["process"]["hits"]  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

from pydantic import ValidationError

from modelwire import structured
from modelwire.errors import ModelwireError, ProviderTimeoutError, RequestValidationError
from modelwire.log import logger
from modelwire.middleware import CallNext, CallNextStream, Middleware, MiddlewareContext, aclose_stream
from modelwire.types import Chunk, Completion, Request

from .admin import CacheAdmin, CacheError
from .codec import (
    CorruptEntry,
    assemble,
    chunks_from_entry,
    completion_from_entry,
    encode,
    entry_from_chunks,
    entry_from_completion,
    read_entry,
    size_floor,
)
from .config import CacheConfig, CacheOptions, make_backend
from .embeddings import handle_embed
from .flight import Cursor, Flight, FlightTable, follower_copy, fresh_error, iterate, wait_result
from .keys import default_key, provider_namespace
from .store import Store

__all__ = ["CacheError", "CacheMiddleware", "cache_of", "default_refusal"]

_DEFAULT_OPTIONS = CacheOptions()


def default_refusal(request: Request, response: Completion) -> str | None:
    """Why the built-in policy refuses to store ``response``, or None when it may be stored."""
    raw = response.raw
    if isinstance(raw, dict) and raw.get("error"):
        return "error_body"
    if response.finish_reason in ("length", "content_filter"):
        return str(response.finish_reason)
    if response.finish_reason is None:
        return "no_finish_reason"
    if not response.text.strip() and not response.tool_calls:
        return "empty"
    return None


def _note_served_by(request: Request, served_by: tuple[str, str] | None) -> None:
    """Tell the caller's stream who answered (a fallback target), as a live stream would."""
    if served_by is not None and served_by != (request.provider, request.model):
        request.state["served_by"] = served_by


def _answered_by(entry: dict[str, Any], request: Request) -> tuple[str, str]:
    """``(provider, model)`` a stored entry was answered by (a fallback target, possibly)."""
    return str(entry.get("provider") or request.provider), str(entry.get("model") or request.model)


class CacheMiddleware(CacheAdmin, Middleware):
    """See the module docstring. Find it on a client with :func:`cache_of`.

    :ivar metrics: this process's :class:`~.store.CacheMetrics`.
    """

    Config = CacheConfig
    Options = CacheOptions
    #: embeddings: one entry per text (:mod:`.embeddings`)
    applies_to = ("whole", "stream", "embeddings")
    embed_scope = "call"  # sees the whole embed() call: only the texts it lacks are batched and sent
    ahandle_embed = handle_embed

    def __init__(self, config: CacheConfig | None, context: MiddlewareContext) -> None:
        super().__init__(config or CacheConfig(), context)
        self.config: CacheConfig = self.config
        self.store = Store(make_backend(self.config), self.config.timeout, self.config.circuit_failures,
                           self.config.circuit_reset)
        self.metrics = self.store.metrics
        self.flights = FlightTable()
        self._distributed = self.config.backend == "redis" and self.config.distributed_lock

    # -- keys -----------------------------------------------------------------------------------

    def options(self, request: Request) -> CacheOptions:
        raw = request.options.get("cache")
        if not raw:
            return _DEFAULT_OPTIONS
        try:
            return CacheOptions.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise RequestValidationError(f"options.cache.{where}: {err['msg']} (got {err.get('input')!r})") from None

    def namespace_for(self, request: Request, options: CacheOptions = _DEFAULT_OPTIONS) -> str:
        """The namespace ``request`` is stored under (per-call option, config, or key fingerprint)."""
        if options.namespace or self.config.namespace:
            return str(options.namespace or self.config.namespace)
        provider = self.context.providers.get(request.provider)
        return request.provider if provider is None else provider_namespace(provider)

    def key_for(self, request: Request, options: CacheOptions = _DEFAULT_OPTIONS) -> str:
        """The backend key of ``request``: ``<namespace>:<key from modelwire_cache_key>``."""
        namespace = self.namespace_for(request, options)
        request.state["cache.namespace"] = namespace
        request.state["cache.provider"] = self.context.providers.get(request.provider)
        try:
            key = self.context.hook.modelwire_cache_key(request=request)
        except ModelwireError:
            raise  # the built-in key refuses an ambiguous request (see keys.canonical)
        except Exception as exc:  # a broken key plugin: the built-in key is the safe, complete one
            logger.error("cache.key_hook_failed", error_class=type(exc).__name__, error=str(exc)[:200])
            key = None
        if not isinstance(key, str) or not key:
            key = default_key(request, request.state["cache.provider"], namespace)
        elif len(key) > 200:
            key = "h:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        return f"{namespace}:{key}"

    # -- reading and storing --------------------------------------------------------------------

    async def _read(self, key: str) -> tuple[dict[str, Any], bytes] | None:
        data = await self.store.get(key)
        if data is None:
            return None
        try:
            entry = read_entry(data)
        except CorruptEntry as exc:
            self.metrics.corrupt += 1
            logger.warning("cache.corrupt_entry", backend=self.store.backend.name, reason=str(exc))
            await self.store.delete(key)
            return None
        if entry is None:  # expired: a miss
            await self.store.delete(key)
            return None
        return entry, data

    @staticmethod
    def _early_refusal(options: CacheOptions) -> str | None:
        """A refusal known before the answer exists (a stream then buffers nothing)."""
        if options.no_store:
            return "no_store"
        if options.ttl == 0:
            return "ttl_0"
        return None

    def _refusal(self, request: Request, response: Completion, options: CacheOptions) -> str | None:
        early = self._early_refusal(options)
        if early is not None:
            return early
        if structured.failure(request, response) is not None:  # the caller gets an error: never store it
            return "structured_invalid"
        try:
            verdict = self.context.hook.modelwire_cache_should_store(request=request, response=response)
        except Exception as exc:  # a broken policy plugin must not fail the request: do not store
            logger.error("cache.should_store_hook_failed", error_class=type(exc).__name__, error=str(exc)[:200])
            return "policy_error"
        if verdict is False:
            return default_refusal(request, response) or "policy"
        return None

    def _skip_reason(self, request: Request, response: Completion, payload: bytes | None,
                     options: CacheOptions) -> str | None:
        reason = self._refusal(request, response, options)
        if reason is None and payload is None:
            reason = "not_json"
        if reason is None and payload is not None and len(payload) > self.config.max_value_bytes:
            reason = "too_large"
            logger.info("cache.value_too_large", bytes=len(payload), max_value_bytes=self.config.max_value_bytes)
        return reason

    async def _finish_and_store(self, flight: Flight, request: Request, key: str, response: Completion,
                                options: CacheOptions) -> None:
        """Hand the answer to the subscribers, then store it. An answer that will not be stored
        leaves the flight table first, so that later requests go upstream instead of sharing it."""
        reason = self._skip_reason(request, response, flight.payload, options)
        if reason is not None:
            self.metrics.skipped[reason] += 1
            flight.retire()
        flight.finish(response)
        if reason is None and flight.payload is not None:
            await self.store.set(key, flight.payload, options.ttl if options.ttl is not None else self.config.ttl)

    def _encode(self, entry: dict[str, Any], options: CacheOptions) -> bytes | None:
        try:
            return encode(entry, options.ttl if options.ttl is not None else self.config.ttl)
        except (TypeError, ValueError):
            return None

    async def _locked_hit(self, key: str) -> tuple[Any, tuple[dict[str, Any], bytes] | None]:
        """With Redis, take the cross-process lock, then look again: the holder before us may
        have stored the answer meanwhile."""
        if not self._distributed:
            return None, None
        mutex = await self.store.lock(key, self.config.lock_timeout + 1.0 + self.config.timeout)
        if mutex is None:
            return None, None
        return mutex, await self._read(key)

    # -- flights ---------------------------------------------------------------------------------

    async def _run_whole(self, request: Request, call_next: CallNext, options: CacheOptions, key: str,
                         flight: Flight) -> None:
        mutex, found = await self._locked_hit(key)
        try:
            if found is not None:
                self.metrics.hits += 1
                flight.finish(completion_from_entry(found[0]))
                return
            response = await call_next(request)
            flight.payload = self._encode(entry_from_completion(response), options)
            await self._finish_and_store(flight, request, key, response, options)
        finally:
            if mutex is not None:
                await self.store.unlock(mutex)

    async def _run_stream(self, request: Request, call_next: CallNextStream, options: CacheOptions, key: str,
                          flight: Flight) -> None:
        mutex, found = await self._locked_hit(key)
        try:
            if found is not None:
                self.metrics.hits += 1
                flight.served_by = _answered_by(found[0], request)
                for chunk in chunks_from_entry(found[0]):
                    flight.publish(chunk)
                flight.finish()
                return
            early = self._early_refusal(options)
            if early is not None:
                flight.stop_buffering(early)
            upstream = call_next(request)
            try:
                async for chunk in upstream:
                    if flight.served_by is None and "served_by" in request.state:
                        flight.served_by = tuple(request.state["served_by"])  # set by a fallback
                    flight.publish(chunk, size_floor(chunk) if flight.buffering else 0)
                    if flight.buffering and flight.buffered_bytes > self.config.max_value_bytes:
                        logger.info("cache.value_too_large", bytes=flight.buffered_bytes, streaming=True,
                                    max_value_bytes=self.config.max_value_bytes)
                        flight.stop_buffering("too_large")
                    await flight.make_room()
            finally:
                await aclose_stream(upstream)
            if flight.dropped is not None:
                self.metrics.skipped[flight.dropped] += 1
                flight.finish()
                return
            provider, model = flight.served_by or (request.provider, request.model)
            final = assemble(flight.chunks, model, provider)
            flight.payload = self._encode(entry_from_chunks(flight.chunks, final), options)
            await self._finish_and_store(flight, request, key, final, options)
        finally:
            if mutex is not None:
                await self.store.unlock(mutex)

    def _wait_timeout(self, request: Request, options: CacheOptions) -> float | None:
        if options.wait_timeout or self.config.wait_timeout:
            return options.wait_timeout or self.config.wait_timeout
        timeout = request.params.get("timeout")
        if isinstance(timeout, (int, float)) and timeout > 0:
            return float(timeout)
        provider = self.context.providers.get(request.provider)
        value = getattr(getattr(provider, "config", None), "timeout", None)
        return float(value) if isinstance(value, (int, float)) else None

    def _timed_out(self, request: Request, timeout: float | None) -> ProviderTimeoutError:
        return ProviderTimeoutError(
            f"gave up after {timeout} s waiting for an identical request already in flight",
            provider=request.provider,
            model=request.model,
        )

    # -- the middleware -------------------------------------------------------------------------

    async def _lookup(
        self, key: str, options: CacheOptions, log: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, Flight | None]:
        """The stored entry for ``key``, or else the flight already fetching it (None, None: neither)."""
        if options.refresh:
            return None, None
        flight = self.flights.get(key)
        if flight is None:
            found = await self._read(key)
            if found is not None:
                self.metrics.hits += 1
                log["cache"] = "hit"
                return found[0], None
            flight = self.flights.get(key)  # another caller may have started one during the read
        return None, flight

    def _join(
        self,
        key: str,
        flight: Flight | None,
        stream: bool,
        runner: Callable[[Flight], Awaitable[None]],
        options: CacheOptions,
        log: dict[str, Any],
    ) -> tuple[Flight, Cursor, bool]:
        """Subscribe to ``flight``, or start one running ``runner``; returns it, the caller's
        cursor and whether it was shared."""
        shared = flight is not None
        if flight is None:
            self.metrics.misses += 1
            log["cache"] = "refresh" if options.refresh else "miss"
            flight = self.flights.start(key, stream, runner)
        else:
            self.metrics.coalesced += 1
            log["cache"] = "shared"
        return flight, flight.subscribe(), shared

    async def ahandle(self, request: Request, call_next: CallNext) -> Completion:
        options = self.options(request)
        log: dict[str, Any] = request.state.setdefault("log", {})
        if options.bypass:
            log["cache"] = "bypass"
            return await call_next(request)
        key = self.key_for(request, options)
        entry, flight = await self._lookup(key, options, log)
        if entry is not None:
            return completion_from_entry(entry)
        runner = partial(self._run_whole, request, call_next, options, key)
        flight, cursor, shared = self._join(key, flight, False, runner, options, log)
        timeout = self._wait_timeout(request, options) if shared else None
        try:
            if flight.stream:  # a streamed flight: read its chunks like a stream caller
                loop = asyncio.get_running_loop()
                deadline = None if timeout is None else loop.time() + timeout
                chunks = [c async for c in iterate(flight, cursor, True, timeout, deadline)]
                provider, model = flight.served_by or (request.provider, request.model)
                result = assemble(chunks, model, provider)
                result.cached = True
                return result
            await wait_result(flight, timeout)
        except TimeoutError:
            raise self._timed_out(request, timeout) from None
        finally:
            await flight.release(cursor)
        if flight.error is not None:
            raise fresh_error(flight.error) if shared else flight.error
        assert flight.result is not None  # a whole flight ends with a result or an error
        if shared:
            return follower_copy(flight)
        await flight.settled()  # read-your-writes: when the first caller returns, its answer is stored
        return flight.result

    async def ahandle_stream(self, request: Request, call_next: CallNextStream) -> AsyncIterator[Chunk]:
        options = self.options(request)
        log: dict[str, Any] = request.state.setdefault("log", {})
        if options.bypass:
            log["cache"] = "bypass"
            async for chunk in call_next(request):
                yield chunk
            return
        key = self.key_for(request, options)
        entry, flight = await self._lookup(key, options, log)
        if entry is not None:
            _note_served_by(request, _answered_by(entry, request))
            for chunk in chunks_from_entry(entry):
                yield chunk
            return
        runner = partial(self._run_stream, request, call_next, options, key)
        flight, cursor, shared = self._join(key, flight, True, runner, options, log)
        timeout = self._wait_timeout(request, options) if shared else None
        try:
            if flight.stream:
                try:
                    async for chunk in iterate(flight, cursor, shared, timeout):
                        _note_served_by(request, flight.served_by)
                        yield chunk
                except TimeoutError:
                    raise self._timed_out(request, timeout) from None
                if not shared:
                    await flight.settled()
            else:  # a whole flight: replay the leader's completion as a short stream
                try:
                    await wait_result(flight, timeout)
                except TimeoutError:
                    raise self._timed_out(request, timeout) from None
                if flight.error is not None:
                    raise fresh_error(flight.error)
                assert flight.result is not None
                _note_served_by(request, (flight.result.provider, flight.result.model))
                for chunk in chunks_from_entry(entry_from_completion(flight.result)):
                    yield chunk
        finally:
            await flight.release(cursor)

    async def aclose(self) -> None:
        await self.store.close()


def cache_of(client: Any) -> CacheMiddleware:
    """The cache middleware of ``client``; when the config does not enable it, one built from the
    ``[cache]`` section (for ``modelwire cache stats/clear`` and admin scripts).

    :raises ConfigurationError: when the section is invalid.
    """
    for mw in getattr(client, "middleware", []):
        if isinstance(mw, CacheMiddleware):
            return mw
    from modelwire.config import validate_section

    config = validate_section(CacheConfig, client.config.sections.get("cache", {}), "cache")
    return CacheMiddleware(config, MiddlewareContext(client.hook, client.providers))
