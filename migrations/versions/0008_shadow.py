"""Shadow policies and router versions: each router's shadow candidates, what each shadow would
have chosen at each decision, and the history of router configurations (promotion, rollback).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("routers") as batch:
        batch.add_column(sa.Column("shadows", sa.JSON(), nullable=True))
    op.create_table(
        "router_versions",
        sa.Column("router_id", BigId, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["router_id"],
            ["routers.id"],
            name="fk_router_versions_router_id_routers",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("router_id", "version", name="pk_router_versions"),
    )
    op.create_table(
        "shadow_picks",
        sa.Column("decision_id", sa.String(36), nullable=False),
        sa.Column("shadow", sa.String(128), nullable=False),
        sa.Column("router_id", BigId, nullable=False),
        sa.Column("arm", sa.String(128), nullable=False),
        sa.Column("live_arm_probability", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["router_id"],
            ["routers.id"],
            name="fk_shadow_picks_router_id_routers",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("decision_id", "shadow", name="pk_shadow_picks"),
    )
    op.create_index("ix_shadow_picks_router_id", "shadow_picks", ["router_id"])
    _record_current_versions()


ROUTER_FIELDS = (
    "tenant",
    "name",
    "policy",
    "exploration",
    "default_cost_weight",
    "embedding_dim",
    "feedback_ttl_seconds",
    "prior_output_tokens",
    "version",
    "forgetting",
    "prior_quality",
    "prior_weight",
    "explore_new_arm",
    "default_reward",
    "reward_wait_seconds",
    "feedback_cap_per_key",  # 0006
    "feedback_cap_window_seconds",
    "encoder",  # 0007
    "metadata_keys",
    "metadata_slots",
    "pca_dim",
    "pca_fit_samples",
    "knn_k",
    "text_window_tokens",
)


def _record_current_versions() -> None:
    """Start each existing router's history with its configuration now, so it can be rolled
    back to after the next change (the keys of banditd.domain.spec_to_dict at 0008)."""
    conn = op.get_bind()
    meta = sa.MetaData()
    routers = sa.Table("routers", meta, autoload_with=conn)
    arms = sa.Table("arms", meta, autoload_with=conn)
    versions = sa.Table("router_versions", meta, autoload_with=conn)
    rows = conn.execute(sa.select(routers)).mappings().all()
    for r in rows:
        arm_rows = conn.execute(
            sa.select(arms).where(arms.c.router_id == r["id"]).order_by(arms.c.position)
        ).mappings()
        config = {key: r[key] for key in ROUTER_FIELDS}
        config["arms"] = [
            {
                "name": a["name"],
                "input_price_per_mtok": a["input_price_per_mtok"],
                "output_price_per_mtok": a["output_price_per_mtok"],
                "disabled": bool(a["disabled"]),
            }
            for a in arm_rows
        ]
        config["shadows"] = []
        conn.execute(
            versions.insert().values(
                router_id=r["id"],
                version=r["version"],
                action="put",
                config=config,
                created_at=r["updated_at"],
            )
        )


def downgrade() -> None:
    op.drop_index("ix_shadow_picks_router_id", table_name="shadow_picks")
    op.drop_table("shadow_picks")
    op.drop_table("router_versions")
    with op.batch_alter_table("routers") as batch:
        batch.drop_column("shadows")
