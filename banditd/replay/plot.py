"""The report as a figure (matplotlib, the `plot` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot(report: dict[str, Any], path: Path) -> None:
    """Quality against mean cost (log): each single model, the oracle and the policy (their
    frontiers with --sweep, the budget frontier with --sweep-budgets). Needs matplotlib."""
    from matplotlib.figure import Figure  # type: ignore[import-not-found, unused-ignore]

    fig = Figure(figsize=(8, 5.5))
    ax = fig.add_subplot()
    ax.set_xscale("log")
    for m in report["single_models"]:
        ax.scatter(m["mean_cost_usd"], m["mean_quality"], color="grey", s=18)
        point = (m["mean_cost_usd"], m["mean_quality"])
        ax.annotate(m["model"], point, xytext=(4, 2), textcoords="offset points", fontsize=7)
    curves = [("oracle", report.get("oracle_frontier", [report["oracle"]]), "black")]
    curves.append((report["policy"], report.get("frontier", [report]), "tab:blue"))
    if "budget_frontier" in report:
        curves.append((f"{report['policy']}, budgets", report["budget_frontier"], "tab:orange"))
    for label, points, color in curves:
        kept = sorted(
            (p for p in points if p["mean_cost_usd"] > 0), key=lambda p: p["mean_cost_usd"]
        )
        ax.errorbar(
            [p["mean_cost_usd"] for p in kept],
            [p["mean_quality"] for p in kept],
            yerr=[p.get("spread", {}).get("mean_quality", 0.0) for p in kept],
            marker="o",
            markersize=4,
            color=color,
            label=label,
            capsize=2,
        )
    ax.set_xlabel("mean cost per prompt (USD, log scale)")
    ax.set_ylabel("mean quality")
    ax.set_title(f"{Path(report['data']).name}: {report['n']} prompts", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
