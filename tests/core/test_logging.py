"""The logging contract: events land in stdlib logging on the ``modelwire`` logger; the host decides.

Each test runs a small application in a fresh interpreter, so the host's logging configuration
(none, basicConfig, structlog) is exactly what the application set up.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest

from modelwire.testing import FakeServer, Reply, capture_events

#: A script prelude: a loopback server and a client without middleware.
PRELUDE = """
import sys
from modelwire.testing import FakeServer, Reply
import modelwire
server = FakeServer().start()
client = modelwire.Client(config={
    "middleware": ["retry"], "retry": {"max_attempts": 2, "base_delay": 0.01},
    "providers": {"local": {"kind": "openai_compatible", "api_base": server.openai_url}},
})
"""


def run_app(body: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MODELWIRE_CONFIG"}
    script = PRELUDE + textwrap.dedent(body) + "\nclient.close()\nserver.stop()\n"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)


def test_basic_config_shows_one_line_per_attempt_in_the_apps_format() -> None:
    done = run_app(
        """
        import logging
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="APP|%(levelname)s|%(name)s|%(message)s")
        server.script(Reply.error(500), Reply.completion("hi"))
        client.complete("a", model="local/m")
        client.complete("b", model="local/m")
        """
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("APP|")]
    modelwire_lines = [line for line in lines if line.split("|")[2] == "modelwire"]
    # attempt 1 failed (warning), attempt 2 answered, then the second call: three attempts, three lines
    assert [line.split("|")[1] for line in modelwire_lines] == ["WARNING", "INFO", "INFO"], done.stdout
    assert modelwire_lines[0].split("|")[3].startswith("llm.attempt_failed provider=local model=m attempt=1")
    assert modelwire_lines[1].split("|")[3].startswith("llm.response provider=local model=m attempt=2")
    assert not [line for line in lines if line not in modelwire_lines], "only modelwire's events at INFO"
    assert done.stderr == ""


def test_levels_are_set_per_logger() -> None:
    done = run_app(
        """
        import logging
        logging.basicConfig(level=logging.INFO, stream=sys.stdout)
        logging.getLogger("modelwire").setLevel(logging.ERROR)
        server.script(Reply.error(500))
        client.complete("a", model="local/m")
        """
    )
    assert done.returncode == 0, done.stderr
    assert "modelwire" not in done.stdout and done.stderr == ""


def test_structlog_hosts_receive_the_fields_intact() -> None:
    done = run_app(
        """
        import logging, structlog
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        structlog.processors.JSONRenderer()],
            foreign_pre_chain=[structlog.stdlib.add_log_level]))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        client.complete("a", model="local/m")
        """
    )
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    response = [e for e in events if e.get("event") == "llm.response"]
    assert len(response) == 1, done.stdout
    assert response[0]["provider"] == "local" and response[0]["model"] == "m" and response[0]["attempt"] == 1
    assert response[0]["level"] == "info" and isinstance(response[0]["latency_ms"], float)


class Exploding(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        raise RuntimeError("the log sink is down")


class ExplodingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        raise RuntimeError("the log filter is broken")


@pytest.mark.parametrize("breaker", ["handler", "filter"])
def test_a_failing_log_sink_never_fails_a_request(server: FakeServer, make_client, breaker: str) -> None:
    """Whole, streamed, failed-then-retried, cache warnings and close: all go on as if logging worked."""
    std = logging.getLogger("modelwire")
    if breaker == "handler":
        std.addHandler(Exploding())
    else:
        std.addFilter(ExplodingFilter())
    std.setLevel(logging.DEBUG)
    client = make_client(middleware=["cache", "retry"], retry={"max_attempts": 2, "base_delay": 0.01})
    try:
        server.script(Reply.error(500), Reply.completion("fine"))
        assert client.complete("a", model="local/m").text == "fine"
        with client.stream("b", model="local/m") as stream:
            assert "".join(chunk.text for chunk in stream)
        assert client.complete("a", model="local/m").cached
        client.close()
    finally:
        std.handlers[:] = [h for h in std.handlers if not isinstance(h, Exploding)]
        std.filters[:] = []
    assert server.calls() == 3


def test_cancelled_request_is_an_info_event_not_a_failure(server: FakeServer, make_client) -> None:
    import asyncio

    client = make_client()
    server.script(dataclasses.replace(Reply.completion("slow"), delay=30))

    async def go() -> None:
        task = asyncio.create_task(client.acomplete("a", model="local/m"))
        while server.calls() == 0:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with capture_events() as events:
        asyncio.run(go())
    assert [(e["event"], e["log_level"]) for e in events] == [("llm.cancelled", "info")]
    assert "error" not in events[0]


def test_cli_verbose_and_json_log_format(server: FakeServer, tmp_path) -> None:
    config = tmp_path / "modelwire.toml"
    config.write_text(
        f'middleware = []\n[providers.local]\nkind = "openai_compatible"\napi_base = "{server.openai_url}"\n'
    )
    base = [sys.executable, "-m", "modelwire.cli", "--config", str(config)]
    quiet = subprocess.run([*base, "complete", "hi", "--model", "local/m"], capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout.strip()
    loud = subprocess.run(
        [*base, "-v", "--log-format", "json", "complete", "hi", "--model", "local/m"],
        capture_output=True, text=True, timeout=300,
    )
    assert loud.returncode == 0, loud.stderr
    events = [json.loads(line) for line in loud.stderr.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events] == ["llm.response"] and events[0]["provider"] == "local"
    assert loud.stdout == quiet.stdout  # answers on stdout, events on stderr
