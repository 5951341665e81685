"""A project's member list: identity-provider subjects and the one role each holds there.

With OIDC, a person's rights come from this list (kept by a site admin) and from the roles
claim of their token (kept by the hospital's identity provider); both end in the same
`Principal.memberships`. `sub` is an opaque, stable id from the IdP, not a name.
"""

from __future__ import annotations

from sqlalchemy import Engine
from sqlmodel import Session, select

from app.auth.roles import PROJECT_ROLES, Role
from app.store.models import Project, ProjectMember, utc_now

SUBJECT_MAX = 255


class MemberError(ValueError):
    """A readable sentence about a member change that cannot be made."""


def project_role(role: Role | str) -> Role:
    """A role a member may hold in a project, or MemberError naming the choices."""
    try:
        chosen = Role(role)
    except ValueError:
        chosen = None
    if chosen not in PROJECT_ROLES:
        names = ", ".join(sorted(r.value for r in PROJECT_ROLES))
        raise MemberError(f"a project member's role is one of {names}")
    return chosen


def set_member(engine: Engine, project_id: str, subject: str, role: Role | str) -> ProjectMember:
    """Add the subject to the project, or change its role there."""
    chosen = project_role(role)
    if not subject or len(subject) > SUBJECT_MAX or not subject.isprintable():
        raise MemberError(f"a subject is 1 to {SUBJECT_MAX} printable characters")
    with Session(engine, expire_on_commit=False) as session:
        if session.get(Project, project_id) is None:
            raise MemberError(f"no project {project_id}")
        member = session.get(ProjectMember, (project_id, subject))
        if member is None:
            member = ProjectMember(project_id=project_id, subject=subject, role=chosen.value)
        member.role = chosen.value
        member.added_at = utc_now()
        session.add(member)
        session.commit()
    return member


def remove_member(engine: Engine, project_id: str, subject: str) -> bool:
    """Remove the subject from the project; False if it was not a member."""
    with Session(engine) as session:
        member = session.get(ProjectMember, (project_id, subject))
        if member is None:
            return False
        session.delete(member)
        session.commit()
    return True


def list_members(engine: Engine, project_id: str) -> list[ProjectMember]:
    with Session(engine, expire_on_commit=False) as session:
        query = select(ProjectMember).where(ProjectMember.project_id == project_id)
        members = list(session.exec(query.order_by(ProjectMember.subject)))
    return members


def memberships_of(engine: Engine, subject: str) -> dict[str, Role]:
    """Every project the subject is a member of, with its role (unknown roles grant nothing)."""
    with Session(engine) as session:
        rows = session.exec(select(ProjectMember).where(ProjectMember.subject == subject))
        found = {}
        for member in rows:
            try:
                found[member.project_id] = Role(member.role)
            except ValueError:
                continue
    return found
