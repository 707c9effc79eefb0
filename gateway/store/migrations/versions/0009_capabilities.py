"""Capability URLs for WADO-RS (SMART Imaging Access, requires-access-token = false).

Revision ID: 0009
Revises: 0013
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "wado_capability",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("patients", sa.JSON, nullable=False),
        sa.Column("studies", sa.JSON, nullable=False),
        sa.Column("reports", sa.Boolean, nullable=False),
        sa.Column("patient_fhir_ids", sa.JSON, nullable=False),
        sa.Column("client_id", sa.String(64)),
        sa.Column("purpose", sa.String(16)),
        sa.Column("grant_id", sa.String(64)),
        sa.Column("share_id", sa.String(64)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_wado_capability_grant_id", "wado_capability", ["grant_id"])
    op.create_index("ix_wado_capability_share_id", "wado_capability", ["share_id"])
    op.create_index("ix_wado_capability_expires_at", "wado_capability", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_wado_capability_expires_at", "wado_capability")
    op.drop_index("ix_wado_capability_share_id", "wado_capability")
    op.drop_index("ix_wado_capability_grant_id", "wado_capability")
    op.drop_table("wado_capability")
