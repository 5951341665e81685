"""The audit log: append (insert only, one linear hash chain), verify, search, export.

Each record's hash is SHA-256 over the canonical JSON (sorted keys, no spaces, UTF-8) of
`{"seq", "project", "event", "prev"}`: its sequence number, its project, the AuditEvent (whose
`recorded` is the timestamp) and the previous record's hash (64 zeros for the first). So an
altered record breaks its own hash, a deleted one leaves a gap and a `prev` that no longer
matches, and two records swapped break at the first of them. The head row (`audit_head`, one
row) holds the last number and hash: a truncated tail is caught too.

Appends serialize on that row: `UPDATE audit_head SET seq = seq + 1` is the first statement
of the transaction, which takes PostgreSQL's row lock (a second writer waits, then sees the
new value) and SQLite's write lock (waiting up to the busy timeout). Two server processes
therefore never hand out one number twice or fork the chain.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from sqlalchemy import Engine, and_, func, insert, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from app.audit.events import agent_index, entity_index
from app.store.models import AuditEvent, AuditHead

GENESIS = "0" * 64
_events = AuditEvent.__table__
_head = AuditHead.__table__


class AuditError(RuntimeError):
    """The audit log could not record an event (the caller decides: 503, or a failed command)."""


def canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(seq: int, project_id: str | None, event: Mapping, prev_hash: str) -> str:
    payload = {"seq": seq, "project": project_id, "event": event, "prev": prev_hash}
    return hashlib.sha256(canonical(payload)).hexdigest()


def _instant(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds")


def _entities_column(event: Mapping) -> str:
    return " " + " ".join(entity_index(event)) + " "


def append(engine: Engine, event: Mapping, project_id: str | None = None) -> int:
    """Append one AuditEvent (its `recorded` is set here); returns its sequence number."""
    try:
        with engine.begin() as conn:
            # The first statement takes the lock (see the module's docstring).
            conn.execute(update(_head).where(_head.c.id == 1).values(seq=_head.c.seq + 1))
            seq, prev_hash = conn.execute(
                select(_head.c.seq, _head.c.hash).where(_head.c.id == 1)
            ).one()
            recorded = dt.datetime.now(dt.UTC)
            body = {**event, "resourceType": "AuditEvent", "recorded": _instant(recorded)}
            digest = record_hash(seq, project_id, body, prev_hash)
            conn.execute(
                insert(_events).values(
                    seq=seq,
                    recorded_at=recorded,
                    project_id=project_id,
                    agent=agent_index(body),
                    action=body["action"],
                    entities=_entities_column(body),
                    event=canonical(body).decode(),
                    prev_hash=prev_hash,
                    hash=digest,
                )
            )
            conn.execute(update(_head).where(_head.c.id == 1).values(hash=digest))
    except SQLAlchemyError as exc:  # down, locked past the timeout, refused: not recorded
        raise AuditError("the audit log could not record the event") from exc
    return seq


# --- verification -----------------------------------------------------------------------------


@dataclass
class Verification:
    records: int = 0  # records checked (the whole chain)
    project_records: int | None = None  # of the project asked about, if any
    broken_at: int | None = None  # the first broken link's sequence number
    reason: str = ""
    head_seq: int = 0
    head_hash: str = GENESIS

    @property
    def intact(self) -> bool:
        return self.broken_at is None


def verify(engine: Engine, project_id: str | None = None, batch: int = 1000) -> Verification:
    """Walk the whole chain (it is one chain for all projects) and stop at the first break."""
    report = Verification(project_records=0 if project_id is not None else None)
    expected, prev_hash = 1, GENESIS
    with engine.connect() as conn:
        head = conn.execute(select(_head.c.seq, _head.c.hash).where(_head.c.id == 1)).one()
        report.head_seq, report.head_hash = head.seq, head.hash
        after = 0
        while True:
            rows = conn.execute(
                select(_events).where(_events.c.seq > after).order_by(_events.c.seq).limit(batch)
            ).all()
            if not rows:
                break
            for row in rows:
                problem = _check(row, expected, prev_hash)
                if problem is not None:
                    report.broken_at, report.reason = problem
                    return report
                report.records += 1
                if project_id is not None and row.project_id == project_id:
                    report.project_records += 1
                expected, prev_hash = row.seq + 1, row.hash
            after = rows[-1].seq
    if (head.seq, head.hash) != (expected - 1, prev_hash):
        report.broken_at = expected
        report.reason = (
            f"the chain head says {head.seq} records, the table ends at {expected - 1}: "
            "records at the end were removed or the head was altered"
        )
    return report


def _check(row, expected: int, prev_hash: str) -> tuple[int, str] | None:
    if row.seq != expected:
        return expected, f"record {expected} is missing (the next one is {row.seq})"
    if row.prev_hash != prev_hash:
        return row.seq, f"record {row.seq} does not point at record {row.seq - 1}"
    try:
        event = json.loads(row.event)
    except ValueError:
        return row.seq, f"record {row.seq} is not valid JSON"
    if record_hash(row.seq, row.project_id, event, row.prev_hash) != row.hash:
        return row.seq, f"record {row.seq} was altered (its hash does not match its content)"
    try:
        recorded = dt.datetime.fromisoformat(event["recorded"])
    except (KeyError, TypeError, ValueError):
        return row.seq, f"record {row.seq} has no valid recorded time"
    consistent = (
        row.agent == agent_index(event)
        and row.action == event.get("action")
        and row.entities == _entities_column(event)
        and abs(row.recorded_at - recorded) < dt.timedelta(milliseconds=1)
    )
    if not consistent:
        return row.seq, f"record {row.seq}'s search columns disagree with its content"
    return None


# --- search and export ------------------------------------------------------------------------


@dataclass
class Query:
    """A search of one project's trail; every list is OR-ed, the fields AND-ed."""

    project_id: str | None
    since: dt.datetime | None = None  # inclusive
    after_seq: int = 0
    agents: list[str] = field(default_factory=list)
    entities: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    bounds: list = field(default_factory=list)  # extra (operator, datetime) on recorded_at


def _where(query: Query, with_cursor: bool = True):
    c = _events.c
    clauses = []
    if query.project_id is not None:
        clauses.append(c.project_id == query.project_id)
    if with_cursor and query.after_seq:
        clauses.append(c.seq > query.after_seq)
    if query.since is not None:
        clauses.append(c.recorded_at >= query.since)
    for op, value in query.bounds:
        clauses.append(op(c.recorded_at, value))
    if query.agents:
        clauses.append(c.agent.in_(query.agents))
    if query.actions:
        clauses.append(c.action.in_(query.actions))
    if query.entities:
        clauses.append(or_(*(c.entities.contains(f" {e} ") for e in query.entities)))
    return and_(*clauses) if clauses else None


def _select(columns, query: Query, with_cursor: bool = True):
    statement = select(*columns)
    where = _where(query, with_cursor)
    return statement if where is None else statement.where(where)


def search(engine: Engine, query: Query, count: int) -> tuple[list[dict], int, int | None]:
    """(events with their `id`, total matches, the cursor of the next page or None)."""
    with engine.connect() as conn:
        rows = conn.execute(
            _select([_events.c.seq, _events.c.event], query)
            .order_by(_events.c.seq)
            .limit(count + 1)
        ).all()
        total = conn.execute(_select([func.count()], query, with_cursor=False)).scalar_one()
    page = [_resource(r.seq, r.event) for r in rows[:count]]
    next_after = rows[count - 1].seq if len(rows) > count else None
    return page, total, next_after


def export(engine: Engine, query: Query, batch: int = 1000) -> Iterator[dict]:
    """Every matching event, oldest first, each with its `id` (the sequence number)."""
    after = query.after_seq
    with engine.connect() as conn:
        while True:
            rows = conn.execute(
                _select([_events.c.seq, _events.c.event], query, with_cursor=False)
                .where(_events.c.seq > after)
                .order_by(_events.c.seq)
                .limit(batch)
            ).all()
            if not rows:
                return
            for row in rows:
                yield _resource(row.seq, row.event)
            after = rows[-1].seq


def _resource(seq: int, text: str) -> dict:
    event = json.loads(text)
    return {"resourceType": "AuditEvent", "id": str(seq), **event}
