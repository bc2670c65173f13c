"""Run test code in a real forked child (gunicorn --preload, multiprocessing's fork) and get its
report back on a pipe; a child that hangs is killed and fails the test."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

#: Seconds a forked child may take: generous, it only catches a hang.
CHILD_LIMIT = 150.0


def fork_child(work: Callable[[], dict[str, Any]]) -> tuple[int, int]:
    """Start ``work`` in a forked child; returns ``(pid, read_fd)`` for :func:`collect_child`.
    The child reports ``work()``'s dict, or ``{"error": repr(exc)}``, and never returns into pytest."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        code = 1
        try:
            os.write(write, json.dumps(work()).encode())
            code = 0
        except BaseException as exc:  # report anything: the parent asserts on it
            os.write(write, json.dumps({"error": repr(exc)}).encode())
        finally:
            os._exit(code)
    os.close(write)
    return pid, read


def collect_child(pid: int, read: int, deadline: float) -> dict[str, Any]:
    """Wait for a child from :func:`fork_child` until ``deadline`` (monotonic) and read its report."""
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"a forked child did not finish within {CHILD_LIMIT} s")
        time.sleep(0.05)
    with os.fdopen(read, "rb") as pipe:
        report: dict[str, Any] = json.loads(pipe.read() or b"{}")
    return report


def run_forked(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``work`` in one forked child and return its report."""
    pid, read = fork_child(work)
    return collect_child(pid, read, time.monotonic() + CHILD_LIMIT)
