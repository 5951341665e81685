"""Retention and purge (rec. 3.6): how long a project's data is kept, and its removal after.

A project has a declared end, a retention end (by default 10 years after the declared end), a
legal-hold flag and a state: active → closed → purging → purged. Once today is past the
retention end and no legal hold stands, `purge_project` removes everything of the project:
its blobs (stored and derived objects, series metadata), its scratch folder, its index rows
(instances, series, studies, tokens) and its vault key with every linkage record
(crypto-shredding: without the key, the pseudonyms can no longer be linked to anyone). The
project row stays, state `purged`, and so do the audit trail and a signed purge record.

Crash safety: the purge runs in steps, each idempotent, and the first one is recorded:
1. mark: state `purging`, the purge record row created, tokens deleted (access ends now);
2. blobs under `projects/<p>/` and the scratch folder;
3. index rows, in one transaction;
4. the vault key and linkage;
5. the AuditEvent (DCM 110105 "DICOM Study Deleted", action D), then the record completed
   (time, counts, that event's number and hash, signature) and the state `purged`.
A purge interrupted anywhere leaves the state `purging`; the next run (`expired_projects`
lists such projects first) finishes it, adding its counts to the record's. A crash between
steps 5's two writes leaves a second purge event in the trail, never none.

The record is signed with HMAC-SHA256 under a key derived from the vault master key
(HMAC-SHA256(master key, "imaging-depot purge-record signing key v1")): the project key is
gone after a purge, the master key is not, and whoever can verify can sign, which is the
custodian. Nothing in a record identifies anyone: project id, times, counts, hashes.

No FastAPI, no Typer: used the same way by the CLI, a scheduled worker and the tests.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import hmac
import shutil
from dataclasses import dataclass

from sqlalchemy import Engine, delete, func, select, update
from sqlmodel import Session

from app.audit import events as ev
from app.audit.log import append, canonical
from app.config import Settings
from app.projects import ProjectError
from app.store.index import index_engine
from app.store.layout import project_prefix
from app.store.models import (
    AccessGrant,
    AuditEvent,
    Dataset,
    Instance,
    Project,
    ProjectMember,
    ProvenanceRecord,
    PurgeRecord,
    Series,
    Study,
    Token,
    utc_now,
)
from app.vault import ProjectKeyMissing, Vault, load_master_key

DEFAULT_RETENTION_YEARS = 10
ACTIVE, CLOSED, PURGING, PURGED = "active", "closed", "purging", "purged"
_SIGNING_LABEL = b"imaging-depot purge-record signing key v1"
_SIGNED_FIELDS = (
    "project_id", "started_at", "purged_at", "blobs", "studies", "series", "instances",
    "tokens", "linkages", "audit_seq", "audit_hash",
)  # fmt: skip
_PROJECT, _RECORD = Project.__table__, PurgeRecord.__table__
_COUNTED = ("blobs", "studies", "series", "instances", "tokens", "linkages")
# Step 3's tables, children first, each with the purge record's count it adds to (None: not
# counted, they describe the studies counted: provenance, the catalogue's description).
_ROWS = (
    (Instance, "instances"), (Series, "series"), (Study, "studies"), (Token, "tokens"),
    (ProvenanceRecord, None), (Dataset, None),
)  # fmt: skip


class RetentionError(ProjectError):
    """A readable sentence about why a retention change or a purge is refused."""


def _engine(settings: Settings) -> Engine:
    return index_engine(settings.index_url)


def _load(settings: Settings, project_id: str) -> Project:
    with Session(_engine(settings), expire_on_commit=False) as session:
        project = session.get(Project, project_id)
    if project is None:
        raise RetentionError(f"no project {project_id}; `depot project list` shows them")
    return project


def _operator() -> ev.Agent:
    return ev.operator_agent(getpass.getuser())


def _years_later(day: dt.date, years: int) -> dt.date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February into a common year
        return day.replace(year=day.year + years, day=28)


# --- settings -----------------------------------------------------------------------------------


def _change(settings: Settings, project_id: str, values: dict) -> Project:
    """Update a project that is neither being purged nor purged (checked in the UPDATE)."""
    with _engine(settings).begin() as conn:
        changed = conn.execute(
            update(_PROJECT)
            .where(_PROJECT.c.id == project_id, _PROJECT.c.state.in_((ACTIVE, CLOSED)))
            .values(**values)
        ).rowcount
    if not changed:
        project = _load(settings, project_id)  # raises if there is no such project
        raise RetentionError(f"project {project_id} is {project.state}; it can no longer change")
    return _load(settings, project_id)


def _audit_change(settings: Settings, project_id: str, what: str, agent: ev.Agent | None) -> None:
    event = _event(
        ev.coding(ev.EVENT_TYPE, "rest", "RESTful Operation"), "U", ev.SUCCESS,
        f"retention: {what}", agent, [ev.project_entity(project_id, [("change", what)])],
    )  # fmt: skip
    append(_engine(settings), event, project_id)


def set_retention(
    settings: Settings,
    project_id: str,
    declared_end: dt.date,
    retention_until: dt.date | None = None,
    agent: ev.Agent | None = None,
) -> Project:
    """Declare when the project ends; kept until `retention_until` (default: 10 years after)."""
    until = retention_until or _years_later(declared_end, DEFAULT_RETENTION_YEARS)
    if until < declared_end:
        raise RetentionError("the retention end cannot come before the project's declared end")
    project = _change(
        settings, project_id, {"declared_end": declared_end, "retention_until": until}
    )
    _audit_change(settings, project_id, f"retention until {until.isoformat()}", agent)
    return project


def set_legal_hold(
    settings: Settings, project_id: str, on: bool, agent: ev.Agent | None = None
) -> Project:
    """A legal hold blocks the purge, whatever the dates, until it is lifted."""
    project = _change(settings, project_id, {"legal_hold": on})
    _audit_change(settings, project_id, "legal hold on" if on else "legal hold off", agent)
    return project


def close_project(
    settings: Settings, project_id: str, today: dt.date | None = None, agent: ev.Agent | None = None
) -> Project:
    """Close an active project (closing again changes nothing). A project with no declared
    end is declared ended today, so its retention end becomes 10 years from today."""
    project = _load(settings, project_id)
    if project.state == CLOSED:
        return project
    if project.state != ACTIVE:
        raise RetentionError(f"project {project_id} is {project.state}; it cannot be closed")
    values: dict = {"state": CLOSED, "closed_at": utc_now()}
    if project.declared_end is None:
        end = today or dt.date.today()
        until = _years_later(end, DEFAULT_RETENTION_YEARS)
        values |= {"declared_end": end, "retention_until": until}
    with _engine(settings).begin() as conn:
        conn.execute(
            update(_PROJECT)
            .where(_PROJECT.c.id == project_id, _PROJECT.c.state == ACTIVE)
            .values(**values)
        )
    _audit_change(settings, project_id, "closed", agent)
    return _load(settings, project_id)


# --- what is due ----------------------------------------------------------------------------------


def is_expired(project: Project, today: dt.date) -> bool:
    """Past its retention end (kept through that day), no legal hold, not purged yet."""
    return (
        project.state in (ACTIVE, CLOSED)
        and not project.legal_hold
        and project.retention_until is not None
        and today > project.retention_until
    )


def expired_projects(settings: Settings, today: dt.date) -> list[Project]:
    """Projects to purge: unfinished purges first, then the expired ones, by id."""
    with Session(_engine(settings), expire_on_commit=False) as session:
        projects = list(session.exec(select(Project).order_by(Project.id)).scalars())
    unfinished = [p for p in projects if p.state == PURGING]
    return unfinished + [p for p in projects if is_expired(p, today)]


# --- purge ----------------------------------------------------------------------------------------


def signing_key(settings: Settings) -> bytes:
    return hmac.new(load_master_key(settings), _SIGNING_LABEL, hashlib.sha256).digest()


def _signed_fields(record: PurgeRecord) -> dict:
    values = {name: getattr(record, name) for name in _SIGNED_FIELDS}
    for name in ("started_at", "purged_at"):
        values[name] = values[name].astimezone(dt.UTC).isoformat(timespec="microseconds")
    return values


def sign(key: bytes, record: PurgeRecord) -> str:
    return hmac.new(key, canonical(_signed_fields(record)), hashlib.sha256).hexdigest()


def verify_purge_record(settings: Settings, record: PurgeRecord) -> bool:
    """True if the record is complete and its signature matches its content."""
    if record.signature is None or record.purged_at is None:
        return False
    return hmac.compare_digest(sign(signing_key(settings), record), record.signature)


def purge_record(settings: Settings, project_id: str) -> PurgeRecord | None:
    with Session(_engine(settings), expire_on_commit=False) as session:
        return session.get(PurgeRecord, project_id)


@dataclass
class PurgeResult:
    project_id: str
    record: PurgeRecord
    resumed: bool  # an interrupted purge was finished


def purge_project(
    settings: Settings,
    project_id: str,
    today: dt.date,
    agent: ev.Agent | None = None,
    vault: Vault | None = None,
) -> PurgeResult:
    """Purge an expired project (see the module's docstring); finishes an interrupted one.

    Refuses a project under legal hold or not past its retention end: there is no force.
    Purging a purged project again returns its record and changes nothing.
    """
    project = _load(settings, project_id)
    if project.state == PURGED:
        record = purge_record(settings, project_id)
        assert record is not None
        return PurgeResult(project_id, record, resumed=False)
    resumed = project.state == PURGING
    if not resumed:
        _refuse_unless_expired(project, today)
        _mark(settings, project_id)
    _delete_blobs(settings, project_id)
    _delete_rows(_engine(settings), project_id)
    _shred(settings, project_id, vault)
    record = _complete(settings, project_id, agent or _operator())
    return PurgeResult(project_id, record, resumed)


def _refuse_unless_expired(project: Project, today: dt.date) -> None:
    if project.legal_hold:
        raise RetentionError(f"project {project.id} is under legal hold; it cannot be purged")
    if project.retention_until is None:
        raise RetentionError(
            f"project {project.id} has no retention end; set one with "
            f"`depot project retention {project.id} --declared-end YYYY-MM-DD`"
        )
    if today <= project.retention_until:
        raise RetentionError(
            f"project {project.id} is kept until {project.retention_until.isoformat()}; "
            "it cannot be purged before"
        )


def _mark(settings: Settings, project_id: str) -> None:
    """Step 1, one transaction: `purging`, the record row, and no token opens it any more.

    The UPDATE re-checks state and hold, so a hold set meanwhile still wins."""
    with _engine(settings).begin() as conn:
        marked = conn.execute(
            update(_PROJECT)
            .where(
                _PROJECT.c.id == project_id,
                _PROJECT.c.state.in_((ACTIVE, CLOSED)),
                _PROJECT.c.legal_hold.is_(False),
            )
            .values(state=PURGING)
        ).rowcount
        if not marked:
            raise RetentionError(f"project {project_id} changed meanwhile; run the purge again")
        access = sum(  # tokens, compute grants, members: the purge record counts them as tokens
            conn.execute(delete(m.__table__).where(m.project_id == project_id)).rowcount
            for m in (Token, AccessGrant, ProjectMember)
        )
        conn.execute(
            _RECORD.insert().values(
                project_id=project_id, started_at=utc_now(), blobs=0, studies=0, series=0,
                instances=0, tokens=access, linkages=0,
            )
        )  # fmt: skip


def _add_counts(engine: Engine, project_id: str, **counts: int) -> None:
    with engine.begin() as conn:
        _add(conn, project_id, counts)


def _add(conn, project_id: str, counts: dict[str, int]) -> None:
    values = {name: _RECORD.c[name] + count for name, count in counts.items() if count}
    if values:
        conn.execute(update(_RECORD).where(_RECORD.c.project_id == project_id).values(**values))


def _delete_blobs(settings: Settings, project_id: str) -> None:
    """Step 2: every blob under the project's prefix (S3 or files), and its scratch folder."""
    from app.store.encryption import project_blob_store  # loads the S3 client: only now

    removed = project_blob_store(settings).delete_prefix(project_prefix(project_id))
    # app.ingest.Stores.from_settings: scratch under <data dir>/ingest-tmp/<project>
    shutil.rmtree(settings.resolved_data_dir / "ingest-tmp" / project_id, ignore_errors=True)
    _add_counts(_engine(settings), project_id, blobs=removed)


def _delete_rows(engine: Engine, project_id: str) -> None:
    """Step 3, one transaction: the rows of `_ROWS` (late tokens among them).

    Done here rather than through app.store.index_repo's per-study deletes: one statement per
    table, filtered by the project, without recounting studies that are going anyway."""
    with engine.begin() as conn:
        counts = {}
        for model, counted in _ROWS:
            table = model.__table__
            gone = conn.execute(delete(table).where(table.c.project_id == project_id)).rowcount
            if counted:
                counts[counted] = gone
        _add(conn, project_id, counts)


def _shred(settings: Settings, project_id: str, vault: Vault | None) -> None:
    """Step 4: the project key, the data key and the linkage records, in one vault
    transaction (already gone if a resumed purge had got this far); then this process's
    cached data key, so its blobs stop being readable here at once, not within the TTL."""
    from app.store.encryption import forget_data_key  # loads the S3 client: only now

    opened = vault or Vault.from_settings(settings)
    try:
        linkages = opened.destroy_project_key(project_id)
    except ProjectKeyMissing:
        linkages = 0
    finally:
        if vault is None:
            opened.close()
    forget_data_key(project_id)
    _add_counts(_engine(settings), project_id, linkages=linkages)


def _complete(settings: Settings, project_id: str, agent: ev.Agent) -> PurgeRecord:
    """Step 5: the AuditEvent, then the signed record and the state, in one transaction."""
    engine = _engine(settings)
    record = purge_record(settings, project_id)
    assert record is not None
    details = [(name, str(getattr(record, name))) for name in _COUNTED]
    event = _event(
        ev.coding(ev.DCM, "110105", "DICOM Study Deleted"), "D", ev.SUCCESS,
        "project purged: retention ended", agent,
        [ev.project_entity(project_id, [("purge", "retention ended"), *details])],
    )  # fmt: skip
    seq = append(engine, event, project_id)
    with engine.begin() as conn:
        head_hash = conn.execute(
            select(AuditEvent.__table__.c.hash).where(AuditEvent.__table__.c.seq == seq)
        ).scalar_one()
        purged_at = utc_now()
        record.purged_at, record.audit_seq, record.audit_hash = purged_at, seq, head_hash
        record.signature = sign(signing_key(settings), record)
        conn.execute(
            update(_RECORD)
            .where(_RECORD.c.project_id == project_id)
            .values(
                purged_at=purged_at, audit_seq=seq, audit_hash=head_hash,
                signature=record.signature,
            )
        )  # fmt: skip
        conn.execute(
            update(_PROJECT)
            .where(_PROJECT.c.id == project_id)
            .values(state=PURGED, purged_at=purged_at)
        )
    return record


def _event(
    type_: dict,
    action: str,
    outcome: str,
    description: str,
    agent: ev.Agent | None,
    entities: list[dict],
) -> dict:
    """An AuditEvent in the shape app.audit.events builds (retention runs from the CLI)."""
    return {
        "resourceType": "AuditEvent",
        "type": type_,
        "action": action,
        "outcome": outcome,
        "outcomeDesc": description,
        "agent": [(agent or _operator()).resource("AUT")],
        "source": {
            "site": "imaging-depot",
            "observer": {"display": "imaging-depot retention"},
            "type": [ev.coding(ev.SOURCE_TYPE, "4", "Application Server")],
        },
        "entity": entities,
    }


# --- a run ----------------------------------------------------------------------------------------


@dataclass
class RunItem:
    project_id: str
    retention_until: dt.date | None
    state: str  # before the run
    result: PurgeResult | None = None  # None on a dry run or a failure
    error: str = ""


def run_retention(
    settings: Settings, today: dt.date, dry_run: bool = False, agent: ev.Agent | None = None
) -> list[RunItem]:
    """Purge every expired project (what `depot retention run` and a scheduled worker call).

    One project's failure does not stop the others; it is reported and retried next run."""
    items = []
    for project in expired_projects(settings, today):
        item = RunItem(project.id, project.retention_until, project.state)
        if not dry_run:
            try:
                item.result = purge_project(settings, project.id, today, agent)
            except Exception as exc:  # noqa: BLE001  (reported; the next run resumes it)
                item.error = f"{type(exc).__name__}: {exc}"
        items.append(item)
    return items


def count_rows(engine: Engine, project_id: str) -> dict[str, int]:
    """How many index rows the project still has, per table (tests, `--dry-run`)."""
    with engine.connect() as conn:
        return {
            name: conn.execute(
                select(func.count()).select_from(m.__table__).where(m.project_id == project_id)
            ).scalar_one()
            for name, m in (
                ("studies", Study), ("series", Series), ("instances", Instance), ("tokens", Token),
                ("grants", AccessGrant), ("members", ProjectMember),
                ("provenance", ProvenanceRecord), ("dataset", Dataset),
            )
        }  # fmt: skip
