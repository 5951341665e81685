"""The index schema: Alembic migrations on SQLite and PostgreSQL, and the revision shortcut."""

from __future__ import annotations

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

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
