"""Table definitions. The schema changes only through Alembic migrations in migrations/.

The budgets' tables are in banditd.store.budget_tables."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    true,
)

# BIGINT ids on Postgres, INTEGER (the rowid alias) on SQLite. A table whose ids are cursors or
# references is sqlite_autoincrement (migration 0019): SQLite then never reuses a deleted id.
BigId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

routers = Table(
    "routers",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant", String(128), nullable=False),
    Column("name", String(128), nullable=False),
    Column("policy", String(32), nullable=False),
    Column("exploration", Float, nullable=False),
    Column("default_cost_weight", Float, nullable=False),
    Column("embedding_dim", Integer, nullable=False),
    Column("feedback_ttl_seconds", Integer, nullable=False),
    Column("prior_output_tokens", Integer, nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("forgetting", Float, nullable=False, server_default="1.0"),
    Column("prior_quality", Float, nullable=False, server_default="1.0"),
    Column("prior_weight", Float, nullable=False, server_default="1.0"),
    Column("explore_new_arm", Integer, nullable=False, server_default="0"),
    Column("default_reward", Float, nullable=True),
    Column("reward_wait_seconds", Integer, nullable=False, server_default="3600"),
    Column("combine", String(8), nullable=False, server_default="first"),
    Column("thumb_up_reward", Float, nullable=False, server_default="1"),
    Column("thumb_down_reward", Float, nullable=False, server_default="0"),
    # Shadow policies (0008): [{name, policy, exploration, cost_weight}], NULL for none.
    Column("shadows", JSON, nullable=True),
    # Security (issue 10): feedback events one client key may add to one arm per window.
    Column("feedback_cap_per_key", Integer, nullable=False, server_default="0"),
    Column("feedback_cap_window_seconds", Integer, nullable=False, server_default="3600"),
    UniqueConstraint("tenant", "name", name="uq_routers_tenant_name"),
    sqlite_autoincrement=True,
)

arms = Table(
    "arms",
    metadata,
    Column("router_id", BigId, ForeignKey("routers.id", ondelete="CASCADE"), primary_key=True),
    Column("name", String(128), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("input_price_per_mtok", Float, nullable=False),
    Column("output_price_per_mtok", Float, nullable=False),
    Column("disabled", Boolean, nullable=False),
)

decisions = Table(
    "decisions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("router_id", BigId, ForeignKey("routers.id", ondelete="CASCADE"), nullable=False),
    Column("request_id", String(128), nullable=True),
    Column("arm", String(128), nullable=False),
    Column("propensity", Float, nullable=False),
    Column("explored", Boolean, nullable=False),
    Column("expected_cost_usd", Float, nullable=False),
    Column("policy", String(32), nullable=False),
    Column("router_version", Integer, nullable=False),
    Column("seed", BigInteger, nullable=False),
    Column("candidates", JSON, nullable=False),
    Column("ranking", JSON, nullable=False),
    Column("request_metadata", JSON, nullable=False),
    Column("token", Text, nullable=False),
    Column("x", LargeBinary, nullable=True),
    Column("expires_at", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("router_id", "request_id", name="uq_decisions_router_request"),
    Index("ix_decisions_router_id_created_at", "router_id", "created_at"),
)

feedback_events = Table(
    "feedback_events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("router_id", BigId, ForeignKey("routers.id", ondelete="CASCADE"), nullable=False),
    Column("decision_id", String(36), nullable=False),
    Column("arm", String(128), nullable=False),
    Column("x", LargeBinary, nullable=False),
    Column("reward", Float, nullable=False),
    Column("cost_usd", Float, nullable=False),
    Column("input_tokens", BigInteger, nullable=True),
    Column("output_tokens", BigInteger, nullable=True),
    Column("latency_ms", Float, nullable=True),
    Column("error", Boolean, nullable=False),
    Column("created_at", Float, nullable=False),
    # True for events fitted from offline outcome data (warm start): they shape the posterior
    # but are not feedback, so stats leave them out.
    Column("offline", Boolean, nullable=False, server_default=false()),
    # False when Feedback carried no cost and the decision's expected cost was charged instead.
    Column("cost_reported", Boolean, nullable=False, server_default=true()),
    # True for the router's default reward, given to a decision whose feedback never came.
    Column("defaulted", Boolean, nullable=False, server_default=false()),
    # A decision's signals, from 0; more than one only where the router combines signals.
    Column("signal", Integer, nullable=False, server_default="0"),
    Column("effective_reward", Float, nullable=True),  # the decision's reward after this signal
    Column("reward_delta", Float, nullable=True),  # its change to the reward; null for signal 0
    UniqueConstraint("decision_id", "signal", name="uq_feedback_events_decision_signal"),
    Index("ix_feedback_events_router_id_id", "router_id", "id"),
    sqlite_autoincrement=True,
)

posterior_snapshots = Table(
    "posterior_snapshots",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("router_id", BigId, ForeignKey("routers.id", ondelete="CASCADE"), nullable=False),
    Column("last_event_id", BigInteger, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_posterior_snapshots_router_id_id", "router_id", "id"),
)

server_secrets = Table(
    "server_secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", LargeBinary, nullable=False),
)

# -- shadow policies and router versions (0008) ------------------------------------------------

# Every configuration a router has had, by version: PutRouter, promotion and rollback all add one.
router_versions = Table(
    "router_versions",
    metadata,
    Column("router_id", BigId, ForeignKey("routers.id", ondelete="CASCADE"), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("action", String(16), nullable=False),  # "put", "promote" or "rollback"
    Column("config", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
)

# What each shadow policy would have chosen at a decision, and its probability of the live arm
# (the importance weight's numerator). Logged with the decision, in the same group commit.
shadow_picks = Table(
    "shadow_picks",
    metadata,
    Column("decision_id", String(36), primary_key=True),
    Column("shadow", String(128), primary_key=True),
    Column("router_id", BigId, ForeignKey("routers.id", ondelete="CASCADE"), nullable=False),
    Column("arm", String(128), nullable=False),
    Column("live_arm_probability", Float, nullable=False),
    Index("ix_shadow_picks_router_id", "router_id"),
)

# Security (issue 10): API keys, stored as a hash of their secret only.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(128), nullable=False),
    # Comma-separated, sorted: "admin", "feedback", "select".
    Column("roles", String(64), nullable=False),
    Column("name", String(128), nullable=False, server_default=""),
    Column("secret_sha256", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
    Index("ix_api_keys_tenant", "tenant"),
)
# Arm health (circuit breaker; migration 0009): the router's breaker settings, and each
# snapshot's breaker state (JSON, see banditd.state.breaker), taken at the same event as its
# posterior.
routers.append_column(Column("breaker_error_rate", Float, nullable=False, server_default="0.5"))
routers.append_column(Column("breaker_min_events", Integer, nullable=False, server_default="20"))
routers.append_column(
    Column("breaker_cooldown_seconds", Integer, nullable=False, server_default="30")
)
posterior_snapshots.append_column(Column("health", Text, nullable=True))

# Context features (banditd.context): routers gain encoder, metadata_keys, metadata_slots,
# pca_dim, pca_fit_samples, knn_k, text_window_tokens (migration 0007); decisions record the
# featurisation they used.
routers.append_column(Column("encoder", String(32), nullable=False, server_default="hashing"))
routers.append_column(Column("metadata_keys", JSON, nullable=True))
routers.append_column(Column("metadata_slots", Integer, nullable=False, server_default="16"))
routers.append_column(Column("pca_dim", Integer, nullable=False, server_default="0"))
routers.append_column(Column("pca_fit_samples", Integer, nullable=False, server_default="256"))
routers.append_column(Column("knn_k", Integer, nullable=False, server_default="0"))
routers.append_column(Column("text_window_tokens", Integer, nullable=False, server_default="0"))
decisions.append_column(Column("context_version", String(128), nullable=True))

# A router's metadata vocabulary: the one-hot position of each value of each declared key.
context_vocab = Table(
    "context_vocab",
    metadata,
    Column("router_id", BigId, ForeignKey("routers.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(128), primary_key=True),
    Column("value", String(1024), primary_key=True),
    Column("slot", Integer, nullable=False),
    UniqueConstraint("router_id", "key", "slot", name="uq_context_vocab_router_key_slot"),
)

# Fitted context models of a router (its PCA), by a fingerprint of what they depend on.
context_models = Table(
    "context_models",
    metadata,
    Column("router_id", BigId, ForeignKey("routers.id", ondelete="CASCADE"), primary_key=True),
    Column("fingerprint", String(200), primary_key=True),
    Column("data", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
)

# -- dead letters (issue 17, migration 0011) ----------------------------------------------------

# Rows set aside instead of written: a decision or feedback event the database refused as data,
# or an event of the log that the posterior skips (a non-finite number logged before the bounds).
# No foreign key: a letter outlives its router, and a bad router_id is what some letters hold.
dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),  # "decision", "feedback_event", "skipped_event"
    Column("ref", String(64), nullable=False),  # the decision id, or the skipped event's id
    Column("router_id", BigInteger, nullable=True),
    Column("tenant", String(128), nullable=True),
    Column("error", Text, nullable=False),
    Column("payload", Text, nullable=False),  # the row as standard JSON (see store.dead_letters)
    Column("created_at", Float, nullable=False),
    UniqueConstraint("kind", "ref", name="uq_dead_letters_kind_ref"),
    Index("ix_dead_letters_router_id", "router_id"),
)

# Latency and energy heads (issue 21, migration 0012): the router's default weights, each arm's
# priors, and the energy a Feedback measured.
routers.append_column(Column("default_latency_weight", Float, nullable=False, server_default="0"))
routers.append_column(Column("default_energy_weight", Float, nullable=False, server_default="0"))
arms.append_column(Column("prior_latency_ms", Float, nullable=False, server_default="0"))
arms.append_column(Column("input_energy_wh_per_mtok", Float, nullable=False, server_default="0"))
arms.append_column(Column("output_energy_wh_per_mtok", Float, nullable=False, server_default="0"))
feedback_events.append_column(Column("energy_wh", Float, nullable=True))

# Pairwise feedback (issue 21, migration 0013): a decision's challenger arm (SelectRequest
# compare), and a preference event's reward for it (the event's arm gets reward).
decisions.append_column(Column("challenger", String(128), nullable=True))
feedback_events.append_column(Column("challenger", String(128), nullable=True))
feedback_events.append_column(Column("challenger_reward", Float, nullable=True))

# Gateway (issue 22, migration 0014): each arm's upstream, and usage reports (Feedback with
# usage_only) kept apart from the event log so they never use up a decision's one rating; a
# decision's usage is folded into its first event (the rating or the default reward).
arms.append_column(Column("upstream_base_url", Text, nullable=False, server_default=""))
arms.append_column(Column("upstream_model", String(256), nullable=False, server_default=""))
arms.append_column(Column("upstream_api_key_env", String(128), nullable=False, server_default=""))

decision_usage = Table(
    "decision_usage",
    metadata,
    Column("decision_id", String(36), primary_key=True),
    Column("router_id", BigId, ForeignKey("routers.id", ondelete="CASCADE"), nullable=False),
    Column("arm", String(128), nullable=False),
    Column("cost_usd", Float, nullable=True),
    Column("input_tokens", BigInteger, nullable=True),
    Column("output_tokens", BigInteger, nullable=True),
    Column("latency_ms", Float, nullable=True),
    Column("first_token_ms", Float, nullable=True),
    Column("energy_wh", Float, nullable=True),
    Column("error", Boolean, nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_decision_usage_router_id_arm", "router_id", "arm"),
)

# Compact tokens (issue 20, migration 0015): feedback accepted before its decision row was
# visible, joined to it later (banditd.flows.joiner). state: pending | joining (claimed by a
# replica) | joined | orphaned (no decision came in time) | refused (the joined event was
# refused). Rows are kept: nothing acknowledged is deleted.
feedback_pending = Table(
    "feedback_pending",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("decision_id", String(36), nullable=False, unique=True),
    Column("router_id", BigId, ForeignKey("routers.id", ondelete="CASCADE"), nullable=False),
    Column("tenant", String(128), nullable=False),
    Column("request", JSON, nullable=False),  # the FeedbackInput, token included
    Column("received_at", Float, nullable=False),
    Column("state", String(16), nullable=False, server_default="pending"),
    Column("settled_at", Float, nullable=True),
    Index("ix_feedback_pending_state_id", "state", "id"),
    sqlite_autoincrement=True,
)
PENDING_WAITING = ("pending", "joining")  # the states of feedback not in the event log yet

# A change of how x is built (0016; banditd.store.routers): the version since which x is built as
# now, and each event's decision's (null: unknown): events decided before are not folded.
routers.append_column(Column("context_since", Integer, nullable=False, server_default="0"))
feedback_events.append_column(Column("decision_version", Integer, nullable=True))
# What the budget did to a decision (migration 0018; null: logged before it, no budget), so that
# a repeated request_id answered from the log gets the first answer's price and outcome too.
decisions.append_column(Column("budget_price", Float, nullable=True))
decisions.append_column(Column("budget_outcome", String(16), nullable=True))
# The request's own cost weight (0020; null: none, or older): OPE weighs as Select did.
decisions.append_column(Column("cost_weight", Float, nullable=True))
# And its own latency and energy weights (0022; null: none, or older), likewise.
decisions.append_column(Column("latency_weight", Float, nullable=True))
decisions.append_column(Column("energy_weight", Float, nullable=True))
# Each event's featurisation (0021; null: older, or a v1 token), the decision's or the warm
# start's: a router folds only the events its encoder's weights built (banditd.store.events).
feedback_events.append_column(Column("context_version", String(128), nullable=True))
# Idempotency keys (0023): the key a Feedback named its event by, once per decision (the index
# decides between concurrent resends; rows without a key are left out of it). A parked
# feedback's key is a column too, not in its request: an older replica joining it would refuse a
# request field it lacks (banditd.flows.feedback_input.parked_input).
feedback_events.append_column(Column("idempotency_key", String(128), nullable=True))
Index(
    "uq_feedback_events_decision_id_idempotency_key",
    feedback_events.c.decision_id,
    feedback_events.c.idempotency_key,
    unique=True,
    sqlite_where=feedback_events.c.idempotency_key.is_not(None),
    postgresql_where=feedback_events.c.idempotency_key.is_not(None),
)
feedback_pending.append_column(Column("idempotency_key", String(128), nullable=True))
