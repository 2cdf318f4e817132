"""The report as a figure (matplotlib, the `plot` extra): quality against cost on the left,
cumulative regret over the stream on the right."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from banditd.evaluation.replay.zero_router import hull_quality

FIGSIZE = (14.0, 5.5)  # inches: two panels side by side
HULL_SAMPLES = 200  # costs a hull is drawn through


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
    models = report["single_models"]
    priciest = max(m["mean_cost_usd"] for m in models)
    # In one call: the axis autoscales to all of them (one point alone has no x range).
    ax.scatter(
        [m["mean_cost_usd"] for m in models],
        [m["mean_quality"] for m in models],
        color="grey",
        s=18,
    )
    for m in models:
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
    _hulls(ax, report)
    ax.set_xlabel("mean cost per prompt (USD, log scale)")
    ax.set_ylabel("mean quality")
    ax.set_title("quality and cost", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _hulls(ax: Any, report: dict[str, Any]) -> None:
    """The zero router's hull (of the single models) and the policy's, as drawn lines: what
    gain_vs_zero_router compares; with metadata keys, also the hindsight group router's
    (metadata_routing_ceiling). Each is flat past its priciest point."""
    right = max(m["mean_cost_usd"] for m in report["single_models"])
    gain = report["gain_vs_zero_router"]
    label = "zero router (single models' hull)"
    if gain["mean"] is not None:
        label = f"zero router; gain mean {gain['mean']:+.1f}, min {gain['min']:+.1f} points"
    rows = [
        (report["single_models"], label, "grey"),
        (report.get("frontier", [report]), f"{report['policy']} hull", "tab:blue"),
    ]
    ceiling = report.get("metadata_routing_ceiling", {})
    if ceiling.get("keys"):
        text = f"{', '.join(ceiling['keys'])} in hindsight; gain mean {ceiling['mean']:+.1f}"
        rows.append((ceiling["frontier"], text, "tab:green"))
    for rows_points, text, color in rows:
        points = [(p["mean_cost_usd"], p["mean_quality"]) for p in rows_points]
        start = min((c for c, _ in points if c > 0), default=None)  # the axis is log
        if start is None:
            continue
        # Dense in log cost: a mix of two points is a straight line in linear cost only.
        costs = np.geomspace(start, max(right, start), HULL_SAMPLES)
        ax.plot(costs, hull_quality(points, costs), "--", color=color, lw=1, label=text)


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
