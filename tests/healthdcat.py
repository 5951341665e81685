"""Offline HealthDCAT-AP Release 8 validation with pySHACL, for the catalogue tests.

The recipe of the shared `validate.py` (tests/data/healthdcat-ap/README.md says why each step
is there): the shape files `config.properties` names for the level, their `owl:imports`
answered from the vendored copies only, the path-less `sh:property` re-attached as `sh:node`,
warnings reported but not failing. Shapes are loaded once per process (they take a second).
"""

from __future__ import annotations

import socket
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from pyshacl import validate
from rdflib import Graph, Namespace
from rdflib.namespace import OWL, RDF

KIT = Path(__file__).resolve().parent / "data" / "healthdcat-ap"
VALIDATOR = KIT / "validator"
DCATAP = KIT / "dcat-ap-3.0.1"
SH = Namespace("http://www.w3.org/ns/shacl#")
_DCATAP_IMPORTS = "https://semiceu.github.io/DCAT-AP/releases/3.0.0/html/shacl/"
LOCAL = {
    _DCATAP_IMPORTS + "shapes.ttl": DCATAP / "shapes.ttl",
    _DCATAP_IMPORTS + "range.ttl": DCATAP / "range.ttl",
    _DCATAP_IMPORTS + "shapes_recommended.ttl": DCATAP / "shapes_recommended.ttl",
    _DCATAP_IMPORTS + "mdr-vocabularies.shape.ttl": DCATAP / "mdr-vocabularies.shape.ttl",
    "deprecated/deprecateduris.ttl": DCATAP / "deprecateduris.ttl",
}


@dataclass
class Result:
    severity: str  # Violation, Warning, Info
    focus: str
    path: str
    message: str


@dataclass
class Report:
    conforms: bool
    results: list[Result] = field(default_factory=list)

    def of(self, severity: str) -> list[Result]:
        return [r for r in self.results if r.severity == severity]

    @property
    def violations(self) -> list[Result]:
        return self.of("Violation")

    @property
    def warnings(self) -> list[Result]:
        return self.of("Warning")


def _properties() -> dict[str, str]:
    props = {}
    for line in (VALIDATOR / "config.properties").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


@cache
def shapes(level: str = "non-public") -> Graph:
    """The shapes graph of an access level, imports resolved locally, pySHACL-compatible."""
    props = _properties()
    imported = {}
    index = 0
    while f"validator.owlImportMapping.{index}.uri" in props:
        target = props.get(f"validator.owlImportMapping.{index}.file")
        if target:
            imported[props[f"validator.owlImportMapping.{index}.uri"]] = VALIDATOR / target
        index += 1
    graph, seen = Graph(), set()

    def load(path: Path) -> None:
        if path in seen or not path.is_file():
            return  # an ontology or vocabulary the kit does not hold: skipped, never fetched
        seen.add(path)
        part = Graph().parse(path, format="turtle" if path.suffix == ".ttl" else "xml")
        graph.__iadd__(part)
        for uri in sorted({str(o) for o in part.objects(None, OWL.imports)}):
            local = LOCAL.get(uri) or imported.get(uri)
            if local is not None:
                load(local)

    for name in props[f"validator.shaclFile.{level}"].split(","):
        name = name.strip()
        load(LOCAL.get(name) or VALIDATOR / name)
    for parent, node in list(graph.subject_objects(SH.property)):
        if graph.value(node, SH.path) is None:  # ill-formed SHACL that pySHACL refuses
            graph.remove((parent, SH.property, node))
            graph.add((parent, SH.node, node))
            graph.add((node, RDF.type, SH.NodeShape))
    return graph


@contextmanager
def _offline():
    def refuse(*_args, **_kwargs):
        raise RuntimeError("network access during SHACL validation")

    saved = socket.socket.connect, socket.socket.connect_ex, socket.create_connection
    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.socket.connect_ex = refuse  # type: ignore[method-assign]
    socket.create_connection = refuse  # type: ignore[assignment]
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.create_connection = saved


def validate_graph(data: Graph, level: str = "non-public") -> Report:
    shapes_graph = shapes(level)
    with _offline():
        conforms, report, _ = validate(
            data,
            shacl_graph=shapes_graph,
            inference="none",
            abort_on_first=False,
            allow_warnings=True,
            allow_infos=True,
            advanced=True,
            do_owl_imports=False,
            meta_shacl=False,
        )
    results = []
    for node in report.subjects(RDF.type, SH.ValidationReport):
        for result in report.objects(node, SH.result):
            severity = report.value(result, SH.resultSeverity)
            results.append(
                Result(
                    str(severity).rsplit("#", 1)[-1] if severity else "Violation",
                    str(report.value(result, SH.focusNode)),
                    str(report.value(result, SH.resultPath)),
                    str(report.value(result, SH.resultMessage)),
                )
            )
    return Report(bool(conforms), results)


def validate_turtle(text: str, level: str = "non-public") -> Report:
    return validate_graph(Graph().parse(data=text, format="turtle"), level)
