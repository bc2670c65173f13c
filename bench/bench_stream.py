"""Streaming throughput through modelwire vs bare litellm streaming, and memory of a long stream.

Run: ``.venv/bin/python bench/bench_stream.py`` (about 1 minute on 2 cores; ``--quick`` for a
smaller run, ``--full`` to run bare litellm at 1,000 x 200 too, about 2 more minutes). The
loopback server runs in its own process (so it does not share the client's GIL);
both sides ask it for the same echo streams (200 chunks each: one per word of the prompt).

1. Throughput: N concurrent streams of 200 chunks, modelwire ``Client.astream`` (no middleware)
   and ``litellm.acompletion(stream=True)`` iterated the usual way; chunks/s and the ratio
   modelwire / litellm (target >= 0.95). Bare litellm is slow per chunk (its stream wrapper does
   pydantic work and bookkeeping for every chunk), so 1,000 x 200 runs both sides only with --full.
2. Memory: one 100k-chunk stream in a fresh process; peak RSS growth (target < 20 MB), for
   modelwire and, for comparison, for bare litellm (whose stream wrapper keeps every chunk).
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import subprocess
import sys
import time
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("OPENAI_API_KEY", "sk-bench-0123456789abcdef")

import structlog  # noqa: E402

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
# litellm warns once per request when 1,000 streams wait for its 500-per-host pool: expected here.
logging.getLogger("LiteLLM").setLevel(logging.ERROR)

CHUNKS = 200


def _serve(port_queue: Any) -> None:
    from modelwire.testing import FakeServer

    server = FakeServer().start()
    port_queue.put(server.port)
    while True:
        time.sleep(3600)


def start_server() -> tuple[Any, str]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_serve, args=(queue,), daemon=True)
    proc.start()
    port = queue.get(timeout=60)
    return proc, f"http://127.0.0.1:{port}/v1"


def prompt(chunks: int) -> str:
    # The server echoes "echo: <prompt>" word by word: 1 + words pieces.
    return " ".join(f"w{i}" for i in range(chunks - 1))


async def modelwire_stream(client: Any, text: str) -> int:
    n = 0
    async with client.astream(text, model="local/m") as stream:
        async for chunk in stream:
            n += bool(chunk.text)
    return n


async def litellm_stream(litellm: Any, base: str, text: str) -> int:
    response = await litellm.acompletion(
        model="openai/m", messages=[{"role": "user", "content": text}], api_base=base,
        api_key="sk-no-key-required", stream=True, stream_options={"include_usage": True},
        num_retries=0, max_retries=0,
    )
    n = 0
    async for chunk in response:
        if chunk.choices and chunk.choices[0].delta.content:
            n += 1
    return n


async def throughput(base: str, streams: int, rounds: int, both: bool) -> dict[str, list[float]]:
    import litellm

    import modelwire

    client = modelwire.Client(config={"middleware": [], "providers": {
        "local": {"kind": "openai_compatible", "api_base": base}}})
    text = prompt(CHUNKS)
    await modelwire_stream(client, text)  # warm both paths (imports, client caches)
    await litellm_stream(litellm, base, text)
    results: dict[str, list[float]] = {"modelwire": [], "litellm": [], "modelwire_lag_ms": [], "litellm_lag_ms": []}
    for _ in range(rounds):
        for name in ("litellm", "modelwire") if both else ("modelwire",):
            lags: list[float] = []
            probe = asyncio.create_task(_lag_probe(lags))
            start = time.perf_counter()
            if name == "modelwire":
                counts = await asyncio.gather(*(modelwire_stream(client, text) for _ in range(streams)))
            else:
                counts = await asyncio.gather(*(litellm_stream(litellm, base, text) for _ in range(streams)))
            elapsed = time.perf_counter() - start
            probe.cancel()
            assert all(c == CHUNKS for c in counts), (name, set(counts))
            results[name].append(streams * CHUNKS / elapsed)
            lags.sort()
            picks = (len(lags) // 2, int(len(lags) * 0.99), -1)
            results[f"{name}_lag_ms"] = [1000 * lags[i] for i in picks]
    return results


async def _lag_probe(lags: list[float]) -> None:
    """Event-loop lag: how late a 10 ms sleep wakes up (X07)."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(0.01)
        lags.append(loop.time() - start - 0.01)


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return 0.0


async def _one_long(kind: str, base: str, chunks: int) -> dict[str, float]:
    import litellm

    import modelwire

    client = modelwire.Client(config={"middleware": [], "providers": {
        "local": {"kind": "openai_compatible", "api_base": base}}})
    long_text = prompt(chunks)
    if kind == "modelwire":
        await modelwire_stream(client, prompt(50))
    else:
        await litellm_stream(litellm, base, prompt(50))
    before = _rss_mb("VmRSS:")
    start = time.perf_counter()
    if kind == "modelwire":
        got = await modelwire_stream(client, long_text)
    else:
        got = await litellm_stream(litellm, base, long_text)
    elapsed = time.perf_counter() - start
    assert got == chunks, got
    # VmHWM is the peak RSS of the process; the prompt itself (~0.7 MB) is part of the growth.
    return {"growth_mb": _rss_mb("VmHWM:") - before, "seconds": elapsed}


def memory(kind: str, base: str, chunks: int) -> dict[str, float]:
    """Run one long stream in a fresh process (peak RSS is per process)."""
    call = f"b._one_long({kind!r}, {base!r}, {chunks})"
    code = f"import asyncio, json, bench_stream as b; print(json.dumps(asyncio.run({call})))"
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.abspath(__file__))}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _lag(ms: list[float]) -> str:
    return f"loop lag p50 {ms[0]:.1f} ms, p99 {ms[1]:.0f} ms, max {ms[2]:.0f} ms (opening every stream included)"


def main() -> int:
    quick, full = "--quick" in sys.argv, "--full" in sys.argv
    proc, base = start_server()
    try:
        print(f"bench_stream: {os.cpu_count()} CPUs, loopback server in its own process at {base}")
        # Bare litellm streams at ~2k chunks/s here, so 1,000 x 200 through it alone takes ~2 min:
        # by default both sides run 200 x 200, and modelwire alone also runs 1,000 x 200 (--full: both).
        sizes = [(100, 1, True)] if quick else [(200, 1, True), (1000, 1, full)]
        for streams, rounds, both in sizes:
            res = asyncio.run(throughput(base, streams, rounds, both))
            mw = max(res["modelwire"])
            print(f"\n1. {streams} concurrent streams x {CHUNKS} chunks")
            if both:
                ll = max(res["litellm"])
                print(f"   bare litellm : {ll:10,.0f} chunks/s   {_lag(res['litellm_lag_ms'])}")
                print(f"   modelwire    : {mw:10,.0f} chunks/s   {_lag(res['modelwire_lag_ms'])}")
                print(f"   ratio modelwire / litellm = {mw / ll:.2f}  (target >= 0.95)")
            else:
                print(f"   modelwire    : {mw:10,.0f} chunks/s   {_lag(res['modelwire_lag_ms'])}")
                print("   (bare litellm skipped at this size: --full runs it)")
        n, n_litellm = (20_000, 5_000) if quick else (100_000, 20_000)
        print("\n2. One long stream, peak RSS growth in a fresh process")
        for kind, chunks in (("modelwire", n), ("litellm", n_litellm)):
            m = memory(kind, base, chunks)
            target = "  (target < 20 MB)" if kind == "modelwire" else "  (litellm's wrapper keeps every chunk)"
            print(f"   {kind:<10}: {chunks:>7,} chunks: {m['growth_mb']:7.1f} MB in {m['seconds']:5.1f} s{target}")
    finally:
        proc.terminate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
