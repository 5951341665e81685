"""The `depot` command's entry point: loads the CLI with the garbage collector paused."""

from __future__ import annotations

import gc


def main() -> None:
    """Load the CLI, then run it.

    Loading creates only objects that live as long as the process (modules, tables, the DICOM
    dictionary): collections during it find nothing to free and cost ~60 ms of every command's
    start-up. `app.cli.main` then freezes what was loaded.
    """
    gc.disable()
    try:
        from app.cli import main as cli_main
    finally:
        gc.enable()
    cli_main()
