"""Research donation: projects, patients' donation consents, deliveries.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "research_project",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("protocol_id", sa.String(64), nullable=False, unique=True),
        sa.Column("description", sa.Text(), nullable=False, server_default=""),
        sa.Column("archive_url", sa.String(500), nullable=True),
        sa.Column("archive_token", sa.Text(), nullable=True),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("accept_burned_in", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("client_id", sa.String(128), nullable=True, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "research_consent",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("project_id", sa.String(64), nullable=False),
        sa.Column("patient_fhir_id", sa.String(64), nullable=False),
        sa.Column("issuer", sa.String(128), nullable=False, server_default=""),
        sa.Column("patient_id", sa.String(128), nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("withdrawn_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("withdrawn_by", sa.String(200), nullable=True),
    )
    op.create_index("ix_research_consent_project_id", "research_consent", ["project_id"])
    op.create_index("ix_research_consent_patient", "research_consent", ["patient_fhir_id"])
    op.create_table(
        "research_delivery",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("project_id", sa.String(64), nullable=False),
        sa.Column("consent_id", sa.String(64), nullable=False),
        sa.Column("patient_fhir_id", sa.String(64), nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("pseudonymous_study_uid", sa.String(64), nullable=False),
        sa.Column("patient_pseudonym", sa.String(64), nullable=False, server_default=""),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("sent", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("excluded", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint(
            "project_id", "consent_id", "study_uid", name="uq_research_delivery_study"
        ),
    )
    op.create_index("ix_research_delivery_project_id", "research_delivery", ["project_id"])


def downgrade() -> None:
    op.drop_index("ix_research_delivery_project_id", "research_delivery")
    op.drop_table("research_delivery")
    op.drop_index("ix_research_consent_patient", "research_consent")
    op.drop_index("ix_research_consent_project_id", "research_consent")
    op.drop_table("research_consent")
    op.drop_table("research_project")
