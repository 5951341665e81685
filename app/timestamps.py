"""Timestamps as every database here stores them: written in UTC, read back in UTC.

Shared by the index (`app.store.models`) and the vault (`app.vault.schema`), two databases
that may each be SQLite or PostgreSQL.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import DateTime
from sqlalchemy.types import TypeDecorator


def utc_now() -> dt.datetime:
    """The time every timestamp column is written in."""
    return dt.datetime.now(dt.UTC)


class UtcDateTime(TypeDecorator):
    """A timestamp column that reads back in UTC on every database, so no caller patches
    zones: SQLite drops the zone it was written with, PostgreSQL answers in its session's."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:  # SQLite: written in UTC, handed back naive
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)
