"""Audit trail.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_event",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("recorded", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("category", sa.String(32), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("outcome", sa.Integer, nullable=False),
        sa.Column("client_id", sa.String(64)),
        sa.Column("user", sa.String(256)),
        sa.Column("patient", sa.String(64), index=True),
        sa.Column("study", sa.String(64)),
        sa.Column("detail", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_event")
