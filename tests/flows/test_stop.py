"""The stop signal of Evaluate's work: checked between chunks, and free when never set."""

from __future__ import annotations

import pytest

from banditd.domain import ArmSpec, RouterSpec
from banditd.errors import Abandoned
from banditd.flows.candidates import report
from banditd.flows.stop import Stop
from tests.flows.test_candidates import alternating_log

LIVE = RouterSpec("acme", "chat", (ArmSpec("cheap", 0.1, 0.4), ArmSpec("strong", 3, 15)))


class SetPartway(Stop):
    """A stop set by the work's own second check of ``stage``: as if the caller gave up then."""

    def __init__(self, stage: str) -> None:
        super().__init__()
        self.stage = stage

    def check(self, stage: str, done: int, total: int) -> None:
        if stage == self.stage and done:
            self.set()
        super().check(stage, done, total)


def test_a_stop_never_set_changes_nothing() -> None:
    log = alternating_log(LIVE, 50)
    plain = report("acme/chat", LIVE, log, [("live", LIVE)], replicates=200, seed=3)
    assert (
        report("acme/chat", LIVE, log, [("live", LIVE)], replicates=200, seed=3, stop=Stop())
        == plain
    )


def test_a_set_stop_ends_the_work_before_it_starts() -> None:
    stop = Stop()
    stop.set()
    with pytest.raises(Abandoned) as err:
        report("acme/chat", LIVE, alternating_log(LIVE, 5), [("live", LIVE)], stop=stop)
    assert err.value.reached == {"candidates_done": 0, "candidates_total": 1}


@pytest.mark.parametrize("stage", ["replay", "bootstrap"])
def test_the_long_loops_stop_partway(stage: str) -> None:
    """The candidate's replay (every 256 decisions) and the bootstrap (every block of rows:
    40 at 100,000 replicates) stop at their next check, not at their end."""
    stop = SetPartway(stage)
    with pytest.raises(Abandoned) as err:
        report(
            "acme/chat",
            LIVE,
            alternating_log(LIVE, 600),
            [("live", LIVE)],
            replicates=100_000,
            stop=stop,
        )
    reached = err.value.reached
    assert 0 < reached[f"{stage}_done"] < reached[f"{stage}_total"] == 600


def test_the_stages_of_an_earlier_candidate_are_not_reported_as_the_current_ones() -> None:
    """Abandoned as the second candidate begins: the first one's replay and bootstrap are no
    part of where the work stopped (they were reported as the second's, in evaluate_abandoned's
    replay_done and bootstrap_done, which docs/evaluation.md says are the current candidate's)."""
    stop = SetPartway("candidates")
    candidates = [("first", LIVE), ("second", LIVE)]
    with pytest.raises(Abandoned) as err:
        report("acme/chat", LIVE, alternating_log(LIVE, 600), candidates, replicates=100, stop=stop)
    assert err.value.reached == {"candidates_done": 1, "candidates_total": 2}
    assert str(err.value) == "stopped as its caller gave up (candidates_done=1, candidates_total=2)"
