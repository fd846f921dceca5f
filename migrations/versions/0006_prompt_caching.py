"""Provider prompt caching and context discipline: tokens written to a provider's cache, and
what a history cap trimmed from a request.

``cache_write_tokens`` sits beside ``cached_tokens`` on both tables: tokens a marker-based
provider wrote to its cache (billed at the cache-write price, a premium over plain input), a
subset of ``prompt_tokens`` like the cached ones. ``trimmed_messages`` and ``trimmed_tokens``
record what a workload's ``max_history_tokens`` took out of a conversation before it was sent.
Existing rows read 0: they were written before either could happen.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ZERO = sa.text("0")


def upgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(
            sa.Column("cache_write_tokens", sa.Integer(), nullable=False, server_default=_ZERO)
        )
    with op.batch_alter_table("requests") as batch:
        for name in ("cache_write_tokens", "trimmed_messages", "trimmed_tokens"):
            batch.add_column(sa.Column(name, sa.Integer(), nullable=False, server_default=_ZERO))


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        for name in ("trimmed_tokens", "trimmed_messages", "cache_write_tokens"):
            batch.drop_column(name)
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("cache_write_tokens")
