"""Budgets: each key's spend per period, and the blocks of it leased to workers.

Money in these tables is whole nano-dollars (BIGINT), so the conditional ``UPDATE`` that keeps
``settled + leased <= limit`` adds exactly on SQLite as on Postgres (see
``cascade.ledger.budgets``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "budget_periods",
        sa.Column("key_id", sa.String(), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("limit_nusd", sa.BigInteger(), nullable=False),
        sa.Column("settled_nusd", sa.BigInteger(), nullable=False),
        sa.Column("leased_nusd", sa.BigInteger(), nullable=False),
        sa.Column("self_hosted_nusd", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key_id", "period_start", name=op.f("pk_budget_periods")),
    )
    op.create_table(
        "budget_leases",
        sa.Column("lease_id", sa.String(), nullable=False),
        sa.Column("key_id", sa.String(), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("worker", sa.String(), nullable=False),
        sa.Column("amount_nusd", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("lease_id", name=op.f("pk_budget_leases")),
    )
    op.create_index("ix_budget_leases_expires_at", "budget_leases", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_budget_leases_expires_at", table_name="budget_leases")
    op.drop_table("budget_leases")
    op.drop_table("budget_periods")
