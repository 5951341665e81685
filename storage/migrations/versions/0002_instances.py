"""Studies, series and instances: the index QIDO-RS searches and WADO-RS resolves to blobs.

Revision ID: 0002
Revises: 0001

Every key starts with project_id (UIDs are unique per project, not globally), and so does
every index; the columns are those of app/store/models.py (its docstring says why), which a
test compares against this migration on SQLite and PostgreSQL.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _project_id() -> sa.Column:
    return sa.Column("project_id", sa.String(64), sa.ForeignKey("project.id"), nullable=False)


def _timestamp(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "study",
        _project_id(),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("patient_id", sa.String(), nullable=True),
        sa.Column("patient_name", sa.String(), nullable=True),
        sa.Column("patient_birth_date", sa.String(), nullable=True),
        sa.Column("patient_sex", sa.String(), nullable=True),
        sa.Column("study_date", sa.String(), nullable=True),
        sa.Column("study_time", sa.String(), nullable=True),
        sa.Column("accession_number", sa.String(), nullable=True),
        sa.Column("study_id", sa.String(), nullable=True),
        sa.Column("referring_physician_name", sa.String(), nullable=True),
        sa.Column("study_description", sa.String(), nullable=True),
        sa.Column("modalities", sa.String(), nullable=False),
        sa.Column("number_of_series", sa.Integer(), nullable=False),
        sa.Column("number_of_instances", sa.Integer(), nullable=False),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("project_id", "study_uid"),
    )
    op.create_index("ix_study_date_time", "study", ["project_id", "study_date", "study_time"])
    op.create_index("ix_study_patient_id", "study", ["project_id", "patient_id"])
    op.create_index("ix_study_patient_name", "study", ["project_id", "patient_name"])
    op.create_index("ix_study_accession_number", "study", ["project_id", "accession_number"])
    op.create_index("ix_study_study_id", "study", ["project_id", "study_id"])
    op.create_index(
        "ix_study_referring_physician", "study", ["project_id", "referring_physician_name"]
    )

    op.create_table(
        "series",
        _project_id(),
        sa.Column("series_uid", sa.String(64), nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("modality", sa.String(), nullable=True),
        sa.Column("series_number", sa.Integer(), nullable=True),
        sa.Column("series_description", sa.String(), nullable=True),
        sa.Column("body_part_examined", sa.String(), nullable=True),
        sa.Column("pps_start_date", sa.String(), nullable=True),
        sa.Column("pps_start_time", sa.String(), nullable=True),
        sa.Column("number_of_instances", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("metadata_revision", sa.Integer(), nullable=True),
        sa.Column("metadata_key", sa.String(1024), nullable=True),
        sa.Column("metadata_etag", sa.String(64), nullable=True),
        _timestamp("metadata_updated_at", nullable=True),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("project_id", "series_uid"),
        sa.ForeignKeyConstraint(
            ["project_id", "study_uid"],
            ["study.project_id", "study.study_uid"],
            name="fk_series_study",
        ),
    )
    op.create_index("ix_series_study", "series", ["project_id", "study_uid", "series_number"])
    op.create_index("ix_series_modality", "series", ["project_id", "modality", "study_uid"])
    op.create_index(
        "ix_series_pps_start", "series", ["project_id", "pps_start_date", "pps_start_time"]
    )

    op.create_table(
        "instance",
        _project_id(),
        sa.Column("sop_uid", sa.String(64), nullable=False),
        sa.Column("series_uid", sa.String(64), nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("instance_number", sa.Integer(), nullable=True),
        sa.Column("rows", sa.Integer(), nullable=True),
        sa.Column("columns", sa.Integer(), nullable=True),
        sa.Column("bits_allocated", sa.Integer(), nullable=True),
        sa.Column("number_of_frames", sa.Integer(), nullable=True),
        sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
        sa.Column("blob_key", sa.String(1024), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("header_length", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("project_id", "sop_uid"),
        sa.ForeignKeyConstraint(
            ["project_id", "series_uid"],
            ["series.project_id", "series.series_uid"],
            name="fk_instance_series",
        ),
        sa.UniqueConstraint("project_id", "blob_key", name="uq_instance_blob_key"),
    )
    op.create_index(
        "ix_instance_series", "instance", ["project_id", "series_uid", "instance_number"]
    )
    op.create_index("ix_instance_study", "instance", ["project_id", "study_uid"])
    op.create_index("ix_instance_sop_class", "instance", ["project_id", "sop_class_uid"])


def downgrade() -> None:
    op.drop_table("instance")
    op.drop_table("series")
    op.drop_table("study")
