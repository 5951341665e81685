"""Compute grants (rec. 3.4, "transient and controlled access"): a token for a cluster.

A data manager issues a grant with scopes (DICOMweb read, FHIR read), optionally a list of the
project's studies, and an expiry capped twice: by `DEPOT_GRANT_MAX_HOURS` and by the project's
declared end. The grant's token is a JWT of the local issuer whose `jti` is the grant's id; the
row is read on every request, so a revocation takes effect at the next one. The token itself
is never stored.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterable

from sqlalchemy import Engine
from sqlmodel import Session, func, select

from app.auth.roles import Scope
from app.store.models import AccessGrant, Project, Study, utc_now

MAX_STUDIES = 1000  # a grant names studies; a whole project is "no list"
_UID_CHARS = set("0123456789.")


class GrantError(ValueError):
    """A readable sentence about a grant request that cannot be honoured (no secret in it)."""


class GrantNotFound(GrantError):
    """No grant with this id in this project."""


def _scopes(scopes: Iterable[str]) -> list[str]:
    chosen = []
    for scope in scopes:
        try:
            chosen.append(Scope(scope).value)
        except ValueError:
            raise GrantError(
                "unknown scope; scopes are " + ", ".join(s.value for s in Scope)
            ) from None
    if not chosen:
        raise GrantError("a grant needs at least one scope")
    return sorted(set(chosen))


def _studies(studies: Iterable[str] | None) -> list[str] | None:
    if studies is None:
        return None
    chosen = sorted(set(studies))
    if not chosen:
        raise GrantError("an empty study list would open nothing; omit it to open the project")
    if len(chosen) > MAX_STUDIES:
        raise GrantError(f"a grant names at most {MAX_STUDIES} studies")
    for uid in chosen:
        if not (0 < len(uid) <= 64 and set(uid) <= _UID_CHARS):
            raise GrantError("studies must be StudyInstanceUIDs")
    return chosen


def grant_expiry(
    project: Project, lifetime: dt.timedelta, max_lifetime: dt.timedelta, now: dt.datetime
) -> dt.datetime:
    """The expiry of a grant asked for `lifetime`: never past the cap nor the project's end."""
    if lifetime <= dt.timedelta(0):
        raise GrantError("a grant's lifetime must be positive")
    expires = now + min(lifetime, max_lifetime)
    if project.declared_end is not None:
        end = dt.datetime.combine(
            project.declared_end + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC
        )
        if end <= now:
            raise GrantError("the project has ended: no new grant")
        expires = min(expires, end)
    return expires


def issue_grant(
    engine: Engine,
    project_id: str,
    *,
    scopes: Iterable[str],
    lifetime: dt.timedelta,
    max_lifetime: dt.timedelta,
    studies: Iterable[str] | None = None,
    label: str = "",
    created_by: str = "",
) -> AccessGrant:
    """Record a grant (its token is signed by the caller: app.auth.credentials)."""
    chosen_scopes, chosen_studies = _scopes(scopes), _studies(studies)
    if len(label) > 200:
        raise GrantError("a grant label is at most 200 characters")
    now = utc_now()
    with Session(engine, expire_on_commit=False) as session:
        project = session.get(Project, project_id)
        if project is None:
            raise GrantError(f"no project {project_id}")
        if project.state != "active":
            raise GrantError(f"project {project_id} is {project.state}: no new grant")
        if chosen_studies is not None:  # a grant names studies the project holds
            held = set(
                session.exec(
                    select(Study.study_uid).where(
                        Study.project_id == project_id, Study.study_uid.in_(chosen_studies)
                    )
                )
            )
            if held != set(chosen_studies):
                raise GrantError(
                    f"{len(set(chosen_studies) - held)} of the studies are not in the project"
                )
        grant = AccessGrant(
            id="g" + secrets.token_hex(8),
            project_id=project_id,
            scopes=chosen_scopes,
            studies=chosen_studies,
            label=label,
            created_by=created_by[:255],
            created_at=now,
            expires_at=grant_expiry(project, lifetime, max_lifetime, now),
        )
        session.add(grant)
        session.commit()
    return grant


def active_grant(
    engine: Engine, grant_id: str, now: dt.datetime | None = None
) -> AccessGrant | None:
    """The grant if it exists, is not revoked and has not expired; else None."""
    with Session(engine, expire_on_commit=False) as session:
        grant = session.get(AccessGrant, grant_id)
    if grant is None:
        return None
    now = now or utc_now()
    if grant.revoked_at is not None or grant.expires_at <= now:
        return None
    return grant


def list_grants(engine: Engine, project_id: str) -> list[AccessGrant]:
    """The project's grants, newest first, expired and revoked ones included."""
    with Session(engine, expire_on_commit=False) as session:
        query = select(AccessGrant).where(AccessGrant.project_id == project_id)
        rows = session.exec(query.order_by(AccessGrant.created_at.desc(), AccessGrant.id))
        return list(rows)


def revoke_grant(engine: Engine, project_id: str, grant_id: str) -> AccessGrant:
    """Revoke at once (idempotent: the first revocation time is kept)."""
    with Session(engine, expire_on_commit=False) as session:
        grant = session.get(AccessGrant, grant_id)
        if grant is None or grant.project_id != project_id:
            raise GrantNotFound(f"no grant {grant_id} in project {project_id}")
        if grant.revoked_at is None:
            grant.revoked_at = utc_now()
            session.add(grant)
            session.commit()
    return grant


def count_active_grants(engine: Engine) -> int:
    """For the `depot.grants.active` metric."""
    now = utc_now()
    with Session(engine) as session:
        query = select(func.count()).where(
            AccessGrant.revoked_at.is_(None), AccessGrant.expires_at > now
        )
        return session.exec(query).one()
