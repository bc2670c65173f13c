"""``python -m modelwire.testing``: the loopback server as its own process, driven by the CLI
through a ``modelwire.toml`` made from what the server prints, then stopped by a signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelwire.testing import free_port

KEY = "sk-STANDALONE-0123456789abcdef"


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "modelwire.testing", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def banner(proc: subprocess.Popen[str]) -> list[str]:
    """The lines printed up to the ready line (readline returns "" if the process died)."""
    assert proc.stdout is not None
    lines: list[str] = []
    while not lines or lines[-1] != "Ctrl-C stops the server.":
        line = proc.stdout.readline()
        assert line, f"the server exited early: {lines} {proc.stderr.read() if proc.stderr else ''}"
        lines.append(line.rstrip("\n"))
    return lines


def stop(proc: subprocess.Popen[str], sig: signal.Signals) -> tuple[int, str]:
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out


@pytest.fixture
def standalone() -> Iterator[tuple[subprocess.Popen[str], int, list[str]]]:
    port = free_port()
    proc = start("--port", str(port))
    try:
        yield proc, port, banner(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELWIRE_CONFIG": str(config), "MODELWIRE_TEST_KEY": KEY,
           "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    return subprocess.run([sys.executable, "-m", "modelwire.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_cli_against_the_standalone_server(standalone: tuple[subprocess.Popen[str], int, list[str]],
                                           tmp_path: Path) -> None:
    proc, port, lines = standalone
    assert f"  OpenAI             api_base = http://127.0.0.1:{port}/v1" in lines
    assert f"  Azure OpenAI       api_base = http://127.0.0.1:{port}  (any deployment; api_version required, " \
           "any value)" in lines
    assert any(line.startswith("  fail-500 ") for line in lines) and any("stream-cut" in line for line in lines)
    snippet = lines[lines.index("----- modelwire.toml -----") + 1: lines.index("----- end -----")]
    config = tmp_path / "modelwire.toml"
    # the snippet as printed, without middleware: this test is about the server and the CLI
    config.write_text("middleware = []\n" + "\n".join(snippet) + "\n")

    whole = cli(config, "complete", "hello standalone")  # default_model = local/test-model
    assert (whole.returncode, whole.stdout) == (0, "echo: hello standalone\n"), whole.stderr
    streamed = cli(config, "complete", "--stream", "-m", "azure/my-deployment", "streamed words")
    assert (streamed.returncode, streamed.stdout) == (0, "echo: streamed words\n"), streamed.stderr
    failed = cli(config, "complete", "x", "-m", "openai/fail-401")  # 401 is never retried
    assert failed.returncode == 2 and "AuthenticationError" in failed.stderr
    assert KEY not in failed.stdout + failed.stderr

    code, out = stop(proc, signal.SIGTERM)
    assert code == 0
    assert out.strip().endswith("stopped; it answered 3 chat requests")


def test_sigint_stops_it_cleanly(standalone: tuple[subprocess.Popen[str], int, list[str]]) -> None:
    proc, _, _ = standalone
    code, out = stop(proc, signal.SIGINT)
    assert code == 0 and "stopped; it answered 0 chat requests" in out


def test_busy_port_is_a_clear_error(standalone: tuple[subprocess.Popen[str], int, list[str]]) -> None:
    _, port, _ = standalone
    second = start("--port", str(port))
    out, err = second.communicate(timeout=30)
    assert second.returncode == 2 and out == ""
    assert f"error: cannot listen on 127.0.0.1:{port}:" in err


def test_required_key_is_checked(tmp_path: Path) -> None:
    proc = start("--port", "0", "--api-key", KEY)
    try:
        lines = banner(proc)
        listening = lines[0].rsplit(":", 1)[1]
        assert int(listening) > 0  # --port 0 picks one and prints it
        snippet = lines[lines.index("----- modelwire.toml -----") + 1: lines.index("----- end -----")]
        assert snippet[-1] == 'api_key_env = "MODELWIRE_TEST_KEY"'  # local sends the key too
    finally:
        assert stop(proc, signal.SIGTERM)[0] == 0
