"""openapi/openapi.json is generated (`make openapi`), never edited by hand, and never stale."""

from __future__ import annotations

import json

from app.openapi import OPENAPI_FILE, openapi_document


def test_the_committed_openapi_document_is_current():
    assert OPENAPI_FILE.is_file(), "run `make openapi` and commit openapi/openapi.json"
    assert OPENAPI_FILE.read_text() == openapi_document(), (
        "openapi/openapi.json is stale: run `make openapi` and commit the result"
    )


def test_the_document_lists_the_health_checks():
    paths = json.loads(openapi_document())["paths"]
    assert {"/healthz", "/readyz"} <= set(paths)
