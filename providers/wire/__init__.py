"""What the litellm route and the direct route share: the wire format and its faults.

- :mod:`.sse`: the strict incremental Server-Sent Events decoder;
- :mod:`.stream_parse`: stream events (JSON) into :class:`~modelwire.Chunk` values;
- :mod:`.guard`: the stream read loop with its timeouts and end checks;
- :mod:`.status`: the error for an HTTP status, body and headers (Retry-After included);
- :mod:`.answer`: whole completions and embeddings from their JSON, and the checks on them.

Neither route's transport is imported here: a process that only uses the direct route never
imports litellm.
"""

__all__: list[str] = []
