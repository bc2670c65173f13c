"""Stored values: JSON documents, never pickle, turned into fresh objects on every read.

The memory backend keeps each value as :class:`~.backends.Stored` bytes, which also hold the
entry once decoded (:func:`read_entry`): a hit then decodes nothing, and every object handed to
the caller is still a fresh copy (:func:`completion_from_entry`, :func:`chunks_from_entry`), so
a caller mutating its answer never changes the cached one.

An entry is ``{"v": 1, "exp": <unix time or null>, "kind": "completion" | "stream", ...}``.
A whole completion keeps its fields (and the provider's raw body as JSON); a stream keeps its
real chunks, so a streamed hit replays the same deltas, tool-call deltas, finish_reason and
usage. Either kind answers either kind of request: a stream is assembled into a completion, a
completion is replayed as a short stream.
"""

from __future__ import annotations

import json
import marshal
import time
from typing import Any

from modelwire.types import Chunk, Completion, ToolCall, ToolCallDelta, Usage

from .backends import Stored

__all__ = [
    "FORMAT",
    "CorruptEntry",
    "Frozen",
    "assemble",
    "chunks_from_entry",
    "completion_from_entry",
    "decode",
    "encode",
    "entry_from_chunks",
    "entry_from_completion",
    "json_copy",
    "raw_json",
    "read_entry",
    "size_floor",
]

#: Version of the stored document; another value is treated as a corrupt (old) entry.
FORMAT = 1


class CorruptEntry(ValueError):
    """A stored value that is not a modelwire cache document (old format, truncated, foreign)."""


def _usage(usage: Usage | None) -> dict[str, Any] | None:
    return usage.to_dict() if usage is not None else None


def raw_json(raw: Any) -> Any:
    """The provider's raw body as plain JSON data (litellm gives pydantic objects)."""
    if raw is None or isinstance(raw, (dict, list, str, int, float, bool)):
        return raw
    dump = getattr(raw, "model_dump", None)
    if dump is not None:
        try:
            return json.loads(json.dumps(dump(), default=str))
        except Exception:
            return None
    return None


def entry_from_completion(response: Completion) -> dict[str, Any]:
    """A JSON-able entry for a whole completion."""
    return {
        "v": FORMAT,
        "kind": "completion",
        "text": response.text,
        "finish_reason": response.finish_reason,
        "model": response.model,
        "provider": response.provider,
        "usage": _usage(response.usage),
        "tool_calls": [call.to_dict() for call in response.tool_calls],  # OpenAI's shape on disk
        "raw": raw_json(response.raw),
        "cost": response.cost,
    }


def entry_from_chunks(chunks: list[Chunk], final: Completion) -> dict[str, Any]:
    """A JSON-able entry for a finished stream: its chunks plus the assembled completion."""
    entry = entry_from_completion(final)
    entry["kind"] = "stream"
    entry["chunks"] = [
        {
            "text": c.text,
            "tool_calls": [
                {"index": t.index, "id": t.id, "name": t.name, "arguments": t.arguments} for t in c.tool_calls
            ],
            "finish_reason": c.finish_reason,
            "usage": _usage(c.usage),
            "index": c.index,
            "metadata": c.metadata,
        }
        for c in chunks
    ]
    return entry


#: The smallest JSON one stored chunk and one stored tool-call delta take (their empty skeletons).
_CHUNK_FLOOR = len(json.dumps(
    {"text": "", "tool_calls": [], "finish_reason": None, "usage": None, "index": 0, "metadata": {}},
    separators=(",", ":"),
))
_DELTA_FLOOR = len(json.dumps({"index": 0, "id": None, "name": None, "arguments": ""}, separators=(",", ":")))


def size_floor(chunk: Chunk) -> int:
    """A lower bound of the bytes ``chunk`` adds to the stored entry of its stream: its JSON in
    the chunk list, plus (choice 0) its text and arguments again in the assembled completion.
    A stream whose running total passes ``max_value_bytes`` can never be stored."""
    args = sum(len(t.arguments) for t in chunk.tool_calls)
    size = _CHUNK_FLOOR + len(chunk.text) + args + _DELTA_FLOOR * len(chunk.tool_calls)
    if chunk.index == 0:
        size += len(chunk.text) + args
    return size


def encode(entry: dict[str, Any], ttl: float | None) -> bytes:
    """Serialise ``entry`` with its expiry time; raises TypeError/ValueError when not JSON."""
    doc = dict(entry)
    doc["exp"] = time.time() + ttl if ttl else None
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def decode(data: bytes | str) -> dict[str, Any] | None:
    """The entry stored as ``data``, or None when it has expired.

    :raises CorruptEntry: when ``data`` is not a current-format modelwire entry.
    """
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptEntry(f"not JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or doc.get("v") != FORMAT or doc.get("kind") not in ("completion", "stream"):
        raise CorruptEntry("not a modelwire cache entry of the current format")
    exp = doc.get("exp")
    if exp is not None and exp <= time.time():
        return None
    return doc


def read_entry(data: bytes) -> dict[str, Any] | None:
    """The entry stored as ``data``, or None when it has expired. Decoded once per stored value
    when ``data`` is :class:`~.backends.Stored` (the memory backend's); never hand the entry out.

    :raises CorruptEntry: when ``data`` is not a current-format modelwire entry.
    """
    entry: dict[str, Any] | None = getattr(data, "entry", None)
    if entry is None:
        entry = decode(data)
        if entry is not None and isinstance(data, Stored):
            # shared by every later hit: the raw body is kept frozen, thawed into a copy per hit,
            # the usage parsed once and copied per hit (_usage_of)
            entry["raw"] = Frozen(entry.get("raw"))
            entry["usage"] = _usage_of(entry.get("usage"))
            data.entry = entry  # two threads racing here store equal entries: harmless
        return entry
    exp = entry.get("exp")
    return None if exp is not None and exp <= time.time() else entry


class Frozen:
    """JSON data kept as ``marshal`` bytes: :meth:`thaw` makes an independent copy in C, about
    twice as fast as :func:`json_copy` on a provider's raw body. Lives in this process only (the
    backends hold JSON, never this), so marshal's version-specific format does not matter."""

    __slots__ = ("_blob",)

    def __init__(self, value: Any) -> None:
        # version 2: no back-references, which JSON data never needs; loads ~25 % faster than 4
        self._blob = marshal.dumps(value, 2)

    def thaw(self) -> Any:
        return marshal.loads(self._blob)


def _usage_of(value: Any) -> Usage | None:
    """A fresh Usage from a stored usage dict, or a copy of a kept entry's parsed one."""
    if type(value) is Usage:
        return Usage(value.prompt_tokens, value.completion_tokens, value.total_tokens,
                     value.cached_prompt_tokens, value.reasoning_tokens)
    return Usage.from_dict(value)


def json_copy(value: Any) -> Any:
    """A deep copy of JSON data (dicts, lists, scalars), several times cheaper than
    ``copy.deepcopy``; anything else is returned as it is (JSON values hold nothing else)."""
    kind = type(value)
    if kind is dict:
        return {k: json_copy(v) for k, v in value.items()}
    if kind is list:
        return [json_copy(v) for v in value]
    return value


def completion_from_entry(entry: dict[str, Any]) -> Completion:
    """A fresh :class:`Completion` marked ``cached``, sharing nothing mutable with ``entry``
    (an entry straight from :func:`decode` is used once; a kept one holds its raw body frozen)."""
    calls = entry.get("tool_calls")
    raw = entry.get("raw")
    return Completion(
        entry.get("text") or "",
        entry.get("finish_reason"),
        entry.get("model") or "",
        entry.get("provider") or "",
        _usage_of(entry.get("usage")),
        [ToolCall.from_dict(call) for call in calls] if calls else [],
        True,
        raw.thaw() if type(raw) is Frozen else raw,
        entry.get("cost"),  # what the answer cost when stored (the cost plugin reports it as saved)
    )


def chunks_from_entry(entry: dict[str, Any]) -> list[Chunk]:
    """Fresh chunks to replay, marked ``cached`` and ``metadata["cache_hit"]``.

    A whole completion is replayed as one content chunk and one finish chunk carrying the usage.
    """
    stored = entry.get("chunks")
    if stored is None:
        deltas = []
        for i, call in enumerate(entry.get("tool_calls") or []):
            function = call.get("function") or {}
            deltas.append(ToolCallDelta(i, call.get("id"), function.get("name"), function.get("arguments") or ""))
        stored_chunks = [Chunk(text=entry.get("text") or "", tool_calls=deltas, cached=True)]
        stored_chunks.append(
            Chunk(finish_reason=entry.get("finish_reason"), usage=_usage_of(entry.get("usage")), cached=True)
        )
        for chunk in stored_chunks:
            chunk.metadata["cache_hit"] = True
        return stored_chunks
    return [
        Chunk(
            text=c.get("text") or "",
            tool_calls=[
                ToolCallDelta(t["index"], t.get("id"), t.get("name"), t.get("arguments") or "")
                for t in c.get("tool_calls") or []
            ],
            finish_reason=c.get("finish_reason"),
            usage=Usage.from_dict(c.get("usage")),
            index=c.get("index") or 0,
            cached=True,
            metadata={**json_copy(c.get("metadata") or {}), "cache_hit": True},
        )
        for c in stored
    ]


def assemble(chunks: list[Chunk], model: str, provider: str) -> Completion:
    """The completion a finished stream amounts to (choice 0), as :class:`AsyncStream` builds it."""
    pieces: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish: str | None = None
    usage: Usage | None = None
    for chunk in chunks:
        if chunk.index == 0:
            pieces.append(chunk.text)
            for delta in chunk.tool_calls:
                call = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
                call["id"] = delta.id or call["id"]
                call["name"] = delta.name or call["name"]
                call["arguments"] += delta.arguments
            if chunk.finish_reason is not None:
                finish = chunk.finish_reason
        if chunk.usage is not None:
            usage = chunk.usage
    tool_calls = [ToolCall(c["id"] or "", c["name"] or "", c["arguments"]) for _, c in sorted(calls.items())]
    return Completion("".join(pieces), finish, model, provider, usage, tool_calls)
