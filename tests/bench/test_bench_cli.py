"""``python -m bench``: the command answers --help and refuses an unknown row without measuring
anything, and its rows get their verdicts and JSON right. No figure is asserted here: speed
belongs to the bench's own table."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.report import Budget, Row, na_row, table, to_json

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_help_names_the_options_and_rows() -> None:
    out = bench("--help")
    assert out.returncode == 0, out.stderr
    for word in ("--quick", "--only", "--json", "--strict", "import", "scaling"):
        assert word in out.stdout


def test_unknown_row_is_refused_by_name_before_measuring() -> None:
    out = bench("--only", "hit,nonsense", "--json", os.devnull)
    assert out.returncode != 0
    assert "nonsense" in out.stderr and "python -m bench:" not in out.stdout


@pytest.mark.parametrize(
    ("budget", "mw", "ref", "status"),
    [
        (Budget("<=", 2.5), 2.0, 1.0, "PASS"),
        (Budget("<=", 2.5), 3.0, 1.0, "FAIL"),
        (Budget(">=", 5.0), 10.0, 2.0, "PASS"),
        (Budget("in", (0.95, 1.0)), 180.0, 200.0, "FAIL"),
        (Budget("<", 20.0, on="modelwire"), 19.0, 50.0, "PASS"),
        (Budget("<", 20.0, on="modelwire"), 21.0, 50.0, "FAIL"),
        (None, 3.0, 1.0, "INFO"),
    ],
)
def test_verdict_follows_the_budget(budget: Budget | None, mw: float, ref: float, status: str) -> None:
    row = Row("x", "figure", mw, ref, "ms", "reference", budget)
    assert row.ratio == pytest.approx(mw / ref)
    assert row.status == status


def test_table_and_json_carry_every_row() -> None:
    rows = [Row("4a", "memory hit p50", 150e-6, 30e-6, "us", "floor", Budget("<=", 2.5)),
            na_row("D1", "direct miss p50", "not available", Budget("<=", 1.3))]
    text = table(rows)
    assert "| 4a " in text and "FAIL" in text and "| D1 " in text and "n/a" in text
    doc = json.loads(to_json(rows, {"quick": True}, 0.0, (0.0, 0.0, 0.0)))
    assert [(r["id"], r["status"], r["budget"]) for r in doc["rows"]] == [("4a", "FAIL", "<= 2.5"),
                                                                        ("D1", "n/a", "<= 1.3")]
    assert doc["rows"][0]["ratio"] == pytest.approx(5.0)
