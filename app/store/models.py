"""Index tables. Each change here comes with a migration in `storage/migrations/versions`."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, Column, DateTime
from sqlmodel import Field, SQLModel


class Project(SQLModel, table=True):
    """A research project: the tenant and isolated workspace every other row belongs to."""

    id: str = Field(primary_key=True, max_length=64)
    title: str = Field(max_length=500)
    profile: str = Field(max_length=64)
    options: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    state: str = Field(default="active", max_length=16)
    created_at: dt.datetime = Field(
        default_factory=lambda: dt.datetime.now(dt.UTC),
        sa_column=Column(DateTime(timezone=True), nullable=False),
    )
