"""The demo project `make serve` starts with: real sample studies, pseudonymized and stored.

The samples are test files that ship with pydicom (a runtime dependency), so a fresh clone
needs nothing else. They are ingested through the ordinary ingest boundary, like any cohort.
"""

from __future__ import annotations

import os
from pathlib import Path

import pydicom

from app.auth.credentials import Credentials
from app.auth.roles import Role
from app.config import Settings
from app.ingest import IngestReport, Stores, ingest_files
from app.projects import ProjectError, create_project, get_project
from app.store import index_repo

DEMO_PROJECT = "demo"
DEMO_TOKEN_FILE = "demo-researcher.token"
# A CT, an MR, a JPEG 2000 image, an RLE colour capture, an RT set, a SR and an ECG: a
# handful of studies with the shapes a viewer meets (each file its own SOP Instance UID).
SAMPLE_FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "JPEG2000.dcm",
    "SC_rgb_rle.dcm",
    "rtplan.dcm",
    "rtstruct.dcm",
    "rtdose.dcm",
    "test-SR.dcm",
    "waveform_ecg.dcm",
)


def sample_paths() -> list[Path]:
    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    return [folder / name for name in SAMPLE_FILES if (folder / name).is_file()]


def ensure_demo(settings: Settings) -> IngestReport | None:
    """Create the demo project and store the samples, once; None when it already has data."""
    try:
        project = get_project(settings, DEMO_PROJECT)
    except ProjectError:
        project = create_project(settings, DEMO_PROJECT, "Demonstration project", "research-fr")
    stores = Stores.from_settings(settings)
    try:
        if index_repo.list_studies(stores.index, DEMO_PROJECT):
            return None
        return ingest_files(stores, project, sample_paths())
    finally:
        stores.vault.close()


def demo_token(settings: Settings) -> str:
    """A researcher token of the demo project, kept in the data dir (0600) so that every
    `make serve` prints the same one; a new one is issued if it was revoked or lost.

    Only for the demo: real tokens are shown once and stored nowhere.
    """
    path = settings.resolved_data_dir / DEMO_TOKEN_FILE
    credentials = Credentials(settings)
    if path.is_file():
        kept = path.read_text().strip()
        principal = credentials.authenticate(kept)
        if principal is not None and principal.role_in(DEMO_PROJECT) is Role.researcher:
            return kept
    _token, secret = credentials.issue_token(
        DEMO_PROJECT, Role.researcher, label="demo (make serve)"
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secret + "\n")
    return secret
