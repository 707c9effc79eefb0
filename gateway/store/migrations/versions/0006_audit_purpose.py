"""Audit: the purpose of use each access was made for (HL7 v3 ActReason).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_event") as table:
        table.add_column(sa.Column("purpose", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_event") as table:
        table.drop_column("purpose")
