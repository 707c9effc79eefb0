"""Share links, share sessions and the failed-guess counters.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "share_link",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("pin_hash", sa.String(200), nullable=False),
        sa.Column("account_id", sa.String(64), nullable=False, index=True),
        sa.Column("patient_fhir_id", sa.String(64), nullable=False, index=True),
        sa.Column("studies", sa.JSON, nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("email", sa.String(320)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.Column("failed_pins", sa.Integer, nullable=False),
        sa.Column("locked_at", sa.DateTime(timezone=True)),
        sa.Column("last_opened_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "attempt_window",
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
    )
    with op.batch_alter_table("browser_session") as table:
        table.add_column(sa.Column("share_id", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("browser_session") as table:
        table.drop_column("share_id")
    op.drop_table("attempt_window")
    op.drop_table("share_link")
