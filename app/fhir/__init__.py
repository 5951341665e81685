"""FHIR R4 façade: ImagingStudy, Patient, Endpoint, Provenance per project, the catalogue's
Libraries, and the profiles they declare."""
