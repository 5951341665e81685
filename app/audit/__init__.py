"""The audit trail: one FHIR R4 AuditEvent per access, stored append-only in a hash chain.

`events` builds the resources (never an identifying value), `log` appends, verifies, searches
and exports them; `http` (middleware) and `fhir_router` are the only modules importing FastAPI.
"""
