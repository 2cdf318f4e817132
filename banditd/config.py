"""The one settings object, read from flags, the environment (BANDITD_*) and defaults."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LogLevel = Literal["debug", "info", "warning", "error"]

# The repository's migrations/ folder; images copy it beside the package (see deploy/).
DEFAULT_MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # the default of max_message_bytes (ingest's too)


class Settings(BaseSettings):
    """Process settings. Frozen: build a new one to change anything."""

    # Every number finite: an infinite rate or time passed the bounds and meant nonsense (a rate
    # limit of inf refused every call); 0 is how a setting says "no limit" where it can.
    model_config = SettingsConfigDict(
        env_prefix="BANDITD_", frozen=True, extra="forbid", allow_inf_nan=False
    )

    listen: str = Field("127.0.0.1:50051", description="host:port to serve gRPC on (port 0 = any)")
    database_url: str = Field(
        "sqlite+aiosqlite:///banditd.db",
        description="SQLAlchemy async URL: sqlite+aiosqlite:///FILE or postgresql+asyncpg://...",
    )
    log_level: LogLevel = "info"
    reuse_port: bool = Field(
        False,
        description="bind the listen port beside other processes (SO_REUSEPORT); set by "
        "serve --workers for its workers only: a lone server refuses a port already served",
    )
    metrics_listen: str = Field(
        "127.0.0.1:9464", description="HOST:PORT for Prometheus /metrics; empty: no endpoint"
    )
    # HMAC key for decision tokens. Unset: a random key is created once and kept in the database,
    # which suits the embedded default; production sets it from a secret shared by all replicas.
    signing_key: SecretStr | None = None
    migrate_on_start: bool | None = Field(
        None, description="run migrations at start; default: yes on SQLite, no on Postgres"
    )
    migrations_dir: Path = DEFAULT_MIGRATIONS_DIR
    migrate_lock_timeout_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Postgres: how long a migration waits for a table lock before it fails, "
        "changing nothing (an ALTER TABLE waiting queues every query on its table)",
    )
    snapshot_every: int = Field(500, ge=1, description="write a posterior snapshot every N events")
    tail_interval_s: float = Field(
        1.0, gt=0, description="how often to apply events other replicas wrote to the log"
    )
    notify_ping_s: float = Field(
        5.0,
        gt=0,
        description="how often the Postgres LISTEN connection is pinged; one that does not "
        "answer within as long (half-open: it would never deliver a NOTIFY) is replaced",
    )
    decision_flush_ms: float = Field(
        5.0, gt=0, description="group-commit window of the decision log"
    )
    max_prompt_chars: int = Field(200_000, ge=1)
    max_metadata_entries: int = Field(64, ge=0)
    grace_seconds: float = Field(10.0, ge=0, description="drain time for in-flight calls on stop")
    # Fault behaviour (database outages).
    feedback_attempts: int = Field(
        3, ge=1, le=10, description="tries to commit a Feedback before answering UNAVAILABLE"
    )
    feedback_join_wait_s: float = Field(
        3600.0,
        gt=0,
        description="how long parked feedback (compact token, decision row not yet visible) "
        "waits for its decision before it is counted unjoined",
    )
    decision_log_max_pending: int = Field(
        100_000, ge=1, description="decisions buffered while the database is down (oldest dropped)"
    )

    # Context features: micro-batching of slow text encoders (minilm).
    encoder_max_wait_ms: float = Field(
        2.0, ge=0, le=50, description="longest a prompt waits for others to share an encoder call"
    )
    encoder_max_batch: int = Field(64, ge=1, le=1024, description="prompts per encoder call")
    # The GPU path (issue 23, docs/gpu.md): FAISS indexes and the minilm encoder.
    device: Literal["auto", "cpu", "gpu"] = Field(
        "auto",
        description="where kNN indexes and the minilm encoder run: auto (the GPU when faiss and "
        "torch see one), cpu, or gpu (refuse to start without one)",
    )
    gpu_temp_memory_mb: int = Field(
        256,
        ge=0,
        le=65_536,
        description="scratch memory (MiB) of the process's one FAISS GPU resource, shared by "
        "every router's index",
    )

    # -- budgets (issue 6)
    budget_lease_fraction: float = Field(
        0.1, gt=0, le=1, description="share of a budget's unleased money one lease takes"
    )
    budget_lease_ttl_s: float = Field(
        15.0, gt=0, description="a lease not renewed for this long is closed by any replica"
    )
    budget_refresh_s: float = Field(
        1.0, gt=0, description="how often leases are renewed, spend refreshed, alerts checked"
    )
    budget_pace_slack: float = Field(
        0.05,
        ge=0,
        le=1,
        description="share of the limit over which the pacer's price runs from its floor to its "
        "top, as spend goes from half of it behind the period's clock to half of it ahead",
    )

    # Security (issue 10): transport, API keys, abuse limits, feedback poisoning defences.
    # See docs/security.md. Plaintext and auth-off are defaults only on a loopback address.
    tls_cert_file: Path | None = Field(None, description="PEM server certificate (chain)")
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA bundle: set to require client certificates it signed (mTLS)"
    )
    allow_plaintext: bool | None = Field(
        None, description="serve without TLS; default: only on a loopback listen address"
    )
    auth: Literal["required", "disabled"] | None = Field(
        None, description="API keys; default: disabled on a loopback listen address, else required"
    )
    auth_cache_seconds: float = Field(
        5.0,
        ge=0,
        le=3600,  # a revocation must take effect: at most an hour late
        description="how long a replica trusts a looked-up key (revocation delay)",
    )
    rate_limit_selects_per_s: float = Field(
        0.0, ge=0, description="per-tenant Select rate per replica (0: unlimited)"
    )
    rate_limit_feedback_per_s: float = Field(
        0.0, ge=0, description="per-tenant feedback events per second per replica (0: unlimited)"
    )
    rate_limit_burst_s: float = Field(
        1.0, gt=0, description="a bucket holds this many seconds' worth of its rate"
    )
    health_listen: str = Field(
        "", description="HOST:PORT of a plaintext listener serving only gRPC health (probes)"
    )
    max_candidates: int = Field(256, ge=1)
    max_message_bytes: int = Field(MAX_MESSAGE_BYTES, ge=1024, description="gRPC message limit")
    anomaly_window: int = Field(
        50, ge=5, description="feedback events per arm compared with the arm's history"
    )
    anomaly_min_history: int = Field(200, ge=1)
    anomaly_threshold: float = Field(
        0.3, gt=0, description="|recent mean reward - historic mean| that raises the signal"
    )

    # Bounds on numbers callers and admins send (issue 17, banditd.domain.bounds; docs/security.md).
    # Each is capped by a hard ceiling (banditd.domain.bounds.HARD_MAX_*) that keeps every sum
    # finite.
    max_price_per_mtok: float = Field(
        10_000.0, gt=0, le=1e6, description="USD per million tokens an arm may be priced at"
    )
    max_cost_weight: float = Field(
        1e6, gt=0, le=1e9, description="largest cost_weight (utility per USD) anywhere"
    )
    max_cost_usd: float = Field(
        10_000.0, gt=0, le=1e6, description="largest cost of one call (cost_usd, max_cost_usd)"
    )
    max_reported_tokens: int = Field(
        10_000_000, ge=1, le=1_000_000_000, description="tokens one Feedback may report"
    )
    max_latency_ms: float = Field(
        86_400_000.0, gt=0, le=1e10, description="latency one Feedback may report (1 day)"
    )
    max_budget_usd: float = Field(
        1e9, gt=0, le=1e12, description="largest budget limit_usd per period"
    )

    # Gateway (issue 22, `banditd gateway`; docs/gateway.md). Its API key is BANDITD_API_KEY.
    gateway_listen: str = Field(
        "127.0.0.1:8080", description="HOST:PORT the OpenAI-compatible gateway serves HTTP on"
    )
    gateway_target: str = Field(
        "127.0.0.1:50051", description="banditd gRPC address the gateway calls Select/Feedback on"
    )
    gateway_max_fallbacks: int = Field(
        2, ge=0, le=16, description="arms the gateway tries after the chosen one fails"
    )
    gateway_upstream_timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="seconds each step of an upstream attempt may take (connect, send, pool, "
        "each read; not the whole answer)",
    )
    gateway_max_answer_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1,
        description="largest answer (not streamed) the gateway reads from an upstream; a larger "
        "one is the arm's failure",
    )

    gateway_upstream_key_envs: str = Field(
        "",
        description="comma-separated environment variables an arm's upstream_api_key_env may "
        "name (the keys sent to upstreams); empty: any but BANDITD_*",
    )

    @field_validator("listen", "health_listen", "metrics_listen", "gateway_listen")
    @classmethod
    def _check_listen(cls, value: str, info: ValidationInfo) -> str:
        if not value and info.field_name in ("health_listen", "metrics_listen"):
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"{info.field_name} must be HOST:PORT, got {value!r}")
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def is_loopback(self) -> bool:
        host = self.listen.rpartition(":")[0].strip("[]")
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    @property
    def auth_required(self) -> bool:
        return self.auth == "required" or (self.auth is None and not self.is_loopback)

    @property
    def plaintext_allowed(self) -> bool:
        return self.allow_plaintext is True or (self.allow_plaintext is None and self.is_loopback)

    @property
    def should_migrate(self) -> bool:
        return self.is_sqlite if self.migrate_on_start is None else self.migrate_on_start
