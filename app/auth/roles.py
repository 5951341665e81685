"""Who is asking (a Principal) and what they may do in a project (roles and the access rule).

Kept apart from how the principal was proven (a depot token today, OIDC later), so every
authenticator ends in the same `authorize` decision.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.StrEnum):
    """Project roles. Room is left for site_admin and compute (later issues)."""

    data_manager = "data_manager"  # ingest, manage the project's data and tokens
    researcher = "researcher"  # read the pseudonymized data, store derived objects
    auditor = "auditor"  # the DPO: the project's audit trail (app.audit), never images


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: the one project it is bound to, its role, the token behind it."""

    project_id: str
    role: Role
    token_id: str


class Access(enum.Enum):
    allowed = "allowed"
    not_found = "not_found"  # another project's objects: answered 404 (decision 1), never 403
    forbidden = "forbidden"  # the right project, a role the route does not accept


def authorize(principal: Principal, project_id: str, roles: frozenset[Role]) -> Access:
    """The access rule: the project first (so nothing leaks about others), then the role."""
    if principal.project_id != project_id:
        return Access.not_found
    if principal.role not in roles:
        return Access.forbidden
    return Access.allowed
