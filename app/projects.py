"""Projects as a service: create them (index row + vault key) and open their engine.

Used the same way by the CLI, the server and the tests.
"""

from __future__ import annotations

import re

from sqlmodel import Session, select

from app.config import Settings
from app.pseudo.engine import Deidentifier
from app.pseudo.keys import ProjectKeys
from app.pseudo.profile import load_profile
from app.store.index import index_engine
from app.store.models import Project
from app.vault import Vault

PROJECT_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")


class ProjectError(ValueError):
    """A readable sentence about what is wrong with a project request."""


def _session(settings: Settings) -> Session:
    return Session(index_engine(settings.index_url), expire_on_commit=False)


def create_project(
    settings: Settings,
    project_id: str,
    title: str,
    profile: str = "research-fr",
    options: tuple[str, ...] = (),
) -> Project:
    """Record the project and give it its own 256-bit secret in the vault."""
    if not PROJECT_ID.match(project_id):
        raise ProjectError(
            "a project ID is 2 to 63 lower-case letters, digits or dashes, starting with a "
            "letter or digit"
        )
    load_profile(profile, tuple(options))  # fails now, with the reason, if it is wrong
    with _session(settings) as session:
        if session.get(Project, project_id) is not None:
            raise ProjectError(f"project {project_id} already exists")
        vault = Vault.from_settings(settings)
        vault.create_project_key(project_id)
        project = Project(id=project_id, title=title, profile=profile, options=list(options))
        session.add(project)
        try:
            session.commit()
        except Exception:
            vault.destroy_project_key(project_id)
            raise
        return project


def get_project(settings: Settings, project_id: str) -> Project:
    with _session(settings) as session:
        project = session.get(Project, project_id)
    if project is None:
        raise ProjectError(f"no project {project_id}; `depot project list` shows them")
    return project


def list_projects(settings: Settings) -> list[Project]:
    with _session(settings) as session:
        return list(session.exec(select(Project).order_by(Project.id)))


def project_engine(
    settings: Settings, project: Project, vault: Vault | None = None
) -> Deidentifier:
    """The project's profile with the project's keys: everything needed to pseudonymize."""
    return engine_for(project, vault or Vault.from_settings(settings))


def engine_for(project: Project, vault: Vault) -> Deidentifier:
    """`project_engine` for callers that already hold the vault (ingest, the server)."""
    keys = ProjectKeys(vault.project_key(project.id))
    return Deidentifier(load_profile(project.profile, tuple(project.options)), keys)
