"""Observability: the spans and metrics of an ingest STOW, a QIDO and a WADO request exist,
with the right counts, and carry nothing identifying (no identity token, no original UID, no
raw path, not even a pseudonymous UID).

The providers are in-memory and handed to `setup_telemetry` (never made global), so the
`research` fixture runs on both deployments.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydicom import dcmread

from app import telemetry
from app.dicom.multipart import new_boundary
from tests.identities import Identity, leaked_tokens, write_injected
from tests.samples import sample

pytest_plugins = ["tests.blobstores", "tests.research_server"]

WHO = Identity()
INGEST = "/projects/alpha/ingest/studies"
ROOT = "/projects/alpha/dicom-web"


@pytest.fixture
def otel(research):
    """In-memory span exporter and metric reader, installed after the app was built."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    previous = telemetry.current()
    telemetry.setup_telemetry(
        research.settings, tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    yield spans, reader
    telemetry.install(previous)
    tracer_provider.shutdown()
    meter_provider.shutdown()


def _stow(research, url: str, bodies: list[bytes]):
    boundary = new_boundary()
    body = b""
    for data in bodies:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body += data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    ctype = f'multipart/related; type="application/dicom"; boundary="{boundary}"'
    return research.client.post(url, content=body, headers=research.headers("manager", **{
        "Content-Type": ctype
    }))  # fmt: skip


def _points(reader: InMemoryMetricReader) -> dict[str, list]:
    found: dict[str, list] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def _sum(points: list, **attributes) -> int:
    return sum(
        p.value for p in points if all(p.attributes.get(k) == v for k, v in attributes.items())
    )


def test_ingest_query_retrieve_are_traced_and_measured_without_identifying_values(
    research, otel, tmp_path: Path
):
    spans, reader = otel
    folder = tmp_path / "in"
    folder.mkdir()
    paths = [
        write_injected(sample("CT_small.dcm"), folder / "QUIMPERLE_Hortensia_ct.dcm", WHO),
        write_injected(sample("MR_small.dcm"), folder / "KERVADEC_mr.dcm", WHO),
    ]
    originals = set()
    for path in paths:
        ds = dcmread(path, force=True)
        originals |= {ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID}
    original_study = dcmread(paths[0]).StudyInstanceUID
    garbage = f"not DICOM, patient {WHO.family} {WHO.patient_id}".encode()

    # Ingest: the original StudyInstanceUID in the path; then a good file and a bad one.
    first = _stow(research, f"{INGEST}/{original_study}", [paths[0].read_bytes()])
    assert first.status_code == 200, first.text
    second = _stow(research, INGEST, [paths[1].read_bytes(), garbage])
    assert second.status_code == 202, second.text
    # QIDO with a name in the query; WADO of one instance, single part.
    assert research.get(f"{ROOT}/studies?PatientName={WHO.family}*").status_code in (200, 204)
    listing = research.get(f"{ROOT}/instances?includefield=all")
    assert listing.status_code == 200
    one = next(i for i in listing.json() if "0020000D" in i)
    pseudonymous = {
        item[tag]["Value"][0]
        for item in listing.json()
        for tag in ("0020000D", "0020000E", "00080018")
        if tag in item
    }
    assert len(pseudonymous) >= 5  # two studies or one, two series, two instances
    url = (
        f"{ROOT}/studies/{one['0020000D']['Value'][0]}/series/{one['0020000E']['Value'][0]}"
        f"/instances/{one['00080018']['Value'][0]}"
    )
    wado = research.get(url, headers={"Accept": "application/dicom"})
    assert wado.status_code == 200, wado.text

    finished = spans.get_finished_spans()
    names = Counter(s.name for s in finished)
    assert names["POST /projects/{project_id}/ingest/studies/{study_uid}"] == 1
    assert names["POST /projects/{project_id}/ingest/studies"] == 1
    assert names["GET /projects/{project_id}/dicom-web/studies"] == 1
    assert names["GET /projects/{project_id}/dicom-web/instances"] == 1
    wado_route = (
        "GET /projects/{project_id}/dicom-web/studies/{study_uid}/series/{series_uid}"
        "/instances/{sop_uid}"
    )
    assert names[wado_route] == 1
    assert names["ingest.file"] == 3
    assert names["pseudonymize"] == 3  # the garbage part fails inside it
    assert names["store.blob_put"] == 2
    assert names["index.upsert"] == 2
    assert names["series_metadata.refresh"] == 2

    by_name: dict[str, list] = {}
    for s in finished:
        by_name.setdefault(s.name, []).append(s)
    outcomes = Counter(
        (s.attributes["depot.outcome"], s.attributes.get("depot.cause"))
        for s in by_name["ingest.file"]
    )
    assert outcomes == {("stored", None): 2, ("failed", "unreadable"): 1}
    requests = [s for s in finished if s.name.startswith(("GET ", "POST "))]
    for request_span in requests:
        assert request_span.attributes["depot.project"] == "alpha"
        assert request_span.attributes["http.response.status_code"] in (200, 202)
        assert request_span.attributes["http.route"].startswith("/projects/{project_id}/")
    # The ingest stages are children of the file, the file of the request.
    ingest_request = next(s for s in requests if s.name.endswith("{study_uid}"))
    files = [s for s in by_name["ingest.file"] if s.parent is not None]
    assert any(s.parent.span_id == ingest_request.context.span_id for s in files)
    stored_file = next(s for s in files if s.attributes["depot.outcome"] == "stored")
    children = {
        s.name for s in finished if s.parent and s.parent.span_id == stored_file.context.span_id
    }
    assert children == {"pseudonymize", "store.blob_put", "index.upsert"}
    done = [s for s in by_name["pseudonymize"] if "depot.changes" in s.attributes]
    assert len(done) == 2
    assert all(s.attributes["depot.profile"] for s in done)
    assert all(s.attributes["depot.changes"] > 0 for s in done)
    assert all(s.attributes["depot.bytes"] > 0 for s in by_name["store.blob_put"])
    assert [s.attributes["depot.instances"] for s in by_name["series_metadata.refresh"]] == [1, 1]

    points = _points(reader)
    assert _sum(points["depot.ingest.instances"], **{"depot.outcome": "stored"}) == 2
    assert _sum(points["depot.ingest.instances"], **{"depot.outcome": "failed"}) == 1
    sizes = sum(p.stat().st_size for p in paths)
    assert _sum(points["depot.ingest.bytes"], **{"depot.outcome": "stored"}) == sizes
    assert _sum(points["depot.ingest.bytes"], **{"depot.outcome": "failed"}) == len(garbage)
    assert _sum(points["depot.wado.bytes"]) == len(wado.content)
    http = points["depot.http.requests"]
    ingest_route = "/projects/{project_id}/ingest/studies/{study_uid}"
    assert _sum(http, **{"http.route": ingest_route, "http.response.status_class": "2xx"}) == 1
    assert _sum(http, **{"http.request.method": "GET"}) == 3
    assert _sum(http) == 5
    durations = points["depot.http.duration"]
    assert sum(p.count for p in durations) == 5
    assert all(p.sum >= 0 for p in durations)

    # Nothing identifying: not a token of the identity, not an original UID, not a raw path,
    # not even a pseudonymous UID, in any span name, attribute, event or metric attribute.
    exported = "\n".join(s.to_json() for s in finished)
    exported += "\n" + reader.get_metrics_data().to_json()
    data = exported.encode("utf-8")
    assert leaked_tokens(data, WHO) == []
    for uid in originals | pseudonymous:
        assert uid not in exported
    assert "/projects/alpha/" not in exported
    assert "PatientName" not in exported
    assert ".dcm" not in exported
    for s in finished:
        assert not s.events
        for key in s.attributes:
            assert not key.startswith(("url.", "http.target", "http.url")), key
    json.loads(reader.get_metrics_data().to_json())  # serializable, i.e. all of it was read


def test_an_exception_is_recorded_as_its_type_only(otel):
    spans, _ = otel
    with pytest.raises(ValueError), telemetry.span("probe"):
        raise ValueError(f"{WHO.family} {WHO.patient_id}")
    [probe] = spans.get_finished_spans()
    assert probe.attributes["error.type"] == "ValueError"
    assert not probe.events
    assert leaked_tokens(probe.to_json().encode(), WHO) == []


def test_no_exporter_configured_changes_nothing(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.delenv("OTEL_METRICS_EXPORTER", raising=False)
    before = telemetry.current()
    assert telemetry.setup_telemetry(None) is before


def test_exporters_come_from_otel_variables(monkeypatch):
    from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console,otlp")
    assert telemetry._exporter_names("TRACES") == ["console", "otlp"]
    tracer_provider, meter_provider = telemetry._sdk_providers(["otlp"], ["console"])
    try:
        assert isinstance(tracer_provider, SdkTracerProvider)
        assert isinstance(meter_provider, SdkMeterProvider)
        assert tracer_provider.resource.attributes["service.name"] == "imaging-depot"
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()
    with pytest.raises(ValueError, match="not installed"):
        telemetry._exporter("opentelemetry_traces_exporter", "no-such-exporter")


def test_the_active_grants_gauge_counts_grants_neither_expired_nor_revoked(research, otel):
    _spans, reader = otel
    manager = research.headers("manager")
    body = {"scopes": ["dicomweb-read"], "expires_in_hours": 1}
    grants = [
        research.client.post("/projects/alpha/access-grants", headers=manager, json=body).json()
        for _ in range(3)
    ]
    research.client.delete(f"/projects/alpha/access-grants/{grants[0]['id']}", headers=manager)
    assert [p.value for p in _points(reader)["depot.grants.active"]] == [2]
