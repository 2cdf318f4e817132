"""Coverage-guided fuzzing (atheris) of request decoding, validation and the numeric paths.

Bytes -> SelectRequest / FeedbackRequest / RouterConfig -> the same codec and checks the server
runs, and any request message -> the edge's bounds check (banditd.domain.bounds). Anything but
success or a banditd error (which the edge maps to a status code) is a crash. The numeric path
(issue 17): fuzzed doubles (NaN, infinities, extremes) for a price, a cost weight, an embedding and
a feedback event's reward, cost, tokens and latency; those the bounds accept go through the
posterior, the cost model, a policy's ranking and the store's row check, and every number that
comes out must be finite (else an AssertionError: a crash).
Run: python tests/edge/fuzz/atheris_validation.py -runs=200000 (tests/edge/test_fuzz.py does,
bounded).
"""

from __future__ import annotations

import contextlib
import sys

import atheris
import numpy as np

# Numba compiles the kernels from their bytecode: instrumented, they would not compile.
with atheris.instrument_imports(
    include=["banditd"], exclude=["banditd.policy._kernels", "banditd.state.expected_costs"]
):
    from google.protobuf.message import DecodeError

    from banditd.context import build_x
    from banditd.domain import ArmSpec, FeedbackEvent, RouterSpec
    from banditd.domain.bounds import HARD_MAX_CALL_USD, default_bounds
    from banditd.edge import codec
    from banditd.errors import BanditdError
    from banditd.flows.feedback import Learner
    from banditd.flows.tokens import TokenClaims, TokenSigner
    from banditd.policy import POLICIES
    from banditd.state.posterior import Posterior
    from banditd.state.prior import Prior
    from banditd.store.finite import checked
    from banditd.v1 import banditd_pb2 as pb

SPEC = RouterSpec(
    "acme", "chat", (ArmSpec("cheap", 0.1, 0.4), ArmSpec("strong", 3, 15)), embedding_dim=4
)
SIGNER = TokenSigner(b"fuzzing-key-0123456789")
TOKEN = SIGNER.sign_v1(TokenClaims("d-1", "acme", 1, "cheap", np.ones(5), 1.0, 0.001, 2e9))
LEARNER = Learner(catalog=None, signer=SIGNER, clock=lambda: 1e9)  # type: ignore[arg-type]


BOUNDS = default_bounds()
REQUESTS = [m.input_type.name for s in pb.DESCRIPTOR.services_by_name.values() for m in s.methods]


def number(fdp: atheris.FuzzedDataProvider, key: str) -> float:
    """A double for the field ``key`` checked by its bound: any double at all (NaN, infinities,
    1e308, ...), one inside the bound, or one of its ends (so the accepted paths run often)."""
    bound = BOUNDS.table[key]
    mode = fdp.ConsumeIntInRange(0, 2)
    if mode == 0:
        value = fdp.ConsumeFloat()
    elif mode == 1:
        value = bound.low + (bound.high - bound.low) * fdp.ConsumeProbability()
    else:
        value = bound.high if fdp.ConsumeBool() else bound.low
    return BOUNDS.check(key, value)


def numeric_path(fdp: atheris.FuzzedDataProvider) -> None:
    """Numbers the bounds accept, through everything that computes with them."""
    price = number(fdp, "Arm.output_price_per_mtok")
    weight = number(fdp, "SelectRequest.cost_weight")
    embedding = [number(fdp, "Embedding.values") for _ in range(3)]
    reward = number(fdp, "FeedbackRequest.reward")
    cost = number(fdp, "FeedbackRequest.cost_usd")
    latency = number(fdp, "FeedbackRequest.latency_ms")
    tokens = int(number(fdp, "FeedbackRequest.output_tokens"))
    with_tokens, policy = fdp.ConsumeBool(), fdp.PickValueInList(sorted(POLICIES))
    x = np.array([1.0, *embedding], dtype=np.float32).astype(np.float64)
    post = Posterior.empty(Prior(4, 1.0, 1.0, 1.0), 300.0)
    idx = np.array([post.index("a"), post.index("b")], dtype=np.int64)
    arm = ArmSpec("a", price, price)
    for event_id in range(1, fdp.ConsumeIntInRange(1, 25) + 1):
        event = FeedbackEvent(
            event_id, 1, f"d{event_id}", "a", x, reward, cost,
            None, tokens if with_tokens else None, latency, False, 0.0,
        )  # fmt: skip
        assert post.apply(event) is None, "an event within the bounds was skipped"
    for name in ("a", "a_inv", "b", "theta", "cost_a_inv", "cost_theta", "observed_cost_sum"):
        assert np.all(np.isfinite(getattr(post, name))), name
    numbers = RouterSpec("t", "r", (arm, ArmSpec("b", price, price))).arm_numbers
    costs = post.expected_costs(idx, numbers, 50_000.0, x)[0]
    assert np.all((costs >= 0) & (costs <= HARD_MAX_CALL_USD)), costs
    choice = POLICIES[policy](1.0).choose(post, idx, x, costs, weight, np.random.default_rng(0))
    assert np.all(np.isfinite(choice.utility)) and np.all(np.isfinite(choice.quality))
    assert 0.0 <= choice.propensity <= 1.0
    checked({"reward": reward, "cost_usd": cost, "expected_cost_usd": float(costs.max())})
    checked({"ranking": [["a", float(u), 0.0, 0.0] for u in choice.utility]})


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    which = fdp.ConsumeIntInRange(0, 4)
    if which == 4:
        with contextlib.suppress(BanditdError):
            numeric_path(fdp)
        return
    body = fdp.ConsumeBytes(fdp.remaining_bytes())
    try:
        if which == 3:
            name = REQUESTS[body[0] % len(REQUESTS)] if body else "SelectRequest"
            BOUNDS.check_message(getattr(pb, name).FromString(body[1:]))
        elif which == 0:
            req = codec.select_from_proto(pb.SelectRequest.FromString(body))
            build_x(SPEC, prompt=req.prompt, embedding=req.embedding, max_prompt_chars=1000)
        elif which == 1:
            msg = pb.FeedbackRequest.FromString(body)
            if msg.decision_id == "t":  # let the fuzzer reach the checks behind the signature
                msg.decision_id = TOKEN
            req = codec.feedback_from_proto(msg)
            LEARNER.event_of(req, LEARNER.claims_of(req))
        else:
            codec.spec_from_proto(pb.RouterConfig.FromString(body))
    except (DecodeError, BanditdError):
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
