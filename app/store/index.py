"""The index database: engine creation and schema migrations (Alembic, `storage/migrations`)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.exc import DBAPIError

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "storage" / "migrations"
# The newest migration. A test checks it against Alembic's head, so that a database already
# at this revision opens without importing Alembic (a third of a second on every CLI call).
SCHEMA_REVISION = "0009"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")  # several processes may write
    cursor.close()


@cache
def index_engine(url: str) -> Engine:
    """One engine per URL, schema brought up to date on first use."""
    # A server's connection can drop between uses (restart, idle timeout): test it when the
    # pool hands it out. A SQLite file's cannot, and the test cost a query per checkout.
    embedded = make_url(url).get_backend_name() == "sqlite"
    engine = create_engine(url, pool_pre_ping=not embedded)
    if embedded:
        event.listen(engine, "connect", _sqlite_pragmas)
    if current_revision(engine) != SCHEMA_REVISION:
        migrate(engine)
    return engine


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DBAPIError:
        return None  # a new database: no version table yet


def migrate(engine: Engine) -> None:
    """Upgrade to the newest revision; safe to run from several processes at once."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
