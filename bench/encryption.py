"""What encryption at rest costs WADO-RS: imaging-depot with DEPOT_ENCRYPTION_AT_REST on and off.

What it measures, on the same machine, the same data and in the same run, for two depot
servers that differ only by that setting, with the ratio of the two:
1. WADO-RS series retrieval: MB/s of multipart body received for a whole series
   (`Accept: multipart/related; type="application/dicom"; transfer-syntax=*`), the median
   retrieval of `--wado-repeats`: the streamed path (`open()`, every chunk decrypted).
2. Frame retrieval latency, p50 and p95, of `.../instances/{i}/frames/1` (native 512x512
   16-bit, multipart octet-stream): the range path (the header read, then the frame's
   chunks). Two passes over the series, as a viewer scrolling: the first read of each
   instance (the server has not met the blob yet), then the same frames again.
For information, without a target: each server's CPU time (user + system, from /proc, the
server and its workers) per series retrieval and per frame request, steadier than wall time
on a shared machine because other processes' work is not in it; and the STOW-RS ingest rate
(ingest seals every instance while copying it into the store, where it was a rename before).

How: a CT corpus is cloned from the real CT of pydicom-data with bench/pseudonymize.py's
helpers (as bench/dicomweb.py does): one series of `--instances` slices of about 0.5 MB.
Two `depot serve --workers W` processes run on loopback, each with its own data dir (SQLite
index, vault and filesystem blobs, or `--s3`: SeaweedFS, one bucket each), one with
DEPOT_ENCRYPTION_AT_REST=true and one with false; the same corpus is posted to both by
STOW-RS (ingest route). Once the servers are idle (the series metadata each rebuilds in the
background after a STOW-RS would otherwise fall in the measurements of the server loaded
last), each measurement alternates one request to each server, after a warm-up, so that the
shared machine's noise falls on both alike. Wall time is
time.perf_counter() around each request, body read included; the client runs on the same CPUs.
Before measuring, the bench checks that the first server's blobs are sealed and the second's
are not.

Ratios are on/off (> 1 for a latency, < 1 for a throughput means encryption costs). Target:
encryption costs at most 15% on every line (throughput on/off >= 0.85, latency on/off <= 1.15).

Nothing identifying is printed (the data is synthetic anyway): counts, sizes, timings, versions.
The exit status is 0 unless a server or a request crashed (then the work folder is kept).

    .venv/bin/python bench/encryption.py [--instances 300] [--wado-repeats 15]
        [--frame-passes 2] [--workers 1] [--s3] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # app and tests; bench/ is already on the path

import dicomweb as peers  # noqa: E402 (bench/dicomweb.py: corpus, setup, HTTP helpers)

from app.config import Settings  # noqa: E402
from app.store.blobs import open_blob_store  # noqa: E402
from app.store.encryption import CHUNK_SIZE, MAGIC  # noqa: E402
from tests.services import die_with_parent, free_ports, log_tail, stop  # noqa: E402

TARGET_COST = 0.15
METADATA_DELAY = Settings.model_fields["metadata_refresh_delay"].default  # s, after a STOW-RS
FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"'
console = peers.console


@dataclass
class Server:
    """One depot server under test and what the bench knows of it."""

    name: str
    encrypted: bool
    process: subprocess.Popen
    target: peers.Target
    env: dict[str, str]
    places: dict[str, tuple[str, str]] = field(default_factory=dict)  # series -> stored place
    frames: list[str] = field(default_factory=list)  # frame URLs, by InstanceNumber


def server_env(data_dir: Path, encrypted: bool, s3: dict[str, str] | None, bucket: str) -> dict:
    env = peers.depot_env(data_dir, None)
    env["DEPOT_ENCRYPTION_AT_REST"] = "true" if encrypted else "false"
    if s3 is not None:
        env.update(s3, DEPOT_BLOB_URL=f"s3://{bucket}")
    return env


def start_server(name: str, encrypted: bool, env: dict, workers: int, log: Path) -> Server:
    """`depot serve` with `env`, ready when /readyz answers 200."""
    data_dir = Path(env["DEPOT_DATA_DIR"])
    tokens = peers.prepare_ours(data_dir, None)
    (port,) = free_ports(1)
    depot = Path(sys.executable).with_name("depot")
    command = [str(depot), "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("ab") as out:
        process = subprocess.Popen(
            [*command, "--workers", str(workers)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )
    url = f"http://127.0.0.1:{port}"
    ours = peers.Ours(process, url, tokens, log)
    target = peers.ours_target(ours)
    server = Server(name, encrypted, process, target, env)
    deadline = time.monotonic() + peers.STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"depot serve exited with {process.returncode}; {log_tail(log)}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return server
        time.sleep(0.1)
    stop(process, 5)
    raise RuntimeError(f"depot serve did not become ready; {log_tail(log)}")


def sealed_share(server: Server) -> tuple[int, int]:
    """(sealed blobs, blobs) of the server's project, read below the encryption."""
    env = server.env
    store = open_blob_store(
        env.get("DEPOT_BLOB_URL") or (Path(env["DEPOT_DATA_DIR"]) / "blobs").resolve().as_uri(),
        s3_endpoint=env.get("DEPOT_S3_ENDPOINT", ""),
        s3_access_key=env.get("DEPOT_S3_ACCESS_KEY", ""),
        s3_secret_key=env.get("DEPOT_S3_SECRET_KEY", ""),
    )
    keys = [key for key, _size, _at in store.list(f"projects/{peers.PROJECT}")]
    sealed = sum(store.read_range(key, 0, len(MAGIC)) == MAGIC for key in keys)
    return sealed, len(keys)


def frame_urls(server: Server, place: tuple[str, str]) -> list[str]:
    """Frame 1 of every instance of the series, ordered by InstanceNumber (which survives
    pseudonymization, so both servers are asked for the same images in the same order)."""
    study, series = place
    base = f"{server.target.base}/studies/{study}/series/{series}"
    with server.target.client() as client:
        response = client.get(
            f"{base}/instances",
            params={"includefield": "00200013", "limit": "100000"},
            headers={"Accept": peers.DICOM_JSON},
        )
    items = peers.checked(response, f"{server.name} QIDO").json()
    numbered = sorted(
        (int((peers.values(i, "00200013") or [0])[0]), peers.values(i, "00080018")[0])
        for i in items
    )
    return [f"{base}/instances/{sop}/frames/1" for _n, sop in numbered]


def frames(servers: list[Server], passes: int) -> tuple[list[peers.Samples], list[peers.Samples]]:
    """(first reads, repeated reads): pass 1 meets each blob for the first time."""
    count = min(len(s.frames) for s in servers)
    first = [peers.Samples() for _ in servers]
    again = [peers.Samples() for _ in servers]
    clients = [s.target.client() for s in servers]
    try:
        for run in range(passes):
            for i in range(count):
                for s, (server, client) in enumerate(zip(servers, clients, strict=True)):
                    seconds, received, response = peers.timed(
                        client, "GET", server.frames[i], headers={"Accept": FRAME_ACCEPT}
                    )
                    peers.checked(response, f"{server.name} frame")
                    sample = first[s] if run == 0 else again[s]
                    sample.seconds.append(seconds)
                    sample.body_bytes.append(received)
    finally:
        for client in clients:
            client.close()
    return first, again


@dataclass(frozen=True)
class Line:
    name: str
    unit: str
    off: float
    on: float
    higher_is_better: bool

    @property
    def ratio(self) -> float:
        return self.on / self.off if self.off else float("nan")

    @property
    def cost(self) -> float:
        """What encryption takes: throughput lost, or latency added, as a fraction."""
        return 1 - self.ratio if self.higher_is_better else self.ratio - 1


def print_lines(lines: list[Line], info: list[Line]) -> bool:
    table = Table(
        title="Encryption at rest: WADO-RS with DEPOT_ENCRYPTION_AT_REST on and off",
        caption=f"same machine, same data, one run; target: cost <= {TARGET_COST:.0%}",
    )
    columns = ("line", "off", "on", "ratio on/off", "cost", "target")
    for name in columns:
        table.add_column(name, justify="left" if name in ("line", "target") else "right")
    passed = True
    for line in [*lines, *info]:
        ok = line.cost <= TARGET_COST
        counted = line in lines
        passed &= ok or not counted
        verdict = "[green]PASS[/]" if ok else "[red]FAIL[/]"
        table.add_row(
            line.name, peers.fmt(line.off, line.unit), peers.fmt(line.on, line.unit),
            f"{line.ratio:.3f}", f"{line.cost:+.1%}", verdict if counted else "(information)",
        )  # fmt: skip
    console.print(table)
    return passed


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its descendants (uvicorn's workers), from /proc:
    steadier than wall time on a shared machine, since other processes' work is not in it."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    family, grew = {pid}, True
    while grew:
        more = {child for child, parent in parents.items() if parent in family} - family
        family |= more
        grew = bool(more)
    return sum(times.get(member, 0.0) for member in family)


def settle(servers: list[Server], quiet: float = 0.5, limit: float = 60.0) -> float:
    """Wait for the work a STOW-RS leaves behind to be done; the seconds waited.

    Why: each server rebuilds the series metadata METADATA_DELAY seconds after the last
    STOW-RS request, in the background. Measured at once, that rebuild falls inside the
    measurements of the server loaded last (always the one with encryption), counted as its
    CPU time and slowing its retrievals. Done when no server used more than 10 ms of CPU
    during `quiet` seconds, after the delay; at most `limit` seconds.
    """
    start = time.monotonic()
    time.sleep(METADATA_DELAY + quiet)
    while time.monotonic() - start < limit:
        before = [cpu_seconds(s.process.pid) for s in servers]
        time.sleep(quiet)
        used = [cpu_seconds(s.process.pid) - b for s, b in zip(servers, before, strict=True)]
        if max(used) <= 0.010:
            break
    return time.monotonic() - start


def crypto_rate() -> float:
    """AES-256-GCM decryption MB/s of 64 KiB chunks in this process (information)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(os.urandom(32))
    sealed = aead.encrypt(bytes(12), os.urandom(CHUNK_SIZE), b"aad")
    count = 2000
    start = time.perf_counter()
    for _ in range(count):
        aead.decrypt(bytes(12), sealed, b"aad")
    return count * CHUNK_SIZE / (time.perf_counter() - start) / 1e6


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--instances", type=int, default=300, help="CT instances in the series (300)")
    add("--wado-repeats", type=int, default=15, help="timed series retrievals per server (15)")
    add("--frame-passes", type=int, default=2, help="passes of frame reads over the series (2)")
    add("--workers", type=int, default=1, help="depot serve --workers, each server (1)")
    add("--clients", type=int, default=2, help="concurrent STOW-RS clients when loading (2)")
    add("--s3", action="store_true", help="blobs on S3 (SeaweedFS on loopback), not files")
    add("--workdir", type=Path, help="work folder (default: a new one in /tmp)")
    add("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    if min(args.instances, args.wado_repeats, args.frame_passes, args.workers, args.clients) < 1:
        parser.error("counts must be positive")
    return args


@dataclass
class Run:
    servers: list[Server] = field(default_factory=list)
    weed: object | None = None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir, created = peers.prepare_workdir(args.workdir, "encryption")
    (workdir / "logs").mkdir()
    run = Run()
    crashed = True
    try:
        crashed = not bench(args, workdir, run)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 (also pytest.fail from the SeaweedFS harness)
        console.print(f"[red]crashed[/]: {type(exc).__name__}: {exc}")
    finally:
        for server in run.servers:
            stop(server.process, 10)
        if run.weed is not None:
            run.weed.stop()  # type: ignore[attr-defined]
        if args.keep or crashed:
            console.print(f"work folder kept: {workdir}")
        else:
            peers.cleanup(workdir, created, "encryption")
    return 1 if crashed else 0


def bench(args: argparse.Namespace, workdir: Path, run: Run) -> bool:
    console.print("generating the corpus (not timed) …")
    corpus = peers.stow_corpus(workdir / "input", args.instances, args.instances)
    s3: dict[str, str] | None = None
    if args.s3:
        from tests.blobstores import SeaweedS3, find_weed

        run.weed = weed = SeaweedS3(find_weed())
        server = weed.start()
        s3 = {
            "DEPOT_S3_ENDPOINT": server.endpoint,
            "DEPOT_S3_ACCESS_KEY": server.access_key,
            "DEPOT_S3_SECRET_KEY": server.secret_key,
        }
    for name, encrypted in (("off", False), ("on", True)):
        env = server_env(workdir / f"depot-{name}", encrypted, s3, f"depot-bench-{name}")
        log = workdir / "logs" / f"depot-{name}.log"
        run.servers.append(start_server(name, encrypted, env, args.workers, log))

    console.rule("[bold]Encryption at rest benchmark: setup")
    console.print(
        f"corpus: one series of {len(corpus.files)} CT instances cloned from real CT "
        f"{corpus.template} at 512x512 16-bit, uncompressed; "
        f"{corpus.total_bytes / len(corpus.files) / 1e6:.3f} MB each, "
        f"{corpus.total_bytes / 1e6:,.1f} MB in all"
    )
    console.print(f"CPU: {peers.cpu_line()}; {platform.platform()}")
    console.print(
        "[yellow]shared machine[/]: both servers, the bench client and any other work run on "
        "the same CPUs; ratios are the figures to read"
    )
    console.print("versions: " + ", ".join(f"{k} {v}" for k, v in peers.versions(None).items()))
    blobs = "S3 (SeaweedFS on loopback, one bucket each)" if s3 else "filesystem blobs"
    console.print(
        f"servers: two `depot serve --workers {args.workers}`, SQLite index and vault + {blobs}, "
        "identical but for DEPOT_ENCRYPTION_AT_REST (true / false); AES-256-GCM chunks of "
        f"{CHUNK_SIZE // 1024} KiB; in-process AES-GCM decryption here: {crypto_rate():,.0f} MB/s"
    )
    console.print(f"work folder: {workdir}")

    console.rule("[bold]Loading and measuring")
    stows = []
    peers.warm_cache(corpus.files)
    for server in run.servers:
        console.print(f"STOW-RS of {len(corpus.files)} instances into server {server.name} …")
        outcome = peers.stow(
            server.target, corpus, list(range(len(corpus.files))), args.clients, 10
        )
        if outcome.stored != len(corpus.files):
            raise RuntimeError(f"{server.name} stored {outcome.stored} of {len(corpus.files)}")
        server.places = outcome.series_map
        stows.append(outcome)
    for server in run.servers:
        sealed, count = sealed_share(server)
        console.print(f"server {server.name}: {sealed} of {count} blobs sealed")
        if sealed != (count if server.encrypted else 0):
            raise RuntimeError(f"server {server.name} does not store what its setting says")

    console.print(f"waiting for the servers' background work: {settle(run.servers):.1f} s")
    place = [s.places[corpus.series[0]] for s in run.servers]
    for server, where in zip(run.servers, place, strict=True):
        server.frames = frame_urls(server, where)
    targets = [s.target for s in run.servers]
    console.print(f"WADO-RS: the {len(corpus.files)}-instance series, {args.wado_repeats} x each …")
    cpu = [cpu_seconds(s.process.pid) for s in run.servers]
    wado = peers.wado(targets, place, args.wado_repeats)
    wado_cpu = [cpu_seconds(s.process.pid) - c for s, c in zip(run.servers, cpu, strict=True)]
    console.print(f"frames: frame 1 of each instance, {args.frame_passes} passes, alternating …")
    cpu = [cpu_seconds(s.process.pid) for s in run.servers]
    first, again = frames(run.servers, args.frame_passes)
    frame_cpu = [cpu_seconds(s.process.pid) - c for s, c in zip(run.servers, cpu, strict=True)]

    console.rule("[bold]Results")
    # The median retrieval's rate: a burst from another process on the shared machine moves
    # a mean, not a median (requests alternate between the servers, so bursts hit both).
    rates = [
        peers.percentile([n / 1e6 / t for n, t in zip(s.body_bytes, s.seconds, strict=True)], 50)
        for s in wado
    ]
    size = wado[0].body_bytes[0] / 1e6
    lines = [
        Line(f"WADO-RS series retrieval MB/s, median ({len(corpus.files)} instances, "
             f"{size:.0f} MB, {len(wado[0].seconds)} each)",
             "MB/s", rates[0], rates[1], True),
        Line(f"frame retrieval p50, first read of each instance ({len(first[0].seconds)})",
             "ms", first[0].p(50), first[1].p(50), False),
        Line("frame retrieval p95, first read of each instance", "ms",
             first[0].p(95), first[1].p(95), False),
    ]  # fmt: skip
    if again[0].seconds:
        lines += [
            Line(f"frame retrieval p50, repeated ({len(again[0].seconds)})", "ms",
                 again[0].p(50), again[1].p(50), False),
            Line("frame retrieval p95, repeated", "ms", again[0].p(95), again[1].p(95), False),
        ]  # fmt: skip
    retrievals = len(wado[0].seconds) + 1  # the warm-up's too
    requests = len(first[0].seconds) + len(again[0].seconds)
    info = [
        Line("server CPU per series retrieval (user + system)", "ms",
             wado_cpu[0] / retrievals, wado_cpu[1] / retrievals, False),
        Line("server CPU per frame request (user + system)", "ms",
             frame_cpu[0] / requests, frame_cpu[1] / requests, False),
        Line(f"STOW-RS ingest instances/s ({args.clients} clients x 10/request)", "inst/s",
             stows[0].rate(len(corpus.files)), stows[1].rate(len(corpus.files)), True),
    ]  # fmt: skip
    passed = print_lines(lines, info)
    console.print(
        f"target (encryption costs at most {TARGET_COST:.0%} on every measured line): "
        + ("[green]PASS[/]" if passed else "[red]FAIL[/]")
    )
    return True


if __name__ == "__main__":
    sys.exit(main())
