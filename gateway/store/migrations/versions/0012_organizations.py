"""Organizations, studies sent to them (consents), and the push job queue (issue 14).

Revision ID: 0012
Revises: 0010
Create Date: 2026-12-12
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0010"
branch_labels = None
depends_on = None


def _when(name: str, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "organization",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("identifiers", sa.JSON(), nullable=False),
        sa.Column("stow_url", sa.String(2000), nullable=True),
        sa.Column("stow_auth", sa.String(16), nullable=False),
        sa.Column("token_url", sa.String(2000), nullable=True),
        sa.Column("oauth_client_id", sa.String(200), nullable=True),
        sa.Column("oauth_scope", sa.String(500), nullable=True),
        sa.Column("stow_secret", sa.Text(), nullable=True),
        _when("created_at"),
    )
    op.create_table(
        "organization_send",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("organization_id", sa.String(64), nullable=False, index=True),
        sa.Column("patient_fhir_id", sa.String(64), nullable=False, index=True),
        sa.Column("issuer", sa.String(128), nullable=False),
        sa.Column("patient_id", sa.String(128), nullable=False),
        sa.Column("account_id", sa.String(64), nullable=True),
        sa.Column("studies", sa.JSON(), nullable=False),
        sa.Column("sent_by", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        _when("created_at"),
        _when("expires_at"),
        _when("revoked_at", nullable=True),
    )
    op.create_table(
        "transfer_job",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("target_kind", sa.String(32), nullable=False),
        sa.Column("target_id", sa.String(64), nullable=False),
        sa.Column("send_id", sa.String(64), nullable=True, index=True),
        sa.Column("patient_fhir_id", sa.String(64), nullable=True, index=True),
        sa.Column("studies", sa.JSON(), nullable=False),
        sa.Column("transform", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("sent", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _when("next_try_at"),
        sa.Column("lease_holder", sa.String(64), nullable=True),
        _when("lease_until", nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False),
        _when("created_at"),
        _when("finished_at", nullable=True),
    )
    op.create_index("ix_transfer_job_due", "transfer_job", ["status", "next_try_at"])
    op.create_table(
        "transfer_item",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("sop_uid", sa.String(64), primary_key=True),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("transfer_item")
    op.drop_index("ix_transfer_job_due", "transfer_job")
    op.drop_table("transfer_job")
    op.drop_table("organization_send")
    op.drop_table("organization")
