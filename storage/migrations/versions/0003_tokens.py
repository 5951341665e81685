"""Access tokens: bearer tokens bound to one project and one role, stored hashed.

Revision ID: 0003
Revises: 0002

Only the SHA-256 of each secret is kept; the public id (the `<id>` in `depot_<id>_<secret>`)
is the primary key, so verifying a token is one lookup, never a scan.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "token",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("project_id", sa.String(64), sa.ForeignKey("project.id"), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_token_project", "token", ["project_id", "created_at"])


def downgrade() -> None:
    op.drop_table("token")
