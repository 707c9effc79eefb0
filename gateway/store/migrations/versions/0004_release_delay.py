"""Release delay: early releases by staff and patients' waivers.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "study_release",
        sa.Column("study_uid", sa.String(64), primary_key=True),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("released_by", sa.String(128), nullable=False),
    )
    op.create_table(
        "delay_waiver",
        sa.Column("patient_fhir_id", sa.String(64), primary_key=True),
        sa.Column("waived_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("delay_waiver")
    op.drop_table("study_release")
