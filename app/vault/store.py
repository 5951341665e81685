"""The Vault: project keys, blob data keys and linkage records in their own database, sealed.

Every secret column is AES-256-GCM (see `crypto`) bound to its project, purpose and row.
Re-identification is the only way back and leaves a record in the vault, found or not.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, Table, create_engine, delete, event, insert, select
from sqlalchemy.exc import ArgumentError, IntegrityError

from app.config import Settings
from app.timestamps import utc_now
from app.vault import schema
from app.vault.crypto import KEY_BYTES, Sealer, associated_data
from app.vault.errors import (
    LinkageConflict,
    LinkageNotFound,
    ProjectKeyExists,
    ProjectKeyMissing,
    VaultError,
)
from app.vault.masterkey import load_master_key

log = logging.getLogger(__name__)

_KEY_CHECK = "master-key-check"
_PAD = 64  # linkage plaintexts are padded so ciphertext length hides identifier length
_IN_CHUNK = 500  # bind parameters per IN (...) query, well under every backend's limit
_RETRIES = 3
_LOGGING_NAME = "vault"


class Vault:
    """Project keys and pseudonym linkage for all projects, in one separate database."""

    def __init__(self, database_url: str, master_key: bytes) -> None:
        self._sealer = Sealer(master_key)
        # Sealed values may reach neither logs nor exception messages: bound parameters are
        # hidden, and the engine's logger stays at WARNING (INFO logs statements, DEBUG rows).
        logging.getLogger(f"sqlalchemy.engine.Engine.{_LOGGING_NAME}").setLevel(logging.WARNING)
        try:
            self._engine = create_engine(
                database_url, hide_parameters=True, logging_name=_LOGGING_NAME
            )
        except ArgumentError:
            raise VaultError("the vault database URL is not a valid SQLAlchemy URL") from None
        if self._engine.dialect.name == "sqlite":
            # deleted rows (a destroyed key) are zeroed on disk, not left in free pages
            event.listen(self._engine, "connect", _sqlite_secure_delete)
        try:
            self._create_tables()
            self._check_master_key()
        except BaseException:
            self._engine.dispose()
            raise

    @classmethod
    def from_settings(cls, settings: Settings) -> Vault:
        return cls(settings.vault_database_url, load_master_key(settings))

    def __repr__(self) -> str:
        return f"Vault(backend={self._engine.dialect.name!r})"

    def close(self) -> None:
        """Release database connections (needed before a test drops its database)."""
        self._engine.dispose()

    def __enter__(self) -> Vault:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- project keys -------------------------------------------------------------------

    def create_project_key(self, project_id: str) -> bytes:
        """A new random 256-bit project secret, stored wrapped; refuses to replace one."""
        _check_text(project_id, "project_id", schema.PROJECT_ID_MAX)
        key, row = self._new_key(project_id, _aad_project_key(project_id))
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(schema.project_keys), row)
        except IntegrityError:
            raise ProjectKeyExists(f"project {project_id!r} already has a key") from None
        log.info("vault: created key for project %s", project_id)
        return key

    def project_key(self, project_id: str) -> bytes:
        _check_text(project_id, "project_id", schema.PROJECT_ID_MAX)
        wrapped = self._wrapped(schema.project_keys, project_id)
        if wrapped is None:
            raise ProjectKeyMissing(
                f"project {project_id!r} has no key (never created or destroyed)"
            )
        return self._sealer.open(wrapped, _aad_project_key(project_id))

    def has_project(self, project_id: str) -> bool:
        _check_text(project_id, "project_id", schema.PROJECT_ID_MAX)
        with self._engine.connect() as conn:
            return self._project_exists(conn, project_id)

    def destroy_project_key(self, project_id: str) -> int:
        """Crypto-shredding: the key, the blobs' data key and every linkage go; the
        re-identification log stays. Without the data key, no surviving blob can be read.

        Returns how many linkage records were removed (app.retention counts them)."""
        _check_text(project_id, "project_id", schema.PROJECT_ID_MAX)
        with self._engine.begin() as conn:
            # before the project key: its foreign key (PostgreSQL) would otherwise refuse
            conn.execute(
                delete(schema.data_keys).where(schema.data_keys.c.project_id == project_id)
            )
            gone = conn.execute(
                delete(schema.project_keys).where(schema.project_keys.c.project_id == project_id)
            ).rowcount
            if not gone:
                raise ProjectKeyMissing(f"project {project_id!r} has no key to destroy")
            linkages = conn.execute(
                delete(schema.linkages).where(schema.linkages.c.project_id == project_id)
            ).rowcount
        log.info("vault: destroyed key, data key and linkage of project %s", project_id)
        return linkages

    # --- data keys (encryption at rest of blobs) ------------------------------------------

    def data_key(self, project_id: str, *, create: bool = False) -> bytes:
        """The project's 256-bit data key for its blobs (app.store.encryption).

        With `create`, a missing one is made (random, stored wrapped like the project key) so
        the first blob written brings it; only for a project that has its project key, so a
        purged project never gets a new one. Two processes creating it together both end up
        with the one that was inserted first. Raises ProjectKeyMissing when there is none.
        """
        _check_text(project_id, "project_id", schema.PROJECT_ID_MAX)
        wrapped = self._wrapped(schema.data_keys, project_id)
        if wrapped is None:
            if not create:
                raise ProjectKeyMissing(
                    f"project {project_id!r} has no data key (never created, or destroyed "
                    "by a purge)"
                )
            return self._create_data_key(project_id)
        return self._sealer.open(wrapped, _aad_data_key(project_id))

    def _create_data_key(self, project_id: str) -> bytes:
        key, row = self._new_key(project_id, _aad_data_key(project_id))
        try:
            with self._engine.begin() as conn:
                if not self._project_exists(conn, project_id):
                    raise ProjectKeyMissing(
                        f"project {project_id!r} has no key; create it before storing blobs"
                    )
                conn.execute(insert(schema.data_keys), row)
        except IntegrityError:
            # Another process inserted one first (theirs is the key), or the project key went
            # meanwhile (the foreign key refused ours): read what is there.
            return self.data_key(project_id)
        log.info("vault: created data key for project %s", project_id)
        return key

    def _new_key(self, project_id: str, aad: bytes) -> tuple[bytes, dict[str, Any]]:
        """A new random 256-bit key, and its row: wrapped by the master key, bound by `aad`."""
        key = secrets.token_bytes(KEY_BYTES)
        wrapped = self._sealer.seal(key, aad)
        return key, {"project_id": project_id, "wrapped_key": wrapped, "created_at": utc_now()}

    def _wrapped(self, table: Table, project_id: str) -> bytes | None:
        """A wrapped key of `table` (project keys, data keys), None when there is none."""
        with self._engine.connect() as conn:
            return conn.scalar(select(table.c.wrapped_key).where(table.c.project_id == project_id))

    # --- linkage ------------------------------------------------------------------------

    def record_linkage(self, project_id: str, pseudonym: str, identifiers: dict[str, str]) -> None:
        """Idempotent: recording the same pseudonym with the same identifiers is a no-op."""
        self.record_linkages(project_id, {pseudonym: identifiers})

    def record_linkages(self, project_id: str, items: dict[str, dict[str, str]]) -> None:
        """Record many linkages in one transaction (all or none).

        A pseudonym already linked to the same identifiers is skipped; linked to different
        ones raises LinkageConflict (the vault never overwrites a way back). When another
        process inserts the same pseudonyms concurrently, the insert fails on the primary
        key and the whole transaction is retried, which then sees and skips its rows.
        """
        _check_text(project_id, "project_id", schema.PROJECT_ID_MAX)
        wanted = {p: _check_identifiers(ids) for p, ids in items.items()}
        for pseudonym in wanted:
            _check_text(pseudonym, "pseudonym", schema.PSEUDONYM_MAX)
        if not wanted:
            return
        for _attempt in range(_RETRIES):
            try:
                with self._engine.begin() as conn:
                    self._insert_missing(conn, project_id, wanted)
                return
            except IntegrityError:
                continue
        raise VaultError(
            f"could not record linkage in project {project_id!r}: writers kept colliding"
        )

    def _insert_missing(
        self, conn: Connection, project_id: str, wanted: dict[str, dict[str, str]]
    ) -> None:
        if not self._project_exists(conn, project_id):
            raise ProjectKeyMissing(f"project {project_id!r} has no key; create it before linking")
        existing = self._sealed_linkages(conn, project_id, wanted)
        rows = []
        now = utc_now()
        for pseudonym, identifiers in wanted.items():
            if pseudonym in existing:
                if self._open_linkage(project_id, pseudonym, existing[pseudonym]) != identifiers:
                    raise LinkageConflict(
                        f"a pseudonym of project {project_id!r} is already linked to "
                        f"different identifiers; refusing to overwrite it"
                    )
                continue
            rows.append(
                {
                    "project_id": project_id,
                    "pseudonym": pseudonym,
                    "sealed_identifiers": self._seal_linkage(project_id, pseudonym, identifiers),
                    "created_at": now,
                }
            )
        if rows:
            conn.execute(insert(schema.linkages), rows)

    # --- re-identification --------------------------------------------------------------

    def reidentify(
        self, project_id: str, pseudonym: str, actor: str, reason: str = ""
    ) -> dict[str, str]:
        """The only way back. The attempt is recorded, in the same transaction, found or not."""
        _check_text(project_id, "project_id", schema.PROJECT_ID_MAX)
        _check_text(pseudonym, "pseudonym", schema.PSEUDONYM_MAX)
        _check_text(actor, "actor", schema.ACTOR_MAX)
        if not isinstance(reason, str):
            raise TypeError("reason must be a string")
        identifiers: dict[str, str] | None = None
        failure: VaultError | None = None
        with self._engine.begin() as conn:
            sealed = self._sealed_linkages(conn, project_id, [pseudonym]).get(pseudonym)
            if sealed is None:
                outcome = "not-found"
                failure = LinkageNotFound(
                    f"no linkage for this pseudonym in project {project_id!r}"
                    if self._project_exists(conn, project_id)
                    else f"project {project_id!r} has no vault key (never created, or purged: "
                    "its pseudonyms can no longer be linked to anyone)"
                )
            else:
                try:
                    identifiers = self._open_linkage(project_id, pseudonym, sealed)
                    outcome = "found"
                except VaultError as exc:
                    outcome, failure = "error", exc
            conn.execute(
                insert(schema.reidentifications),
                {
                    "project_id": project_id,
                    "pseudonym": pseudonym,
                    "actor": actor,
                    "reason": reason,
                    "at": utc_now(),
                    "outcome": outcome,
                },
            )
        log.info("vault: re-identification in project %s by %s: %s", project_id, actor, outcome)
        if failure is not None:
            raise failure
        assert identifiers is not None
        return identifiers

    def reidentification_log(self, project_id: str) -> list[dict[str, Any]]:
        """Every re-identification attempt for the project, oldest first (no identifiers)."""
        _check_text(project_id, "project_id", schema.PROJECT_ID_MAX)
        t = schema.reidentifications
        query = (
            select(t.c.project_id, t.c.pseudonym, t.c.actor, t.c.reason, t.c.at, t.c.outcome)
            .where(t.c.project_id == project_id)
            .order_by(t.c.id)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [dict(row) for row in rows]

    # --- internals ----------------------------------------------------------------------

    def _create_tables(self) -> None:
        try:
            schema.metadata.create_all(self._engine)
        except Exception:  # noqa: BLE001  (retried once below; a real error re-raises)
            # Two processes opening a fresh vault together can race on CREATE TABLE;
            # the second pass sees the other's tables (and re-raises a genuine error).
            schema.metadata.create_all(self._engine)

    def _check_master_key(self) -> None:
        """Refuse a master key other than the one this vault was first opened with."""
        aad = associated_data("master-key-check", "")
        query = select(schema.meta.c.value).where(schema.meta.c.name == _KEY_CHECK)
        with self._engine.connect() as conn:
            sealed = conn.scalar(query)
        if sealed is None:
            try:
                with self._engine.begin() as conn:
                    conn.execute(
                        insert(schema.meta),
                        {"name": _KEY_CHECK, "value": self._sealer.seal(b"imaging-depot", aad)},
                    )
                return
            except IntegrityError:
                with self._engine.connect() as conn:  # another process initialised it first
                    sealed = conn.scalar(query)
        try:
            self._sealer.open(sealed, aad)
        except VaultError:
            raise VaultError("the master key does not match this vault's database") from None

    @staticmethod
    def _project_exists(conn: Connection, project_id: str) -> bool:
        t = schema.project_keys
        return conn.scalar(select(t.c.project_id).where(t.c.project_id == project_id)) is not None

    @staticmethod
    def _sealed_linkages(
        conn: Connection, project_id: str, pseudonyms: Iterable[str]
    ) -> dict[str, bytes]:
        t = schema.linkages
        names = list(pseudonyms)
        found: dict[str, bytes] = {}
        for start in range(0, len(names), _IN_CHUNK):
            query = select(t.c.pseudonym, t.c.sealed_identifiers).where(
                t.c.project_id == project_id, t.c.pseudonym.in_(names[start : start + _IN_CHUNK])
            )
            found.update({row.pseudonym: row.sealed_identifiers for row in conn.execute(query)})
        return found

    def _seal_linkage(self, project_id: str, pseudonym: str, identifiers: dict[str, str]) -> bytes:
        plain = json.dumps(identifiers, sort_keys=True, ensure_ascii=False).encode()
        plain += b" " * (-len(plain) % _PAD)  # JSON ignores trailing whitespace
        return self._sealer.seal(plain, _aad_linkage(project_id, pseudonym))

    def _open_linkage(self, project_id: str, pseudonym: str, sealed: bytes) -> dict[str, str]:
        return json.loads(self._sealer.open(sealed, _aad_linkage(project_id, pseudonym)))


def _aad_project_key(project_id: str) -> bytes:
    return associated_data("project-key", project_id)


def _aad_data_key(project_id: str) -> bytes:
    return associated_data("data-key", project_id)


def _aad_linkage(project_id: str, pseudonym: str) -> bytes:
    return associated_data("linkage", project_id, pseudonym)


def _check_text(value: object, what: str, max_len: int) -> None:
    """Reject early and portably (SQLite would accept an over-long value, PostgreSQL not)."""
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise ValueError(f"{what} must be a non-empty string of at most {max_len} characters")


def _check_identifiers(identifiers: object) -> dict[str, str]:
    """A non-empty str → str mapping; errors never echo the values (they are identifiers)."""
    if not isinstance(identifiers, Mapping) or not identifiers:
        raise TypeError("identifiers must be a non-empty mapping of str to str")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in identifiers.items()):
        raise TypeError("identifiers must map str to str (values not shown: they identify)")
    return dict(identifiers)


def _sqlite_secure_delete(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA secure_delete = ON")
