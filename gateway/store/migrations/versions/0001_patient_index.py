"""Patient index: stable opaque FHIR ids for (issuer, PatientID).

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "patient_index",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("issuer", sa.String(128), nullable=False, server_default=""),
        sa.Column("patient_id", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("issuer", "patient_id", name="uq_patient_index_key"),
    )


def downgrade() -> None:
    op.drop_table("patient_index")
