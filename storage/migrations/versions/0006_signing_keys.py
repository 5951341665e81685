"""Signing keys of the embedded issuer: ES256 keys whose private part is sealed by the vault.

Revision ID: 0006
Revises: 0005

`kid` is the RFC 7638 thumbprint of the public key. The private key (PKCS#8 PEM) is stored
only sealed with the vault master key (AES-256-GCM, bound to its kid), the public JWK in
clear: it is what `/.well-known/jwks.json` publishes. A retired key is still published for a
while, so tokens signed before a rotation keep verifying. The partial unique index allows one
active (not retired) key per algorithm, so two processes starting at once cannot both create
one: the second insert fails and that process uses the first one's key.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "signing_key",
        sa.Column("kid", sa.String(64), primary_key=True),
        sa.Column("alg", sa.String(16), nullable=False),
        sa.Column("private_key_sealed", sa.LargeBinary, nullable=False),
        sa.Column("public_jwk", sa.String, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "uq_signing_key_active",
        "signing_key",
        ["alg"],
        unique=True,
        sqlite_where=sa.text("retired_at IS NULL"),
        postgresql_where=sa.text("retired_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_table("signing_key")
