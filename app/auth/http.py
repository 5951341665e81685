"""The HTTP side of access: `Depends(require(Role.…))` on every `/projects/{project_id}/…` route.

The only auth module importing FastAPI. It reads `Authorization: Bearer …`, has it verified
by `app.state.credentials` (an `app.auth.credentials.Credentials`, set by
`app.main.create_app`), then applies `app.auth.roles.authorize`:

- no token, or one that is malformed, unknown, expired, not yet valid, revoked, forged or
  from an untrusted issuer: 401 with `WWW-Authenticate: Bearer realm="imaging-depot"` (plus
  `error="invalid_token"` when a token was presented, RFC 6750 section 3);
- a valid token of another project: 404, the answer for any object the caller cannot see
  (decision 1: never 403, which would confirm the project exists); so is a study outside a
  compute grant's list;
- the right project with a role (or a grant scope) the route does not accept: 403;
- a token that cannot be checked because its IdP's keys cannot be fetched: 503.

Bodies are short JSON reasons; the token never appears in them. The principal is left on
`request.state.principal` for what comes later (audit), and a presented credential that was
refused is marked `request.state.credential_refused`.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import HTTPException, Request, status

from app.auth.credentials import AuthenticationUnavailable
from app.auth.roles import Access, Principal, Role, Scope, authorize

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


MAX_CREDENTIAL = 8192  # bytes: a JWT from an IdP is a few hundred; anything longer is refused


def authenticate(request: Request) -> Principal:
    """The caller's principal (cached on the request), or 401."""
    known = getattr(request.state, "principal", None)
    if known is not None:
        return known
    presented = _bearer(request)
    if presented is None:
        raise _unauthorized(presented=False)
    principal = None
    if presented and len(presented) <= MAX_CREDENTIAL:
        try:
            principal = request.app.state.credentials.authenticate(presented)
        except AuthenticationUnavailable:
            request.state.credential_refused = True
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                detail="the identity provider's keys are unavailable; retry later",
                headers={"Retry-After": "30"},
            ) from None
    if principal is None:
        request.state.credential_refused = True  # app.audit.http need not check it again
        raise _unauthorized(presented=True)
    request.state.principal = principal
    return principal


def not_found() -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail="not found")


def check_study(principal: Principal, study_uid: str | None) -> None:
    """404 for a study outside a compute grant's list, as for another project's."""
    studies = principal.studies
    if studies is not None and study_uid is not None and study_uid not in studies:
        raise not_found()


def require(*roles: Role, scope: Scope | None = None) -> Callable[[Request], Principal]:
    """A dependency admitting a caller holding one of `roles` in the route's `{project_id}`
    (and, for a compute grant, `scope`); `require(Role.site_admin)` on a route without a
    project admits site admins only."""
    if not roles:
        raise ValueError("require() needs at least one role")
    accepted = frozenset(roles)

    def dependency(request: Request) -> Principal:
        project_id = request.path_params.get("project_id")
        if project_id is None and accepted != {Role.site_admin}:
            raise RuntimeError("require() guards routes with a {project_id} path parameter")
        principal = authenticate(request)
        access = authorize(principal, project_id, accepted, scope)
        if access is Access.not_found and project_id is not None:
            raise not_found()
        if access is not Access.allowed:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, detail="this token's role may not do this"
            )
        check_study(principal, request.path_params.get("study_uid"))
        return principal

    return dependency
