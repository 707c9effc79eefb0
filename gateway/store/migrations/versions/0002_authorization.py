"""Authorization server state: clients, accounts, sessions, grants, codes, tokens, keys.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

STAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "oauth_client",
        sa.Column("client_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("secret_hash", sa.String(200)),
        sa.Column("redirect_uris", sa.JSON, nullable=False),
        sa.Column("launch_uri", sa.String(2000)),
        sa.Column("jwks_url", sa.String(2000)),
        sa.Column("jwks", sa.JSON),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("ehr", sa.Boolean, nullable=False),
        sa.Column("dynamic", sa.Boolean, nullable=False),
        sa.Column("created_at", STAMP, nullable=False),
    )
    op.create_table(
        "account",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("login", sa.String(128), nullable=False, unique=True),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("patient_fhir_id", sa.String(64)),
        sa.Column("birth_date", sa.String(10)),
        sa.Column("secret_hash", sa.String(200)),
        sa.Column("failed_attempts", sa.Integer, nullable=False),
        sa.Column("locked_until", STAMP),
        sa.Column("created_at", STAMP, nullable=False),
    )
    op.create_table(
        "browser_session",
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.String(64)),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("expires_at", STAMP, nullable=False, index=True),
        sa.Column("created_at", STAMP, nullable=False),
    )
    op.create_table(
        "pending_authorization",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("session_hash", sa.String(64), nullable=False),
        sa.Column("request", sa.JSON, nullable=False),
        sa.Column("expires_at", STAMP, nullable=False),
    )
    op.create_table(
        "oauth_grant",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("client_id", sa.String(64), nullable=False, index=True),
        sa.Column("account_id", sa.String(64)),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("context", sa.JSON, nullable=False),
        sa.Column("revoked_at", STAMP),
        sa.Column("created_at", STAMP, nullable=False),
    )
    op.create_table(
        "oauth_code",
        sa.Column("code_hash", sa.String(64), primary_key=True),
        sa.Column("grant_id", sa.String(64), nullable=False),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("redirect_uri", sa.String(2000), nullable=False),
        sa.Column("code_challenge", sa.String(128), nullable=False),
        sa.Column("nonce", sa.String(500)),
        sa.Column("expires_at", STAMP, nullable=False),
        sa.Column("used_at", STAMP),
    )
    op.create_table(
        "oauth_token",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("grant_id", sa.String(64), nullable=False, index=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("expires_at", STAMP, nullable=False),
        sa.Column("revoked_at", STAMP),
        sa.Column("created_at", STAMP, nullable=False),
    )
    op.create_table(
        "launch_context",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("context", sa.JSON, nullable=False),
        sa.Column("expires_at", STAMP, nullable=False),
        sa.Column("used_at", STAMP),
    )
    op.create_table(
        "seen_assertion",
        sa.Column("client_id", sa.String(64), primary_key=True),
        sa.Column("jti", sa.String(255), primary_key=True),
        sa.Column("expires_at", STAMP, nullable=False, index=True),
    )
    op.create_table(
        "signing_key",
        sa.Column("kid", sa.String(64), primary_key=True),
        sa.Column("alg", sa.String(16), nullable=False),
        sa.Column("private_jwk", sa.JSON, nullable=False),
        sa.Column("created_at", STAMP, nullable=False),
        sa.Column("retired_at", STAMP),
        sa.Column("publish_until", STAMP),
    )


def downgrade() -> None:
    for table in (
        "signing_key",
        "seen_assertion",
        "launch_context",
        "oauth_token",
        "oauth_code",
        "oauth_grant",
        "pending_authorization",
        "browser_session",
        "account",
        "oauth_client",
    ):
        op.drop_table(table)
