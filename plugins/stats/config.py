"""The ``[stats]`` section; a module of its own so that importing the plugin (``modelwire --help``
does) does not import pydantic."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

__all__ = ["StatsConfig"]


class StatsConfig(BaseModel):
    """The ``[stats]`` section; the backend keys have the shape of ``[ratelimit]``'s."""

    #: memory: this process only; sqlite: the processes of one host; redis: every host.
    backend: Literal["memory", "sqlite", "redis"] = "memory"
    path: str | None = None
    url: str | None = None
    #: the Redis hash holding the shared counters (give each deployment its own).
    key: str = "modelwire:stats"
    #: seconds between two writes of this process's deltas to the shared store.
    flush_interval: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    #: seconds a shared-store write may take before it is given up (and retried next flush).
    timeout: float = Field(default=2.0, gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _backend_needs(self) -> StatsConfig:
        if self.backend == "sqlite" and not self.path:
            raise ValueError('path is required with backend = "sqlite" (e.g. path = "/var/tmp/modelwire-stats.sqlite")')
        if self.backend == "redis" and not self.url:
            raise ValueError('url is required with backend = "redis" (e.g. url = "redis://host:6379/0")')
        return self
