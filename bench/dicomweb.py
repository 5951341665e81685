"""DICOMweb throughput and latency: imaging-depot against Orthanc with its DICOMweb plugin.

What it measures, on the same machine, the same data and in the same run, for ours and for
Orthanc (Debian `orthanc` + `orthanc-dicomweb`), with the ratio of the two:
1. STOW-RS: instances/s for N CT instances of about 0.5 MB posted by C concurrent clients
   (threads, one httpx keep-alive connection each), B instances per multipart/related request.
   Ours pseudonymizes every instance on the way in (ingest route, data manager token);
   Orthanc stores them as they come (`/dicom-web/studies`).
2. QIDO-RS study search on an index of S studies (one small CT each, synthetic patients with
   about 5 studies each, varied StudyDate and Modality): p50/p95 latency of four searches,
   each `limit=100`: PatientID exact, PatientName wildcard (the first half of a stored name,
   then `*`), a 30-day StudyDate range and ModalitiesInStudy. Values are sampled from what
   each server holds (QIDO'd first): ours holds pseudonyms and shifted dates, Orthanc the
   originals; the mean number of matches per search is printed for both, to show that the
   searches are equivalent.
3. WADO-RS series retrieval: MB/s of multipart body received for a whole series of the STOW
   data (`Accept: multipart/related; type="application/dicom"; transfer-syntax=*`), by curl
   when the machine has it (body discarded, curl's own timer), else by httpx. A Python
   client reading 64 KiB at a time is slower than either server: with it, both measured
   about the same rate, the client's.
4. Series metadata (`.../series/{r}/metadata`) of a series of the STOW data (500 instances
   by default): the first call, then repeated calls, p50/p95.

How: the corpora are generated first (not timed): the STOW corpus is cloned from the real CT
of pydicom-data (693_UNCR.dcm, or CT_small tiled) with bench/pseudonymize.py's helpers,
series of `--series-size` slices, one study and patient per series; the index corpus from
pydicom's CT_small.dcm with new UIDs. Both servers run as real processes on loopback: ours
`depot serve --workers W` (embedded deployment: SQLite + filesystem, or `--postgres`),
Orthanc 1.10 from tests/orthanc.py with its documented default performance settings, written
out explicitly and printed. The index is loaded into both by STOW (not timed). Then each
measurement runs; latency samples alternate between the two servers (one request to ours,
one to Orthanc) so that noise from the shared machine falls on both alike; each measurement
is preceded by a warm-up. Wall time is time.perf_counter() around each request, body read
(and, where the server compresses, decoded) included. The bench client runs on the same CPUs.

Ratios: throughput ours / Orthanc, latency Orthanc / ours: above 1 means ours is better.
Target: ours at least equal to Orthanc on every line (ratio >= 1.0).

Nothing identifying is printed (the data is synthetic anyway): only counts, sizes, timings
and versions. The exit status is 0 unless a server or a request crashed (then the work
folder is kept for the logs).

    .venv/bin/python bench/dicomweb.py [--instances 2000] [--series-size 500] [--studies 10000]
        [--queries 300] [--clients 4] [--batch 10] [--workers 2] [--postgres URL]
        [--workdir DIR] [--keep]

Quick run: `--instances 200 --series-size 100 --studies 1000 --queries 50`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import random
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import httpx
import pydicom
from pydicom.data import get_testdata_file
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.orthanc, tests.services; bench/ is already on the path

import pseudonymize as corpus_tools  # noqa: E402 (bench/pseudonymize.py: the CT clone helpers)

from tests.orthanc import OrthancProcess, OrthancServer  # noqa: E402
from tests.services import die_with_parent, free_ports, log_tail, stop  # noqa: E402

PROJECT = "bench"
UID_SEED = "imaging-depot-bench-dicomweb"
STUDIES_PER_PATIENT = 5
MODALITIES = ("CT", "MR", "CR", "DX", "US", "PT")
QUERY_LIMIT = 100
DATE_RANGE_DAYS = 30
WARMUP_QUERIES = 20
INDEX_BATCH = 50  # instances per STOW request when loading the index (not timed)
REQUEST_TIMEOUT = 600.0  # seconds: a whole 500-instance series on a loaded 2-core machine
STARTUP_TIMEOUT = 60.0
DICOM_JSON = "application/dicom+json"
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
WADO_CLIENT = "curl" if shutil.which("curl") else "httpx"  # see the module docstring, 3.

# Orthanc's performance settings: the defaults documented in Debian's /etc/orthanc/*.json for
# 1.10 / DICOMweb 1.7, written out so that they are certain and printed. SyncStorageArea
# (fsync per instance) matches ours, which fsyncs every blob before indexing it.
ORTHANC_SETTINGS = {
    "HttpThreadsCount": 50,
    "ConcurrentJobs": 2,
    "KeepAlive": True,
    "TcpNoDelay": True,
    "HttpCompressionEnabled": True,
    "StorageCompression": False,
    "SyncStorageArea": True,
    "MaximumStorageCacheSize": 128,  # MB
    "StorageAccessOnFind": "Always",
    "LimitFindResults": 0,
    "LimitFindInstances": 0,
}
ORTHANC_DICOMWEB_SETTINGS = {
    "StudiesMetadata": "Full",  # read every instance's file (no cache in plugin 1.7)
    "SeriesMetadata": "Full",
    "QidoCaseSensitive": True,
}

console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)

# Synthetic people: family names built from syllables (unique per patient), never printed.
SYLLABLES = (
    "KER", "MOR", "GAN", "LE", "BI", "HAN", "TRE", "GUER", "PEN", "VEN", "LO", "ZACH", "CA",
    "DIOU", "JA", "OUEN", "RIO", "UAL", "TAN", "GUY",
)  # fmt: skip
GIVEN_NAMES = corpus_tools.GIVEN_NAMES


# --- Corpora -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    """Generated DICOM files and what the bench needs to know about them."""

    folder: Path
    files: list[Path]
    total_bytes: int
    series: list[str]  # SeriesInstanceUID of each file (STOW corpus: in file order)
    template: str


def uid(*parts: object) -> str:
    return pydicom.uid.generate_uid(entropy_srcs=["/".join(map(str, (UID_SEED, *parts)))])


def stow_corpus(folder: Path, count: int, series_size: int) -> Corpus:
    """`count` 512x512 CT clones, one study (one patient) per series of `series_size`."""
    template_path = corpus_tools.find_template()
    ds, base = corpus_tools.load_template(template_path)
    z0 = float(ds.ImagePositionPatient[2])
    folder.mkdir(parents=True)
    files: list[Path] = []
    series: list[str] = []
    for index in range(count):
        study, slice_ = divmod(index, series_size)
        if slice_ == 0:
            corpus_tools.set_patient(ds, study)
            ds.StudyInstanceUID = uid("stow-study", study)
            ds.SeriesInstanceUID = uid("stow-series", study)
            ds.FrameOfReferenceUID = uid("stow-frame", study)
        corpus_tools.set_slice(ds, study, slice_, z0)
        sop = uid("stow-sop", study, slice_)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.PixelData = corpus_tools.slice_pixels(base, index)
        path = folder / f"s{study:03d}-i{slice_:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        files.append(path)
        series.append(ds.SeriesInstanceUID)
    total = sum(f.stat().st_size for f in files)
    return Corpus(folder, files, total, series, template_path.name)


def patient_name(patient: int) -> tuple[str, str]:
    """A unique synthetic family name per patient (three syllables) and a given name."""
    n = len(SYLLABLES)
    a, b, c = patient % n, (patient // n) % n, (patient // (n * n)) % n
    family = SYLLABLES[c] + SYLLABLES[b] + SYLLABLES[a]
    if patient >= n**3:
        family += f"-{SYLLABLES[(patient // n**3) % n]}"
    return family, GIVEN_NAMES[patient % len(GIVEN_NAMES)]


def index_corpus(folder: Path, studies: int) -> Corpus:
    """`studies` one-instance studies from CT_small.dcm: ~5 per patient, varied date/modality."""
    template = Path(get_testdata_file("CT_small.dcm"))
    ds = pydicom.dcmread(template)
    rng = random.Random(20240607)
    first_day = dt.date(2019, 1, 1)
    folder.mkdir(parents=True)
    files: list[Path] = []
    series: list[str] = []
    for study in range(studies):
        patient = study // STUDIES_PER_PATIENT
        if study % STUDIES_PER_PATIENT == 0:
            family, given = patient_name(patient)
            ds.PatientName = f"{family}^{given}"
            ds.PatientID = f"IPP{70100000 + patient * 7919}"
            ds.PatientBirthDate = (
                f"19{40 + patient % 50:02d}{1 + patient % 12:02d}{1 + patient % 28:02d}"
            )
            ds.PatientSex = "FM"[patient % 2]
        day = first_day + dt.timedelta(days=rng.randrange(5 * 365))
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = f"{day:%Y%m%d}"
        ds.StudyTime = ds.SeriesTime = f"{8 + study % 10:02d}{study % 60:02d}00"
        ds.Modality = MODALITIES[rng.randrange(len(MODALITIES))]
        ds.AccessionNumber = f"ACC{5500000 + study}"
        ds.StudyID = str(study + 1)
        ds.StudyInstanceUID = uid("index-study", study)
        ds.SeriesInstanceUID = uid("index-series", study)
        ds.FrameOfReferenceUID = uid("index-frame", study)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid("index-sop", study)
        path = folder / f"study{study:05d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        files.append(path)
        series.append(ds.SeriesInstanceUID)
    total = sum(f.stat().st_size for f in files)
    return Corpus(folder, files, total, series, template.name)


def warm_cache(files: list[Path]) -> None:
    os.sync()
    for f in files:
        f.read_bytes()


# --- The servers ---------------------------------------------------------------------------


@dataclass
class Target:
    """One server under test, as the clients see it."""

    name: str
    stow_url: str  # STOW-RS endpoint (ours: the ingest route, pseudonymizing)
    base: str  # DICOMweb root for QIDO / WADO, no trailing slash
    store_auth: dict  # httpx.Client keyword arguments for storing
    read_auth: dict  # ... and for reading

    def client(self, role: str = "read") -> httpx.Client:
        auth = self.store_auth if role == "store" else self.read_auth
        return httpx.Client(timeout=REQUEST_TIMEOUT, **auth)


class BenchOrthanc(OrthancProcess):
    """tests/orthanc.py's Orthanc, its data in the bench's work folder, performance settings
    written out explicitly."""

    def __init__(self, workdir: Path) -> None:
        super().__init__()
        shutil.rmtree(self.workdir, ignore_errors=True)  # the harness's own temp folder
        self.workdir = workdir
        workdir.mkdir()

    def _write_config(self, http_port: int, dicom_port: int) -> Path:
        path = super()._write_config(http_port, dicom_port)
        config = json.loads(path.read_text())
        config.update(ORTHANC_SETTINGS)
        config["DicomWeb"].update(ORTHANC_DICOMWEB_SETTINGS)
        path.write_text(json.dumps(config, indent=2))
        return path


@dataclass
class Ours:
    """Our server process and how to reach it."""

    process: subprocess.Popen
    url: str
    tokens: dict[str, str]
    log: Path


def depot_env(data_dir: Path, database_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPOT_")}
    env["DEPOT_DATA_DIR"] = str(data_dir)
    if database_url:
        env["DEPOT_DATABASE_URL"] = database_url
    return env


def prepare_ours(data_dir: Path, database_url: str | None) -> dict[str, str]:
    """Create the project and a token per role, in-process (setup, not timed)."""
    from app.auth.credentials import issue_token
    from app.auth.roles import Role
    from app.config import Settings
    from app.projects import create_project

    settings = Settings(data_dir=data_dir, database_url=database_url or "")
    create_project(settings, PROJECT, "Benchmark")
    return {
        "manager": issue_token(settings, PROJECT, Role.data_manager)[1],
        "researcher": issue_token(settings, PROJECT, Role.researcher)[1],
    }


def start_ours(
    data_dir: Path, database_url: str | None, workers: int, tokens: dict[str, str], log: Path
) -> Ours:
    (port,) = free_ports(1)
    depot = Path(sys.executable).with_name("depot")
    command = [str(depot), "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", str(workers)]
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            env=depot_env(data_dir, database_url),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"depot serve exited with {process.returncode}; {log_tail(log)}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return Ours(process, url, tokens, log)
        time.sleep(0.1)
    stop(process, 5)
    raise RuntimeError(f"depot serve did not become ready; {log_tail(log)}")


def ours_target(ours: Ours) -> Target:
    def bearer(role: str) -> dict:
        return {"headers": {"Authorization": f"Bearer {ours.tokens[role]}"}}

    return Target(
        "imaging-depot (ours)",
        f"{ours.url}/projects/{PROJECT}/ingest/studies",
        f"{ours.url}/projects/{PROJECT}/dicom-web",
        bearer("manager"),
        bearer("researcher"),
    )


def orthanc_target(server: OrthancServer) -> Target:
    auth = {"auth": server.auth}
    root = server.dicomweb_url.rstrip("/")
    return Target("Orthanc + DICOMweb", f"{root}/studies", root, auth, auth)


# --- HTTP helpers --------------------------------------------------------------------------

RETRIED = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.ConnectError)


def timed(
    client: httpx.Client, method: str, url: str, *, stream: bool = False, **kwargs
) -> tuple[float, int, httpx.Response]:
    """(seconds, body bytes, response) of one request, body read (streamed when asked).

    A keep-alive connection the server closed while idle (Orthanc closes them after 1 s)
    fails at once: that attempt is retried once and not timed.
    """
    for attempt in range(2):
        try:
            start = time.perf_counter()
            if stream:
                received = 0
                with client.stream(method, url, **kwargs) as response:
                    for chunk in response.iter_raw(1 << 20):
                        received += len(chunk)
                return time.perf_counter() - start, received, response
            response = client.request(method, url, **kwargs)
            seconds = time.perf_counter() - start
            return seconds, len(response.content), response
        except RETRIED:
            if attempt:
                raise
    raise AssertionError("unreachable")


def checked(response: httpx.Response, what: str) -> httpx.Response:
    if response.status_code >= 300:
        raise RuntimeError(f"{what} answered HTTP {response.status_code}")
    return response


def query_url(target: Target, params: dict[str, str]) -> str:
    """A QIDO-RS study search URL. `*`, `^` and `,` stay literal, as browsers and requests
    (dicomweb-client) send them: httpx's `params=` percent-encodes `*` and `^`, and the
    DICOMweb plugin 1.7 does not decode them (a wildcard search then finds nothing)."""
    return f"{target.base}/studies?{urlencode(params, safe='*^,')}"


def multipart(files: list[Path]) -> tuple[bytes, str]:
    boundary = secrets.token_hex(16)
    chunks: list[bytes] = []
    for f in files:
        chunks.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        chunks.append(f.read_bytes())
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="application/dicom"; boundary={boundary}'


def values(item: dict, tag: str) -> list:
    return item.get(tag, {}).get("Value", [])


def retrieve_url_path(url: str) -> tuple[str, str] | None:
    """(study, series) from a RetrieveURL `.../studies/{s}/series/{r}/instances/{i}`."""
    parts = urlsplit(url).path.split("/")
    try:
        s = parts.index("studies")
        if parts[s + 2] != "series":
            return None
        return parts[s + 1], parts[s + 3]
    except (ValueError, IndexError):
        return None


# --- 1. STOW-RS ----------------------------------------------------------------------------


@dataclass
class StowOutcome:
    seconds: float
    requests: int
    stored: int
    failed: int
    # original SeriesInstanceUID -> (study, series) as the server stored it
    series_map: dict[str, tuple[str, str]] = field(default_factory=dict)

    def rate(self, count: int) -> float:
        return count / self.seconds


def stow(
    target: Target, corpus: Corpus, indices: list[int], clients: int, batch: int
) -> StowOutcome:
    """Post `indices` of the corpus in batches from `clients` threads; wall time of it all."""
    batches = [indices[i : i + batch] for i in range(0, len(indices), batch)]
    lock = threading.Lock()
    queue = iter(batches)
    outcome = StowOutcome(0.0, len(batches), 0, 0)

    def next_batch() -> list[int] | None:
        with lock:
            return next(queue, None)

    def worker() -> None:
        with target.client("store") as client:
            while (job := next_batch()) is not None:
                body, content_type = multipart([corpus.files[i] for i in job])
                headers = {"Content-Type": content_type, "Accept": DICOM_JSON}
                _s, _n, response = timed(
                    client, "POST", target.stow_url, content=body, headers=headers
                )
                checked(response, f"{target.name} STOW-RS")
                answer = response.json()
                referenced = values(answer, "00081199")
                with lock:
                    outcome.stored += len(referenced)
                    outcome.failed += len(values(answer, "00081198"))
                    for index, item in zip(job, referenced, strict=False):
                        place = retrieve_url_path((values(item, "00081190") or [""])[0])
                        if place and corpus.series[index] not in outcome.series_map:
                            outcome.series_map[corpus.series[index]] = place

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(worker) for _ in range(clients)]:
            future.result()
    outcome.seconds = time.perf_counter() - start
    return outcome


# --- 2. QIDO-RS ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyRow:
    patient_id: str
    patient_name: str
    study_date: str
    modalities: tuple[str, ...]


def held_studies(target: Target) -> list[StudyRow]:
    """Every study the server holds, with the values the searches sample (paged QIDO)."""
    rows: list[StudyRow] = []
    params = {
        "includefield": "PatientID,PatientName,StudyDate,ModalitiesInStudy",
        "limit": "5000",
    }
    with target.client() as client:
        while True:
            page = {**params, "offset": str(len(rows))}
            _s, _n, response = timed(
                client, "GET", query_url(target, page), headers={"Accept": DICOM_JSON}
            )
            items = checked(response, f"{target.name} QIDO").json() if response.content else []
            for item in items:
                name = values(item, "00100010")
                rows.append(
                    StudyRow(
                        str((values(item, "00100020") or [""])[0]),
                        str(name[0].get("Alphabetic", "")) if name else "",
                        str((values(item, "00080020") or [""])[0]),
                        tuple(values(item, "00080061")),
                    )
                )
            if len(items) < 5000:
                return rows


QUERY_KINDS = ("PatientID exact", "PatientName wildcard", "StudyDate 30-day range",
               "ModalitiesInStudy")  # fmt: skip


def make_queries(rows: list[StudyRow], kind: str, count: int, seed: int) -> list[dict]:
    """`count` searches of one kind, values sampled from the server's own studies."""
    rng = random.Random(seed)
    usable = [r for r in rows if r.patient_id and r.study_date and r.modalities]
    queries = []
    for _ in range(count):
        row = rng.choice(usable)
        if kind == "PatientID exact":
            query = {"PatientID": row.patient_id}
        elif kind == "PatientName wildcard":
            name = row.patient_name
            query = {"PatientName": name[: max(1, len(name) // 2)] + "*"}
        elif kind == "StudyDate 30-day range":
            first = dt.datetime.strptime(row.study_date[:8], "%Y%m%d").date()
            last = first + dt.timedelta(days=DATE_RANGE_DAYS - 1)
            query = {"StudyDate": f"{first:%Y%m%d}-{last:%Y%m%d}"}
        else:
            query = {"ModalitiesInStudy": rng.choice(row.modalities)}
        queries.append({**query, "limit": str(QUERY_LIMIT)})
    return queries


@dataclass
class Samples:
    seconds: list[float] = field(default_factory=list)
    matches: list[int] = field(default_factory=list)
    body_bytes: list[int] = field(default_factory=list)
    encodings: set[str] = field(default_factory=set)

    def p(self, q: float) -> float:
        return percentile(self.seconds, q)


def percentile(data: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(data)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def alternate(
    targets: list[Target],
    requests: list[Callable[[int, httpx.Client], tuple[float, int, httpx.Response]]],
    count: int,
    warmup: int,
    record: Callable[[int, Samples, float, int, httpx.Response], None] | None = None,
) -> list[Samples]:
    """Request i to each target in turn (ours then Orthanc), `warmup` first, untimed."""
    results = [Samples() for _ in targets]
    clients = [t.client() for t in targets]
    try:
        for i in range(-warmup, count):
            for t, (client, request) in enumerate(zip(clients, requests, strict=True)):
                seconds, received, response = request(i, client)
                checked(response, targets[t].name)
                if i < 0:
                    continue
                sample = results[t]
                sample.seconds.append(seconds)
                sample.body_bytes.append(received)
                if encoding := response.headers.get("content-encoding"):
                    sample.encodings.add(encoding)
                if record:
                    record(i, sample, seconds, received, response)
    finally:
        for client in clients:
            client.close()
    return results


def qido(targets: list[Target], held: list[list[StudyRow]], kind: str, count: int) -> list[Samples]:
    seed = 1000 + QUERY_KINDS.index(kind)
    warm = [make_queries(rows, kind, WARMUP_QUERIES, seed + 50) for rows in held]
    measured = [make_queries(rows, kind, count, seed) for rows in held]

    def request_for(t: int):
        def request(i: int, client: httpx.Client):
            params = warm[t][i + WARMUP_QUERIES] if i < 0 else measured[t][i]
            headers = {"Accept": DICOM_JSON}
            return timed(client, "GET", query_url(targets[t], params), headers=headers)

        return request

    def record(_i: int, sample: Samples, _s: float, _n: int, response: httpx.Response) -> None:
        sample.matches.append(len(response.json()) if response.content else 0)

    return alternate(
        targets, [request_for(t) for t in range(len(targets))], count, WARMUP_QUERIES, record
    )


# --- 3. WADO-RS and 4. metadata --------------------------------------------------------------


@dataclass(frozen=True)
class Fetched:
    """What curl tells of a response: what `alternate` and `checked` read of an httpx one."""

    status_code: int
    headers: dict = field(default_factory=dict)


def _curl_quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def curl_timed(url: str, auth: dict) -> tuple[float, int, Fetched]:
    """(seconds, body bytes, status) of a WADO-RS GET by curl, the body discarded.

    The request goes to curl on its standard input (`--config -`), so the token or password
    never shows in the process list. `auth` is a Target's httpx keyword arguments.
    """
    headers = {**auth.get("headers", {}), "Accept": WADO_ACCEPT}
    config = [f"url = {_curl_quoted(url)}", 'output = "/dev/null"', "silent", "show-error"]
    config.append('write-out = "%{time_total} %{size_download} %{http_code}"')
    config += [f"header = {_curl_quoted(f'{k}: {v}')}" for k, v in headers.items()]
    if "auth" in auth:
        user, password = auth["auth"]
        config.append(f"user = {_curl_quoted(f'{user}:{password}')}")
    done = subprocess.run(
        ["curl", "--config", "-"],
        input="\n".join(config),
        capture_output=True,
        text=True,
        timeout=REQUEST_TIMEOUT,
        check=True,
    )
    seconds, size, code = done.stdout.split()
    return float(seconds), int(size), Fetched(int(code))


def wado(targets: list[Target], places: list[tuple[str, str]], repeats: int) -> list[Samples]:
    def request_for(t: int):
        study, series = places[t]
        url = f"{targets[t].base}/studies/{study}/series/{series}"

        def request(_i: int, client: httpx.Client):
            if WADO_CLIENT == "curl":
                return curl_timed(url, targets[t].read_auth)
            return timed(client, "GET", url, stream=True, headers={"Accept": WADO_ACCEPT})

        return request

    return alternate(targets, [request_for(t) for t in range(len(targets))], repeats, 1)


def metadata(
    targets: list[Target], places: list[tuple[str, str]], repeats: int
) -> tuple[list[Samples], list[float], list[int]]:
    """First call per server (no warm-up), then `repeats` alternating calls."""
    urls = [
        f"{t.base}/studies/{study}/series/{series}/metadata"
        for t, (study, series) in zip(targets, places, strict=True)
    ]
    first: list[float] = []
    instances: list[int] = []
    for target, url in zip(targets, urls, strict=True):
        with target.client() as client:
            seconds, _n, response = timed(client, "GET", url, headers={"Accept": DICOM_JSON})
        first.append(seconds)
        instances.append(len(checked(response, f"{target.name} metadata").json()))

    def request_for(t: int):
        def request(_i: int, client: httpx.Client):
            return timed(client, "GET", urls[t], headers={"Accept": DICOM_JSON})

        return request

    samples = alternate(targets, [request_for(t) for t in range(len(targets))], repeats, 2)
    return samples, first, instances


# --- Reporting -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One compared figure: ours, Orthanc, and which way is better."""

    name: str
    unit: str
    ours: float
    orthanc: float
    higher_is_better: bool
    target: bool = True  # counts for the "ours >= Orthanc on every line" target

    @property
    def ratio(self) -> float:
        if self.higher_is_better:
            return self.ours / self.orthanc if self.orthanc else float("nan")
        return self.orthanc / self.ours if self.ours else float("nan")


def fmt(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value * 1000:.1f} ms" if value < 10 else f"{value:.1f} s"
    return f"{value:,.1f} {unit}"


COLUMNS = (
    ("line", "left"), ("ours", "right"), ("Orthanc", "right"), ("ratio", "right"),
    ("ratio is", "left"), ("ours >= Orthanc", "left"),
)  # fmt: skip


def print_lines(title: str, lines: list[Line], caption: str) -> None:
    table = Table(title=title, caption=caption)
    for name, justify in COLUMNS:
        table.add_column(name, justify=justify)
    for line in lines:
        verdict = "[green]PASS[/]" if line.ratio >= 1.0 else "[red]FAIL[/]"
        table.add_row(
            line.name,
            fmt(line.ours, line.unit),
            fmt(line.orthanc, line.unit),
            f"{line.ratio:.2f}",
            "ours/Orthanc" if line.higher_is_better else "Orthanc/ours",
            verdict if line.target else f"({verdict})",
        )
    console.print(table)


def versions(orthanc: OrthancServer | None) -> dict[str, str]:
    found = {"python": platform.python_version(), "SQLite": sqlite3.sqlite_version}
    for package in ("imaging-depot", "pydicom", "fastapi", "uvicorn", "httpx"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    if orthanc is not None:
        found["Orthanc"] = orthanc.system().get("Version", "?")
        found["Orthanc DICOMweb plugin"] = orthanc.plugin_version()
    return found


def cpu_line() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} logical ({corpus_tools.cpu_model()}); load average {load}"


# --- Work folder, PostgreSQL and main ------------------------------------------------------


def prepare_workdir(arg: Path | None, bench_name: str = "dicomweb") -> tuple[Path, bool]:
    """The work folder (a new one in /tmp by default) and whether the bench created it. A
    given folder must be empty or one a `bench_name` bench used before (its marker file)."""
    if arg is None:
        return Path(tempfile.mkdtemp(prefix=f"depot-bench-{bench_name}-")), True
    marker = f".depot-bench-{bench_name}"
    path = arg.resolve()
    created = not path.exists()
    if path.exists() and any(path.iterdir()) and not (path / marker).exists():
        raise SystemExit(f"{path} is not empty and not a previous bench folder; choose another")
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / marker).touch()
    return path, created


def cleanup(path: Path, created: bool, bench_name: str = "dicomweb") -> None:
    if created:
        shutil.rmtree(path, ignore_errors=True)
    else:
        for child in path.iterdir():
            if child.name != f".depot-bench-{bench_name}":
                shutil.rmtree(child) if child.is_dir() else child.unlink()


@contextlib.contextmanager
def postgres_database(server_url: str | None, keep: bool) -> Iterator[str | None]:
    """A fresh database on the given PostgreSQL server (dropped at the end unless --keep)."""
    if not server_url:
        yield None
        return
    from sqlalchemy import create_engine, make_url, text

    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    name = f"depot_bench_{secrets.token_hex(4)}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        if not keep:
            from app.store.index import index_engine

            index_engine.cache_clear()
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--instances", type=int, default=2000, help="CT instances posted by STOW-RS (2000)")
    add("--series-size", type=int, default=500, help="instances per STOW series (500)")
    add("--studies", type=int, default=10000, help="studies in the QIDO index (10000)")
    add("--queries", type=int, default=300, help="timed searches per kind per server (300)")
    add("--wado-repeats", type=int, default=4, help="timed series retrievals per server (4)")
    add("--metadata-repeats", type=int, default=30, help="timed metadata calls (30)")
    add("--clients", type=int, default=4, help="concurrent STOW-RS clients (4)")
    add("--batch", type=int, default=10, help="instances per STOW-RS request (10)")
    add("--workers", type=int, default=os.cpu_count() or 1, help="depot serve --workers (CPUs)")
    add(
        "--postgres",
        metavar="URL",
        help="our index on PostgreSQL: server URL, e.g. "
        "postgresql+psycopg://postgres@127.0.0.1:5432/postgres (a database is created)",
    )
    add("--workdir", type=Path, help="work folder (default: a new one in /tmp)")
    add("--keep", action="store_true", help="keep the work folder (and the PostgreSQL database)")
    args = parser.parse_args(argv)
    positive = ("instances", "series_size", "studies", "queries", "wado_repeats",
                "metadata_repeats", "clients", "batch", "workers")  # fmt: skip
    if any(getattr(args, name) < 1 for name in positive):
        parser.error("counts must be positive")
    if args.series_size > args.instances:
        parser.error("--series-size cannot exceed --instances")
    return args


@dataclass
class Run:
    """Everything started, for the cleanup."""

    ours: Ours | None = None
    orthanc: BenchOrthanc | None = None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir, created = prepare_workdir(args.workdir)
    (workdir / "logs").mkdir()
    run = Run()
    crashed = True
    try:
        with postgres_database(args.postgres, args.keep) as database_url:
            crashed = not bench(args, workdir, database_url, run)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 (also pytest.fail from the Orthanc harness)
        console.print(f"[red]crashed[/]: {type(exc).__name__}: {exc}")
    finally:
        if run.ours is not None:
            stop(run.ours.process, 10)
        if run.orthanc is not None:
            run.orthanc._kill()
        if args.keep or crashed:
            console.print(f"work folder kept: {workdir}")
        else:
            cleanup(workdir, created)
    return 1 if crashed else 0


def bench(args: argparse.Namespace, workdir: Path, database_url: str | None, run: Run) -> bool:
    console.print("generating the corpora (not timed) …")
    start = time.perf_counter()
    ct = stow_corpus(workdir / "input-stow", args.instances, args.series_size)
    index = index_corpus(workdir / "input-index", args.studies)
    generated = time.perf_counter() - start

    data_dir = workdir / "depot-data"
    tokens = prepare_ours(data_dir, database_url)
    run.ours = start_ours(
        data_dir, database_url, args.workers, tokens, workdir / "logs" / "depot.log"
    )
    run.orthanc = BenchOrthanc(workdir / "orthanc")
    orthanc_server = run.orthanc.start()
    targets = [ours_target(run.ours), orthanc_target(orthanc_server)]

    series_count = -(-args.instances // args.series_size)
    console.rule("[bold]DICOMweb benchmark: setup")
    console.print(
        f"STOW corpus: {len(ct.files)} CT instances ({series_count} studies x 1 series of up to "
        f"{args.series_size}), cloned from real CT {ct.template} at 512x512 16-bit, "
        f"uncompressed; {ct.total_bytes / len(ct.files) / 1e6:.3f} MB each, "
        f"{ct.total_bytes / 1e6:,.1f} MB in all"
    )
    console.print(
        f"QIDO index: {len(index.files)} studies of one instance ({index.template} with new "
        f"UIDs), {-(-args.studies // STUDIES_PER_PATIENT)} synthetic patients "
        f"(~{STUDIES_PER_PATIENT} studies each), StudyDate over 5 years, Modality among "
        f"{len(MODALITIES)}; {index.total_bytes / 1e6:,.1f} MB (generation of both corpora: "
        f"{generated:.0f} s, not timed)"
    )
    console.print(f"CPU: {cpu_line()}; {platform.platform()}")
    console.print(
        "[yellow]shared machine[/]: servers, bench client and any other work run on the same "
        "CPUs; ratios are the figures to read"
    )
    console.print("versions: " + ", ".join(f"{k} {v}" for k, v in versions(orthanc_server).items()))
    deployment = "PostgreSQL index" if database_url else "SQLite index"
    console.print(
        f"ours: `depot serve --workers {args.workers}` (uvicorn, {args.workers} processes), "
        f"embedded deployment: {deployment} + filesystem blobs, vault SQLite; STOW-RS on the "
        "ingest route (pseudonymization, profile research-fr), reads with a researcher token"
    )
    console.print(
        "Orthanc: SQLite index + filesystem storage, DICOMweb plugin; settings (Debian's "
        "documented defaults, written out): "
        + ", ".join(
            f"{k}={v}" for k, v in {**ORTHANC_SETTINGS, **ORTHANC_DICOMWEB_SETTINGS}.items()
        )
    )
    console.print(
        f"clients: httpx {importlib.metadata.version('httpx')}, keep-alive; STOW-RS "
        f"{args.clients} threads x {args.batch} instances per request; latency measurements "
        "one request at a time, alternating ours / Orthanc, after a warm-up"
    )
    console.print(f"work folder: {workdir}")

    # Load the QIDO index into both (not timed as a figure; shown for information).
    console.rule("[bold]Loading and measuring")
    loads = []
    warm_cache(index.files)
    for target in targets:
        console.print(f"loading the {len(index.files)}-study index into {target.name} …")
        outcome = stow(target, index, list(range(len(index.files))), args.clients, INDEX_BATCH)
        if outcome.stored != len(index.files):
            console.print(
                f"[yellow]warning[/]: {target.name} stored {outcome.stored} of "
                f"{len(index.files)} index instances ({outcome.failed} failed)"
            )
        loads.append(outcome)

    # 1. STOW-RS: warm-up with the first `clients` batches, then the rest timed.
    warmup_count = min(args.clients * args.batch, len(ct.files) // 10)
    stow_outcomes: list[StowOutcome] = []
    warm_cache(ct.files)
    for target in targets:
        console.print(f"STOW-RS of {len(ct.files)} instances into {target.name} …")
        first = stow(target, ct, list(range(warmup_count)), args.clients, args.batch)
        timed_part = stow(
            target, ct, list(range(warmup_count, len(ct.files))), args.clients, args.batch
        )
        timed_part.series_map = {**first.series_map, **timed_part.series_map}
        if first.stored + timed_part.stored != len(ct.files):
            console.print(
                f"[yellow]warning[/]: {target.name} stored {first.stored + timed_part.stored} "
                f"of {len(ct.files)} instances ({first.failed + timed_part.failed} failed)"
            )
        stow_outcomes.append(timed_part)
    stow_counted = len(ct.files) - warmup_count

    # 2. QIDO-RS.
    console.print(f"QIDO-RS: {args.queries} searches x {len(QUERY_KINDS)} kinds per server …")
    held = [held_studies(t) for t in targets]
    qido_results = {kind: qido(targets, held, kind, args.queries) for kind in QUERY_KINDS}

    # 3. WADO-RS of the first series, 4. metadata of the second (or the same if only one).
    wado_series = ct.series[0]
    meta_series = ct.series[min(args.series_size, len(ct.files) - 1)]
    places = [o.series_map.get(wado_series) for o in stow_outcomes]
    meta_places = [o.series_map.get(meta_series) for o in stow_outcomes]
    if None in places or None in meta_places:
        raise RuntimeError("a server's STOW-RS answer did not name the stored series")
    wado_size = ct.series.count(wado_series)
    meta_size = ct.series.count(meta_series)
    console.print(
        f"WADO-RS: a {wado_size}-instance series, {args.wado_repeats} times per server, "
        f"received by {WADO_CLIENT} …"
    )
    wado_results = wado(targets, places, args.wado_repeats)
    console.print(
        f"metadata: a {meta_size}-instance series, first call then {args.metadata_repeats} …"
    )
    meta_results, meta_first, meta_instances = metadata(targets, meta_places, args.metadata_repeats)

    # --- Report ---
    console.rule("[bold]Results")
    for target, outcome, rows in zip(targets, loads, held, strict=True):
        console.print(
            f"{target.name}: index loaded at {outcome.rate(len(index.files)):.0f} instances/s "
            f"({args.clients} clients x {INDEX_BATCH}; information only); holds {len(rows)} studies"
        )
    lines = [
        Line(
            f"STOW-RS instances/s ({args.clients} clients x {args.batch}/request, "
            f"{stow_counted} timed)",
            "inst/s",
            stow_outcomes[0].rate(stow_counted),
            stow_outcomes[1].rate(stow_counted),
            True,
        )
    ]
    all_ours = [s for kind in QUERY_KINDS for s in qido_results[kind][0].seconds]
    all_orthanc = [s for kind in QUERY_KINDS for s in qido_results[kind][1].seconds]
    lines.append(Line(f"QIDO study search p50 (all {len(QUERY_KINDS)} kinds, {len(all_ours)} "
                      f"each side, {len(held[0])} studies)", "ms",
                      percentile(all_ours, 50), percentile(all_orthanc, 50), False))  # fmt: skip
    lines.append(Line("QIDO study search p95 (all kinds)", "ms",
                      percentile(all_ours, 95), percentile(all_orthanc, 95), False))  # fmt: skip
    wado_rates = [sum(s.body_bytes) / 1e6 / sum(s.seconds) for s in wado_results]
    lines.append(Line(f"WADO-RS series retrieval MB/s ({wado_size} instances, "
                      f"{wado_results[0].body_bytes[0] / 1e6:.0f} MB)", "MB/s",
                      wado_rates[0], wado_rates[1], True))  # fmt: skip
    lines.append(Line(f"series metadata p50 ({meta_size} instances, repeated calls)", "ms",
                      meta_results[0].p(50), meta_results[1].p(50), False))  # fmt: skip
    lines.append(Line("series metadata p95 (repeated calls)", "ms",
                      meta_results[0].p(95), meta_results[1].p(95), False))  # fmt: skip
    lines.append(Line("series metadata, first call", "ms", meta_first[0], meta_first[1], False))
    print_lines(
        "DICOMweb: imaging-depot vs Orthanc",
        lines,
        "same machine, same data, one run; ratio > 1 means ours is better",
    )

    detail: list[Line] = []
    for kind in QUERY_KINDS:
        ours_s, orthanc_s = qido_results[kind]
        for q in (50, 95):
            detail.append(
                Line(f"QIDO {kind} p{q}", "ms", ours_s.p(q), orthanc_s.p(q), False, False)
            )
    print_lines(
        "QIDO-RS by search (limit=100)", detail, "information; targets are on the overall line"
    )
    for kind in QUERY_KINDS:
        ours_s, orthanc_s = qido_results[kind]
        console.print(
            f"  {kind}: mean matches ours {sum(ours_s.matches) / len(ours_s.matches):.1f}, "
            f"Orthanc {sum(orthanc_s.matches) / len(orthanc_s.matches):.1f}"
        )
    for target, samples, count in zip(targets, wado_results, [wado_size] * 2, strict=True):
        console.print(
            f"  WADO-RS {target.name}: {len(samples.seconds)} retrievals of {count} instances "
            f"by {WADO_CLIENT}, "
            f"{sum(samples.body_bytes) / len(samples.body_bytes) / 1e6:.1f} MB body each, "
            f"{sum(samples.seconds) / len(samples.seconds):.2f} s mean"
            + (
                f", Content-Encoding {', '.join(sorted(samples.encodings))}"
                if samples.encodings
                else ""
            )
        )
    for target, samples, count in zip(targets, meta_results, meta_instances, strict=True):
        encoding = ", ".join(sorted(samples.encodings)) or "identity"
        console.print(
            f"  metadata {target.name}: {count} instances in the answer, "
            f"{samples.body_bytes[0] / 1e3:,.0f} kB body (decoded), Content-Encoding {encoding}"
        )
    ok = True
    for target, outcome in zip(targets, stow_outcomes, strict=True):
        if outcome.failed:
            ok = False
            console.print(f"[red]{target.name}: {outcome.failed} STOW-RS instances failed[/]")
    for target, count in zip(targets, meta_instances, strict=True):
        if count != meta_size:
            console.print(f"[yellow]warning[/]: {target.name} metadata holds {count} instances")
    verdict = all(line.ratio >= 1.0 for line in lines)
    console.print(
        "target ours >= Orthanc on every line: "
        + ("[green]PASS[/]" if verdict else "[red]FAIL[/] (see the lines marked FAIL)")
    )
    return ok


if __name__ == "__main__":
    sys.exit(main())
