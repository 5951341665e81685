"""Index tables. Each change here comes with a migration in `storage/migrations/versions`.

The study / series / instance tables hold what QIDO-RS matches on and returns by default
(PS3.18 Table 10.6.1-5, Tables 10.6.3-3/4/5), read from the *pseudonymized* file as stored:
nothing here ever comes from an original. UIDs are unique per project, not globally (the same
source study gives different UIDs in two projects, and a derived object could reuse one), so
every primary key starts with `project_id`, and so does every index: a query that forgets the
project cannot use them, and the store layer (app.store.index_repo) never forgets it.

Decisions (docs/architecture.md repeats them):
- ModalitiesInStudy is matched through the series table (one indexed row per series, a
  normalized child of the study: `EXISTS (series with project, study and modality)`), and
  returned from `study.modalities`, a backslash-delimited sorted list kept by the store layer
  in the same transaction as the series it comes from.
- NumberOfStudyRelatedSeries/Instances and NumberOfSeriesRelatedInstances are maintained:
  incremented in the transaction that adds the row they count, so a crash cannot skew them,
  and recounted from the rows after deletions (`index_repo.recompute_counts`).
- Textual attributes are stored as their DICOM string (PN with its "^" and "=" delimiters,
  multiple values joined by "\\"), unbounded: an odd value in a research file must not make
  PostgreSQL refuse the row. UIDs are at most 64 characters, as DICOM says.
- A series' precomputed metadata is up to date when `metadata_revision == revision`;
  `revision` goes up with every instance added or removed, so a metadata computation that
  raced with a new instance is recognisably stale (see app.store.series_metadata).
- Access lives here too (app.auth): tokens (one project and one role, or site-wide for a
  site admin; a legacy static token keeps only the SHA-256 of its secret, a JWT only its
  id), project members (identity-provider subjects and their role), compute grants. Each is
  looked up by its public id, never scanned.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.sql import false
from sqlmodel import Field, SQLModel

from app.timestamps import UtcDateTime, utc_now

UID = String(64)


def _timestamp() -> Column:
    return Column(UtcDateTime(), nullable=False)


class Project(SQLModel, table=True):
    """A research project: the tenant and isolated workspace every other row belongs to."""

    id: str = Field(primary_key=True, max_length=64)
    title: str = Field(max_length=500)
    profile: str = Field(max_length=64)
    options: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    state: str = Field(default="active", max_length=16)  # active, closed, purging, purged
    created_at: dt.datetime = Field(default_factory=utc_now, sa_column=_timestamp())
    # Retention (app.retention): kept through `retention_until`, purged after it unless held.
    declared_end: dt.date | None = Field(default=None, sa_column=Column(Date, nullable=True))
    retention_until: dt.date | None = Field(default=None, sa_column=Column(Date, nullable=True))
    legal_hold: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default=false())
    )
    closed_at: dt.datetime | None = Field(
        default=None, sa_column=Column(UtcDateTime(), nullable=True)
    )
    purged_at: dt.datetime | None = Field(
        default=None, sa_column=Column(UtcDateTime(), nullable=True)
    )


class Study(SQLModel, table=True):
    """One pseudonymized study of a project: QIDO study-level keys and maintained counts."""

    __table_args__ = (
        Index("ix_study_date_time", "project_id", "study_date", "study_time"),
        Index("ix_study_patient_id", "project_id", "patient_id"),
        Index("ix_study_patient_name", "project_id", "patient_name"),
        Index("ix_study_accession_number", "project_id", "accession_number"),
        Index("ix_study_study_id", "project_id", "study_id"),
        Index("ix_study_referring_physician", "project_id", "referring_physician_name"),
    )

    project_id: str = Field(primary_key=True, foreign_key="project.id", sa_type=String(64))
    study_uid: str = Field(primary_key=True, sa_type=UID)
    patient_id: str | None = Field(default=None, sa_type=String)  # the pseudonym
    patient_name: str | None = Field(default=None, sa_type=String)
    patient_birth_date: str | None = Field(default=None, sa_type=String)
    patient_sex: str | None = Field(default=None, sa_type=String)
    study_date: str | None = Field(default=None, sa_type=String)
    study_time: str | None = Field(default=None, sa_type=String)
    accession_number: str | None = Field(default=None, sa_type=String)
    study_id: str | None = Field(default=None, sa_type=String)
    referring_physician_name: str | None = Field(default=None, sa_type=String)
    study_description: str | None = Field(default=None, sa_type=String)
    modalities: str = Field(default="", sa_type=String)  # "CT\\SR": returned, not matched
    number_of_series: int = Field(default=0, sa_type=Integer)
    number_of_instances: int = Field(default=0, sa_type=Integer)
    created_at: dt.datetime = Field(default_factory=utc_now, sa_column=_timestamp())
    updated_at: dt.datetime = Field(default_factory=utc_now, sa_column=_timestamp())


class Series(SQLModel, table=True):
    """One series: QIDO series-level keys, its count, and where its WADO metadata is."""

    __table_args__ = (
        ForeignKeyConstraint(
            ["project_id", "study_uid"],
            ["study.project_id", "study.study_uid"],
            name="fk_series_study",
        ),
        Index("ix_series_study", "project_id", "study_uid", "series_number"),
        Index("ix_series_modality", "project_id", "modality", "study_uid"),
        Index("ix_series_pps_start", "project_id", "pps_start_date", "pps_start_time"),
    )

    project_id: str = Field(primary_key=True, foreign_key="project.id", sa_type=String(64))
    series_uid: str = Field(primary_key=True, sa_type=UID)
    study_uid: str = Field(sa_type=UID)
    modality: str | None = Field(default=None, sa_type=String)
    series_number: int | None = Field(default=None, sa_type=Integer)
    series_description: str | None = Field(default=None, sa_type=String)
    body_part_examined: str | None = Field(default=None, sa_type=String)
    pps_start_date: str | None = Field(default=None, sa_type=String)  # (0040,0244)
    pps_start_time: str | None = Field(default=None, sa_type=String)  # (0040,0245)
    number_of_instances: int = Field(default=0, sa_type=Integer)
    revision: int = Field(default=0, sa_type=Integer)
    metadata_revision: int | None = Field(default=None, sa_type=Integer)
    metadata_key: str | None = Field(default=None, sa_type=String(1024))
    metadata_etag: str | None = Field(default=None, sa_type=String(64))
    metadata_updated_at: dt.datetime | None = Field(
        default=None, sa_column=Column(UtcDateTime(), nullable=True)
    )
    created_at: dt.datetime = Field(default_factory=utc_now, sa_column=_timestamp())


class Instance(SQLModel, table=True):
    """One stored object: QIDO instance-level keys, and the blob that holds its bytes."""

    __table_args__ = (
        ForeignKeyConstraint(
            ["project_id", "series_uid"],
            ["series.project_id", "series.series_uid"],
            name="fk_instance_series",
        ),
        Index("ix_instance_series", "project_id", "series_uid", "instance_number"),
        Index("ix_instance_study", "project_id", "study_uid"),
        Index("ix_instance_sop_class", "project_id", "sop_class_uid"),
        UniqueConstraint("project_id", "blob_key", name="uq_instance_blob_key"),
    )

    project_id: str = Field(primary_key=True, foreign_key="project.id", sa_type=String(64))
    sop_uid: str = Field(primary_key=True, sa_type=UID)
    series_uid: str = Field(sa_type=UID)
    study_uid: str = Field(sa_type=UID)  # denormalized: relational /studies/{s}/instances
    sop_class_uid: str = Field(sa_type=UID)
    instance_number: int | None = Field(default=None, sa_type=Integer)
    rows: int | None = Field(default=None, sa_type=Integer)
    columns: int | None = Field(default=None, sa_type=Integer)
    bits_allocated: int | None = Field(default=None, sa_type=Integer)
    number_of_frames: int | None = Field(default=None, sa_type=Integer)
    transfer_syntax_uid: str = Field(sa_type=UID)
    blob_key: str = Field(sa_type=String(1024))
    size: int = Field(sa_type=BigInteger)
    header_length: int = Field(sa_type=BigInteger)  # bytes before the pixel data element
    sha256: str = Field(sa_type=String(64))  # of the stored bytes: the idempotency check
    created_at: dt.datetime = Field(default_factory=utc_now, sa_column=_timestamp())


class Token(SQLModel, table=True):
    """A bearer token: one project, one role, only the SHA-256 of its secret (app.auth.tokens)."""

    __table_args__ = (Index("ix_token_project", "project_id", "created_at"),)

    id: str = Field(primary_key=True, sa_type=String(32))  # public: the JWT's jti, or depot_<id>_…
    project_id: str | None = Field(default=None, foreign_key="project.id", sa_type=String(64))
    role: str = Field(sa_type=String(32))  # site_admin tokens have no project
    token_hash: str | None = Field(default=None, sa_type=String(64))  # legacy static tokens
    label: str = Field(default="", sa_type=String(200))
    created_at: dt.datetime = Field(default_factory=utc_now, sa_column=_timestamp())
    expires_at: dt.datetime | None = Field(
        default=None, sa_column=Column(UtcDateTime(), nullable=True)
    )
    revoked_at: dt.datetime | None = Field(
        default=None, sa_column=Column(UtcDateTime(), nullable=True)
    )


class ProjectMember(SQLModel, table=True):
    """A person of the identity provider (its `sub`) and the one role they hold in a project."""

    __tablename__ = "project_member"
    __table_args__ = (Index("ix_project_member_subject", "subject"),)

    project_id: str = Field(primary_key=True, foreign_key="project.id", sa_type=String(64))
    subject: str = Field(primary_key=True, sa_type=String(255))
    role: str = Field(sa_type=String(32))
    added_at: dt.datetime = Field(default_factory=utc_now, sa_column=_timestamp())


class AccessGrant(SQLModel, table=True):
    """A compute grant (rec. 3.4): scopes, optional studies, a hard expiry; its token is a JWT
    whose `jti` is this id, so revoking the row stops the token at its next request."""

    __tablename__ = "access_grant"
    __table_args__ = (Index("ix_access_grant_project", "project_id", "created_at"),)

    id: str = Field(primary_key=True, sa_type=String(32))
    project_id: str = Field(foreign_key="project.id", sa_type=String(64))
    scopes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    studies: list[str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    label: str = Field(default="", sa_type=String(200))
    created_by: str = Field(default="", sa_type=String(255))  # the issuer's public subject
    created_at: dt.datetime = Field(default_factory=utc_now, sa_column=_timestamp())
    expires_at: dt.datetime = Field(sa_column=_timestamp())
    revoked_at: dt.datetime | None = Field(
        default=None, sa_column=Column(UtcDateTime(), nullable=True)
    )


class ProvenanceRecord(SQLModel, table=True):
    """How studies came to be (app.provenance): one row per ingest batch or derived-object
    upload, served as a FHIR Provenance. Pseudonymous UIDs, attribute names and counts only."""

    __tablename__ = "provenance_record"
    __table_args__ = (Index("ix_provenance_project", "project_id", "recorded_at"),)

    id: str = Field(primary_key=True, sa_type=String(32))
    project_id: str = Field(foreign_key="project.id", sa_type=String(64))
    kind: str = Field(sa_type=String(32))  # pseudonymization, derivation
    source: str = Field(sa_type=String(64))  # "depot ingest", "ingest STOW-RS", "research STOW-RS"
    recorded_at: dt.datetime = Field(default_factory=utc_now, sa_column=_timestamp())
    tool: str = Field(sa_type=String(64))
    profile: str = Field(sa_type=String(64))
    profile_version: str = Field(sa_type=String(32))
    table_edition: str = Field(sa_type=String(16))
    options: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    studies: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    instances: int = Field(default=0, sa_type=Integer)
    summary: list[dict] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # derivation: the source series the derived objects reference ({"study", "series"})
    sources: list[dict] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class AuditEvent(SQLModel, table=True):
    """One audit record (app.audit): a FHIR R4 AuditEvent, chained to the previous record.

    Append-only through `app.audit.log.append`, which takes the chain head's row lock, so
    `seq` has no gaps and no forks. `project_id` carries no foreign key: the audit trail of a
    project outlives its purge. `agent`, `action` and `entities` repeat what the JSON says,
    for searching; `verify` checks that they agree with it.
    """

    __tablename__ = "audit_event"
    __table_args__ = (
        Index("ix_audit_event_project", "project_id", "seq"),
        Index("ix_audit_event_recorded", "recorded_at"),
    )

    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    recorded_at: dt.datetime = Field(sa_column=_timestamp())
    project_id: str | None = Field(default=None, sa_type=String(64))
    agent: str = Field(default="", sa_type=String(64))  # token id, or CLI operator
    action: str = Field(sa_type=String(1))  # C R U D E
    entities: str = Field(default=" ", sa_type=String)  # " uid1 uid2 " (matched with LIKE)
    event: str = Field(sa_type=String)  # canonical JSON of the AuditEvent resource
    prev_hash: str = Field(sa_type=String(64))
    hash: str = Field(sa_type=String(64))


class AuditHead(SQLModel, table=True):
    """The chain head: one row (id 1), the last record's number and hash; appends lock it."""

    __tablename__ = "audit_head"

    id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    seq: int = Field(sa_type=BigInteger)
    hash: str = Field(sa_type=String(64))


class PurgeRecord(SQLModel, table=True):
    """What a purge removed, signed (app.retention): outlives the project's data, like the
    audit trail, hence no foreign key. Written when the purge starts (counts accumulate over
    runs, so a purge finished after a crash still counts everything); `purged_at`, the audit
    record of the purge and the HMAC-SHA256 `signature` are set when it completes."""

    __tablename__ = "purge_record"

    project_id: str = Field(primary_key=True, sa_type=String(64))
    started_at: dt.datetime = Field(sa_column=_timestamp())
    purged_at: dt.datetime | None = Field(
        default=None, sa_column=Column(UtcDateTime(), nullable=True)
    )
    blobs: int = Field(default=0, sa_type=BigInteger)
    studies: int = Field(default=0, sa_type=BigInteger)
    series: int = Field(default=0, sa_type=BigInteger)
    instances: int = Field(default=0, sa_type=BigInteger)
    tokens: int = Field(default=0, sa_type=BigInteger)
    linkages: int = Field(default=0, sa_type=BigInteger)
    audit_seq: int | None = Field(default=None, sa_type=BigInteger)  # the purge's AuditEvent
    audit_hash: str | None = Field(default=None, sa_type=String(64))  # the chain head then
    signature: str | None = Field(default=None, sa_type=String(64))  # hex HMAC-SHA256


class SigningKey(SQLModel, table=True):
    """A signing key of the embedded issuer (app.auth.issuer): ES256, the private part sealed
    with the vault master key, the public JWK in clear for `/.well-known/jwks.json`. At most
    one key per algorithm is active (`retired_at` null: the partial unique index below);
    retired ones stay published for a while so tokens signed before a rotation still verify."""

    __tablename__ = "signing_key"

    kid: str = Field(primary_key=True, sa_type=String(64))  # RFC 7638 thumbprint
    alg: str = Field(sa_type=String(16))
    private_key_sealed: bytes  # PKCS#8 PEM sealed by app.vault.crypto (LargeBinary)
    public_jwk: str = Field(sa_type=String)  # JSON: kty, crv, x, y, kid, alg, use
    created_at: dt.datetime = Field(default_factory=utc_now, sa_column=_timestamp())
    retired_at: dt.datetime | None = Field(
        default=None, sa_column=Column(UtcDateTime(), nullable=True)
    )


# One active key per algorithm, so two processes starting at once cannot both create one.
Index(
    "uq_signing_key_active",
    SigningKey.__table__.c.alg,
    unique=True,
    sqlite_where=SigningKey.__table__.c.retired_at.is_(None),
    postgresql_where=SigningKey.__table__.c.retired_at.is_(None),
)


class Dataset(SQLModel, table=True):
    """A project's dataset description for the site's catalogue (app.catalog): one per project.

    `description` is the working copy the data manager edits (validated JSON of
    app.catalog.model); `published` is what the catalogue serves: that description and the
    index statistics (small counts already suppressed), frozen when it was published, so a
    harvester sees one stable version until the next publication and an unauthenticated
    request never runs an aggregate query. `version` counts publications: it is the FHIR
    Library's versionId and ETag, and `published_at` its lastUpdated and the catalogue's
    `modified_since` key, hence the index on (status, published_at).
    """

    __tablename__ = "dataset"
    __table_args__ = (Index("ix_dataset_status_published", "status", "published_at"),)

    project_id: str = Field(primary_key=True, foreign_key="project.id", sa_type=String(64))
    description: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = Field(default="draft", sa_type=String(16))  # draft, published, withdrawn
    version: int = Field(default=0, sa_type=Integer)  # publications so far
    published: dict | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    created_at: dt.datetime = Field(default_factory=utc_now, sa_column=_timestamp())
    modified_at: dt.datetime = Field(default_factory=utc_now, sa_column=_timestamp())
    published_at: dt.datetime | None = Field(
        default=None, sa_column=Column(UtcDateTime(), nullable=True)
    )
