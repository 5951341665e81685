"""The catalogue as RDF (rdflib): HealthDCAT-AP Release 8, access level NON_PUBLIC.

One `dcat:Catalog` (the site), one `dcat:Dataset` per published dataset, each with one
distribution whose access URL is the project's DICOMweb base (access is granted through the
health data access body, hence NON_PUBLIC). Everything the NON_PUBLIC shapes require is
stated, and the recommended properties we have data for (purpose, legal basis, custodian,
counts, retention, language, documentation pages, landing page). Shapes checked in
tests/test_catalog.py with pySHACL against the vendored validator (tests/data/healthdcat-ap).

Choices:

- IRIs are the canonical URLs of the FHIR Libraries (`<base>/fhir/Library/<project>`, the
  catalogue `<base>/fhir/Library/depot.catalog`), so an IRI dereferences, and FHIR and RDF name
  the same thing. Parts of a dataset are fragments of its IRI: pages are self-contained and
  the same dataset gives the same triples on every page and in its Library's `content`.
- Every controlled-vocabulary concept used is stated with its `skos:inScheme`,
  `skos:prefLabel` and scheme title: harvesters and validators that do not preload the EU
  vocabularies still see what the codes are.
- Counts come from the published snapshot (app.catalog.service): a suppressed count (under
  10) is omitted, and `depot:suppressedCount` names it; nothing is approximated.
- `dct:type` is dataset-type STATISTICAL, as in HealthDCAT-AP's own example: the EU
  dataset-type vocabulary has no imaging concept.
- Pages (Hydra): `hydra:PartialCollectionView` with `hydra:totalItems`, `hydra:itemsPerPage`,
  `hydra:first`, `hydra:last`, `hydra:next`, `hydra:previous`, as ckanext-dcat pages.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

from rdflib import Graph, Literal, Namespace, URIRef
from rdflib.namespace import DCAT, DCTERMS, FOAF, PROV, RDF, RDFS, SKOS, XSD

from app.catalog.model import DATA_THEMES, HDH, HEALTH_CATEGORY_LABELS, LANGUAGES
from app.fhir.body_site import SNOMED, body_site
from app.store.models import Dataset

CV = Namespace("http://data.europa.eu/m8g/")
DCATAP = Namespace("http://data.europa.eu/r5r/")
DPV = Namespace("https://w3id.org/dpv#")
ELI = Namespace("http://data.europa.eu/eli/ontology#")
GEODCATAP = Namespace("http://data.europa.eu/930/")
HEALTH = Namespace("http://healthdataportal.eu/ns/health#")
HYDRA = Namespace("http://www.w3.org/ns/hydra/core#")
VCARD = Namespace("http://www.w3.org/2006/vcard/ns#")
DEPOT = Namespace("https://w3id.org/imaging-depot/ns#")
EU = "http://publications.europa.eu/resource/authority/"
HDEU = "https://hdeu-dcat.data.health.europa.eu/resource/authority/"
EHDS = URIRef("http://data.europa.eu/eli/reg/2025/327/oj")  # Regulation (EU) 2025/327 (EHDS)
NON_PUBLIC = URIRef(EU + "access-right/NON_PUBLIC")
STATISTICAL = URIRef(EU + "dataset-type/STATISTICAL")
IRREGULAR = URIRef(EU + "frequency/IRREG")  # data arrives as the project extracts it
AVAILABLE = URIRef(EU + "planned-availability/AVAILABLE")  # kept for the retention period
DCAT_VERSION = URIRef(str(DCAT) + "version")  # DCAT 3: not in rdflib's closed DCAT namespace
DICOM_MEDIA_TYPE = URIRef("http://www.iana.org/assignments/media-types/application/dicom")
CATALOG_ID = "depot.catalog"  # not a project ID (those have no dot): no clash
PREFIXES = {
    "dcat": DCAT, "dct": DCTERMS, "foaf": FOAF, "prov": PROV, "skos": SKOS, "vcard": VCARD,
    "cv": CV, "dcatap": DCATAP, "dpv": DPV, "eli": ELI, "geodcatap": GEODCATAP,
    "healthdcatap": HEALTH, "hydra": HYDRA, "depot": DEPOT,
}  # fmt: skip
_SCHEMES = {
    EU + "access-right": "Access right",
    EU + "data-theme": "Data theme",
    EU + "dataset-type": "Dataset type",
    EU + "language": "Language",
    EU + "frequency": "Frequency",
    EU + "planned-availability": "Planned availability",
    HDEU + "healthcategories": "Health categories",
    HDEU + "publisher-type": "Publisher type",
    HDEU + "coding-system": "Coding system",
    SNOMED: "SNOMED CT",
    str(DEPOT) + "producer-role": "Producer roles (imaging-depot)",
}
_PRODUCER_ROLES = {
    "centre": "Contributing centre",
    "expert": "Expert",
    "annotator": "Annotator",
    "funder": "Funder",
}


@dataclass(frozen=True)
class Site:
    """Who publishes the catalogue (DEPOT_SITE_*), and the base URL its IRIs start with."""

    base: str  # the server's public base URL, no trailing slash
    name: str
    url: str | None
    email: str | None

    @property
    def catalog_iri(self) -> str:
        return library_url(self.base, CATALOG_ID)

    @property
    def catalogue_title(self) -> str:
        return f"{self.name}: research imaging datasets"

    @property
    def contact(self) -> dict:
        """The site as an organisation, reachable by DEPOT_SITE_EMAIL or _URL (the server's
        own base when neither is set, so the contact point is never empty)."""
        org = {"name": self.name, "email": self.email, "url": self.url}
        if not self.email and not self.url:
            org["url"] = self.base + "/"
        return org


def library_url(base: str, library_id: str) -> str:
    """The canonical URL of a Library, and the IRI of the dataset (or catalogue) it holds."""
    return f"{base}/fhir/Library/{library_id}"


def dicomweb_base(base: str, project_id: str) -> str:
    return f"{base}/projects/{project_id}/dicom-web"


@dataclass(frozen=True)
class Page:
    """Where a page of the catalogue sits in the whole, for its Hydra view."""

    url: str  # the page's document URL without query
    number: int
    size: int
    total: int
    query: Sequence[tuple[str, str]] = ()  # the filters to repeat (modified_since, page_size)

    @property
    def last(self) -> int:
        return max(1, -(-self.total // self.size))

    def link(self, number: int) -> URIRef:
        return URIRef(f"{self.url}?{urlencode([*self.query, ('page', str(number))])}")


def new_graph() -> Graph:
    graph = Graph()
    for prefix, namespace in PREFIXES.items():
        graph.bind(prefix, namespace)
    return graph


def _concept(graph: Graph, iri: str, label: str, scheme: str) -> URIRef:
    """A concept with what the shapes check: type, label, scheme (typed and titled)."""
    node, scheme_node = URIRef(iri), URIRef(scheme)
    graph.add((node, RDF.type, SKOS.Concept))
    graph.add((node, SKOS.prefLabel, Literal(label, lang="en")))
    graph.add((node, SKOS.inScheme, scheme_node))
    graph.add((scheme_node, RDF.type, SKOS.ConceptScheme))
    graph.add((scheme_node, DCTERMS.title, Literal(_SCHEMES[scheme], lang="en")))
    return node


def _text(value: str, lang: str | None) -> Literal:
    return Literal(value, lang=lang)


def _contact_point(graph: Graph, node: URIRef, org: dict) -> URIRef:
    graph.add((node, RDF.type, CV.ContactPoint))
    if org.get("email"):
        graph.add((node, CV.email, Literal(org["email"])))
    if org.get("url"):
        graph.add((node, CV.contactPage, URIRef(org["url"])))
    return node


def _agent(graph: Graph, node: URIRef, org: dict, lang: str | None, kind: str | None) -> URIRef:
    """A foaf:Agent with its one cv:ContactPoint (HealthDCAT-AP's HealthAgent shape)."""
    graph.add((node, RDF.type, FOAF.Agent))
    graph.add((node, FOAF.name, _text(org["name"], lang)))
    if kind is not None:
        graph.add((node, DCTERMS.type, _concept(graph, HDEU + f"publisher-type/{kind}",
                                               kind.replace("-", " ").capitalize(),
                                               HDEU + "publisher-type")))  # fmt: skip
    graph.add((node, CV.contactPoint, _contact_point(graph, URIRef(f"{node}-contact"), org)))
    return node


def site_agent(graph: Graph, site: Site) -> URIRef:
    """The site as publisher (DEPOT_SITE_NAME, and its `contact`)."""
    return _agent(graph, URIRef(site.catalog_iri + "#publisher"), site.contact, None,
                  "inpatient-institute")  # fmt: skip


def _date(value: str | dt.datetime) -> dt.datetime:
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else value


def _lang(description: dict) -> str | None:
    languages = description.get("language") or []
    return LANGUAGES[languages[0]][0] if languages and languages[0] in LANGUAGES else None


def add_dataset(graph: Graph, row: Dataset, site: Site) -> URIRef:
    """The triples of one published dataset (from its snapshot), and of what it refers to."""
    snapshot = row.published or {}
    desc, stats = snapshot["description"], snapshot["statistics"]
    iri = library_url(site.base, row.project_id)
    ds = URIRef(iri)
    lang = _lang(desc)
    add = graph.add

    add((ds, RDF.type, DCAT.Dataset))
    add((ds, DCTERMS.title, _text(desc["title"], lang)))
    add((ds, DCTERMS.description, _text(desc["description"], lang)))
    add((ds, DCTERMS.identifier, Literal(iri)))
    add((ds, DCTERMS.accessRights, NON_PUBLIC))
    add((NON_PUBLIC, RDF.type, DCTERMS.RightsStatement))
    _concept(graph, str(NON_PUBLIC), "Non-public", EU + "access-right")
    add((ds, DCATAP.applicableLegislation, EHDS))
    add((EHDS, RDF.type, ELI.LegalResource))
    add((ds, DCTERMS.type, _concept(graph, str(STATISTICAL), "Statistical data",
                                    EU + "dataset-type")))  # fmt: skip
    for code in desc["themes"]:
        theme = _concept(graph, EU + f"data-theme/{code}", DATA_THEMES[code], EU + "data-theme")
        add((ds, DCAT.theme, theme))
    for code in desc["health_categories"]:
        label = HEALTH_CATEGORY_LABELS.get(code, code)
        category = _concept(graph, HDEU + f"healthcategories/{code}", label,
                            HDEU + "healthcategories")  # fmt: skip
        add((ds, HEALTH.healthCategory, category))
    for keyword in desc["keywords"]:
        add((ds, DCAT.keyword, _text(keyword, lang)))
    for code in desc.get("language", []):
        label = LANGUAGES.get(code, (None, code))[1]
        language = _concept(graph, EU + f"language/{code}", label, EU + "language")
        add((language, RDF.type, DCTERMS.LinguisticSystem))
        add((ds, DCTERMS.language, language))
    add((ds, HEALTH.hasStructuredData, Literal(False)))
    issued, published_at = _date(snapshot["issued"]), row.published_at
    add((ds, DCTERMS.issued, Literal(issued.astimezone(dt.UTC), datatype=XSD.dateTime)))
    if published_at is not None:
        add((ds, DCTERMS.modified, Literal(published_at, datatype=XSD.dateTime)))
    add((ds, DCAT_VERSION, Literal(str(row.version))))
    add((ds, DCTERMS.accrualPeriodicity, IRREGULAR))
    add((IRREGULAR, RDF.type, DCTERMS.Frequency))
    _concept(graph, str(IRREGULAR), "Irregular", EU + "frequency")

    # Who: contact point (vCard), publisher, custodian, HDAB, producers.
    contact = desc["contact_point"]
    kind = URIRef(iri + "#contact")
    add((ds, DCAT.contactPoint, kind))
    add((kind, RDF.type, VCARD.Kind))
    if contact.get("name"):
        add((kind, VCARD.fn, Literal(contact["name"])))
    if contact.get("email"):
        add((kind, VCARD.hasEmail, URIRef("mailto:" + contact["email"])))
    if contact.get("url"):
        add((kind, VCARD.hasURL, URIRef(contact["url"])))
    if desc.get("publisher"):
        publisher = _agent(graph, URIRef(iri + "#publisher"), desc["publisher"], lang, None)
    else:
        publisher = site_agent(graph, site)
    add((ds, DCTERMS.publisher, publisher))
    custodian = publisher
    if desc.get("custodian"):
        custodian = _agent(graph, URIRef(iri + "#custodian"), desc["custodian"], lang, None)
    add((ds, GEODCATAP.custodian, custodian))
    hdab_kind = "national-authority" if desc["hdab"].get("url") == HDH["url"] else None
    add((ds, HEALTH.hdab, _agent(graph, URIRef(iri + "#hdab"), desc["hdab"], None, hdab_kind)))
    for index, producer in enumerate(desc.get("producers", []), start=1):
        agent = URIRef(f"{iri}#producer-{index}")
        add((agent, RDF.type, FOAF.Agent))
        add((agent, FOAF.name, Literal(producer["name"])))
        if producer.get("identifier"):
            add((agent, DCTERMS.identifier, Literal(producer["identifier"])))
        if producer["role"] == "centre":
            add((ds, DCTERMS.creator, agent))
        attribution = URIRef(f"{iri}#attribution-{index}")
        add((ds, PROV.qualifiedAttribution, attribution))
        add((attribution, RDF.type, PROV.Attribution))
        add((attribution, PROV.agent, agent))
        role_code = producer["role"]
        role = _concept(
            graph, f"{DEPOT}producer-role/{role_code}", _PRODUCER_ROLES[role_code],
            str(DEPOT) + "producer-role",
        )  # fmt: skip
        add((role, RDF.type, DCAT.Role))
        add((attribution, DCAT.hadRole, role))

    # Why and on what basis; how it was made; how long it is kept.
    purpose = URIRef(iri + "#purpose")
    add((ds, DPV.hasPurpose, purpose))
    add((purpose, RDF.type, DPV.Purpose))
    add((purpose, DCTERMS.description, _text(desc["purpose"], lang)))
    basis = URIRef(iri + "#legal-basis")
    add((ds, DPV.hasLegalBasis, basis))
    add((basis, RDF.type, DPV.LegalBasis))
    add((basis, DCTERMS.description, _text(desc["legal_basis"], lang)))
    if desc.get("legal_basis_url"):
        add((basis, DCTERMS.source, URIRef(desc["legal_basis_url"])))
    provenance = URIRef(iri + "#provenance")
    add((ds, DCTERMS.provenance, provenance))
    add((provenance, RDF.type, DCTERMS.ProvenanceStatement))
    add((provenance, RDFS.label, Literal(_provenance(snapshot.get("profile")), lang="en")))
    retention = desc.get("retention")
    if retention:
        period = URIRef(iri + "#retention")
        start = issued.date()
        end = (
            dt.date.fromisoformat(retention["until"])
            if retention.get("until")
            else _add_years(start, retention["years"])
        )
        add((ds, HEALTH.retentionPeriod, period))
        add((period, RDF.type, DCTERMS.PeriodOfTime))
        add((period, DCAT.startDate, Literal(start, datatype=XSD.date)))
        add((period, DCAT.endDate, Literal(end, datatype=XSD.date)))

    # What: counts (suppressed ones omitted), modalities, body sites.
    counted = (
        (HEALTH.numberOfUniqueIndividuals, "subjects"), (HEALTH.numberOfRecords, "studies"),
        (DEPOT.numberOfStudies, "studies"), (DEPOT.numberOfSeries, "series"),
        (DEPOT.numberOfInstances, "instances"),
    )  # fmt: skip
    for prop, name in counted:
        if stats.get(name) is not None:
            add((ds, prop, Literal(stats[name], datatype=XSD.nonNegativeInteger)))
    for name in stats.get("suppressed", []):
        add((ds, DEPOT.suppressedCount, Literal(name)))
    if stats.get("suppressed"):
        note = "Counts under 10 are not published: " + ", ".join(stats["suppressed"]) + "."
        add((ds, RDFS.comment, Literal(note, lang="en")))
    for modality in stats.get("modalities", []):
        add((ds, DEPOT.modality, Literal(modality)))
    sites = [c for c in (body_site(term) for term in stats.get("body_sites", [])) if c]
    if sites:
        system = _concept(graph, HDEU + "coding-system/SNOMED-CT", "SNOMED CT",
                          HDEU + "coding-system")  # fmt: skip
        add((system, RDF.type, DCTERMS.Standard))
        add((ds, HEALTH.hasCodingSystem, system))
    for coding in sites:
        add((ds, HEALTH.hasCodeValues, Literal(coding["code"])))
        site_node = _concept(graph, f"http://snomed.info/id/{coding['code']}",
                             coding["display"], SNOMED)  # fmt: skip
        add((ds, DEPOT.bodySite, site_node))

    # Pages: documentation (rec. 4.7) and the landing page.
    for link in desc.get("documentation", []):
        page = URIRef(link["url"])
        add((ds, FOAF.page, page))
        add((page, RDF.type, FOAF.Document))
        add((page, DCTERMS.title, Literal(link["title"])))
    if desc.get("landing_page"):
        landing = URIRef(desc["landing_page"])
        add((ds, DCAT.landingPage, landing))
        add((landing, RDF.type, FOAF.Document))

    # How to get it: DICOMweb, once the HDAB has granted access.
    distribution = URIRef(iri + "#dicomweb")
    add((ds, DCAT.distribution, distribution))
    add((distribution, RDF.type, DCAT.Distribution))
    add((distribution, DCTERMS.title, Literal("Pseudonymised DICOM studies (DICOMweb)", lang="en")))
    add((distribution, DCTERMS.description, Literal(
        "DICOMweb (QIDO-RS, WADO-RS) access to the project's pseudonymised studies, for "
        "the holders of an access permit; requests go to the health data access body.",
        lang="en")))  # fmt: skip
    add((distribution, DCAT.accessURL, URIRef(dicomweb_base(site.base, row.project_id))))
    add((distribution, DCATAP.applicableLegislation, EHDS))
    add((distribution, DCAT.mediaType, DICOM_MEDIA_TYPE))
    add((DICOM_MEDIA_TYPE, RDF.type, DCTERMS.MediaType))
    add((distribution, DCATAP.availability,
         _concept(graph, str(AVAILABLE), "Available", EU + "planned-availability")))  # fmt: skip
    if stats.get("bytes") is not None:
        add((distribution, DCAT.byteSize, Literal(stats["bytes"],
                                                  datatype=XSD.nonNegativeInteger)))  # fmt: skip
    return ds


def _provenance(profile: str | None) -> str:
    method = f"the '{profile}' profile" if profile else "the project's profile"
    return (
        "Copies of DICOM studies acquired in routine care, extracted from the hospital PACS for "
        f"one research project and pseudonymised by imaging-depot with {method} (DICOM PS3.15 "
        "Annex E: identifiers replaced, UIDs regenerated per project, dates shifted); pixel "
        "data is not re-encoded. The key linking pseudonyms to patients stays with the "
        "custodian, in a separate vault."
    )


def _add_years(day: dt.date, years: int) -> dt.date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February
        return day.replace(year=day.year + years, day=28)


def add_catalog(graph: Graph, site: Site, datasets: Iterable[URIRef],
                modified: dt.datetime | None) -> URIRef:  # fmt: skip
    """The catalogue node: what the shapes require of a dcat:Catalog, and its datasets."""
    catalog = URIRef(site.catalog_iri)
    graph.add((catalog, RDF.type, DCAT.Catalog))
    graph.add((catalog, DCTERMS.title, Literal(site.catalogue_title, lang="en")))
    graph.add((catalog, DCTERMS.description, Literal(
        "Pseudonymised imaging datasets of research projects hosted by this site's secondary "
        "hosting (imaging-depot). Access is non-public: requests go to the health data access "
        "body named by each dataset.", lang="en")))  # fmt: skip
    graph.add((catalog, DCTERMS.publisher, site_agent(graph, site)))
    graph.add((catalog, DCATAP.applicableLegislation, EHDS))
    graph.add((EHDS, RDF.type, ELI.LegalResource))
    if site.url:
        graph.add((catalog, FOAF.homepage, URIRef(site.url)))
    graph.add((catalog, DCAT.themeTaxonomy, URIRef(EU + "data-theme")))
    graph.add((URIRef(EU + "data-theme"), RDF.type, SKOS.ConceptScheme))
    graph.add((URIRef(EU + "data-theme"), DCTERMS.title, Literal("Data theme", lang="en")))
    english = _concept(graph, EU + "language/ENG", "English", EU + "language")
    graph.add((english, RDF.type, DCTERMS.LinguisticSystem))
    graph.add((catalog, DCTERMS.language, english))  # the catalogue's own texts
    if modified is not None:
        graph.add((catalog, DCTERMS.modified, Literal(modified, datatype=XSD.dateTime)))
    for dataset in datasets:
        graph.add((catalog, DCAT.dataset, dataset))
    return catalog


def add_page(graph: Graph, catalog: URIRef, page: Page) -> None:
    view = page.link(page.number)
    graph.add((catalog, HYDRA.view, view))
    graph.add((view, RDF.type, HYDRA.PartialCollectionView))
    graph.add((view, HYDRA.totalItems, Literal(page.total, datatype=XSD.nonNegativeInteger)))
    graph.add((view, HYDRA.itemsPerPage, Literal(page.size, datatype=XSD.nonNegativeInteger)))
    graph.add((view, HYDRA.first, page.link(1)))
    graph.add((view, HYDRA.last, page.link(page.last)))
    if page.number < page.last:
        graph.add((view, HYDRA.next, page.link(page.number + 1)))
    if page.number > 1:
        graph.add((view, HYDRA.previous, page.link(min(page.number - 1, page.last))))


def catalog_graph(rows: Sequence[Dataset], site: Site, page: Page,
                  modified: dt.datetime | None) -> Graph:  # fmt: skip
    """One page of the catalogue: the catalogue node, this page's datasets, the Hydra view."""
    graph = new_graph()
    datasets = [add_dataset(graph, row, site) for row in rows]
    catalog = add_catalog(graph, site, datasets, modified)
    add_page(graph, catalog, page)
    return graph


def dataset_graph(row: Dataset, site: Site) -> Graph:
    """One dataset alone (what its FHIR Library's `content` carries)."""
    graph = new_graph()
    add_dataset(graph, row, site)
    return graph


def dataset_turtle(row: Dataset, site: Site) -> str:
    return dataset_graph(row, site).serialize(format="turtle")
