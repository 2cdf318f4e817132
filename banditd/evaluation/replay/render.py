"""The report as tables for people."""

from __future__ import annotations

from typing import Any


def _pm(point: dict[str, Any], key: str, fmt: str) -> str:
    """A summary value as 'mean ± spread' (just the mean when the spread rounds to 0)."""
    mean, spread = format(point[key], fmt), format(point["spread"][key], fmt)
    return mean if float(spread) == 0 else f"{mean} ± {spread}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _summary_lines(r: dict[str, Any]) -> list[str]:
    """The run against the best single model and the oracle."""
    best = r["best_single"]
    knobs = ""
    if r["exploration"] is not None:
        prior, level = r["prior"], r["prior"]["level_at_end"]
        after = "" if level is None else f" ({level:.3f} after its feedback)"
        knobs = (
            f"exploration {r['exploration']:g}, prior {prior['quality']:g} worth "
            f"{prior['weight']:g} events{after}, "
        )
    budget = "none" if r["budget_usd"] is None else f"${r['budget_usd']:g}"
    causes = [
        cause
        for cause, given in (
            ("the budget", r["budget_usd"]),
            ("--max-latency-ms", r.get("max_latency_ms")),
        )
        if given is not None
    ]
    by = f" by {' or '.join(causes)}" if causes else ""
    refused = f"; {r['refused']:g} prompts refused{by}" if r["refused"] else ""
    return [
        f"banditd replay of {r['data']}: {r['n']} prompts, {len(r['arms'])} models",
        f"policy {r['policy']} ({knobs}feedback {r['feedback']}), cost weight "
        f"{r['cost_weight']:g}, budget {budget}, seeds {r['seeds'][0]}..{r['seeds'][-1]}",
        "",
        f"{'':<28}{'mean quality':>22}{'mean cost $':>26}{'total cost $':>20}{'regret':>18}",
        f"{r['policy']:<28}{_pm(r, 'mean_quality', '.4f'):>22}{_pm(r, 'mean_cost_usd', '.6f'):>26}"
        f"{_pm(r, 'total_cost_usd', '.3f'):>20}{_pm(r, 'cumulative_regret', '.1f'):>18}",
        f"{'best single: ' + best['model']:<28}{best['mean_quality']:>22.4f}"
        f"{best['mean_cost_usd']:>26.6f}",
        f"{'oracle':<28}{r['oracle']['mean_quality']:>22.4f}{r['oracle']['mean_cost_usd']:>26.6f}",
        "",
        f"{_pct(r['quality_vs_best_single'])} of the best single model's quality at "
        f"{_pct(r['cost_vs_best_single'])} of its cost{refused}",
        "picks: " + ", ".join(f"{a} {s:.1%}" for a, s in r["picks"].items() if s),
    ]


def _measure_lines(r: dict[str, Any]) -> list[str]:
    """Mean measured latency and energy of the policy, the best single model and the oracle,
    when the file has them (issue 21); the trade-off the replay's Selects sent."""
    keys = [k for k in ("mean_latency_ms", "mean_energy_wh") if k in r]
    if not keys:
        return []
    heads = {"mean_latency_ms": ("mean latency ms", ".1f"), "mean_energy_wh": ("mean Wh", ".4f")}
    best = r["best_single"]
    rows = [(r["policy"], r), ("best single: " + best["model"], best), ("oracle", r["oracle"])]
    knobs = [
        f"{name.replace('_', ' ')} {r[name]:g}"
        for name in ("latency_weight", "energy_weight", "max_latency_ms")
        if r.get(name) is not None
    ]
    lines = ["", f"{'':<28}" + "".join(f"{heads[k][0]:>22}" for k in keys)]
    lines += [
        f"{label:<28}" + "".join(f"{format(row[k], heads[k][1]):>22}" for k in keys)
        for label, row in rows
    ]
    if knobs:
        lines.append("trade-off: " + ", ".join(knobs))
    return lines


def _frontier_lines(r: dict[str, Any]) -> list[str]:
    """The cost-weight frontier, its AIQ and the cost of fractions of the best quality."""
    lines = ["", f"{'cost weight':>12}{'mean quality':>22}{'mean cost $':>26}"]
    lines += [
        f"{p['cost_weight']:>12g}{_pm(p, 'mean_quality', '.4f'):>22}"
        f"{_pm(p, 'mean_cost_usd', '.6f'):>26}"
        for p in r["frontier"]
    ]
    policy, singles, oracle = (
        "n/a" if a is None else f"{a:.4f}"
        for a in (r["aiq"], r["aiq_single_models"], r["aiq_oracle"])
    )
    lines.append(f"AIQ: {r['policy']} {policy}, single models {singles}, oracle {oracle}")
    for q in r["cost_at_quality"]:
        cost = q["mean_cost_usd"]
        reached = (
            "not reached"
            if cost is None
            else f"${cost:.6f} a prompt ({_pct(q['cost_vs_best_single'])} of its cost)"
        )
        lines.append(
            f"{q['fraction_of_best_single']:.0%} of {r['best_single']['model']}'s quality: "
            + reached
        )
    return lines


def _budget_lines(r: dict[str, Any]) -> list[str]:
    lines = ["", f"{'budget $':>12}{'mean quality':>22}{'mean cost $':>26}{'refused':>12}"]
    return lines + [
        f"{p['budget_usd']:>12g}{_pm(p, 'mean_quality', '.4f'):>22}"
        f"{_pm(p, 'mean_cost_usd', '.6f'):>26}{p['refused']:>12g}"
        for p in r["budget_frontier"]
    ]


def _gain_line(r: dict[str, Any]) -> str:
    g = r["gain_vs_zero_router"]
    if g["mean"] is None:  # the grid ends at the best single model's cost
        best = r["best_single"]
        return (
            "gain vs the zero router: none (no point of the policy is as cheap as the best single "
            f"model, {best['model']} at ${best['mean_cost_usd']:.6f} a prompt)"
        )
    line = (
        f"gain vs the zero router (points of the best single model's quality): mean "
        f"{g['mean']:+.2f}, min {g['min']:+.2f}, coverage {g['coverage']:.0%}"
    )
    runs = [run for run in g.get("runs", []) if run["mean"] is not None]
    if runs:
        means = [run["mean"] for run in runs]
        line += (
            f"; each seed's own: mean {sum(means) / len(means):+.2f} "
            f"({min(means):+.2f} to {max(means):+.2f}), worst min "
            f"{min(run['min'] for run in runs):+.2f}"
        )
    return line


def _ceiling_line(r: dict[str, Any]) -> str:
    c = r["metadata_routing_ceiling"]
    if not c["keys"]:
        return "routing by metadata in hindsight: no --metadata-from keys (gain 0 by definition)"
    line = (
        f"routing each of the {c['groups']} groups of {', '.join(c['keys'])} to its best arms in "
        f"hindsight would gain: mean {c['mean']:+.2f}, min {c['min']:+.2f}"
    )
    share = r["gain_vs_zero_router"].get("share_of_ceiling")
    return line if share is None else f"{line}; the policy's mean gain is {share:.0%} of that"


# The prior this far above the models' mean quality is worth a note. The shared level
# (banditd.policy._kernels.shared_level) recovers most of such a gap by itself, not all of it
# (docs/routing-quality.md, round 8).
PRIOR_NOTE_GAP = 0.15


def _prior_note(r: dict[str, Any]) -> list[str]:
    """A note where a cold router's prior sits far above the models' mean quality on the data,
    which makes it explore too much until its shared level has come down; none warm-started,
    where the warm start's outcomes outweigh the prior."""
    if r["prior"] is None or r["warm_start"] is not None or not r["single_models"]:
        return []
    mean = sum(m["mean_quality"] for m in r["single_models"]) / len(r["single_models"])
    prior = r["prior"]["quality"]
    if prior - mean <= PRIOR_NOTE_GAP:
        return []
    return [
        f"note: the models' mean quality here is {mean:.2f} and the router's prior "
        f"{prior:g}; a prior far above the arms' quality makes a cold router explore too much "
        "before its shared level comes down "
        f"(try --prior-quality {mean:.2f}; prior_quality in the routers file)"
    ]


def render_text(report: dict[str, Any]) -> str:
    """The report as tables for people."""
    lines = _summary_lines(report) + _measure_lines(report)
    if "frontier" in report:
        lines += _frontier_lines(report)
    lines.append(_gain_line(report))
    lines.append(_ceiling_line(report))
    lines += _prior_note(report)
    if "budget_frontier" in report:
        lines += _budget_lines(report)
    lines.append(f"wall time {report['wall_s']} s")
    return "\n".join(lines)
