"""The connection pool under modelwire's HTTP client (providers/aiohttp_pool.py): connections kept
alive between bursts, sessions closed without a word when a client is dropped."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable

import modelwire
from modelwire.testing import FakeServer, Reply

SLOW = 1.5  # seconds each answer waits: long enough for every call of the burst to be in flight


def test_a_burst_keeps_its_connections_alive(make_client: Callable[..., modelwire.Client], server: FakeServer) -> None:
    """40 concurrent calls need up to 40 connections; once answered, all of them stay open for the
    next burst (httpx's pool kept 20 and closed the others)."""
    n = 40
    for i in range(n):
        server.script(dataclasses.replace(Reply.completion(f"a{i}"), delay=SLOW))

    async def main() -> tuple[int, int]:
        client = make_client(middleware=[])
        try:
            texts = await asyncio.gather(*(client.acomplete(f"q{i}", model="local/m") for i in range(n)))
            assert sorted(t.text for t in texts) == sorted(f"a{i}" for i in range(n))
            await asyncio.sleep(0.5)  # the server sees a connection the client closed within this
            return server.max_in_flight, server.open_connections
        finally:
            await client.aclose()

    in_flight, still_open = asyncio.run(main())
    assert in_flight > 20, f"only {in_flight} calls were in flight at once"
    assert still_open >= in_flight


def test_a_dropped_client_closes_its_session_quietly(server: FakeServer, tmp_path: object) -> None:
    """A sync client dropped without close(): the portal loop closes its HTTP session; nothing is
    printed ("Unclosed client session" from a garbage cycle's finalizers came first before)."""
    source = textwrap.dedent(
        f"""
        import gc, modelwire
        def use(transport):
            client = modelwire.Client(config={{"middleware": [], "providers": {{"local": {{
                "kind": "openai_compatible", "api_base": "{server.openai_url}", "transport": transport}}}}}})
            assert client.complete("hi", model="local/m").text == "echo: hi"
            with client.stream("hi", model="local/m") as stream:
                list(stream)
        for transport in ("litellm", "direct", "litellm"):
            use(transport)
            gc.collect()
        print("done")
        """
    )
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    proc = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "done\n"
    assert "nclosed" not in proc.stderr, proc.stderr
