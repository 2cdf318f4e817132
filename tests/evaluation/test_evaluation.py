"""Candidates' probabilities from the policies' own code, and the replay proof on a small
synthetic outcome file (estimates from the log alone against the full-information truth)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from banditd.commands.cli import main
from banditd.domain import ArmSpec, RouterSpec
from banditd.errors import InvalidArgument
from banditd.evaluation import ope_proof, replay
from banditd.flows.candidates import check_candidate
from banditd.policy import POLICIES, make_policy
from banditd.state.posterior import Posterior
from banditd.state.prior import Prior
from tests.evaluation.test_replay import synthetic, write_outcomes


def trained_posterior(seed: int = 0) -> tuple[Posterior, np.ndarray]:
    rng = np.random.default_rng(seed)
    post = Posterior.empty(Prior(3, 0.5), 300.0)
    idx = np.array([post.index(a) for a in ("a", "b", "c", "d")], dtype=np.int64)
    for event_id in range(1, 60):
        x = np.concatenate([[1.0], rng.normal(size=2)])
        arm = str(rng.choice(["a", "b", "c", "d"]))
        event = replay._event(event_id, arm, x, float(rng.random()), 0.001)
        post.apply(event)
    return post, idx


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_probabilities_are_a_distribution_consistent_with_choose(policy: str) -> None:
    post, idx = trained_posterior()
    x = np.array([1.0, 0.3, -0.2])
    costs = np.array([0.001, 0.002, 0.004, 0.0005])
    p = make_policy(policy, 0.4).probabilities(post, idx, x, costs, 50.0, np.random.default_rng(1))
    assert p.shape == (4,) and np.all(p >= 0) and p.sum() == pytest.approx(1.0)
    # choose picks arms at about these rates, and logs them as its propensities
    rng = np.random.default_rng(2)
    picks = [make_policy(policy, 0.4).choose(post, idx, x, costs, 50.0, rng) for _ in range(2000)]
    freq = np.bincount([c.chosen for c in picks], minlength=4) / len(picks)
    assert np.allclose(freq, p, atol=0.04)
    if policy != "thompson":  # Thompson's logged propensity is its own Monte Carlo estimate
        assert all(c.propensity == pytest.approx(p[c.chosen]) for c in picks[:50])


def test_candidate_must_read_the_routers_features() -> None:
    live = RouterSpec("t", "r", (ArmSpec("a", 1, 1),), embedding_dim=4)
    check_candidate(live, dataclasses.replace(live, policy="thompson"))
    with pytest.raises(InvalidArgument, match=r"candidate\.embedding_dim: 8 differs"):
        check_candidate(live, dataclasses.replace(live, embedding_dim=8))


@pytest.fixture(scope="module")
def proof_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    data = write_outcomes(tmp_path_factory.mktemp("ope") / "o.jsonl", synthetic(300, seed=4))
    return ope_proof.proof(data, seeds=(0, 1), replicates=200)


def test_replay_proof_estimates_close_candidates_well(proof_report: dict[str, object]) -> None:
    rows = {c["name"]: c for c in proof_report["candidates"]}  # type: ignore[attr-defined]
    itself = rows["logging policy itself"]
    # On its own log, IPS is the logged mean exactly, and the truth is near it.
    assert itself["effective_sample_size"] == pytest.approx(300)
    assert itself["estimators"]["ips"]["estimate"] == pytest.approx(
        proof_report["logged_mean_reward"]
    )
    for name in ("logging policy itself", "epsilon-greedy 0.1", "epsilon-greedy 0.5"):
        assert rows[name]["estimators"]["dr"]["mean_abs_error"] < 0.03, name
        assert rows[name]["estimators"]["dr"]["coverage"] >= 0.5, name
    # Far candidates rest on few decisions (3 arms at epsilon 0.3: at least a tenth of them).
    far = rows["linucb, prior 0, cost weight 5000"]
    assert 0.1 * 300 < far["effective_sample_size"] < 0.2 * 300
    assert not itself["warnings"]


def test_replay_proof_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_outcomes(tmp_path / "o.jsonl", synthetic(120, seed=5))
    assert main(["evaluate", "--replay-proof", str(data), "--seeds", "1", "--bootstrap", "50"]) == 0
    text = capsys.readouterr().out
    assert "OPE proof on" in text and "logging policy itself" in text and "DR est/err/cov" in text
    args = ["evaluate", "--replay-proof", str(data), "--seeds", "1", "--bootstrap", "50", "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 120 and len(report["candidates"]) == 8


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--seeds", "0"),
        ("--bootstrap", "0"),
        ("--limit", "-3"),
        ("--cost-weight", "nan"),
        ("--latency-weight", "-1"),
        ("--energy-weight", "inf"),
        ("--seed", "-1"),  # was "banditd evaluate: expected non-negative integer" (NumPy's)
        # Above what Admin.Evaluate takes (banditd.domain.bounds.TABLE): the command ran them
        ("--cost-weight", "1.5e6"),  # BANDITD_MAX_COST_WEIGHT's default, 1e6
        ("--latency-weight", "2e9"),  # HARD_MAX_LATENCY_WEIGHT
        ("--energy-weight", "2e9"),  # HARD_MAX_ENERGY_WEIGHT
    ],
)
@pytest.mark.parametrize("proof", [True, False], ids=["replay-proof", "router"])
def test_evaluate_refuses_a_bad_number_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, proof: bool
) -> None:
    data = write_outcomes(tmp_path / "o.jsonl", synthetic(40, seed=5))
    source = (
        ["--replay-proof", str(data)]
        if proof
        else ["--router", "acme/chat", "--database-url", f"sqlite+aiosqlite:///{tmp_path}/b.db"]
    )
    with pytest.raises(SystemExit) as exited:
        main(["evaluate", *source, "--json", flag, value])
    assert exited.value.code == 2  # argparse's usage error
    captured = capsys.readouterr()
    assert captured.out == "" and f"argument {flag}: expected" in captured.err


def test_the_cost_weight_bound_is_the_setting_a_server_here_would_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """BANDITD_MAX_COST_WEIGHT moves the flag's bound as it moves Admin.Evaluate's."""
    data = write_outcomes(tmp_path / "o.jsonl", synthetic(40, seed=5))
    args = ["evaluate", "--replay-proof", str(data), "--cost-weight", "1.5e6"]
    monkeypatch.setenv("BANDITD_MAX_COST_WEIGHT", "1e7")
    assert main(args) == 1  # past argparse: the proof's own refusal of the flag
    assert "--cost-weight cannot go with --replay-proof" in capsys.readouterr().err
    monkeypatch.setenv("BANDITD_MAX_COST_WEIGHT", "1e6")
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert (
        "argument --cost-weight: expected a number in [0, 1e+06] (BANDITD_MAX_COST_WEIGHT)" in err
    )


def test_evaluate_without_router_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate"]) == 1
    assert "give --router TENANT/NAME" in capsys.readouterr().err
    assert main(["evaluate", "--router", "acme/chat", "--seeds", "3"]) == 1  # proof-only
    assert "--seeds is for --replay-proof" in capsys.readouterr().err
    assert main(["evaluate", "--router", "nonsense"]) == 1
    assert "expected TENANT/NAME" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags",
    [
        ("--cost-weight", "5"),
        ("--cost-weight", "0"),
        ("--latency-weight", "2"),
        ("--energy-weight", "0"),
        ("--candidate", "c.json"),
        ("--database-url", "sqlite+aiosqlite:///x.db"),
        ("--router", "t/r"),
    ],
)
def test_replay_proof_refuses_the_flags_it_would_ignore(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: tuple[str, str]
) -> None:
    """The proof logs and scores its own candidates at its own cost weight, from the file."""
    data = write_outcomes(tmp_path / "o.jsonl", synthetic(40, seed=5))
    assert main(["evaluate", "--replay-proof", str(data), "--json", *flags]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"banditd evaluate: replay_proof: {flags[0]} cannot go with --replay-proof (it scores "
        f"its own candidates at cost weight {ope_proof.COST_WEIGHT:g})\n"
    )


def test_an_explicit_limit_always_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--limit equal to the default limit (of a router's log) is still a limit on DATA's
    records; the default is lowered here so that a small file reaches it."""
    monkeypatch.setattr("banditd.flows.candidates.DEFAULT_LIMIT", 30)
    data = write_outcomes(tmp_path / "o.jsonl", synthetic(40, seed=5))
    argv = ["evaluate", "--replay-proof", str(data), "--seeds", "1", "--bootstrap", "20"]
    assert main([*argv, "--limit", "30", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 30
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 40
