"""Describe, publish and withdraw a project's dataset; its statistics from the index.

Used the same way by the API (app.catalog.router) and the CLI (app/cli_catalog.py); no FastAPI,
no Typer. One `dataset` row per project (app.store.models.Dataset):

- `describe` saves the working description (a draft until the first publication). Editing a
  published dataset does not change what the catalogue serves: the next `publish` does.
- `publish` freezes the description and the index statistics, small counts suppressed, into
  the row's `published` snapshot, and counts a new version. Republishing refreshes the counts.
- `withdraw` takes the dataset out of the catalogue (FHIR reads of it answer 410 Gone).

Small counts: any count under `SUPPRESSION_THRESHOLD` (10) is not published. It is stored and
shown as `null` and named in `suppressed`, and the catalogue omits the property rather than
printing a number (docs/catalog.md). Subjects are the distinct patient pseudonyms of the
studies. Modalities and body sites are lists, not counts: they are published, but only values
shaped like DICOM codes (modalities) or listed in PS3.16 Annex L (body sites), never free text.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict, dataclass

from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from app.catalog.model import DatasetDescription, validate_description
from app.fhir.body_site import body_site, normalize
from app.store.models import Dataset, Instance, Project, Series, Study, utc_now

SUPPRESSION_THRESHOLD = 10
DRAFT, PUBLISHED, WITHDRAWN = "draft", "published", "withdrawn"
COUNTS = ("subjects", "studies", "series", "instances", "bytes")
GONE_PROJECT_STATES = ("purging", "purged")  # their data is going or gone: never published
_MODALITY = re.compile(r"^[A-Z0-9_]{1,16}$")
_TABLE = Dataset.__table__


class CatalogError(ValueError):
    """A readable sentence: why the dataset cannot be described, published or withdrawn."""


@dataclass(frozen=True)
class Statistics:
    """What the index holds for a project, exactly (for the data manager's eyes)."""

    subjects: int
    studies: int
    series: int
    instances: int
    bytes: int
    modalities: list[str]
    body_sites: list[str]  # Annex L Defined Terms (normalized), sorted
    unmapped_body_parts: int  # distinct BodyPartExamined values Annex L does not list

    def published(self) -> dict:
        """The form the catalogue publishes: counts under the threshold replaced by None."""
        counts = asdict(self)
        suppressed = [name for name in COUNTS if counts[name] < SUPPRESSION_THRESHOLD]
        shown = {name: None if name in suppressed else counts[name] for name in COUNTS}
        return {
            **shown,
            "suppressed": suppressed,
            "threshold": SUPPRESSION_THRESHOLD,
            "modalities": list(self.modalities),
            "body_sites": list(self.body_sites),
        }


def statistics(engine: Engine, project_id: str) -> Statistics:
    """Counts and lists from the index, every query filtered by the project."""
    with engine.connect() as conn:
        subjects, studies = conn.execute(
            select(func.count(func.distinct(Study.patient_id)), func.count()).where(
                Study.project_id == project_id
            )
        ).one()
        series = conn.execute(
            select(func.count()).where(Series.project_id == project_id)
        ).scalar_one()
        instances, size = conn.execute(
            select(func.count(), func.coalesce(func.sum(Instance.size), 0)).where(
                Instance.project_id == project_id
            )
        ).one()
        modalities = conn.execute(
            select(Series.modality).where(Series.project_id == project_id).distinct()
        ).scalars()
        parts = conn.execute(
            select(Series.body_part_examined).where(Series.project_id == project_id).distinct()
        ).scalars()
        modality_list = sorted({m.strip() for m in modalities if m and _MODALITY.match(m.strip())})
        mapped, unmapped = set(), set()
        for part in parts:
            if part and part.strip():
                (mapped if body_site(part) else unmapped).add(normalize(part))
    return Statistics(
        subjects=int(subjects), studies=int(studies), series=int(series),
        instances=int(instances), bytes=int(size), modalities=modality_list,
        body_sites=sorted(mapped), unmapped_body_parts=len(unmapped),
    )  # fmt: skip


# --- the dataset row ------------------------------------------------------------------------


def get_dataset(engine: Engine, project_id: str) -> Dataset | None:
    with Session(engine, expire_on_commit=False) as session:
        row = session.get(Dataset, project_id)
    return row


def list_datasets(engine: Engine) -> list[Dataset]:
    """Every project's dataset row, by project (for `depot catalog show`)."""
    with Session(engine, expire_on_commit=False) as session:
        rows = session.exec(select(Dataset).order_by(Dataset.project_id)).scalars()  # type: ignore[call-overload]
        return list(rows)


def _project(engine: Engine, project_id: str) -> Project:
    with Session(engine) as session:
        project = session.get(Project, project_id)
    if project is None:
        raise CatalogError(f"no project {project_id}")
    return project


def describe(engine: Engine, project_id: str, description: DatasetDescription) -> Dataset:
    """Save the working description (a new draft, or an update of any status)."""
    project = _project(engine, project_id)
    if project.state in GONE_PROJECT_STATES:
        raise CatalogError(f"project {project_id} is being purged or purged: nothing to describe")
    document = description.model_dump(mode="json", exclude_none=True)
    now = utc_now()
    with engine.begin() as conn:
        changed = conn.execute(
            update(_TABLE)
            .where(_TABLE.c.project_id == project_id)
            .values(description=document, modified_at=now)
        ).rowcount
        if not changed:
            try:
                with conn.begin_nested():
                    conn.execute(
                        insert(_TABLE).values(
                            project_id=project_id, description=document, status=DRAFT,
                            version=0, published=None, created_at=now, modified_at=now,
                            published_at=None,
                        )
                    )  # fmt: skip
            except IntegrityError:  # described meanwhile by another request: update it
                conn.execute(
                    update(_TABLE)
                    .where(_TABLE.c.project_id == project_id)
                    .values(description=document, modified_at=now)
                )
    row = get_dataset(engine, project_id)
    assert row is not None
    return row


def publish(engine: Engine, project_id: str) -> Dataset:
    """Publish the working description with the index statistics as they are now."""
    project = _project(engine, project_id)
    row = get_dataset(engine, project_id)
    if row is None:
        raise CatalogError(f"project {project_id} has no dataset description; describe it first")
    if project.state in GONE_PROJECT_STATES:
        raise CatalogError(f"project {project_id} is being purged or purged: not published")
    description = validate_description(row.description)  # rules may have tightened since
    stats = statistics(engine, project_id)
    now = utc_now()
    previous = row.published or {}
    snapshot = {
        "description": description.model_dump(mode="json", exclude_none=True),
        "statistics": stats.published(),
        "profile": project.profile,  # the pseudonymization profile, for dct:provenance
        "issued": previous.get("issued") or now.isoformat(),
    }
    with engine.begin() as conn:
        conn.execute(
            update(_TABLE)
            .where(_TABLE.c.project_id == project_id)
            .values(
                status=PUBLISHED, version=_TABLE.c.version + 1, published=snapshot,
                published_at=now, modified_at=now,
            )
        )  # fmt: skip
    published = get_dataset(engine, project_id)
    assert published is not None
    return published


def withdraw(engine: Engine, project_id: str) -> Dataset:
    """Take a published dataset out of the catalogue (its description is kept)."""
    _project(engine, project_id)
    with engine.begin() as conn:
        changed = conn.execute(
            update(_TABLE)
            .where(_TABLE.c.project_id == project_id, _TABLE.c.status == PUBLISHED)
            .values(status=WITHDRAWN, modified_at=utc_now())
        ).rowcount
    if not changed:
        raise CatalogError(f"project {project_id} has no published dataset to withdraw")
    row = get_dataset(engine, project_id)
    assert row is not None
    return row


def pending_changes(row: Dataset) -> bool:
    """The working description differs from the one the catalogue serves."""
    return row.published is None or row.published.get("description") != row.description


# --- what the catalogue reads ---------------------------------------------------------------


def published_datasets(engine: Engine, modified_since: dt.datetime | None = None) -> list[Dataset]:
    """Published datasets of live projects, oldest publication first (then by project), the
    order harvesters page through."""
    query = (
        select(Dataset)
        .join(Project, Project.id == Dataset.project_id)
        .where(Dataset.status == PUBLISHED, Project.state.not_in(GONE_PROJECT_STATES))
        .order_by(Dataset.published_at, Dataset.project_id)
    )
    if modified_since is not None:
        query = query.where(Dataset.published_at >= modified_since)
    with Session(engine, expire_on_commit=False) as session:
        return list(session.exec(query).scalars())  # type: ignore[call-overload]


def last_change(engine: Engine) -> dt.datetime | None:
    """When the catalogue last changed: the latest publication or withdrawal."""
    with engine.connect() as conn:
        published, withdrawn = conn.execute(
            select(
                func.max(Dataset.published_at).filter(Dataset.status == PUBLISHED),
                func.max(Dataset.modified_at).filter(Dataset.status == WITHDRAWN),
            )
        ).one()
    moments = [m for m in (published, withdrawn) if m is not None]
    return max(moments) if moments else None  # type: ignore[type-var]


def catalogued_dataset(engine: Engine, project_id: str) -> Dataset | None:
    """A dataset the catalogue knows of: published, or withdrawn after publication (410);
    never one of a project being purged or purged, whatever its status."""
    row = get_dataset(engine, project_id)
    if row is None or row.status == DRAFT or row.published is None:
        return None
    if _project(engine, project_id).state in GONE_PROJECT_STATES:
        return None
    return row
