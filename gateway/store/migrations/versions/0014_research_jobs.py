"""Research deliveries as transfer jobs: the job behind each delivery, and the
instances a job's transform left out.

Revision ID: 0014
Revises: 0011
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("transfer_job") as batch:
        batch.add_column(sa.Column("excluded", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("research_delivery") as batch:
        batch.add_column(sa.Column("job_id", sa.String(64), nullable=True))
        batch.create_index("ix_research_delivery_job_id", ["job_id"])


def downgrade() -> None:
    with op.batch_alter_table("research_delivery") as batch:
        batch.drop_index("ix_research_delivery_job_id")
        batch.drop_column("job_id")
    with op.batch_alter_table("transfer_job") as batch:
        batch.drop_column("excluded")
