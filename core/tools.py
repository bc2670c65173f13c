"""Tool calls the model asked for: :class:`ToolCall`, one per call, on ``Completion.tool_calls``.

A provider answers with OpenAI's dict shape (``{"id", "type": "function", "function": {"name",
"arguments"}}``); modelwire turns it into a :class:`ToolCall` at the edge (the provider, the stream
assembler, a cache read) and writes the dict shape back wherever JSON is stored or sent
(:meth:`ToolCall.to_dict`), so cache entries stay readable across versions.

>>> call = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
>>> call.arguments_json()["city"]
'Paris'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import ToolArgumentsError

__all__ = ["ToolCall"]


@dataclass(slots=True)
class ToolCall:
    """One function call the model asked for.

    ``arguments`` is the raw string the model produced (possibly invalid JSON: models do that);
    :meth:`arguments_json` parses it. ``complete`` is False only on
    ``StreamInterruptedError.partial_tool_calls``: a call cut short mid-stream, never to be run.
    """

    id: str
    name: str
    arguments: str = ""
    type: str = "function"
    complete: bool = True

    def arguments_json(self) -> dict[str, Any]:
        """The arguments as a JSON object.

        :raises ToolArgumentsError: when they are not valid JSON, not an object, or the call is
            incomplete (a stream cut mid-call); the error names the call and what was wrong.
        """
        where = f"tool call {self.id or '?'} ({self.name or '?'})"
        if not self.complete:
            raise ToolArgumentsError(f"{where} is incomplete (the stream was interrupted): do not run it",
                                     call=self)
        try:
            value = json.loads(self.arguments or "{}")  # "" is what some servers send for no arguments
        except json.JSONDecodeError as exc:
            raise ToolArgumentsError(
                f"{where}: arguments are not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                call=self,
            ) from None
        if not isinstance(value, dict):
            raise ToolArgumentsError(f"{where}: arguments must be a JSON object, got {type(value).__name__}",
                                     call=self)
        return value

    def to_dict(self) -> dict[str, Any]:
        """OpenAI's wire shape (what an assistant message sends back, what the cache stores)."""
        return {"id": self.id, "type": self.type, "function": {"name": self.name, "arguments": self.arguments}}

    @classmethod
    def from_dict(cls, data: Any) -> ToolCall:
        """Read OpenAI's dict shape (a provider answer, a cache entry); missing parts become ""."""
        if isinstance(data, ToolCall):
            return data
        if not isinstance(data, dict):
            raise TypeError(f"a tool call must be a dict in OpenAI's shape, got {type(data).__name__}")
        function = data.get("function") or {}
        arguments = function.get("arguments")
        if arguments is not None and not isinstance(arguments, str):
            arguments = json.dumps(arguments)  # a few servers send an object instead of a string
        return cls(str(data.get("id") or ""), str(function.get("name") or ""), arguments or "",
                   str(data.get("type") or "function"))

    def __getitem__(self, key: str) -> Any:
        """Read access in OpenAI's dict shape (``call["function"]["arguments"]``), for code written
        when ``Completion.tool_calls`` held dicts."""
        if key == "complete":
            return self.complete
        return self.to_dict()[key]
