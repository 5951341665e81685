"""The site's catalogue (app.catalog): a data manager describes and publishes a project's dataset;
harvesters read it as HealthDCAT-AP (Turtle, JSON-LD) and as FHIR Library resources.

What is checked, against real ingested files: the Turtle conforms to the HealthDCAT-AP
Release 8 NON_PUBLIC shapes (pySHACL, offline, tests/healthdcat.py); a harvester paging with
`modified_since` sees each dataset once; counts, modalities and body sites equal the index,
small counts suppressed; drafts and withdrawn datasets are absent; nothing identifying is
published; every Library conforms to its profile (app.fhir.conformance).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from collections import Counter
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from rdflib import Graph, Literal, Namespace, URIRef
from rdflib.compare import isomorphic
from rdflib.namespace import RDF
from sqlmodel import Session, select
from typer.testing import CliRunner

from app.auth.credentials import issue_token
from app.auth.roles import Role
from app.catalog import service as catalog
from app.catalog.model import DATA_THEMES, DescriptionError, validate_description
from app.cli import app as cli_app
from app.fhir.body_site import body_site, known_terms
from app.fhir.conformance import problems
from app.ingest import ingest_files
from app.main import create_app
from app.projects import create_project, get_project
from app.store.index import index_engine
from app.store.models import AuditEvent, Instance, Series, Study
from tests.healthdcat import validate_turtle
from tests.identities import Identity, leaked_tokens, original_uids, write_injected
from tests.samples import readable_instances

pytest_plugins = ["tests.blobstores", "tests.research_server"]

DCAT = Namespace("http://www.w3.org/ns/dcat#")  # open: rdflib's closed one warns under pytest
HEALTH = Namespace("http://healthdataportal.eu/ns/health#")
DEPOT = Namespace("https://w3id.org/imaging-depot/ns#")
HYDRA = Namespace("http://www.w3.org/ns/hydra/core#")
SNOMED_ID = "http://snomed.info/id/"
# Twelve files of twelve different patients (alpha: counts published), three for beta.
ALPHA_FILES = [
    "CT_small.dcm", "MR_small.dcm", "JPEG-lossy.dcm", "693_J2KI.dcm", "SC_rgb_small_odd.dcm",
    "rtdose_1frame.dcm", "6154", "6293", "IM000000", "rtplan.dcm",
    "J2K_pixelrep_mismatch.dcm", "RG3_J2KI.dcm",
]  # fmt: skip
BETA_FILES = ["US1_J2KI.dcm", "17106", "SC_rgb_dcmtk_+eb+cr.dcm"]
WHO = Identity()


def description(title: str, **extra) -> dict:
    return {
        "title": title,
        "description": f"Pseudonymised imaging studies: {title}.",
        "purpose": "Develop and validate image analysis methods.",
        "legal_basis": "MR-004 (CNIL reference methodology)",
        "keywords": ["imaging", "DICOM"],
        "themes": ["TECH"],
        "contact_point": {"name": "Imaging research unit", "email": "irm@chu.example.org"},
        "producers": [
            {"role": "centre", "name": "CHU Example", "identifier": "https://ror.org/00example"},
            {"role": "annotator", "name": "Radiology residents' annotation team"},
            {"role": "funder", "name": "Agence nationale de la recherche", "identifier": "ANR-1"},
        ],
        "documentation": [{"title": "Protocol", "url": "https://chu.example.org/protocol"}],
        "retention": {"years": 10},
        "language": ["en"],
        **extra,
    }


def _files(names: list[str]) -> list[Path]:
    by_name = {path.name: path for path in readable_instances()}
    return [by_name[name] for name in names]


def _manager(research, project: str) -> dict[str, str]:
    if project == "alpha":
        return research.headers("manager")
    token = issue_token(research.settings, project, Role.data_manager)[1]
    return {"Authorization": f"Bearer {token}"}


def _describe(research, project: str, body: dict, publish: bool = True) -> dict:
    headers = _manager(research, project)
    answer = research.client.put(f"/projects/{project}/dataset", headers=headers, json=body)
    assert answer.status_code == 200, answer.text
    if publish:
        answer = research.client.post(f"/projects/{project}/dataset/publish", headers=headers)
        assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.fixture
def site(research, tmp_path):
    """alpha: 12 patients (one file carrying a synthetic identity); beta: 3 patients; gamma:
    published without images; delta: a draft; epsilon: published, then withdrawn."""
    alpha = _files(ALPHA_FILES)
    alpha[0] = write_injected(alpha[0], tmp_path / "injected.dcm", WHO)
    report = research.ingest(alpha)
    assert len(report.stored) == len(ALPHA_FILES), report
    beta = _files(BETA_FILES)
    beta_report = ingest_files(research.stores, get_project(research.settings, "beta"), beta)
    assert len(beta_report.stored) == len(BETA_FILES)
    for project in ("gamma", "delta", "epsilon"):
        create_project(research.settings, project, project.title())
    _describe(research, "alpha", description("Brain and body imaging of the memory clinic"))
    _describe(research, "beta", description("Émergences: ultrasound and CT", themes=[]))
    _describe(research, "gamma", description("Gamma cohort without images", language=["fr"]))
    _describe(research, "delta", description("Delta draft"), publish=False)
    _describe(research, "epsilon", description("Epsilon withdrawn"))
    answer = research.client.post(
        "/projects/epsilon/dataset/withdraw", headers=_manager(research, "epsilon")
    )
    assert answer.status_code == 200 and answer.json()["status"] == "withdrawn"
    research.paths = alpha + beta
    return research


def _graph(text: str, fmt: str = "turtle") -> Graph:
    return Graph().parse(data=text, format=fmt)


def _catalogue(research, query: str = "", suffix: str = "ttl", who: str = "researcher") -> str:
    answer = research.get(f"/catalog.{suffix}{query}", who=who)
    assert answer.status_code == 200, answer.text
    return answer.text


def _dataset(project: str) -> URIRef:
    return URIRef(f"http://testserver/fhir/Library/{project}")


def _index(research, project: str) -> dict:
    """What the index says, read here without the catalogue's code."""
    with Session(index_engine(research.settings.index_url)) as session:
        studies = session.exec(select(Study).where(Study.project_id == project)).all()
        series = session.exec(select(Series).where(Series.project_id == project)).all()
        instances = session.exec(select(Instance).where(Instance.project_id == project)).all()
    return {
        "subjects": len({s.patient_id for s in studies}),
        "studies": len(studies),
        "series": len(series),
        "instances": len(instances),
        "bytes": sum(i.size for i in instances),
        "modalities": {s.modality for s in series if s.modality},
        "body_sites": {body_site(s.body_part_examined)["code"] for s in series
                       if body_site(s.body_part_examined)},
    }  # fmt: skip


def _value(graph: Graph, subject: URIRef, prop: URIRef) -> int | None:
    value = graph.value(subject, prop)
    return None if value is None else int(value)


# --- the description and the body-site table ------------------------------------------------


def test_a_description_is_checked_with_one_readable_line_per_problem():
    with pytest.raises(DescriptionError) as caught:
        validate_description(
            {"title": "x", "keywords": [], "themes": ["NOPE"], "bogus": 1,
             "contact_point": {"email": "Jean.Dupont-at-chu"}, "access_rights": "PUBLIC"}
        )  # fmt: skip
    found = caught.value.problems
    assert "title: String should have at least 3 characters" in found
    assert "bogus: unknown field" in found
    assert any(p.startswith("keywords:") for p in found)
    assert any(p.startswith("themes: unknown EU data theme") for p in found)
    assert any(p.startswith("contact_point.email: expected an e-mail") for p in found)
    assert any(p.startswith("access_rights:") for p in found)  # NON_PUBLIC, not a choice
    assert not any("Dupont" in p for p in found)  # the value is never echoed
    ok = validate_description(description("A title", themes=["tech"], language=["fr", "FRA"]))
    assert ok.themes == ["HEAL", "TECH"] and ok.access_rights == "NON_PUBLIC"
    assert ok.language == ["FRA"] and ok.hdab.url == "https://www.health-data-hub.fr/"
    assert set(DATA_THEMES) >= set(ok.themes)


def test_the_example_of_the_data_managers_guide_is_valid():
    guide = Path("docs/catalog.md").read_text()
    example = guide.split("```json\n", 1)[1].split("```", 1)[0]
    described = validate_description(json.loads(example))
    assert described.themes == ["HEAL", "TECH"] and len(described.producers) == 4


def test_body_part_examined_maps_to_snomed_as_annex_l_says():
    mapping = json.loads(Path("mappings/fhir/body-part-snomed.json").read_text())
    assert "PS3.16" in mapping["_about"]["source"] and mapping["_about"]["edition"]
    common = {
        "HEAD": "69536005", "BRAIN": "12738006", "CHEST": "816094009", "ABDOMEN": "818981001",
        "PELVIS": "816092008", "SPINE": "421060004", "CSPINE": "122494005",
        "TSPINE": "122495006", "LSPINE": "122496007", "KNEE": "72696002", "BREAST": "76752008",
        "HEART": "80891009", "LUNG": "39607008", "LIVER": "10200004", "KIDNEY": "64033007",
        "NECK": "45048000", "SHOULDER": "16982005", "HIP": "24136001", "HAND": "85562004",
        "FOOT": "56459004", "ANKLE": "70258002", "WRIST": "74670003", "ELBOW": "16953009",
        "EXTREMITY": "66019005", "WHOLEBODY": "38266002", "PROSTATE": "41216001",
    }  # fmt: skip
    for term, code in common.items():
        coding = body_site(term)
        assert coding is not None and coding["code"] == code, term
        assert coding["system"] == "http://snomed.info/sct" and coding["display"]
    assert body_site("Whole Body")["code"] == "38266002"  # spelled loosely by devices
    assert body_site(" head ")["code"] == "69536005"
    assert body_site("DUPONT^JEAN") is None and body_site("") is None and body_site(None) is None
    assert len(known_terms()) > 100


# --- HealthDCAT-AP ---------------------------------------------------------------------------


def test_the_catalogue_conforms_to_the_non_public_shapes_and_matches_the_index(site):
    turtle = _catalogue(site)
    graph = _graph(turtle)
    report = validate_turtle(turtle)
    print(f"\nNON_PUBLIC: {len(report.violations)} violations, {len(report.warnings)} warnings")
    for path, count in sorted(Counter(w.path for w in report.warnings).items()):
        print(f"  warning x{count}: {path} (recommended, no data for it)")
    assert report.violations == [], report.violations
    assert report.conforms

    catalogue = URIRef("http://testserver/fhir/Library/depot.catalog")
    listed = set(graph.objects(catalogue, DCAT.dataset))
    assert listed == {_dataset("alpha"), _dataset("beta"), _dataset("gamma")}  # no draft,
    assert set(graph.subjects(RDF.type, DCAT.Dataset)) == listed  # no withdrawn dataset

    alpha, index = _dataset("alpha"), _index(site, "alpha")
    assert index["subjects"] == 12 and index["instances"] == 12
    assert _value(graph, alpha, HEALTH.numberOfUniqueIndividuals) == index["subjects"]
    assert _value(graph, alpha, HEALTH.numberOfRecords) == index["studies"]
    assert _value(graph, alpha, DEPOT.numberOfSeries) == index["series"]
    assert _value(graph, alpha, DEPOT.numberOfInstances) == index["instances"]
    distribution = graph.value(alpha, DCAT.distribution)
    assert int(graph.value(distribution, DCAT.byteSize)) == index["bytes"]
    assert str(graph.value(distribution, DCAT.accessURL)).endswith("/projects/alpha/dicom-web")
    assert {str(m) for m in graph.objects(alpha, DEPOT.modality)} == index["modalities"]
    assert {"CT", "MR", "NM", "CR"} <= index["modalities"]
    sites = {str(s).removeprefix(SNOMED_ID) for s in graph.objects(alpha, DEPOT.bodySite)}
    assert sites == index["body_sites"] == {"69536005", "38266002", "122494005", "66019005"}
    assert {str(c) for c in graph.objects(alpha, HEALTH.hasCodeValues)} == sites

    beta, beta_index = _dataset("beta"), _index(site, "beta")
    assert beta_index["subjects"] == 3
    assert graph.value(beta, HEALTH.numberOfUniqueIndividuals) is None  # suppressed
    assert Literal("subjects") in set(graph.objects(beta, DEPOT.suppressedCount))
    assert {str(m) for m in graph.objects(beta, DEPOT.modality)} == beta_index["modalities"]

    # Nothing identifying: not the synthetic identity, no original UID, no patient name.
    everything = [turtle, _catalogue(site, suffix="jsonld")]
    everything.append(site.get("/fhir/Library?_count=100").text)
    for text in everything:
        assert leaked_tokens(text.encode("utf-8"), WHO) == []
        for uid in original_uids(site.paths):
            assert uid not in text
        for name in ("CompressedSamples", "Lestrade", "Citizen", "Doe^", "JXD191021006"):
            assert name not in text


def test_json_ld_is_the_same_graph_as_turtle(site):
    turtle = _catalogue(site, "?page_size=2")
    jsonld = _catalogue(site, "?page_size=2", suffix="jsonld")
    assert json.loads(jsonld)  # a JSON document
    same = jsonld.replace("/catalog.jsonld?", "/catalog.ttl?")  # the pages link their format
    assert isomorphic(_graph(same, "json-ld"), _graph(turtle))
    assert len(_graph(turtle)) > 100


def test_a_harvester_pages_with_modified_since_and_sees_each_dataset_once(research):
    for number in range(1, 6):
        create_project(research.settings, f"p{number}", f"P{number}")
        _describe(research, f"p{number}", description(f"Project {number} dataset"))
    create_project(research.settings, "draft", "Draft")
    _describe(research, "draft", description("A draft"), publish=False)

    def harvest(query: str) -> list[URIRef]:
        seen, url, pages = [], f"/catalog.ttl?{query}", 0
        while url is not None:
            pages += 1
            graph = _graph(research.get(url).text)
            view = next(graph.subjects(RDF.type, HYDRA.PartialCollectionView))
            catalogue = next(graph.subjects(RDF.type, DCAT.Catalog))
            seen += list(graph.objects(catalogue, DCAT.dataset))
            total = int(graph.value(view, HYDRA.totalItems))
            following = graph.value(view, HYDRA.next)
            url = str(following) if following is not None else None
            assert pages <= 10
        assert len(seen) == total
        return seen

    everything = harvest("page_size=2")
    assert sorted(everything) == sorted(_dataset(f"p{n}") for n in range(1, 6))
    assert len(set(everything)) == len(everything) == 5  # each once, over three pages

    time.sleep(0.01)
    since = dt.datetime.now(dt.UTC)
    time.sleep(0.01)
    for project in ("p2", "p4"):  # republished: their counts refreshed, a new version
        answer = research.client.post(
            f"/projects/{project}/dataset/publish", headers=_manager(research, project)
        )
        assert answer.json()["version"] == 2
    changed = harvest(f"page_size=1&modified_since={since.isoformat().replace('+00:00', 'Z')}")
    assert sorted(changed) == [_dataset("p2"), _dataset("p4")]
    paris = since.astimezone(dt.timezone(dt.timedelta(hours=1))).isoformat()
    assert sorted(harvest(f"modified_since={paris.replace('+', '%2B')}")) == sorted(changed)
    assert sorted(harvest(f"modified_since={paris}")) == sorted(changed)  # "+" unencoded
    assert harvest("modified_since=2999-01-01") == []


# --- FHIR Library ---------------------------------------------------------------------------


def _search(research, query: str, who: str = "researcher") -> list[dict]:
    answer = research.get(f"/fhir/Library{query}", who=who)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/fhir+json")
    bundle = answer.json()
    assert bundle["type"] == "searchset" and problems(bundle) == []
    return [entry["resource"] for entry in bundle.get("entry", [])]


def _ids(libraries: list[dict]) -> set[str]:
    return {library["id"] for library in libraries}


def test_fhir_libraries_conform_and_carry_the_dataset_turtle(site):
    libraries = _search(site, "?_count=100")
    assert _ids(libraries) == {"alpha", "beta", "gamma", "depot.catalog"}
    catalogue_graph = _graph(_catalogue(site))
    for library in libraries:
        assert problems(library) == [], library["id"]
        assert library["meta"]["profile"] and library["meta"]["lastUpdated"]
        if library["id"] == "depot.catalog":
            listed = {a["resource"] for a in library["relatedArtifact"]}
            assert listed == {str(_dataset(p)) for p in ("alpha", "beta", "gamma")}
            assert {a["type"] for a in library["relatedArtifact"]} == {"composed-of"}
            continue
        assert library["meta"]["profile"] == [
            "https://w3id.org/imaging-depot/fhir/StructureDefinition/depot-dataset-description"
        ]
        (content,) = library["content"]
        assert content["contentType"] == "text/turtle"
        own = _graph(base64.b64decode(content["data"]).decode("utf-8"))
        assert validate_turtle(own.serialize(format="turtle")).violations == []
        missing = [t for t in own if t not in catalogue_graph]
        assert missing == []  # the Library's Turtle is the catalogue's, triple for triple
        assert (URIRef(library["url"]), RDF.type, DCAT.Dataset) in own

    answer = site.get("/fhir/Library/alpha")
    assert answer.status_code == 200 and problems(answer.json()) == []
    assert answer.headers["etag"] == 'W/"1"' and answer.headers["last-modified"]
    assert site.get("/fhir/Library/alpha", headers={"If-None-Match": 'W/"1"'}).status_code == 304
    catalogue = site.get("/fhir/Library/depot.catalog")
    assert catalogue.status_code == 200 and problems(catalogue.json()) == []
    for gone, status in (("epsilon", 410), ("delta", 404), ("nope", 404), ("a" * 80, 404)):
        answer = site.get(f"/fhir/Library/{gone}")
        assert answer.status_code == status
        assert answer.json()["resourceType"] == "OperationOutcome"


def test_fhir_library_search_by_each_parameter(site):
    alpha = site.get("/fhir/Library/alpha").json()
    updated = dt.datetime.fromisoformat(alpha["meta"]["lastUpdated"].replace("Z", "+00:00"))
    before = (updated - dt.timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    after = (updated + dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    everything = {"alpha", "beta", "gamma", "depot.catalog"}
    assert _ids(_search(site, f"?_lastUpdated=gt{before}")) == everything
    assert _ids(_search(site, f"?_lastUpdated=gt{after}")) == set()
    assert _ids(_search(site, f"?_lastUpdated=lt{before}")) == set()
    assert _ids(_search(site, f"?url={alpha['url']}")) == {"alpha"}
    assert _ids(_search(site, "?title=brain")) == {"alpha"}  # starts with, any case
    assert _ids(_search(site, "?title=emergences")) == {"beta"}  # accents folded
    assert _ids(_search(site, "?title:contains=MEMORY")) == {"alpha"}
    assert _ids(_search(site, "?title=memory")) == set()
    assert _ids(_search(site, "?title:exact=Gamma cohort without images")) == {"gamma"}
    assert _ids(_search(site, "?topic=TECH")) == {"alpha", "gamma"}  # beta: HEAL only
    theme = "http://publications.europa.eu/resource/authority/data-theme"
    assert _ids(_search(site, f"?topic={theme}|HEAL")) == {"alpha", "beta", "gamma"}
    assert _ids(_search(site, "?topic=http://snomed.info/sct|122494005")) == {"alpha"}
    assert _ids(_search(site, "?topic=US")) == {"beta"}  # a modality (DCM)
    assert _ids(_search(site, "?topic=US,RTPLAN")) == {"alpha", "beta"}
    assert _ids(_search(site, "?status=active")) == everything
    assert _ids(_search(site, "?status=retired")) == set()
    assert _ids(_search(site, "?_id=beta,gamma")) == {"beta", "gamma"}
    assert _ids(_search(site, "?topic=TECH&title=gamma")) == {"gamma"}
    first = site.get("/fhir/Library?_count=2").json()
    assert first["total"] == 4 and len(first["entry"]) == 2
    (following,) = [link["url"] for link in first["link"] if link["relation"] == "next"]
    second = site.get(following).json()
    assert _ids([e["resource"] for e in first["entry"] + second["entry"]]) == everything


def test_bad_parameters_are_400_and_echo_nothing(research):
    for query in ("?_lastUpdated=yesterday", "?foo=1", "?status=Doe^John", "?_count=x",
                  "?title=", "?_offset=-1"):  # fmt: skip
        answer = research.get(f"/fhir/Library{query}")
        assert answer.status_code == 400, query
        outcome = answer.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert "Doe" not in answer.text and "yesterday" not in answer.text
    for query in ("?page=0", "?page_size=5000", "?modified_since=Doe^John", "?bogus=1",
                  "?page=1&page=2"):  # fmt: skip
        for suffix in ("ttl", "jsonld"):
            answer = research.get(f"/catalog.{suffix}{query}")
            assert answer.status_code == 400, (suffix, query)
            assert "Doe" not in answer.text


def test_fhir_routes_of_the_site_serve_json_only(research):
    for url in ("/fhir/metadata", "/fhir/Library"):
        answer = research.get(url, headers={"Accept": "application/fhir+xml"})
        assert answer.status_code == 406 and answer.json()["resourceType"] == "OperationOutcome"
        assert research.get(url, headers={"Accept": "application/fhir+json"}).status_code == 200


def test_the_catalogue_needs_a_token_unless_the_site_publishes_it(research):
    _describe(research, "alpha", description("Alpha dataset"))
    routes = ["/catalog.ttl", "/catalog.jsonld", "/fhir/metadata", "/fhir/Library",
              "/fhir/Library/alpha", "/fhir/Library/depot.catalog"]  # fmt: skip
    for route in routes:
        answer = research.client.get(route)
        assert answer.status_code == 401, route
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert research.get(route, who="other").status_code == 200, route  # any valid token
    assert research.client.get("/fhir/Library").json()["resourceType"] == "OperationOutcome"
    public = research.settings.model_copy(update={"catalog_public": True})
    with TestClient(create_app(public)) as anonymous:
        for route in routes:
            assert anonymous.get(route).status_code == 200, route
        statement = anonymous.get("/fhir/metadata").json()
        assert statement["resourceType"] == "CapabilityStatement"
        (resource,) = statement["rest"][0]["resource"]
        assert resource["type"] == "Library" and len(resource["supportedProfile"]) == 2
        assert {p["name"] for p in resource["searchParam"]} >= {
            "_lastUpdated",
            "url",
            "title",
            "topic",
            "status",
        }
        assert problems(statement) == []
        assert anonymous.get("/projects/alpha/dataset").status_code == 401  # not the project


# --- the data manager's API and CLI ---------------------------------------------------------


def _audited(settings, project: str, fragment: str) -> list[dict]:
    with Session(index_engine(settings.index_url)) as session:
        rows = session.exec(
            select(AuditEvent).where(AuditEvent.project_id == project).order_by(AuditEvent.seq)
        ).all()
    return [json.loads(r.event) for r in rows if fragment in r.event]


def test_the_dataset_api_describes_publishes_withdraws_and_is_audited(research):
    manager = research.headers("manager")
    url = "/projects/alpha/dataset"
    assert research.get(url).status_code == 404  # not described yet
    assert research.client.post(url + "/publish", headers=manager).status_code == 409
    bad = research.client.put(url, headers=manager, json={"title": "x", "keywords": "Dupont"})
    assert bad.status_code == 422 and isinstance(bad.json()["detail"], list)
    assert "Dupont" not in bad.text
    listed = research.client.put(url, headers=manager, json=["Dupont"])
    assert listed.status_code == 422 and "Dupont" not in listed.text
    researcher_put = research.client.put(url, headers=research.headers(), json=description("R"))
    assert researcher_put.status_code == 403
    assert research.get(url, who="other").status_code == 404  # another project's token

    research.ingest(_files(["CT_small.dcm", "6154"]))
    draft = _describe(research, "alpha", description("Alpha dataset"), publish=False)
    assert draft["status"] == "draft" and draft["version"] == 0 and draft["pending_changes"]
    stats = draft["statistics"]
    assert stats["subjects"] is None and "subjects" in stats["suppressed"]  # 2 < 10
    assert stats["modalities"] == ["CR", "CT"] and stats["body_sites"] == ["CSPINE"]
    assert stats["bytes"] > 10 and stats["threshold"] == 10
    published = research.client.post(url + "/publish", headers=manager).json()
    assert published["status"] == "published" and published["version"] == 1
    assert not published["pending_changes"]
    assert published["library_url"] == "http://testserver/fhir/Library/alpha"

    edited = _describe(research, "alpha", description("Alpha dataset, renamed"), publish=False)
    assert edited["status"] == "published" and edited["pending_changes"]
    assert research.get("/fhir/Library/alpha").json()["title"] == "Alpha dataset"  # as published
    seen = research.get(url)  # a researcher reads it
    assert seen.status_code == 200 and seen.json()["description"]["title"].endswith("renamed")

    withdrawn = research.client.post(url + "/withdraw", headers=manager).json()
    assert withdrawn["status"] == "withdrawn"
    assert research.client.post(url + "/withdraw", headers=manager).status_code == 409
    assert research.get("/fhir/Library/alpha").status_code == 410

    events = _audited(research.settings, "alpha", "/projects/{project_id}/dataset")
    methods = [d["valueString"] for e in events for ent in e["entity"]
               for d in ent.get("detail", []) if d["type"] == "method"]  # fmt: skip
    assert methods.count("PUT") >= 3 and methods.count("POST") >= 3
    actions = {d["valueString"] for e in events for ent in e["entity"]
               for d in ent.get("detail", []) if d["type"] == "catalog"}  # fmt: skip
    assert actions == {"describe", "publish", "withdraw"}


def test_the_cli_describes_publishes_withdraws_shows_and_audits(settings, tmp_path):
    create_project(settings, "alpha", "Alpha")
    runner = CliRunner()
    good = tmp_path / "dataset.yaml"
    good.write_text(
        "title: Alpha dataset\n"
        "description: Pseudonymised CT studies of the alpha project.\n"
        "purpose: Testing the catalogue.\n"
        "legal_basis: MR-004\n"
        "keywords: [CT]\n"
        "contact_point: {email: irm@chu.example.org}\n"
        "retention: {until: 2035-12-31}\n"
    )
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"title": "Alpha", "keywords": ["CT"], "colour": "Dupont"}))

    refused = runner.invoke(cli_app, ["catalog", "describe", str(bad), "--project", "alpha"])
    assert refused.exit_code == 2 and "colour: unknown field" in refused.output
    assert "Dupont" not in refused.output
    checked = runner.invoke(
        cli_app, ["catalog", "describe", str(good), "--project", "alpha", "--check"]
    )
    assert checked.exit_code == 0 and "fewer than 10" in checked.output
    assert catalog.get_dataset(index_engine(settings.index_url), "alpha") is None
    for command in (
        ["catalog", "describe", str(good), "--project", "alpha"],
        ["catalog", "publish", "--project", "alpha"],
        ["catalog", "show"],
        ["catalog", "show", "--project", "alpha"],
        ["catalog", "withdraw", "--project", "alpha"],
    ):
        result = runner.invoke(cli_app, command)
        assert result.exit_code == 0, (command, result.output)
    row = catalog.get_dataset(index_engine(settings.index_url), "alpha")
    assert row is not None and row.status == "withdrawn" and row.version == 1
    again = runner.invoke(cli_app, ["catalog", "withdraw", "--project", "alpha"])
    assert again.exit_code != 0
    events = _audited(settings, "alpha", '"catalog"')
    outcomes = [
        (d["valueString"], e["outcome"], e["agent"][0]["who"]["identifier"]["system"])
        for e in events for d in e["entity"][0]["detail"] if d["type"] == "catalog"
    ]  # fmt: skip
    operator = "urn:imaging-depot:operator"
    assert outcomes == [
        ("describe", "0", operator), ("publish", "0", operator), ("withdraw", "0", operator),
        ("withdraw", "4", operator),
    ]  # fmt: skip
    verified = runner.invoke(cli_app, ["audit", "verify"])
    assert verified.exit_code == 0, verified.output
