"""The echo provider runs modelwire's provider contract against itself.

It answers locally instead of talking to an OpenAI-style server, so it declares no capability:
the wire checks (scripted server replies, error mapping, timeouts, cancellation of the upstream)
are skipped, and :meth:`expected_text` says what its answer must be.
"""

from __future__ import annotations

import modelwire_echo

from modelwire.testing.contract import ProviderContract


class TestEchoContract(ProviderContract):
    provider_config = {"kind": "echo"}
    plugins = (modelwire_echo,)
    capabilities = frozenset()

    def expected_text(self, prompt: str) -> str:
        return prompt[::-1]
