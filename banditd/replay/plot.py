"""The report as a figure (matplotlib, the `plot` extra): quality against cost on the left,
cumulative regret over the stream on the right."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FIGSIZE = (14.0, 5.5)  # inches: two panels side by side


def figure(report: dict[str, Any]) -> Any:
    """A matplotlib Figure of the report (two axes): quality against mean cost (log), with each
    single model labelled, the oracle and the policy (their frontiers with --sweep, the budget
    frontier with --sweep-budgets); and cumulative regret against the oracle over the stream,
    the policy's and the references', each the mean over the seeds."""
    from matplotlib.figure import Figure  # type: ignore[import-not-found, unused-ignore]

    fig = Figure(figsize=FIGSIZE, layout="constrained")
    frontier, regret = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.3, 1.0]})
    _frontier_panel(frontier, report)
    _regret_panel(regret, report)
    fig.suptitle(f"{Path(report['data']).name}: {report['n']} prompts", fontsize=10)
    return fig


def plot(report: dict[str, Any], path: Path) -> None:
    """Write the report's figure as a PNG. Needs matplotlib."""
    figure(report).savefig(path, dpi=120, bbox_inches="tight")


def _frontier_panel(ax: Any, report: dict[str, Any]) -> None:
    ax.set_xscale("log")
    priciest = max(m["mean_cost_usd"] for m in report["single_models"])
    for m in report["single_models"]:
        ax.scatter(m["mean_cost_usd"], m["mean_quality"], color="grey", s=18)
        point = (m["mean_cost_usd"], m["mean_quality"])
        right = m["mean_cost_usd"] == priciest  # its label goes left, inside the panel
        ax.annotate(
            m["model"],
            point,
            xytext=(-4 if right else 4, 2),
            textcoords="offset points",
            ha="right" if right else "left",
            fontsize=7,
        )
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
    ax.set_title("quality and cost", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _regret_panel(ax: Any, report: dict[str, Any]) -> None:
    curves = report["regret_over_time"]
    seeds = len(report["seeds"])
    for policy, regret in curves["cumulative_regret"].items():
        main = policy == report["policy"]
        averaged = seeds > 1 and policy != "best-single"  # best-single is the same every seed
        ax.plot(
            curves["prompts"],
            regret,
            label=f"{policy} (mean of {seeds} seeds)" if averaged else policy,
            linewidth=2.0 if main else 1.0,
            linestyle="-" if main else "--",
        )
    weight = f", cost weight {report['cost_weight']:g}" if report["cost_weight"] else ""
    ax.set_xlabel("prompts")
    ax.set_ylabel("cumulative regret vs the oracle")
    ax.set_title(f"regret over the stream{weight}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
