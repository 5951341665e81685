"""Batches of files: walk the inputs, pseudonymize each, keep going past bad ones, report.

The report says, per output instance, which attribute got which action — never a value, never
an input file name (names can carry identities: "DUPONT_Jean.dcm").
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from app import __version__
from app.pseudo.engine import DeidentificationError, Deidentifier, InstanceResult
from app.pseudo.files import Prepared, UnreadableInput, prepare_file, write_prepared
from app.pseudo.profile import TABLE_EDITION

_ITEM_INDEX = re.compile(r"\[\d+\]")


@dataclass
class Failure:
    source: Path  # shown to the data manager on the ingest side, never written to a report
    reason: str

    def input_digest(self) -> str:
        """Lets the data manager find the file again without the report naming it."""
        try:
            return hashlib.sha256(self.source.read_bytes()).hexdigest()
        except OSError:
            return ""


def change_summary(instances: Iterable[InstanceResult]) -> list[tuple[str, str, int]]:
    """(attribute path, action, number of instances), most frequent first; sequence item
    indexes folded ("[3]" → "[]"), so the summary stays short."""
    counts: Counter[tuple[str, str]] = Counter()
    for result in instances:
        counts.update({(_ITEM_INDEX.sub("[]", p), a) for p, a in result.changes})
    return [(p, a, n) for (p, a), n in counts.most_common()]


@dataclass
class BatchReport:
    engine: Deidentifier
    instances: list[InstanceResult] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @property
    def linkage(self) -> dict[str, dict[str, str]]:
        """Pseudonym → original identifiers, for the vault only; never serialized here."""
        return {r.patient_pseudonym: r.linkage for r in self.instances}

    def summary(self) -> list[tuple[str, str, int]]:
        """(attribute path, action, number of instances), most frequent first."""
        return change_summary(self.instances)

    def to_json(self) -> dict:
        profile = self.engine.profile
        return {
            "tool": f"imaging-depot {__version__}",
            "profile": profile.name,
            "profile_version": profile.version,
            "table": f"DICOM PS3.15 Table E.1-1 {TABLE_EDITION}",
            "options": [{"code": o.code, "meaning": o.meaning} for o in profile.options],
            "instances": [
                {
                    "study": r.study_uid,
                    "series": r.series_uid,
                    "sop": r.sop_uid,
                    "sop_class": r.sop_class_uid,
                    "patient": r.patient_pseudonym,
                    "changes": [list(c) for c in r.changes],
                }
                for r in self.instances
            ],
            "summary": [
                {"attribute": p, "action": a, "instances": n} for p, a, n in self.summary()
            ],
            "failures": [
                {"input_sha256": f.input_digest(), "reason": f.reason} for f in self.failures
            ],
        }


def iter_inputs(paths: Iterable[Path]) -> Iterator[Path]:
    """Files given, and files under folders given, in a stable order; hidden files skipped."""
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                rel = child.relative_to(path)
                if child.is_file() and not any(part.startswith(".") for part in rel.parts):
                    yield child
        elif path.is_file():
            yield path
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")


# Writes in flight at once: enough to keep the writer threads busy while the next headers
# are pseudonymized, few enough that open source files and header bytes stay bounded.
WRITERS = 2
IN_FLIGHT = 8


_FILE_ERRORS = (UnreadableInput, DeidentificationError, OSError)


def _reason(exc: Exception) -> str:
    """What went wrong with one file, without its name or any of its values."""
    if isinstance(exc, OSError):
        return f"cannot read or write ({exc.strerror})"
    return str(exc)


def pseudonymize_paths(
    inputs: list[Path],
    out_dir: Path,
    engine: Deidentifier,
    *,
    fsync: bool = False,
    before_write: Callable[[InstanceResult], None] | None = None,
    on_file: Callable[[Path, InstanceResult | None], None] | None = None,
) -> BatchReport:
    """Pseudonymize every input; a bad file is recorded and the batch goes on.

    Headers are pseudonymized in this thread while earlier outputs are written by
    `WRITERS` threads, past the page cache where the file system allows it (nothing reads
    them back here): the writing overlaps the Python work on the next header.
    `before_write` sees each result before its output is written (the CLI records the
    patient's linkage there); `on_file` sees each input once it is done, in input order.
    """
    report = BatchReport(engine)
    # Per input, in order: the prepared instance and its write, or why it failed.
    pending: deque[tuple[Path, Prepared | None, Future[Path] | str]] = deque()
    folders: set[Path] = set()  # output folders made so far (set.add is atomic)

    def settle() -> None:
        src, prepared, outcome = pending.popleft()
        result = prepared.result if prepared else None
        if isinstance(outcome, Future):
            try:
                report.outputs.append(outcome.result())
                report.instances.append(prepared.result)
            except _FILE_ERRORS as exc:
                outcome, result = _reason(exc), None
        if isinstance(outcome, str):
            report.failures.append(Failure(src, outcome))
        if on_file:
            on_file(src, result)

    with ThreadPoolExecutor(WRITERS, thread_name_prefix="depot-writer") as writers:
        try:
            for src in inputs:
                try:
                    prepared = prepare_file(src, engine)
                except _FILE_ERRORS as exc:
                    pending.append((src, None, _reason(exc)))
                else:
                    try:
                        if before_write:
                            before_write(prepared.result)
                    except BaseException:
                        prepared.close()
                        raise
                    job = writers.submit(
                        write_prepared, prepared, out_dir, fsync=fsync, folders=folders, direct=True
                    )
                    pending.append((src, prepared, job))
                while len(pending) > IN_FLIGHT:
                    settle()
            while pending:
                settle()
        finally:  # an error or an interrupt: queued writes are dropped, sources closed
            for _src, prepared, outcome in pending:
                if isinstance(outcome, Future) and outcome.cancel() and prepared:
                    prepared.close()
    return report
