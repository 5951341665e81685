"""The vault: project secrets and pseudonym → person linkage, encrypted under a master key.

The only way back from a pseudonym to a person; its own database, so it can live apart.
"""

from app.vault.errors import (
    LinkageConflict,
    LinkageNotFound,
    ProjectKeyExists,
    ProjectKeyMissing,
    VaultError,
)
from app.vault.masterkey import load_master_key, parse_master_key
from app.vault.store import Vault

__all__ = [
    "LinkageConflict",
    "LinkageNotFound",
    "ProjectKeyExists",
    "ProjectKeyMissing",
    "Vault",
    "VaultError",
    "load_master_key",
    "parse_master_key",
]
