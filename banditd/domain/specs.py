"""Router configurations (specs): frozen and validated when built, so every later layer can
trust them; and their plain-JSON form (the stored history of versions)."""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from banditd.domain.constants import (
    COMBINE_RULES,
    DEFAULT_COOLDOWN_SECONDS,
    DEFAULT_EMBEDDING_DIM,
    DEFAULT_ERROR_RATE,
    DEFAULT_EXPLORATION,
    DEFAULT_FEEDBACK_CAP_WINDOW_SECONDS,
    DEFAULT_FEEDBACK_TTL_SECONDS,
    DEFAULT_METADATA_SLOTS,
    DEFAULT_MIN_EVENTS,
    DEFAULT_PCA_FIT_SAMPLES,
    DEFAULT_PRIOR_OUTPUT_TOKENS,
    DEFAULT_PRIOR_QUALITY,
    DEFAULT_PRIOR_WEIGHT,
    DEFAULT_REWARD_WAIT_SECONDS,
    ENCODER_DIMS,
    ENCODERS,
    MAX_ARMS,
    MAX_BREAKER_COOLDOWN_SECONDS,
    MAX_BREAKER_MIN_EVENTS,
    MAX_EMBEDDING_DIM,
    MAX_EXPLORE_NEW_ARM,
    MAX_KNN_K,
    MAX_METADATA_KEYS,
    MAX_METADATA_SLOTS,
    MAX_SHADOWS,
    ROUTER_POLICIES,
)
from banditd.domain.upstreams import check_upstream
from banditd.errors import InvalidArgument

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")


def check_name(field_name: str, value: str) -> str:
    """Tenant, router and arm names: 1-128 printable characters, no spaces."""
    if not value:
        raise InvalidArgument(field_name, "must not be empty")
    if not _NAME.fullmatch(value):  # not match with $, which passes a final newline
        raise InvalidArgument(
            field_name, "must be 1-128 characters of letters, digits and ._:/@+- (no spaces)"
        )
    return value


def check_finite(field_name: str, value: float, *, minimum: float | None = 0.0) -> float:
    if not math.isfinite(value):
        raise InvalidArgument(field_name, "must be a finite number")
    if minimum is not None and value < minimum:
        raise InvalidArgument(field_name, f"must be >= {minimum:g}, got {value:g}")
    return value


@dataclass(frozen=True)
class BreakerConfig:
    """error_rate in [0, 1] (1 = never trips); min_events >= 1; cooldown_s > 0."""

    error_rate: float = DEFAULT_ERROR_RATE
    min_events: int = DEFAULT_MIN_EVENTS
    cooldown_s: float = DEFAULT_COOLDOWN_SECONDS


# The arm fields a Select's ranking entry carries (ArmSpec.upstream).
UPSTREAM_FIELDS = (
    "upstream_base_url",
    "upstream_model",
    "upstream_api_key_env",
    "input_price_per_mtok",
    "output_price_per_mtok",
)


@dataclass(frozen=True)
class ArmSpec:
    name: str
    input_price_per_mtok: float
    output_price_per_mtok: float
    disabled: bool = False
    # Latency and energy heads (issue 21): priors before the arm's own reports.
    prior_latency_ms: float = 0.0
    input_energy_wh_per_mtok: float = 0.0
    output_energy_wh_per_mtok: float = 0.0
    # Gateway (issue 22): where the arm is served; the key is the name of an env variable.
    upstream_base_url: str = ""
    upstream_model: str = ""
    upstream_api_key_env: str = ""

    def __post_init__(self) -> None:
        check_name("arms.name", self.name)
        check_upstream(self.upstream_base_url, self.upstream_model, self.upstream_api_key_env)
        check_finite("arms.input_price_per_mtok", self.input_price_per_mtok)
        check_finite("arms.output_price_per_mtok", self.output_price_per_mtok)
        check_finite("arms.prior_latency_ms", self.prior_latency_ms)
        check_finite("arms.input_energy_wh_per_mtok", self.input_energy_wh_per_mtok)
        check_finite("arms.output_energy_wh_per_mtok", self.output_energy_wh_per_mtok)

    @functools.cached_property
    def upstream(self) -> Mapping[str, Any]:
        """What a ranking entry carries of the arm for the gateway: where it is served and its
        prices, empty strings left out (proto3 sends none). Built once per arm; read-only."""
        return MappingProxyType({n: v for n in UPSTREAM_FIELDS if (v := getattr(self, n)) != ""})

    def energy_wh(self, input_tokens: float, output_tokens: float) -> float:
        return (
            input_tokens * self.input_energy_wh_per_mtok
            + output_tokens * self.output_energy_wh_per_mtok
        ) / 1e6

    def cost_usd(self, input_tokens: float, output_tokens: float) -> float:
        return (
            input_tokens * self.input_price_per_mtok + output_tokens * self.output_price_per_mtok
        ) / 1e6


@dataclass(frozen=True)
class ShadowSpec:
    """A candidate policy run in shadow: at each Select it picks too, on the live posterior and
    eligible arms, and its pick is logged, never served. cost_weight None: the router's default
    (a request's own cost_weight applies to shadows as to the live policy)."""

    name: str
    policy: str = "linucb"
    exploration: float = 0.0
    cost_weight: float | None = None

    def __post_init__(self) -> None:
        check_name("shadows.name", self.name)
        if self.policy not in ROUTER_POLICIES:
            raise InvalidArgument("shadows.policy", f"must be one of {', '.join(ROUTER_POLICIES)}")
        check_finite("shadows.exploration", self.exploration)
        if self.policy == "epsilon-greedy" and self.exploration > 1.0:
            raise InvalidArgument("shadows.exploration", "epsilon must be in [0, 1]")
        if self.cost_weight is not None:
            check_finite("shadows.cost_weight", self.cost_weight)

    @property
    def alpha(self) -> float:
        return self.exploration or DEFAULT_EXPLORATION[self.policy]


@dataclass(frozen=True)
class RouterSpec:
    """A router's configuration. Zero values in the API mean "the default"."""

    tenant: str
    name: str
    arms: tuple[ArmSpec, ...]
    policy: str = "linucb"
    exploration: float = 0.0
    default_cost_weight: float = 0.0
    embedding_dim: int = DEFAULT_EMBEDDING_DIM
    feedback_ttl_seconds: int = DEFAULT_FEEDBACK_TTL_SECONDS
    prior_output_tokens: int = DEFAULT_PRIOR_OUTPUT_TOKENS
    version: int = 0
    forgetting: float = 1.0
    prior_quality: float = DEFAULT_PRIOR_QUALITY
    prior_weight: float = DEFAULT_PRIOR_WEIGHT
    explore_new_arm: int = 0
    default_reward: float | None = None
    reward_wait_seconds: int = DEFAULT_REWARD_WAIT_SECONDS
    combine: str = "first"
    thumb_up_reward: float = 1.0
    thumb_down_reward: float = 0.0
    shadows: tuple[ShadowSpec, ...] = ()
    # Security: feedback events one client key may add to one arm per window (0 = no cap).
    feedback_cap_per_key: int = 0
    feedback_cap_window_seconds: int = DEFAULT_FEEDBACK_CAP_WINDOW_SECONDS
    # Arm health (circuit breaker, see banditd.state.breaker).
    breaker_error_rate: float = DEFAULT_ERROR_RATE
    breaker_min_events: int = DEFAULT_MIN_EVENTS
    breaker_cooldown_seconds: int = DEFAULT_COOLDOWN_SECONDS
    # Latency and energy (issue 21): utility per second and per Wh, unless a Select says.
    default_latency_weight: float = 0.0
    default_energy_weight: float = 0.0
    # Context features (banditd.context).
    encoder: str = "hashing"
    metadata_keys: tuple[str, ...] = ()
    metadata_slots: int = DEFAULT_METADATA_SLOTS
    pca_dim: int = 0
    pca_fit_samples: int = DEFAULT_PCA_FIT_SAMPLES
    knn_k: int = 0
    text_window_tokens: int = 0

    def __post_init__(self) -> None:
        check_name("router.tenant", self.tenant)
        check_name("router.name", self.name)
        if not self.arms:
            raise InvalidArgument("router.arms", "a router needs at least one arm")
        if len(self.arms) > MAX_ARMS:
            raise InvalidArgument("router.arms", f"at most {MAX_ARMS} arms")
        names = [a.name for a in self.arms]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise InvalidArgument("router.arms", f"duplicate arm names: {', '.join(duplicates)}")
        if all(a.disabled for a in self.arms):
            raise InvalidArgument("router.arms", "at least one arm must be enabled")
        if self.policy not in ROUTER_POLICIES:
            raise InvalidArgument("router.policy", f"must be one of {', '.join(ROUTER_POLICIES)}")
        check_finite("router.exploration", self.exploration)
        if self.policy == "epsilon-greedy" and self.exploration > 1.0:
            raise InvalidArgument("router.exploration", "epsilon must be in [0, 1]")
        check_finite("router.default_cost_weight", self.default_cost_weight)
        check_finite("router.default_latency_weight", self.default_latency_weight)
        check_finite("router.default_energy_weight", self.default_energy_weight)
        if not 1 <= self.embedding_dim <= MAX_EMBEDDING_DIM:
            raise InvalidArgument("router.embedding_dim", f"must be in 1..{MAX_EMBEDDING_DIM}")
        if self.feedback_ttl_seconds < 1:
            raise InvalidArgument("router.feedback_ttl_seconds", "must be >= 1")
        if self.prior_output_tokens < 1:
            raise InvalidArgument("router.prior_output_tokens", "must be >= 1")
        if not (math.isfinite(self.forgetting) and 0.5 <= self.forgetting <= 1.0):
            raise InvalidArgument("router.forgetting", "must be in [0.5, 1] (or 0 for none)")
        check_finite("router.prior_quality", self.prior_quality, minimum=None)
        if self.default_reward is not None and not (
            math.isfinite(self.default_reward) and 0.0 <= self.default_reward <= 1.0
        ):
            raise InvalidArgument("router.default_reward", "must be in [0, 1]")
        if self.reward_wait_seconds < 1:
            raise InvalidArgument("router.reward_wait_seconds", "must be >= 1")
        if self.combine not in COMBINE_RULES:
            raise InvalidArgument("router.combine", f"must be one of {', '.join(COMBINE_RULES)}")
        for field_name in ("thumb_up_reward", "thumb_down_reward"):
            value = getattr(self, field_name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise InvalidArgument(f"router.{field_name}", "must be in [0, 1]")
        if self.feedback_cap_per_key < 0:
            raise InvalidArgument("router.feedback_cap_per_key", "must be >= 0 (0 = no cap)")
        if self.feedback_cap_window_seconds < 1:
            raise InvalidArgument("router.feedback_cap_window_seconds", "must be >= 1")
        if not 0 <= self.explore_new_arm <= MAX_EXPLORE_NEW_ARM:
            raise InvalidArgument("router.explore_new_arm", f"must be in 0..{MAX_EXPLORE_NEW_ARM}")
        if not (math.isfinite(self.prior_weight) and 1e-3 <= self.prior_weight <= 1e6):
            raise InvalidArgument(
                "router.prior_weight", "must be in [0.001, 1e6] (or 0 for the default)"
            )
        if len(self.shadows) > MAX_SHADOWS:
            raise InvalidArgument("router.shadows", f"at most {MAX_SHADOWS} shadow policies")
        shadow_names = [s.name for s in self.shadows]
        if len(set(shadow_names)) != len(shadow_names):
            raise InvalidArgument("router.shadows", "shadow names must be unique")
        if not (math.isfinite(self.breaker_error_rate) and 0.0 <= self.breaker_error_rate <= 1.0):
            raise InvalidArgument("router.breaker_error_rate", "must be in [0, 1] (1 = never trip)")
        if not 1 <= self.breaker_min_events <= MAX_BREAKER_MIN_EVENTS:
            raise InvalidArgument(
                "router.breaker_min_events", f"must be in 1..{MAX_BREAKER_MIN_EVENTS}"
            )
        if not 1 <= self.breaker_cooldown_seconds <= MAX_BREAKER_COOLDOWN_SECONDS:
            raise InvalidArgument(
                "router.breaker_cooldown_seconds", f"must be in 1..{MAX_BREAKER_COOLDOWN_SECONDS}"
            )
        self._check_context()

    def _check_context(self) -> None:
        if self.encoder not in ENCODERS:
            raise InvalidArgument("router.encoder", f"must be one of {', '.join(ENCODERS)}")
        native = ENCODER_DIMS.get(self.encoder)
        if native is not None and self.embedding_dim != native:
            raise InvalidArgument(
                "router.embedding_dim",
                f"encoder {self.encoder!r} gives {native} values (set {native} or 0)",
            )
        if len(self.metadata_keys) > MAX_METADATA_KEYS:
            raise InvalidArgument("router.metadata_keys", f"at most {MAX_METADATA_KEYS} keys")
        if len(set(self.metadata_keys)) != len(self.metadata_keys):
            raise InvalidArgument("router.metadata_keys", "keys must be distinct")
        if any(not key or len(key) > 128 for key in self.metadata_keys):
            raise InvalidArgument("router.metadata_keys", "keys must be 1-128 characters")
        if not 2 <= self.metadata_slots <= MAX_METADATA_SLOTS:
            raise InvalidArgument("router.metadata_slots", f"must be in 2..{MAX_METADATA_SLOTS}")
        if not 0 <= self.pca_dim <= min(self.embedding_dim, 256):
            raise InvalidArgument(
                "router.pca_dim", "must be in 0..min(embedding_dim, 256) (0: no reduction)"
            )
        if self.pca_dim and self.pca_fit_samples < self.pca_dim:
            raise InvalidArgument("router.pca_fit_samples", "must be >= pca_dim")
        if not 0 <= self.knn_k <= MAX_KNN_K:
            raise InvalidArgument("router.knn_k", f"must be in 0..{MAX_KNN_K} (0: off)")
        if not 0 <= self.text_window_tokens <= 100_000:
            raise InvalidArgument("router.text_window_tokens", "must be in 0..100000")

    @property
    def dim(self) -> int:
        """Length of the context vector x: an intercept, the (reduced) embedding, one-hot
        metadata and kNN outcome features (banditd.context.pipeline has the layout)."""
        return 1 + self.reduced_dim + self.metadata_dim + self.knn_dim

    @property
    def context_fields(self) -> dict[str, object]:
        """What gives each position of x its meaning besides its size (``changes_x``)."""
        fields: dict[str, object] = {
            "encoder": self.encoder,
            "embedding_dim": self.embedding_dim,
            "text_window_tokens": self.text_window_tokens,
            "pca_dim": self.pca_dim,
            "metadata_keys": self.metadata_keys,
            "metadata_slots": self.metadata_slots,
            "knn_k": self.knn_k,
        }
        if self.pca_dim:
            fields["pca_fit_samples"] = self.pca_fit_samples
        if self.knn_k:  # two features per arm, in the arms' order
            fields["arms"] = tuple(a.name for a in self.arms)
        return fields

    def changes_x(self, other: RouterSpec) -> bool:
        """Whether ``other`` builds x of another size or another way: feedback logged under
        one is not the other's data, so a router changed so learns again from its prior."""
        return self.dim != other.dim or self.context_fields != other.context_fields

    @property
    def reduced_dim(self) -> int:
        """Size of the embedding part of x: pca_dim when set, else embedding_dim."""
        return self.pca_dim or self.embedding_dim

    @property
    def metadata_dim(self) -> int:
        return len(self.metadata_keys) * self.metadata_slots

    @property
    def knn_dim(self) -> int:
        """Two features per arm (neighbours' mean reward, neighbour share) when kNN is on."""
        return 2 * len(self.arms) if self.knn_k else 0

    @property
    def breaker(self) -> BreakerConfig:
        return BreakerConfig(
            self.breaker_error_rate, self.breaker_min_events, self.breaker_cooldown_seconds
        )

    @property
    def alpha(self) -> float:
        """The exploration parameter, with the policy's default for 0."""
        return self.exploration or DEFAULT_EXPLORATION[self.policy]

    def arm(self, name: str) -> ArmSpec | None:
        return next((a for a in self.arms if a.name == name), None)

    @functools.cached_property
    def arm_positions(self) -> Mapping[str, int]:
        """Each arm's index in ``arms`` by name (a compact token's arm fields). Built once per
        spec, on first use; read-only."""
        return MappingProxyType({a.name: i for i, a in enumerate(self.arms)})

    @functools.cached_property
    def arm_numbers(self) -> npt.NDArray[np.float64]:
        """A row per arm, in order: input and output price (USD/Mtok), input and output energy
        (Wh/Mtok), prior latency (ms): what the posterior's expected costs start from
        (banditd.state.expected_costs). Built once per spec, on first use; read-only."""
        numbers = np.array(
            [
                (
                    a.input_price_per_mtok,
                    a.output_price_per_mtok,
                    a.input_energy_wh_per_mtok,
                    a.output_energy_wh_per_mtok,
                    a.prior_latency_ms,
                )
                for a in self.arms
            ],
            dtype=np.float64,
        ).reshape(len(self.arms), 5)
        numbers.flags.writeable = False
        return numbers

    def thumb_reward(self, up: bool) -> float:
        return self.thumb_up_reward if up else self.thumb_down_reward


def spec_to_dict(spec: RouterSpec) -> dict[str, Any]:
    """A router configuration as plain JSON values (the stored history of versions)."""
    return dataclasses.asdict(spec)


def _known(data: Mapping[str, Any], cls: type[Any]) -> dict[str, Any]:
    return {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}


def spec_from_dict(data: Mapping[str, Any]) -> RouterSpec:
    """The inverse of spec_to_dict; another version's keys (router, arms, shadows) are dropped."""
    values = _known(data, RouterSpec)
    values["arms"] = tuple(ArmSpec(**_known(a, ArmSpec)) for a in data.get("arms", ()))
    values["shadows"] = tuple(ShadowSpec(**_known(s, ShadowSpec)) for s in data.get("shadows", ()))
    return RouterSpec(**values | {"metadata_keys": tuple(values.get("metadata_keys") or ())})
