"""Item 9 of issue 9: a limit of N per period means at most N arrivals at the server in any
sliding window of that period, counted with the server's own arrival timestamps; warm or cold.

A permit counts from the moment the request surely reached the server (its answer came back;
at most ``send_margin`` after litellm's send signal), not from admission: see docs/ratelimit.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable

import modelwire
from modelwire.testing import FakeServer
from tests.conftest import SENTINEL_KEY
from tests.plugins.ratelimit.test_middleware import burst, chat_times, limited, max_in_window


async def test_rps_2_with_7_concurrent_calls_never_3_in_a_second(
    make_client: Callable[..., modelwire.Client], server: FakeServer
) -> None:
    make_client().complete("warm up", model="local/warmup")
    server.reset()
    client = limited(make_client, limits=[{"match": "openai/*", "rps": 2}])
    results = await burst(client, 7)
    assert all(isinstance(r, modelwire.Completion) for r in results), results
    times = chat_times(server)
    assert len(times) == 7 and max_in_window(times, 1.0) <= 2


async def test_unsmoothed_burst_of_a_whole_window_never_exceeds_the_rate(
    make_client: Callable[..., modelwire.Client], server: FakeServer
) -> None:
    """smooth=false admits 20 at once; they reach the server spread out by the CPU, so counting
    from admission let the next window's burst overlap them (22-32 in one second before)."""
    make_client().complete("warm up", model="local/warmup")
    server.reset()
    client = limited(make_client, limits=[{"match": "openai/*", "rps": 20, "smooth": False}])
    results = await burst(client, 60)
    assert all(isinstance(r, modelwire.Completion) for r in results), results
    times = chat_times(server)
    assert len(times) == 60 and max_in_window(times, 1.0) <= 20


_COLD = textwrap.dedent("""
    import asyncio, sys
    import modelwire
    config = {"middleware": ["ratelimit"], "providers": {"openai": {"api_base": sys.argv[1]}},
              "ratelimit": {"limits": [{"match": "openai/*", "rps": 1}]}}
    client = modelwire.Client(config=config)

    async def main() -> None:
        calls = [client.acomplete(f"cold {i}", model="openai/gpt-4o") for i in range(N)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, modelwire.Completion) for r in results), results

    modelwire.portal.run(main())
""")


def test_cold_process_rapid_calls_at_one_per_second(server: FakeServer) -> None:
    """The seed's acceptance test from a fresh process: calls admitted while litellm is still
    being imported must not reach the server together (3 within one second before)."""
    env = {**os.environ, "OPENAI_API_KEY": SENTINEL_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    script = _COLD.replace("N)", "6)")
    done = subprocess.run([sys.executable, "-c", script, server.openai_url], env=env, timeout=120,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    times = chat_times(server)
    assert len(times) == 6 and max_in_window(times, 1.0) <= 1
