"""Backend clients' pre-authorized access (SMART Imaging Access, Backend Services mode).

Operators (``oauth_client.operator``) see every patient with ``system/`` scopes;
other backend clients see the rows of ``preauthorized_access`` held by them or by
their organization (``oauth_client.organization_id``).

Revision ID: 0010
Revises: 0007
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("oauth_client") as table:
        table.add_column(
            sa.Column("operator", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        table.add_column(sa.Column("organization_id", sa.String(64), nullable=True))
    op.create_table(
        "preauthorized_access",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("holder_kind", sa.String(16), nullable=False),
        sa.Column("holder_id", sa.String(128), nullable=False),
        sa.Column("patient_fhir_id", sa.String(64), nullable=False),
        sa.Column("issuer", sa.String(128), nullable=False),
        sa.Column("patient_id", sa.String(128), nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint(
            "holder_kind",
            "holder_id",
            "issuer",
            "patient_id",
            "study_uid",
            name="uq_preauthorized_access",
        ),
    )
    op.create_index(
        "ix_preauthorized_access_holder", "preauthorized_access", ["holder_kind", "holder_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_preauthorized_access_holder", "preauthorized_access")
    op.drop_table("preauthorized_access")
    with op.batch_alter_table("oauth_client") as table:
        table.drop_column("organization_id")
        table.drop_column("operator")
