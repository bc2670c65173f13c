"""The three built-in provider kinds pass the provider contract (modelwire.testing.contract)."""

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
