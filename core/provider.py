"""The innermost piece of the pipeline: something that turns a Request into a Completion.

Subclass :class:`Provider` and implement the async pair (``acomplete``, ``astream``), or only
the sync pair (``complete``, ``stream``) for a provider built on a blocking SDK; the base class
runs the sync pair in a worker thread when the pipeline asks for the async one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator, model_validator

from . import portal
from .errors import ConfigurationError, RequestValidationError, is_secret_name, remember_secret
from .types import Chunk, Completion, Embeddings, Request

__all__ = ["CheckResult", "Provider", "ProviderConfig", "StreamSettings"]


class ProviderConfig(BaseModel):
    """Settings of one provider instance (``[providers.<name>]``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str | None = None
    api_base: str | None = None
    api_version: str | None = None
    api_key_env: str | None = None
    timeout: float = Field(600.0, gt=0)
    #: Ask for usage in streams (``stream_options.include_usage``); turn off for servers that
    #: reject ``stream_options`` with a 400 (Groq, old Azure API versions).
    stream_usage: bool = True
    #: Seconds from the start of a stream attempt to its first chunk with content; None = no limit.
    first_token_timeout: float | None = Field(60.0, gt=0)
    #: Seconds without a data event once content flows (SSE keep-alive comments do not count).
    idle_timeout: float | None = Field(30.0, gt=0)
    #: Cap on the whole stream attempt, in seconds; None = no cap.
    max_stream_duration: float | None = Field(None, gt=0)
    #: Stop a stream whose model repeats the same delta this many times in a row; None = off.
    stream_repeat_limit: int | None = Field(None, ge=2)
    #: Accept ``data: [DONE]`` after content as the end of a stream that sent no finish_reason.
    #: Off by default: llama.cpp's server ends a stream it preempts exactly that way.
    accept_done_without_finish_reason: bool = False
    #: Most texts per embeddings request; None = the kind's default (256 for openai and azure,
    #: 64 for openai_compatible servers: docs/embeddings.md says why).
    embed_batch_size: int | None = Field(None, ge=1)
    #: Embeddings requests of one ``embed()`` call in flight at once.
    embed_concurrency: int = Field(4, ge=1)
    #: How ``response_format=<pydantic model or schema>`` is asked for: ``json_schema`` (OpenAI,
    #: Azure, vLLM, llama.cpp, Ollama >= 0.5, LM Studio) or ``json_object`` plus the schema in a
    #: system message, for servers that know only JSON mode (docs/tools.md).
    structured_output: Literal["json_schema", "json_object"] = "json_schema"
    #: How requests are sent: ``litellm`` (the default, every kind) or ``direct`` (modelwire's own
    #: HTTP client, for the kinds whose :attr:`Provider.transports` include it: docs/configuration.md).
    transport: Literal["litellm", "direct"] = "litellm"
    params: dict[str, Any] = {}

    @field_validator("api_base")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        # Anything else fails only at call time, deep in the transport (a URL-encoding error).
        if value is None:
            return None
        scheme, sep, rest = value.partition("://")
        host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
        if not sep or scheme.lower() not in ("http", "https") or not host or any(c.isspace() for c in value):
            raise ValueError(f"must be an http:// or https:// URL with a host, got {value!r}")
        return value

    @model_validator(mode="after")
    def _remember_header_secrets(self) -> ProviderConfig:
        # Credentials in configured headers (Azure APIM's Ocp-Apim-Subscription-Key, a gateway's
        # x-api-key...) are masked by redact() wherever they would show: errors, logs, `config`.
        for field in ("extra_headers", "headers"):
            headers = self.params.get(field)
            if isinstance(headers, dict):
                for name, value in headers.items():
                    if isinstance(name, str) and isinstance(value, str) and is_secret_name(name):
                        remember_secret(value.removeprefix("Bearer ").removeprefix("Basic "))
        return self


class StreamSettings(BaseModel):
    """The stream guards of one request: the provider's values, overridden per call with
    ``options={"stream": {"idle_timeout": 5}}`` (same keys as in :class:`ProviderConfig`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    first_token_timeout: float | None = Field(60.0, gt=0)
    idle_timeout: float | None = Field(30.0, gt=0)
    max_stream_duration: float | None = Field(None, gt=0)
    stream_repeat_limit: int | None = Field(None, ge=2)
    accept_done_without_finish_reason: StrictBool = False

    @classmethod
    def resolve(cls, config: ProviderConfig, options: dict[str, Any] | None) -> StreamSettings:
        """Merge ``options["stream"]`` over ``config``.

        :raises RequestValidationError: naming ``options.stream.<key>`` for an unknown key or a bad value.
        """
        base = {name: getattr(config, name) for name in cls.model_fields}
        override = (options or {}).get("stream")
        if override is None:
            return cls.model_construct(**base)  # already validated with the provider config
        if not isinstance(override, dict):
            raise RequestValidationError(f"options.stream must be a dict, got {type(override).__name__}")
        try:
            return cls.model_validate({**base, **override})
        except ValidationError as exc:
            problems = "; ".join(
                f"options.stream.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
            )
            allowed = ", ".join(cls.model_fields)
            raise RequestValidationError(f"{problems} (allowed keys: {allowed})") from None


@dataclass(slots=True)
class CheckResult:
    """Outcome of :meth:`Provider.check`: ``ok`` and a sentence a person can act on."""

    provider: str
    ok: bool
    message: str
    models: list[str] | None = None


class Provider:
    """Base class of provider kinds.

    :param name: the configured instance name (``local``, ``vllm-a``...).
    :param config: its validated :class:`ProviderConfig`.
    """

    #: pydantic model of this kind's config section; a subclass may narrow it.
    Config: ClassVar[type[ProviderConfig]] = ProviderConfig
    #: Texts per embeddings request when the config sets no ``embed_batch_size``.
    default_embed_batch_size: ClassVar[int] = 256
    #: The values of the ``transport`` setting this kind accepts.
    transports: ClassVar[frozenset[str]] = frozenset({"litellm"})

    def __init__(self, name: str, config: ProviderConfig) -> None:
        if config.transport not in self.transports:
            allowed = ", ".join(repr(t) for t in sorted(self.transports))
            raise ConfigurationError(
                f"config key 'providers.{name}.transport': {config.transport!r} is not available for kind "
                f"{config.kind or type(self).__name__!r} (allowed: {allowed}; 'direct' serves the kinds openai, "
                "azure and openai_compatible)"
            )
        self.name = name
        self.config = config

    async def acomplete(self, request: Request) -> Completion:
        if type(self).complete is Provider.complete:
            raise NotImplementedError(f"{type(self).__name__} implements neither complete nor acomplete")
        return await asyncio.to_thread(self.complete, request)

    def complete(self, request: Request) -> Completion:
        return portal.run(self.acomplete(request))

    async def astream(self, request: Request) -> AsyncIterator[Chunk]:
        if type(self).stream is Provider.stream:
            raise NotImplementedError(f"{type(self).__name__} implements neither stream nor astream")
        sync_iter = self.stream(request)
        done = object()
        while (chunk := await asyncio.to_thread(next, sync_iter, done)) is not done:
            yield chunk  # type: ignore[misc]

    def stream(self, request: Request) -> Iterator[Chunk]:
        return portal.iterate(self.astream(request))

    async def aembed(self, request: Request) -> Embeddings:
        """Embed ``request.params["input"]`` (a list of at most ``embed_batch_size`` texts) in
        one upstream call; vectors in input order. A kind that overrides neither this nor the
        sync ``embed`` has no embeddings: ``client.embed`` refuses it before any network call."""
        if type(self).embed is Provider.embed:
            raise NotImplementedError(f"{type(self).__name__} implements neither embed nor aembed")
        return await asyncio.to_thread(self.embed, request)

    def embed(self, request: Request) -> Embeddings:
        return portal.run(self.aembed(request))

    @classmethod
    def supports_embeddings(cls) -> bool:
        """Whether this kind overrides ``aembed`` or ``embed``."""
        return cls.aembed is not Provider.aembed or cls.embed is not Provider.embed

    async def awarmup(self) -> None:
        """Load what a first call needs (imports, pools) without blocking the loop; idempotent.

        Called by :meth:`Client.awarmup` and by the ratelimit middleware before it takes a permit,
        so a permit is never held while a first call imports its transport.
        """

    def warmup(self) -> None:
        """Blocking :meth:`awarmup` (``preload = true`` runs it in a background thread)."""

    async def aclose(self) -> None:
        """Release this provider's connections on the running loop (``Client.aclose``)."""

    def check(self) -> CheckResult:
        """Check that the provider is reachable and the credentials work, without raising."""
        return CheckResult(self.name, True, "no connection check for this provider kind")
