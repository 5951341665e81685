"""Batches with writes in flight: order, failures, linkage before output, interrupts."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from app.dicom import part10
from app.pseudo import batch
from app.pseudo.batch import pseudonymize_paths
from app.pseudo.files import output_path, pseudonymize_file
from tests.samples import TRUNCATED, sample

# More inputs than writes in flight, so results come back while later headers are read.
COUNT = batch.IN_FLIGHT * 3


def _slices(folder: Path, n: int = COUNT) -> list[Path]:
    """n instances of a real CT, one study and series, each with its own SOP Instance UID."""
    folder.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    paths = []
    for i in range(n):
        ds = dcmread(sample("CT_small.dcm"))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        paths.append(folder / f"{i:03d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def _mixed_inputs(tmp_path: Path) -> tuple[list[Path], set[Path]]:
    """Good slices with bad files between them: not DICOM, and a file cut short."""
    good = _slices(tmp_path / "in")
    not_dicom = tmp_path / "in" / "notes.txt"
    not_dicom.write_text("not an image")
    truncated = sample(next(iter(TRUNCATED)))
    inputs = [*good[:5], not_dicom, *good[5:12], truncated, *good[12:]]
    return inputs, {not_dicom, truncated}


def test_outputs_failures_and_callbacks_follow_the_input_order(engine, tmp_path):
    inputs, bad = _mixed_inputs(tmp_path)
    seen: list[tuple[Path, bool]] = []
    report = pseudonymize_paths(
        inputs, tmp_path / "out", engine, on_file=lambda src, r: seen.append((src, r is not None))
    )
    assert seen == [(src, src not in bad) for src in inputs]
    assert [f.source for f in report.failures] == [p for p in inputs if p in bad]
    # Each output is the one the same input gives alone (keyed determinism), in input order.
    alone = [pseudonymize_file(p, tmp_path / "alone", engine)[0].sop_uid for p in inputs
             if p not in bad]  # fmt: skip
    assert [r.sop_uid for r in report.instances] == alone
    assert [p.stem for p in report.outputs] == alone
    assert all(dcmread(p).SOPInstanceUID == p.stem for p in report.outputs)


def test_a_write_that_fails_is_reported_and_the_batch_goes_on(engine, tmp_path):
    inputs = _slices(tmp_path / "in")
    first = pseudonymize_file(inputs[0], tmp_path / "probe", engine)[0]
    out = tmp_path / "out"
    # A file where the study's folder should be: every write of that study fails.
    out.mkdir()
    (out / first.study_uid).write_text("in the way")
    other = _slices(tmp_path / "in2", 3)
    report = pseudonymize_paths([*inputs, *other], out, engine)
    assert [f.source for f in report.failures] == inputs
    assert all(f.reason.startswith("cannot read or write") for f in report.failures)
    assert len(report.outputs) == 3 and all(p.is_file() for p in report.outputs)
    assert not list(out.rglob(".partial-*"))


def test_the_linkage_hook_runs_before_the_output_exists(engine, tmp_path):
    out = tmp_path / "out"
    early: list[bool] = []

    def before_write(result) -> None:
        early.append(not output_path(out, result).exists())

    report = pseudonymize_paths(_slices(tmp_path / "in"), out, engine, before_write=before_write)
    assert early == [True] * COUNT
    assert len(report.outputs) == COUNT


@pytest.mark.parametrize("hook", ["before_write", "on_file"])
def test_an_interrupt_leaves_whole_outputs_only_and_no_open_source(engine, tmp_path, hook):
    inputs = _slices(tmp_path / "in")
    out = tmp_path / "out"
    calls = 0

    def interrupt(*_args) -> None:
        nonlocal calls
        calls += 1
        if calls == batch.IN_FLIGHT + 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pseudonymize_paths(inputs, out, engine, **{hook: interrupt})
    # Only the batch's own files: the vault's and index's pooled connections open and
    # close on their own schedule.
    assert not [f for f in _open_files() if f.startswith((str(tmp_path / "in"), str(out)))]
    written = list(out.rglob("*.dcm"))
    assert not [p for p in written if p.name.startswith(".partial-")]
    assert 0 < len(written) < len(inputs)
    pixels = len(dcmread(inputs[0]).PixelData)
    assert all(len(dcmread(p).PixelData) == pixels for p in written)


def _open_files() -> set[str]:
    """Regular files this process holds open (sockets and pipes aside)."""
    fds = Path("/proc/self/fd")
    targets = set()
    for fd in fds.iterdir():
        try:
            target = str(fd.readlink())
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
        if target.startswith("/"):
            targets.add(target)
    return targets


def test_a_batch_writes_past_the_page_cache_and_a_single_file_does_not(
    engine, tmp_path, monkeypatch
):
    # A batch's outputs are not read back soon; `pseudonymize_file` (one file, which a tool
    # or a test reads right away) keeps the page cache.
    asked: list[bool] = []
    set_direct = part10._set_direct
    monkeypatch.setattr(
        part10, "_set_direct", lambda fd, on: asked.append(on) or set_direct(fd, on)
    )
    src = sample("CT_small.dcm")
    pseudonymize_file(src, tmp_path / "scratch", engine)
    assert asked == []
    report = pseudonymize_paths([src], tmp_path / "batch", engine)
    assert asked == [True, False]  # on for the aligned part, off for the last block
    assert (
        report.outputs[0].read_bytes() == next((tmp_path / "scratch").rglob("*.dcm")).read_bytes()
    )
