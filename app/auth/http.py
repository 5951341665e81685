"""The HTTP side of access: `Depends(require(Role.…))` on every `/projects/{project_id}/…` route.

The only auth module importing FastAPI. It reads `Authorization: Bearer …`, verifies the token
against the index (`app.state.index_url`, set by `app.main.create_app`), then applies
`app.auth.roles.authorize`:

- no token, or one that is malformed, unknown, expired or revoked: 401 with
  `WWW-Authenticate: Bearer realm="imaging-depot"` (plus `error="invalid_token"` when a token
  was presented, RFC 6750 section 3);
- a valid token of another project: 404, the answer for any object the caller cannot see
  (decision 1: never 403, which would confirm the project exists);
- the right project with a role the route does not accept: 403.

Bodies are short JSON reasons; the token never appears in them. The principal is left on
`request.state.principal` for what comes later (audit).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import HTTPException, Request, status

from app.auth.roles import Access, Principal, Role, authorize
from app.auth.tokens import verify_token
from app.store.index import index_engine

REALM = 'Bearer realm="imaging-depot"'


def _unauthorized(presented: bool) -> HTTPException:
    challenge = f'{REALM}, error="invalid_token"' if presented else REALM
    reason = "invalid or expired token" if presented else "a bearer token is required"
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail=reason, headers={"WWW-Authenticate": challenge}
    )


def _bearer(request: Request) -> str | None:
    """The presented credential, "" for a malformed Bearer header, None when there is none."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None  # another scheme (Basic…): no bearer token was presented
    credentials = credentials.strip()
    return credentials if credentials and " " not in credentials else ""


def authenticate(request: Request) -> Principal:
    """The caller's principal, or 401. (OIDC will be a second way to get one.)"""
    presented = _bearer(request)
    if presented is None:
        raise _unauthorized(presented=False)
    principal = None
    if presented:
        principal = verify_token(index_engine(request.app.state.index_url), presented)
    if principal is None:
        raise _unauthorized(presented=True)
    return principal


def require(*roles: Role) -> Callable[[Request], Principal]:
    """A dependency admitting a token of the route's `{project_id}` with one of `roles`."""
    if not roles:
        raise ValueError("require() needs at least one role")
    accepted = frozenset(roles)

    def dependency(request: Request) -> Principal:
        project_id = request.path_params.get("project_id")
        if project_id is None:
            raise RuntimeError("require() guards routes with a {project_id} path parameter")
        principal = authenticate(request)
        access = authorize(principal, project_id, accepted)
        if access is Access.not_found:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail="not found")
        if access is Access.forbidden:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, detail="this token's role may not do this"
            )
        request.state.principal = principal
        return principal

    return dependency
