"""Where the master key comes from: `DEPOT_VAULT_KEY`, or a key file in embedded mode.

A separate-environment deployment passes the key by environment (from its secret store); the
embedded deployment generates one on first use into a file only its owner can read.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
import secrets
import stat
from pathlib import Path

from app.config import Settings
from app.vault.crypto import KEY_BYTES
from app.vault.errors import VaultError

_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")


def parse_master_key(text: str, source: str = "DEPOT_VAULT_KEY") -> bytes:
    """Decode 64 hex digits or base64 (standard or URL-safe) of exactly 32 bytes.

    Errors name the source and the decoded length only, never the value.
    """
    value = "".join(text.split())
    if _HEX.fullmatch(value):
        key = bytes.fromhex(value)
    else:
        padded = value.replace("-", "+").replace("_", "/") + "=" * (-len(value) % 4)
        try:
            key = base64.b64decode(padded, validate=True)
        except (binascii.Error, ValueError):
            raise VaultError(
                f"{source} is neither hex nor base64; expected {KEY_BYTES} random bytes "
                f"as 64 hex digits or 44 base64 characters"
            ) from None
    if len(key) != KEY_BYTES:
        raise VaultError(
            f"{source} decodes to {len(key)} bytes; the vault master key must be "
            f"exactly {KEY_BYTES} bytes (AES-256)"
        )
    return key


def load_master_key(settings: Settings) -> bytes:
    """The key from `DEPOT_VAULT_KEY` if set, else from the key file (created on first use)."""
    if settings.vault_key.strip():
        return parse_master_key(settings.vault_key)
    return _read_or_create_key_file(settings.vault_key_file)


def _read_or_create_key_file(path: Path) -> bytes:
    try:
        return _read_key_file(path)
    except FileNotFoundError:
        pass
    _create_key_file(path)
    return _read_key_file(path)


def _read_key_file(path: Path) -> bytes:
    """Read the key, refusing a file that anyone but its owner could read or write."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise VaultError(f"vault key file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise VaultError(
                f"refusing vault key file {path}: mode {stat.S_IMODE(info.st_mode):04o} lets "
                f"group or others access it; run `chmod 600 {path}` if it was never exposed, "
                f"otherwise treat the key as compromised"
            )
        text = handle.read().decode("ascii", errors="replace")
    return parse_master_key(text, source=f"vault key file {path}")


def _create_key_file(path: Path) -> None:
    """Write a new key to a private temporary file, then link it into place.

    O_CREAT|O_EXCL with mode 0600 means the key is never readable by others, even briefly;
    linking (which fails if the name exists) means two processes starting together never
    overwrite each other's key nor read a half-written file: the loser uses the winner's key.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(base64.b64encode(secrets.token_bytes(KEY_BYTES)) + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another process won: its key is the key
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
