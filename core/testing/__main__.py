"""``python -m modelwire.testing``: the loopback server on its own, to try the CLI or an app
against OpenAI-, Azure- and local-style endpoints without a provider or a key.

    python -m modelwire.testing --port 8000

It prints the base URLs, a ``modelwire.toml`` to paste, and the model names that misbehave on
purpose (:data:`modelwire.testing.faults.FAULTS`); every other model gets an echo of the prompt.
Ctrl-C (SIGINT) or SIGTERM stops it; the exit code is then 0.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
from collections.abc import Callable
from types import FrameType

from .faults import FAULTS, Faults
from .server import FakeServer

__all__ = ["main", "toml_snippet"]

#: The variable the printed config reads keys from; the server ignores keys unless ``--api-key``.
KEY_ENV = "MODELWIRE_TEST_KEY"


def toml_snippet(server: FakeServer) -> str:
    """A ``modelwire.toml`` whose providers ``openai``, ``azure`` and ``local`` all use ``server``
    (``local`` sends a key only when the server requires one)."""
    local_key = f'api_key_env = "{KEY_ENV}"\n' if server.api_key else ""
    return (
        'default_model = "local/test-model"\n\n'
        f'[providers.openai]\napi_base = "{server.openai_url}"\napi_key_env = "{KEY_ENV}"\n\n'
        f'[providers.azure]\napi_base = "{server.url}"\napi_version = "2024-10-21"\napi_key_env = "{KEY_ENV}"\n\n'
        f'[providers.local]\nkind = "openai_compatible"\napi_base = "{server.openai_url}"\n' + local_key
    )


def main(argv: list[str] | None = None, out: Callable[[str], None] | None = None) -> int:
    echo = out or (lambda line: print(line, flush=True))
    parser = argparse.ArgumentParser(
        prog="python -m modelwire.testing",
        description="A loopback server that speaks the OpenAI and Azure OpenAI chat APIs, and fails on request.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    parser.add_argument("--api-key", help="require this key (Authorization: Bearer or api-key), else answer 401")
    args = parser.parse_args(argv)

    problem = _unavailable(args.host, args.port)
    if problem:
        print(f"error: cannot listen on {args.host}:{args.port}: {problem}", file=sys.stderr)
        return 2
    server = FakeServer(api_key=args.api_key, host=args.host)
    server.port = args.port
    server.responder = Faults()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    server.start()
    try:
        for line in _banner(server, args.api_key):
            echo(line)
        while not stop.wait(0.5):  # a timed wait keeps the main thread responsive to signals
            pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    echo(f"modelwire test server stopped; it answered {server.calls()} chat requests")
    return 0


def _unavailable(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound, or None; checked first because the server binds in its
    own thread, where a failure would leave this process waiting on nothing."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server does
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def _banner(server: FakeServer, api_key: str | None) -> list[str]:
    key = api_key or "anything"
    lines = [
        f"modelwire test server listening on {server.url}",
        f"  OpenAI             api_base = {server.openai_url}",
        f"  Azure OpenAI       api_base = {server.url}  (any deployment; api_version required, any value)",
        f"  OpenAI-compatible  api_base = {server.openai_url}",
        "",
        f"modelwire.toml (then: export {KEY_ENV}={key}):",
        "----- modelwire.toml -----",
        *toml_snippet(server).splitlines(),
        "----- end -----",
        "",
        "Any model name gets an echo of the prompt; these names misbehave on purpose:",
        *(f"  {name:<15} {fault.description}" for name, fault in FAULTS.items()),
        "",
        "Try: modelwire complete 'Say hi' --model local/fail-429",
        "Ctrl-C stops the server.",
    ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
