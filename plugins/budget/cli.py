"""``modelwire budget``: each limit's spend this period, from the configured store."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["format_usage", "run_command", "setup_command"]


def setup_command(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run_command(client: Any, args: argparse.Namespace) -> int:
    from modelwire import portal

    from . import budget_of

    budget = budget_of(client)
    if budget is None:
        print('budget is not enabled: add "budget" to the middleware list (after "cache") and a [budget] section')
        return 1
    try:
        rows = portal.run(budget.usage())
    except Exception as exc:
        print(f"the budget store ({budget.store.name}) failed: {type(exc).__name__}: {exc}")
        return 1
    if args.json:
        print(json.dumps({"backend": budget.store.name, "limits": budget.describe()["limits"], "usage": rows},
                         indent=2))
        return 0
    print(format_usage(budget.store.name, budget.describe()["limits"], rows))
    return 0


def format_usage(backend: str, limits: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    """The limits, then one line per limit and scope subject with spend in the current period."""
    lines = [f"backend: {backend} (periods are calendar periods in UTC)", "limits (every matching limit applies):"]
    for rule in limits:
        unit = f"${rule['usd']:g}" if "usd" in rule else f"{rule['tokens']} tokens"
        lines.append(f"  {rule['match']:<24} {unit} per {rule['period']}, scope {rule['scope']}")
    if not limits:
        lines.append("  (none configured)")
    lines.append("spent this period:")
    if backend == "memory":
        lines.append("  (memory backend: each process counts its own; this command sees only its own)")
    for row in rows:
        money = row["unit"] == "usd"

        def amount(value: float, money: bool = money) -> str:
            return f"${value:.6f}" if money else f"{value:.0f}"

        lines.append(
            f"  {row['match']:<24} {row['scope']}={row['subject']:<16} {amount(row['spent'])} of "
            f"{amount(row['limit'])} ({amount(row['reserved'])} reserved) per {row['period']}, "
            f"resets {row['resets_at']}"
        )
    if not rows:
        lines.append("  (nothing spent yet)")
    return "\n".join(lines)
