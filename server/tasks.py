"""The task queue: Celery tasks and the dispatcher that feeds them.

Work is recorded in the database first and handed to the queue second: a
registration waits in discovery state ``pending`` and a prefetch in state
``scheduled`` until :func:`dispatch_due` claims it (an UPDATE guarded by the
expected state, so two dispatchers never send the same work twice) and sends
its task. A lost message therefore never loses work: the row stays visible and
the coordinator sees where it stopped.

The broker is the one of ``SPIDERS_BROKER_URL``: on one machine kombu's
SQLAlchemy transport on a SQLite file in the data directory; scaled out, Redis
or RabbitMQ.

Each pass of the dispatcher also hands to the queue again the prefetches
whose worker stopped renewing its lease (a worker killed mid-retrieve, on any
host), flags the registrations whose prefetch deadline passed with studies
missing (:mod:`server.workflow.deadlines`), and, with ``SPIDERS_NOTIFY_URL``
set, posts pending events to it in a background thread.

Limitations
-----------
A discovery claimed by a worker that dies is sent again only when
``spiders serve`` with its embedded worker starts (it holds no lease); a
prefetch is resumed by any live worker once its lease expires.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from sqlalchemy import select, update

from mappings.fhir_appointment import ACTIVE_STATUS
from server import runtime
from server.config import Settings
from server.models import Prefetch, PrefetchState, Registration, utcnow
from server.workflow import deadlines, discovery, events, prefetch, selection

logger = logging.getLogger(__name__)

LOG_DISPATCHED = "work dispatched"

app = Celery("spiders", set_as_current=False)


def configure(settings: Settings) -> Celery:
    """Point the Celery app at the configured broker."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # A second configuration (tests, a changed URL) must not reuse the pools
    # connected to the previous broker.
    if app.configured and app.conf.broker_url != settings.broker_url:
        if app._pool is not None:
            app._pool.force_close_all()
        app._pool = None
        app.amqp._producer_pool = None
    options: dict[str, Any] = {}
    if not settings.broker_url.startswith("sqla+"):
        # kombu's SQLAlchemy transport hands its options to create_engine().
        options["polling_interval"] = 0.5
    app.conf.update(
        broker_transport_options=options,
        broker_url=settings.broker_url,
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.queue,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        # Work waits in the database, not in the client: fail fast when the
        # broker is down and let the next dispatch send it again.
        broker_connection_timeout=3,
        task_publish_retry_policy={
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.5,
        },
    )
    return app


# Celery ships no type information: its decorator turns the function into Any.
@app.task(name="spiders.discover")  # type: ignore[untyped-decorator]
def discover_task(registration_id: str) -> str:
    """Query every site for a registration, select, and schedule prefetches."""
    rt = runtime.current()
    with rt.db.session() as session:
        claimed = session.execute(
            update(Registration)
            .where(
                Registration.id == registration_id, Registration.discovery == "queued"
            )
            .values(discovery="running")
        )
        if not getattr(claimed, "rowcount", 0):
            return "skipped"
    try:
        with rt.db.session() as session:
            registration = session.get(Registration, registration_id)
            if registration is None:
                return "missing"
            discovery.discover(rt.settings, session, registration, db=rt.db)
            if registration.status in ACTIVE_STATUS:
                selection.auto_select(rt.settings, registration)
                selection.schedule(rt.settings, registration)
    except Exception:
        logger.exception("discovery failed", extra={"registration": registration_id})
        with rt.db.session() as session:
            session.execute(
                update(Registration)
                .where(Registration.id == registration_id)
                .values(discovery="failed")
            )
        return "failed"
    dispatch_due()
    return "done"


# Celery ships no type information, as for discover_task above.
@app.task(name="spiders.prefetch")  # type: ignore[untyped-decorator]
def prefetch_task(prefetch_id: str) -> str:
    """Retrieve one study into the cache."""
    rt = runtime.current()
    if not prefetch.claim(rt.db, prefetch_id, rt.settings.worker_lease_seconds):
        return "skipped"
    state = prefetch.run(rt.settings, rt.db, rt.archive, prefetch_id)
    if state == PrefetchState.SCHEDULED:
        dispatch_due()
    return state


def recover_interrupted() -> dict[str, int]:
    """Send again the work a stopped worker left ``running`` (or ``queued``
    for discovery); for one process tree whose worker is the only one."""
    rt = runtime.current()
    with rt.db.session() as session:
        prefetches = session.execute(
            update(Prefetch)
            .where(Prefetch.state == PrefetchState.RUNNING)
            .values(
                state=PrefetchState.SCHEDULED,
                due_at=utcnow(),
                reason="resumed after a restart",
            )
        )
        discoveries = session.execute(
            update(Registration)
            .where(Registration.discovery == "running")
            .values(discovery="pending")
        )
    found = {
        "prefetches": int(getattr(prefetches, "rowcount", 0)),
        "discoveries": int(getattr(discoveries, "rowcount", 0)),
    }
    if any(found.values()):
        logger.warning("interrupted work sent again", extra=found)
    return found


def retry(registration_id: str) -> dict[str, int]:
    """Query the sites again and retry the registration's failed retrieves."""
    rt = runtime.current()
    with rt.db.session() as session:
        discovery = session.execute(
            update(Registration)
            .where(
                Registration.id == registration_id,
                Registration.discovery.in_(["done", "failed"]),
            )
            .values(discovery="pending")
        )
        prefetches = session.execute(
            update(Prefetch)
            .where(
                Prefetch.registration_id == registration_id,
                Prefetch.state.in_([PrefetchState.FAILED, PrefetchState.PARTIAL]),
            )
            .values(
                state=PrefetchState.SCHEDULED,
                due_at=utcnow(),
                attempts=0,
                reason="retry requested",
            )
        )
    dispatch_due()
    return {
        "discoveries": int(getattr(discovery, "rowcount", 0)),
        "prefetches": int(getattr(prefetches, "rowcount", 0)),
    }


def dispatch_due() -> dict[str, int]:
    """Send the tasks of pending discoveries, due and abandoned prefetches;
    flag the registrations late at their deadline; post pending events."""
    rt = runtime.current()
    sent = {"discoveries": 0, "prefetches": 0}
    for prefetch_id in prefetch.requeue_abandoned(rt.db):
        _send(prefetch_task, prefetch_id)
        sent["prefetches"] += 1
    deadlines.check_due(rt.settings, rt.db)
    events.deliver_in_background(rt.db, rt.settings.notify_url)
    with rt.db.session() as session:
        # Sites skipped for maintenance or because they were busy: ask again.
        session.execute(
            update(Registration)
            .where(
                Registration.rediscover_at <= utcnow(),
                Registration.discovery.in_(["done", "failed"]),
                Registration.status.in_(sorted(ACTIVE_STATUS)),
            )
            .values(discovery="pending", rediscover_at=None)
        )
        pending = session.scalars(
            select(Registration.id).where(Registration.discovery == "pending")
        ).all()
        due = session.scalars(
            select(Prefetch.id).where(
                Prefetch.state == PrefetchState.SCHEDULED, Prefetch.due_at <= utcnow()
            )
        ).all()
    for registration_id in pending:
        if _claim(Registration, registration_id, "discovery", "pending", "queued"):
            _send(discover_task, registration_id)
            sent["discoveries"] += 1
    for prefetch_id in due:
        if _claim(
            Prefetch,
            prefetch_id,
            "state",
            PrefetchState.SCHEDULED,
            PrefetchState.QUEUED,
        ):
            _send(prefetch_task, prefetch_id)
            sent["prefetches"] += 1
    if any(sent.values()):
        logger.info(LOG_DISPATCHED, extra=sent)
    return sent


def _claim(model: Any, row_id: str, column: str, old: str, new: str) -> bool:
    rt = runtime.current()
    with rt.db.session() as session:
        result = session.execute(
            update(model)
            .where(model.id == row_id, getattr(model, column) == old)
            .values({column: new})
        )
        return bool(getattr(result, "rowcount", 0))


def _send(task: Any, row_id: str) -> None:
    try:
        task.apply_async((row_id,), queue=runtime.current().settings.queue)
    except Exception as exc:
        # The broker is down: put the work back so the next dispatch retries it.
        logger.error(
            "broker unavailable, work kept for the next dispatch",
            extra={"error": type(exc).__name__},
        )
        _unclaim(row_id)


def _unclaim(row_id: str) -> None:
    rt = runtime.current()
    with rt.db.session() as session:
        session.execute(
            update(Registration)
            .where(Registration.id == row_id, Registration.discovery == "queued")
            .values(discovery="pending")
        )
        session.execute(
            update(Prefetch)
            .where(Prefetch.id == row_id, Prefetch.state == PrefetchState.QUEUED)
            .values(state=PrefetchState.SCHEDULED)
        )
