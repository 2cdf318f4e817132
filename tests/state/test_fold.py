"""RouterState.fresh and fold: every part of a router's state learns from the same events."""

from __future__ import annotations

import dataclasses

import numpy as np

from banditd.domain import ArmSpec, FeedbackEvent, RouterSpec
from banditd.evaluation import replay
from banditd.policy import KNN, LinUCB
from banditd.state.breaker import BreakerState
from banditd.state.fold import RouterState, fold

ARMS = (ArmSpec("cheap", 0.1, 0.2), ArmSpec("dear", 5.0, 10.0))
SPEC = RouterSpec(
    "acme", "chat", ARMS, embedding_dim=4, knn_k=3, breaker_min_events=2, breaker_error_rate=0.5
)


def _event(event_id: int, x: np.ndarray, arm: str = "cheap", **fields: object) -> FeedbackEvent:
    base = FeedbackEvent(
        event_id, 0, f"d{event_id}", arm, x, 1.0, 0.001, None, None, None, False, 100.0
    )
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


def test_fresh_is_every_arm_at_its_prior_with_the_routers_policy_and_breaker() -> None:
    state = RouterState.fresh(SPEC, 7)
    assert state.router_id == 7 and state.posterior.arms == ["cheap", "dear"]
    assert not state.posterior.n_updates.any() and state.posterior.last_event_id == 0
    assert isinstance(state.policy, LinUCB) and state.policy.exploration == SPEC.alpha
    assert state.health.config == SPEC.breaker
    knn = RouterState.fresh(SPEC, policy="knn").policy
    assert isinstance(knn, KNN) and knn.k == SPEC.knn_k


def test_fold_feeds_the_posterior_the_breaker_and_the_knn_index() -> None:
    pipeline = replay.pipeline_of(SPEC, replay.MAX_PROMPT_CHARS)
    state = RouterState.fresh(SPEC, context=pipeline)
    x = pipeline.assemble(np.array([1.0, 0.5, -0.2, 0.3]), {})
    fold(state, [_event(1, x, error=True), _event(2, x, error=True), _event(3, x, arm="dear")])
    post = state.posterior
    assert post.last_event_id == 3 and post.n_updates.tolist() == [2, 1]
    assert state.health.state("cheap", now=100.0) is BreakerState.OPEN
    assert state.health.state("dear", now=100.0) is BreakerState.CLOSED
    assert pipeline.knn is not None and pipeline.knn.size == 3
    assert state.events_since_snapshot == 3
    # x of the next prompt sees the neighbours: "dear" served one of them, with reward 1.
    features = pipeline.assemble(np.array([1.0, 0.5, -0.2, 0.3]), {})[-SPEC.knn_dim :]
    assert features[2] == 1.0 and features[3] == np.float32(1 / SPEC.knn_k)  # x in float32


def test_what_judges_no_arm_and_what_the_posterior_skips() -> None:
    state = RouterState.fresh(SPEC)
    x = np.ones(SPEC.dim)
    fold(
        state,
        [
            _event(1, x, error=True, offline=True),  # warm start: judges no served call
            _event(2, x, error=True, defaulted=True),  # a default reward: no call either
            _event(3, x, reward=float("nan")),  # logged before issue 17: skipped, reported
            _event(4, x, error=True),
        ],
    )
    assert state.health.view("cheap", 100.0).error_rate == 1.0  # one served error so far
    assert state.health.state("cheap", now=100.0) is BreakerState.CLOSED  # under min_events
    assert [e.event_id for e, _ in state.skipped] == [3]
    assert state.posterior.n_updates.tolist() == [3, 0] and state.posterior.last_event_id == 4


def test_an_event_the_posterior_skips_stays_out_of_the_knn_index_whichever_path_reads_it() -> None:
    pipeline = replay.pipeline_of(SPEC, replay.MAX_PROMPT_CHARS)
    x = pipeline.assemble(np.array([1.0, 0.5, -0.2, 0.3]), {})
    bad = [_event(2, x, arm="dear", reward=float("nan")), _event(3, x, arm="dear", reward=1e30)]
    events = [_event(1, x), *bad]
    fold(RouterState.fresh(SPEC, context=pipeline), events)
    restored = replay.pipeline_of(SPEC, replay.MAX_PROMPT_CHARS)
    for event in events:  # a restart's index_log: the whole log, event by event
        restored.observe(event)
    for p in (pipeline, restored):
        assert p.knn is not None and p.knn.size == 1
        features = p.assemble(np.array([1.0, 0.5, -0.2, 0.3]), {})[-SPEC.knn_dim :]
        assert np.isfinite(features).all() and features[2:].tolist() == [0.0, 0.0]
