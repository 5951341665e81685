"""Retention: the project's declared end, retention end, legal hold, closing and purge times;
the signed purge record.

Revision ID: 0005
Revises: 0004

`retention_until` is filled by app.retention (declared end + 10 years unless given): existing
projects have no declared end, so nothing to compute here. `purge_record` has no foreign key,
like the audit trail: it is the proof that outlives the purged data.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("project", sa.Column("declared_end", sa.Date, nullable=True))
    op.add_column("project", sa.Column("retention_until", sa.Date, nullable=True))
    op.add_column(
        "project",
        sa.Column("legal_hold", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.add_column("project", sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("project", sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "purge_record",
        sa.Column("project_id", sa.String(64), primary_key=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("blobs", sa.BigInteger, nullable=False),
        sa.Column("studies", sa.BigInteger, nullable=False),
        sa.Column("series", sa.BigInteger, nullable=False),
        sa.Column("instances", sa.BigInteger, nullable=False),
        sa.Column("tokens", sa.BigInteger, nullable=False),
        sa.Column("linkages", sa.BigInteger, nullable=False),
        sa.Column("audit_seq", sa.BigInteger, nullable=True),
        sa.Column("audit_hash", sa.String(64), nullable=True),
        sa.Column("signature", sa.String(64), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("purge_record")
    with op.batch_alter_table("project") as batch:
        for name in ("purged_at", "closed_at", "legal_hold", "retention_until", "declared_end"):
            batch.drop_column(name)
