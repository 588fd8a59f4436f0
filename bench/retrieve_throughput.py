"""Retrieve throughput: ``spiders retrieve`` against dcmtk's movescu, from Orthanc.

Generates a CT study (about 200 MB by default), loads it into a private Orthanc,
then retrieves it over and over, interleaved: once with dcmtk's ``movescu`` into
dcmtk's ``storescp``, once with ``spiders retrieve`` into a running ``spiders
serve --no-worker`` (one DICOM listener process per core; SQLite in a
temporary data directory, the embedded default). Then four sites (four
Orthancs, one study each) at once, and the same four one after the other.
Every peer runs with ``TCP_NODELAY=1``.

Reported per configuration, as medians and ranges over the runs: MB/s (the
study's file bytes over the wall time of the command), the ratio SPIDERS over
movescu, CPU seconds of each side (sender command from its own rusage, receiver
processes from ``/proc``), and the peak resident memory of every SPIDERS
process (``VmHWM``, reset before each run through ``clear_refs``).

``--large`` retrieves one study of about 2 GB once with each tool instead, to
check that no SPIDERS process holds a whole study in memory.

Usage::

    .venv/bin/python bench/retrieve_throughput.py [--runs 3] [--images 400]
    .venv/bin/python bench/retrieve_throughput.py --large

Limitations: Linux only (``/proc``); the receivers' CPU includes whatever they
did besides receiving in the same time (``spiders serve``'s dispatcher, HTTP).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.demo.studies import (
    DemoPatient,
    GeneratedStudy,
    SeriesSpec,
    StudySpec,
    generate_study,
)
from tests.peers import (
    LOCALHOST,
    OrthancPeer,
    free_port,
    peer_env,
    require,
    run_dcmtk,
    wait_for_port,
)

ROOT = Path(__file__).resolve().parent.parent
AE_SPIDERS = "SPIDERS"
AE_STORESCP = "STORESCP"
SERIES = 4
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PATIENT = DemoPatient(
    patient_id="BENCH-0001",
    issuer="CHU_BENCH",
    issuer_oid="2.999.77.1",
    family="LÉVÊQUE",
    given="Noël",
    birth_date="19580314",
    sex="M",
)


@dataclass
class Sample:
    """One retrieve: wall time, CPU of each side, peak RSS per process."""

    seconds: float
    sender_cpu: float
    receiver_cpu: float
    peak_rss_mb: dict[str, float] = field(default_factory=dict)


@dataclass
class Site:
    """One Orthanc holding one generated study."""

    name: str
    orthanc: OrthancPeer
    study: GeneratedStudy
    size: int


# Processes


def proc_cpu(pid: int) -> float:
    """User and system CPU seconds of a running process and its reaped
    children (storescp ``--fork`` receives in children that exit)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / CLOCK_TICKS


def proc_hwm_mb(pid: int) -> float:
    """Peak resident set size of a running process since its last reset."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def reset_hwm(pids: list[int]) -> None:
    """Start a new peak-RSS window (Linux ``clear_refs`` value 5)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/clear_refs").write_text("5")


def children_of(pid: int) -> list[int]:
    """Direct children of `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(stat[1]) == pid:
                    found.append(int(entry.name))
    return found


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[int, float, float]:
    """Run `cmd`; its exit status, CPU seconds and peak RSS (MB)."""
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        assert proc.stderr is not None
        sys.stderr.write(proc.stderr.read().decode(errors="replace")[-2000:])
    return proc.returncode, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


# Peers


class Receivers:
    """storescp (``--fork``) and ``spiders serve --no-worker``, side by side."""

    def __init__(self, work: Path, sites_file: Path) -> None:
        self.work = work
        self.storescp_port = free_port()
        self.spiders_port = free_port()
        self.storescp_dir = work / "storescp"
        self.storescp_dir.mkdir()
        self.env = {
            **os.environ,
            "SPIDERS_DATA_DIR": str(work / "spiders"),
            "SPIDERS_SITES_FILE": str(sites_file),
            "SPIDERS_DICOM_PORT": str(self.spiders_port),
            "SPIDERS_HTTP_PORT": str(free_port()),
            "SPIDERS_MLLP_PORT": str(free_port()),
            "SPIDERS_AE_TITLE": AE_SPIDERS,
            "SPIDERS_DICOM_ALLOW_UNKNOWN_CALLERS": "true",
            "SPIDERS_LOG_LEVEL": "WARNING",
            "SPIDERS_STORE_PROCESSES": str(len(os.sched_getaffinity(0))),
        }
        self.storescp: subprocess.Popen[bytes] | None = None
        self.spiders: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start both receivers and wait for their ports."""
        log = (self.work / "storescp.log").open("wb")
        self.storescp = subprocess.Popen(
            [
                require("storescp", "dcmtk"),
                "--fork",
                "--aetitle",
                AE_STORESCP,
                "-od",
                str(self.storescp_dir),
                str(self.storescp_port),
            ],
            env=peer_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.storescp_port, self.storescp, self.work / "storescp.log", 30)
        log = (self.work / "spiders.log").open("wb")
        self.spiders = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--no-worker"],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.spiders_port, self.spiders, self.work / "spiders.log", 60)
        time.sleep(2.0)  # the listener processes bind after the parent

    def spiders_pids(self) -> dict[str, int]:
        """Every SPIDERS listener process: the serve process and its children."""
        assert self.spiders is not None
        pids = {"serve": self.spiders.pid}
        for n, pid in enumerate(sorted(children_of(self.spiders.pid)), 1):
            pids[f"listener-{n}"] = pid
        return pids

    def storescp_pids(self) -> list[int]:
        """storescp and its forked children of the moment."""
        assert self.storescp is not None
        return [self.storescp.pid, *children_of(self.storescp.pid)]

    def clear_storescp(self) -> None:
        """Remove what storescp received."""
        shutil.rmtree(self.storescp_dir)
        self.storescp_dir.mkdir()

    def stop(self) -> None:
        """Stop both receivers."""
        for proc in (self.spiders, self.storescp):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


# Retrieves


def movescu(site: Site) -> tuple[int, float, float]:
    """dcmtk's C-MOVE of the site's study to storescp."""
    cmd = [
        require("movescu", "dcmtk"),
        "-S",
        "-aec",
        site.orthanc.aet,
        "-aem",
        AE_STORESCP,
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={site.study.study_uid}",
        LOCALHOST,
        str(site.orthanc.dicom_port),
    ]
    return run_measured(cmd, peer_env())


def spiders_retrieve(receivers: Receivers, site: Site) -> tuple[int, float, float]:
    """``spiders retrieve --site NAME --study UID``."""
    cmd = [sys.executable, "-m", "server.cli", "retrieve", "--site", site.name]
    cmd += ["--study", site.study.study_uid]
    return run_measured(cmd, receivers.env)


def measure(
    sites: list[Site],
    parallel: bool,
    retrieve: Callable[[Site], tuple[int, float, float]],
    receiver_pids: Callable[[], dict[str, int]],
) -> Sample:
    """Retrieve every site's study, at once or one after the other."""
    pids = receiver_pids()
    reset_hwm(list(pids.values()))
    before = {name: proc_cpu(pid) for name, pid in pids.items()}
    start = time.monotonic()
    if parallel:
        with ThreadPoolExecutor(len(sites)) as pool:
            results = list(pool.map(retrieve, sites))
    else:
        results = [retrieve(site) for site in sites]
    seconds = time.monotonic() - start
    after = receiver_pids()
    receiver_cpu = sum(
        proc_cpu(pid) - before.get(name, 0.0)
        for name, pid in after.items()
        if Path(f"/proc/{pid}").exists()
    )
    if any(status != 0 for status, _, _ in results):
        raise SystemExit("a retrieve failed")
    peaks = {name: proc_hwm_mb(pid) for name, pid in after.items()}
    peaks["retrieve command"] = max(rss for _, _, rss in results)
    return Sample(seconds, sum(cpu for _, cpu, _ in results), receiver_cpu, peaks)


# Set-up


def make_sites(work: Path, count: int, images: int) -> list[Site]:
    """`count` Orthancs, each loaded with its own generated study."""
    sites = []
    for n in range(count):
        spec = StudySpec(
            patient=PATIENT,
            study_date="20250105",
            description="TDM TAP",
            series=tuple(
                SeriesSpec("CT", f"Serie {s}", images // SERIES) for s in range(SERIES)
            ),
        )
        generated = work / f"study-{n}"
        study = generate_study(spec, generated, seed=1000 + n)
        orthanc = OrthancPeer(aet=f"SITE{n}")
        orthanc.__enter__()
        load = run_dcmtk(
            "storescu",
            "-aec",
            orthanc.aet,
            LOCALHOST,
            str(orthanc.dicom_port),
            "+sd",
            "+r",
            str(generated),
            timeout=1800,
        )
        if load.returncode != 0:
            raise SystemExit(f"loading Orthanc failed:\n{load.stderr[-2000:]}")
        size = sum(path.stat().st_size for path in study.files)
        shutil.rmtree(generated)
        sites.append(Site(f"site-{n}", orthanc, study, size))
    return sites


def sites_yaml(sites: list[Site]) -> str:
    """The sites file naming every Orthanc."""
    lines = ["sites:"]
    for n, site in enumerate(sites):
        lines += [
            f"  - name: {site.name}",
            f"    ae_title: {site.orthanc.aet}",
            f"    host: {LOCALHOST}",
            f"    port: {site.orthanc.dicom_port}",
            f"    patient_id_domain: 2.999.77.{n + 1}",
            "    retrieve: c-move",
            "    timeout: 600",
        ]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def region(
    work: Path, count: int, images: int
) -> Iterator[tuple[list[Site], Receivers]]:
    """The Orthancs and both receivers, each Orthanc knowing both receivers."""
    sites = make_sites(work, count, images)
    sites_file = work / "sites.yaml"
    sites_file.write_text(sites_yaml(sites))
    receivers = Receivers(work, sites_file)
    try:
        receivers.start()
        for site in sites:
            site.orthanc.add_modality(
                "spiders", AE_SPIDERS, LOCALHOST, receivers.spiders_port
            )
            site.orthanc.add_modality(
                "storescp", AE_STORESCP, LOCALHOST, receivers.storescp_port
            )
        yield sites, receivers
    finally:
        receivers.stop()
        for site in sites:
            site.orthanc.close()


# Report


def compare(
    label: str, sites: list[Site], receivers: Receivers, runs: int, parallel: bool
) -> None:
    """Interleave movescu and spiders retrieve `runs` times; print the rows."""
    size = sum(site.size for site in sites)
    dcmtk: list[Sample] = []
    ours: list[Sample] = []
    for _ in range(runs):
        dcmtk.append(
            measure(
                sites,
                parallel,
                movescu,
                lambda: {str(p): p for p in receivers.storescp_pids()},
            )
        )
        receivers.clear_storescp()
        ours.append(
            measure(
                sites,
                parallel,
                lambda site: spiders_retrieve(receivers, site),
                receivers.spiders_pids,
            )
        )
    rate_d = [size / 1e6 / s.seconds for s in dcmtk]
    rate_s = [size / 1e6 / s.seconds for s in ours]
    ratios = [s / d for s, d in zip(rate_s, rate_d, strict=True)]
    print(f"\n{label}: {size / 1e6:.0f} MB, {runs} run(s), median [min-max]")
    print(f"  movescu -> storescp   MB/s {spread(rate_d)}")
    print(f"  spiders retrieve      MB/s {spread(rate_s)}")
    print(f"  ratio spiders/movescu      {spread(ratios, 2)}")
    print(f"  CPU s movescu              {spread([s.sender_cpu for s in dcmtk], 2)}")
    print(f"  CPU s storescp             {spread([s.receiver_cpu for s in dcmtk], 2)}")
    print(f"  CPU s spiders retrieve     {spread([s.sender_cpu for s in ours], 2)}")
    print(f"  CPU s spiders listeners    {spread([s.receiver_cpu for s in ours], 2)}")
    for name in ours[0].peak_rss_mb:
        peaks = [s.peak_rss_mb.get(name, 0.0) for s in ours]
        print(f"  peak RSS MB {name:<16} {spread(peaks, 0)}")


def spread(values: list[float], digits: int = 1) -> str:
    """Median and range of `values`."""
    median = statistics.median(values)
    return f"{median:.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--images", type=int, default=400, help="per study")
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument(
        "--large", action="store_true", help="one study of about 2 GB, once"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="spiders-bench-") as tmp:
        work = Path(tmp)
        if args.large:
            with region(work, 1, 3800) as (sites, receivers):
                compare("One 2 GB study", sites, receivers, 1, parallel=False)
            return
        with region(work, args.sites, args.images) as (sites, receivers):
            compare("One study", sites[:1], receivers, args.runs, parallel=False)
            count = len(sites)
            compare(f"{count} sites at once", sites, receivers, args.runs, True)
            compare(f"{count} sites one after the other", sites, receivers, 1, False)


if __name__ == "__main__":
    main()
