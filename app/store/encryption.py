r"""Encryption at rest of blobs: AES-256-GCM under one data key per project, in chunks.

Why: the blob store (a directory, or a bucket that someone else may run) should hold nothing
readable without the vault. Each project has a random 256-bit data key, kept in the vault
wrapped by its master key (`Vault.data_key`, table `vault_data_keys`); a purge destroys it
with the project key, and with it every copy of the project's blobs wherever they survive
(backups, replicas, a disk taken out). S3 server-side encryption may be added; nothing here
relies on it. docs/encryption.md is the same story for a data manager or security officer.

`EncryptedBlobStore` wraps any BlobStore (filesystem, S3) and keeps its promises: writes
stream in bounded memory and appear whole or not at all, reads stream, and a range read
decrypts only the chunks it covers. The project is read from the key
(`projects/<project>/…`, app.store.layout), so callers change nothing.

Format, version 1 (integers big-endian):

    header  32 bytes: magic b"\x89DPE\r\n\x1a\n" (8) | version = 1 (1) | 3 zero bytes |
            C = plaintext bytes per chunk (4) | salt, 16 random bytes drawn per blob (16)
    chunks  N >= 1: chunk i is AES-256-GCM of plaintext bytes [i*C, (i+1)*C), then its
            16-byte tag. Every chunk holds C bytes but the last, which holds 1..C (0 only in
            the one chunk of an empty blob).

- Each blob has its own AES key, HKDF-SHA256(data key, salt, "imaging-depot/blob/v1"), so the
  nonce of chunk i is simply i (4 zero bytes | i on 8 bytes) with no risk of reuse across a
  project's millions of blobs, and no nonce-collision bound to watch.
- The associated data of chunk i is header | i (8 bytes) | last-chunk flag (1 byte) | the blob
  key (UTF-8). A chunk authenticates only at its place, in its blob, under its key: a flipped
  byte, swapped or reordered chunks, a cut tail (the new last chunk was sealed "not last"),
  appended bytes, or a blob copied to another key or project all raise BlobIntegrityError.
  Wrong bytes are never returned.
- Sizes need no read: with S the stored size, N = ceil((S - 32) / (C + 16)) and the plaintext
  size is P = S - 32 - 16 N. A range read computes its chunks from S (cached per blob with its
  header when it is written or first read: no plaintext), `size()` returns P. Reads that
  return nothing past the end check the last chunk, so a cut tail cannot pass for a shorter
  blob.
- Legacy blobs: one that does not start with the magic is plaintext (written before
  encryption was enabled, or with `DEPOT_ENCRYPTION_AT_REST=false`) and read as it is. The
  depot's blobs never start with it: its Part 10 files start with a zeroed 128-byte preamble,
  its series metadata with gzip's 1f 8b. A plaintext blob that did start with the magic would
  fail authentication: an error, never other bytes.

In clear: keys (pseudonymous UIDs), sizes, times. `list()` reports stored sizes, not plaintext
ones (telling them apart would cost a read per blob; the sweep uses keys and times only). The
unwrapped data key stays in memory for KEY_TTL seconds, so a purge run by another process
stops this one's reads within that time. Nothing decrypted is cached, on disk or in memory:
reads decrypt through a few reused scratch buffers (fresh MiB-sized allocations cost more
than AES-GCM), which hold plaintext no longer than freed memory would, or straight into the
caller's buffer (`readinto` of an opened blob: how WADO-RS streams, with no copy after).
"""

from __future__ import annotations

import hmac
import io
import os
import struct
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, ClassVar, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.ciphers.modes import GCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.exc import SQLAlchemyError

from app.config import Settings
from app.store.blobs import (
    BlobStore,
    BlobStoreError,
    blob_store_from_settings,
    check_range,
    readinto_full,
)
from app.vault.errors import ProjectKeyMissing, VaultError

if TYPE_CHECKING:
    from app.vault import Vault

MAGIC = b"\x89DPE\r\n\x1a\n"  # 0x89: neither a zeroed preamble nor gzip; \r\n\x1a\n as in PNG
VERSION = 1
_HEADER = struct.Struct(">8sB3sI16s")
HEADER_SIZE = _HEADER.size  # 32
TAG_SIZE = 16
# New blobs are sealed in chunks of 1 MiB. Reading, each chunk is one AES-GCM call, and in
# the server a call costs besides about what decrypting 64 KiB does (it hands the GIL to the
# event loop and waits to take it back): chunks of 64 KiB doubled what encryption added to a
# series retrieval. A CT slice (half a MiB) is one chunk, a frame of up to a MiB spans two at most.
# A blob keeps the size it was written with (its header says it): 64 KiB for older ones.
CHUNK_SIZE = 1024 * 1024
MIN_CHUNK_SIZE, MAX_CHUNK_SIZE = 1024, 16 * 1024 * 1024
KEY_TTL = 60.0  # seconds a data key is used from memory before the vault is asked again
_SALT_SIZE = 16
_HKDF_INFO = b"imaging-depot/blob/v1"
_NONCE = struct.Struct(">4xQ")
_POSITION = struct.Struct(">QB")  # chunk index, last-chunk flag
_FILE_READ = 1024 * 1024  # put_file reads its source in these
_SCRATCH_BYTES = 17 * 64 * 1024  # plaintext a scratch buffer holds (whole chunks, one at least)
_SCRATCH_KEPT = 8  # scratch buffers (about 2 MiB each) kept for reuse between reads
_CACHED_BLOBS = 4096  # headers and sizes of recently read blobs (about 300 bytes each)

# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class BlobIntegrityError(BlobStoreError):
    """The stored bytes do not authenticate: never served, always reported.

    A BlobStoreError, so every caller already treats it as a store failure (WADO answers 503,
    ingest stops). The message names the key (pseudonymous) and what failed, nothing else.
    """

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(
            f"blob {key!r} fails authentication ({reason}): altered, truncated, moved from "
            "another key, or sealed under another data key"
        )
        self.key = key


class DataKeyUnavailable(BlobStoreError):
    """The project has no data key (destroyed by a purge, or never created)."""

    def __init__(self, project: str) -> None:
        super().__init__(
            f"project {project!r} has no data key (destroyed by a purge, or never created): "
            "its encrypted blobs cannot be read"
        )
        self.project = project


# --------------------------------------------------------------------------------------------
# Data keys
# --------------------------------------------------------------------------------------------


class DataKey:
    """A project's unwrapped data key; it derives each blob's own AES key and shows nothing."""

    __slots__ = ("_key", "project")

    def __init__(self, project: str, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a data key is 32 bytes (AES-256)")
        self.project = project
        self._key = key

    def __repr__(self) -> str:
        return f"DataKey(project={self.project!r}, <key hidden>)"

    def same_as(self, key: bytes) -> bool:
        return hmac.compare_digest(self._key, key)

    def blob_key(self, salt: bytes) -> bytes:
        """The AES-256 key of the blob with this salt (HKDF-SHA256)."""
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_HKDF_INFO)
        return hkdf.derive(self._key)

    def blob_cipher(self, salt: bytes) -> AESGCM:
        """The AES-256-GCM cipher of the blob with this salt."""
        return AESGCM(self.blob_key(salt))


class DataKeys(Protocol):
    """Where EncryptedBlobStore gets a project's data key."""

    def for_write(self, project: str) -> DataKey | None:
        """The key to seal new blobs with, created if needed; None: write plaintext."""
        ...

    def for_read(self, project: str) -> DataKey:
        """The key of existing blobs; DataKeyUnavailable if there is none."""
        ...


_PROVIDERS: weakref.WeakSet[VaultDataKeys] = weakref.WeakSet()


class VaultDataKeys:
    """Data keys from the vault, kept unwrapped in memory for `ttl` seconds per project.

    The vault is opened on first need (`open_vault`), so a store that only ever meets
    plaintext blobs, or only deletes, never connects to it. Vault failures become
    BlobStoreError: to a caller, a blob it cannot decrypt is a blob it cannot read.
    """

    def __init__(
        self, open_vault: Callable[[], Vault], *, encrypt: bool = True, ttl: float = KEY_TTL
    ) -> None:
        self.encrypt = encrypt
        self._open_vault = open_vault
        self._vault: Vault | None = None
        self._ttl = ttl
        self._cache: dict[str, tuple[DataKey, float]] = {}
        self._lock = threading.Lock()
        _PROVIDERS.add(self)

    def __repr__(self) -> str:
        return f"VaultDataKeys(encrypt={self.encrypt}, cached={len(self._cache)})"

    def for_write(self, project: str) -> DataKey | None:
        return self._get(project, create=True) if self.encrypt else None

    def for_read(self, project: str) -> DataKey:
        return self._get(project, create=False)

    def forget(self, project: str) -> None:
        """Drop the cached key of `project`."""
        with self._lock:
            self._cache.pop(project, None)

    def _get(self, project: str, *, create: bool) -> DataKey:
        cached = self._cache.get(project)
        if cached is not None and time.monotonic() - cached[1] < self._ttl:
            return cached[0]
        with self._lock:
            cached = self._cache.get(project)
            if cached is not None and time.monotonic() - cached[1] < self._ttl:
                return cached[0]
            raw = self._fetch(project, create)
            # The same key again keeps its object, so blobs already described stay valid.
            key = cached[0] if cached and cached[0].same_as(raw) else DataKey(project, raw)
            self._cache[project] = (key, time.monotonic())
            return key

    def _fetch(self, project: str, create: bool) -> bytes:
        try:
            if self._vault is None:
                self._vault = self._open_vault()
            return self._vault.data_key(project, create=create)
        except ProjectKeyMissing:
            self._cache.pop(project, None)
            raise DataKeyUnavailable(project) from None
        except VaultError as exc:  # its messages carry no secret
            raise BlobStoreError(f"the vault cannot give a data key: {exc}") from None
        except SQLAlchemyError as exc:
            raise BlobStoreError(
                f"the vault is unavailable for a data key ({type(exc).__name__})"
            ) from None


def forget_data_key(project: str) -> None:
    """Drop `project`'s data key from every cache of this process (after a purge), so its
    blobs stop being readable here at once rather than within KEY_TTL."""
    for provider in list(_PROVIDERS):
        provider.forget(project)


# --------------------------------------------------------------------------------------------
# The format
# --------------------------------------------------------------------------------------------


def project_of(key: str) -> str:
    """The project of a blob key `projects/<project>/…` (app.store.layout)."""
    parts = key.split("/", 2)
    if len(parts) < 3 or parts[0] != "projects" or not parts[1]:
        raise ValueError("an encrypted store keeps blobs under projects/<project>/ only")
    return parts[1]


def _check_chunk_size(size: int) -> None:
    if not MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE:
        raise ValueError(f"the chunk size must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes")


def _looks_sealed(head: bytes) -> bool:
    """The magic, or a cut-off start of it (a truncated sealed blob, not a plaintext one)."""
    if len(head) >= len(MAGIC):
        return head.startswith(MAGIC)
    return bool(head) and MAGIC.startswith(head)


def _aad(header: bytes, index: int, last: bool, key: bytes) -> bytes:
    return header + _POSITION.pack(index, last) + key


@dataclass(frozen=True)
class _Sealed:
    """What range reads need of one sealed blob, kept between reads: no plaintext in it."""

    header: bytes
    key: bytes  # the blob key, UTF-8, as bound in every chunk
    chunk: int
    stored: int
    chunks: int
    size: int  # plaintext
    cipher: AESGCM
    data_key: DataKey

    @property
    def span(self) -> int:
        return self.chunk + TAG_SIZE


def _parse_header(key: str, head: bytes) -> tuple[int, bytes]:
    """(chunk size, salt) of a sealed blob's header."""
    if len(head) < HEADER_SIZE:
        raise BlobIntegrityError(key, "truncated header")
    magic, version, reserved, chunk, salt = _HEADER.unpack(head[:HEADER_SIZE])
    if magic != MAGIC:
        raise BlobIntegrityError(key, "not a sealed blob")
    if version != VERSION:
        raise BlobIntegrityError(key, f"unknown format version {version}")
    if reserved != b"\0\0\0" or not MIN_CHUNK_SIZE <= chunk <= MAX_CHUNK_SIZE:
        raise BlobIntegrityError(key, "malformed header")
    return chunk, salt


def _layout(key: str, chunk: int, stored: int) -> tuple[int, int]:
    """(chunk count, plaintext size) from the stored size alone."""
    body = stored - HEADER_SIZE
    span = chunk + TAG_SIZE
    count = max(1, -(-body // span))
    last = body - (count - 1) * span - TAG_SIZE
    if last < (1 if count > 1 else 0):
        raise BlobIntegrityError(key, "truncated")
    return count, body - count * TAG_SIZE


def _read_full(stream: BinaryIO, count: int) -> bytes:
    """`count` bytes, fewer only at the end of the stream (raw streams may read short)."""
    data = stream.read(count)
    if len(data) == count or not data:
        return data
    pieces = [data]
    got = len(data)
    while got < count:
        more = stream.read(count - got)
        if not more:
            break
        pieces.append(more)
        got += len(more)
    return b"".join(pieces)


def _stored_size(stream: BinaryIO) -> int | None:
    """The size of an open file (the very file being read, even if replaced since); None for
    other streams (the store is asked)."""
    try:
        return os.fstat(stream.fileno()).st_size
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None


class _Seal:
    """Seals one blob's bytes as they stream in; counts the plaintext.

    Each chunk goes through GCM piece by piece (`Cipher`'s encryptor): the pieces it is
    made of are held, not copied, until the next byte shows whether it is the last one (its
    associated data says so, and GCM takes that before the first byte). Joining them first
    for AESGCM.encrypt made sealing a 0.5 MB instance cost 0.63 ms, against 0.09 ms this way:
    two more half-MB buffers per blob, freshly allocated.
    """

    def __init__(self, key: str, data_key: DataKey, chunk: int) -> None:
        salt = os.urandom(_SALT_SIZE)
        self.header = _HEADER.pack(MAGIC, VERSION, b"\0\0\0", chunk, salt)
        self._aes_key = data_key.blob_key(salt)
        self.cipher = AESGCM(self._aes_key)  # for the reads that follow (EncryptedBlobStore)
        self.key = key.encode()
        self._chunk = chunk
        self._index = 0
        self.count = 0

    def _seal(self, pieces: Iterable[memoryview], last: bool) -> Iterator[bytes]:
        """One chunk's ciphertext, piece by piece, then its tag."""
        index = self._index
        self._index += 1
        encryptor = Cipher(AES(self._aes_key), GCM(_NONCE.pack(index))).encryptor()
        encryptor.authenticate_additional_data(_aad(self.header, index, last, self.key))
        for piece in pieces:
            yield encryptor.update(piece)
        yield encryptor.finalize() + encryptor.tag

    def chunks(self, plaintext: Iterable[bytes]) -> Iterator[bytes]:
        """The header, then each chunk sealed once the next byte shows it is not the last."""
        yield self.header
        size = self._chunk
        pending: deque[memoryview] = deque()  # the open chunk's pieces, and what follows
        held = 0
        for piece in plaintext:
            self.count += len(piece)
            if piece:
                pending.append(memoryview(piece))
                held += len(piece)
            while held > size:
                yield from self._seal(_take(pending, size), last=False)
                held -= size
        yield from self._seal(pending, last=True)


def _take(pending: deque[memoryview], size: int) -> list[memoryview]:
    """The first `size` bytes of `pending` (which holds more), taken off it without copying."""
    taken: list[memoryview] = []
    while size:
        first = pending[0]
        if len(first) <= size:
            taken.append(pending.popleft())
            size -= len(first)
        else:
            taken.append(first[:size])
            pending[0] = first[size:]
            size = 0
    return taken


class _Scratch:
    """Buffers lent to one read: sealed bytes in, plaintext out.

    Why: a fresh MiB-sized allocation per read costs more than decrypting it (the kernel
    maps and zeroes new pages every time); a few buffers kept and lent out cost nothing.
    They hold plaintext between reads no longer than freed memory would.
    """

    _kept: ClassVar[list[_Scratch]] = []
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, chunk: int) -> None:
        count = max(_SCRATCH_BYTES // chunk, 1)  # 17 of 64 KiB: a 1 MiB read at any offset
        self.chunk = chunk
        self.sealed = bytearray(count * (chunk + TAG_SIZE))
        self.plain = bytearray(count * chunk)

    @property
    def chunks(self) -> int:
        return len(self.plain) // self.chunk

    @classmethod
    @contextmanager
    def lent(cls, chunk: int) -> Iterator[_Scratch]:
        with cls._lock:
            scratch = next((b for b in cls._kept if b.chunk == chunk), None)
            if scratch is not None:
                cls._kept.remove(scratch)
        scratch = scratch or cls(chunk)
        try:
            yield scratch
        finally:
            with cls._lock:  # not the huge ones of a huge chunk size
                if len(cls._kept) < _SCRATCH_KEPT and len(scratch.plain) <= _SCRATCH_BYTES:
                    cls._kept.append(scratch)


def _decrypt_into(name: str, sealed: _Sealed, view: memoryview, first: int, out: memoryview) -> int:
    """Decrypt the consecutive sealed chunks in `view` (chunk `first` onwards) into `out`;
    returns the plaintext length. Unauthenticated output is wiped before the error."""
    span, last_index = sealed.span, sealed.chunks - 1
    header, key, decrypt = sealed.header, sealed.key, sealed.cipher.decrypt_into
    written = 0
    for offset in range(0, len(view), span):
        index = first + offset // span
        piece = view[offset : offset + span]
        length = len(piece) - TAG_SIZE
        if length < 0:
            raise BlobIntegrityError(name, "truncated")
        target = out[written : written + length]
        try:
            aad = header + _POSITION.pack(index, index == last_index) + key
            decrypt(_NONCE.pack(index), piece, aad, target)
        except InvalidTag:
            target[:] = bytes(length)
            raise BlobIntegrityError(name, f"chunk {index} does not authenticate") from None
        written += length
    return written


class _Over(io.RawIOBase):
    """A readable stream over a stored one, which it closes."""

    def __init__(self, stream: BinaryIO) -> None:
        super().__init__()
        self._stream = stream

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            try:
                self._stream.close()
            finally:
                super().close()


class _Opened(_Over):
    """A sealed blob's plaintext as a stream: chunks read and decrypted as they are asked for.

    The blob's layout is known before the first read (its stored size: the open file's, or
    the store's), so each read takes just the chunks it needs, in one stored read (one
    system call, or one S3 read) into a scratch buffer. Seeks when the stored stream seeks.
    """

    def __init__(self, stream: BinaryIO, name: str, sealed: _Sealed) -> None:
        super().__init__(stream)
        self._name = name
        self._sealed = sealed
        self._index = 0  # the next chunk in the stored stream
        self._carry = b""  # the rest of a chunk read in part
        self._position = 0
        self._checked_end = False

    def seekable(self) -> bool:
        return self._stream.seekable()

    def tell(self) -> int:
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        """Exactly `size` bytes unless the blob ends first (like a buffered file)."""
        sealed = self._sealed
        remaining = max(sealed.size - self._position, 0)
        wanted = remaining if size is None or size < 0 else min(size, remaining)
        if not wanted:
            if not remaining:
                self._check_end()
            return b""
        out: list[bytes] = []
        if self._carry:
            out.append(self._carry[:wanted])
            self._carry = self._carry[wanted:]
        needed = wanted - len(out[0]) if out else wanted
        if needed:
            with _Scratch.lent(sealed.chunk) as scratch:
                while needed:
                    needed -= self._decrypt_batch(scratch, needed, out)
        data = out[0] if len(out) == 1 else b"".join(out)
        self._position += len(data)
        return data

    def _decrypt_batch(self, scratch: _Scratch, needed: int, out: list[bytes]) -> int:
        """Decrypt the next chunks (up to what `needed` asks and the scratch holds); append
        `needed` bytes at most to `out` and keep the rest of the last chunk; returns the count
        appended."""
        sealed = self._sealed
        count = min(max(-(-needed // sealed.chunk), 1), scratch.chunks)
        with memoryview(scratch.plain) as plain:
            made = self._decrypt_next(scratch, count, plain)
            given = min(made, needed)
            out.append(bytes(plain[:given]))
            self._carry = bytes(plain[given:made])
        return given

    def _decrypt_next(self, scratch: _Scratch, count: int, target: memoryview) -> int:
        """Read the next `count` chunks (fewer at the end) into the scratch in one stored read
        and decrypt them into `target`; returns the plaintext length."""
        sealed, first = self._sealed, self._index
        count = min(count, sealed.chunks - first)
        stop = HEADER_SIZE + (first + count) * sealed.span
        length = min(stop, sealed.stored) - HEADER_SIZE - first * sealed.span
        with memoryview(scratch.sealed)[:length] as view:
            if readinto_full(self._stream, view) != length:
                raise BlobIntegrityError(self._name, "shorter than its stored size")
            made = _decrypt_into(self._name, sealed, view, first, target)
        self._index = first + count
        self._checked_end |= self._index == sealed.chunks
        return made

    def _check_end(self) -> None:
        """At the end: the last chunk must have been opened (an empty blob has only it)."""
        if self._checked_end:
            return
        sealed = self._sealed
        last = sealed.chunks - 1
        if self.seekable():
            self._stream.seek(HEADER_SIZE + last * sealed.span)
        elif self._index != last:
            return  # a forward stream cannot go back; it met the end on its way
        self._index, self._carry = last, b""
        with _Scratch.lent(sealed.chunk) as scratch:
            self._decrypt_batch(scratch, 0, [])
        self._carry = b""

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        """Fill `buffer` unless the blob ends first. Whole chunks are decrypted straight into
        it: no copy of the plaintext after decryption (read() makes one to return bytes)."""
        sealed = self._sealed
        with memoryview(buffer) as view, view.cast("B") as target:
            remaining = max(sealed.size - self._position, 0)
            wanted = min(len(target), remaining)
            if not wanted:
                if not remaining:
                    self._check_end()
                return 0
            done = min(len(self._carry), wanted)
            target[:done] = self._carry[:done]
            self._carry = self._carry[done:]
            if done < wanted:  # the carry is used up: the next chunk starts here
                # The chunks that fit whole: all those left when the blob's end fits.
                left = wanted - done
                whole = left if wanted == remaining else left - left % sealed.chunk
                with _Scratch.lent(sealed.chunk) as scratch:
                    while whole:
                        count = min(-(-whole // sealed.chunk), scratch.chunks)
                        made = self._decrypt_next(scratch, count, target[done : done + whole])
                        done += made
                        whole -= made
                    if done < wanted:  # less than a chunk: through the scratch
                        out: list[bytes] = []
                        self._decrypt_batch(scratch, wanted - done, out)
                        target[done:wanted] = out[0]
                        done = wanted
        self._position += done
        return done

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if not self.seekable():
            raise io.UnsupportedOperation("this stored blob streams forward only")
        sealed = self._sealed
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._position + offset
        elif whence == io.SEEK_END:
            target = sealed.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if target < 0:
            raise ValueError("negative seek position")
        index = min(target // sealed.chunk, sealed.chunks - 1)
        self._stream.seek(HEADER_SIZE + index * sealed.span)
        self._index, self._carry, self._position = index, b"", target
        skip = target - index * sealed.chunk
        if skip and target < sealed.size:
            with _Scratch.lent(sealed.chunk) as scratch:
                self._decrypt_batch(scratch, 0, [])
            self._carry = self._carry[skip:]
        return target


class _Prefixed(_Over):
    """A plaintext blob whose first bytes were already read to look for the magic."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        super().__init__(stream)
        self._head = memoryview(head)

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        if self._head:
            count = min(len(buffer), len(self._head))
            buffer[:count] = self._head[:count]
            self._head = self._head[count:]
            return count
        return self._stream.readinto(buffer)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


class EncryptedBlobStore:
    """Any BlobStore with its project's blobs sealed at rest (module docstring: the format).

    Writes seal when the key provider gives a data key (DEPOT_ENCRYPTION_AT_REST), else stay
    plaintext; reads recognise either. Listing and deleting pass through.
    """

    def __init__(self, inner: BlobStore, keys: DataKeys, *, chunk_size: int = CHUNK_SIZE) -> None:
        _check_chunk_size(chunk_size)
        self.inner = inner
        self.keys = keys
        self._chunk = chunk_size
        self._sealed: OrderedDict[str, _Sealed] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"EncryptedBlobStore({self.inner!r})"

    def __getattr__(self, name: str) -> object:
        # The sweep looks for the filesystem store's own `sweep_partials`; nothing else of
        # the inner store is reachable around the encryption.
        if name == "sweep_partials":
            return getattr(self.inner, name)
        raise AttributeError(name)

    # -- writing ---------------------------------------------------------------------------

    def put(
        self, key: str, chunks: Iterable[bytes], *, content_type: str = "application/octet-stream"
    ) -> int:
        """Stream `chunks` in, sealed as they come; returns the plaintext byte count."""
        data_key = self.keys.for_write(project_of(key))
        if data_key is None:
            self._forget(key)
            return self.inner.put(key, chunks, content_type=content_type)
        return self._put_sealed(key, data_key, chunks, content_type)

    def put_file(
        self,
        key: str,
        path: Path,
        *,
        content_type: str = "application/octet-stream",
        move: bool = False,
    ) -> int:
        """Seal the file while copying it into the store (a partial file committed
        atomically and synced on the filesystem store, an upload on S3); no rename of the
        plaintext into the store, even with `move=True` (the source is removed after)."""
        data_key = self.keys.for_write(project_of(key))
        if data_key is None:
            self._forget(key)
            return self.inner.put_file(key, path, content_type=content_type, move=move)
        with open(path, "rb") as source:
            pieces = iter(lambda: source.read(_FILE_READ), b"")
            count = self._put_sealed(key, data_key, pieces, content_type)
        if move:
            Path(path).unlink()
        return count

    def _put_sealed(
        self, key: str, data_key: DataKey, chunks: Iterable[bytes], content_type: str
    ) -> int:
        seal = _Seal(key, data_key, self._chunk)
        try:
            stored = self.inner.put(key, seal.chunks(chunks), content_type=content_type)
        except BaseException:
            self._forget(key)
            raise
        # The writer knows the layout: the read that usually follows (an ingest's series
        # metadata, a retrieval) goes straight to its chunks, no header or size asked again.
        count, size = _layout(key, self._chunk, stored)
        written = _Sealed(
            seal.header, seal.key, self._chunk, stored, count, size, seal.cipher, data_key
        )
        self._remember(key, written)
        return seal.count

    # -- reading ---------------------------------------------------------------------------

    def open(self, key: str) -> BinaryIO:
        """A stream of the plaintext (seekable on the filesystem store)."""
        project = project_of(key)
        stream = self.inner.open(key)
        try:
            head = _read_full(stream, HEADER_SIZE)
            if not _looks_sealed(head):
                if stream.seekable():
                    stream.seek(0)
                    return stream  # plaintext on disk: the file itself
                return io.BufferedReader(_Prefixed(head, stream), 256 * 1024)  # type: ignore[return-value]
            stored = _stored_size(stream)
            sealed = self._cached(key, project)
            if (
                sealed is None
                or sealed.header != head
                or (stored is not None and sealed.stored != stored)
            ):
                sealed = self._describe(key, project, head, stored)
            return _Opened(stream, key, sealed)  # type: ignore[return-value]
        except BaseException:
            stream.close()
            raise

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """Plaintext bytes [start, end): only the chunks covering them are read and opened."""
        check_range(start, end)
        project = project_of(key)
        sealed = self._cached(key, project)
        if sealed is not None:
            try:
                return self._read_sealed(key, sealed, start, end)
            except BlobIntegrityError:
                self._forget(key)  # replaced since it was described? Look again, once.
        # From 0 (a header read), one request serves a plaintext blob whole.
        head = self.inner.read_range(key, 0, max(end, HEADER_SIZE) if start == 0 else HEADER_SIZE)
        if not _looks_sealed(head):
            return head[:end] if start == 0 else self.inner.read_range(key, start, end)
        return self._read_sealed(key, self._describe(key, project, head), start, end)

    def size(self, key: str) -> int:
        """The plaintext size; for a sealed blob, checked against its last chunk."""
        project = project_of(key)
        sealed = self._cached(key, project)
        if sealed is not None:
            try:
                self._check_end(key, sealed)
                return sealed.size
            except BlobIntegrityError:
                self._forget(key)
        head = self.inner.read_range(key, 0, HEADER_SIZE)
        if not _looks_sealed(head):
            return self.inner.size(key)
        sealed = self._describe(key, project, head)
        self._check_end(key, sealed)
        return sealed.size

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list(self, prefix: str = "") -> Iterator[tuple[str, int, datetime]]:
        """The inner store's listing: stored sizes (module docstring)."""
        return self.inner.list(prefix)

    # -- deleting --------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        self.inner.delete(key)
        self._forget(key)

    def delete_prefix(self, prefix: str) -> int:
        count = self.inner.delete_prefix(prefix)
        under = prefix.rstrip("/") + "/"
        with self._lock:
            for key in [k for k in self._sealed if k.startswith(under)]:
                del self._sealed[key]
        return count

    # -- helpers ---------------------------------------------------------------------------

    def _describe(self, key: str, project: str, head: bytes, stored: int | None = None) -> _Sealed:
        """Layout and cipher of a sealed blob from its header and stored size; remembered."""
        chunk, salt = _parse_header(key, head)
        if stored is None:
            stored = self.inner.size(key)
        count, size = _layout(key, chunk, stored)
        data_key = self.keys.for_read(project)
        sealed = _Sealed(
            head[:HEADER_SIZE], key.encode(), chunk, stored, count, size,
            data_key.blob_cipher(salt), data_key,
        )  # fmt: skip
        self._remember(key, sealed)
        return sealed

    def _remember(self, key: str, sealed: _Sealed) -> None:
        with self._lock:
            self._sealed[key] = sealed
            self._sealed.move_to_end(key)
            while len(self._sealed) > _CACHED_BLOBS:
                self._sealed.popitem(last=False)

    def _cached(self, key: str, project: str) -> _Sealed | None:
        with self._lock:
            sealed = self._sealed.get(key)
            if sealed is not None:
                self._sealed.move_to_end(key)
        if sealed is None:
            return None
        # Asking for the key every time lets a purge (or the TTL) take effect here too.
        if self.keys.for_read(project) is not sealed.data_key:
            self._forget(key)
            return None
        return sealed

    def _forget(self, key: str) -> None:
        with self._lock:
            self._sealed.pop(key, None)

    def _read_sealed(self, key: str, sealed: _Sealed, start: int, end: int) -> bytes:
        if start >= sealed.size:
            self._check_end(key, sealed)  # nothing to return: prove the size is the real one
            return b""
        end = min(end, sealed.size)
        if start == end:
            return b""
        chunk, span = sealed.chunk, sealed.span
        first, last = start // chunk, (end - 1) // chunk
        low = HEADER_SIZE + first * span
        high = min(HEADER_SIZE + (last + 1) * span, sealed.stored)
        data = self.inner.read_range(key, low, high)
        if len(data) != high - low:
            raise BlobIntegrityError(key, "shorter than its stored size")
        pieces: list[bytes] = []
        with _Scratch.lent(chunk) as scratch, memoryview(data) as view:
            per = scratch.chunks
            with memoryview(scratch.plain) as plain:
                for batch in range(first, last + 1, per):  # one batch up to a MiB
                    count = min(per, last + 1 - batch)
                    offset = (batch - first) * span
                    sealed_part = view[offset : offset + count * span]
                    made = _decrypt_into(key, sealed, sealed_part, batch, plain)
                    lo = max(start - batch * chunk, 0)
                    hi = min(end - batch * chunk, made)
                    pieces.append(bytes(plain[lo:hi]))
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _check_end(self, key: str, sealed: _Sealed) -> None:
        """Open the last chunk: only it was sealed as the last, so the size is authentic."""
        index = sealed.chunks - 1
        low = HEADER_SIZE + index * sealed.span
        data = self.inner.read_range(key, low, sealed.stored)
        if len(data) != sealed.stored - low:
            raise BlobIntegrityError(key, "shorter than its stored size")
        with (
            _Scratch.lent(sealed.chunk) as scratch,
            memoryview(data) as view,
            memoryview(scratch.plain) as plain,
        ):
            _decrypt_into(key, sealed, view, index, plain)


# --------------------------------------------------------------------------------------------
# Opening the store of the deployment
# --------------------------------------------------------------------------------------------


def project_blob_store(settings: Settings, vault: Vault | None = None) -> EncryptedBlobStore:
    """The deployment's blob store behind encryption at rest: how every project's blobs are
    opened (ingest, STOW, WADO, delete, sweep, series metadata, purge).

    `vault` shares an open one; without it the store opens its own from the settings on the
    first sealed blob it meets (so a store that never meets one never connects).
    """

    def open_vault() -> Vault:
        if vault is not None:
            return vault
        from app.vault import Vault  # the vault's database only when a key is needed

        return Vault.from_settings(settings)

    keys = VaultDataKeys(open_vault, encrypt=settings.encryption_at_rest)
    return EncryptedBlobStore(blob_store_from_settings(settings), keys)
