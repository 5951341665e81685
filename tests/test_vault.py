"""The vault: project keys and linkage, sealed under the master key, in its own database.

Core behaviour runs against SQLite and PostgreSQL (a throwaway database on 127.0.0.1:5432;
the project's machines always run it, so its absence fails rather than skips).
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import sqlite3
import stat
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import MetaData, create_engine, delete, func, select, text, update
from sqlalchemy.exc import OperationalError

from app.config import Settings
from app.vault import (
    LinkageConflict,
    LinkageNotFound,
    ProjectKeyExists,
    ProjectKeyMissing,
    Vault,
    VaultError,
    load_master_key,
    parse_master_key,
    schema,
)

POSTGRES_ADMIN_URL = os.environ.get(
    "DEPOT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
PATIENT_ID = "PAT-7731-SYNTHETIC"
ISSUER = "HOSP-SYNTHETIC-ISSUER"
IDENTIFIERS = {"PatientID": PATIENT_ID, "IssuerOfPatientID": ISSUER}
PSEUDO = "a3f1c9e07b2d4e58a3f1c9e07b2d4e58"


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def master_key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'vault.sqlite'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throwaway database, dropped afterwards; fails (not skips) if PostgreSQL is down."""
    name = f"depot_vault_test_{secrets.token_hex(6)}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError:
        admin.dispose()
        pytest.fail(
            "PostgreSQL is not reachable at 127.0.0.1:5432 (user postgres, trust auth); "
            "start it with `pg_ctlcluster <version> main start`"
        )
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def open_vault(db_url: str, master_key: bytes) -> Iterator[Callable[..., Vault]]:
    """Opens vaults on the test database (default: the test's master key), closes them all."""
    opened: list[Vault] = []

    def _open(key: bytes | None = None, url: str | None = None) -> Vault:
        vault = Vault(url or db_url, master_key if key is None else key)
        opened.append(vault)
        return vault

    yield _open
    for vault in opened:
        vault.close()


@pytest.fixture
def vault(open_vault: Callable[..., Vault]) -> Vault:
    return open_vault()


def stored_values(url: str) -> list[object]:
    """Every value of every row of every table in the database, however it is stored."""
    engine = create_engine(url, logging_name="test_helper")
    tables = MetaData()
    tables.reflect(engine)
    try:
        with engine.connect() as conn:
            return [v for t in tables.sorted_tables for row in conn.execute(select(t)) for v in row]
    finally:
        engine.dispose()


def as_bytes(value: object) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode()


def full_text(exc: BaseException) -> str:
    """Message and repr of the exception and of every exception chained to it.

    That is what a log handler records besides source lines (which show test code here).
    """
    parts: list[str] = []
    current: BaseException | None = exc
    while current is not None:
        parts += [*traceback.format_exception_only(current), repr(current)]
        current = current.__cause__ or current.__context__
    return "".join(parts)


def count_linkages(url: str, project_id: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.scalar(
                select(func.count())
                .select_from(schema.linkages)
                .where(schema.linkages.c.project_id == project_id)
            )
    finally:
        engine.dispose()


def execute(url: str, statement) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(statement)
    finally:
        engine.dispose()


# --- project keys -----------------------------------------------------------------------


def test_project_key_is_created_once_and_stable_across_instances(open_vault) -> None:
    first = open_vault()
    key = first.create_project_key("lung-2026")
    assert isinstance(key, bytes) and len(key) == 32
    assert first.project_key("lung-2026") == key
    first.close()
    assert open_vault().project_key("lung-2026") == key
    assert open_vault().has_project("lung-2026")


def test_second_create_raises_project_key_exists_and_keeps_the_key(vault: Vault) -> None:
    key = vault.create_project_key("lung-2026")
    with pytest.raises(ProjectKeyExists):
        vault.create_project_key("lung-2026")
    assert vault.project_key("lung-2026") == key


def test_two_projects_have_different_keys(vault: Vault) -> None:
    assert vault.create_project_key("a") != vault.create_project_key("b")


def test_unknown_project_has_no_key(vault: Vault) -> None:
    assert not vault.has_project("nope")
    with pytest.raises(ProjectKeyMissing):
        vault.project_key("nope")


def test_overlong_project_id_is_refused_on_every_backend(vault: Vault) -> None:
    with pytest.raises(ValueError):
        vault.create_project_key("p" * (schema.PROJECT_ID_MAX + 1))


# --- secrecy at rest --------------------------------------------------------------------


def test_sqlite_file_never_contains_raw_key_or_patient_id(sqlite_url: str, master_key) -> None:
    with Vault(sqlite_url, master_key) as vault:
        key = vault.create_project_key("lung-2026")
        vault.record_linkage("lung-2026", PSEUDO, IDENTIFIERS)
    files = list(Path(sqlite_url.removeprefix("sqlite:///")).parent.glob("vault.sqlite*"))
    data = b"".join(f.read_bytes() for f in files)
    assert PSEUDO.encode() in data  # the search does see stored text
    for secret in (key, master_key, PATIENT_ID.encode(), ISSUER.encode()):
        assert secret not in data
    assert key.hex().encode() not in data and base64.b64encode(key) not in data


def test_no_stored_value_contains_raw_key_or_patient_id(vault: Vault, db_url: str) -> None:
    key = vault.create_project_key("lung-2026")
    vault.record_linkage("lung-2026", PSEUDO, IDENTIFIERS)
    vault.reidentify("lung-2026", PSEUDO, actor="dpo@example.org", reason="audit")
    blob = b"\x00".join(as_bytes(v) for v in stored_values(db_url))
    assert PSEUDO.encode() in blob
    for secret in (key, PATIENT_ID.encode(), ISSUER.encode(), key.hex().encode()):
        assert secret not in blob


def test_wrong_master_key_is_refused_with_a_vault_error(open_vault) -> None:
    open_vault().create_project_key("lung-2026")
    wrong = os.urandom(32)
    with pytest.raises(VaultError) as caught:
        open_vault(key=wrong)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert wrong.hex() not in full_text(caught.value)


def test_wrong_master_key_cannot_unwrap_a_row(open_vault, db_url: str) -> None:
    open_vault().create_project_key("lung-2026")
    execute(db_url, delete(schema.meta))  # without the start-up check, rows must still refuse
    with pytest.raises(VaultError) as caught:
        open_vault(key=os.urandom(32)).project_key("lung-2026")
    assert type(caught.value) is VaultError
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_wrapped_key_moved_to_another_project_fails(vault: Vault, db_url: str) -> None:
    key_a = vault.create_project_key("a")
    vault.create_project_key("b")
    t = schema.project_keys
    execute(
        db_url,
        update(t)
        .where(t.c.project_id == "b")
        .values(wrapped_key=select(t.c.wrapped_key).where(t.c.project_id == "a").scalar_subquery()),
    )
    with pytest.raises(VaultError):
        vault.project_key("b")
    assert vault.project_key("a") == key_a


def test_linkage_moved_to_another_row_fails_and_is_logged(vault: Vault, db_url: str) -> None:
    for project in ("a", "b"):
        vault.create_project_key(project)
    vault.record_linkage("a", "p1", IDENTIFIERS)
    vault.record_linkage("a", "p2", {"PatientID": "other"})
    vault.record_linkage("b", "p1", {"PatientID": "other"})
    t = schema.linkages
    sealed = select(t.c.sealed_identifiers).where(t.c.project_id == "a", t.c.pseudonym == "p1")
    for project, pseudonym in (("a", "p2"), ("b", "p1")):
        execute(
            db_url,
            update(t)
            .where(t.c.project_id == project, t.c.pseudonym == pseudonym)
            .values(sealed_identifiers=sealed.scalar_subquery()),
        )
        with pytest.raises(VaultError) as caught:
            vault.reidentify(project, pseudonym, actor="dpo")
        assert PATIENT_ID not in full_text(caught.value)
        assert vault.reidentification_log(project)[-1]["outcome"] == "error"
    assert vault.reidentify("a", "p1", actor="dpo") == IDENTIFIERS


# --- linkage ----------------------------------------------------------------------------


def test_recording_the_same_linkage_twice_is_a_no_op(vault: Vault, db_url: str) -> None:
    vault.create_project_key("p")
    vault.record_linkage("p", PSEUDO, IDENTIFIERS)
    before = stored_values(db_url)
    vault.record_linkage("p", PSEUDO, dict(reversed(IDENTIFIERS.items())))
    vault.record_linkages("p", {PSEUDO: IDENTIFIERS})
    assert stored_values(db_url) == before  # nothing rewritten, not even re-encrypted
    assert count_linkages(db_url, "p") == 1
    assert vault.reidentify("p", PSEUDO, actor="dpo") == IDENTIFIERS


def test_different_identifiers_for_a_linked_pseudonym_are_refused(vault: Vault) -> None:
    vault.create_project_key("p")
    vault.record_linkage("p", PSEUDO, IDENTIFIERS)
    with pytest.raises(LinkageConflict) as caught:
        vault.record_linkage("p", PSEUDO, {"PatientID": "PAT-OTHER-SYNTHETIC"})
    text_ = full_text(caught.value)
    assert PATIENT_ID not in text_ and "PAT-OTHER-SYNTHETIC" not in text_
    assert vault.reidentify("p", PSEUDO, actor="dpo") == IDENTIFIERS


def test_batch_is_all_or_nothing(vault: Vault, db_url: str) -> None:
    vault.create_project_key("p")
    vault.record_linkage("p", "taken", IDENTIFIERS)
    batch = {f"new-{i}": {"PatientID": f"id-{i}"} for i in range(700)}  # over one IN chunk
    with pytest.raises(LinkageConflict):
        vault.record_linkages("p", {**batch, "taken": {"PatientID": "different"}})
    assert count_linkages(db_url, "p") == 1
    vault.record_linkages("p", batch)
    assert count_linkages(db_url, "p") == 701
    assert vault.reidentify("p", "new-650", actor="dpo") == {"PatientID": "id-650"}


def test_linkage_needs_an_existing_project_key(vault: Vault) -> None:
    with pytest.raises(ProjectKeyMissing):
        vault.record_linkage("never-created", PSEUDO, IDENTIFIERS)


def test_concurrent_insert_of_same_pseudonym_is_caught_and_reread(
    open_vault, monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    """Process B checked before process A committed: B's insert collides, B re-reads."""
    a, b = open_vault(), open_vault()
    a.create_project_key("p")
    a.record_linkage("p", PSEUDO, IDENTIFIERS)
    calls: list[int] = []
    real = b._sealed_linkages

    def stale_first_read(conn, project_id, pseudonyms):
        calls.append(1)
        return {} if len(calls) == 1 else real(conn, project_id, pseudonyms)

    monkeypatch.setattr(b, "_sealed_linkages", stale_first_read)
    b.record_linkage("p", PSEUDO, IDENTIFIERS)
    assert len(calls) == 2
    assert count_linkages(db_url, "p") == 1


def test_concurrent_writers_record_the_same_pseudonyms(open_vault, db_url: str) -> None:
    vaults = [open_vault() for _ in range(4)]
    vaults[0].create_project_key("p")
    items = {f"ps-{i}": {"PatientID": f"id-{i}"} for i in range(50)}
    barrier, errors = threading.Barrier(len(vaults)), []

    def write(vault: Vault) -> None:
        barrier.wait()
        try:
            for pseudonym, identifiers in items.items():
                vault.record_linkage("p", pseudonym, identifiers)
        except Exception as exc:  # noqa: BLE001  (reported below, with the thread failure)
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(v,)) for v in vaults]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert count_linkages(db_url, "p") == 50


# --- re-identification ------------------------------------------------------------------


def test_reidentify_returns_identifiers_and_logs_the_call(vault: Vault) -> None:
    vault.create_project_key("p")
    vault.record_linkage("p", PSEUDO, IDENTIFIERS)
    assert vault.reidentify("p", PSEUDO, actor="dpo@example.org", reason="incidental finding") == (
        IDENTIFIERS
    )
    [entry] = vault.reidentification_log("p")
    assert {k: entry[k] for k in ("project_id", "pseudonym", "actor", "reason", "outcome")} == {
        "project_id": "p",
        "pseudonym": PSEUDO,
        "actor": "dpo@example.org",
        "reason": "incidental finding",
        "outcome": "found",
    }
    assert entry["at"].utcoffset().total_seconds() == 0
    assert PATIENT_ID not in repr(entry)


def test_failed_lookup_is_logged_as_not_found_and_raises(vault: Vault) -> None:
    vault.create_project_key("p")
    vault.record_linkage("p", PSEUDO, IDENTIFIERS)
    vault.reidentify("p", PSEUDO, actor="first")
    with pytest.raises(LinkageNotFound):
        vault.reidentify("p", "unknown-pseudonym", actor="second", reason="typo?")
    log = vault.reidentification_log("p")
    assert [(e["actor"], e["pseudonym"], e["outcome"]) for e in log] == [
        ("first", PSEUDO, "found"),
        ("second", "unknown-pseudonym", "not-found"),
    ]
    assert log[0]["at"] <= log[1]["at"]
    assert vault.reidentification_log("other-project") == []


def test_reidentify_requires_an_actor(vault: Vault) -> None:
    vault.create_project_key("p")
    vault.record_linkage("p", PSEUDO, IDENTIFIERS)
    with pytest.raises(ValueError):
        vault.reidentify("p", PSEUDO, actor="")
    assert vault.reidentification_log("p") == []


# --- crypto-shredding -------------------------------------------------------------------


def test_destroy_project_key_shreds_key_and_linkage_and_keeps_the_log(
    vault: Vault, db_url: str
) -> None:
    vault.create_project_key("p")
    key_q = vault.create_project_key("q")
    vault.record_linkage("p", PSEUDO, IDENTIFIERS)
    vault.record_linkage("q", PSEUDO, IDENTIFIERS)
    vault.reidentify("p", PSEUDO, actor="dpo")

    vault.destroy_project_key("p")

    assert not vault.has_project("p")
    with pytest.raises(ProjectKeyMissing):
        vault.project_key("p")
    with pytest.raises(LinkageNotFound):
        vault.reidentify("p", PSEUDO, actor="dpo")
    with pytest.raises(ProjectKeyMissing):
        vault.record_linkage("p", PSEUDO, IDENTIFIERS)
    with pytest.raises(ProjectKeyMissing):
        vault.destroy_project_key("p")
    assert count_linkages(db_url, "p") == 0
    assert [e["outcome"] for e in vault.reidentification_log("p")] == ["found", "not-found"]
    assert vault.project_key("q") == key_q  # the other project is untouched
    assert vault.reidentify("q", PSEUDO, actor="dpo") == IDENTIFIERS


def test_destroyed_key_leaves_no_bytes_in_the_sqlite_file(
    sqlite_url: str, master_key, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stock SQLite leaves deleted rows in free space (Debian's build zeroes them by default):
    # start every connection with secure_delete off, as on such a build.
    real_connect = sqlite3.dbapi2.connect

    def stock_connect(*args, **kwargs):
        conn = real_connect(*args, **kwargs)
        conn.execute("PRAGMA secure_delete = OFF")
        return conn

    monkeypatch.setattr(sqlite3.dbapi2, "connect", stock_connect)
    with Vault(sqlite_url, master_key) as vault:
        vault.create_project_key("p")
        vault.record_linkage("p", PSEUDO, IDENTIFIERS)
        sealed = [as_bytes(v) for v in stored_values(sqlite_url) if isinstance(v, bytes)]
        vault.destroy_project_key("p")
    data = Path(sqlite_url.removeprefix("sqlite:///")).read_bytes()
    assert len(sealed) >= 3  # key check, wrapped key, linkage
    assert sum(blob in data for blob in sealed) == 1  # only the master-key check remains


# --- master key -------------------------------------------------------------------------


@pytest.fixture
def embedded_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.delenv("DEPOT_VAULT_KEY", raising=False)
    monkeypatch.delenv("DEPOT_VAULT_URL", raising=False)
    return Settings(data_dir=tmp_path / "data", vault_key="", vault_url="")


def test_key_file_is_created_0600_once_and_reused(embedded_settings: Settings) -> None:
    key = load_master_key(embedded_settings)
    path = embedded_settings.vault_key_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(key) == 32 and load_master_key(embedded_settings) == key
    assert [p.name for p in path.parent.iterdir()] == ["vault.key"]  # no temporary left over


def test_key_file_created_0600_even_with_a_permissive_umask(embedded_settings: Settings) -> None:
    old = os.umask(0)
    try:
        load_master_key(embedded_settings)
    finally:
        os.umask(old)
    assert stat.S_IMODE(embedded_settings.vault_key_file.stat().st_mode) == 0o600


def test_group_or_world_readable_key_file_is_refused(embedded_settings: Settings) -> None:
    key = load_master_key(embedded_settings)
    path = embedded_settings.vault_key_file
    path.chmod(0o644)
    with pytest.raises(VaultError, match="chmod 600") as caught:
        load_master_key(embedded_settings)
    text_ = full_text(caught.value)
    assert key.hex() not in text_ and base64.b64encode(key).decode() not in text_


def test_processes_starting_together_share_one_key_file(embedded_settings: Settings) -> None:
    barrier, keys = threading.Barrier(8), []

    def load() -> None:
        barrier.wait()
        keys.append(load_master_key(embedded_settings))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 8 and len(set(keys)) == 1


def test_env_key_is_accepted_as_base64_and_hex_and_wins_over_the_file(
    embedded_settings: Settings,
) -> None:
    raw = os.urandom(32)
    for encoded in (
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        raw.hex(),
        raw.hex().upper(),
    ):
        settings = embedded_settings.model_copy(update={"vault_key": f" {encoded}\n"})
        assert load_master_key(settings) == raw
    assert not embedded_settings.vault_key_file.exists()


@pytest.mark.parametrize(
    "encode", [lambda b: base64.b64encode(b).decode(), lambda b: b.hex()], ids=["base64", "hex"]
)
def test_env_key_of_31_bytes_is_rejected(encode, embedded_settings: Settings) -> None:
    short = os.urandom(31)
    settings = embedded_settings.model_copy(update={"vault_key": encode(short)})
    with pytest.raises(VaultError, match="31 bytes") as caught:
        load_master_key(settings)
    assert encode(short) not in full_text(caught.value)


@pytest.mark.parametrize("value", ["not a key!", "zz" * 32, "c2hvcnQ="])
def test_env_key_garbage_is_rejected_without_echo(value: str) -> None:
    with pytest.raises(VaultError, match="DEPOT_VAULT_KEY") as caught:
        parse_master_key(value)
    assert value not in full_text(caught.value)


def test_vault_from_settings_reopens_with_the_same_key(embedded_settings: Settings) -> None:
    with Vault.from_settings(embedded_settings) as vault:
        key = vault.create_project_key("p")
    with Vault.from_settings(embedded_settings) as vault:
        assert vault.project_key("p") == key
    assert (embedded_settings.resolved_data_dir / "vault.sqlite").exists()


# --- nothing identifying leaks ----------------------------------------------------------


def test_exception_messages_never_contain_the_patient_id(vault: Vault) -> None:
    vault.create_project_key("p")
    vault.record_linkage("p", PSEUDO, IDENTIFIERS)
    failures: list[BaseException] = []
    attempts = [
        lambda: vault.record_linkage("p", PSEUDO, {"PatientID": PATIENT_ID + "-X"}),
        lambda: vault.record_linkage("p", "other", {"PatientID": PATIENT_ID, "n": 5}),
        lambda: vault.record_linkage("p", "other", {PATIENT_ID: 5}),
        lambda: vault.record_linkage("gone", PSEUDO, IDENTIFIERS),
        lambda: vault.reidentify("p", "missing", actor="dpo"),
        lambda: vault.create_project_key("p"),
    ]
    for attempt in attempts:
        with pytest.raises((VaultError, TypeError)) as caught:
            attempt()
        failures.append(caught.value)
    for failure in failures:
        assert PATIENT_ID not in full_text(failure)


def test_logs_and_reprs_never_show_identifiers_or_keys(
    vault: Vault, master_key: bytes, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy")  # statements, parameters and rows
    key = vault.create_project_key("p")
    vault.project_key("p")
    vault.record_linkage("p", PSEUDO, IDENTIFIERS)
    vault.reidentify("p", PSEUDO, actor="dpo")
    with pytest.raises(LinkageConflict):
        vault.record_linkage("p", PSEUDO, {"PatientID": "PAT-OTHER"})
    sealed = [v for v in stored_values(db_url) if isinstance(v, bytes)]
    vault.destroy_project_key("p")
    shown = caplog.text + repr(vault)
    assert "vault:" in caplog.text  # the vault does log its operations
    for secret in (PATIENT_ID, ISSUER, key.hex(), master_key.hex(), repr(key), repr(master_key)):
        assert secret not in shown
    assert len(sealed) == 3  # master-key check, wrapped key, linkage: none in the vault's logs
    vault_log = "".join(r.getMessage() for r in caplog.records if "test_helper" not in r.name)
    assert not any(repr(blob)[:24] in vault_log for blob in sealed)


def test_linkage_ciphertext_length_does_not_reveal_identifier_length(
    vault: Vault, db_url: str
) -> None:
    vault.create_project_key("p")
    vault.record_linkage("p", "short", {"PatientID": "A1"})
    vault.record_linkage("p", "long", {"PatientID": "A1-0000000000000000"})
    t = schema.linkages
    engine = create_engine(db_url)
    with engine.connect() as conn:
        sizes = set(conn.scalars(select(func.length(t.c.sealed_identifiers))))
    engine.dispose()
    assert len(sizes) == 1
