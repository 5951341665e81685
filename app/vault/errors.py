"""Vault exceptions.

Messages may name a project or a file path, never an identifier, a pseudonym or a key:
they end up in logs and HTTP error bodies.
"""


class VaultError(Exception):
    """Base of every error the vault raises on purpose."""


class ProjectKeyExists(VaultError):
    """The project already has a key; a second one would change all its pseudonyms."""


class ProjectKeyMissing(VaultError):
    """The project has no key: never created, or destroyed (crypto-shredded)."""


class LinkageNotFound(VaultError):
    """No linkage for this pseudonym in this project."""


class LinkageConflict(VaultError):
    """The pseudonym is already linked to different identifiers; the vault never overwrites."""
