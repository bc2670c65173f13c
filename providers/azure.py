"""The ``azure`` provider kind: Azure OpenAI deployments.

Models are addressed as ``azure/<deployment>``. ``api_base`` (the resource endpoint,
``https://<resource>.openai.azure.com``) and ``api_version`` are required; the key is sent in
the ``api-key`` header and read from ``AZURE_OPENAI_API_KEY`` unless ``api_key_env`` says else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modelwire.errors import ConfigurationError
from modelwire.hookspecs import hookimpl
from modelwire.provider import ProviderConfig

from .litellm_base import DIRECT_OR_LITELLM, LiteLLMProvider

__all__ = ["AzureProvider"]


class AzureProvider(LiteLLMProvider):
    """Azure OpenAI through litellm's ``azure/`` route."""

    prefix = "azure"
    transports = DIRECT_OR_LITELLM
    default_key_env = "AZURE_OPENAI_API_KEY"

    def __init__(self, name: str, config: ProviderConfig) -> None:
        missing = [k for k in ("api_base", "api_version") if not getattr(config, k)]
        if missing:
            raise ConfigurationError(
                f"Azure provider '{name}' needs "
                + " and ".join(f"'providers.{name}.{k}'" for k in missing)
                + " (api_base = \"https://<resource>.openai.azure.com\", api_version = \"2024-10-21\")"
            )
        if "/openai/deployments/" in (config.api_base or ""):
            raise ConfigurationError(
                f"config key 'providers.{name}.api_base' must be the resource endpoint, not a "
                "deployment URL: drop '/openai/deployments/...' and address the deployment as "
                f"'{name}/<deployment>'"
            )
        super().__init__(name, config)

    def models_url(self) -> str:
        return str(self.config.api_base).rstrip("/") + "/openai/models"

    def models_query(self) -> dict[str, str]:
        return {"api-version": str(self.config.api_version)}

    def auth_headers(self) -> dict[str, str]:
        return {"api-key": self.api_key()}


@hookimpl
def modelwire_register_providers(register: Callable[[str, type[Any]], None]) -> None:
    register("azure", AzureProvider)
