"""The snapshot format of a Posterior: its arrays in one ``.npz`` blob (no pickle).

A snapshot saves replay time only; a posterior is a pure function of its prior and the events
applied, so a blob that cannot be loaded (an older format, a non-finite value written before
issue 17's bounds) is refused with ValueError and the router is rebuilt from the log.
"""

from __future__ import annotations

import io

import numpy as np

from banditd.state.heads import HEADS, head_shapes
from banditd.state.posterior import Posterior
from banditd.state.prior import Prior


def dump(post: Posterior) -> bytes:
    """The snapshot blob of ``post``."""
    buf = io.BytesIO()
    prior = post.prior
    np.savez(
        buf,
        # The last 1: forgetting puts the prior back (a snapshot without it is refused).
        prior=np.array(
            [prior.dim, prior.quality, prior.weight, prior.forgetting, prior.context_since, 1]
        ),
        arm_prior_names=np.array([a for a, _ in prior.arm_quality], dtype=np.str_),
        arm_prior_quality=np.array([q for _, q in prior.arm_quality], dtype=np.float64),
        prior_weights=np.array(prior.weights, dtype=np.str_),
        prior_output_tokens=post.prior_output_tokens,
        arms=np.array(post.arms, dtype=np.str_),
        a=post.a,
        a_inv=post.a_inv,
        b=post.b,
        fit=post.fit,
        n_updates=post.n_updates,
        reward_sum=post.reward_sum,
        reward_n=post.reward_n,
        output_tokens_sum=post.output_tokens_sum,
        output_tokens_n=post.output_tokens_n,
        observed_cost_sum=post.observed_cost_sum,
        observed_cost_n=post.observed_cost_n,
        cost_a=post.cost_a,
        cost_a_inv=post.cost_a_inv,
        cost_b=post.cost_b,
        cost_theta=post.cost_theta,
        input_tokens=np.array([post.input_tokens_sum, post.input_tokens_n]),
        last_event_id=post.last_event_id,
        **{
            f"{h}_{name}": getattr(post, f"{h}_{name}")
            for h in HEADS
            for name, _ in head_shapes(prior.dim)
        },
    )
    return buf.getvalue()


def load(data: bytes) -> Posterior:
    """The posterior a snapshot blob holds; ValueError for a snapshot written before the cost
    model, the latency and energy heads or the shared level (or, under forgetting, before
    forgetting put the prior back), or holding a non-finite statistic."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        if "cost_a" not in z:
            raise ValueError("snapshot predates the cost model")
        if "lat_a" not in z:
            raise ValueError("snapshot predates the latency and energy heads")
        if "reward_sum" not in z:
            raise ValueError("snapshot predates the shared prior level")
        for name in z.files:
            if z[name].dtype.kind == "f" and not np.all(np.isfinite(z[name])):
                raise ValueError(f"snapshot holds non-finite values in {name}")
        p = z["prior"]
        if p[3] < 1.0 and len(p) < 6:
            raise ValueError("snapshot predates forgetting's putting the prior back")
        arm_quality: tuple[tuple[str, float], ...] = ()
        if "arm_prior_names" in z:  # written before price tiers: none
            arm_quality = tuple(
                (str(a), float(q))
                for a, q in zip(z["arm_prior_names"], z["arm_prior_quality"], strict=True)
            )
        since = int(p[4]) if len(p) > 4 else 0  # written before context_since: 0
        # Written before the weights were: "", a prior no router with a context has (rebuilt).
        weights = str(z["prior_weights"]) if "prior_weights" in z else ""
        prior = Prior(int(p[0]), float(p[1]), float(p[2]), float(p[3]), arm_quality, since, weights)
        dim = prior.dim
        arms = [str(a) for a in z["arms"]]
        k = len(arms)
        return Posterior(
            prior=prior,
            prior_output_tokens=float(z["prior_output_tokens"]),
            arms=arms,
            a=z["a"].reshape(k, dim, dim).copy(),
            a_inv=z["a_inv"].reshape(k, dim, dim).copy(),
            b=z["b"].reshape(k, dim).copy(),
            fit=z["fit"].reshape(k, dim).copy(),
            n_updates=z["n_updates"].copy(),
            reward_sum=z["reward_sum"].copy(),
            reward_n=z["reward_n"].copy(),
            output_tokens_sum=z["output_tokens_sum"].copy(),
            output_tokens_n=z["output_tokens_n"].copy(),
            observed_cost_sum=z["observed_cost_sum"].copy(),
            observed_cost_n=z["observed_cost_n"].copy(),
            cost_a=z["cost_a"].reshape(k, dim, dim).copy(),
            cost_a_inv=z["cost_a_inv"].reshape(k, dim, dim).copy(),
            cost_b=z["cost_b"].reshape(k, dim).copy(),
            cost_theta=z["cost_theta"].reshape(k, dim).copy(),
            input_tokens_sum=float(z["input_tokens"][0]),
            input_tokens_n=int(z["input_tokens"][1]),
            last_event_id=int(z["last_event_id"]),
            **{
                f"{h}_{name}": z[f"{h}_{name}"].reshape(k, *shape).copy()
                for h in HEADS
                for name, shape in head_shapes(dim)
            },
        )
