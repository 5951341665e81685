"""What `make serve` starts with: a demo project holding real, pseudonymized sample studies."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from app.auth.credentials import verify_token
from app.auth.roles import Role
from app.auth.tokens import revoke_token
from app.demo import (
    DEMO_PROJECT,
    DEMO_TOKEN_FILE,
    SAMPLE_FILES,
    demo_token,
    ensure_demo,
    sample_paths,
)
from app.ingest import Stores
from app.store import index_repo
from app.store.index import index_engine
from tests.research_server import DEPOT_VARIABLES
from tests.services import die_with_parent, free_ports, stop


def test_the_demo_project_is_filled_once_with_pseudonymized_samples(settings):
    assert len(sample_paths()) == len(SAMPLE_FILES)
    first = ensure_demo(settings)
    assert first is not None and not first.failures
    assert len(first.stored) == len(SAMPLE_FILES) and len(first.studies) >= 5
    stores = Stores.from_settings(settings)
    try:
        instances = index_repo.list_instances(stores.index, DEMO_PROJECT)
        assert len(instances) == len(SAMPLE_FILES)
        assert all(i.sop_uid.startswith("2.25.") for i in instances)
        assert all(stores.blobs.exists(i.blob_key) for i in instances)
    finally:
        stores.vault.close()
    assert ensure_demo(settings) is None  # a second start changes nothing


def test_the_demo_researcher_token_is_kept_private_and_reissued_when_revoked(settings):
    ensure_demo(settings)
    index = index_engine(settings.index_url)
    token = demo_token(settings)
    principal = verify_token(settings, token)
    assert principal is not None
    assert principal.memberships == {(DEMO_PROJECT, Role.researcher)}
    path = settings.resolved_data_dir / DEMO_TOKEN_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert demo_token(settings) == token  # every start prints the same one
    revoke_token(index, DEMO_PROJECT, principal.subject)
    fresh = demo_token(settings)
    assert fresh != token and verify_token(settings, fresh) is not None


def test_depot_serve_demo_prints_a_token_and_examples_that_work(tmp_path, monkeypatch):
    """The README's quick start: `make serve` runs `depot serve --demo`; what it prints works."""
    environment = {k: v for k, v in os.environ.items() if k not in DEPOT_VARIABLES}
    environment["DEPOT_DATA_DIR"] = str(tmp_path / "data")
    environment["COLUMNS"] = "200"
    (port,) = free_ports(1)
    log = tmp_path / "serve.log"
    depot = Path(sys.executable).with_name("depot")
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(depot), "serve", "--demo", "--port", str(port)],
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    try:
        deadline = time.monotonic() + 60
        printed = ""
        while "Uvicorn running" not in printed and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            time.sleep(0.2)
            printed = log.read_text()
        token = re.search(r"export TOKEN=(\S+)", printed).group(1)
        curl = re.search(r"curl -H \"Authorization: Bearer \$TOKEN\" (\S+/studies)\n", printed)
        answer = httpx.get(curl.group(1), headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200
        assert len(answer.json()) >= 5
        fhir = re.search(r"curl -H \"Authorization: Bearer \$TOKEN\" \"(\S+/fhir/\S+)\"", printed)
        bundle = httpx.get(fhir.group(1), headers={"Authorization": f"Bearer {token}"}).json()
        kinds = {e["resource"]["resourceType"] for e in bundle["entry"]}
        assert kinds == {"ImagingStudy", "Provenance"}
    finally:
        stop(process, grace=5)
