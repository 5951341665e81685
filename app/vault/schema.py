"""The vault's tables (SQLAlchemy Core, portable: SQLite by default, PostgreSQL by URL).

Only pseudonyms, project ids, actors and times are in clear; keys and identifiers are sealed.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

from app.timestamps import UtcDateTime

PROJECT_ID_MAX = 128
PSEUDONYM_MAX = 255
ACTOR_MAX = 255

metadata = MetaData()

# A sealed known value: proves at start-up that the master key is the one this vault was
# created with, before a wrong key could wrap a new project key next to the old ones.
meta = Table(
    "vault_meta",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", LargeBinary, nullable=False),
)

project_keys = Table(
    "vault_project_keys",
    metadata,
    Column("project_id", String(PROJECT_ID_MAX), primary_key=True),
    Column("wrapped_key", LargeBinary, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

# The per-project data key of encryption at rest (app.store.encryption), wrapped like the
# project key. Apart from the project key so that neither can be derived from the other; the
# foreign key makes PostgreSQL refuse a data key racing in after the project key was destroyed.
data_keys = Table(
    "vault_data_keys",
    metadata,
    Column(
        "project_id",
        String(PROJECT_ID_MAX),
        ForeignKey("vault_project_keys.project_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("wrapped_key", LargeBinary, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

linkages = Table(
    "vault_linkages",
    metadata,
    Column("project_id", String(PROJECT_ID_MAX), primary_key=True),
    Column("pseudonym", String(PSEUDONYM_MAX), primary_key=True),
    Column("sealed_identifiers", LargeBinary, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

reidentifications = Table(
    "vault_reidentifications",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("project_id", String(PROJECT_ID_MAX), nullable=False, index=True),
    Column("pseudonym", String(PSEUDONYM_MAX), nullable=False),
    Column("actor", String(ACTOR_MAX), nullable=False),
    Column("reason", Text, nullable=False),
    Column("at", UtcDateTime(), nullable=False),
    Column("outcome", String(32), nullable=False),
)
