"""Pseudonymization throughput: imaging-depot against dicognito, deid and plain pydicom.

What it measures: wall-clock seconds for one process to de-identify a folder of N DICOM files
(files/s = files / seconds), for each tool, on the same data in the same run, and the ratio
ours / peer (the machines are noisy, ratios are stable).

How:
1. N CT instances of about 0.5 MB are cloned from a real 512x512 CT shipped with pydicom-data
   (693_UNCR.dcm; falls back to pydicom's CT_small.dcm tiled to 512x512). Each clone gets
   synthetic patients, new Study/Series/SOP/FrameOfReference UIDs (20 studies x 100 slices by
   default), its own slice position and its own pixel data (the real image shifted by a
   per-slice offset, so every clone's pixels are unique). Generation is not timed.
2. Each tool runs as its own subprocess, so each pays its own interpreter start-up:
   ours (`depot pseudonymize`), dicognito (`python -m dicognito`), deid (`get_identifiers` +
   `replace_identifiers` with its default recipe, on a subset because it is slow) and a plain
   pydicom `dcmwrite(dcmread(f))` loop. Before each, the page cache is warmed by reading every
   input once and pending writes are flushed (`os.sync`). The tools run in rounds (3 by
   default), each round in another order, the previous round's outputs deleted first; each
   tool's median round is reported. One round alone swings by 20% or more on a shared
   virtual machine (the host's load, and the file system after large deletions, weigh on
   whichever tool runs then).
3. It prints the setup, a table of files/s and ratios, and the targets with PASS/FAIL. It
   checks that each tool wrote one output per input (a warning otherwise) and, on the first 20
   outputs, that the pixel data is the input's byte for byte (paired by MD5) and that patient
   name, ID, Study and SOP Instance UIDs changed (counts only).

Nothing identifying is printed: only counts, sizes, versions and timings. The exit status is 0
unless a tool crashed (then the work folder is kept for its logs).

    .venv/bin/python bench/pseudonymize.py [--count 2000] [--deid-count 300] [--rounds 3]
                                           [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileDataset
from pydicom.uid import generate_uid
from rich.console import Console
from rich.table import Table

SLICES_PER_STUDY = 100
SIDE = 512
SLICE_SPACING = 1.0  # mm
CHECKED_OUTPUTS = 20
TARGETS = (("dicognito", 3.0), ("pydicom read+write", 1.5))
MARKER = ".depot-bench"
UID_SEED = "imaging-depot-bench"
PROJECT = "bench"

# Wide enough for the table and setup lines when the output is piped to a file.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)

# Synthetic people: invented names, never printed.
FAMILY_NAMES = (
    "QUELVEN", "ABGRALL", "TREGUER", "LE ROUZIC", "GOASDOUE", "KERMORGANT", "PENVEN",
    "LOZACH", "MORVAN", "CADIOU", "JAOUEN", "GUIVARCH", "RIOUAL", "TANGUY", "LE BIHAN",
    "PRIGENT", "CORRE", "LANNUZEL", "OLLIVIER", "FLOCH",
)  # fmt: skip
GIVEN_NAMES = (
    "Maelle", "Yann", "Gwenola", "Erwan", "Soizic", "Loic", "Nolwenn", "Tugdual", "Anaig",
    "Ronan",
)  # fmt: skip

# Peers, each run as `python -c SCRIPT IN OUT [COUNT]`.
PYDICOM_SCRIPT = """
import sys
from pathlib import Path
from pydicom import dcmread, dcmwrite
src, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
for f in sorted(src.iterdir()):
    dcmwrite(out / f.name, dcmread(f))
"""

DEID_SCRIPT = """
import sys
from pathlib import Path
from deid.dicom import get_identifiers, replace_identifiers
src, out, count = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
out.mkdir(parents=True, exist_ok=True)
files = [str(f) for f in sorted(src.iterdir())][:count]
ids = get_identifiers(files)
replace_identifiers(files, ids=ids, save=True, output_folder=str(out))
"""


@dataclass(frozen=True)
class Corpus:
    """The generated inputs: where they are, their total size, MD5 of each one's pixel data."""

    folder: Path
    files: list[Path]
    total_bytes: int
    template: str
    pixel_md5: dict[str, Path]  # MD5(PixelData) -> input file (all distinct)


@dataclass(frozen=True)
class Tool:
    """One contestant: the command that processes `files` inputs into `out`."""

    name: str
    command: list[str]
    shown: str  # the command as printed in the setup, paths relative to the work folder
    out: Path
    files: int
    env: dict[str, str]


@dataclass
class Outcome:
    """How a tool's run went."""

    tool: Tool
    seconds: float
    returncode: int
    outputs: int
    log: Path
    user_cpu: float = 0.0  # CPU seconds in the tool's own code (user mode)
    system_cpu: float = 0.0  # CPU seconds in the kernel: mostly writing the output bytes

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def rate(self) -> float:
        return self.tool.files / self.seconds


# --- Generating the corpus ---------------------------------------------------------------


def package_data_dirs() -> list[Path]:
    """Where the installed packages keep their real test DICOM files."""
    folders = [Path(pydicom.__file__).parent / "data" / "test_files"]
    spec = importlib.util.find_spec("data_store")  # pydicom-data
    if spec and spec.origin:
        folders.insert(0, Path(spec.origin).parent / "data")
    return folders


def find_template() -> Path:
    """A real uncompressed 512x512 CT if one is installed, else pydicom's CT_small.dcm."""
    for name in ("693_UNCR.dcm", "CT_small.dcm"):
        for folder in package_data_dirs():
            if (folder / name).is_file():
                return folder / name
    raise SystemExit("no real CT found: install pydicom-data (pip install -e '.[bench]')")


def base_pixels(ds: Dataset) -> bytes:
    """The template's 16-bit image as SIDE x SIDE raw bytes, tiled if it is smaller."""
    if ds.BitsAllocated != 16 or ds.SamplesPerPixel != 1:
        raise SystemExit("the template CT must be 16-bit monochrome")
    rows, cols = int(ds.Rows), int(ds.Columns)
    data = bytes(ds.PixelData)[: rows * cols * 2]
    if (rows, cols) == (SIDE, SIDE):
        return data
    row_bytes = cols * 2
    lines = [data[r * row_bytes : (r + 1) * row_bytes] for r in range(rows)]
    wide = [(line * (SIDE // cols + 1))[: SIDE * 2] for line in lines]
    return b"".join(wide[r % rows] for r in range(SIDE))


def slice_pixels(base: bytes, index: int) -> bytes:
    """The real image shifted by `index` rows and `index` pixels: unique per slice."""
    shift = (index * (SIDE + 1) * 2) % len(base)
    return base[shift:] + base[:shift]


def uid(*parts: object) -> str:
    """A deterministic UID, so the same --count always produces the same corpus.

    pydicom joins entropy sources with no separator ("1", "23" = "12", "3"): join them here.
    """
    return generate_uid(entropy_srcs=["/".join(map(str, (UID_SEED, *parts)))])


def set_patient(ds: Dataset, study: int) -> None:
    """One synthetic patient and study per study index."""
    family = FAMILY_NAMES[study % len(FAMILY_NAMES)]
    given = GIVEN_NAMES[study % len(GIVEN_NAMES)]
    ds.PatientName = f"{family}^{given}"
    ds.PatientID = f"IPP{80400000 + study * 7919}"
    ds.PatientBirthDate = f"19{40 + study % 50:02d}{1 + study % 12:02d}{1 + study % 28:02d}"
    ds.PatientSex = "FM"[study % 2]
    ds.PatientIdentityRemoved = "NO"
    ds.AccessionNumber = f"ACC{7700000 + study}"
    ds.StudyID = f"{study + 1}"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = f"2023{1 + study % 12:02d}{1 + study % 28:02d}"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = f"{8 + study % 10:02d}1500"
    ds.InstitutionName = "Centre Hospitalier Exemple"
    ds.ReferringPhysicianName = "KERVADEC^Yannick"
    ds.StudyInstanceUID = uid("study", study)
    ds.SeriesInstanceUID = uid("series", study)
    ds.FrameOfReferenceUID = uid("frame", study)
    ds.SeriesNumber = 1


def set_slice(ds: Dataset, study: int, slice_: int, z0: float) -> None:
    """Per-slice position, number and SOP Instance UID."""
    sop = uid("sop", study, slice_)
    ds.SOPInstanceUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.InstanceNumber = slice_ + 1
    z = round(z0 - slice_ * SLICE_SPACING, 3)
    x, y = (float(v) for v in ds.ImagePositionPatient[:2])
    ds.ImagePositionPatient = [x, y, z]
    ds.SliceLocation = z


def load_template(path: Path) -> tuple[FileDataset, bytes]:
    ds = pydicom.dcmread(path)
    base = base_pixels(ds)
    ds.Rows = ds.Columns = SIDE
    ds.SliceThickness = ds.SpacingBetweenSlices = SLICE_SPACING
    if "ImagePositionPatient" not in ds:
        ds.ImagePositionPatient = [-125.0, -125.0, 0.0]
    return ds, base


def generate(folder: Path, count: int) -> Corpus:
    """Write `count` clones of a real CT into `folder` (studies of SLICES_PER_STUDY slices)."""
    template_path = find_template()
    ds, base = load_template(template_path)
    z0 = float(ds.ImagePositionPatient[2])
    folder.mkdir(parents=True)
    files: list[Path] = []
    pixel_md5: dict[str, Path] = {}
    sops: set[str] = set()
    for index in range(count):
        study, slice_ = divmod(index, SLICES_PER_STUDY)
        if slice_ == 0:
            set_patient(ds, study)
        set_slice(ds, study, slice_, z0)
        ds.PixelData = slice_pixels(base, index)
        path = folder / f"s{study:03d}-i{slice_:03d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        pixel_md5[hashlib.md5(ds.PixelData).hexdigest()] = path
        sops.add(ds.SOPInstanceUID)
        files.append(path)
    if len(pixel_md5) != count or len(sops) != count:
        raise SystemExit("generated pixel data or SOP Instance UIDs are not unique per file")
    total = sum(f.stat().st_size for f in files)
    return Corpus(folder, files, total, template_path.name, pixel_md5)


# --- Running the tools -------------------------------------------------------------------


def bin_dir() -> Path:
    """The virtualenv's bin folder (not resolved: a symlinked python stays in the venv)."""
    return Path(sys.executable).parent


def depot_env(workdir: Path) -> dict[str, str]:
    """A clean environment for ours: its own data dir, no DEPOT_* setting from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPOT_")}
    env["DEPOT_DATA_DIR"] = str(workdir / "depot-data")
    return env


def create_project(env: dict[str, str], log: Path) -> None:
    """`depot project create` (setup, not timed)."""
    command = [str(bin_dir() / "depot"), "project", "create", PROJECT, "--title", "Benchmark"]
    with log.open("wb") as sink:
        done = subprocess.run(command, env=env, stdout=sink, stderr=sink, check=False)
    if done.returncode != 0:
        raise SystemExit(f"`depot project create` failed (exit {done.returncode}); see {log}")


def tools(workdir: Path, corpus: Corpus, deid_count: int) -> list[Tool]:
    """The contestants, ours first; each reads `input/` and writes its own `out-*` folder."""
    py, src = sys.executable, str(corpus.folder)
    n = len(corpus.files)
    plain_env = dict(os.environ)

    def out(name: str) -> Path:
        return workdir / f"out-{name}"

    depot = str(bin_dir() / "depot")
    return [
        Tool(
            "imaging-depot (ours)",
            [depot, "pseudonymize", src, str(out("ours")), "--project", PROJECT],
            f"DEPOT_DATA_DIR=depot-data depot pseudonymize input out-ours --project {PROJECT}",
            out("ours"),
            n,
            depot_env(workdir),
        ),
        Tool(
            "dicognito",
            # The 0.19 console script calls main() without its argument list: use -m.
            [py, "-m", "dicognito", "--quiet", "--output-directory", str(out("dicognito")), src],
            "python -m dicognito --quiet --output-directory out-dicognito input",
            out("dicognito"),
            n,
            plain_env,
        ),
        Tool(
            "deid",
            [py, "-c", DEID_SCRIPT, src, str(out("deid")), str(deid_count)],
            f"python -c 'ids = get_identifiers(files); replace_identifiers(files, ids=ids, "
            f"save=True, output_folder=out)' (default recipe, first {min(deid_count, n)} files)",
            out("deid"),
            min(deid_count, n),
            plain_env,
        ),
        Tool(
            "pydicom read+write",
            [py, "-c", PYDICOM_SCRIPT, src, str(out("pydicom"))],
            "python -c 'for f in input: dcmwrite(out-pydicom / f.name, dcmread(f))'",
            out("pydicom"),
            n,
            plain_env,
        ),
    ]


def warm_cache(files: list[Path]) -> None:
    """Read every input once so no tool pays for the first cold read; flush pending writes."""
    os.sync()
    for f in files:
        with f.open("rb") as fh:
            while fh.read(1 << 20):
                pass


def dicom_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.dcm")) if folder.is_dir() else []


def run(tool: Tool, corpus: Corpus, logs: Path) -> Outcome:
    """Time one tool's subprocess; its stdout/stderr (progress bars, summaries) go to a log."""
    _remove(tool.out)  # the previous round's outputs
    warm_cache(corpus.files)
    log = logs / f"{tool.out.name}.log"
    console.print(f"running {tool.name} on {tool.files} files …")
    with log.open("wb") as sink:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(tool.command, env=tool.env, stdout=sink, stderr=sink, check=False)
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return Outcome(
        tool, seconds, done.returncode, len(dicom_files(tool.out)), log,
        user_cpu=after.ru_utime - before.ru_utime,
        system_cpu=after.ru_stime - before.ru_stime,
    )  # fmt: skip


# --- Checking and reporting --------------------------------------------------------------


@dataclass(frozen=True)
class OutputCheck:
    """What the first CHECKED_OUTPUTS outputs of a tool look like against their inputs."""

    checked: int
    pixels_same: int  # PixelData byte for byte the input's
    ids_changed: int  # none of IDENTIFYING still holds the input's value


IDENTIFYING = ("PatientName", "PatientID", "StudyInstanceUID", "SOPInstanceUID")


def check_outputs(outcome: Outcome, corpus: Corpus) -> OutputCheck:
    """Pair each of the first outputs with its input by MD5(PixelData) and compare them.

    Every input's pixels are unique, so an MD5 match pins the output to its own input. An
    output whose pixels match no input counts as neither kept nor changed.
    """
    paths = dicom_files(outcome.tool.out)[:CHECKED_OUTPUTS]
    same = changed = 0
    for path in paths:
        out = pydicom.dcmread(path)
        source = corpus.pixel_md5.get(hashlib.md5(out.PixelData).hexdigest())
        if source is None:
            continue
        same += 1
        original = pydicom.dcmread(source, stop_before_pixels=True)
        if all(out.get(k) != original.get(k) for k in IDENTIFYING):
            changed += 1
    return OutputCheck(len(paths), same, changed)


def startup_seconds(command: list[str]) -> float:
    """Wall time of a command that only starts up (best of 3)."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=False)
        best = min(best, time.perf_counter() - start)
    return best


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("imaging-depot", "pydicom", "dicognito", "deid"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def print_setup(corpus: Corpus, all_tools: list[Tool], workdir: Path) -> None:
    n = len(corpus.files)
    studies = -(-n // SLICES_PER_STUDY)
    console.rule("[bold]Pseudonymization benchmark: setup")
    console.print(
        f"files: {n} ({studies} studies x up to {SLICES_PER_STUDY} slices, one patient per "
        f"study), cloned from real CT {corpus.template} at {SIDE}x{SIDE} 16-bit, uncompressed"
    )
    console.print(
        f"bytes per file: {corpus.total_bytes / n:,.0f} (mean); "
        f"total: {corpus.total_bytes / 1e6:,.1f} MB"
    )
    console.print(f"CPU: {os.cpu_count()} logical ({cpu_model()}); {platform.platform()}")
    console.print("versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    console.print(
        "method: one process per tool, wall clock of the whole subprocess (interpreter start-up "
        "included); page cache warmed and os.sync() before each; outputs on the same disk"
    )
    for tool in all_tools:
        console.print(f"  {tool.name}: {tool.shown}", soft_wrap=True)
    depot_up = startup_seconds([str(bin_dir() / "depot"), "--help"])
    python_up = startup_seconds([sys.executable, "-c", "import pydicom"])
    console.print(
        f"start-up (best of 3): `depot --help` {depot_up:.2f} s, "
        f"`python -c 'import pydicom'` {python_up:.2f} s"
    )
    console.print(f"work folder: {workdir}")


def ratio(ours: Outcome, other: Outcome) -> float | None:
    if not (ours.ok and other.ok):
        return None
    return ours.rate / other.rate


def run_rounds(all_tools: list[Tool], corpus: Corpus, logs: Path, rounds: int) -> list[Outcome]:
    """Every tool once per round, each round starting one tool further along; per tool, the
    outcome of its median round (by wall time), or its first failed one."""
    runs: dict[str, list[Outcome]] = {tool.name: [] for tool in all_tools}
    for r in range(rounds):
        console.print(f"[bold]round {r + 1} of {rounds}")
        order = all_tools[r % len(all_tools) :] + all_tools[: r % len(all_tools)]
        for tool in order:
            outcome = run(tool, corpus, logs)
            runs[tool.name].append(outcome)
            if not outcome.ok:
                return [next((o for o in runs[t.name] if not o.ok), runs[t.name][-1])
                        for t in all_tools if runs[t.name]]  # fmt: skip
    for tool in all_tools:
        seconds = ", ".join(f"{o.seconds:.2f}" for o in runs[tool.name])
        console.print(f"  {tool.name}: {seconds} s")
    return [sorted(runs[t.name], key=lambda o: o.seconds)[rounds // 2] for t in all_tools]


def print_results(outcomes: list[Outcome]) -> None:
    ours = outcomes[0]
    table = Table(
        title="Pseudonymization throughput", caption="one process each, same data, same run"
    )
    table.add_column("tool")
    table.add_column("files", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("files/s", justify="right")
    table.add_column("ours / tool", justify="right")
    table.add_column("user CPU ms/file", justify="right")
    table.add_column("kernel CPU ms/file", justify="right")
    table.add_column("ours / tool (user CPU)", justify="right")
    table.add_column("cores busy", justify="right")
    for outcome in outcomes:
        if not outcome.ok:
            crashed = f"crashed (exit {outcome.returncode})"
            table.add_row(outcome.tool.name, str(outcome.tool.files), crashed, *"-" * 6)
            continue
        r = ratio(ours, outcome)
        cpu_ratio = (outcome.user_cpu / outcome.tool.files) / (ours.user_cpu / ours.tool.files)
        table.add_row(
            outcome.tool.name,
            str(outcome.tool.files),
            f"{outcome.seconds:.2f}",
            f"{outcome.rate:.1f}",
            "-" if r is None else f"{r:.2f}",
            f"{1000 * outcome.user_cpu / outcome.tool.files:.2f}",
            f"{1000 * outcome.system_cpu / outcome.tool.files:.2f}",
            f"{cpu_ratio:.2f}",
            f"{(outcome.user_cpu + outcome.system_cpu) / outcome.seconds:.2f}",
        )
    console.print(table)
    console.print(
        "Wall time includes the kernel writing every output byte (the same ~0.5 MB per file "
        "for every tool); user CPU is each tool's own work, start-up included. Cores busy = "
        "CPU time / wall time: ours writes each output in a thread, past the page cache "
        "(O_DIRECT) where the file system allows it, while its main thread pseudonymizes "
        "the next header."
    )


def print_targets(outcomes: list[Outcome]) -> None:
    ours = outcomes[0]
    by_name = {o.tool.name: o for o in outcomes}
    for name, target in TARGETS:
        r = ratio(ours, by_name[name])
        if r is None:
            console.print(f"target ours/{name} >= {target}: n/a (a tool crashed)")
        else:
            verdict = "[green]PASS[/]" if r >= target else "[red]FAIL[/]"
            console.print(f"target ours/{name} >= {target}: {r:.2f} {verdict}")


def print_checks(outcomes: list[Outcome], corpus: Corpus) -> None:
    """Output counts and what the first outputs kept and changed (counts only, no values)."""
    for outcome in outcomes:
        name = outcome.tool.name
        if not outcome.ok:
            console.print(f"[red]{name} exited {outcome.returncode}[/]; log: {outcome.log}")
            continue
        if outcome.outputs != outcome.tool.files:
            console.print(
                f"[yellow]warning[/]: {name} wrote {outcome.outputs} files "
                f"for {outcome.tool.files} inputs"
            )
        check = check_outputs(outcome, corpus)
        flag = (
            "" if check.checked and check.pixels_same == check.checked else "[yellow]warning[/]: "
        )
        console.print(
            f"{flag}{name}: of the first {check.checked} outputs, {check.pixels_same} have the "
            f"input's exact pixel data, {check.ids_changed} changed all of "
            + ", ".join(IDENTIFYING)
        )


# --- Work folder and main ----------------------------------------------------------------


def prepare_workdir(arg: Path | None) -> tuple[Path, bool]:
    """The work folder and whether we created it. An existing one must be empty or ours."""
    if arg is None:
        path = Path(tempfile.mkdtemp(prefix="depot-bench-"))
        created = True
    else:
        path = arg.resolve()
        created = not path.exists()
        if path.exists() and any(path.iterdir()) and not (path / MARKER).exists():
            raise SystemExit(f"{path} is not empty and not a previous bench folder; choose another")
        for child in _our_children(path):
            _remove(child)
        path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).touch()
    (path / "logs").mkdir()
    return path, created


def _our_children(path: Path) -> Iterator[Path]:
    if path.is_dir():
        for name in ("input", "depot-data", "logs", MARKER):
            yield path / name
        yield from path.glob("out-*")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def cleanup(path: Path, created: bool) -> None:
    for child in list(_our_children(path)):
        _remove(child)
    if created:
        path.rmdir()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="files to generate (2000)")
    parser.add_argument(
        "--deid-count", type=int, default=300, help="files deid runs on; it is slow (300)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of every tool; the median is kept (3)"
    )
    parser.add_argument("--workdir", type=Path, help="work folder (default: a new one in /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    if args.count < 1 or args.deid_count < 1 or args.rounds < 1:
        parser.error("--count, --deid-count and --rounds must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir, created = prepare_workdir(args.workdir)
    crashed = True
    try:
        console.print(f"generating {args.count} files (not timed) …")
        corpus = generate(workdir / "input", args.count)
        all_tools = tools(workdir, corpus, args.deid_count)
        create_project(all_tools[0].env, workdir / "logs" / "project-create.log")
        print_setup(corpus, all_tools, workdir)
        outcomes = run_rounds(all_tools, corpus, workdir / "logs", args.rounds)
        console.rule("[bold]Results")
        print_results(outcomes)
        print_targets(outcomes)
        print_checks(outcomes, corpus)
        crashed = not all(o.ok for o in outcomes)
    finally:
        if args.keep or crashed:
            console.print(f"work folder kept: {workdir}")
        else:
            cleanup(workdir, created)
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
