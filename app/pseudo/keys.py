"""Keyed, deterministic pseudonyms from a project's secret (DESIGN decision 2).

Every value derives from HMAC-SHA256 under a sub-key per purpose (domain separation), so a
pseudonym can never be confused with a UID or a date offset, and two projects share nothing.
Plain hashes are open to dictionary attacks (PS3.15 E.1.1); keyed ones are not.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

# 2.25.<integer> UIDs (PS3.5 B.2) take a 128-bit integer: at most 39 digits, 44 characters.
_UID_ROOT = "2.25."
DATE_OFFSET_MIN_DAYS = 365
DATE_OFFSET_SPAN_DAYS = 3650 - 365


def _b32(digest: bytes, length: int) -> str:
    """Upper-case letters and digits only: valid in LO, SH, PN and as a BIDS label."""
    return base64.b32encode(digest).decode("ascii").rstrip("=")[:length]


class ProjectKeys:
    """All keyed derivations of one project; cheap to call millions of times."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("a project secret must be at least 256 bits")
        self._subkeys: dict[str, hmac.HMAC] = {}
        self._secret = secret

    def __repr__(self) -> str:  # never show the secret
        return "ProjectKeys(<secret>)"

    def _mac(self, domain: str, value: str) -> bytes:
        base = self._subkeys.get(domain)
        if base is None:
            subkey = hmac.new(self._secret, b"imaging-depot/v1/" + domain.encode(), hashlib.sha256)
            base = hmac.new(subkey.digest(), digestmod=hashlib.sha256)
            self._subkeys[domain] = base
        mac = base.copy()
        mac.update(value.encode("utf-8", "surrogateescape"))
        return mac.digest()

    def uid(self, original: str) -> str:
        """Map a UID by value: the same UID anywhere in the project gives the same new UID."""
        return _UID_ROOT + str(int.from_bytes(self._mac("uid", original)[:16], "big"))

    def patient_pseudonym(self, patient_key: str) -> str:
        """'P' + 15 base32 characters (75 bits): fits LO and PN and is a valid BIDS label."""
        return "P" + _b32(self._mac("patient", patient_key), 15)

    def date_offset_days(self, patient_key: str) -> int:
        """A whole number of days, between one and ten years into the past, fixed per patient."""
        n = int.from_bytes(self._mac("date-offset", patient_key)[:8], "big")
        return -(DATE_OFFSET_MIN_DAYS + n % DATE_OFFSET_SPAN_DAYS)

    def token(self, domain: str, value: str, length: int = 10) -> str:
        """A keyed token for one kind of value (accession, station, a physician's name, …)."""
        return _b32(self._mac("token/" + domain, value), length)
