"""Audit trail: hash-chained FHIR AuditEvent records and the one-row chain head.

Revision ID: 0004
Revises: 0003

`audit_event.project_id` has no foreign key on purpose: a purged project's trail stays.
The head row (id 1) starts at sequence 0 with the genesis hash (64 zeros); every append
locks it (app.audit.log), so two server processes can never fork the chain.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

GENESIS = "0" * 64


def upgrade() -> None:
    op.create_table(
        "audit_event",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("project_id", sa.String(64), nullable=True),
        sa.Column("agent", sa.String(64), nullable=False),
        sa.Column("action", sa.String(1), nullable=False),
        sa.Column("entities", sa.String, nullable=False),
        sa.Column("event", sa.String, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_audit_event_project", "audit_event", ["project_id", "seq"])
    op.create_index("ix_audit_event_recorded", "audit_event", ["recorded_at"])
    head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": GENESIS}])


def downgrade() -> None:
    op.drop_table("audit_head")
    op.drop_table("audit_event")
