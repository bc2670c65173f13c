"""The direct route (``transport = "direct"``): modelwire's own HTTP requests, no litellm.

For the ``openai``, ``azure`` and ``openai_compatible`` kinds, which all speak OpenAI's wire
format. :mod:`.request` builds the HTTP requests, :mod:`.route` sends them through the provider's
per-loop client (:mod:`modelwire.providers.transport`) and reads the answers with what the litellm
route uses too (:mod:`modelwire.providers.wire`): same errors, stream guards, usage and values.
Nothing here imports litellm or the openai SDK.
"""

from .route import DirectRoute

__all__ = ["DirectRoute"]
