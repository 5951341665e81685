"""The catalogue as FHIR R4 Library resources (FIELD-NOTES 3.5), two profiles
(`fhir_profiles/input/fsh/catalogue.fsh`):

- DatasetDescription: one Library per published dataset, id = the project's id. Its `content`
  is the dataset's HealthDCAT-AP Turtle (base64), made by app.catalog.rdf from the same
  published snapshot: FHIR and RDF cannot drift. `url` is also the dataset's IRI in the RDF.
- DatasetCatalog: the site's catalogue, id `depot.catalog`, whose `relatedArtifact`
  `composed-of` lists every dataset Library's canonical URL. The profile wants at least one,
  so with no published dataset there is no catalogue Library (404 / absent from searches).

Versions: a dataset Library's versionId is its publication count (`Dataset.version`), its
lastUpdated the publication time. The catalogue's versionId is a digest of what it lists, its
lastUpdated the last publication or withdrawal.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import threading
from collections import OrderedDict

import orjson

from app.catalog.model import DATA_THEMES, HEALTH_CATEGORY_LABELS
from app.catalog.rdf import CATALOG_ID, EU, HDEU, Site, dataset_turtle, library_url
from app.fhir.body_site import body_site
from app.fhir.common import instant
from app.fhir.resources import CANONICAL, DCM
from app.store.models import Dataset

DESCRIPTION_PROFILE = f"{CANONICAL}/StructureDefinition/depot-dataset-description"
CATALOG_PROFILE = f"{CANONICAL}/StructureDefinition/depot-dataset-catalog"
LIBRARY_TYPE = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/library-type",
            "code": "asset-collection",
            "display": "Asset Collection",
        }
    ]
}
THEME_SYSTEM = EU + "data-theme"
CATEGORY_SYSTEM = HDEU + "healthcategories"


def _contact(org: dict) -> dict:
    telecom = []
    if org.get("email"):
        telecom.append({"system": "email", "value": org["email"]})
    if org.get("url"):
        telecom.append({"system": "url", "value": org["url"]})
    detail: dict = {"telecom": telecom}
    if org.get("name"):
        detail = {"name": org["name"], **detail}
    return detail


def _narrative(title: str, text: str) -> dict:
    """A minimal generated narrative: the title and the description, escaped."""
    div = (
        '<div xmlns="http://www.w3.org/1999/xhtml"><p><b>'
        f"{html.escape(title)}</b></p><p>{html.escape(text)}</p></div>"
    )
    return {"status": "generated", "div": div}


def _topics(description: dict, statistics: dict) -> list[dict]:
    """Themes, health categories, modalities (DCM) and body sites (SNOMED CT) as codings,
    searchable with `topic`; keywords as text."""
    topics: list[dict] = []
    for code in description.get("themes", []):
        topics.append({"coding": [{"system": THEME_SYSTEM, "code": code,
                                   "display": DATA_THEMES[code]}]})  # fmt: skip
    for code in description.get("health_categories", []):
        coding = {"system": CATEGORY_SYSTEM, "code": code}
        if code in HEALTH_CATEGORY_LABELS:
            coding["display"] = HEALTH_CATEGORY_LABELS[code]
        topics.append({"coding": [coding]})
    for modality in statistics.get("modalities", []):
        topics.append({"coding": [{"system": DCM, "code": modality}]})
    for term in statistics.get("body_sites", []):
        coding = body_site(term)
        if coding is not None:
            topics.append({"coding": [coding]})
    topics.extend({"text": keyword} for keyword in description.get("keywords", []))
    return topics


_TURTLE: OrderedDict[tuple, bytes] = OrderedDict()
_TURTLE_LOCK = threading.Lock()
_TURTLE_KEPT = 256


def _turtle(row: Dataset, site: Site) -> bytes:
    """The dataset's Turtle, kept per published version: every Library search would otherwise
    serialize every dataset again (a harvester polls; the snapshot changes only when the
    data manager publishes)."""
    snapshot = orjson.dumps(row.published, option=orjson.OPT_SORT_KEYS)
    key = (row.project_id, row.version, row.published_at, hashlib.sha256(snapshot).digest(), site)
    with _TURTLE_LOCK:
        if key in _TURTLE:
            _TURTLE.move_to_end(key)
            return _TURTLE[key]
    turtle = dataset_turtle(row, site).encode("utf-8")
    with _TURTLE_LOCK:
        _TURTLE[key] = turtle
        while len(_TURTLE) > _TURTLE_KEPT:
            _TURTLE.popitem(last=False)
    return turtle


def description_library(row: Dataset, site: Site) -> dict:
    """The DatasetDescription Library of a published dataset (its published snapshot)."""
    snapshot = row.published or {}
    desc, stats = snapshot["description"], snapshot["statistics"]
    url = library_url(site.base, row.project_id)
    published_at = row.published_at or row.modified_at
    publisher = desc.get("publisher") or site.contact
    turtle = _turtle(row, site)
    library: dict = {
        "resourceType": "Library",
        "id": row.project_id,
        "meta": {
            "versionId": str(row.version),
            "lastUpdated": instant(published_at),
            "profile": [DESCRIPTION_PROFILE],
        },
        "text": _narrative(desc["title"], desc["description"]),
        "url": url,
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": url}],
        "version": str(row.version),
        "title": desc["title"],
        "status": "active",
        "type": LIBRARY_TYPE,
        "date": instant(published_at),
        "publisher": publisher["name"],
        "contact": [_contact(desc["contact_point"])],
        "description": desc["description"],
        "purpose": desc["purpose"],
    }
    topics = _topics(desc, stats)
    if topics:
        library["topic"] = topics
    authors = [
        {"name": f"{p['name']} ({p['role']})"}
        for p in desc.get("producers", [])
        if p["role"] != "funder"
    ]
    if authors:
        library["author"] = authors
    documentation = [
        {"type": "documentation", "display": link["title"], "url": link["url"]}
        for link in desc.get("documentation", [])
    ]
    if desc.get("landing_page"):
        documentation.append(
            {"type": "documentation", "display": "Landing page", "url": desc["landing_page"]}
        )
    if documentation:
        library["relatedArtifact"] = documentation
    library["content"] = [
        {
            "contentType": "text/turtle",
            "title": "HealthDCAT-AP description (NON_PUBLIC)",
            "data": base64.b64encode(turtle).decode("ascii"),
            "hash": base64.b64encode(hashlib.sha1(turtle).digest()).decode("ascii"),
            "size": len(turtle),
        }
    ]
    return library


def catalog_library(
    rows: list[Dataset], site: Site, last_change: dt.datetime | None
) -> dict | None:
    """The DatasetCatalog Library listing the published datasets; None when there is none."""
    if not rows:
        return None
    listed = [
        {
            "type": "composed-of",
            "display": (row.published or {})["description"]["title"],
            "resource": library_url(site.base, row.project_id),
        }
        for row in sorted(rows, key=lambda r: r.project_id)
    ]
    library: dict = {
        "resourceType": "Library",
        "id": CATALOG_ID,
        "meta": {"profile": [CATALOG_PROFILE]},
        "text": _narrative(site.catalogue_title, f"{len(listed)} published dataset(s)."),
        "url": site.catalog_iri,
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": site.catalog_iri}],
        "title": site.catalogue_title,
        "status": "active",
        "type": LIBRARY_TYPE,
        "publisher": site.name,
        "contact": [_contact(site.contact)],
        "description": (
            "The site's catalogue of pseudonymised imaging datasets (non-public access "
            "through the health data access body); also served as HealthDCAT-AP."
        ),
        "relatedArtifact": listed,
        "content": [
            {
                "contentType": "text/turtle",
                "url": f"{site.base}/catalog.ttl",
                "title": "HealthDCAT-AP catalogue (Turtle, paged)",
            },
            {
                "contentType": "application/ld+json",
                "url": f"{site.base}/catalog.jsonld",
                "title": "HealthDCAT-AP catalogue (JSON-LD, paged)",
            },
        ],
    }
    digest = hashlib.sha256(orjson.dumps(library, option=orjson.OPT_SORT_KEYS)).hexdigest()
    library["meta"]["versionId"] = digest[:16]
    library["version"] = digest[:16]
    when = last_change or max(r.published_at or r.modified_at for r in rows)
    library["meta"]["lastUpdated"] = instant(when)
    library["date"] = instant(when)
    return library
