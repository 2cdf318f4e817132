"""`banditd replay`: evaluate a routing policy online on full-information outcome data.

The data is the format of data/: one JSON object a line (optionally gzipped), each prompt with
every model's quality in [0, 1] and the real USD cost of its call. The replay streams it, in file
order and in process, through the engine code the server runs: the context pipeline (``build_x``),
the ranking step of Select (``flows.ranking.rank_arms``, with the router's policy) and the fold of
each event into the router's state (``state.fold.fold``). At each prompt the policy picks one arm
and then sees only that arm's feedback: its quality as a score, or with ``--feedback thumbs`` a
thumbs-up drawn with probability = quality. Each arm is priced as its model's mean cost per call in
the file (``--arm-prices data``: per million tokens, such that a prompt of the file's mean length
costs that, which is what an operator knows of a model before routing to it, and what the
price-tier prior reads); ``--arm-prices zero`` leaves them unpriced. Every event reports the call's
real cost, so the posterior learns each arm's mean cost per call, which cost-weighted choice uses.
``--split F`` replays only the records after the first F of the file (by line order), and
``--warm-start-head`` warm-starts on the records before it.

Context (banditd.context.pipeline, as a router with the same settings builds it): the encoder's
embeddings of all prompts are computed first (``--embeddings-cache`` keeps them), then x is built
at each step, so the PCA is fitted and the kNN index grows along the stream exactly as in the
server; ``--warm-start`` first applies the events `banditd warm-start` writes (the same
function: banditd.evaluation.warm_start.warm_events), the PCA fitted on the warm-start prompts.
``--metadata-from`` sends record fields as request metadata. The ``knn`` policy
(``banditd.policy.knn``, registered but run by no router) ranks arms by the kNN outcome features
alone; under a budget it is not paced but capped at an even share of what is left.

Reference policies (not learning, computed here): ``random`` (uniform), ``cheapest`` (the model
with the lowest mean cost), ``best-single`` (the model with the best mean quality - cost_weight x
mean cost over the whole file, in hindsight) and ``oracle`` (per prompt the best quality -
cost_weight x cost, cheapest on ties, in hindsight). Regret is against that oracle, in the same
utility, measured with the true quality (not the thumbs drawn).

Budget (``--budget-usd``): a learning policy is paced by the server's budget pacer
(``banditd.budget.pacer`` through ``rank_arms``, as Select does): the stream is one budget period,
prompt t arriving when t / n of it has passed, with the spend so far committed and the rest of the
budget available; the pacer's price is the least cost weight and arms below its threshold or over
what is left are masked (on_exhausted refuse). For every policy, a call whose real cost would
overrun what is left is not made: the prompt is *refused*, counts as quality 0 and costs nothing.
The total charged never exceeds the budget.

Latency and energy (issue 21, docs/latency-energy.md): model entries may carry the call's
measured ``latency_ms`` and ``energy_wh``. With ``--arm-prices data`` each arm's
prior_latency_ms is its model's mean latency in the file and its energy per million tokens is
scaled as its price is; every event reports the chosen call's latency and energy, so the heads
learn. ``--latency-weight``, ``--energy-weight`` and ``--max-latency-ms`` are sent with every
Select as the request fields (a prompt no arm is eligible for is refused); the report gives the
mean measured latency and energy (``mean_latency_ms``, ``mean_energy_wh``, over the served
prompts) when the file has them. Regret and the oracle stay in quality and USD.

Frontier (``--sweep``): the same replay at a range of cost weights (by default 0 and 23
log-spaced weights scaled to the arms' price span, the priciest model's mean cost less the
cheapest's: from the weight at which the span is worth 0.01 of quality to the one at which it is
worth 100, so one default fits any arm set and reaches the cheap end). AIQ as in RouterBench (Hu et
al. 2024): the area under the non-decreasing concave hull of the (mean cost, mean quality) points
over the cost range spanned by the single models, divided by that range; below the router's
cheapest point the curve is 0. A point on the hull between two cost weights is reached by
choosing between them at random, which is also how ``cost_at_quality`` (the mean cost needed for
90/95/98 % of the best single model's quality) is read off it. ``--sweep-budgets`` replays at a
range of budgets (by default from every prompt on the cheapest model to every prompt on the
priciest) at ``--cost-weight``. With ``--repeats N`` each number is the mean over seeds seed ..
seed + N - 1 and ``spread`` holds their sample standard deviations. With ``--shuffle`` each seed's
run takes the replayed records in its own random order (the warm start keeps the file's), so the
repeats average over orders of the stream, not over one order's luck.

Gain over the zero router (report key ``gain_vs_zero_router``,
banditd.evaluation.replay.zero_router): the zero router (RouterBench) is a fixed random mix of
single models, whose best quality at a cost is the upper concave hull of the single models' (mean
cost, mean quality) points. On 50 log-spaced costs from the cheapest single model's mean cost to the
best single model's, wherever the policy's hull (of its sweep points, or of its one point without
--sweep) has a point at that cost or less: its quality minus the zero router's, in points of the
best single model's quality; ``mean`` and ``min`` over those costs, ``coverage`` their share of the
50. With several seeds the frontier is each cost weight's mean over them, and ``runs`` holds each
seed's own gain (the hull of one run's sweep picks its luckiest points, so it reads higher).
``metadata_routing_ceiling`` is the same gain for routing each group of the --metadata-from keys'
values to its best arms in hindsight, and ``share_of_ceiling`` (in the gain and in each run) is
the policy's mean gain over that ceiling's (null without keys).

Regret over time (report key ``regret_over_time``): cumulative regret against the oracle at up
to 100 prompt counts, for the policy and the best-single and random references (mean over the
seeds); ``--plot`` draws it beside the quality-cost panel.

Live (``--server ADDR``, banditd.evaluation.replay.remote): the same stream through a running
banditd over gRPC, one fresh router per seed under ``--tenant``, Select and Feedback per prompt, the
same report; with ``--keep-routers`` the routers as they are there (``--print-router`` prints the
configuration to create and warm-start: docs/warm-start.md).
"""

from banditd.evaluation.replay.data import Outcomes, load_outcomes
from banditd.evaluation.replay.engine import (
    REFUSED,
    SHUFFLE_STREAM,
    THUMBS_STREAM,
    _event,
    best_single,
    gate,
    learn_online,
    oracle_picks,
    reference_picks,
)
from banditd.evaluation.replay.features import (
    contexts,
    embeddings,
    pipeline_of,
    router_spec,
    warm_start,
)
from banditd.evaluation.replay.options import (
    AUTO,
    FEEDBACK,
    MAX_PROMPT_CHARS,
    QUALITY_FRACTIONS,
    REFERENCE_POLICIES,
    SUMMARY_KEYS,
    SWEEP_POINTS,
    Options,
)
from banditd.evaluation.replay.plot import figure, plot
from banditd.evaluation.replay.render import render_text
from banditd.evaluation.replay.runner import Replay, replay
from banditd.evaluation.replay.scoring import (
    aiq,
    budget_grid,
    cost_at_quality,
    score,
    upper_hull,
    weight_grid,
)
from banditd.evaluation.replay.zero_router import gain_vs_zero_router
from banditd.evaluation.warm_start import record_metadata
from banditd.progress import Progress

__all__ = [
    "AUTO",
    "FEEDBACK",
    "MAX_PROMPT_CHARS",
    "QUALITY_FRACTIONS",
    "REFERENCE_POLICIES",
    "REFUSED",
    "SHUFFLE_STREAM",
    "SUMMARY_KEYS",
    "SWEEP_POINTS",
    "THUMBS_STREAM",
    "Options",
    "Outcomes",
    "Progress",
    "Replay",
    "_event",  # ope_proof and bench/shadow_overhead build feedback events with it
    "aiq",
    "best_single",
    "budget_grid",
    "contexts",
    "cost_at_quality",
    "embeddings",
    "figure",
    "gain_vs_zero_router",
    "gate",
    "learn_online",
    "load_outcomes",
    "oracle_picks",
    "pipeline_of",
    "plot",
    "record_metadata",
    "reference_picks",
    "render_text",
    "replay",
    "router_spec",
    "score",
    "upper_hull",
    "warm_start",
    "weight_grid",
]
