"""Keeping litellm's logging worker task from being destroyed while pending.

litellm 1.110 runs one ``LoggingWorker`` per process, whose ``_worker_loop`` task lives on the
event loop of the call that started it. When a call comes from another event loop while the first
is still alive (a host mixing ``client.complete()``, which runs on modelwire's portal loop, with
``await client.acomplete()`` on its own loop), litellm starts a new task there and drops its only
reference to the old one without cancelling it. The old task, pending on a queue nobody references
any more, is then garbage-collected and asyncio prints "Task was destroyed but it is pending!" on
the host's stderr. Holding every such task until it is done (its loop cancels it when it ends, as
``asyncio.run`` and the portal do) keeps that line out of the host's output.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

__all__ = ["keep_litellm_worker"]

_KEPT: set[asyncio.Task[Any]] = set()


def keep_litellm_worker() -> None:
    """Hold litellm's current logging worker task until it is done (call after a litellm call)."""
    module = sys.modules.get("litellm.litellm_core_utils.logging_worker")
    task = getattr(getattr(module, "GLOBAL_LOGGING_WORKER", None), "_worker_task", None)
    if isinstance(task, asyncio.Task) and task not in _KEPT and not task.done():
        _KEPT.add(task)
        task.add_done_callback(_KEPT.discard)
