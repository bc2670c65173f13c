"""The ``openai`` provider kind: api.openai.com, or another base URL speaking the same API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modelwire.hookspecs import hookimpl

from .litellm_base import DIRECT_OR_LITELLM, LiteLLMProvider

__all__ = ["OpenAIProvider"]


class OpenAIProvider(LiteLLMProvider):
    """OpenAI; the key comes from ``OPENAI_API_KEY`` unless ``api_key_env`` names another."""

    transports = DIRECT_OR_LITELLM


@hookimpl
def modelwire_register_providers(register: Callable[[str, type[Any]], None]) -> None:
    register("openai", OpenAIProvider)
