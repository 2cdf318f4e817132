"""The one settings object, read from flags, the environment (BANDITD_*) and defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LogLevel = Literal["debug", "info", "warning", "error"]

# The repository's migrations/ folder; images copy it beside the package (see deploy/).
DEFAULT_MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


class Settings(BaseSettings):
    """Process settings. Frozen: build a new one to change anything."""

    model_config = SettingsConfigDict(env_prefix="BANDITD_", frozen=True, extra="forbid")

    listen: str = Field("127.0.0.1:50051", description="host:port to serve gRPC on (port 0 = any)")
    database_url: str = Field(
        "sqlite+aiosqlite:///banditd.db",
        description="SQLAlchemy async URL: sqlite+aiosqlite:///FILE or postgresql+asyncpg://...",
    )
    log_level: LogLevel = "info"
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
    snapshot_every: int = Field(500, ge=1, description="write a posterior snapshot every N events")
    tail_interval_s: float = Field(
        1.0, gt=0, description="how often to apply events other replicas wrote to the log"
    )
    decision_flush_ms: float = Field(
        5.0, gt=0, description="group-commit window of the decision log"
    )
    max_prompt_chars: int = Field(200_000, ge=1)
    max_metadata_entries: int = Field(64, ge=0)
    grace_seconds: float = Field(10.0, ge=0, description="drain time for in-flight calls on stop")
    # Context features: micro-batching of slow text encoders (minilm).
    encoder_max_wait_ms: float = Field(
        2.0, ge=0, le=50, description="longest a prompt waits for others to share an encoder call"
    )
    encoder_max_batch: int = Field(64, ge=1, le=1024, description="prompts per encoder call")

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"listen must be HOST:PORT, got {value!r}")
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def should_migrate(self) -> bool:
        return self.is_sqlite if self.migrate_on_start is None else self.migrate_on_start
