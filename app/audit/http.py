"""Recording HTTP requests: an ASGI middleware, one AuditEvent per `/projects[/{p}/…]` request.

The event is written when the response starts, so its outcome comes from the status code,
before any byte of the body leaves. Fail closed: if the audit log cannot record it, the client
gets 503 instead of the response (no data is served unrecorded). A change the request made
(a STOW, a delete) has then happened without its record: the server log says so, and the
client, told 503, retries (both are idempotent), which is recorded.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from urllib.parse import parse_qsl

import anyio.to_thread

from app.audit.events import PROJECT_ID, Agent, http_event
from app.audit.log import AuditError, append
from app.auth.credentials import AuthenticationUnavailable, claimed_id
from app.auth.roles import Kind, Principal, Role
from app.store.index import index_engine

log = logging.getLogger(__name__)

_BEARER = re.compile(rb"^\s*bearer\s+(\S{1,8192})\s*$", re.IGNORECASE)  # app.auth.http's cap
_UNAVAILABLE = b'{"detail":"the audit log is unavailable; the request was not served"}'


def _project(scope: dict) -> str | None:
    value = scope.get("path_params", {}).get("project_id")
    if value is None:
        parts = scope.get("path", "").split("/")
        value = parts[2] if len(parts) > 2 else None
    return value if isinstance(value, str) and PROJECT_ID.match(value) else None


def _ip(value: str):
    try:
        return ipaddress.ip_address(value.strip().strip("[]"))
    except ValueError:
        return None


def _address(scope: dict) -> str:
    """The peer; behind a trusted proxy (DEPOT_TRUSTED_PROXIES), the client it forwarded for:
    the rightmost X-Forwarded-For address that is not itself a trusted proxy."""
    client = scope.get("client")
    peer = client[0] if client else ""
    trusted = getattr(getattr(scope.get("app"), "state", None), "trusted_proxies", ())
    address = _ip(peer)
    if address is None or not any(address in network for network in trusted):
        return peer
    for name, value in scope.get("headers", []):
        if name == b"x-forwarded-for":
            for hop in reversed(value.decode("latin-1").split(",")):
                ip = _ip(hop)
                if ip is None:
                    break
                if not any(ip in network for network in trusted):
                    return str(ip)
    return peer


def _agent(scope: dict) -> Agent:
    address = _address(scope)
    state = scope.get("state") or {}
    principal = state.get("principal")
    if principal is None:  # refused (401, 403, 404): who was it, if anyone?
        presented = None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                presented = value
        match = _BEARER.match(presented or b"")
        if match:
            # Checked again only if app.auth.http did not (no such route, a refused body…).
            if not state.get("credential_refused"):
                principal = _authenticate(scope, match.group(1).decode("latin-1"))
            if principal is None:  # revoked, expired, forged: nothing it claims is believed
                kind, ident = claimed_id(match.group(1).decode("latin-1"))
                if not ident:
                    return Agent("anonymous", address=address, note="unverified token")
                return Agent(kind, ident, "", address, "unverified token")
    if principal is not None:
        project = _project(scope)
        role = principal.role_in(project)
        note = ""
        if role is None and principal.site_admin:
            role = Role.site_admin
        elif role is None and principal.projects:  # refused: another project's caller
            what = "member of" if principal.kind is Kind.oidc else f"{principal.kind} of project"
            note = f"{what} {', '.join(principal.projects[:5])}"
        return Agent(
            principal.kind.value, principal.subject, role.value if role else "", address, note
        )
    return Agent("anonymous", address=address)


def _authenticate(scope: dict, presented: str) -> Principal | None:
    try:
        return scope["app"].state.credentials.authenticate(presented)
    except AuthenticationUnavailable:
        return None


def event_for(scope: dict, status: int, crashed: bool = False) -> dict:
    route = scope.get("route")
    query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    return http_event(
        method=scope.get("method", "GET"),
        route_template=getattr(route, "path", None),
        route_name=getattr(route, "name", "") or "",
        project_id=_project(scope),
        path_params=scope.get("path_params", {}),
        query=query,
        status=status,
        agent=_agent(scope),
        crashed=crashed,
        extra_entities=(scope.get("state") or {}).get("audit_entities", ()),
    )


class AuditMiddleware:
    """Pure ASGI (no buffering of streamed WADO bodies)."""

    def __init__(self, app, index_url: str) -> None:
        self.app = app
        self.index_url = index_url

    async def _record(self, scope: dict, status: int, crashed: bool = False) -> bool:
        def write() -> None:
            engine = index_engine(self.index_url)
            append(engine, event_for(scope, status, crashed), _project(scope))

        try:
            await anyio.to_thread.run_sync(write)
        except Exception as exc:  # noqa: BLE001  (a failure to record answers 503, never 500)
            cause = exc.__cause__ if isinstance(exc, AuditError) else exc
            log.error(
                "audit: a request to %s was not recorded (%s)", _route(scope), type(cause).__name__
            )
            return False
        return True

    async def __call__(self, scope, receive, send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if path != "/projects" and not path.startswith("/projects/"):
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})  # shared with request.state: the principal lands here
        started = refused = False

        async def audited_send(message) -> None:
            nonlocal started, refused
            if refused:
                return  # the app's own response is dropped: 503 went out instead
            if message["type"] == "http.response.start" and not started:
                started = True
                if not await self._record(scope, message["status"]):
                    refused = True
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 503,
                            "headers": [(b"content-type", b"application/json")],
                        }
                    )
                    await send({"type": "http.response.body", "body": _UNAVAILABLE})
                    return
            await send(message)

        try:
            await self.app(scope, receive, audited_send)
        except Exception:
            if not started:
                await self._record(scope, 500, crashed=True)
            raise


def _route(scope: dict) -> str:
    """For log lines: the route template, never the raw path (it may hold original UIDs)."""
    return getattr(scope.get("route"), "path", None) or "/projects/…"
