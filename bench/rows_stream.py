"""Row 7: concurrent streams against bare litellm streaming, and the peak RSS of one long stream.

Both reuse ``bench_stream``: the same echo streams (200 chunks each) from the server in its own
process, variants alternating round by round.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
from typing import Any

from bench.bench_stream import CHUNKS, _rss_mb, modelwire_stream, prompt, throughput
from bench.report import Budget, Row

__all__ = ["rss_rows", "stream_rows"]

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stream_rows(base: str, streams: int, rounds: int) -> list[Row]:
    """Row 7a: chunks per second, modelwire ``Client.astream`` (no middleware, as bench_stream
    measures it) vs ``litellm.acompletion(stream=True)`` (budget >= 5x: litellm's stream wrapper
    does pydantic work per chunk that modelwire's own SSE reader does not)."""
    res = asyncio.run(throughput(base, streams, rounds, both=True))
    return [Row("7a", f"{streams} concurrent streams x {CHUNKS} chunks: throughput",
                statistics.median(res["modelwire"]), statistics.median(res["litellm"]), "chunks/s",
                "bare litellm streaming", Budget(">=", 5.0), note=f"median of {rounds} rounds")]


async def _long_rss(base: str, chunks: int, middleware: list[str] | None) -> dict[str, float]:
    """In a fresh process: peak RSS growth while reading one ``chunks``-chunk stream."""
    from bench.rows_calls import local_client

    client = local_client(base, middleware)
    await modelwire_stream(client, prompt(50))  # litellm imported, pools open
    text = prompt(chunks)
    before = _rss_mb("VmRSS:")
    got = await modelwire_stream(client, text)
    assert got == chunks, got
    await client.aclose()
    return {"growth_mb": _rss_mb("VmHWM:") - before}


def _rss_in_subprocess(base: str, chunks: int, middleware: list[str] | None) -> float:
    code = ("import asyncio, json; from bench.rows_stream import _long_rss; "
            f"print(json.dumps(asyncio.run(_long_rss({base!r}, {chunks}, {middleware!r}))))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return float(result["growth_mb"])


def rss_rows(base: str, chunks: int) -> list[Row]:
    """Row 7b: peak RSS growth of one long stream through the default chain (budget < 20 MB, the
    prompt that the server echoes back included), the same stream without middleware beside it."""
    chain = _rss_in_subprocess(base, chunks, None)
    bare = _rss_in_subprocess(base, chunks, [])
    return [Row("7b", f"one {chunks:,}-chunk stream, default chain: peak RSS growth", chain, bare, "MB",
                "the same stream, no middleware", Budget("<", 20.0, on="modelwire"), note="fresh process each")]
