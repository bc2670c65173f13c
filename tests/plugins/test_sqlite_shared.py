"""Several real processes opening one new shared SQLite file at the same moment (the budget and
stats stores): switching a new file to WAL takes a lock SQLite's busy timeout does not wait for,
so before ``connect_shared`` one of them failed at once with "database is locked" (CI saw it as a
BudgetUnavailableError in the two-process budget test)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelwire.plugins.budget.store import Charge
from modelwire.plugins.budget.store import SQLiteStore as BudgetStore
from modelwire.plugins.stats.shared import SQLiteStore as StatsStore
from tests.forking import CHILD_LIMIT, collect_child, fork_child

PROCESSES = 4
ROUNDS = 25  # before the fix about one round in six failed on a quiet machine


def _together(work: Callable[[], dict[str, Any]]) -> list[dict[str, Any]]:
    """Fork PROCESSES children that all start ``work`` when released at once; their reports."""
    go_read, go_write = os.pipe()

    def child() -> dict[str, Any]:
        os.read(go_read, 1)
        return work()

    children = [fork_child(child) for _ in range(PROCESSES)]
    os.write(go_write, b"x" * PROCESSES)
    os.close(go_read)
    os.close(go_write)
    deadline = time.monotonic() + CHILD_LIMIT
    return [collect_child(pid, read, deadline) for pid, read in children]


def test_processes_opening_a_new_budget_file_together_all_reserve(tmp_path: Path) -> None:
    for n in range(ROUNDS):
        path = str(tmp_path / f"budget{n}.sqlite")

        def reserve(path: str = path) -> dict[str, Any]:
            store = BudgetStore(path, timeout=10.0)
            refused = store.reserve([Charge("k", 1.0, 100.0, time.time() + 3600)], time.time())
            return {"refused": refused}

        assert _together(reserve) == [{"refused": None}] * PROCESSES, f"round {n}"
        records = BudgetStore(path, timeout=10.0).read(time.time())
        assert [(r.key, r.reserved) for r in records] == [("k", float(PROCESSES))]


def test_processes_opening_a_new_stats_file_together_all_count(tmp_path: Path) -> None:
    for n in range(ROUNDS):
        path = str(tmp_path / f"stats{n}.sqlite")

        def add(path: str = path) -> dict[str, Any]:
            StatsStore(path, timeout=10.0).add({"requests": 1})
            return {}

        assert _together(add) == [{}] * PROCESSES, f"round {n}"
        assert StatsStore(path, timeout=10.0).read() == {"requests": float(PROCESSES)}
