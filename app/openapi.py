"""The OpenAPI document, generated from the app: `make openapi` writes it, a test checks it.

It is built without touching any store (the routes' schema does not depend on data), so it is
the same on every machine and can be committed and reviewed like code.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from app.config import Settings

OPENAPI_FILE = Path(__file__).resolve().parents[1] / "openapi" / "openapi.json"


def openapi_document() -> str:
    from app.main import create_app  # the server extra, needed only here

    # A throwaway data dir: building the schema must not create or read a real one.
    with tempfile.TemporaryDirectory() as tmp:
        schema = create_app(Settings(data_dir=Path(tmp))).openapi()
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> None:
    OPENAPI_FILE.parent.mkdir(parents=True, exist_ok=True)
    OPENAPI_FILE.write_text(openapi_document())
    print(f"wrote {OPENAPI_FILE}", file=sys.stderr)


if __name__ == "__main__":
    main()
