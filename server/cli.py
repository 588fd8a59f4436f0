"""The ``spiders`` command line.

``spiders serve`` runs the server, ``spiders worker`` a task worker,
``spiders demo`` a whole simulated region, ``spiders retrieve`` one study into
the cache, ``spiders status`` the state of the registrations, and ``spiders
sites check`` whether every configured site answers.
Configuration comes from ``SPIDERS_*`` variables (:mod:`server.config`).
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NoReturn

import click
from rich.console import Console

from ihe.iua.roles import Role
from server import logging_setup
from server.config import load_settings
from server.errors import ConfigurationError

if TYPE_CHECKING:
    from server.runtime import Runtime

console = Console(stderr=True)
# The progress bar of ``spiders retrieve`` is drawn at most this often, so
# that drawing it costs nothing next to the retrieve itself.
REDRAW_SECONDS = 0.2


def _runtime(quiet: bool = False, *, serving: bool = False) -> Runtime:
    """Settings, logging and the runtime; `quiet` keeps one-shot commands'
    output to warnings and their own lines."""
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        _fail(str(exc))
    from server import runtime

    level = "WARNING" if quiet and settings.log_level == "INFO" else settings.log_level
    logging_setup.configure(level, settings.log_format)
    # Only the serving processes write the sites file into the database; a
    # tool run with another file must not change what they show.
    rt = runtime.Runtime(settings, sync_sites=serving)
    runtime.install(rt)
    return rt


def is_uid(value: str) -> bool:
    """True for a syntactically valid DICOM UID (PS3.5 9.1)."""
    from ihe.dicom.ae import is_safe_uid

    return is_safe_uid(value) and len(value) <= 64


def _fail(message: str, status: int = 2) -> NoReturn:
    console.print(f"[red]error:[/red] {message}", soft_wrap=True, highlight=False)
    sys.exit(status)


@click.group()
@click.version_option(package_name="spiders")
def main() -> None:
    """SPIDERS: images from every site, in the tumour board's cache in time."""


@main.command()
@click.option(
    "--no-worker",
    is_flag=True,
    help="Do not start the embedded worker (scaled-out mode).",
)
def serve(no_worker: bool) -> None:
    """Run the HTTP API, the DICOM listener and the embedded worker."""
    from server.serve import serve as run

    try:
        status = run(_runtime(serving=True), with_worker=not no_worker)
    except (ConfigurationError, ValueError) as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot listen on {exc.strerror or exc} (is another server using it?)")
    sys.exit(status)


@main.command()
@click.option(
    "--concurrency",
    type=int,
    default=None,
    help="Tasks run at once by this worker [default: SPIDERS_WORKER_CONCURRENCY].",
)
def worker(concurrency: int | None) -> None:
    """Run a task worker on the configured broker."""
    from celery.platforms import SecurityWarning

    from server import tasks

    rt = _runtime(serving=True)
    app = tasks.configure(rt.settings)
    # Celery warns against root because of pickle; this app accepts JSON only.
    warnings.filterwarnings("ignore", category=SecurityWarning)
    app.worker_main(
        [
            "--quiet",
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            str(concurrency or rt.settings.worker_concurrency),
            "--loglevel",
            rt.settings.log_level,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-Q",
            rt.settings.queue,
        ]
    )


@main.command()
@click.option("--site", "site_name", required=True, help="Site name in the sites file.")
@click.option("--study", "study_uid", required=True, help="Study Instance UID.")
def retrieve(site_name: str, study_uid: str) -> None:
    """Retrieve one study from a site into the cache, as a prefetch would.

    By the site's transport; for C-MOVE the cache's DICOM listener must be
    running (spiders serve): it receives the instances. A study of several
    series is asked for on several associations at once, within the site's
    free slots (SPIDERS_RETRIEVE_PARALLEL).
    """
    from ihe.dicom.admission import retrieve_permit
    from server.workflow.prefetch import retrieve_now

    rt = _runtime(quiet=True)
    if not is_uid(study_uid):
        _fail(f"{study_uid!r} is not a UID (digits and dots, at most 64 characters)")
    try:
        site = rt.settings.directory.site(site_name)
    except ConfigurationError as exc:
        _fail(str(exc))
    before = rt.archive.count_instances(study_uid)
    # The cache keeps only what a retrieve asked for: this one says so.
    permit = retrieve_permit(
        rt.db.sessions, site.name, study_uid, rt.settings.worker_lease_seconds
    )
    with permit, _progress_bar(site.name) as show:
        outcome = retrieve_now(rt.settings, rt.db, rt.archive, site, study_uid, show)
        done = outcome.completed or 0
        show(done, (outcome.failed or 0) if done or outcome.failed else None)
    held = rt.archive.count_instances(study_uid)
    console.print(
        f"{outcome.outcome}: {outcome.reason}; cache holds {held} instance(s) "
        f"of the study ({held - before} new)"
    )
    sys.exit(0 if outcome.outcome == "success" else 1)


@contextmanager
def _progress_bar(name: str) -> Iterator[Callable[[int, int | None], None]]:
    """A bar for (completed, remaining) reports, drawn at most every
    :data:`REDRAW_SECONDS` and once more, with the last report, at the end."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, auto_refresh=False) as progress:
        bar = progress.add_task(name, total=None)
        latest: list[tuple[int, int | None]] = []
        drawn = 0.0

        def draw() -> None:
            done, remaining = latest[-1]
            total = done + remaining if remaining is not None else None
            progress.update(bar, completed=done, total=total)
            progress.refresh()

        def show(done: int, remaining: int | None) -> None:
            nonlocal drawn
            latest[:] = [(done, remaining)]
            now = time.monotonic()
            if now - drawn >= REDRAW_SECONDS:
                drawn = now
                draw()

        yield show
        if latest:
            draw()


@main.command()
@click.option(
    "--role",
    "roles",
    multiple=True,
    required=True,
    type=click.Choice([str(r) for r in Role]),
    help="A role the token carries (repeat for several).",
)
@click.option(
    "--subject",
    default="dev-user",
    show_default=True,
    help="The token's subject (who the caller is).",
)
@click.option("--hours", default=8.0, show_default=True, help="Lifetime in hours.")
def token(roles: tuple[str, ...], subject: str, hours: float) -> None:
    """Print a development access token (embedded default only).

    It is signed with the key of the data directory and accepted by a
    ``spiders serve`` using the same directory. Refused when SPIDERS_JWT_KEYS
    names an identity provider: tokens then come from that provider.
    """
    from ihe.iua import dev_keys

    rt = _runtime(quiet=True)
    if rt.settings.jwt_keys:
        _fail("SPIDERS_JWT_KEYS is set: get tokens from the identity provider")
    if not (rt.settings.data_dir / dev_keys.KEY_FILE).exists():
        # Most often the wrong directory: the server would refuse the token.
        console.print(
            f"note: no development key in {rt.settings.data_dir}; a new one is "
            "made there. Only a spiders serve using this SPIDERS_DATA_DIR accepts "
            "the token.",
            soft_wrap=True,
            highlight=False,
        )
    click.echo(
        dev_keys.mint(
            rt.settings.data_dir, roles, subject=subject, lifetime=int(hours * 3600)
        )
    )


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON, as the API does.")
def status(as_json: bool) -> None:
    """Print every registration and the state of its studies.

    One block per case: its meeting and state, then each study selected for
    retrieve or waiting for an identity review, with the instances received
    and the retrieve's state and reason.
    """
    import json

    from rich.table import Table
    from sqlalchemy import select

    from server.models import Registration
    from server.workflow.deadlines import deadline
    from server.workflow.status import registration_json, registration_state
    from server.workflow.vigilance import needs_review

    rt = _runtime(quiet=True)
    out = Console()
    with rt.db.session() as session:
        registrations = session.scalars(
            select(Registration).order_by(Registration.created_at)
        ).all()
        if as_json:
            body = [
                registration_json(reg, deadline(rt.settings, reg))
                for reg in registrations
            ]
            click.echo(json.dumps(body, indent=2))
            return
        if not registrations:
            click.echo(f"no registrations in {rt.settings.data_dir}")
            return
        for reg in registrations:
            meeting = (
                reg.meeting_start.strftime("%Y-%m-%d %H:%M UTC")
                if reg.meeting_start
                else "no meeting time"
            )
            state = registration_state(reg)
            pending = [c for c in reg.candidates if needs_review(c)]
            if reg.late_reason:
                state += " (was late)" if state == "ready" else " (late)"
            if pending:
                state += f"; {len(pending)} awaiting identity review"
            found = len(reg.candidates)
            sites = len({c.site_name for c in reg.candidates})
            selected = sum(1 for c in reg.candidates if c.selected)
            out.print(
                f"[bold]case {reg.id[:8]}[/bold]  meeting {meeting}  {state}",
                highlight=False,
            )
            summary = (
                f"  {found} stud{'y' if found == 1 else 'ies'} found at {sites} "
                f"site(s), {selected} selected"
            )
            if pending:
                summary += f", {len(pending)} awaiting identity review"
            click.echo(summary)
            for query in reg.site_queries:
                if query.status in ("failed", "busy", "maintenance"):
                    click.echo(
                        f"  site {query.site_name} {query.status}: "
                        f"{query.reason or 'no reason given'}"
                    )
            if reg.rediscover_at is not None:
                again = reg.rediscover_at.strftime("%Y-%m-%d %H:%M UTC")
                click.echo(f"  sites asked again at {again}")
            if reg.late_reason:
                click.echo(f"  late: {reg.late_reason}")
            rows = [c for c in reg.candidates if c.prefetch or needs_review(c)]
            if not rows:
                click.echo()
                continue
            table = Table(box=None, padding=(0, 1), pad_edge=False)
            table.add_column("  site", no_wrap=True)
            table.add_column("study", no_wrap=True)
            table.add_column("images", justify="right", no_wrap=True)
            table.add_column("state", overflow="fold")
            for cand in rows:
                p = cand.prefetch
                if p is None:
                    images, what = "", f"identity review: {cand.warning}"
                else:
                    images = f"{p.received_instances}/{p.expected_instances or '?'}"
                    what = p.state + (f": {p.reason}" if p.reason else "")
                    if p.state == "scheduled":
                        what += f", due {p.due_at:%Y-%m-%d %H:%M} UTC"
                    if needs_review(cand):
                        what = f"identity review: {cand.warning}; retrieve {what}"
                table.add_row(f"  {cand.site_name}", cand.study_uid[-12:], images, what)
            out.print(table, highlight=False)
            click.echo()


@main.command()
@click.option(
    "--keep-running",
    is_flag=True,
    help="Leave the server up after the flow so a console can pull images.",
)
@click.option(
    "--directory",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the demo keeps its sites and cache; emptied first "
    "(default: demo/ under SPIDERS_DATA_DIR).",
)
def demo(keep_running: bool, directory: str | None) -> None:
    """Run a simulated region of three sites through the whole flow."""
    from server.demo.run import run_demo

    settings = load_settings()
    logging_setup.configure("WARNING", settings.log_format)
    sys.exit(
        run_demo(
            settings, keep_running=keep_running, directory=directory, console=console
        )
    )


@main.group()
def sites() -> None:
    """The producing sites of the sites file."""


@sites.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def sites_list(as_json: bool) -> None:
    """The sites as the running server and workers last wrote them.

    `spiders serve` and `spiders worker` write their sites file into the
    database when they start; this command only reads it.
    """
    import json

    from rich.table import Table

    from server import site_directory

    rt = _runtime(quiet=True)
    rows = site_directory.records(rt.db)
    columns = (
        "name",
        "active",
        "ae_title",
        "host",
        "port",
        "patient_id_domain",
        "query",
        "query_model",
        "retrieve",
        "dicomweb_url",
        "max_associations",
        "timeout",
        "maintenance",
        "timezone",
        "bandwidth_mbps",
    )
    if as_json:
        # The DICOMweb auth header is a secret: say only whether there is one.
        data = [
            {c: getattr(r, c) for c in columns}
            | {
                "dicomweb_auth": r.dicomweb_auth_header is not None,
                "tls": bool(r.tls_ca),
            }
            for r in rows
        ]
        click.echo(json.dumps(data, indent=2))
        return
    table = Table(title="Sites in the database", expand=False)
    for column in ("site", "active", "AE", "address", "domain", "query", "retrieve"):
        table.add_column(column, no_wrap=True)
    table.add_column("limits", overflow="fold")
    for r in rows:
        limits = f"{r.max_associations} assoc, {r.timeout:g} s"
        if r.bandwidth_mbps:
            limits += f", {r.bandwidth_mbps:g} Mbit/s"
        if r.maintenance:
            limits += f", maintenance {'; '.join(r.maintenance)} ({r.timezone})"
        table.add_row(
            r.name,
            "yes" if r.active else "no",
            r.ae_title,
            f"{r.host}:{r.port}",
            r.patient_id_domain,
            f"{r.query} ({r.query_model} root)" if r.query == "c-find" else r.query,
            r.retrieve,
            limits,
        )
    Console(width=200).print(table)


@sites.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def sites_check(as_json: bool) -> None:
    """C-ECHO every site (and search its DICOMweb service) at once.

    Exits 0 when every site is reachable, 1 otherwise.
    """
    import json

    from rich.table import Table

    from server.sites_check import TRANSFER_SYNTAXES, check_sites

    rt = _runtime(quiet=True)
    if not rt.settings.directory.sites:
        _fail("no sites are configured (SPIDERS_SITES_FILE)")
    checks = check_sites(rt.settings)
    if as_json:
        click.echo(json.dumps([c.as_json() for c in checks], indent=2))
    else:
        table = Table(title="Sites", expand=False)
        for column in ("site", "reachable", "latency ms", "TLS", "DICOMweb"):
            table.add_column(column, no_wrap=True)
        table.add_column("transfer syntaxes (CT storage)", overflow="fold")
        table.add_column("error", overflow="fold")
        for c in checks:
            web = c.dicomweb
            table.add_row(
                c.site,
                "yes" if c.reachable else "no",
                "" if c.latency_ms is None else str(c.latency_ms),
                "yes" if c.tls else "no",
                "" if web is None else f"HTTP {web.status or '-'}",
                ", ".join(TRANSFER_SYNTAXES[uid] for uid in c.transfer_syntaxes),
                c.error or "",
            )
        Console(width=200).print(table)
    sys.exit(0 if all(c.reachable for c in checks) else 1)


if __name__ == "__main__":
    main()
