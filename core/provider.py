"""The innermost piece of the pipeline: something that turns a Request into a Completion.

Subclass :class:`Provider` and implement the async pair (``acomplete``, ``astream``), or only
the sync pair (``complete``, ``stream``) for a provider built on a blocking SDK; the base class
runs the sync pair in a worker thread when the pipeline asks for the async one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from . import portal
from .types import Chunk, Completion, Request

__all__ = ["CheckResult", "Provider", "ProviderConfig"]


class ProviderConfig(BaseModel):
    """Settings of one provider instance (``[providers.<name>]``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str | None = None
    api_base: str | None = None
    api_version: str | None = None
    api_key_env: str | None = None
    timeout: float = Field(600.0, gt=0)
    stream_usage: bool = True
    params: dict[str, Any] = {}


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

    def __init__(self, name: str, config: ProviderConfig) -> None:
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

    def check(self) -> CheckResult:
        """Check that the provider is reachable and the credentials work, without raising."""
        return CheckResult(self.name, True, "no connection check for this provider kind")
