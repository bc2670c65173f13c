"""The transport every built-in provider shares: one litellm call per attempt.

litellm is imported on the first real call (``import modelwire`` stays fast) with
``LITELLM_LOCAL_MODEL_COST_MAP=True`` so the import does not reach the network. Every call
passes ``num_retries=0`` and ``max_retries=0``: retrying is modelwire's job, so the number of
upstream calls is exactly what the retry policy says. No litellm global setting is changed.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, ClassVar

from modelwire.errors import MissingAPIKeyError, remember_secret
from modelwire.provider import CheckResult, Provider, ProviderConfig, StreamSettings
from modelwire.tools import ToolCall
from modelwire.types import Chunk, Completion, Embeddings, Request, Usage

from .errors import map_exception
from .transport import ATTEMPT_HEADER, Transports, send
from .wire.answer import excerpt, warn_if_truncated
from .wire.status import no_choices_error

if TYPE_CHECKING:
    from .direct import DirectRoute

__all__ = ["DIRECT_OR_LITELLM", "LiteLLMProvider", "alitellm", "litellm", "warm_imports"]

_NO_KEY = "sk-no-key-required"

#: The ``transport`` values of the kinds that speak OpenAI's wire format (docs/configuration.md).
DIRECT_OR_LITELLM = frozenset({"litellm", "direct"})


_warm = threading.Event()
_warm_lock = threading.Lock()

# Imported by a first real call after ``import litellm`` (measured on litellm 1.110 / openai SDK
# against the loopback server): the route's request building, the SDK's chat resources, response
# and stream parsing. Importing them during warm-up keeps a first call free of imports.
_FIRST_CALL_MODULES = (
    "httpcore",
    "httpcore._async.http11",
    "httpcore._backends.anyio",
    "h11",
    "openai.resources.chat.chat",
    "openai.resources.chat.completions.completions",
    "openai.resources.chat.completions.messages",
    "openai.types.chat.completions",
    "openai.lib._chat_completion_resources",
    "openai.lib.streaming.chat",
    "jiter",
    "anyio._backends._asyncio",
    "litellm.llms.azure.chat.gpt_transformation",
    "litellm.llms.azure.chat.gpt_reasoning_transformation",
    "litellm.llms.azure.chat.o_series_transformation",
    "litellm.llms.bedrock.chat.invoke_transformations.amazon_ai21_transformation",
    "litellm.litellm_core_utils.default_encoding",
    "litellm.types.litellm_core_utils.streaming_chunk_builder_utils",
    "litellm.litellm_core_utils.streaming_chunk_builder_utils",
    "litellm._service_logger",
    "litellm.proxy.spend_tracking.savings",
    "modelwire.providers.litellm_stream",
    "modelwire.providers.transport",
)


#: litellm's loggers, which carry their own stderr handler (level DEBUG) and also propagate.
_LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy")


def _quiet(module: Any) -> None:
    """Keep litellm's own output inside, so a host sees only modelwire's events.

    - ``litellm.suppress_debug_info = True``: without it every failed call prints a "Give
      Feedback / Get Help" banner and a "LiteLLM.Info: If you need to debug..." line on stdout.
      This is the one litellm global modelwire sets (DESIGN: "no litellm global changed" has this
      documented exception); it only silences those prints.
    - litellm's loggers get a level only when nobody chose one: no ``LITELLM_LOG`` in the
      environment and the level still unset. Their handler prints DEBUG and up on stderr and the
      records also propagate, so a host at INFO saw "LiteLLM completion() model=..." twice per
      call; with ``CRITICAL`` they stay silent. Handlers and propagation are left as they are.

    To see litellm's own output: set ``LITELLM_LOG=DEBUG`` (or INFO) before the first call, or
    after it ``logging.getLogger("LiteLLM").setLevel(logging.DEBUG)``, and
    ``litellm.suppress_debug_info = False`` for its banner.
    """
    import logging

    module.suppress_debug_info = True
    if "LITELLM_LOG" in os.environ:
        return
    for name in _LITELLM_LOGGERS:
        logger_ = logging.getLogger(name)
        if logger_.level == logging.NOTSET:
            logger_.setLevel(logging.CRITICAL)


def litellm() -> Any:
    """The litellm module, imported on first use without a network fetch of its cost map.

    Blocking (seconds): on an event loop use :func:`alitellm`.
    """
    module = sys.modules.get("litellm")
    if module is None or not _warm.is_set():
        warm_imports()
        module = sys.modules["litellm"]
    return module


async def alitellm() -> Any:
    """:func:`litellm` without blocking the running loop: a cold import runs in a worker thread."""
    if not _warm.is_set():
        await asyncio.to_thread(warm_imports)
    return sys.modules["litellm"]


def warm_imports() -> None:
    """Import litellm and everything a first call needs; idempotent, thread-safe."""
    if _warm.is_set():
        return
    with _warm_lock:
        if _warm.is_set():
            return
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import importlib

        import litellm as module

        _quiet(module)
        for name in _FIRST_CALL_MODULES:
            try:
                importlib.import_module(name)
            except ImportError:  # another litellm version: the first call imports what it needs
                pass
        # litellm imports its callback and proxy types lazily inside the first completion call;
        # a mock response walks that path without any network.
        try:
            module.completion(
                model="openai/warmup", messages=[{"role": "user", "content": "-"}], mock_response="-", api_key="-"
            )
        except Exception:  # best effort (at interpreter exit litellm's executor refuses work)
            pass
        _build_sdk_models()
        _load_encodings()
        # in a thread of its own: the caller's thread may be running an event loop
        thread = threading.Thread(target=_dry_call, args=(module,), name="modelwire-warmup")
        thread.start()
        thread.join()
        _warm.set()


def _dry_call(module: Any) -> None:
    """One call through litellm's openai route and the SDK, answered in memory (no network).

    It walks what a first real call would do for the first time: the route's request building,
    response parsing, the cost lookup of a model litellm does not know and the traceback litellm
    formats for it, the first regular expressions, isinstance caches. Measured: after it the
    first call costs about the tenth (bench/bench_guest.py).
    """
    import httpx
    import openai

    answer = {
        "id": "-", "object": "chat.completion", "created": 0, "model": "warmup",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "-"}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }

    async def call() -> None:
        http: Any = httpx.AsyncClient(transport=httpx.MockTransport(lambda _request: httpx.Response(200, json=answer)))
        sdk = openai.AsyncOpenAI(api_key="-", base_url="http://warmup.invalid/v1", http_client=http, max_retries=0)
        try:
            await module.acompletion(
                model="openai/warmup", messages=[{"role": "user", "content": "-"}], client=sdk, api_key="-",
                num_retries=0, max_retries=0,
            )
        finally:
            await http.aclose()

    try:
        asyncio.run(call())
    except Exception:  # best effort: another litellm or SDK version, or interpreter exit
        pass


def _load_encodings() -> None:
    """Load the tokenizer litellm counts a priced model's stream with (gpt-4o family: o200k_base;
    cl100k_base is loaded by its import). Loaded on first need, it held the event loop 0.8-3 s
    right after the first stream to such a model ended. litellm points tiktoken at the encodings
    it bundles: no download."""
    try:
        import tiktoken

        tiktoken.get_encoding("o200k_base")
    except Exception:  # best effort: another litellm, or no bundled file (the call loads it later)
        pass


def _build_sdk_models() -> None:
    """Build the openai SDK's response models now: pydantic builds a model's schema on its first
    use, which cost a first call ~20 ms (twice its whole time on a loopback server)."""
    try:
        from openai.types.chat import ChatCompletion, ChatCompletionChunk
        from openai.types.create_embedding_response import CreateEmbeddingResponse
    except ImportError:  # another SDK version: the first call builds what it needs
        return
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    message = {"role": "assistant", "content": "-", "tool_calls": [
        {"id": "-", "type": "function", "function": {"name": "-", "arguments": "{}"}}]}
    common: dict[str, Any] = {"id": "-", "created": 0, "model": "-", "usage": usage}
    ChatCompletion.construct(
        **common, object="chat.completion", choices=[{"index": 0, "finish_reason": "stop", "message": message}]
    )
    ChatCompletionChunk.construct(
        **common, object="chat.completion.chunk", choices=[{"index": 0, "finish_reason": None, "delta": message}]
    )
    CreateEmbeddingResponse.construct(
        object="list", model="-", data=[{"object": "embedding", "index": 0, "embedding": [0.0]}], usage=usage
    )


class LiteLLMProvider(Provider):
    """A provider reached through ``litellm.acompletion``.

    Subclasses set :attr:`prefix` (litellm's provider route), :attr:`default_key_env` and
    :attr:`key_required`.
    """

    prefix: ClassVar[str] = "openai"
    default_key_env: ClassVar[str | None] = "OPENAI_API_KEY"
    key_required: ClassVar[bool] = True
    #: calls ``request.state["on_send"]`` as the request is sent (see :meth:`call_args`)
    reports_send: ClassVar[bool] = True

    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name, config)
        self._transports = Transports()
        self._attempts: dict[int, str] = {}  # id(request) -> token of its current stream attempt
        # transport = "direct": modelwire's own requests; litellm is then never imported for this provider
        self._direct: DirectRoute | None = None
        if config.transport == "direct":
            from .direct import DirectRoute

            self._direct = DirectRoute(self)

    @property
    def key_env(self) -> str | None:
        return self.config.api_key_env or self.default_key_env

    def api_key(self) -> str:
        """The key from the environment; :class:`MissingAPIKeyError` names the variable."""
        env = self.key_env
        key = os.environ.get(env) if env else None
        if key:
            remember_secret(key)
            return key
        if self.key_required or self.config.api_key_env:
            raise MissingAPIKeyError(
                f"provider '{self.name}' needs an API key: set the environment variable {env}",
                provider=self.name,
            )
        return _NO_KEY

    def prepare(self, request: Request) -> None:
        """Pre-flight checks that must fail before any network call."""
        self.api_key()
        if request.stream:
            StreamSettings.resolve(self.config, request.options)  # a bad options["stream"] fails here

    def call_args(self, request: Request) -> dict[str, Any]:
        args: dict[str, Any] = {**self.config.params, **request.params}
        args.update(
            model=f"{self.prefix}/{request.model}",
            messages=request.messages,
            api_key=self.api_key(),
            timeout=args.get("timeout", self.config.timeout),
            num_retries=0,
            max_retries=0,
        )
        on_send = request.state.get("on_send")
        if callable(on_send):
            # litellm calls logger_fn (per call, no global) just before the HTTP request: the
            # ratelimit middleware counts the permit from then (docs/ratelimit.md).
            args["logger_fn"] = lambda _details: on_send()
        if self.config.api_base:
            args["api_base"] = self.config.api_base
        if self.config.api_version:
            args["api_version"] = self.config.api_version
        self._own_transport(request, args)
        return args

    def _own_transport(self, request: Request, args: dict[str, Any]) -> None:
        """Send through this loop's SDK client (modelwire's pool, see :mod:`.transport`)."""
        if self.prefix not in ("openai", "azure"):
            return  # another litellm route: litellm's own transport
        owner = self._transports.current()
        params: dict[str, Any] = {"timeout": self.config.timeout}
        if self.prefix == "azure":
            params.update(azure_endpoint=self.config.api_base, api_version=self.config.api_version)
        else:
            params["base_url"] = self.config.api_base
        args["client"] = owner.sdk_client(self.prefix, args["api_key"], **params)
        if request.stream:
            token = self._transports.new_token()
            self._attempts[id(request)] = token
            args["extra_headers"] = {**(args.get("extra_headers") or {}), ATTEMPT_HEADER: token}

    async def awarmup(self) -> None:
        """Import litellm and what a first call needs, in a worker thread (the loop keeps running)."""
        if self._direct is None:
            await alitellm()
        self._transports.current()

    def warmup(self) -> None:
        if self._direct is None:
            warm_imports()

    async def aclose(self) -> None:
        """Close this loop's HTTP client (other loops' close when their loop ends)."""
        await self._transports.aclose()

    async def acomplete(self, request: Request) -> Completion:
        if self._direct is not None:
            return await self._direct.acomplete(request)
        module = await alitellm()  # a cold import never runs on the event loop thread
        args = self.call_args(request)
        try:
            response = await send(lambda: module.acompletion(**args), "client" in args)
        except Exception as exc:
            error = map_exception(exc, provider=self.name, model=request.model)
            error.attempts = request.attempt  # the retry middleware, when enabled, keeps it current
        else:
            return self._completion(response, request)
        raise error  # outside the handler: litellm's exception (it can hold the key) stays unreachable

    def _completion(self, response: Any, request: Request) -> Completion:
        choices = getattr(response, "choices", None)
        if not choices:
            error = no_choices_error(None, None, excerpt(response), provider=self.name, model=request.model)
            error.attempts = request.attempt
            raise error
        message = choices[0].message
        tool_calls = [ToolCall.from_dict(tc.model_dump()) for tc in (message.tool_calls or [])]
        usage = getattr(response, "usage", None)
        if usage is not None and usage.prompt_tokens:
            warn_if_truncated(self.name, request, int(usage.prompt_tokens))
        return Completion(
            text=message.content or "",
            finish_reason=choices[0].finish_reason,
            model=request.model,
            provider=self.name,
            usage=_usage(usage) if usage else None,
            tool_calls=tool_calls,
            raw=response,
        )

    async def aembed(self, request: Request) -> Embeddings:
        """Embed through ``litellm.aembedding`` (:mod:`modelwire.providers.litellm_embed`)."""
        if self._direct is not None:
            return await self._direct.aembed(request)
        from .litellm_embed import aembed

        return await aembed(self, request)

    async def astream(self, request: Request) -> AsyncIterator[Chunk]:
        """Stream through litellm; faults, timeouts and cleanup: :mod:`modelwire.providers.litellm_stream`.

        A stream that does not end normally (error, timeout, consumer stopped early) takes its
        connection with it: even a body that ended cleanly on the wire may sit on a socket the
        server is closing, and the next request must not be sent there.
        """
        if self._direct is not None:
            upstream = self._direct.stream_chunks(request)
        else:
            await alitellm()
            from .litellm_stream import stream_chunks

            upstream = stream_chunks(self, request)
        ended = False
        try:
            async for chunk in upstream:
                yield chunk
            ended = True
        finally:
            try:
                await upstream.aclose()  # type: ignore[attr-defined]
            finally:
                await self.end_attempt(request, clean=ended)

    async def end_attempt(self, request: Request, clean: bool) -> None:
        """Forget ``request``'s stream attempt; one that did not end cleanly takes its connection."""
        token = self._attempts.pop(id(request), None)
        if token is not None:
            if clean:
                await self._transports.forget(token)
            else:
                await self._transports.discard(token)

    def check(self) -> CheckResult:
        try:
            headers = self.auth_headers()
        except MissingAPIKeyError as exc:
            return CheckResult(self.name, False, exc.message)
        return check_models(self.name, self.models_url(), headers, self.models_query())

    def models_query(self) -> dict[str, str]:
        return {}

    def models_url(self) -> str:
        return (self.config.api_base or "https://api.openai.com/v1").rstrip("/") + "/models"

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key()}"}


def _usage(usage: Any) -> Usage:
    """litellm's Usage object, with the cached and reasoning details when the provider sent them."""
    prompt_details = getattr(usage, "prompt_tokens_details", None)
    completion_details = getattr(usage, "completion_tokens_details", None)
    cached = getattr(prompt_details, "cached_tokens", None)
    reasoning = getattr(completion_details, "reasoning_tokens", None)
    return Usage(
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.total_tokens,
        int(cached) if cached is not None else None,
        int(reasoning) if reasoning is not None else None,
    )


def check_models(name: str, url: str, headers: dict[str, str], query: dict[str, str]) -> CheckResult:
    """GET a model listing and turn the outcome into a sentence a person can act on."""
    import httpx

    try:
        response = httpx.get(url, headers=headers, params=query, timeout=10.0)
    except httpx.ConnectError:
        return CheckResult(name, False, f"cannot reach {url}: connection refused or host unknown")
    except httpx.TimeoutException:
        return CheckResult(name, False, f"{url} did not answer within 10 s")
    except httpx.HTTPError as exc:
        return CheckResult(name, False, f"request to {url} failed: {type(exc).__name__}")
    status = response.status_code
    if status == 401:
        return CheckResult(name, False, "the API key was rejected (401): check the key's environment variable")
    if status == 403:
        return CheckResult(name, False, "the API key may not list models here (403)")
    if status == 404:
        return CheckResult(name, False, f"{url} answered 404: check api_base (and api_version on Azure)")
    if status >= 400:
        return CheckResult(name, False, f"{url} answered HTTP {status}")
    try:
        models = [str(m.get("id")) for m in response.json().get("data", [])]
    except (ValueError, AttributeError):
        return CheckResult(name, False, f"{url} answered 200 but not with a JSON model list")
    shown = ", ".join(models[:5]) + (" ..." if len(models) > 5 else "")
    return CheckResult(name, True, f"ok: {len(models)} models available ({shown})", models)
