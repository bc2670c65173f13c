"""One row of the suite's table, its budget and verdict, and the table and JSON it is printed as."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Budget", "Row", "na_row", "to_json", "table"]


@dataclass(frozen=True)
class Budget:
    """``on`` (``"ratio"`` or ``"modelwire"``) must be ``op`` ``limit``: ``"<="``, ``">="``, ``"<"``, ``">"``, ``"=="``,
    or ``"in"`` with ``limit`` a ``(low, high)`` pair."""

    op: str
    limit: float | tuple[float, float]
    on: str = "ratio"

    def holds(self, value: float) -> bool:
        if self.op == "in":
            low, high = self.limit  # type: ignore[misc]
            return bool(low <= value <= high)
        limit = float(self.limit)  # type: ignore[arg-type]
        return {"<=": value <= limit, ">=": value >= limit, "<": value < limit, ">": value > limit,
                "==": value == limit}[self.op]

    def __str__(self) -> str:
        target = "" if self.on == "ratio" else "value "
        if self.op == "in":
            low, high = self.limit  # type: ignore[misc]
            return f"{target}{_num(low)}..{_num(high)}"
        return f"{target}{self.op} {_num(float(self.limit))}"  # type: ignore[arg-type]


@dataclass
class Row:
    """A measured figure next to its reference from the same run.

    ``ratio`` defaults to modelwire / reference; ``budget`` None makes an information-only row.
    """

    id: str
    what: str
    modelwire: float | None
    reference: float | None
    unit: str
    reference_label: str
    budget: Budget | None = None
    ratio: float | None = None
    note: str = ""
    status: str = field(default="")

    def __post_init__(self) -> None:
        if self.ratio is None and self.modelwire is not None and self.reference:
            self.ratio = self.modelwire / self.reference
        if self.status:
            return
        value = self.ratio if self.budget is None or self.budget.on == "ratio" else self.modelwire
        if self.budget is None:
            self.status = "INFO"
        elif value is None:
            self.status = "ERROR"
        else:
            self.status = "PASS" if self.budget.holds(value) else "FAIL"


def na_row(id: str, what: str, reason: str, budget: Budget | None = None) -> Row:
    """A row that could not be measured in this environment (said in the table, not a failure)."""
    return Row(id, what, None, None, "", "", budget, note=reason, status="n/a")


def _num(value: float) -> str:
    if value == 0 or 0.01 <= abs(value) < 10_000:
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return f"{value:.2e}"


_UNITS = {"s": ("s", 1.0), "ms": ("ms", 1e3), "us": ("us", 1e6), "MB": ("MB", 1.0), "rps": ("rps", 1.0),
          "chunks/s": ("chunks/s", 1.0), "calls": ("calls", 1.0)}


def fmt(value: float | None, unit: str) -> str:
    """``value`` (seconds for time units) in ``unit``."""
    if value is None:
        return "-"
    if unit in ("ms", "us") and value >= 10:  # seconds read better than 1.2e+04 ms
        unit = "s"
    label, scale = _UNITS.get(unit, (unit, 1.0))
    return f"{_num(value * scale)} {label}".strip()


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table (readable on a terminal, pasteable in docs)."""
    head = ["row", "what is measured", "modelwire", "reference (same run)", "ratio", "budget", "result"]
    lines = [head]
    for row in rows:
        ref = f"{fmt(row.reference, row.unit)} {row.reference_label}".strip() if row.reference is not None else (
            row.reference_label or "-")
        what = f"{row.what} ({row.note})" if row.note else row.what
        ratio = "-" if row.ratio is None else f"{row.ratio:.3f}" if 0.01 <= row.ratio < 100 else f"{row.ratio:.3g}"
        lines.append([row.id, what, fmt(row.modelwire, row.unit), ref, ratio, str(row.budget or "-"), row.status])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |" for line in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def to_json(rows: list[Row], args: dict[str, Any], started: float, load_before: tuple[float, ...]) -> str:
    """The run as JSON: when, where (CPUs, load before and after), how, and every row."""
    doc = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "load_before": load_before,
            "load_after": os.getloadavg(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "args": args,
        "rows": [{**asdict(row), "budget": str(row.budget) if row.budget else None} for row in rows],
    }
    return json.dumps(doc, indent=2)
