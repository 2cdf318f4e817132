"""`banditd bench kernels --quick --json`: the report's shape, never its speeds.

MABWiser and Vowpal Wabbit come from the `bench` extra, which CI does not install: their entries
are either null or shaped like the others.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest

from banditd.commands import bench
from banditd.commands.bench import kernels


def check_stats(per_impl: dict[str, Any] | None, required: bool) -> None:
    if per_impl is None:
        assert not required
        return
    assert set(per_impl) == {"32"}
    stat = per_impl["32"]
    assert 0 < stat["median"] <= stat["p99"]
    assert stat["n"] >= 1


def test_quick_json_report(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="banditd")
    bench.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", "kernels", "--quick", "--json"])

    assert args.func(args) == 0

    report = json.loads(capsys.readouterr().out)
    assert {"cpu", "cores", "python", "numba"} <= set(report["machine"])
    assert report["machine"]["cores"] >= 1
    for key in ("select_us", "update_us", "select_update_us"):
        assert set(report[key]) == set(kernels.IMPLS)
        for impl, per_impl in report[key].items():
            check_stats(per_impl, required=impl in {"banditd", "banditd_ts", "numpy"})
    for impl in ("banditd", "numpy"):
        batch = report["batch_decisions_per_s"][impl]
        assert set(batch) == {"64", "1024"}
        assert all(value > 0 for value in batch.values())
    assert report["speedup_vs_numpy"] > 0
    for baseline, impl in [
        ("mabwiser", "mabwiser_linucb"),
        ("mabwiser_lints", "mabwiser_lints"),
        ("vw", "vw"),
    ]:
        ratio = report[f"speedup_vs_{baseline}"]
        assert (ratio is None) == (report["select_update_us"][impl] is None)
        assert ratio is None or ratio > 0
    assert set(report["targets"]) == {
        "select_update_d32_under_5us",
        "at_least_50x_mabwiser",
        "at_least_10x_vw",
        "at_least_100x_mabwiser",
        "at_least_20x_vw",
        "batch_1024_d32_over_1m_per_s",
    }
    assert all(ok in (True, False, None) for ok in report["targets"].values())
