"""Compute grants over HTTP (data managers): `/projects/{p}/access-grants`.

POST answers the grant's token once; GET lists grants without tokens; DELETE revokes at once.
Every use of a grant's token is an audited request like any other, its agent the grant's id.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from app.audit.events import security_entity
from app.auth.grants import GrantError, GrantNotFound, list_grants, revoke_grant
from app.auth.http import require
from app.auth.roles import Principal, Role, Scope
from app.store.models import AccessGrant

MANAGER = require(Role.data_manager)
GrantId = Annotated[str, Path(pattern=r"^g[0-9a-f]{16}$")]


class GrantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scopes: list[Scope] = Field(min_length=1, description="dicomweb-read and/or fhir-read")
    studies: list[str] | None = Field(
        default=None, max_length=1000, description="StudyInstanceUIDs; omit for the project"
    )
    expires_in_hours: float = Field(
        gt=0, description="capped by DEPOT_GRANT_MAX_HOURS and by the project's declared end"
    )
    label: str = Field(default="", max_length=200, description="e.g. the cluster's name")


class GrantOut(BaseModel):
    id: str
    scopes: list[str]
    studies: list[str] | None
    label: str
    created_by: str
    created_at: dt.datetime
    expires_at: dt.datetime
    revoked_at: dt.datetime | None

    @classmethod
    def of(cls, grant: AccessGrant) -> GrantOut:
        return cls.model_validate(grant, from_attributes=True)


class IssuedGrant(GrantOut):
    token: str = Field(description="the bearer token for the cluster; shown only this once")


def grants_router() -> APIRouter:
    router = APIRouter(tags=["access grants"])
    base = "/projects/{project_id}/access-grants"

    @router.post(base, name="grant_issue", status_code=201)
    def grant_issue(
        request: Request,
        project_id: str,
        body: GrantIn,
        principal: Annotated[Principal, Depends(MANAGER)],
    ) -> IssuedGrant:
        """Issue a compute grant: a time-limited, read-only token for a cluster."""
        credentials = request.app.state.credentials
        try:
            grant, token = credentials.issue_grant(
                project_id,
                scopes=[s.value for s in body.scopes],
                lifetime=dt.timedelta(hours=body.expires_in_hours),
                studies=body.studies,
                label=body.label,
                created_by=f"{principal.kind.value}:{principal.subject}",
            )
        except GrantError as error:
            raise HTTPException(422, detail=str(error)) from None
        details = [("scope", s) for s in grant.scopes]
        details.append(("expires", grant.expires_at.isoformat()))
        request.state.audit_entities = [security_entity("grant", grant.id, details)]
        return IssuedGrant(**GrantOut.of(grant).model_dump(), token=token)

    @router.get(base, name="grant_list", dependencies=[Depends(MANAGER)])
    def grant_list(request: Request, project_id: str) -> list[GrantOut]:
        """The project's grants, newest first (never their tokens)."""
        engine = request.app.state.credentials.engine
        return [GrantOut.of(g) for g in list_grants(engine, project_id)]

    @router.delete(
        base + "/{grant_id}", name="grant_revoke", status_code=204, dependencies=[Depends(MANAGER)]
    )
    def grant_revoke(request: Request, project_id: str, grant_id: GrantId) -> Response:
        """Revoke a grant: its token fails from its next request on."""
        try:
            revoke_grant(request.app.state.credentials.engine, project_id, grant_id)
        except GrantNotFound:
            raise HTTPException(404, detail="no such grant") from None
        request.state.audit_entities = [security_entity("grant", grant_id)]
        return Response(status_code=204)

    return router
