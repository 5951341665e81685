"""`depot token|grant|member|keys …`: who may open what (docs/security.md).

Tokens and grants are JWTs of the embedded issuer, shown once; each issue and revocation is
recorded in the audit trail before the token is handed over (no unrecorded token may work).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Annotated

import typer
from rich.table import Column, Table

from app.audit import events as audit_events
from app.auth.grants import GrantError, list_grants, revoke_grant
from app.auth.members import MemberError, list_members, remove_member, set_member
from app.auth.roles import Role, Scope
from app.auth.tokens import TokenError, list_tokens, revoke_token
from app.cli_common import audit, check_project, console, fail, operator, settings
from app.config import Settings
from app.store.index import index_engine
from app.vault import load_master_key

# app.auth.credentials and app.auth.issuer (PyJWT, cryptography's key types) load with the
# commands that sign: every other `depot …` call, `--help` included, does without them.

token_app = typer.Typer(help="Bearer tokens for people and tools.", no_args_is_help=True)
grant_app = typer.Typer(
    help="Compute grants: time-limited, read-only tokens for clusters.", no_args_is_help=True
)
member_app = typer.Typer(
    help="Project members: identity-provider subjects and their role.", no_args_is_help=True
)
keys_app = typer.Typer(help="The embedded issuer's signing keys.", no_args_is_help=True)
ACCESS_APPS = {"token": token_app, "grant": grant_app, "member": member_app, "keys": keys_app}


def _when(moment: dt.datetime | None, empty: str = "") -> str:
    return f"{moment:%Y-%m-%d %H:%M}" if moment else empty


def _show_secret(kind: str, secret: str, example_url: str) -> None:
    console.print(f"{kind} (give it to its holder over a safe channel):")
    console.print(f"  {secret}", soft_wrap=True, highlight=False, markup=False)
    console.print(
        "Use it:\n  export DEPOT_TOKEN=<the token above>\n"
        f'  curl -H "Authorization: Bearer $DEPOT_TOKEN" {example_url}',
        soft_wrap=True, highlight=False, markup=False,
    )  # fmt: skip
    console.print("[yellow]It will not be shown again[/yellow]: it is stored nowhere.")


def _base() -> str:
    return (settings().public_url or "http://127.0.0.1:8080").rstrip("/")


def _record(
    config: Settings,
    project: str | None,
    *,
    issued: bool,
    subject: str,
    role: str,
    kind: str = "token",
    details: Sequence[tuple[str, str]] = (),
) -> None:
    """Record a token, grant or membership given (issued) or taken back, by the operator."""
    event = audit_events.token_event(
        issued=issued, project_id=project, token_id=subject, role=role, agent=operator(),
        outcome=audit_events.SUCCESS, kind=kind, details=details,
    )  # fmt: skip
    audit(config, event, project)


# --- tokens -------------------------------------------------------------------------------


@token_app.command("create")
def token_create(
    role: Annotated[Role, typer.Option(help="What the holder may do.")],
    project: Annotated[
        str | None, typer.Option(help="The project it opens (none for site_admin).")
    ] = None,
    label: Annotated[str, typer.Option(help="Whose or what it is, e.g. 'Dr Martin'.")] = "",
    expires_days: Annotated[
        int, typer.Option(help="Days until it stops working (at most DEPOT_TOKEN_MAX_DAYS).", min=1)
    ] = 90,
) -> None:
    """Issue a bearer token (a signed JWT) for one project and role, or a site admin's."""
    from app.auth.credentials import Credentials

    config = settings()
    credentials = Credentials(config)
    try:
        token, secret = credentials.issue_token(
            project, role, label=label, expires_in=dt.timedelta(days=expires_days)
        )
    except TokenError as exc:
        raise fail(str(exc)) from None
    try:
        _record(config, project, issued=True, subject=token.id, role=token.role)
    except typer.Exit:
        revoke_token(credentials.engine, project, token.id)  # no unrecorded token may work
        raise
    where = f"project {project}" if project else "the whole site"
    console.print(
        f"Token [bold]{token.id}[/bold] for {where}, role {token.role}, "
        f"expires {_when(token.expires_at)} UTC."
    )
    url = f"{_base()}/projects/{project}/dicom-web/studies" if project else f"{_base()}/projects"
    _show_secret("Token", secret, url)
    revoke = f"depot token revoke {token.id}" + (f" --project {project}" if project else "")
    console.print(f"Lost? Revoke it (`{revoke}`) and create another.")


@token_app.command("list")
def token_list(
    project: Annotated[
        str | None, typer.Option(help="The project whose tokens to list (none: site admins').")
    ] = None,
) -> None:
    """List tokens (never their secrets: they are stored nowhere)."""
    if project is not None:
        check_project(project)
    table = Table("ID", "Role", "Label", "Created", "Expires", "Revoked")
    for t in list_tokens(index_engine(settings().index_url), project):
        table.add_row(
            t.id, t.role, t.label, _when(t.created_at), _when(t.expires_at, "never"),
            _when(t.revoked_at),
        )  # fmt: skip
    console.print(table)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(metavar="TOKEN_ID", help="The ID `list` shows.")],
    project: Annotated[
        str | None, typer.Option(help="The project the token belongs to (none: site admin).")
    ] = None,
) -> None:
    """Revoke a token: it stops working at its next request, everywhere."""
    config = settings()
    try:
        token = revoke_token(index_engine(config.index_url), project, token_id)
    except TokenError as exc:
        raise fail(str(exc)) from None
    _record(config, project, issued=False, subject=token.id, role=token.role)
    console.print(f"Token {token.id} revoked ({_when(token.revoked_at)} UTC).")


# --- compute grants -----------------------------------------------------------------------


@grant_app.command("create")
def grant_create(
    project: Annotated[str, typer.Option(help="The project it opens.")],
    hours: Annotated[float, typer.Option(help="Hours until it expires (capped).", min=0.01)],
    scope: Annotated[
        list[Scope] | None, typer.Option(help="dicomweb-read and/or fhir-read (default both).")
    ] = None,
    study: Annotated[
        list[str] | None, typer.Option(help="A StudyInstanceUID it is limited to (repeatable).")
    ] = None,
    label: Annotated[str, typer.Option(help="e.g. the cluster's name.")] = "",
) -> None:
    """Issue a compute grant: a read-only token for a cluster, expiring on time."""
    from app.auth.credentials import Credentials

    config = settings()
    credentials = Credentials(config)
    scopes = [s.value for s in (scope or list(Scope))]
    try:
        grant, secret = credentials.issue_grant(
            project, scopes=scopes, lifetime=dt.timedelta(hours=hours), studies=study,
            label=label, created_by=f"operator:{operator().identifier}",
        )  # fmt: skip
    except GrantError as exc:
        raise fail(str(exc)) from None
    try:
        _record(
            config, project, issued=True, subject=grant.id, role=Role.compute.value,
            kind="grant", details=[("scope", s) for s in grant.scopes],
        )  # fmt: skip
    except typer.Exit:
        revoke_grant(credentials.engine, project, grant.id)
        raise
    limited = f", {len(grant.studies)} studies" if grant.studies else ""
    console.print(
        f"Grant [bold]{grant.id}[/bold] on project {project} ({', '.join(grant.scopes)}"
        f"{limited}), expires {_when(grant.expires_at)} UTC."
    )
    _show_secret("Token", secret, f"{_base()}/projects/{project}/dicom-web/studies")


@grant_app.command("list")
def grant_list(project: Annotated[str, typer.Option(help="The project.")]) -> None:
    """The project's grants, newest first (never their tokens)."""
    check_project(project)
    table = Table("Scopes", "Studies", "Label", "Created", "Expires", "Revoked")
    table.columns.insert(0, Column("ID", no_wrap=True))
    for g in list_grants(index_engine(settings().index_url), project):
        table.add_row(
            g.id, ", ".join(g.scopes), "all" if g.studies is None else str(len(g.studies)),
            g.label, _when(g.created_at), _when(g.expires_at), _when(g.revoked_at),
        )  # fmt: skip
    console.print(table)


@grant_app.command("revoke")
def grant_revoke(
    grant_id: Annotated[str, typer.Argument(metavar="GRANT_ID", help="The ID `list` shows.")],
    project: Annotated[str, typer.Option(help="The project of the grant.")],
) -> None:
    """Revoke a grant: its token fails from its next request on."""
    config = settings()
    try:
        grant = revoke_grant(index_engine(config.index_url), project, grant_id)
    except GrantError as exc:
        raise fail(str(exc)) from None
    _record(config, project, issued=False, subject=grant.id, role=Role.compute.value, kind="grant")
    console.print(f"Grant {grant.id} revoked ({_when(grant.revoked_at)} UTC).")


# --- members ------------------------------------------------------------------------------


@member_app.command("add")
def member_add(
    subject: Annotated[str, typer.Argument(help="The identity provider's `sub` of the person.")],
    project: Annotated[str, typer.Option(help="The project.")],
    role: Annotated[Role, typer.Option(help="data_manager, researcher or auditor.")],
) -> None:
    """Add a person to a project (or change their role there)."""
    config = settings()
    try:
        member = set_member(index_engine(config.index_url), project, subject, role)
    except MemberError as exc:
        raise fail(str(exc)) from None
    _record(config, project, issued=True, subject=subject, role=member.role, kind="oidc")
    console.print(f"{subject} is {member.role} of project {project}.", markup=False)


@member_app.command("remove")
def member_remove(
    subject: Annotated[str, typer.Argument(help="The identity provider's `sub`.")],
    project: Annotated[str, typer.Option(help="The project.")],
) -> None:
    """Remove a person from a project; their next request no longer opens it."""
    config = settings()
    if not remove_member(index_engine(config.index_url), project, subject):
        raise fail(f"that subject is not a member of project {project}")
    _record(config, project, issued=False, subject=subject, role="", kind="oidc")
    console.print(f"Removed from project {project}.")


@member_app.command("list")
def member_list(project: Annotated[str, typer.Option(help="The project.")]) -> None:
    """Who works in the project, with which role."""
    check_project(project)
    table = Table("Subject", "Role", "Since")
    for m in list_members(index_engine(settings().index_url), project):
        table.add_row(m.subject, m.role, _when(m.added_at))
    console.print(table)


# --- signing keys -------------------------------------------------------------------------


@keys_app.command("rotate")
def keys_rotate() -> None:
    """Sign new tokens with a new key; the old one stays published while its tokens live."""
    from app.auth import issuer

    config = settings()
    kid = issuer.rotate_signing_key(index_engine(config.index_url), load_master_key(config))
    console.print(f"New signing key {kid}; /.well-known/jwks.json publishes it.")
