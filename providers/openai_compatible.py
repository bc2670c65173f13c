"""The ``openai_compatible`` provider kind: vLLM, llama.cpp ``llama-server``, Ollama, LM Studio.

``api_base`` is required (``http://127.0.0.1:8000/v1``); a key is optional (Ollama wants one
but ignores it) and is read only when ``api_key_env`` is set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modelwire.errors import ConfigurationError
from modelwire.hookspecs import hookimpl
from modelwire.provider import ProviderConfig

from .litellm_base import DIRECT_OR_LITELLM, LiteLLMProvider

__all__ = ["OpenAICompatibleProvider"]


class OpenAICompatibleProvider(LiteLLMProvider):
    """Any server with an OpenAI-style ``/chat/completions``."""

    default_key_env = None
    transports = DIRECT_OR_LITELLM
    key_required = False
    # A local server embeds a batch in one forward pass bounded by its own batch size (llama.cpp's
    # --ubatch-size, vLLM's max_num_seqs): smaller requests avoid its 500s and timeouts.
    default_embed_batch_size = 64

    def __init__(self, name: str, config: ProviderConfig) -> None:
        if not config.api_base:
            raise ConfigurationError(
                f"config key 'providers.{name}.api_base' is required for kind openai_compatible "
                "(e.g. http://127.0.0.1:8000/v1)"
            )
        super().__init__(name, config)


@hookimpl
def modelwire_register_providers(register: Callable[[str, type[Any]], None]) -> None:
    register("openai_compatible", OpenAICompatibleProvider)
