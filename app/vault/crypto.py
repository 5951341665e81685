"""AES-256-GCM sealing with associated data that binds a ciphertext to its place.

The associated data names the purpose (project key, linkage, …), the project and, where there
is one, the row's own key (the pseudonym). A ciphertext copied to another row, project or
purpose therefore fails authentication instead of decrypting to someone else's data.
"""

from __future__ import annotations

import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.vault.errors import VaultError

KEY_BYTES = 32
_NONCE_BYTES = 12
_FORMAT = b"\x01"  # leading format byte, so a later scheme (key rotation) can coexist


def associated_data(purpose: str, project_id: str, row: str = "") -> bytes:
    """Unambiguous encoding (JSON array) so no two (purpose, project, row) triples collide."""
    return json.dumps(["imaging-depot/vault/v1", purpose, project_id, row]).encode()


class Sealer:
    """Seals and opens bytes under one 256-bit key; holds no other state and shows no key."""

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise VaultError(f"the vault master key must be exactly {KEY_BYTES} bytes")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "Sealer(<key hidden>)"

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)  # random 96-bit nonces: safe far beyond our volumes
        return _FORMAT + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        """Decrypt, or raise VaultError (never the library's exception, never any detail)."""
        if len(sealed) < 1 + _NONCE_BYTES + 16 or sealed[:1] != _FORMAT:
            raise VaultError("vault record is malformed")
        nonce, body = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, body, aad)
        except InvalidTag:
            raise VaultError(
                "vault record cannot be decrypted: wrong master key, or the record was "
                "altered or moved to another row"
            ) from None
