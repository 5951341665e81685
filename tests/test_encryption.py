"""Encryption at rest of blobs (app.store.encryption): the format, on the filesystem store and
on a real S3 store; the data keys in the vault; the purge; and WADO-RS served identically.

The format's tests use a key provider without a vault (`FixedKeys`); the rest use the vault
the deployment opens. Tampering is done on the inner store, below the encryption, the way
someone with access to the disk or the bucket would.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import hashlib
import io
import os
import random
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import create_engine, select, text

from app.dicom.multipart import parse_content_type, read_parts
from app.dicomweb.wado_context import read_ahead
from app.retention import purge_project, set_retention
from app.store import index_repo
from app.store.blobs import BlobStoreError, FilesystemBlobStore
from app.store.encryption import (
    CHUNK_SIZE,
    HEADER_SIZE,
    MAGIC,
    TAG_SIZE,
    BlobIntegrityError,
    DataKey,
    DataKeyUnavailable,
    EncryptedBlobStore,
    project_blob_store,
)
from app.store.layout import project_prefix
from app.vault import ProjectKeyMissing, Vault
from app.vault import schema as vault_schema
from tests.identities import Identity, leaked_tokens, write_injected
from tests.samples import ct_series, sample

pytest_plugins = ["tests.blobstores", "tests.research_server"]

C = CHUNK_SIZE
SPAN = C + TAG_SIZE
MiB = 1024 * 1024
WHO = Identity()
KEY = "projects/p/studies/1.2/series/1.3/instances/1.4.0123456789abcdef.dcm"


class FixedKeys:
    """Data keys without a vault: one random key per project, made on first write."""

    def __init__(self, *, encrypt: bool = True) -> None:
        self.encrypt = encrypt
        self.keys: dict[str, DataKey] = {}

    def for_write(self, project: str) -> DataKey | None:
        if not self.encrypt:
            return None
        return self.keys.setdefault(project, DataKey(project, os.urandom(32)))

    def for_read(self, project: str) -> DataKey:
        if project not in self.keys:
            raise DataKeyUnavailable(project)
        return self.keys[project]


@pytest.fixture
def sealed(blob_store) -> EncryptedBlobStore:
    """The encryption over each store: the filesystem and a fresh S3 bucket."""
    return EncryptedBlobStore(blob_store, FixedKeys())


def plaintext(size: int, seed: int = 0) -> bytes:
    return random.Random(size * 7919 + seed).randbytes(size)


def raw(store: EncryptedBlobStore, key: str) -> bytes:
    """What is stored, as the disk or the bucket holds it."""
    with store.inner.open(key) as stream:
        return stream.read()


def read_all(store: EncryptedBlobStore, key: str) -> bytes:
    with store.open(key) as stream:
        return stream.read()


def sealed_size(size: int) -> int:
    return HEADER_SIZE + size + TAG_SIZE * max(1, -(-size // C))


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


# --- the format ----------------------------------------------------------------------------------


def _opened_by_the_documented_format(stored: bytes, data_key: bytes, key: str) -> bytes:
    """The plaintext of a sealed blob, read by the format of the module docstring alone."""
    header, body = stored[:HEADER_SIZE], stored[HEADER_SIZE:]
    chunk, salt = int.from_bytes(header[12:16], "big"), header[16:32]
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"imaging-depot/blob/v1")
    cipher = AESGCM(hkdf.derive(data_key))
    spans = [body[i : i + chunk + TAG_SIZE] for i in range(0, len(body), chunk + TAG_SIZE)]
    out = []
    for index, span in enumerate(spans):
        last = bytes([index == len(spans) - 1])
        aad = header + index.to_bytes(8, "big") + last + key.encode()
        out.append(cipher.decrypt(bytes(4) + index.to_bytes(8, "big"), span, aad))
    return b"".join(out)


@pytest.mark.parametrize("size", [0, 5, C, 2 * C + 7])
def test_sealed_bytes_follow_the_format_however_the_plaintext_arrives(sealed, size: int):
    """Chunks are sealed piece by piece as they arrive: any split gives the same plaintext
    under the documented format, chunk boundaries and empty pieces included."""
    data = plaintext(size, seed=3)
    rng = random.Random(size)
    cuts = sorted(rng.randrange(size + 1) for _ in range(6)) if size else []
    ragged = [data[a:b] for a, b in zip([0, *cuts], [*cuts, size], strict=True)]
    splits = {
        "whole": [data],
        "ragged, with empty pieces": [b"", *ragged, b""],
        "a byte, then the rest": [data[:1], data[1:]],
        "at chunk boundaries": list(pieces(data, C)) or [b""],
    }
    data_key = sealed.keys.for_write("p")
    for name, given in splits.items():
        key = f"projects/p/{size}-{len(given)}.bin"
        assert sealed.put(key, given) == size, name
        stored = raw(sealed, key)
        assert len(stored) == sealed_size(size), name
        assert _opened_by_the_documented_format(stored, data_key._key, key) == data, name


@pytest.mark.parametrize("size", [0, 1, C - 1, C, C + 1, 16 * C, 3 * MiB, 3 * MiB + 12345])
def test_blobs_round_trip_at_every_chunk_boundary(sealed, tmp_path: Path, size: int):
    data = plaintext(size)
    streamed, moved = f"projects/p/s{size}.bin", f"projects/p/f{size}.dcm"
    assert sealed.put(streamed, pieces(data, 1000 if size < 5000 else 300_001)) == size
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    assert sealed.put_file(moved, source, move=True) == size
    assert not source.exists()
    for key in (streamed, moved):
        stored = raw(sealed, key)
        assert stored.startswith(MAGIC) and len(stored) == sealed_size(size)
        assert sealed.size(key) == size
        assert read_all(sealed, key) == data
        assert sealed.read_range(key, 0, size + 10) == data
        assert sealed.read_range(key, size, size + 10) == b""


def test_range_and_stream_reads_equal_the_plaintext_slices(sealed):
    size = 2 * MiB + 777
    data = plaintext(size)
    sealed.put(KEY, [data])
    rng = random.Random(5)
    ranges = [(0, 0), (C - 1, C + 1), (C, 2 * C), (size - 1, size), (size, size + 5),
              (size + 100, size + 200), (0, size)]  # fmt: skip
    count = 300 if isinstance(sealed.inner, FilesystemBlobStore) else 60
    for _ in range(count):
        start = rng.randrange(size + 10)
        ranges.append((start, start + rng.choice([1, 13, C, 3 * C + 5, rng.randrange(size)])))
    for start, end in ranges:
        assert sealed.read_range(KEY, start, end) == data[start:end], (start, end)
    with sealed.open(KEY) as stream:  # reads of odd sizes across chunks
        got = []
        while piece := stream.read(7777):
            got.append(piece)
    assert b"".join(got) == data
    if isinstance(sealed.inner, FilesystemBlobStore):  # files seek; S3 streams do not
        with sealed.open(KEY) as stream:
            stream.seek(C + 5)
            assert stream.read(10) == data[C + 5 : C + 15]
            stream.seek(-3, io.SEEK_END)
            assert stream.read() == data[-3:]
            stream.seek(size + 10)
            assert stream.read(5) == b""


LEGACY = 64 * 1024  # the chunk size of blobs written before it was raised to CHUNK_SIZE


def test_blobs_of_another_chunk_size_are_read_the_same(sealed):
    """Each blob keeps the chunk size it was written with (64 KiB before the current one)."""
    data = plaintext(5 * LEGACY + 321)
    EncryptedBlobStore(sealed.inner, sealed.keys, chunk_size=LEGACY).put(KEY, [data])
    assert len(raw(sealed, KEY)) == HEADER_SIZE + len(data) + TAG_SIZE * 6
    assert sealed.size(KEY) == len(data)
    assert read_all(sealed, KEY) == data
    for start, end in ((0, 10), (LEGACY - 1, LEGACY + 1), (LEGACY, 4 * LEGACY + 7), (0, 10**7)):
        assert sealed.read_range(KEY, start, end) == data[start:end]


@pytest.mark.parametrize("chunk", [LEGACY, CHUNK_SIZE])
def test_readinto_fills_buffers_of_any_size_with_the_plaintext(sealed, chunk: int):
    """readinto decrypts whole chunks straight into the buffer and goes through the scratch
    for the rest; mixed with read(), every byte comes once and in order."""
    data = plaintext(3 * chunk + 4321)
    EncryptedBlobStore(sealed.inner, sealed.keys, chunk_size=chunk).put(KEY, [data])
    sizes = [1, 7777, chunk - 1, chunk, chunk + 1, 2 * chunk + 5, 10 * chunk]
    with sealed.open(KEY) as stream:
        got, turn = [], 0
        while True:
            size = sizes[turn % len(sizes)]
            if turn % 3 == 2:
                piece = stream.read(size)
            else:
                buffer = bytearray(b"\xee" * size)
                count = stream.readinto(memoryview(buffer))
                assert buffer[count:] == b"\xee" * (size - count)  # nothing past the count
                piece = bytes(buffer[:count])
            if not piece:
                break
            got.append(piece)
            turn += 1
    assert b"".join(got) == data


def test_readinto_of_a_tampered_chunk_raises_and_leaves_no_unauthenticated_byte(sealed):
    data = plaintext(3 * C)
    sealed.put(KEY, [data])
    sealed.inner.put(KEY, [_tamperings(raw(sealed, KEY))["a flipped byte in a chunk"]])
    fresh = EncryptedBlobStore(sealed.inner, sealed.keys)
    buffer = bytearray(3 * C)
    with fresh.open(KEY) as stream, pytest.raises(BlobIntegrityError, match="chunk 1"):
        stream.readinto(buffer)
    assert buffer[:C] == data[:C]  # chunk 0 authenticated; chunk 1 wiped; chunk 2 not reached
    assert buffer[C:] == bytes(2 * C)


def test_the_stored_bytes_hide_the_dicom_file_and_the_metadata(sealed, tmp_path: Path):
    source = write_injected(sample("CT_small.dcm"), tmp_path / "ct.dcm", WHO)
    document = gzip.compress(orjson.dumps([{"00100010": {"Value": [WHO.family]}}]))
    sealed.put_file(KEY, source)
    sealed.put("projects/p/metadata.json.gz", [document])
    assert read_all(sealed, KEY) == source.read_bytes()
    assert read_all(sealed, "projects/p/metadata.json.gz") == document
    for key in (KEY, "projects/p/metadata.json.gz"):
        stored = raw(sealed, key)
        assert b"DICM" not in stored and not stored.startswith(b"\x1f\x8b")
        assert leaked_tokens(stored, WHO) == []
    assert leaked_tokens(source.read_bytes(), WHO)  # the check can fail: the source has them


def _tamperings(stored: bytes) -> dict[str, bytes]:
    chunk = [stored[HEADER_SIZE + i * SPAN : HEADER_SIZE + (i + 1) * SPAN] for i in range(4)]

    def flip(offset: int) -> bytes:
        return stored[:offset] + bytes([stored[offset] ^ 1]) + stored[offset + 1 :]

    return {
        "a flipped byte in a chunk": flip(HEADER_SIZE + SPAN + 10),
        "a flipped byte of the salt": flip(20),
        "a flipped byte of the chunk size": flip(15),
        "a flipped tag": flip(len(stored) - 1),
        "another format version": flip(8),
        "two chunks swapped": stored[:HEADER_SIZE] + chunk[1] + chunk[0] + b"".join(chunk[2:]),
        "cut at a chunk boundary": stored[: HEADER_SIZE + 2 * SPAN],
        "cut inside a chunk": stored[:-50],
        "cut to the header": stored[:HEADER_SIZE],
        "cut inside the header": stored[:5],
        "a chunk appended": stored + chunk[0],
        "bytes appended": stored + b"\0" * 20,
    }


def _right_or_refused(read: Callable[[], object], expected: object) -> bool:
    try:
        return read() == expected
    except BlobIntegrityError as exc:
        return isinstance(exc, BlobStoreError) and "fails authentication" in str(exc)


def test_tampering_raises_and_never_returns_other_bytes(sealed):
    data = plaintext(3 * C + 100)
    sealed.put(KEY, [data])
    original = raw(sealed, KEY)
    ranges = [(0, len(data)), (0, 10), (10, C), (C, 2 * C + 3), (3 * C, 3 * C + 100),
              (3 * C + 50, 4 * C), (4 * C, 5 * C)]  # fmt: skip
    for name, stored in _tamperings(original).items():
        sealed.inner.put(KEY, [stored])  # on disk or in the bucket, below the encryption
        fresh = EncryptedBlobStore(sealed.inner, sealed.keys)  # nothing of the blob cached
        with pytest.raises(BlobIntegrityError):
            read_all(fresh, KEY)
        with pytest.raises(BlobIntegrityError):
            fresh.read_range(KEY, 0, len(data))
        # What is left untouched may still be read (a chunk, the size, a header read before
        # the change and still cached), but never wrongly.
        for store in (fresh, sealed):
            assert _right_or_refused(lambda st=store: st.size(KEY), len(data)), name
            for start, end in ranges:
                assert _right_or_refused(lambda st=store, s=start, e=end: st.read_range(KEY, s, e),
                                         data[start:end]), (name, start)  # fmt: skip
    sealed.inner.put(KEY, [original])
    assert sealed.read_range(KEY, 0, len(data)) == data
    for cut in ("cut at a chunk boundary", "cut inside a chunk", "a chunk appended"):
        sealed.inner.put(KEY, [_tamperings(original)[cut]])
        with pytest.raises(BlobIntegrityError):  # the size is checked against the last chunk
            sealed.size(KEY)
        with pytest.raises(BlobIntegrityError):  # nothing past the end of a cut blob either
            sealed.read_range(KEY, 3 * C + 10, 3 * C + 20)


def test_a_blob_copied_to_another_key_or_project_or_read_with_another_key_fails(sealed):
    data = plaintext(C + 10)
    sealed.put(KEY, [data])
    sealed.put("projects/q/other.bin", [b"q has its key"])
    stored = raw(sealed, KEY)
    for elsewhere in (KEY.replace("0123456789abcdef", "fedcba9876543210"), "projects/q/x.dcm"):
        sealed.inner.put(elsewhere, [stored])
        with pytest.raises(BlobIntegrityError):
            sealed.read_range(elsewhere, 0, 10)
        with pytest.raises(BlobIntegrityError):
            read_all(sealed, elsewhere)
    wrong = FixedKeys()
    wrong.for_write("p")  # the same project, another key (another vault, a guessed key)
    with pytest.raises(BlobIntegrityError):
        EncryptedBlobStore(sealed.inner, wrong).read_range(KEY, 0, 10)
    with pytest.raises(DataKeyUnavailable):
        EncryptedBlobStore(sealed.inner, FixedKeys()).read_range(KEY, 0, 10)


def test_plaintext_blobs_from_before_encryption_are_read_as_they_are(blob_store, tmp_path):
    dicom = sample("CT_small.dcm").read_bytes()
    assert dicom[:128] != bytes(128)  # pydicom's preamble; the depot writes zeros: both work
    ours = bytes(128) + dicom[128:]
    document = gzip.compress(b'[{"00080060": {"vr": "CS", "Value": ["CT"]}}]')
    legacy = {"projects/p/a.dcm": dicom, "projects/p/b.dcm": ours, "projects/p/m.json.gz": document}
    for key, data in legacy.items():
        blob_store.put(key, [data])
    store = EncryptedBlobStore(blob_store, FixedKeys())
    store.put("projects/p/new.dcm", [ours])  # a mixed store, as after an upgrade
    for key, data in {**legacy, "projects/p/new.dcm": ours}.items():
        assert read_all(store, key) == data
        assert store.size(key) == len(data)
        for start, end in ((0, 4), (0, 200), (128, 132), (300, 5000), (len(data) - 3, 10**6)):
            assert store.read_range(key, start, end) == data[start:end]
    assert raw(store, "projects/p/new.dcm") != ours
    plain = EncryptedBlobStore(blob_store, FixedKeys(encrypt=False))  # DEPOT_…=false
    assert plain.put("projects/p/off.dcm", [ours]) == len(ours)
    assert raw(plain, "projects/p/off.dcm") == ours == read_all(plain, "projects/p/off.dcm")
    listed = {key for key, _size, _at in store.list("projects/p")}
    assert listed == {*legacy, "projects/p/new.dcm", "projects/p/off.dcm"}


def test_a_blob_replaced_after_it_was_read_is_read_as_it_is_now(sealed):
    first, second = plaintext(C + 3, 1), plaintext(2 * C + 9, 2)
    sealed.put(KEY, [first])
    assert sealed.read_range(KEY, C, C + 3) == first[C:]  # its header and size now cached
    assert read_all(sealed, KEY) == first
    sealed.inner.put(KEY, [second])  # deleted and written again by a process without encryption
    assert sealed.read_range(KEY, C, C + 3) == second[C : C + 3]
    assert read_all(sealed, KEY) == second
    other = EncryptedBlobStore(sealed.inner, sealed.keys)  # another process, same keys
    other.put(KEY, [first])
    assert sealed.read_range(KEY, C, 2 * C) == first[C:]
    assert sealed.size(KEY) == len(first)
    other.put(KEY, [second])
    assert read_all(sealed, KEY) == second
    assert sealed.read_range(KEY, 2 * C, 3 * C) == second[2 * C :]


def test_a_failed_write_leaves_nothing_and_writes_stream_in_bounded_memory(sealed):
    def failing() -> Iterator[bytes]:
        yield plaintext(3 * C)
        raise RuntimeError("the client went away")

    with pytest.raises(RuntimeError, match="went away"):
        sealed.put(KEY, failing())
    assert not sealed.exists(KEY)
    assert getattr(sealed, "sweep_partials", None) == getattr(sealed.inner, "sweep_partials", None)
    if not isinstance(sealed.inner, FilesystemBlobStore):
        return
    assert not [p for p in sealed.inner.root.rglob("*") if p.is_file()]  # no partial file
    block = plaintext(MiB)
    tracemalloc.start()
    try:
        assert sealed.put(KEY, (block for _ in range(48))) == 48 * MiB
        with sealed.open(KEY) as stream:
            while stream.read(MiB):
                pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB for a 48 MiB blob"


# --- data keys in the vault ----------------------------------------------------------------------


def test_data_keys_are_made_on_first_write_wrapped_in_the_vault_one_per_project(settings):
    from app.projects import create_project

    create_project(settings, "alpha", "Alpha")
    create_project(settings, "beta", "Beta")
    with Vault.from_settings(settings) as vault:
        with pytest.raises(ProjectKeyMissing):
            vault.data_key("alpha")
        store = project_blob_store(settings, vault)
        store.put("projects/alpha/a.bin", [b"alpha's bytes"])
        store.put("projects/beta/b.bin", [b"beta's bytes"])
        alpha, beta = vault.data_key("alpha"), vault.data_key("beta")
        assert alpha != beta and len(alpha) == 32
        engine = create_engine(settings.vault_database_url)
        with engine.connect() as conn:
            wrapped = conn.scalar(select(vault_schema.data_keys.c.wrapped_key).where(
                vault_schema.data_keys.c.project_id == "alpha"))  # fmt: skip
        engine.dispose()
        assert alpha not in wrapped and len(wrapped) > 32  # stored wrapped, never as is
        with pytest.raises(DataKeyUnavailable):  # no project key, no data key
            store.put("projects/ghost/x.bin", [b"x"])
    # Another process, its own vault opened on first need, reads what this one wrote.
    assert read_all(project_blob_store(settings), "projects/alpha/a.bin") == b"alpha's bytes"
    off = project_blob_store(settings.model_copy(update={"encryption_at_rest": False}))
    off.put("projects/alpha/plain.bin", [b"in clear"])
    assert raw(off, "projects/alpha/plain.bin") == b"in clear"
    assert read_all(off, "projects/alpha/a.bin") == b"alpha's bytes"  # reads still decrypt


def test_a_vault_from_before_encryption_gets_its_data_key_table_on_opening(settings):
    from app.projects import create_project

    create_project(settings, "alpha", "Alpha")
    engine = create_engine(settings.vault_database_url)
    with engine.begin() as conn:  # the vault as it was: no data key table
        conn.execute(text("DROP TABLE vault_data_keys"))
    engine.dispose()
    with Vault.from_settings(settings) as vault:
        key = vault.data_key("alpha", create=True)
        assert vault.data_key("alpha") == key == vault.data_key("alpha", create=True)


# --- the purge -----------------------------------------------------------------------------------


def test_after_a_purge_the_data_key_is_gone_and_surviving_blobs_cannot_be_read(research, tmp_path):
    settings = research.settings
    source = write_injected(sample("CT_small.dcm"), tmp_path / "ct.dcm", WHO)
    assert not research.ingest([source]).failures
    [instance] = index_repo.list_instances(research.stores.index, "alpha")
    blobs = research.stores.blobs
    survivor = raw(blobs, instance.blob_key)  # a backup, a replica, a disk taken out
    assert survivor.startswith(MAGIC) and leaked_tokens(survivor, WHO) == []
    assert blobs.read_range(instance.blob_key, 128, 132) == b"DICM"  # the key is in memory

    set_retention(settings, "alpha", dt.date(2010, 6, 30))
    purge_project(settings, "alpha", dt.date(2026, 11, 28), vault=research.stores.vault)

    assert list(blobs.list(project_prefix("alpha"))) == []
    with pytest.raises(ProjectKeyMissing, match="no data key"):
        research.stores.vault.data_key("alpha")
    blobs.inner.put(instance.blob_key, [survivor])  # the copy comes back
    for store in (blobs, project_blob_store(settings)):  # this process's cache, a new process
        with pytest.raises(DataKeyUnavailable):
            store.read_range(instance.blob_key, 128, 132)
        with pytest.raises(DataKeyUnavailable):
            read_all(store, instance.blob_key)
    with pytest.raises(DataKeyUnavailable):  # and no new key for the purged project
        blobs.put("projects/alpha/new.bin", [b"x"])
    assert research.stores.vault.data_key("beta", create=True)  # other projects unaffected


# --- WADO-RS, served identically -----------------------------------------------------------------


def _parts(response) -> list[tuple[str, bytes]]:
    """(content type, body) of each part: boundaries differ from one answer to the next."""
    media_type, params = parse_content_type(response.headers["content-type"])
    if media_type != "multipart/related":
        return [(response.headers["content-type"], response.content)]

    async def collect() -> list[tuple[str, bytes]]:
        async def body():
            yield response.content

        found = []
        async for headers, chunks in read_parts(
            body(), params["boundary"], max_part_size=1 << 30, max_parts=1000
        ):
            found.append((headers["content-type"], b"".join([c async for c in chunks])))
        return found

    return asyncio.run(collect())


def _answers(research, urls: list[tuple[str, str]]) -> list[list[tuple[str, bytes]]]:
    answers = []
    for url, accept in urls:
        response = research.get(url, headers={"Accept": accept})
        assert response.status_code == 200, (url, response.status_code)
        answers.append(_parts(response))
    return answers


def test_wado_rs_serves_the_same_bytes_from_sealed_and_from_plaintext_blobs(research, tmp_path):
    sources = [
        write_injected(sample(name), tmp_path / name, WHO)
        for name in ("CT_small.dcm", "emri_small.dcm", "MR_small.dcm")
    ]
    assert not research.ingest(sources).failures
    blobs = research.stores.blobs
    instances = index_repo.list_instances(research.stores.index, "alpha")
    urls: list[tuple[str, str]] = []
    whole: dict[str, int] = {}  # sop -> where its instance retrieval is in `urls`
    for i in instances:
        series = f"/projects/alpha/dicom-web/studies/{i.study_uid}/series/{i.series_uid}"
        one = f"{series}/instances/{i.sop_uid}"
        whole[i.sop_uid] = len(urls)
        urls += [
            (one, 'multipart/related; type="application/dicom"; transfer-syntax=*'),
            (series, 'multipart/related; type="application/dicom"; transfer-syntax=*'),
            (f"{one}/frames/1", "multipart/related; type=application/octet-stream"),
            (f"{one}/bulk/7FE00010", "multipart/related; type=application/octet-stream"),
            (f"{series}/metadata", "application/dicom+json"),
            (f"{one}/rendered", "image/png"),
        ]
    sealed_answers = _answers(research, urls)
    for i in instances:
        stored = raw(blobs, i.blob_key)
        assert stored.startswith(MAGIC) and b"DICM" not in stored
        [(_type, body)] = sealed_answers[whole[i.sop_uid]]
        assert hashlib.sha256(body).hexdigest() == i.sha256  # the bytes that were indexed

    # The same store as it would be had encryption never been on: every blob in clear.
    for key, _size, _at in list(blobs.list(project_prefix("alpha"))):
        blobs.inner.put(key, [read_all(blobs, key)])
        assert not raw(blobs, key).startswith(MAGIC)
    assert _answers(research, urls) == sealed_answers


def test_a_tampered_instance_cuts_a_series_retrieval_and_is_never_served(research, tmp_path):
    assert not research.ingest(ct_series(tmp_path / "ct", 3)).failures
    blobs = research.stores.blobs
    instances = index_repo.list_instances(research.stores.index, "alpha")
    assert len({i.series_uid for i in instances}) == 1
    victim = instances[1].blob_key
    stored = raw(blobs, victim)
    blobs.inner.put(victim, [stored[:-1] + bytes([stored[-1] ^ 1])])  # its (only) tag flipped
    blobs._forget(victim)  # as a server started after the change would know it
    first = instances[0]
    url = f"/projects/alpha/dicom-web/studies/{first.study_uid}/series/{first.series_uid}"
    with pytest.raises(BlobIntegrityError):  # the response is cut, never completed
        research.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'})


def test_a_body_read_ahead_keeps_its_order_and_errors_and_is_closed_when_abandoned():
    """WADO bodies are read a step ahead on worker threads (wado_context.read_ahead)."""
    closed = threading.Event()

    def chunks() -> Iterator[bytes]:
        try:
            yield b"one"
            yield b"two"
            raise BlobIntegrityError(KEY, "chunk 2 does not authenticate")
        finally:
            closed.set()

    async def everything() -> list[bytes]:
        got = []
        with pytest.raises(BlobIntegrityError):
            async for chunk in read_ahead(chunks()):
                got.append(chunk)
        return got

    async def first_only() -> bytes:
        stream = read_ahead(chunks())
        chunk = await anext(stream)
        await stream.aclose()  # the client went away, the next step in flight
        return chunk

    assert asyncio.run(everything()) == [b"one", b"two"]
    assert closed.wait(5)
    closed.clear()
    assert asyncio.run(first_only()) == b"one"
    assert closed.wait(5)  # closed on its thread once that step was done
