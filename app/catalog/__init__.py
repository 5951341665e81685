"""The site's catalogue: each project's dataset described by its data manager, published as
HealthDCAT-AP (NON_PUBLIC) and as FHIR Library resources (docs/catalog.md).

model: the description (pydantic); service: describe, publish, withdraw, statistics from the
index; rdf: the catalogue as an rdflib graph; fhir_library: the two Library profiles;
router: the API; app/cli_catalog.py: `depot catalog …`.
"""
