"""The Batch API: uploaded and produced files, batch jobs, and each job's requests.

``batch_requests`` rows are claimed with a lease (``claimed_by`` until ``claimed_until``) so that
proxy replicas share a job's work and a crashed replica's requests are taken again once its lease
lapses; a request's id is its ``request_id`` in the ledger, so it is recorded once.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _time(name: str, *, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "batch_files",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=True),
        sa.Column("key_id", sa.String(), nullable=True),
        sa.Column("purpose", sa.String(), nullable=False),
        sa.Column("filename", sa.String(), nullable=False),
        sa.Column("bytes", sa.Integer(), nullable=False),
        _time("created_at", nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_files")),
    )
    op.create_index("ix_batch_files_tenant_created_at", "batch_files", ["tenant", "created_at"])
    op.create_table(
        "batches",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=True),
        sa.Column("key_id", sa.String(), nullable=True),
        sa.Column("input_file_id", sa.String(), nullable=False),
        sa.Column("endpoint", sa.String(), nullable=False),
        sa.Column("completion_window", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("metadata_json", sa.String(), nullable=True),
        sa.Column("only_tiers", sa.String(), nullable=True),
        sa.Column("total", sa.Integer(), nullable=False),
        _time("created_at", nullable=False),
        _time("expires_at", nullable=False),
        *(
            _time(name)
            for name in (
                "in_progress_at",
                "finalizing_at",
                "completed_at",
                "expired_at",
                "cancelling_at",
                "cancelled_at",
            )
        ),
        sa.Column("output_file_id", sa.String(), nullable=True),
        sa.Column("error_file_id", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
    )
    op.create_index("ix_batches_tenant_created_at", "batches", ["tenant", "created_at"])
    op.create_index("ix_batches_status", "batches", ["status"])
    op.create_table(
        "batch_requests",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("batch_id", sa.String(), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("custom_id", sa.String(), nullable=False),
        sa.Column("body", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("claimed_by", sa.String(), nullable=True),
        _time("claimed_until"),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("response_body", sa.String(), nullable=True),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name=op.f("fk_batch_requests_batch_id_batches"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_requests")),
        sa.UniqueConstraint(
            "batch_id", "custom_id", name=op.f("uq_batch_requests_batch_id_custom_id")
        ),
    )
    op.create_index(
        "ix_batch_requests_status_claimed_until", "batch_requests", ["status", "claimed_until"]
    )
    op.create_index("ix_batch_requests_batch_id_line", "batch_requests", ["batch_id", "line"])


def downgrade() -> None:
    op.drop_table("batch_requests")
    op.drop_table("batches")
    op.drop_table("batch_files")
