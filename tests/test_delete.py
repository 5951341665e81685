"""DELETE of a study or series: rows, instance blobs and series metadata go together.

Runs on both deployments (tests/research_server.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from app.store import index_repo
from tests.samples import ct_series

pytest_plugins = ["tests.blobstores", "tests.research_server"]


@pytest.fixture
def two_series(research, tmp_path: Path):
    """Study of 2 series x 2 instances in alpha; returns (study, [series…])."""
    report = research.ingest(ct_series(tmp_path / "in", 4, series=2))
    study = report.stored[0].study_uid
    series = sorted({r.series_uid for r in report.stored})
    return study, series


def _blob_keys(research) -> set[str]:
    return {key for key, _size, _when in research.stores.blobs.list("projects/alpha")}


def _url(study: str, series: str | None = None) -> str:
    url = f"/projects/alpha/dicom-web/studies/{study}"
    return f"{url}/series/{series}" if series else url


def test_deleting_a_series_removes_its_rows_blobs_and_metadata_and_recounts(research, two_series):
    study, (gone, kept) = two_series
    gone_row = index_repo.get_series(research.stores.index, "alpha", gone)
    gone_keys = {
        i.blob_key
        for i in index_repo.list_instances(research.stores.index, "alpha", series_uid=gone)
    }
    gone_keys.add(gone_row.metadata_key)
    assert gone_keys <= _blob_keys(research)
    response = research.client.delete(_url(study, gone), headers=research.headers("manager"))
    assert response.status_code == 204
    assert index_repo.get_series(research.stores.index, "alpha", gone) is None
    assert not gone_keys & _blob_keys(research)
    row = index_repo.get_study(research.stores.index, "alpha", study)
    assert (row.number_of_series, row.number_of_instances) == (1, 2)
    assert index_repo.get_series(research.stores.index, "alpha", kept).number_of_instances == 2


def test_deleting_a_study_leaves_no_row_and_no_blob(research, two_series):
    study, _series = two_series
    response = research.client.delete(_url(study), headers=research.headers("manager"))
    assert response.status_code == 204
    assert index_repo.get_study(research.stores.index, "alpha", study) is None
    assert index_repo.list_instances(research.stores.index, "alpha") == []
    assert index_repo.list_series(research.stores.index, "alpha") == []
    assert _blob_keys(research) == set()
    again = research.client.delete(_url(study), headers=research.headers("manager"))
    assert again.status_code == 404


def test_the_last_series_takes_its_study_with_it(research, two_series):
    study, series = two_series
    for uid in series:
        assert (
            research.client.delete(
                _url(study, uid), headers=research.headers("manager")
            ).status_code
            == 204
        )
    assert index_repo.get_study(research.stores.index, "alpha", study) is None


@pytest.mark.parametrize(("who", "expected"), [("researcher", 403), ("other", 404)])
def test_only_the_projects_data_managers_may_delete(research, two_series, who, expected):
    study, _series = two_series
    response = research.client.delete(_url(study), headers=research.headers(who))
    assert response.status_code == expected
    assert index_repo.get_study(research.stores.index, "alpha", study) is not None


def test_a_series_named_under_another_study_is_not_found_and_stays(research, two_series):
    _study, (series, _other) = two_series
    wrong = "2.25.1"
    response = research.client.delete(_url(wrong, series), headers=research.headers("manager"))
    assert response.status_code == 404
    assert series not in response.text
    assert index_repo.get_series(research.stores.index, "alpha", series) is not None
