"""Access: site-wide tokens, JWT tokens (no stored hash), project members, compute grants.

Revision ID: 0007
Revises: 0006

`token.project_id` becomes nullable (a site admin's token opens no project) and so does
`token.token_hash` (a token issued as a JWT is proven by its signature; only legacy static
tokens keep the hash of their secret). Existing tokens are untouched and keep working.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("token") as batch:
        batch.alter_column("project_id", existing_type=sa.String(64), nullable=True)
        batch.alter_column("token_hash", existing_type=sa.String(64), nullable=True)
    op.create_table(
        "project_member",
        sa.Column("project_id", sa.String(64), sa.ForeignKey("project.id"), primary_key=True),
        sa.Column("subject", sa.String(255), primary_key=True),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_project_member_subject", "project_member", ["subject"])
    op.create_table(
        "access_grant",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("project_id", sa.String(64), sa.ForeignKey("project.id"), nullable=False),
        sa.Column("scopes", sa.JSON, nullable=False),
        sa.Column("studies", sa.JSON, nullable=True),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_access_grant_project", "access_grant", ["project_id", "created_at"])


def downgrade() -> None:
    op.drop_table("access_grant")
    op.drop_table("project_member")
    with op.batch_alter_table("token") as batch:
        batch.alter_column("token_hash", existing_type=sa.String(64), nullable=False)
        batch.alter_column("project_id", existing_type=sa.String(64), nullable=False)
