"""The research DICOMweb URLs (PS3.18), built in one place for the routers and for ingest.

Ingest needs them too: series metadata is precomputed (decision 6) and holds a BulkDataURI for
every bulk value. With an empty `base` the URIs are absolute paths
(`/projects/p/dicom-web/...`), valid behind any host; a non-empty base (DEPOT_PUBLIC_URL)
makes them absolute URLs.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote


def _segment(value: str) -> str:
    return quote(value, safe="")


def dicomweb_root(base: str, project_id: str) -> str:
    return f"{base.rstrip('/')}/projects/{_segment(project_id)}/dicom-web"


def series_url(base: str, project_id: str, study_uid: str, series_uid: str) -> str:
    """The WADO-RS RetrieveURL of one series."""
    return f"{study_url(base, project_id, study_uid)}/series/{_segment(series_uid)}"


def instance_url(base: str, project_id: str, study_uid: str, series_uid: str, sop_uid: str) -> str:
    """The WADO-RS RetrieveURL of one instance."""
    return f"{series_url(base, project_id, study_uid, series_uid)}/instances/{_segment(sop_uid)}"


def bulkdata_uri(
    base: str, project_id: str, study_uid: str, series_uid: str, sop_uid: str
) -> Callable[[str], str]:
    """The `bulkdata_uri` callback of app.dicom.json_model.to_dicom_json for one instance.

    The path it receives (`7FE00010`, `00540016.0.00181072`) names the element from the top
    of the dataset and needs no escaping.
    """
    root = instance_url(base, project_id, study_uid, series_uid, sop_uid)
    return lambda path: f"{root}/bulk/{path}"


def study_url(base: str, project_id: str, study_uid: str) -> str:
    """The WADO-RS RetrieveURL of one study (the STOW-RS response's top-level RetrieveURL)."""
    return f"{dicomweb_root(base, project_id)}/studies/{_segment(study_uid)}"
