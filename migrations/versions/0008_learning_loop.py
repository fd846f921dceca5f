"""The learning loop: what replay, shadow policies and canaries need from each request.

Per request, without its prompt:

- ``features``, ``feature_version``: the numbers the scorer saw (a JSON array, each a float32
  written so it reads back exactly) and the version of the function that made them, so a model of
  the same feature version can score the request again; NULL for a text model or no score;
- ``decided_tier``: the tier the policy's thresholds chose before exploration;
  ``explored``: exploration sent the request to a cheaper tier instead; ``propensity``: the
  probability that the first tier was the one chosen, given the request (1 without exploration);
- ``arm``: ``control`` or ``canary`` when the policy ran a canary, else NULL;
- ``shadow_policy``, ``shadow_policy_version``, ``shadow_tier``, ``shadow_confidence``: what a
  shadow policy (``cascade serve --shadow``) decided for the same request, never acted on.

Existing rows read NULL (and ``explored`` false): they were written before any of it was kept.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TEXT = ("features", "feature_version", "decided_tier", "arm", "shadow_policy")
_MORE_TEXT = ("shadow_policy_version", "shadow_tier")


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        for name in (*_TEXT, *_MORE_TEXT):
            batch.add_column(sa.Column(name, sa.String(), nullable=True))
        batch.add_column(sa.Column("propensity", sa.Float(), nullable=True))
        batch.add_column(sa.Column("shadow_confidence", sa.Float(), nullable=True))
        batch.add_column(
            sa.Column("explored", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        for name in ("explored", "shadow_confidence", "propensity", *_MORE_TEXT, *_TEXT):
            batch.drop_column(name)
