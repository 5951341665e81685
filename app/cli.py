"""`depot …`: thin on purpose — parses arguments, calls services, prints with rich."""

from __future__ import annotations

import datetime as dt
import gc
import getpass
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from app.audit import events as audit_events
from app.audit.log import AuditError
from app.cli_access import ACCESS_APPS
from app.cli_catalog import catalog_app
from app.cli_common import audit as _audit
from app.cli_common import console, err
from app.cli_common import fail as _fail
from app.cli_common import operator as _operator
from app.cli_common import settings as _settings
from app.config import Settings
from app.projects import ProjectError, create_project, get_project, list_projects, project_engine
from app.pseudo.batch import iter_inputs, pseudonymize_paths
from app.pseudo.engine import InstanceResult
from app.pseudo.private import scan_private
from app.pseudo.profile import ProfileError, load_profile
from app.store.index import index_engine
from app.vault import Vault, VaultError

if TYPE_CHECKING:  # the store's modules load with the commands that use them (start-up time)
    from app.ingest import FileResult, IngestReport

app = typer.Typer(help="imaging-depot: research copies of imaging studies.", no_args_is_help=True)
project_app = typer.Typer(help="Create and list research projects.", no_args_is_help=True)
vault_app = typer.Typer(help="The vault: the only way from a pseudonym back to a person.")
pseudo_app = typer.Typer(help="Inspect what pseudonymization will meet.", no_args_is_help=True)
app.add_typer(project_app, name="project")
app.add_typer(vault_app, name="vault")
app.add_typer(pseudo_app, name="pseudo")
for name, sub_app in ACCESS_APPS.items():
    app.add_typer(sub_app, name=name)
audit_app = typer.Typer(help="The audit trail: verify its hash chain, export it.")
app.add_typer(audit_app, name="audit")
app.add_typer(catalog_app, name="catalog")


@project_app.command("create")
def project_create(
    project_id: Annotated[str, typer.Argument(metavar="ID", help="Short ID: a-z, 0-9, dashes.")],
    title: Annotated[str, typer.Option(help="What the project is about.")],
    profile: Annotated[str, typer.Option(help="Pseudonymization profile.")] = "research-fr",
    option: Annotated[
        list[str] | None, typer.Option(help="Extra PS3.15 option, e.g. clean-structured-content.")
    ] = None,
) -> None:
    """Create a project and its secret key in the vault."""
    try:
        project = create_project(_settings(), project_id, title, profile, tuple(option or ()))
    except (ProjectError, ProfileError, VaultError) as exc:
        raise _fail(str(exc)) from None
    applied = load_profile(project.profile, tuple(project.options)).options
    console.print(f"Project [bold]{project.id}[/bold] created with profile {project.profile}.")
    console.print("Options: " + ", ".join(f"{o.code} {o.meaning}" for o in applied))


@project_app.command("list")
def project_list() -> None:
    """List projects with their profile and state."""
    table = Table("ID", "Title", "Profile", "Extra options", "State", "Created")
    for p in list_projects(_settings()):
        table.add_row(
            p.id, p.title, p.profile, ", ".join(p.options), p.state, f"{p.created_at:%Y-%m-%d}"
        )
    console.print(table)


@app.command()
def pseudonymize(
    paths: Annotated[
        list[Path],
        typer.Argument(metavar="IN... OUT", help="DICOM files or folders, then the output folder."),
    ],
    project: Annotated[str, typer.Option(help="Project whose profile and keys to use.")],
    report: Annotated[
        Path | None, typer.Option(help="Write the change report (JSON) here.")
    ] = None,
    fsync: Annotated[
        bool, typer.Option(help="Flush each file to disk before renaming it.")
    ] = False,
) -> None:
    """Pseudonymize DICOM files into OUT/<study>/<series>/<instance>.dcm.

    The exit status is the number of files that failed (at most 125).
    """
    if len(paths) < 2:
        raise _fail("give at least one input (file or folder) and the output folder")
    *sources, out = paths
    settings = _settings()
    try:
        proj = get_project(settings, project)
        vault = Vault.from_settings(settings)
        engine = project_engine(settings, proj, vault)
        inputs = list(iter_inputs(sources))
    except (ProjectError, ProfileError, VaultError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from None
    recorded: set[str] = set()

    with Progress(
        TextColumn("[bold]Pseudonymizing"), BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(), console=err, transient=False,
    ) as progress:  # fmt: skip
        task = progress.add_task("files", total=len(inputs))

        def record_linkage(result: InstanceResult) -> None:
            # Linkage goes to the vault as soon as a patient is first seen, before the first
            # output naming the pseudonym is written: no pseudonym without its way back.
            if result.patient_pseudonym not in recorded:
                vault.record_linkage(project, result.patient_pseudonym, result.linkage)
                recorded.add(result.patient_pseudonym)

        def on_file(_src: Path, _result: InstanceResult | None) -> None:
            progress.advance(task)

        try:
            batch = pseudonymize_paths(
                inputs, out, engine, fsync=fsync, before_write=record_linkage, on_file=on_file
            )
        except VaultError as exc:
            raise _fail(f"the vault refused a linkage record: {exc}") from None

    if report:
        report.write_text(json.dumps(batch.to_json(), indent=1))
    _print_batch_summary(batch, report)
    raise typer.Exit(min(len(batch.failures), 125))


def _print_batch_summary(batch, report: Path | None) -> None:
    table = Table("Files", "Pseudonymized", "Failed", "Patients", "Studies", "Series")
    table.add_row(
        str(len(batch.instances) + len(batch.failures)),
        str(len(batch.instances)),
        str(len(batch.failures)),
        str(len({r.patient_pseudonym for r in batch.instances})),
        str(len({r.study_uid for r in batch.instances})),
        str(len({r.series_uid for r in batch.instances})),
    )
    console.print(table)
    _print_failures(batch.failures, "Not pseudonymized", report)


def _print_failures(failures: list, title: str, report: Path | None) -> None:
    """The files that failed, with the reason (input names: the data manager's own screen)."""
    if failures:
        failed = Table("Input file", "Why it failed", title=title)
        for failure in failures[:50]:
            failed.add_row(str(failure.source), failure.reason)
        console.print(failed)
        if len(failures) > 50:
            console.print(f"… and {len(failures) - 50} more; see the report.")
    if report:
        console.print(f"Change report written to {report}.")


@app.command()
def ingest(
    source: Annotated[Path, typer.Argument(metavar="PATH", help="A DICOM file or a folder.")],
    project: Annotated[str, typer.Option(help="Project to store the pseudonymized copy in.")],
    report: Annotated[
        Path | None, typer.Option(help="Write the change report (JSON) here.")
    ] = None,
) -> None:
    """Pseudonymize DICOM files with the project's profile and store them in the project.

    Originals are never stored. Running it again after an interruption finishes the job;
    what is already stored counts as "already present". The exit status is the number of
    files that failed (at most 125); 2 with an error line means the run stopped early.
    """
    from app.ingest import IngestAborted, Stores, ingest_files
    from app.store.blobs import BlobStoreError

    settings = _settings()
    try:
        proj = get_project(settings, project)
        stores = Stores.from_settings(settings)
        inputs = list(iter_inputs([source]))
    except (ProjectError, VaultError, BlobStoreError, ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from None

    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(), console=err, transient=False,
    ) as progress:  # fmt: skip
        files = progress.add_task("Ingesting", total=len(inputs))
        series_task = None

        def on_file(_result: FileResult) -> None:
            progress.advance(files)

        def on_series(done: int, total: int) -> None:
            nonlocal series_task
            if series_task is None:
                series_task = progress.add_task("Series metadata", total=total)
            progress.update(series_task, completed=done)

        try:
            done = ingest_files(stores, proj, inputs, on_file=on_file, on_series=on_series)
        except (IngestAborted, ProfileError, VaultError) as exc:
            progress.stop()
            if isinstance(exc, IngestAborted):
                _print_ingest_summary(exc.report, None)
            stopped = exc.report if isinstance(exc, IngestAborted) else None
            _audit_ingest(settings, project, stopped, aborted=True)
            raise _fail(f"ingest stopped: {exc}. What is stored is kept; run it again.") from None

    _audit_ingest(settings, project, done, aborted=False)
    if report:
        report.write_text(json.dumps(done.to_json(), indent=1))
    _print_ingest_summary(done, report)
    raise typer.Exit(min(len(done.failures), 125))


def _audit_ingest(
    settings: Settings, project: str, done: IngestReport | None, aborted: bool
) -> None:
    """One event per run: counts and pseudonymized study UIDs (never the input paths)."""
    event = audit_events.ingest_event(
        project_id=project, agent=_operator(),
        files=done.files if done else 0, stored=len(done.stored) if done else 0,
        already_present=len(done.already_present) if done else 0,
        failed=len(done.failures) if done else 0, study_uids=done.studies if done else (),
        aborted=aborted,
    )  # fmt: skip
    _audit(settings, event, project)


def _print_ingest_summary(done: IngestReport, report: Path | None) -> None:
    table = Table("Files", "Stored", "Already present", "Failed", "Studies", "Series")
    table.add_row(
        str(done.files), str(len(done.stored)), str(len(done.already_present)),
        str(len(done.failures)), str(len(done.studies)), str(len(done.series)),
    )  # fmt: skip
    console.print(table)
    _print_failures(done.failures, "Not stored", report)


@app.command()
def sweep(
    project: Annotated[str, typer.Option(help="Project whose leftovers to remove.")],
    older_than: Annotated[
        int, typer.Option(help="Only what is untouched for this many minutes.", min=0)
    ] = 60,
) -> None:
    """Remove what interrupted ingests left: blobs no index row points at, partial files."""
    from app.ingest import Stores, sweep_orphans
    from app.store.blobs import BlobStoreError

    settings = _settings()
    try:
        get_project(settings, project)
        stores = Stores.from_settings(settings)
        swept = sweep_orphans(project, stores, dt.timedelta(minutes=older_than))
    except (ProjectError, VaultError, BlobStoreError, ValueError) as exc:
        raise _fail(str(exc)) from None
    console.print(
        f"Removed {swept.orphan_blobs} orphan blobs, {swept.partial_blobs} partial files and "
        f"{swept.scratch_folders} scratch folders of interrupted runs."
    )


@pseudo_app.command("private-report")
def private_report(
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="DICOM files or a folder.")],
    project: Annotated[
        str | None, typer.Option(help="Show what this project's profile keeps.")
    ] = None,
) -> None:
    """List the private creators and elements found (never their values)."""
    settings = _settings()
    try:
        profile = None
        if project:
            proj = get_project(settings, project)
            profile = load_profile(proj.profile, tuple(proj.options))
        rows = scan_private(iter_inputs([folder]), profile)
    except (ProjectError, ProfileError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from None
    table = Table("Group", "Creator", "Element", "VR", "Files", "Safe (E.3.10-1)", "Kept")
    for row in rows:
        table.add_row(
            f"{row.group:04X}", row.creator, f"xx{row.element:02X}", row.vr, str(row.files),
            "yes" if row.safe else "", "yes" if row.kept else ("?" if profile is None else ""),
        )  # fmt: skip
    console.print(table)
    console.print(
        f"{len(rows)} private elements under {len({(r.group, r.creator) for r in rows})} creators."
    )


@vault_app.command("reidentify")
def vault_reidentify(
    pseudonym: Annotated[str, typer.Argument(help="The patient pseudonym, e.g. P3KQ…")],
    project: Annotated[str, typer.Option(help="The project the pseudonym belongs to.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the re-identification log).")] = "",
) -> None:
    """Print the original PatientID behind a pseudonym. Every call is recorded.

    In the vault's re-identification log and in the audit trail; if the audit trail cannot
    record it, nothing is printed.
    """
    from app.vault import LinkageNotFound

    settings = _settings()
    outcome, failure = audit_events.SUCCESS, None
    try:
        identifiers = Vault.from_settings(settings).reidentify(
            project, pseudonym, actor=getpass.getuser(), reason=reason
        )
    except (VaultError, ValueError) as exc:
        notfound = isinstance(exc, LinkageNotFound)
        outcome = audit_events.MINOR_FAILURE if notfound else audit_events.SERIOUS_FAILURE
        failure = exc
    event = audit_events.reidentify_event(
        project_id=project, pseudonym=pseudonym, agent=_operator(), outcome=outcome,
        reason_given=bool(reason),
    )  # fmt: skip
    _audit(settings, event, project)
    if failure is not None:
        raise _fail(str(failure))
    console.print(identifiers.get("PatientID", ""))


@audit_app.command("verify")
def audit_verify(
    project: Annotated[str | None, typer.Option(help="Also count this project's records.")] = None,
) -> None:
    """Check the whole hash chain; report the first broken link (exit 1) or that it is intact."""
    from app.audit.log import verify

    result = verify(index_engine(_settings().index_url), project)
    scope = f" ({result.project_records} of project {project})" if project else ""
    if result.intact:
        console.print(f"{result.records} records{scope}, chain intact.", highlight=False)
        console.print(f"Head: record {result.head_seq}, hash {result.head_hash}", highlight=False)
        return
    err.print(
        f"[red]Chain broken at record {result.broken_at}[/red]: {result.reason}. "
        f"{result.records} records before it are intact.",
        highlight=False,
    )
    raise typer.Exit(1)


@audit_app.command("export")
def audit_export(
    since: Annotated[
        str, typer.Option(help="From this day (YYYY-MM-DD) or instant (ISO 8601, UTC if no zone).")
    ],
    project: Annotated[str | None, typer.Option(help="Only this project's records.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
) -> None:
    """Write AuditEvents as NDJSON (one FHIR resource per line), oldest first, for a SIEM."""
    from app.audit.log import Query, export

    try:
        start = dt.datetime.fromisoformat(since)
    except ValueError:
        raise _fail("--since: expected YYYY-MM-DD or an ISO 8601 instant") from None
    start = start.replace(tzinfo=dt.UTC) if start.tzinfo is None else start.astimezone(dt.UTC)
    events = export(index_engine(_settings().index_url), Query(project_id=project, since=start))
    lines = (json.dumps(e, separators=(",", ":"), ensure_ascii=False) + "\n" for e in events)
    if out is None:
        for line in lines:
            typer.echo(line, nl=False)
        return
    with out.open("w", encoding="utf-8") as handle:
        count = sum(1 for line in lines if handle.write(line))
    console.print(f"{count} audit events written to {out}.")


# --- retention and purge (app.retention) -------------------------------------------------------

retention_app = typer.Typer(help="Retention: purge projects past their retention end.")
app.add_typer(retention_app, name="retention")


def _day(value: str | None, option: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise _fail(f"{option}: expected a date as YYYY-MM-DD") from None


def _retention_call(call, *args, **kwargs):
    """Run an app.retention function; its refusals and audit failures become error lines."""
    from app.retention import RetentionError

    try:
        return call(_settings(), *args, agent=_operator(), **kwargs)
    except (RetentionError, AuditError) as exc:
        raise _fail(str(exc)) from None


def _retention_line(p) -> str:
    until = p.retention_until.isoformat() if p.retention_until else "not set"
    hold = ", under legal hold" if p.legal_hold else ""
    return f"Project {p.id}: {p.state}, kept until {until}{hold}."


@project_app.command("retention")
def project_retention(
    project_id: Annotated[str, typer.Argument(metavar="ID", help="The project.")],
    declared_end: Annotated[str, typer.Option(help="When the project ends (YYYY-MM-DD).")],
    retention_until: Annotated[
        str | None, typer.Option(help="Keep until (YYYY-MM-DD); default: 10 years after the end.")
    ] = None,
) -> None:
    """Set a project's declared end and retention end (rec. 3.6)."""
    from app.retention import set_retention

    end = _day(declared_end, "--declared-end")
    until = _day(retention_until, "--retention-until")
    project = _retention_call(set_retention, project_id, end, until)
    console.print(_retention_line(project), highlight=False)


@project_app.command("hold")
def project_hold(
    project_id: Annotated[str, typer.Argument(metavar="ID", help="The project.")],
    on: Annotated[bool, typer.Option("--on/--off", help="Set or lift the legal hold.")],
) -> None:
    """Set or lift a legal hold: a held project is never purged."""
    from app.retention import set_legal_hold

    project = _retention_call(set_legal_hold, project_id, on)
    console.print(_retention_line(project), highlight=False)


@project_app.command("close")
def project_close(
    project_id: Annotated[str, typer.Argument(metavar="ID", help="The project.")],
) -> None:
    """Close a project; without a declared end, it ends today (kept 10 more years)."""
    from app.retention import close_project

    project = _retention_call(close_project, project_id)
    console.print(_retention_line(project), highlight=False)


@retention_app.command("run")
def retention_run(
    today: Annotated[
        str | None, typer.Option(help="Take this day (YYYY-MM-DD) as today; default: today.")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Only list what would be purged.")] = False,
) -> None:
    """Purge every project past its retention end and not under legal hold.

    Blobs, index rows, tokens and the vault key go; the audit trail and a signed purge record
    stay. An interrupted purge is finished. Exit status 1 if a purge failed.
    """
    from app.retention import run_retention

    day = _day(today, "--today") or dt.date.today()
    items = run_retention(_settings(), day, dry_run=dry_run, agent=_operator())
    verb = "Would purge" if dry_run else "Purged"
    table = Table("Project", "Kept until", "State before", "Blobs", "Studies", "Instances",
                  "Linkages", "Outcome", title=f"{verb} on {day.isoformat()}")  # fmt: skip
    for item in items:
        record = item.result.record if item.result else None
        counts = [str(getattr(record, n)) if record else "" for n in ("blobs", "studies")]
        counts += [str(getattr(record, n)) if record else "" for n in ("instances", "linkages")]
        if dry_run:
            outcome = "would resume" if item.state == "purging" else "would purge"
        elif item.error:
            outcome = f"failed: {item.error}"
        else:
            outcome = "resumed, purged" if item.result and item.result.resumed else "purged"
        until = item.retention_until.isoformat() if item.retention_until else ""
        table.add_row(item.project_id, until, item.state, *counts, outcome)
    if items:
        console.print(table)
    console.print(f"{len(items)} project(s) {'due' if dry_run else 'processed'}.")
    if any(item.error for item in items):
        raise typer.Exit(1)


@app.command()
def worker(
    every_minutes: Annotated[
        float, typer.Option(help="Minutes between two runs.", min=0.01)
    ] = 60.0,
    once: Annotated[bool, typer.Option(help="Run once and exit (for cron or systemd).")] = False,
) -> None:
    """The scheduled jobs: purge projects past their retention end (as `depot retention run`).

    Run one worker per site (two would each record the same purges). Stops on Ctrl-C; a purge
    interrupted by a stop is finished by the next run. Exit status 1 if `--once` had a failure.
    """
    import time

    from app.retention import run_retention

    while True:
        day = dt.date.today()
        items = run_retention(_settings(), day, agent=_operator())
        failed = [item for item in items if item.error]
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        console.print(
            f"{stamp} UTC retention: {len(items) - len(failed)} purged, {len(failed)} failed."
        )
        for item in failed:
            err.print(f"Project {item.project_id}: {item.error} (retried next run)")
        if once:
            raise typer.Exit(1 if failed else 0)
        try:
            time.sleep(every_minutes * 60)
        except KeyboardInterrupt:
            raise typer.Exit(0) from None


def main() -> None:
    # What is loaded by now (modules, tables, the DICOM dictionary) lives as long as the
    # process: frozen, the collector stops walking it again at every full collection,
    # which a long batch triggers as its report grows.
    gc.freeze()
    app()


def _print_demo_examples(settings: Settings, host: str, port: int, scheme: str = "http") -> None:
    """A researcher token of the demo project and copy-paste examples that use it."""
    from app.demo import DEMO_PROJECT, DEMO_TOKEN_FILE, demo_token

    base = f"{scheme}://{host}:{port}/projects/{DEMO_PROJECT}/dicom-web"
    fhir = f"{scheme}://{host}:{port}/projects/{DEMO_PROJECT}/fhir"
    auth = '-H "Authorization: Bearer $TOKEN"'
    client = (
        "import os; from dicomweb_client import DICOMwebClient; "
        f'c = DICOMwebClient("{base}", '
        'headers={"Authorization": "Bearer " + os.environ["TOKEN"]}); '
        'print(len(c.search_for_studies()), "studies")'
    )
    lines = [
        f"Researcher token of project {DEMO_PROJECT} ({DEMO_TOKEN_FILE} in the data dir):",
        f"  export TOKEN={demo_token(settings)}",
        "Search and retrieve, from another terminal:",
        f"  curl {auth} {base}/studies",
        f'  curl {auth} "{base}/studies?ModalitiesInStudy=CT&includefield=all"',
        f"  .venv/bin/python -c '{client}'",
        "The same studies as FHIR ImagingStudy (with their Provenance):",
        f'  curl {auth} "{fhir}/ImagingStudy?modality=CT&_revinclude=Provenance:target"',
        "Store a cohort (identifiable in, pseudonymized stored):",
        f"  .venv/bin/depot ingest /path/to/dicom --project {DEMO_PROJECT}",
    ]
    console.print("\n".join(lines), highlight=False, soft_wrap=True, markup=False)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    demo: Annotated[
        bool, typer.Option(help="Create the 'demo' project with sample studies if missing.")
    ] = False,
    tls_cert: Annotated[
        Path | None, typer.Option(help="PEM certificate (chain): serve HTTPS, with HSTS.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key of --tls-cert.")] = None,
) -> None:
    """Start the HTTP server (HTTPS with --tls-cert and --tls-key)."""
    import uvicorn  # the server extra; the CLI alone does not need it

    if (tls_cert is None) != (tls_key is None):
        raise _fail("--tls-cert and --tls-key go together: give both, or neither")
    for path in (tls_cert, tls_key):
        if path is not None and not path.is_file():
            raise _fail(f"{path} is not a readable file")
    scheme = "https" if tls_cert else "http"
    settings = _settings()
    if demo:
        from app.demo import ensure_demo

        filled = ensure_demo(settings)
        if filled is not None:
            console.print(
                f"Demo project ready: {len(filled.stored)} sample instances in "
                f"{len(filled.studies)} studies, pseudonymized with profile research-fr."
            )
    console.print(
        f"imaging-depot on {scheme}://{host}:{port} — data in {settings.resolved_data_dir}"
    )
    if demo:
        _print_demo_examples(settings, host, port, scheme)
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
    )
