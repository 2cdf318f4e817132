"""The settings of one `banditd replay` invocation and the names its options take."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from banditd.config import Settings
from banditd.domain import (
    DEFAULT_EMBEDDING_DIM,
    DEFAULT_METADATA_SLOTS,
    DEFAULT_PCA_FIT_SAMPLES,
    DEFAULT_PRIOR_QUALITY,
    DEFAULT_PRIOR_WEIGHT,
)
from banditd.edge.tls import ClientSecurity

REFERENCE_POLICIES = ("random", "cheapest", "best-single", "oracle")
FEEDBACK = ("score", "thumbs", "pairwise")
# Arm prices of a learning replay: "data", each model's mean cost per call in the file as a
# price (what an operator knows before routing); "zero", priced by the costs reported only.
ARM_PRICES = ("data", "zero")
MAX_PROMPT_CHARS: int = Settings.model_fields["max_prompt_chars"].default  # the server default
SWEEP_POINTS = 24
# The default sweep's cost weights: what the arms' price span is worth in quality, low to high.
SWEEP_SPAN_LOW, SWEEP_SPAN_HIGH = 0.01, 100.0
BUDGET_SWEEP_POINTS = 6
QUALITY_FRACTIONS = (0.9, 0.95, 0.98)
AUTO: tuple[float, ...] = ()  # --sweep / --sweep-budgets without values: an automatic grid
DEFAULT_TENANT = "replay"
CONNECT_TIMEOUT_S = 10.0
SUMMARY_KEYS = ("mean_quality", "mean_cost_usd", "total_cost_usd", "refused", "cumulative_regret")


@dataclass(frozen=True)
class Server:
    """The live banditd a replay drives, and how to reach it."""

    address: str
    tenant: str = DEFAULT_TENANT
    security: ClientSecurity = field(default_factory=ClientSecurity)
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    # Replay the routers as they stand (their logs kept) instead of creating them fresh.
    keep_routers: bool = False


@dataclass(frozen=True)
class TradeOff:
    """SelectRequest's latency and energy fields a replay sends with every Select (issue 21)."""

    latency_weight: float | None = None
    energy_weight: float | None = None
    max_latency_ms: float | None = None


NO_TRADE_OFF = TradeOff()


@dataclass(frozen=True)
class Options:
    """One `banditd replay` invocation. sweep / sweep_budgets: None for none, AUTO for a grid."""

    data: Path
    policy: str = "linucb"
    cost_weight: float = 0.0
    # Latency and energy (issue 21), as SelectRequest's fields: utility per second and per Wh
    # (None: the router's defaults, 0) and a ceiling on an arm's expected latency.
    latency_weight: float | None = None
    energy_weight: float | None = None
    max_latency_ms: float | None = None
    budget_usd: float | None = None
    feedback: str = "score"
    warm_start: Path | None = None
    arm_prices: str = "data"
    # Replay only the records after this fraction of data (by line order); warm_start_head:
    # warm-start on the records before it (the protocol of docs/routing-quality.md).
    split: float | None = None
    warm_start_head: bool = False
    arms: tuple[str, ...] = ()
    seed: int = 0
    repeats: int = 1
    # Each seed's run takes the replayed records in its own random order (the warm start keeps
    # the file's): averages over orders, not over one order's luck.
    shuffle: bool = False
    sweep: tuple[float, ...] | None = None
    sweep_budgets: tuple[float, ...] | None = None
    limit: int | None = None
    embedding_dim: int = DEFAULT_EMBEDDING_DIM
    exploration: float = 0.0
    # The router's prior (RouterSpec.prior_quality and prior_weight): an arm's quality before
    # its own feedback, around which the price tiers spread, and what it is worth in events.
    prior_quality: float = DEFAULT_PRIOR_QUALITY
    prior_weight: float = DEFAULT_PRIOR_WEIGHT
    max_prompt_chars: int = MAX_PROMPT_CHARS
    # Context features (banditd.context): record fields sent as request metadata, encoder, etc.
    metadata_from: tuple[str, ...] = ()
    metadata_slots: int = DEFAULT_METADATA_SLOTS
    encoder: str = "hashing"
    text_window_tokens: int = 0
    pca_dim: int = 0
    pca_fit_samples: int = DEFAULT_PCA_FIT_SAMPLES
    knn_k: int = 0
    embeddings_cache: Path | None = None
    # A live banditd to drive over gRPC instead of the in-process engine
    # (banditd.evaluation.replay.remote).
    server: Server | None = None

    @property
    def trade_off(self) -> TradeOff:
        return TradeOff(self.latency_weight, self.energy_weight, self.max_latency_ms)
