"""`depot catalog describe|publish|withdraw|show`: the project's dataset in the site's catalogue
(docs/catalog.md).

The same service as the API (app.catalog.service). Each describe, publish and withdraw is
recorded in the audit trail, like the API's requests are by the middleware: the action, then
its record (a failed action is recorded as such); a command whose record cannot be written
fails. rdflib is not imported here: printing never needs the RDF, and every `depot` command
would pay for it at start-up.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from app.audit import events as audit_events
from app.catalog import service as catalog
from app.catalog.model import DatasetDescription, DescriptionError, read_description_file
from app.cli_common import audit, check_project, console, err, fail, operator, settings
from app.store.index import index_engine
from app.store.models import Dataset

catalog_app = typer.Typer(
    help="The site's catalogue: describe, publish and withdraw a project's dataset.",
    no_args_is_help=True,
)
_COUNT_LABELS = {
    "subjects": "Subjects (distinct patient pseudonyms)",
    "studies": "Studies",
    "series": "Series",
    "instances": "Instances",
    "bytes": "Bytes",
}


def _when(moment: dt.datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC" if moment else "—"


def _org(org: dict | None, default: str) -> str:
    if not org:
        return default
    reach = org.get("email") or org.get("url") or ""
    return f"{org['name']} ({reach})" if reach else org["name"]


def _reach(contact: dict) -> str:
    parts = [contact.get("name"), contact.get("email"), contact.get("url")]
    return ", ".join(p for p in parts if p)


def _summary(description: dict) -> Table:
    """The description as a two-column table, one line per field."""
    table = Table("Field", "Value", title="Dataset description", show_lines=False)
    retention = description.get("retention") or {}
    producers = description.get("producers", [])
    rows = [
        ("Title", description["title"]),
        ("Description", description["description"]),
        ("Purpose", description["purpose"]),
        ("Legal basis", description["legal_basis"]),
        ("Keywords", ", ".join(description["keywords"])),
        ("Themes (EU data theme)", ", ".join(description["themes"])),
        ("Health categories", ", ".join(description["health_categories"])),
        ("Access rights", description.get("access_rights", "NON_PUBLIC")),
        ("Health data access body", _org(description.get("hdab"), "—")),
        ("Publisher", _org(description.get("publisher"), "the site (DEPOT_SITE_*)")),
        ("Custodian", _org(description.get("custodian"), "the publisher")),
        ("Contact point", _reach(description["contact_point"])),
        ("Producers", "; ".join(f"{p['name']} ({p['role']})" for p in producers) or "—"),
        ("Documentation", "\n".join(d["url"] for d in description.get("documentation", []))
         or "—"),
        ("Retention", f"{retention['years']} years" if retention.get("years")
         else str(retention.get("until", "—"))),
        ("Language", ", ".join(description.get("language", [])) or "—"),
        ("Landing page", description.get("landing_page", "—")),
    ]  # fmt: skip
    for field, value in rows:
        table.add_row(field, value)
    return table


def _statistics_table(stats: dict, title: str) -> Table:
    """Counts as published: a suppressed count shows as "fewer than 10"."""
    table = Table("What", "Value", title=title)
    for name, label in _COUNT_LABELS.items():
        value = stats.get(name)
        shown = (
            f"fewer than {stats.get('threshold', catalog.SUPPRESSION_THRESHOLD)} (not published)"
            if value is None
            else f"{value:,}"
        )
        table.add_row(label, shown)
    table.add_row("Modalities", ", ".join(stats.get("modalities", [])) or "—")
    table.add_row("Body sites (PS3.16 Annex L)", ", ".join(stats.get("body_sites", [])) or "—")
    if stats.get("unmapped_body_parts"):
        table.add_row(
            "Body parts not in Annex L", f"{stats['unmapped_body_parts']} (not published)"
        )
    return table


def _current_statistics(project: str) -> dict:
    stats = catalog.statistics(index_engine(settings().index_url), project)
    return {**stats.published(), "unmapped_body_parts": stats.unmapped_body_parts}


def _act(verb: str, project: str, action: Callable[..., Dataset], *args: object) -> Dataset:
    """Run a catalogue action on the project's dataset and record it in the audit trail, done
    (with the dataset's status and version) or refused (then the command fails)."""
    try:
        row = action(index_engine(settings().index_url), project, *args)
    except (catalog.CatalogError, DescriptionError) as exc:
        _record(verb, project, audit_events.MINOR_FAILURE)
        raise fail(str(exc)) from None
    _record(
        verb, project, audit_events.SUCCESS, [("status", row.status), ("version", str(row.version))]
    )
    return row


def _record(verb: str, project: str, outcome: str, details: Sequence[tuple[str, str]] = ()) -> None:
    event = audit_events.catalog_event(
        verb=verb, project_id=project, agent=operator(), outcome=outcome, details=details
    )
    audit(settings(), event, project)


@catalog_app.command("describe")
def catalog_describe(
    file: Annotated[
        Path, typer.Argument(metavar="FILE", help="The description, .json or .yaml.", exists=True)
    ],
    project: Annotated[str, typer.Option(help="The project whose dataset it describes.")],
    check: Annotated[
        bool, typer.Option("--check", help="Validate and show, but save nothing.")
    ] = False,
) -> None:
    """Describe the project's dataset: validate FILE, show it and the statistics the index
    gives now (small counts suppressed), and save it as the working description."""
    check_project(project)
    try:
        description: DatasetDescription = read_description_file(file)
    except DescriptionError as exc:
        err.print("[red]The description cannot be saved:[/red]")
        for problem in exc.problems:
            err.print(f"  - {problem}", highlight=False, markup=False)
        raise typer.Exit(2) from None
    document = description.model_dump(mode="json", exclude_none=True)
    console.print(_summary(document))
    console.print(_statistics_table(_current_statistics(project), "Statistics (as published)"))
    if check:
        console.print("Checked: nothing saved (--check).")
        return
    row = _act("describe", project, catalog.describe, description)
    state = "a draft" if row.status == catalog.DRAFT else f"status {row.status}"
    console.print(f"Saved for project [bold]{project}[/bold] ({state}).")
    if row.status == catalog.PUBLISHED:
        console.print("The catalogue serves the previous version until you publish again:")
    console.print(f"  depot catalog publish --project {project}")


@catalog_app.command("publish")
def catalog_publish(
    project: Annotated[str, typer.Option(help="The project whose dataset to publish.")],
) -> None:
    """Publish the description with the statistics as they are now (again: refresh them)."""
    check_project(project)
    row = _act("publish", project, catalog.publish)
    stats = (row.published or {}).get("statistics", {})
    console.print(_statistics_table(stats, "Published statistics"))
    console.print(
        f"Project [bold]{project}[/bold]: dataset published, version {row.version} "
        f"({_when(row.published_at)}). It is in /catalog.ttl, /catalog.jsonld and "
        f"/fhir/Library/{project}."
    )


@catalog_app.command("withdraw")
def catalog_withdraw(
    project: Annotated[str, typer.Option(help="The project whose dataset to withdraw.")],
) -> None:
    """Take the dataset out of the catalogue (the description is kept)."""
    check_project(project)
    _act("withdraw", project, catalog.withdraw)
    console.print(
        f"Project [bold]{project}[/bold]: dataset withdrawn from the catalogue "
        "(FHIR reads of it now answer 410 Gone)."
    )


@catalog_app.command("show")
def catalog_show(
    project: Annotated[
        str | None, typer.Option(help="One project's dataset in detail (default: all).")
    ] = None,
) -> None:
    """The catalogue's datasets, or one project's description, status and statistics."""
    engine = index_engine(settings().index_url)
    if project is None:
        table = Table("Project", "Status", "Version", "Published", "Pending changes", "Title")
        for row in catalog.list_datasets(engine):
            table.add_row(
                row.project_id, row.status, str(row.version), _when(row.published_at),
                "yes" if catalog.pending_changes(row) else "no", row.description.get("title", ""),
            )  # fmt: skip
        console.print(table)
        return
    check_project(project)
    row = catalog.get_dataset(engine, project)
    if row is None:
        raise fail(f"project {project} has no dataset description (depot catalog describe)")
    console.print(
        f"Project [bold]{project}[/bold]: {row.status}, version {row.version}, "
        f"last published {_when(row.published_at)}"
        + (", with unpublished changes" if catalog.pending_changes(row) else "")
    )
    console.print(_summary(row.description))
    console.print(_statistics_table(_current_statistics(project), "Statistics now"))
    if row.published and row.status == catalog.PUBLISHED:
        console.print(_statistics_table(row.published["statistics"], "Published statistics"))
