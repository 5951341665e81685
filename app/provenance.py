"""Provenance records: which batch made which studies, with which pseudonymization, and
which series derived objects come from.

One row per ingest batch (`depot ingest` run, ingest STOW-RS request) that stored something:
the profile, its version, the PS3.15 table edition and options, the tool, the pseudonymous
study UIDs and the change summary (attribute paths, actions, counts; never a value). One row
per research STOW-RS of derived objects (SEG, SR, PR…) that reference series of the project:
those are its sources. The FHIR façade serves each as a Provenance (app.fhir.resources).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from sqlalchemy import Engine, or_
from sqlmodel import Session, select

from app import __version__
from app.pseudo.batch import change_summary
from app.pseudo.derived import POLICY as DERIVED_POLICY
from app.pseudo.derived import References
from app.pseudo.engine import Deidentifier, InstanceResult
from app.pseudo.profile import TABLE_EDITION
from app.store.models import Instance, ProvenanceRecord, Series, Study

PSEUDONYMIZATION = "pseudonymization"
DERIVATION = "derivation"
MAX_SUMMARY = 200  # rows of the change summary kept (most frequent first)


def record_ingest(
    engine: Engine,
    project_id: str,
    deidentifier: Deidentifier,
    stored: Sequence[InstanceResult],
    source: str,
) -> ProvenanceRecord | None:
    """Record the batch that stored `stored` (nothing when it stored nothing)."""
    if not stored:
        return None
    profile = deidentifier.profile
    return _save(
        engine, project_id, PSEUDONYMIZATION, source, stored,
        profile=profile.name, profile_version=profile.version, table_edition=TABLE_EDITION,
        options=[option.code for option in profile.options], sources=[],
    )  # fmt: skip


def record_derivation(
    engine: Engine,
    project_id: str,
    stored: Sequence[InstanceResult],
    references: dict[str, References],
) -> ProvenanceRecord | None:
    """Record derived objects and the project's series they reference (their sources);
    nothing when none references a stored series (no source: nothing to tell)."""
    if not stored:
        return None
    own = {r.series_uid for r in stored}
    series_uids: set[str] = set()
    sop_uids: set[str] = set()
    for result in stored:
        found = references.get(result.sop_uid)
        if found is not None:
            series_uids |= found.series
            sop_uids |= found.instances
    if not sop_uids and not series_uids:
        return None
    # One query: the series named, and those of the instances named (the project's only).
    of_instances = select(Instance.series_uid).where(
        Instance.project_id == project_id, Instance.sop_uid.in_(sorted(sop_uids))
    )
    query = select(Series.series_uid, Series.study_uid).where(
        Series.project_id == project_id,
        or_(Series.series_uid.in_(sorted(series_uids)), Series.series_uid.in_(of_instances)),
    )
    with Session(engine) as session:
        sources = {s: study for s, study in session.exec(query) if s not in own}
    if not sources:
        return None
    return _save(
        engine, project_id, DERIVATION, "research STOW-RS", stored,
        profile=DERIVED_POLICY, profile_version="1", table_edition="", options=[],
        sources=[{"series": s, "study": study} for s, study in sorted(sources.items())],
    )  # fmt: skip


def _save(
    engine: Engine,
    project_id: str,
    kind: str,
    source: str,
    stored: Sequence[InstanceResult],
    **policy: object,
) -> ProvenanceRecord:
    """The record of `stored` (studies, count, change summary) with its `policy` fields."""
    summary = change_summary(stored)[:MAX_SUMMARY]
    record = ProvenanceRecord(
        id=secrets.token_hex(16),
        project_id=project_id,
        kind=kind,
        source=source,
        tool=f"imaging-depot {__version__}",
        studies=sorted({r.study_uid for r in stored}),
        instances=len(stored),
        summary=[{"attribute": p, "action": a, "instances": n} for p, a, n in summary],
        **policy,
    )
    with Session(engine, expire_on_commit=False) as session:
        session.add(record)
        session.commit()
    return record


def get_record(engine: Engine, project_id: str, record_id: str) -> ProvenanceRecord | None:
    with Session(engine, expire_on_commit=False) as session:
        record = session.get(ProvenanceRecord, record_id)
    if record is None or record.project_id != project_id:
        return None
    return record


def records_of_project(engine: Engine, project_id: str) -> list[ProvenanceRecord]:
    """Oldest first. A project has one per batch: hundreds, not millions."""
    with Session(engine, expire_on_commit=False) as session:
        query = select(ProvenanceRecord).where(ProvenanceRecord.project_id == project_id)
        rows = session.exec(query.order_by(ProvenanceRecord.recorded_at, ProvenanceRecord.id))
        return list(rows)


def existing_studies(engine: Engine, project_id: str, study_uids: Sequence[str]) -> set[str]:
    """Which of these studies are still in the index (a deleted study is no target)."""
    if not study_uids:
        return set()
    with Session(engine) as session:
        query = select(Study.study_uid).where(
            Study.project_id == project_id, Study.study_uid.in_(list(study_uids))
        )
        return set(session.exec(query))
