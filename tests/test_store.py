"""The index schema: Alembic migrations on SQLite and PostgreSQL, the revision shortcut, and
the migrations matching the SQLModel tables."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlmodel import SQLModel

import app.store.models  # noqa: F401  (registers the tables the migrations must match)
from app.store.index import MIGRATIONS_DIR, SCHEMA_REVISION, current_revision, index_engine


def test_schema_revision_constant_is_alembics_head():
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert ScriptDirectory.from_config(config).get_current_head() == SCHEMA_REVISION


def test_a_new_sqlite_index_is_migrated_to_head(tmp_path):
    engine = index_engine(f"sqlite:///{tmp_path / 'index.sqlite'}")
    assert current_revision(engine) == SCHEMA_REVISION
    assert "project" in inspect(engine).get_table_names()


def test_a_new_postgresql_index_is_migrated_to_head(postgres_url):
    engine = index_engine(postgres_url)
    assert current_revision(engine) == SCHEMA_REVISION
    assert "project" in inspect(engine).get_table_names()
    engine.dispose()


def _schema_drift(engine) -> list:
    """What Alembic's autogenerate would change: the migrations must build the models."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(context, SQLModel.metadata)


def test_the_migrations_build_exactly_the_sqlmodel_tables_on_sqlite(tmp_path):
    engine = index_engine(f"sqlite:///{tmp_path / 'index.sqlite'}")
    assert {"study", "series", "instance"} <= set(inspect(engine).get_table_names())
    assert _schema_drift(engine) == []


def test_the_migrations_build_exactly_the_sqlmodel_tables_on_postgresql(postgres_url):
    engine = index_engine(postgres_url)
    assert _schema_drift(engine) == []
    engine.dispose()
