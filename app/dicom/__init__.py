"""DICOM facts the rest of the server relies on: Part 10 encoding, transfer syntaxes, UIDs.

No FastAPI, no Typer: usable from the CLI, the server, a worker or a test alike.
"""
