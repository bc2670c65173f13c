"""The three built-in provider kinds pass the provider contract (modelwire.testing.contract), on both transports."""

from __future__ import annotations

from modelwire.testing.contract import ProviderContract


class TestOpenAI(ProviderContract):
    provider_config = {"kind": "openai", "api_base": "{openai_url}"}
    model = "gpt-4o"


class TestAzure(ProviderContract):
    provider_config = {"kind": "azure", "api_base": "{url}", "api_version": "2024-10-21"}
    model = "my-deployment"


class TestOpenAICompatible(ProviderContract):
    provider_config = {"kind": "openai_compatible", "api_base": "{openai_url}", "api_key_env": "MODELWIRE_CONTRACT_KEY"}
    model = "llama3"


# The same kinds on the direct route (transport = "direct": no litellm on the way).


class TestOpenAIDirect(TestOpenAI):
    provider_config = {**TestOpenAI.provider_config, "transport": "direct"}


class TestAzureDirect(TestAzure):
    provider_config = {**TestAzure.provider_config, "transport": "direct"}


class TestOpenAICompatibleDirect(TestOpenAICompatible):
    provider_config = {**TestOpenAICompatible.provider_config, "transport": "direct"}
