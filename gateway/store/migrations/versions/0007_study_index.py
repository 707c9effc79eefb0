"""The study index: each patient's studies as the PACS last described them (issue 12).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "study_index_patient",
        sa.Column("issuer", sa.String(128), primary_key=True),
        sa.Column("patient_id", sa.String(128), primary_key=True),
        sa.Column("revalidated_at", sa.DateTime(timezone=True)),
        sa.Column("generation", sa.Integer, nullable=False),
    )
    op.create_table(
        "study_index",
        sa.Column("issuer", sa.String(128), primary_key=True),
        sa.Column("patient_id", sa.String(128), primary_key=True),
        sa.Column("study_uid", sa.String(64), primary_key=True),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("reports", sa.Text, nullable=False),
        sa.Column("indexed_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_study_index_study", "study_index", ["study_uid"])
    op.create_table(
        "study_detail",
        sa.Column("study_uid", sa.String(64), primary_key=True),
        sa.Column("series_count", sa.Integer, nullable=False),
        sa.Column("instance_count", sa.Integer, nullable=False),
        sa.Column("instances", sa.Text, nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_study_detail_stored_at", "study_detail", ["stored_at"])
    op.create_table(
        "study_index_feed",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("cursor", sa.BigInteger),
        sa.Column("holder", sa.String(64)),
        sa.Column("lease_until", sa.DateTime(timezone=True)),
    )


def downgrade() -> None:
    op.drop_table("study_index_feed")
    op.drop_index("ix_study_detail_stored_at", "study_detail")
    op.drop_table("study_detail")
    op.drop_index("ix_study_index_study", "study_index")
    op.drop_table("study_index")
    op.drop_table("study_index_patient")
