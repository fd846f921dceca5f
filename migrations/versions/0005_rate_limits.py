"""Rate limits and reports by key: each key's use of each minute, and the key of each request.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rate_windows",
        sa.Column("key_id", sa.String(), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key_id", "window_start", name=op.f("pk_rate_windows")),
    )
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("key_id", sa.String(), nullable=True))
        batch.create_index("ix_requests_key_id_created_at", ["key_id", "created_at"])


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.drop_index("ix_requests_key_id_created_at")
        batch.drop_column("key_id")
    op.drop_table("rate_windows")
