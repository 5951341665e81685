"""Shared fixtures: a fresh data dir, a project with its vault key, its engine."""

from __future__ import annotations

import pytest

from app.config import Settings
from app.projects import create_project, project_engine
from app.pseudo.engine import Deidentifier


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
