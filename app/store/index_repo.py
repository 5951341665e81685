"""The index, project by project: every function takes the project and filters by it.

Decision 1 says filtering by project happens in the store layer so that no route can forget
it; this module is that layer for studies, series and instances. Another project's object is
simply not found (None), which the routers turn into 404.

Writes are idempotent, because ingest and STOW retry (decision 5): adding an instance that is
already indexed with the same bytes (same SHA-256) succeeds and changes nothing; the same SOP
Instance UID with different bytes raises InstanceConflict and changes nothing either. Each
write is one transaction, so a crash leaves the counts consistent with the rows.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable, Sequence

from sqlalchemy import Connection, Engine, Insert, Table, bindparam, delete, func, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, select

from app.store.facts import InstanceFacts
from app.store.models import Instance, Series, Study, utc_now

_IN_BATCH = 500  # keys per IN (...) list: far below SQLite's and PostgreSQL's limits


class IndexConflict(ValueError):
    """The index holds something incompatible; the message names no UID (they are the
    project's pseudonymized UIDs, but error texts travel to logs and other projects' eyes)."""


class InstanceConflict(IndexConflict):
    """This SOP Instance UID is already stored with different content."""

    def __init__(self) -> None:
        super().__init__(
            "an instance with this SOP Instance UID is already stored with different content"
        )


class HierarchyConflict(IndexConflict):
    """The series is already indexed under another study."""

    def __init__(self) -> None:
        super().__init__("this Series Instance UID already belongs to another study")


class Added(enum.Enum):
    STORED = "stored"
    ALREADY_PRESENT = "already present"


def _session(engine: Engine) -> Session:
    return Session(engine, expire_on_commit=False)


# Writes go through SQLAlchemy Core on a Connection: a third of the ORM's cost per statement,
# which matters at several hundred instances per second. Reads return the SQLModel objects.
STUDY: Table = Study.__table__  # type: ignore[attr-defined]
SERIES: Table = Series.__table__  # type: ignore[attr-defined]
INSTANCE: Table = Instance.__table__  # type: ignore[attr-defined]


def _insert_if_absent(conn: Connection, table: Table, values: dict) -> bool:
    """INSERT … ON CONFLICT DO NOTHING; True if the row was inserted.

    Atomic in both databases, so two writers adding the same study or series at once both
    succeed and exactly one row exists.
    """
    return conn.execute(_insert_statement(conn.dialect.name, table), values).first() is not None


@functools.cache
def _insert_statement(dialect: str, table: Table) -> Insert:
    """Built once: the values come as parameters (SQLAlchemy compiles it once per set of
    columns), not into a new statement per row, which cost more than the database's work."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    # RETURNING, not rowcount: psycopg reports -1 for an INSERT … ON CONFLICT here.
    return insert(table).on_conflict_do_nothing().returning(table.c.project_id)


# The write path's other statements, built once with bound parameters for the same reason.
# (Parameter names differ from column names: SQLAlchemy reserves those in UPDATE … SET.)
_P_PROJECT, _P_STUDY, _P_SERIES = (
    bindparam("p_project"),
    bindparam("p_study"),
    bindparam("p_series"),
)
_IN_STUDY = (STUDY.c.project_id == _P_PROJECT) & (STUDY.c.study_uid == _P_STUDY)
_SERIES_ROW = (SERIES.c.project_id == _P_PROJECT) & (SERIES.c.series_uid == _P_SERIES)
_COUNT_INSTANCE_IN_STUDY = (
    update(STUDY)
    .where(_IN_STUDY)
    .values(
        number_of_instances=STUDY.c.number_of_instances + 1,
        updated_at=bindparam("p_now", type_=STUDY.c.updated_at.type),
    )
)
_COUNT_INSTANCE_IN_SERIES = (
    update(SERIES)
    .where(_SERIES_ROW)
    .values(number_of_instances=SERIES.c.number_of_instances + 1, revision=SERIES.c.revision + 1)
)
_COUNT_SERIES_IN_STUDY = (
    update(STUDY)
    .where(_IN_STUDY)
    .values(
        number_of_series=STUDY.c.number_of_series + 1,
        modalities=bindparam("p_modalities", type_=STUDY.c.modalities.type),
    )
)
_DIGEST = select(INSTANCE.c.sha256).where(
    INSTANCE.c.project_id == _P_PROJECT, INSTANCE.c.sop_uid == bindparam("p_sop")
)
_SERIES_STUDY = select(SERIES.c.study_uid).where(_SERIES_ROW)
_MODALITIES = (
    select(SERIES.c.modality)
    .distinct()
    .where(SERIES.c.project_id == _P_PROJECT, SERIES.c.study_uid == _P_STUDY)
)


# --- writing -----------------------------------------------------------------------------------


def upsert_instance(engine: Engine, project_id: str, facts: InstanceFacts, blob_key: str) -> Added:
    """Index one stored instance, creating its series and study on first sight.

    Call it only once the blob under `blob_key` is written (decision 5). Study- and
    series-level attributes are those of the first instance seen (as most PACS do).
    Raises InstanceConflict or HierarchyConflict; nothing is written then.
    """
    with engine.connect() as conn:
        known = _digest(conn, project_id, facts.sop_uid)
        if known is not None:
            return _same_bytes(known, facts.sha256)
        try:
            inserted = _add(conn, project_id, facts, blob_key)
        except BaseException:
            conn.rollback()
            raise
        if inserted:
            conn.commit()
            return Added.STORED
        conn.rollback()  # another writer indexed it since we looked: compare with theirs
        known = _digest(conn, project_id, facts.sop_uid)
        if known is None:  # the key is indexed under another SOP UID: cannot happen
            raise IndexConflict("the blob key is already indexed for another instance")
        return _same_bytes(known, facts.sha256)


def _add(conn: Connection, project_id: str, facts: InstanceFacts, blob_key: str) -> bool:
    """The writes of upsert_instance, in one transaction; False if the instance was there."""
    now = utc_now()
    study_row = {"p_project": project_id, "p_study": facts.study_uid}
    # Counting first also locks the study row (PostgreSQL; SQLite has one writer anyway), so
    # writers adding series to one study see each other's series when listing modalities.
    if conn.execute(_COUNT_INSTANCE_IN_STUDY, {**study_row, "p_now": now}).rowcount == 0:
        _insert_if_absent(
            conn,
            STUDY,
            {"project_id": project_id, "study_uid": facts.study_uid, **facts.study,
             "modalities": "", "number_of_series": 0, "number_of_instances": 0,
             "created_at": now, "updated_at": now},
        )  # fmt: skip
        conn.execute(_COUNT_INSTANCE_IN_STUDY, {**study_row, "p_now": now})
    owner = _series_study(conn, project_id, facts.series_uid)
    new_series = False
    if owner is None:
        new_series = _insert_if_absent(
            conn,
            SERIES,
            {"project_id": project_id, "series_uid": facts.series_uid,
             "study_uid": facts.study_uid, **facts.series, "number_of_instances": 0,
             "revision": 0, "created_at": now},
        )  # fmt: skip
        if not new_series:
            owner = _series_study(conn, project_id, facts.series_uid)
    if not new_series and owner != facts.study_uid:
        raise HierarchyConflict()
    if not _insert_if_absent(
        conn,
        INSTANCE,
        {"project_id": project_id, "sop_uid": facts.sop_uid, "series_uid": facts.series_uid,
         "study_uid": facts.study_uid, "sop_class_uid": facts.sop_class_uid, **facts.instance,
         "transfer_syntax_uid": facts.transfer_syntax_uid, "blob_key": blob_key,
         "size": facts.size, "header_length": facts.header_length, "sha256": facts.sha256,
         "created_at": now},
    ):  # fmt: skip
        return False
    conn.execute(_COUNT_INSTANCE_IN_SERIES, {"p_project": project_id, "p_series": facts.series_uid})
    if new_series:
        modalities = _modalities(conn, project_id, facts.study_uid)
        conn.execute(_COUNT_SERIES_IN_STUDY, {**study_row, "p_modalities": modalities})
    return True


def _digest(conn: Connection, project_id: str, sop_uid: str) -> str | None:
    return conn.execute(_DIGEST, {"p_project": project_id, "p_sop": sop_uid}).scalar()


def _series_study(conn: Connection, project_id: str, series_uid: str) -> str | None:
    return conn.execute(_SERIES_STUDY, {"p_project": project_id, "p_series": series_uid}).scalar()


def _same_bytes(known_sha256: str, sha256: str) -> Added:
    if known_sha256 != sha256:
        raise InstanceConflict()
    return Added.ALREADY_PRESENT


def _modalities(conn: Connection, project_id: str, study_uid: str) -> str:
    """ModalitiesInStudy as returned by QIDO: the series' distinct modalities, sorted."""
    found = conn.execute(_MODALITIES, {"p_project": project_id, "p_study": study_uid}).scalars()
    return "\\".join(sorted({m for m in found if m}))


def set_series_metadata(
    engine: Engine, project_id: str, series_uid: str, *, revision: int, key: str, etag: str
) -> bool:
    """Record the series' precomputed metadata if the series is still at `revision`.

    False when an instance was added or removed since the metadata was computed: it is
    stale, and the writer that changed the series will compute it again.
    """
    with engine.begin() as conn:
        result = conn.execute(
            update(SERIES)
            .where(
                SERIES.c.project_id == project_id,
                SERIES.c.series_uid == series_uid,
                SERIES.c.revision == revision,
            )
            .values(
                metadata_key=key,
                metadata_etag=etag,
                metadata_revision=revision,
                metadata_updated_at=utc_now(),
            )
        )
        return result.rowcount == 1


def delete_series(engine: Engine, project_id: str, series_uid: str) -> list[str]:
    """Remove a series and its instances from the index; returns the blob keys to delete.

    The index goes first and the blobs after (the caller deletes them once this returned):
    a crash in between leaves orphan blobs for the sweep, never a row without its blob.
    A study left without series is removed too.
    """
    with engine.begin() as conn:
        study_uid = _series_study(conn, project_id, series_uid)
        if study_uid is None:
            return []
        keys = _drop_series(conn, project_id, [series_uid])
        _recount_or_drop_study(conn, project_id, study_uid)
    return keys


def delete_study(engine: Engine, project_id: str, study_uid: str) -> list[str]:
    """Remove a study, its series and instances; returns the blob keys to delete after."""
    with engine.begin() as conn:
        series_uids = list(
            conn.execute(
                select(SERIES.c.series_uid).where(
                    SERIES.c.project_id == project_id, SERIES.c.study_uid == study_uid
                )
            ).scalars()
        )
        keys = _drop_series(conn, project_id, series_uids)
        conn.execute(
            delete(STUDY).where(STUDY.c.project_id == project_id, STUDY.c.study_uid == study_uid)
        )
    return keys


def _drop_series(conn: Connection, project_id: str, series_uids: Sequence[str]) -> list[str]:
    keys: list[str] = []
    for series_uid in series_uids:
        in_series = (INSTANCE.c.project_id == project_id, INSTANCE.c.series_uid == series_uid)
        keys.extend(conn.execute(select(INSTANCE.c.blob_key).where(*in_series)).scalars())
        the_series = (SERIES.c.project_id == project_id, SERIES.c.series_uid == series_uid)
        metadata = conn.execute(select(SERIES.c.metadata_key).where(*the_series)).scalar()
        if metadata:
            keys.append(metadata)
        conn.execute(delete(INSTANCE).where(*in_series))
        conn.execute(delete(SERIES).where(*the_series))
    return keys


def recompute_counts(engine: Engine, project_id: str, study_uid: str) -> None:
    """Recount a study's series and instances and its modalities from the rows themselves."""
    with engine.begin() as conn:
        _recount_or_drop_study(conn, project_id, study_uid, drop_empty=False)


def _recount_or_drop_study(
    conn: Connection, project_id: str, study_uid: str, *, drop_empty: bool = True
) -> None:
    in_study = (SERIES.c.project_id == project_id, SERIES.c.study_uid == study_uid)
    series_uids = list(conn.execute(select(SERIES.c.series_uid).where(*in_study)).scalars())
    the_study = (STUDY.c.project_id == project_id, STUDY.c.study_uid == study_uid)
    if not series_uids and drop_empty:
        conn.execute(delete(STUDY).where(*the_study))
        return
    per_series: dict[str, int] = {
        uid: count
        for uid, count in conn.execute(
            select(INSTANCE.c.series_uid, func.count())
            .where(INSTANCE.c.project_id == project_id, INSTANCE.c.study_uid == study_uid)
            .group_by(INSTANCE.c.series_uid)
        ).all()
    }
    for uid in series_uids:
        count = per_series.get(uid, 0)
        conn.execute(
            update(SERIES)
            .where(
                SERIES.c.project_id == project_id,
                SERIES.c.series_uid == uid,
                SERIES.c.number_of_instances != count,
            )
            .values(number_of_instances=count, revision=SERIES.c.revision + 1)
        )
    conn.execute(
        update(STUDY)
        .where(*the_study)
        .values(
            number_of_series=len(series_uids),
            number_of_instances=sum(per_series.get(uid, 0) for uid in series_uids),
            modalities=_modalities(conn, project_id, study_uid),
            updated_at=utc_now(),
        )
    )


# --- reading -----------------------------------------------------------------------------------


def _study_query(project_id: str, study_uid: str):
    return select(Study).where(Study.project_id == project_id, Study.study_uid == study_uid)


def _series(session: Session, project_id: str, series_uid: str) -> Series | None:
    return session.exec(
        select(Series).where(Series.project_id == project_id, Series.series_uid == series_uid)
    ).first()


def _instance(session: Session, project_id: str, sop_uid: str) -> Instance | None:
    return session.exec(
        select(Instance).where(Instance.project_id == project_id, Instance.sop_uid == sop_uid)
    ).first()


def get_study(engine: Engine, project_id: str, study_uid: str) -> Study | None:
    with _session(engine) as session:
        return session.exec(_study_query(project_id, study_uid)).first()


def get_series(engine: Engine, project_id: str, series_uid: str) -> Series | None:
    with _session(engine) as session:
        return _series(session, project_id, series_uid)


def stored_digest(engine: Engine, project_id: str, sop_uid: str) -> str | None:
    """The SHA-256 of the instance's stored bytes, None if not indexed: the cheap check a
    re-run makes before writing anything."""
    with engine.connect() as conn:
        return _digest(conn, project_id, sop_uid)


def get_instance(engine: Engine, project_id: str, sop_uid: str) -> Instance | None:
    with _session(engine) as session:
        return _instance(session, project_id, sop_uid)


def list_studies(engine: Engine, project_id: str) -> list[Study]:
    with _session(engine) as session:
        return list(
            session.exec(
                select(Study).where(Study.project_id == project_id).order_by(Study.study_uid)
            )
        )


def list_series(engine: Engine, project_id: str, study_uid: str | None = None) -> list[Series]:
    query = select(Series).where(Series.project_id == project_id)
    if study_uid is not None:
        query = query.where(Series.study_uid == study_uid)
    with _session(engine) as session:
        return list(session.exec(query.order_by(Series.study_uid, Series.series_uid)))


def list_instances(
    engine: Engine,
    project_id: str,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> list[Instance]:
    """Instances in a stable order: by series, then InstanceNumber (missing last), then UID."""
    query = select(Instance).where(Instance.project_id == project_id)
    if study_uid is not None:
        query = query.where(Instance.study_uid == study_uid)
    if series_uid is not None:
        query = query.where(Instance.series_uid == series_uid)
    with _session(engine) as session:
        found = list(session.exec(query))
    return sorted(found, key=_instance_order)


def _instance_order(instance: Instance) -> tuple:
    number = instance.instance_number
    return (instance.series_uid, number is None, number or 0, instance.sop_uid)


def referenced_keys(engine: Engine, project_id: str, keys: Iterable[str]) -> set[str]:
    """Which of `keys` an index row of the project points at (instance or series metadata)."""
    wanted = list(keys)
    found: set[str] = set()
    with _session(engine) as session:
        for start in range(0, len(wanted), _IN_BATCH):
            batch = wanted[start : start + _IN_BATCH]
            found.update(
                session.exec(
                    select(Instance.blob_key).where(
                        Instance.project_id == project_id, Instance.blob_key.in_(batch)
                    )
                ).all()
            )
            found.update(
                key
                for key in session.exec(
                    select(Series.metadata_key).where(
                        Series.project_id == project_id, Series.metadata_key.in_(batch)
                    )
                ).all()
                if key is not None
            )
    return found
