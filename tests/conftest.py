"""Shared fixtures: a fresh data dir, a project with its vault key, its engine."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import create_engine, text

from app.config import Settings
from app.projects import create_project, project_engine
from app.pseudo.engine import Deidentifier


@pytest.fixture(autouse=True)
def _series_metadata_refreshed_at_once(monkeypatch) -> None:
    """Tests read a series' stored metadata right after its STOW-RS: no waiting for more
    requests (tests/test_ingest_stow.py checks the delay itself)."""
    monkeypatch.setenv("DEPOT_METADATA_REFRESH_DELAY", "0")


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    data = tmp_path / "data"
    monkeypatch.setenv("DEPOT_DATA_DIR", str(data))
    for name in ("DEPOT_DATABASE_URL", "DEPOT_VAULT_URL", "DEPOT_VAULT_KEY"):
        monkeypatch.delenv(name, raising=False)
    return Settings(data_dir=data)


def make_engine(settings: Settings, project_id: str = "alpha", **kwargs) -> Deidentifier:
    project = create_project(settings, project_id, f"Project {project_id}", **kwargs)
    return project_engine(settings, project)


@pytest.fixture
def engine(settings) -> Deidentifier:
    return make_engine(settings)


POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL database on the machine's server (always running here)."""
    name = f"depot_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()
