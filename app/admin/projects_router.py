"""Projects and their members, for site admins: `/projects`, `/projects/{p}/members`.

A site admin creates projects and says who works in them; it sees no image (docs/security.md).
A project's data manager may read its project's description. Member subjects are the identity
provider's opaque `sub`, never a name.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine

from app.audit.events import security_entity
from app.auth.http import require
from app.auth.members import MemberError, list_members, remove_member, set_member
from app.auth.roles import Role
from app.config import Settings
from app.projects import ProjectError, create_project, get_project, list_projects
from app.store.index import index_engine
from app.store.models import Project, ProjectMember

SITE_ADMIN = require(Role.site_admin)
ADMIN_OR_MANAGER = require(Role.site_admin, Role.data_manager)
Subject = Annotated[str, Path(min_length=1, max_length=255)]


class ProjectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=2, max_length=63, description="lower-case letters, digits, dashes")
    title: str = Field(min_length=1, max_length=500)
    profile: str = Field(default="research-fr", max_length=64)
    options: list[str] = Field(default_factory=list, max_length=20)


class ProjectOut(BaseModel):
    id: str
    title: str
    profile: str
    options: list[str]
    state: str
    created_at: dt.datetime
    declared_end: dt.date | None
    retention_until: dt.date | None
    legal_hold: bool

    @classmethod
    def of(cls, project: Project) -> ProjectOut:
        return cls.model_validate(project, from_attributes=True)


class MemberIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role = Field(description="data_manager, researcher or auditor")


class MemberOut(BaseModel):
    subject: str
    role: str
    added_at: dt.datetime

    @classmethod
    def of(cls, member: ProjectMember) -> MemberOut:
        return cls.model_validate(member, from_attributes=True)


def projects_router(settings: Settings) -> APIRouter:
    router = APIRouter(tags=["projects"])

    def index() -> Engine:  # opened at the first request: /readyz reports an index that is down
        return index_engine(settings.index_url)

    @router.get("/projects", name="project_list", dependencies=[Depends(SITE_ADMIN)])
    def project_list() -> list[ProjectOut]:
        """Every project of the site (site admins)."""
        return [ProjectOut.of(p) for p in list_projects(settings)]

    @router.post(
        "/projects", name="project_create", status_code=201, dependencies=[Depends(SITE_ADMIN)]
    )
    def project_create(body: ProjectIn) -> ProjectOut:
        """Create a project with its own vault key (site admins)."""
        try:
            project = create_project(settings, body.id, body.title, body.profile, body.options)
        except ProjectError as error:
            code = 409 if "already exists" in str(error) else 422
            raise HTTPException(code, detail=str(error)) from None
        return ProjectOut.of(project)

    @router.get(
        "/projects/{project_id}", name="project_read", dependencies=[Depends(ADMIN_OR_MANAGER)]
    )
    def project_read(project_id: str) -> ProjectOut:
        """The project's description, state and retention."""
        try:
            return ProjectOut.of(get_project(settings, project_id))
        except ProjectError:
            raise HTTPException(404, detail="not found") from None

    @router.get(
        "/projects/{project_id}/members", name="member_list", dependencies=[Depends(SITE_ADMIN)]
    )
    def member_list(project_id: str) -> list[MemberOut]:
        """Who works in the project, with which role (identity-provider subjects)."""
        _exists(project_id)
        return [MemberOut.of(m) for m in list_members(index(), project_id)]

    @router.put(
        "/projects/{project_id}/members/{subject}",
        name="member_set",
        dependencies=[Depends(SITE_ADMIN)],
    )
    def member_set(
        request: Request, project_id: str, subject: Subject, body: MemberIn
    ) -> MemberOut:
        """Add a subject to the project, or change its role there."""
        _exists(project_id)
        try:
            member = set_member(index(), project_id, subject, body.role)
        except MemberError as error:
            raise HTTPException(422, detail=str(error)) from None
        request.state.audit_entities = [security_entity("oidc", subject, [("role", member.role)])]
        return MemberOut.of(member)

    @router.delete(
        "/projects/{project_id}/members/{subject}",
        name="member_remove",
        status_code=204,
        dependencies=[Depends(SITE_ADMIN)],
    )
    def member_remove(request: Request, project_id: str, subject: Subject) -> Response:
        """Remove a subject from the project; its next request no longer opens it."""
        _exists(project_id)
        if not remove_member(index(), project_id, subject):
            raise HTTPException(404, detail="no such member")
        request.state.audit_entities = [security_entity("oidc", subject)]
        return Response(status_code=204)

    def _exists(project_id: str) -> None:
        try:
            get_project(settings, project_id)
        except ProjectError:
            raise HTTPException(404, detail="not found") from None

    return router
