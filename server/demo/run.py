"""``spiders demo``: a simulated region through the whole registration flow.

Three simulated sites are started on loopback with generated studies, then
``spiders serve`` as a child process with its own data directory, sites file
and ports. The demo feeds the patient index, registers two cases for one board
over FHIR, follows discovery and prefetch over the JSON API with progress bars,
checks that no study of the homonym reached the cache, and prints a summary.
It exits 0 when every case is ready.

Limitations
-----------
The demo directory is rebuilt on each run; it is not meant to be kept.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from ihe.iua import dev_keys
from ihe.iua.roles import Role
from server.config import Settings
from server.demo import scenario
from server.demo.site import SimulatedSite
from server.demo.studies import GeneratedStudy, generate_study

FINAL_STATES = frozenset({"ready", "partial", "failed", "no-studies"})
CONSOLE_AE = "RCP_CONSOLE"
FLOW_TIMEOUT = 300.0


@dataclass
class DemoNetwork:
    """The running simulated region."""

    sites: dict[str, SimulatedSite]
    studies: list[tuple[scenario.DemoStudy, GeneratedStudy]]

    def stop(self) -> None:
        """Stop every site."""
        for item in self.sites.values():
            item.stop()


def free_port(preferred: int | None = None) -> int:
    """`preferred` if it is free on 127.0.0.1, else any free port."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise OSError("no free port on 127.0.0.1")


def build_network(root: Path, console: Console | None = None) -> DemoNetwork:
    """Generate the scenario's studies and start the three sites."""
    today = datetime.now(UTC).date()
    sites = {
        s.name: SimulatedSite(s.name, s.ae_title, root / "sites" / s.name)
        for s in scenario.SITES
    }
    generated = []
    plan = scenario.studies(today)
    with _progress(console) as progress:
        bar = progress.add_task("generating studies", total=len(plan))
        for study in plan:
            made = generate_study(study.spec, root / "generated", seed=study.seed)
            sites[study.site].load(made.files)
            generated.append((study, made))
            progress.advance(bar)
    for item in sites.values():
        item.start(free_port())
    return DemoNetwork(sites, generated)


def write_sites_file(
    path: Path, network: DemoNetwork, cache_ae: str, cache_port: int, console_port: int
) -> None:
    """The sites file naming the simulated sites and a console."""
    for item in network.sites.values():
        item.destinations[cache_ae] = ("127.0.0.1", cache_port)
    data = {
        "sites": [
            {
                "name": s.name,
                "ae_title": s.ae_title,
                "host": "127.0.0.1",
                "port": network.sites[s.name].port,
                "patient_id_domain": s.domain,
                "retrieve": "c-move",
                "timeout": 10,
            }
            for s in scenario.SITES
        ],
        "consoles": [
            {
                "name": "salle-rcp",
                "ae_title": CONSOLE_AE,
                "host": "127.0.0.1",
                "port": console_port,
            }
        ],
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


class Server:
    """``spiders serve`` as a child process."""

    def __init__(
        self,
        env: dict[str, str],
        http_port: int,
        log: Path,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        scheme = "https" if tls is not None else "http"
        self.base = f"{scheme}://127.0.0.1:{http_port}"
        self.tls = tls
        self.env = env
        self.token: str | None = None
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.log = log

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait for ``/healthz``; raise with the log's tail if it dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                self.get("/healthz")
                self.token = self.token or demo_token(self.env)
                return
            except (OSError, urllib.error.URLError):
                time.sleep(0.2)
        tail = self.log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"spiders serve did not start:\n{tail}")

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One JSON request; returns (status, parsed body)."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/fhir+json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(
            self.base + path, data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(req, timeout=30, context=self.tls) as rsp:
                return rsp.status, json.loads(rsp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def get(self, path: str) -> Any:
        """GET `path`, raising on an error status."""
        status, body = self.request("GET", path)
        if status >= 400:
            raise RuntimeError(f"GET {path} answered {status}")
        return body

    def stop(self) -> int:
        """SIGTERM, then wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=45)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)


def demo_token(env: dict[str, str]) -> str | None:
    """A development token with every role, when the server uses the dev key."""
    if env.get("SPIDERS_JWT_KEYS"):
        return None
    return dev_keys.mint(
        Path(env["SPIDERS_DATA_DIR"]), [str(r) for r in Role], subject="spiders-demo"
    )


def environ_without_settings() -> dict[str, str]:
    """This process's environment less every ``SPIDERS_`` setting, for a child
    whose configuration is given explicitly."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SPIDERS_")}


def server_env(
    settings: Settings,
    data_dir: Path,
    sites_file: Path,
    http_port: int,
    dicom_port: int,
    mllp_port: int | None = None,
) -> dict[str, str]:
    """The environment of the demo's ``spiders serve``.

    The MLLP listener gets `mllp_port`, or a free port: the demo sends no HL7
    v2 and must not depend on 2575 being free.
    """
    env = environ_without_settings()
    env.update(
        {
            "SPIDERS_DATA_DIR": str(data_dir),
            "SPIDERS_SITES_FILE": str(sites_file),
            "SPIDERS_HTTP_PORT": str(http_port),
            "SPIDERS_DICOM_PORT": str(dicom_port),
            "SPIDERS_MLLP_PORT": str(mllp_port or free_port()),
            "SPIDERS_AE_TITLE": settings.ae_title,
            "SPIDERS_LOG_FORMAT": settings.log_format,
        }
    )
    return env


def register_cases(server: Server, meeting: datetime) -> dict[str, str]:
    """Feed every person and register the registered ones; person → registration."""
    start = meeting.isoformat(timespec="seconds")
    end = (meeting + timedelta(hours=2)).isoformat(timespec="seconds")
    cases = {}
    for who in scenario.PEOPLE:
        status, patient = server.request(
            "POST", "/fhir/Patient", scenario.patient_resource(who)
        )
        if status not in (200, 201):
            raise RuntimeError(f"Patient feed refused: {status} {patient}")
        if not who.registered:
            continue
        status, appt = server.request(
            "POST",
            "/fhir/Appointment",
            scenario.appointment_resource(patient["id"], start, end, who.key),
        )
        if status not in (200, 201):
            raise RuntimeError(f"Appointment refused: {status} {appt}")
        cases[who.key] = appt["id"]
    return cases


def follow(
    server: Server,
    cases: dict[str, str],
    console: Console | None,
    timeout: float = FLOW_TIMEOUT,
) -> dict[str, Any]:
    """Poll the registrations until every case is final; returns their JSON."""
    deadline = time.monotonic() + timeout
    latest: dict[str, Any] = {}
    with _progress(console) as progress:
        bars = {
            key: progress.add_task(f"{key}: discovering", total=None) for key in cases
        }
        while time.monotonic() < deadline:
            for key, reg_id in cases.items():
                reg = latest[key] = server.get(f"/api/registrations/{reg_id}")
                expected, received = _counts(reg)
                progress.update(
                    bars[key],
                    description=f"{key}: {reg['state']}",
                    total=expected or None,
                    completed=received,
                )
            if all(r["state"] in FINAL_STATES for r in latest.values()):
                break
            time.sleep(0.5)
    return latest


def run_demo(
    settings: Settings, *, keep_running: bool, directory: str | None, console: Console
) -> int:
    """The whole demo; returns the process exit status."""
    root = Path(directory).resolve() if directory else settings.data_dir / "demo"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    console.print(f"[bold]SPIDERS demo[/bold] in {root}")
    network = build_network(root, console)
    http_port = free_port(settings.http_port)
    dicom_port = free_port(settings.dicom_port)
    sites_file = root / "sites.yaml"
    write_sites_file(
        sites_file, network, settings.ae_title, dicom_port, free_port(11113)
    )
    mllp_port = free_port(settings.mllp_port)
    env = server_env(
        settings, root / "spiders", sites_file, http_port, dicom_port, mllp_port
    )
    server = Server(env, http_port, root / "spiders.log")
    previous = _stop_on_sigterm()
    try:
        server.wait_ready()
        console.print(
            f"SPIDERS serving HTTP on {server.base}, DICOM "
            f"{settings.ae_title}@127.0.0.1:{dicom_port}, MLLP 127.0.0.1:{mllp_port}",
            soft_wrap=True,
        )
        meeting = (datetime.now(UTC) + timedelta(hours=3)).replace(microsecond=0)
        cases = register_cases(server, meeting)
        final = follow(server, cases, console)
        homonym_cached = _homonym_in_cache(root / "spiders", network)
        ok = _summary(console, final, homonym_cached)
        console.print(
            f"the cases later: SPIDERS_DATA_DIR={root / 'spiders'} "
            f"{Path(sys.executable).parent / 'spiders'} status",
            soft_wrap=True,
        )
        if keep_running:
            _wait_for_interrupt(console, server, settings.ae_title, dicom_port)
    finally:
        status = server.stop()
        network.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if status != 0:
        console.print(f"[red]spiders serve exited with status {status}[/red]")
    return 0 if ok and status == 0 else 1


def _stop_on_sigterm() -> Any:
    """Make SIGTERM stop the demo as Ctrl-C does, so that the server and the
    sites it started are stopped too; returns the handler it replaces (None
    outside the main thread, where signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def _counts(reg: dict[str, Any]) -> tuple[int, int]:
    expected = received = 0
    for cand in reg["candidates"]:
        if cand["prefetch"]:
            expected += cand["prefetch"]["expectedInstances"] or 0
            received += cand["prefetch"]["receivedInstances"] or 0
    return expected, received


def _homonym_in_cache(data_dir: Path, network: DemoNetwork) -> int:
    homonym_uids = {
        made.study_uid
        for study, made in network.studies
        if not scenario.person(study.person).registered
    }
    cache = data_dir / "cache"
    return sum(1 for uid in homonym_uids if (cache / uid).exists())


def _summary(console: Console, final: dict[str, Any], homonym_cached: int) -> bool:
    table = Table(
        "case",
        "site",
        "studies",
        "instances expected",
        "instances received",
        "status",
        title="Tumour board cases",
    )
    ok = True
    for key, reg in final.items():
        by_site: dict[str, list[dict[str, Any]]] = {}
        for cand in reg["candidates"]:
            if cand["prefetch"]:
                by_site.setdefault(cand["site"], []).append(cand["prefetch"])
        for site_name, prefetches in sorted(by_site.items()):
            states = {p["state"] for p in prefetches}
            table.add_row(
                key,
                site_name,
                str(len(prefetches)),
                str(sum(p["expectedInstances"] or 0 for p in prefetches)),
                str(sum(p["receivedInstances"] for p in prefetches)),
                ", ".join(sorted(states)),
            )
        ok = ok and reg["state"] == "ready"
        if not by_site:
            table.add_row(key, "-", "0", "0", "0", reg["state"])
    Console().print(table)
    console.print(f"studies of the homonym in the cache: {homonym_cached}")
    ok = ok and homonym_cached == 0
    console.print(
        "[green]every case is ready[/green]"
        if ok
        else "[red]not every case is ready[/red]"
    )
    return ok


def _wait_for_interrupt(
    console: Console, server: Server, ae_title: str, port: int
) -> None:
    console.print(
        f"Server left running. Try: findscu -S -aet {CONSOLE_AE} -aec {ae_title} "
        f"127.0.0.1 {port} -k QueryRetrieveLevel=STUDY -k StudyInstanceUID "
        "-k NumberOfStudyRelatedInstances\nPress Ctrl-C to stop.",
        soft_wrap=True,
    )
    try:
        while server.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        console.print("stopping")


def _progress(console: Console | None) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        disable=console is None,
    )
