"""Scheduled ticks claimed by one instance: `dvc_tick_claims`.

Revision ID: 0002
Revises: 0001

Several `dvconnect schedule` instances sharing a store each fire every cron tick; the instance
that claims a tick first runs it, and the others skip it without recording a run. A new table,
nothing else changes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "dvc_tick_claims",
        sa.Column("job", sa.String(64), primary_key=True),
        sa.Column("tick", sa.String(20), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("dvc_tick_claims")
