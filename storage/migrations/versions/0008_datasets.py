"""Datasets: a project's dataset description for the site's catalogue (app.catalog).

Revision ID: 0008
Revises: 0007

One row per project: the working description, its status (draft, published, withdrawn) and
the published snapshot the catalogue serves. The catalogue reads the published rows by time
of publication, hence the index on (status, published_at).
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dataset",
        sa.Column("project_id", sa.String(64), sa.ForeignKey("project.id"), primary_key=True),
        sa.Column("description", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("published", sa.JSON, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("modified_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_dataset_status_published", "dataset", ["status", "published_at"])


def downgrade() -> None:
    op.drop_table("dataset")
