"""What every `depot …` command module shares: the consoles, one-sentence failures, settings,
the operator as an audit agent, and recording a CLI event (fail closed)."""

from __future__ import annotations

import getpass

import typer
from rich.console import Console

from app.audit import events as audit_events
from app.audit.log import AuditError, append
from app.config import Settings, get_settings
from app.projects import ProjectError, get_project
from app.store.index import index_engine

console = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]Error:[/red] {message}")
    return typer.Exit(code)


def settings() -> Settings:
    return get_settings()


def check_project(project: str) -> None:
    """Fail with the service's sentence unless the project exists."""
    try:
        get_project(settings(), project)
    except ProjectError as exc:
        raise fail(str(exc)) from None


def operator() -> audit_events.Agent:
    return audit_events.operator_agent(getpass.getuser())


def audit(settings: Settings, event: dict, project: str | None) -> None:
    """Record a CLI event in the audit trail; a command whose event is not recorded fails."""
    try:
        append(index_engine(settings.index_url), event, project)
    except AuditError as exc:
        raise fail(f"{exc}; the action was not recorded") from None
