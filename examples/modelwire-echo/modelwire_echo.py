"""An example third-party provider plugin for modelwire.

Install it (``pip install ./examples/modelwire-echo``) and configure::

    [providers.mirror]
    kind = "echo"

Then ``client.complete("hello", model="mirror/any")`` answers ``"olleh"``. It is written against
the *sync* half of the Provider interface on purpose: modelwire runs it in a worker thread when
the async pipeline asks for it, so a provider built on a blocking SDK needs no async code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from modelwire import Chunk, Completion, Provider, Request, Usage, hookimpl

__all__ = ["EchoProvider"]


class EchoProvider(Provider):
    """Answers with the last user message reversed; streams it one word at a time."""

    def _answer(self, request: Request) -> str:
        content = next((m["content"] for m in reversed(request.messages) if m["role"] == "user"), "")
        return str(content)[::-1]

    def complete(self, request: Request) -> Completion:
        text = self._answer(request)
        usage = Usage(len(text.split()), len(text.split()), 2 * len(text.split()))
        return Completion(text=text, finish_reason="stop", model=request.model, provider=self.name, usage=usage)

    def stream(self, request: Request) -> Iterator[Chunk]:
        words = self._answer(request).split(" ")
        for i, word in enumerate(words):
            yield Chunk(text=word if i == 0 else " " + word)
        yield Chunk(finish_reason="stop")


@hookimpl
def modelwire_register_providers(register: Callable[[str, type[Any]], None]) -> None:
    register("echo", EchoProvider)
