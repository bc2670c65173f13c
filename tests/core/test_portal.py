"""The sync portal: blocking calls at interpreter exit and from modelwire's own loop."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest

import modelwire
from modelwire.testing import FakeServer

from ..conftest import SENTINEL_KEY

#: Generous: a fresh process imports litellm (3-13 s on a busy machine). A hang never ends.
_TIMEOUT = 120


def _run_script(source: str, server: FakeServer) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "OPENAI_API_KEY": SENTINEL_KEY,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "MW_API_BASE": server.openai_url,
    }
    try:
        return subprocess.run(
            [sys.executable, "-c", textwrap.dedent(source)],
            capture_output=True,
            text=True,
            timeout=_TIMEOUT,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the process hung at exit (no end within {_TIMEOUT} s): {exc.stderr!r}")


_CLIENT = """
import os
def make_client():
    import modelwire
    return modelwire.Client(config={"middleware": [], "providers": {"openai": {"api_base": os.environ["MW_API_BASE"]}}})
"""


def test_atexit_handler_registered_before_import_can_still_complete(server: FakeServer) -> None:
    """An atexit handler that runs after modelwire's own exit handler (atexit is LIFO) gets an answer."""
    proc = _run_script(
        _CLIENT
        + """
import atexit
def at_exit():
    print("late:", make_client().complete("after exit", model="openai/m").text, flush=True)
atexit.register(at_exit)  # registered first, so it runs after modelwire's handler
client = make_client()
print("early:", client.complete("before exit", model="openai/m").text, flush=True)
""",
        server,
    )
    assert proc.returncode == 0, proc.stderr
    assert "early: echo: before exit" in proc.stdout
    assert "late: echo: after exit" in proc.stdout
    assert server.calls() == 2


def test_del_calling_close_at_exit_does_not_hang(server: FakeServer) -> None:
    proc = _run_script(
        _CLIENT
        + """
class Owner:
    def __init__(self):
        self.client = make_client()
    def __del__(self):
        self.client.close()
        print("closed", flush=True)
owner = Owner()
print(owner.client.complete("hi", model="openai/m").text, flush=True)
""",
        server,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["echo: hi", "closed"]


def test_sync_stream_after_exit_runs_on_one_loop(server: FakeServer) -> None:
    """A sync stream spans several round trips: after exit they share one fallback loop."""
    proc = _run_script(
        _CLIENT
        + """
import atexit
def at_exit():
    with make_client().stream("one two three", model="openai/m") as s:
        print("late:", "".join(c.text for c in s), flush=True)
atexit.register(at_exit)
import modelwire.portal
modelwire.portal.run(__import__("asyncio").sleep(0))  # the portal thread exists and is stopped at exit
""",
        server,
    )
    assert proc.returncode == 0, proc.stderr
    assert "late: echo: one two three" in proc.stdout


class _Nested(modelwire.Middleware):
    """Makes a blocking call from inside the pipeline, i.e. on modelwire's own loop."""

    client: Any = None
    applies_to = ("whole",)

    async def ahandle(self, request: Any, call_next: Any) -> Any:
        return _Nested.client.complete("inner", model="openai/m")


class _NestedPlugin:
    @modelwire.hookimpl
    def modelwire_register_middleware(self, register: Callable[[str, type[Any]], None]) -> None:
        register("nested", _Nested)


def test_nested_sync_call_on_own_loop_raises_sync_call_error(
    make_client: Callable[..., modelwire.Client], server: FakeServer
) -> None:
    client = make_client(plugins=(_NestedPlugin(),), middleware=["nested"])
    _Nested.client = client
    with pytest.raises(modelwire.SyncCallError, match="async API") as info:
        client.complete("outer", model="openai/m")
    assert isinstance(info.value, modelwire.ModelwireError)
    assert server.calls() == 0
    plain = make_client()  # the portal itself still works afterwards
    assert plain.complete("again", model="openai/m").text == "echo: again"
