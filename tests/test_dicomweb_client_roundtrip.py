"""Round trip with the real `dicomweb-client` over HTTP, on both deployments.

Every packaged file pydicom reads as a storable instance (tests/samples.py; but the two that
are truncated, which ingest refuses) is ingested, then
found by QIDO-RS, retrieved by WADO-RS, and its metadata read, through a real server process
(`depot serve`) and the client researchers use. The retrieved PixelData is the original's,
byte for byte (pixel data is never decoded, DESIGN decision 4; Explicit VR Big Endian files,
which PS3.18 keeps off the web, come back in Little Endian with the same pixel values); the
metadata is valid PS3.18 Annex F JSON whose bulk values point back at the server.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy
from dicomweb_client import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian

from app.auth.credentials import issue_token
from app.auth.roles import Role
from app.ingest import Cause, Outcome, Stores, ingest_files
from app.projects import create_project, get_project
from tests.samples import TRUNCATED, readable_instances

pytest_plugins = ["tests.blobstores", "tests.depot_server"]

_KEY = re.compile(r"^[0-9A-F]{8}$")
_VRS = frozenset({
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF",
    "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN",
    "UR", "US", "UT", "UV",
})  # fmt: skip
_BINARY = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_NUMBERS = frozenset({"DS", "FD", "FL", "IS", "SL", "SS", "SV", "UL", "US", "UV"})


def check_annex_f(document: dict[str, Any], where: str = "") -> None:
    """The DICOM JSON model's rules (PS3.18 F.2), recursively; AssertionError says where."""
    for key, attribute in document.items():
        at = f"{where}{key}"
        assert _KEY.match(key), f"{at}: a key is 8 upper-case hex digits"
        vr = attribute.get("vr")
        assert vr in _VRS, f"{at}: vr {vr!r}"
        forms = [f for f in ("Value", "BulkDataURI", "InlineBinary") if f in attribute]
        assert len(forms) <= 1, f"{at}: at most one of Value, BulkDataURI, InlineBinary"
        if forms and forms[0] != "Value":
            assert vr in _BINARY or vr in ("FL", "FD", "SL", "SS", "UL", "US", "AT"), at
            continue
        if not forms:
            continue  # an empty attribute: no Value at all (F.2.5)
        values = attribute["Value"]
        assert isinstance(values, list) and values, f"{at}: Value is a non-empty array"
        if vr == "SQ":
            for i, item in enumerate(values):
                assert isinstance(item, dict), f"{at}[{i}]: an item is an object"
                check_annex_f(item, f"{at}[{i}].")
        elif vr == "PN":
            for name in values:
                assert name is None or set(name) <= {"Alphabetic", "Ideographic", "Phonetic"}
        elif vr in _NUMBERS:  # Table F.2.3-1: Number, or String where a number would not do
            assert all(isinstance(v, int | float | str) or v is None for v in values), at
        else:
            assert vr not in _BINARY, f"{at}: binary values are BulkDataURI or InlineBinary"
            assert all(isinstance(v, str) or v is None for v in values), at


def _original(path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(path, force=True)


def ingest_in_rounds(settings, sources) -> dict[str, dict]:
    """Ingest every source, each into the first project where it conflicts with nothing.

    Several samples are one image in several encodings under one SOP Instance UID: in one
    project the second is rightly a conflict (other bytes, same UID), so it goes into the
    next project ("alpha", then "round-2", …). A file that fails for another reason, or fails
    in a fresh project too, fails the test.
    """
    placed: dict[str, dict] = {}
    pending = list(sources)
    stores = Stores.from_settings(settings)
    try:
        for round_ in range(1, 30):
            project_id = "alpha" if round_ == 1 else f"round-{round_}"
            project = (
                get_project(settings, "alpha")
                if round_ == 1
                else create_project(settings, project_id, f"Round {round_}")
            )
            results: list = []
            ingest_files(stores, project, pending, on_file=results.append)
            placed[project_id] = {
                r.source: r.instance for r in results if r.outcome is not Outcome.FAILED
            }
            failed = [r for r in results if r.outcome is Outcome.FAILED]
            others = [r.reason for r in failed if r.cause is not Cause.CONFLICT]
            assert others == []
            assert len(failed) < len(pending), "no progress: these files fail everywhere"
            pending = [r.source for r in failed]
            if not pending:
                return placed
    finally:
        stores.vault.close()
    raise AssertionError("too many rounds")


def test_every_sample_is_found_retrieved_and_described_through_dicomweb_client(
    depot_server_on_both,
):
    server = depot_server_on_both
    sources = [p for p in readable_instances() if p.name not in TRUNCATED]
    placed = ingest_in_rounds(server.settings, sources)
    assert sum(len(stored) for stored in placed.values()) == len(sources)
    mismatches = []
    for project_id, stored in placed.items():
        token = issue_token(server.settings, project_id, Role.researcher)[1]
        client = DICOMwebClient(
            f"{server.url}/projects/{project_id}/dicom-web",
            headers={"Authorization": f"Bearer {token}"},
        )
        studies = client.search_for_studies(get_remaining=True)
        found = {s["0020000D"]["Value"][0] for s in studies}
        assert found == {i.study_uid for i in stored.values()}
        for source, instance in stored.items():
            mismatches += round_trip(client, server.url, project_id, source, instance)
    assert mismatches == [], ", ".join(mismatches)


def round_trip(client: DICOMwebClient, url: str, project_id: str, source, instance) -> list[str]:
    """QIDO finds it, WADO returns its pixels unchanged, its metadata is Annex F JSON."""
    found = client.search_for_instances(
        study_instance_uid=instance.study_uid,
        search_filters={"SOPInstanceUID": instance.sop_uid},
    )
    assert [f["00080018"]["Value"][0] for f in found] == [instance.sop_uid], source.name
    retrieved = client.retrieve_instance(instance.study_uid, instance.series_uid, instance.sop_uid)
    assert retrieved.SOPInstanceUID == instance.sop_uid
    original = _original(source)
    metadata = client.retrieve_instance_metadata(
        instance.study_uid, instance.series_uid, instance.sop_uid
    )
    check_annex_f(metadata)
    if "PixelData" not in original:
        return []
    uri = metadata["7FE00010"]["BulkDataURI"]
    assert uri.startswith(f"{url}/projects/{project_id}/dicom-web/studies/")
    if original.file_meta.get("TransferSyntaxUID") == ExplicitVRBigEndian:
        # PS3.18 8.7.3 keeps Big Endian off the web: it comes back as Explicit VR LE, its
        # pixel words byte-swapped, so the values are compared rather than the bytes.
        same = numpy.array_equal(original.pixel_array, retrieved.pixel_array)
    else:
        same = original.PixelData == retrieved.PixelData
    return [] if same else [source.name]
