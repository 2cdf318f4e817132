"""Context features: encoder, metadata, PCA and kNN settings per router; metadata vocabulary and
fitted PCA per router; the featurisation each decision used.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("routers") as batch:
        batch.add_column(
            sa.Column("encoder", sa.String(32), nullable=False, server_default="hashing")
        )
        batch.add_column(sa.Column("metadata_keys", sa.JSON(), nullable=True))
        for name, default in (
            ("metadata_slots", "16"),
            ("pca_dim", "0"),
            ("pca_fit_samples", "256"),
            ("knn_k", "0"),
            ("text_window_tokens", "0"),
        ):
            batch.add_column(sa.Column(name, sa.Integer(), nullable=False, server_default=default))
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("context_version", sa.String(128), nullable=True))
    op.create_table(
        "context_vocab",
        sa.Column(
            "router_id",
            BigId,
            sa.ForeignKey(
                "routers.id", ondelete="CASCADE", name="fk_context_vocab_router_id_routers"
            ),
        ),
        sa.Column("key", sa.String(128)),
        sa.Column("value", sa.String(1024)),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("router_id", "key", "value", name="pk_context_vocab"),
        sa.UniqueConstraint("router_id", "key", "slot", name="uq_context_vocab_router_key_slot"),
    )
    op.create_table(
        "context_models",
        sa.Column(
            "router_id",
            BigId,
            sa.ForeignKey(
                "routers.id", ondelete="CASCADE", name="fk_context_models_router_id_routers"
            ),
        ),
        sa.Column("fingerprint", sa.String(200)),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("router_id", "fingerprint", name="pk_context_models"),
    )


def downgrade() -> None:
    op.drop_table("context_models")
    op.drop_table("context_vocab")
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("context_version")
    with op.batch_alter_table("routers") as batch:
        for name in (
            "text_window_tokens",
            "knn_k",
            "pca_fit_samples",
            "pca_dim",
            "metadata_slots",
            "metadata_keys",
            "encoder",
        ):
            batch.drop_column(name)
