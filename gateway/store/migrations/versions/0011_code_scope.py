"""An authorization code carries its own scope (grant reuse, issue 13).

A code made by reusing a grant may be for less than the grant holds: the app
asked for less this time. NULL: the grant's whole scope, as before.

Revision ID: 0011
Revises: 0009
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("oauth_code") as batch:
        batch.add_column(sa.Column("scope", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("oauth_code") as batch:
        batch.drop_column("scope")
