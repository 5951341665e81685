"""Who is asking (a Principal) and what they may do in a project (roles and the access rule).

Kept apart from how the principal was proven (a depot token, a compute grant, a JWT from the
hospital's identity provider), so every authenticator ends in the same `authorize` decision.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.StrEnum):
    """Least privilege: each role is a job, docs/security.md tabulates what each route admits."""

    site_admin = "site_admin"  # projects and their members; no image access by default
    data_manager = "data_manager"  # ingest, review, export, grants, delete, purge
    researcher = "researcher"  # read and search the pseudonymized data, store derived objects
    compute = "compute"  # read only, time-limited: what a compute grant's token carries
    auditor = "auditor"  # the DPO: the project's audit trail (app.audit), never images


# Roles a project member (a token, a member-list entry, an IdP claim) may hold in a project.
# `compute` comes only from a grant (time-limited by construction); `site_admin` is site-wide.
PROJECT_ROLES = frozenset({Role.data_manager, Role.researcher, Role.auditor})


class Scope(enum.StrEnum):
    """What a compute grant opens (rec. 3.4: transient and controlled access)."""

    dicomweb_read = "dicomweb-read"
    fhir_read = "fhir-read"


class Kind(enum.StrEnum):
    """How the caller proved who they are; the audit trail names it with the subject."""

    token = "token"  # a token issued by `depot token create` (JWT, or a legacy static one)
    grant = "grant"  # a compute grant's token
    oidc = "oidc"  # a JWT from the hospital's identity provider


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    `subject` is public (a token or grant id, the identity provider's `sub`): the audit trail
    records it. `memberships` maps projects to the one role held there. A grant's principal
    also carries its `scopes` and, when it is limited to some studies, their UIDs.
    """

    kind: Kind
    subject: str
    memberships: frozenset[tuple[str, Role]] = frozenset()
    site_admin: bool = False
    scopes: frozenset[Scope] | None = None
    studies: frozenset[str] | None = None

    @classmethod
    def bound(cls, project_id: str, role: Role, token_id: str) -> Principal:
        """A token bound to one project and one role (or a site admin token)."""
        if role is Role.site_admin:
            return cls(Kind.token, token_id, site_admin=True)
        return cls(Kind.token, token_id, frozenset({(project_id, role)}))

    def role_in(self, project_id: str | None) -> Role | None:
        for project, role in self.memberships:
            if project == project_id:
                return role
        return None

    @property
    def projects(self) -> list[str]:
        return sorted(project for project, _ in self.memberships)


class Access(enum.Enum):
    allowed = "allowed"
    not_found = "not_found"  # another project's objects: answered 404 (decision 1), never 403
    forbidden = "forbidden"  # the right project, a role the route does not accept


def authorize(
    principal: Principal,
    project_id: str | None,
    roles: frozenset[Role],
    scope: Scope | None = None,
) -> Access:
    """The access rule: the project first (so nothing leaks about others), then the role,
    then, for a grant, its scope.

    A site admin knows every project exists, so its refusals are 403, never 404; outside the
    routes admitting `site_admin` it has no more rights than its memberships give.
    """
    if principal.site_admin and Role.site_admin in roles:
        return Access.allowed
    role = principal.role_in(project_id)
    if role is None:
        return Access.forbidden if principal.site_admin else Access.not_found
    if role not in roles:
        return Access.forbidden
    if principal.scopes is not None and (scope is None or scope not in principal.scopes):
        return Access.forbidden
    return Access.allowed
