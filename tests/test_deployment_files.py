"""docker-compose.yml and the Dockerfile stay in step with the settings the server reads.

No Docker daemon runs where the tests run, so these check what can go stale silently: a
variable renamed in app/config.py but not in the compose file, a folder the package reads at
run time that the image does not copy.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from app.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_depot_variable_of_the_compose_file_is_a_setting():
    environment = _compose()["services"]["depot"]["environment"]
    fields = set(Settings.model_fields)
    names = [name for name in environment if name.startswith("DEPOT_")]
    assert names
    assert [n for n in names if n.removeprefix("DEPOT_").lower() not in fields] == []


def test_the_compose_deployment_is_postgresql_and_s3_with_a_separate_vault_database():
    environment = _compose()["services"]["depot"]["environment"]
    assert environment["DEPOT_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert environment["DEPOT_VAULT_URL"].startswith("postgresql+psycopg://")
    index_host = environment["DEPOT_DATABASE_URL"].split("@")[1].split(":")[0]
    vault_host = environment["DEPOT_VAULT_URL"].split("@")[1].split(":")[0]
    assert index_host != vault_host
    assert environment["DEPOT_BLOB_URL"].startswith("s3://")
    services = _compose()["services"]
    assert {index_host, vault_host, "minio"} <= set(services)


def test_the_scheduled_worker_runs_with_the_servers_settings():
    services = _compose()["services"]
    assert services["worker"]["command"] == ["depot", "worker"]
    assert services["worker"]["environment"] == services["depot"]["environment"]


def test_every_compose_secret_is_in_the_example_env_file():
    text = (ROOT / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    example = (ROOT / "docs" / "compose.env.example").read_text()
    defined = set(re.findall(r"^(\w+)=", example, re.MULTILINE))
    assert required and required <= defined


def test_the_image_copies_every_folder_the_package_reads_at_run_time():
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\S+) ", dockerfile, re.MULTILINE))
    for folder in ("app", "mappings", "storage"):
        assert folder in copied
    assert 'pip install -e ".[server]"' in dockerfile  # mappings/ is read beside app/
