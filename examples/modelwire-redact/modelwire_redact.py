"""A modelwire middleware that masks e-mail addresses (and any configured pattern) in the
messages of every request, whole or streamed, before it reaches the provider.

Enable it in ``modelwire.toml`` once the package is installed::

    middleware = ["redact", "cache", "retry", "ratelimit"]
    [redact]
    mask = "[redacted]"
    patterns = ['\\b\\d{3}-\\d{2}-\\d{4}\\b']   # more regular expressions to mask
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from modelwire import Middleware, Request, hookimpl

__all__ = ["EMAIL", "RedactConfig", "RedactMiddleware"]

EMAIL = r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"


class RedactConfig(BaseModel):
    """The ``[redact]`` section."""

    model_config = ConfigDict(extra="forbid")

    #: What replaces each match.
    mask: str = "[redacted]"
    #: Mask e-mail addresses.
    emails: bool = True
    #: More regular expressions to mask.
    patterns: list[str] = Field(default_factory=list)

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:  # fail at load time, naming the key, not at the first request
                raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from None
        return patterns


class RedactMiddleware(Middleware):
    """Masks matches in message text; the request-only form, so streams are covered too."""

    Config = RedactConfig

    def __init__(self, config: RedactConfig | None, context: Any) -> None:
        super().__init__(config or RedactConfig(), context)
        self.config: RedactConfig = self.config
        patterns = ([EMAIL] if self.config.emails else []) + self.config.patterns
        self._regex = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
        self.masked = 0

    async def on_request(self, request: Request) -> Request:
        if self._regex is None:
            return request
        return request.replace(messages=[self._message(m) for m in request.messages])

    def _message(self, message: dict[str, Any]) -> dict[str, Any]:
        content = message.get("content")
        if isinstance(content, str):
            return {**message, "content": self._text(content)}
        if isinstance(content, list):  # content parts: mask the text parts, keep images as they are
            parts = [
                {**p, "text": self._text(p["text"])} if isinstance(p, dict) and isinstance(p.get("text"), str) else p
                for p in content
            ]
            return {**message, "content": parts}
        return message

    def _text(self, text: str) -> str:
        assert self._regex is not None
        masked, count = self._regex.subn(self.config.mask, text)
        self.masked += count
        return masked

    def describe(self) -> dict[str, Any]:
        return {"masked": self.masked}


@hookimpl
def modelwire_register_middleware(register: Callable[[str, type[Middleware]], None]) -> None:
    register("redact", RedactMiddleware)
