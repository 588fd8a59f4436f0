"""``spiders serve``: the HTTP API, the cache's DICOM listener and a worker.

One process tree: this process runs the HTTP server (cheroot, TLS when
configured), the DICOM listener (pynetdicom, in threads), the HL7 v2 listener
(MLLP, in threads) and the dispatcher that hands due work to
the queue; a child process runs the Celery worker on the configured broker.
With ``SPIDERS_STORE_PROCESSES`` above one, further child processes run the
same DICOM listener on the same port (``SO_REUSEPORT``): the kernel hands
each association to one of them, so sites sending at once use every core.
SIGINT or SIGTERM stops the listener, the worker and the HTTP server, in
that order, and writes the Application Stop audit record. A thread sends the
audit outbox to the configured audit repositories (ITI-20) and, at the stop,
sends it once more.

The listener keeps only what a retrieve asked for
(:mod:`ihe.dicom.admission`) and gives each caller its role
(:mod:`ihe.dicom.acceptance`): sites store and verify, consoles query,
retrieve and verify.

Limitations
-----------
The worker child and the listener children are not restarted if they die;
``spiders serve`` then exits with an error so that the service manager
restarts the whole tree. One association is received by one process: a
study sent on one association (one series, or no second site slot free for
the retrieve) uses one core. Two servers started on
the same port within the same instant could both bind it; the check that
the port is free happens just before binding.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter
from pynetdicom import StoragePresentationContexts
from pynetdicom.transport import ThreadedAssociationServer

from ihe.atna.codes import EventTypeCode
from ihe.atna.delivery import OutboxSender
from ihe.dicom.acceptance import CallerPolicy, KnownPeer, Role
from ihe.dicom.admission import StoreAdmission
from ihe.dicom.ae import (
    TLS_FAILURE_CALLBACK,
    add_storage_scp_contexts,
    make_ae,
    port_is_free,
    start_shared_port_server,
)
from ihe.dicom.qr_scp import FindSummary, QueryRetrieveSCP
from ihe.dicom.sop_classes import QUERY_RETRIEVE_MODELS, Verification
from ihe.dicom.storage_scp import (
    AssociationSummary,
    StorageSCP,
    receive_into_files,
)
from ihe.hl7v2.listener import MllpListener
from ihe.hl7v2.receiver import make_listener
from ihe.tls import server_context
from server import audit, logging_setup, runtime, tasks
from server.config import load_settings
from server.db import Database
from server.http.app import create_app
from server.runtime import Runtime

logger = logging.getLogger(__name__)

T = TypeVar("T")

DISPATCH_INTERVAL = 2.0
LISTENER_STOP_TIMEOUT = 10.0
MAX_ASSOCIATIONS = 64


@dataclass
class Services:
    """Everything ``spiders serve`` started, to stop it in order."""

    dicom: ThreadedAssociationServer
    http: Any
    worker: subprocess.Popen[bytes] | None
    stop: threading.Event = field(default_factory=threading.Event)
    audit_sender: OutboxSender | None = None
    mllp: MllpListener | None = None
    listeners: list[subprocess.Popen[bytes]] = field(default_factory=list)


def start_dicom(rt: Runtime, *, shared_port: bool = False) -> ThreadedAssociationServer:
    """Start the cache's listener: Storage SCP and Q/R SCP for the consoles.

    With `shared_port`, the port is bound with ``SO_REUSEPORT`` so that the
    listener processes of :func:`start_listener_processes` share it.
    """
    settings = rt.settings
    # This process receives C-STOREs only here: datasets go straight to files.
    receive_into_files()
    ae = make_ae(settings.ae_title)
    add_storage_scp_contexts(ae)
    ae.add_supported_context(Verification)
    # Callers must address this cache by its AE title; and enough associations
    # that a few idle connections cannot keep the sites' C-STOREs out.
    ae.require_called_aet = True
    ae.maximum_associations = MAX_ASSOCIATIONS
    for model in QUERY_RETRIEVE_MODELS:
        ae.add_supported_context(model)
    # C-GET and C-MOVE send back on storage contexts; C-GET needs SCP role.
    for cx in StoragePresentationContexts:
        # pynetdicom's own context lists always name their abstract syntax.
        assert cx.abstract_syntax is not None
        ae.add_requested_context(cx.abstract_syntax)
    policy = caller_policy(rt)
    # Only what a retrieve asked the calling site for is kept.
    storage = StorageSCP(
        rt.archive,
        on_association_done=_audit_delivery(rt),
        on_refused=_audit_refused_request(rt),
        admission=StoreAdmission(rt.db.sessions, policy.site_names),
    )
    qr = QueryRetrieveSCP(
        rt.archive,
        settings.ae_title,
        _destination(rt),
        on_sent=audit.retrieve_sent(settings, rt.db),
        on_find=_audit_find(rt),
        on_refused=_audit_refused_request(rt),
    )
    tls = None
    if settings.dicom_tls_cert and settings.dicom_tls_key:
        tls = server_context(
            settings.dicom_tls_cert,
            settings.dicom_tls_key,
            settings.dicom_tls_client_ca,
        )
    address = (settings.dicom_host, settings.dicom_port)
    handlers = [*policy.handlers, *storage.handlers, *qr.handlers]
    if shared_port:
        server = start_shared_port_server(
            ae, address, ssl_context=tls, evt_handlers=handlers
        )
    else:
        started = ae.start_server(
            address, block=False, ssl_context=tls, evt_handlers=handlers
        )
        assert started is not None
        server = started
    setattr(server, TLS_FAILURE_CALLBACK, audit_tls_failure(rt, "dicom"))
    logger.info(
        "DICOM listener started",
        extra={
            "ae_title": settings.ae_title,
            "port": settings.dicom_port,
            "tls": tls is not None,
            "known_callers": len(policy.allowed),
            "pid": os.getpid(),
        },
    )
    return server


def start_listener_processes(rt: Runtime, count: int) -> list[subprocess.Popen[bytes]]:
    """Start `count` more processes running the DICOM listener on its port.

    Each builds its own runtime from the same environment and binds the
    port with ``SO_REUSEPORT``; :func:`start_dicom` must have bound it the
    same way in this process first.
    """
    cmd = [sys.executable, "-m", "server.serve", "--dicom-listener"]
    children = []
    for _ in range(count):
        child = subprocess.Popen(cmd, env=os.environ.copy())
        logger.info("DICOM listener process started", extra={"pid": child.pid})
        children.append(child)
    return children


def listener_main() -> int:
    """Entry point of a listener process: run until told to stop."""
    settings = load_settings()
    logging_setup.configure(settings.log_level, settings.log_format)
    rt = Runtime(settings)
    # The parent created the schema and synchronised the sites already; a
    # second synchronisation racing the other listeners is avoided.
    vars(rt)["db"] = Database(settings.database_url)
    runtime.install(rt)
    server = start_dicom(rt, shared_port=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    parent = os.getppid()
    # Leave with the parent, even when it could not say so.
    while not stop.wait(1.0) and os.getppid() == parent:
        pass
    server.shutdown()
    rt.db.dispose()
    return 0


def caller_policy(rt: Runtime) -> CallerPolicy:
    """The sites and consoles of the sites file, each from its own host and
    in its role: sites store, consoles query and retrieve."""
    directory = rt.settings.directory
    peers = [KnownPeer(s.name, s.ae_title, s.host, Role.SITE) for s in directory.sites]
    peers += [
        KnownPeer(c.name, c.ae_title, c.host, Role.CONSOLE) for c in directory.consoles
    ]
    return CallerPolicy(
        peers,
        allow_unknown=rt.settings.dicom_allow_unknown_callers,
        on_refused=audit.refused_association(rt.settings, rt.db),
        on_restricted=_audit_refused_request(rt),
    )


def start_mllp(rt: Runtime) -> MllpListener:
    """Start the HL7 v2 listener: scheduling, orders and patient feeds over MLLP."""
    listener = make_listener(
        rt.settings,
        rt.db,
        on_committed=tasks.dispatch_due,
        on_tls_failure=audit_tls_failure(rt, "mllp"),
    )
    listener.start()
    return listener


def audit_tls_failure(rt: Runtime, link: str) -> Callable[[str, str], None]:
    """A callback recording a failed TLS handshake on `link` (110113)."""

    def write(peer: str, reason: str) -> None:
        with rt.db.session() as session:
            audit.security_alert(
                session,
                rt.settings,
                alert_type=EventTypeCode.NODE_AUTHENTICATION,
                subject=f"{link}://{peer}",
                description=f"TLS handshake failed: {reason}",
            )

    return write


class AuditedSSLAdapter(BuiltinSSLAdapter):
    """cheroot's TLS adapter, reporting failed handshakes."""

    on_failure: Callable[[str, str], None] | None = None

    def wrap(self, sock: socket.socket) -> Any:
        try:
            peer = "{}:{}".format(*sock.getpeername()[:2])
        except OSError:
            peer = "unknown"
        try:
            # cheroot ships no type hints.
            return super().wrap(sock)  # type: ignore[no-untyped-call]
        except Exception as exc:
            if self.on_failure is not None:
                try:
                    self.on_failure(peer, type(exc).__name__)
                except Exception:
                    logger.exception("reporting a failed TLS handshake failed")
            raise


def start_worker(rt: Runtime) -> subprocess.Popen[bytes]:
    """Start the embedded Celery worker as a child process."""
    cmd = [
        sys.executable,
        "-m",
        "server.cli",
        "worker",
        "--concurrency",
        str(rt.settings.worker_concurrency),
    ]
    child = subprocess.Popen(cmd, env=os.environ.copy())
    logger.info("worker started", extra={"pid": child.pid})
    return child


def serve(
    rt: Runtime, *, with_worker: bool = True, ready: threading.Event | None = None
) -> int:
    """Run until SIGINT or SIGTERM; returns the exit status."""
    settings = rt.settings
    tasks.configure(settings)
    _ = rt.token_verifier  # read the keys now: a bad key file stops the start
    audit_sender = audit.sender(settings, rt.db)  # so does a bad audit TLS file
    if not settings.directory.sites:
        logger.warning(
            "no sites configured: registrations will find no studies "
            "(set SPIDERS_SITES_FILE)"
        )
    with rt.db.session() as session:
        audit.application(session, settings, started=True)
    dicom, listeners = _on_port("DICOM", settings.dicom_port, _start_listeners, rt)
    mllp = _on_port("MLLP", settings.mllp_port, start_mllp, rt)
    http = _on_port("HTTP", settings.http_port, start_http, rt)
    if with_worker:
        # The embedded worker is the only one: what it was running when the
        # previous process stopped will never finish unless sent again.
        tasks.recover_interrupted()
    worker = start_worker(rt) if with_worker else None
    services = Services(
        dicom,
        http,
        worker,
        audit_sender=audit_sender,
        mllp=mllp,
        listeners=listeners,
    )
    _install_signals(services)
    audit.start_delivery(audit_sender, services.stop)
    dispatcher = threading.Thread(
        target=_dispatch_loop, args=(services,), name="dispatcher", daemon=True
    )
    dispatcher.start()
    if ready is not None:
        ready.set()
    try:
        while not services.stop.wait(0.5):
            pass
    finally:
        status = _shutdown(rt, services)
    return status


def _on_port(what: str, port: int, start: Callable[[Runtime], T], rt: Runtime) -> T:
    """`start(rt)`, its bind error naming the listener and its port."""
    try:
        return start(rt)
    except OSError as exc:
        raise OSError(exc.errno, f"{what} port {port}: {exc.strerror or exc}") from exc


def _start_listeners(
    rt: Runtime,
) -> tuple[ThreadedAssociationServer, list[subprocess.Popen[bytes]]]:
    """This process's DICOM listener, and the other listener processes."""
    settings = rt.settings
    count = settings.store_processes
    if count == 1:
        return start_dicom(rt), []
    address = (settings.dicom_host, settings.dicom_port)
    if not port_is_free(address):
        raise OSError(f"port {settings.dicom_port} is in use")
    return start_dicom(rt, shared_port=True), start_listener_processes(rt, count - 1)


def start_http(rt: Runtime) -> wsgi.Server:
    """Bind the HTTP port (TLS when configured) and serve it in a thread."""
    settings = rt.settings
    server = wsgi.Server(
        (settings.http_host, settings.http_port),
        create_app(rt),
        numthreads=8,
        server_name="spiders",
    )
    if settings.http_tls_cert and settings.http_tls_key:
        adapter = AuditedSSLAdapter(
            str(settings.http_tls_cert), str(settings.http_tls_key)
        )
        adapter.on_failure = audit_tls_failure(rt, "https")
        server.ssl_adapter = adapter
    server.prepare()
    threading.Thread(target=server.serve, name="http", daemon=True).start()
    logger.info(
        "HTTP server started",
        extra={"port": settings.http_port, "tls": server.ssl_adapter is not None},
    )
    return server


def _dispatch_loop(services: Services) -> None:
    while not services.stop.wait(DISPATCH_INTERVAL):
        try:
            tasks.dispatch_due()
        except Exception:
            logger.exception("dispatch failed; trying again")
        if services.worker is not None and services.worker.poll() is not None:
            logger.error("worker exited", extra={"status": services.worker.returncode})
            services.stop.set()
            return
        for child in services.listeners:
            if child.poll() is not None:
                logger.error(
                    "DICOM listener process exited",
                    extra={"pid": child.pid, "status": child.returncode},
                )
                services.stop.set()
                return


def _install_signals(services: Services) -> None:
    def stop(signum: int, _frame: object) -> None:
        if services.stop.is_set():
            return
        logger.info("stop requested", extra={"signal": signal.Signals(signum).name})
        services.stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)


def _shutdown(rt: Runtime, services: Services) -> int:
    services.stop.set()
    services.http.stop()
    status = _stop_listeners(services.listeners)
    services.dicom.shutdown()
    if services.mllp is not None:
        services.mllp.stop()
    if services.worker is not None:
        if services.worker.poll() is None:
            services.worker.send_signal(signal.SIGTERM)
            try:
                services.worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                services.worker.kill()
                services.worker.wait()
        else:
            status = 1
    with rt.db.session() as session:
        audit.application(session, rt.settings, started=False)
    if services.audit_sender is not None:
        audit.flush_delivery(services.audit_sender)
    logger.info("stopped")
    return status


def _stop_listeners(listeners: list[subprocess.Popen[bytes]]) -> int:
    """Stop the listener processes; 1 when one had already exited."""
    status = 0
    for child in listeners:
        if child.poll() is not None:
            status = 1
            continue
        child.send_signal(signal.SIGTERM)
    for child in listeners:
        try:
            child.wait(timeout=LISTENER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return status


def _destination(rt: Runtime) -> Any:
    def lookup(ae_title: str) -> tuple[str, int] | None:
        console = rt.settings.directory.console_by_ae(ae_title)
        return (console.host, console.port) if console else None

    return lookup


def _audit_refused_request(rt: Runtime) -> Callable[[str, str, str], None]:
    """Security Alert (110113, Use of Restricted Function) for a DIMSE request
    the cache refused: a C-STORE it will not keep or did not ask for, a C-MOVE
    to an unknown AE, a site's Query/Retrieve contexts."""

    def write(calling_ae: str, address: str, what: str) -> None:
        with rt.db.session() as session:
            audit.security_alert(
                session,
                rt.settings,
                alert_type=EventTypeCode.USE_OF_RESTRICTED_FUNCTION,
                subject=f"dicom://{calling_ae}@{address}",
                description=what,
                peer=audit.peer_ae(calling_ae, address, requestor=True),
            )

    return write


def _audit_find(rt: Runtime) -> Callable[[FindSummary], None]:
    def write(found: FindSummary) -> None:
        with rt.db.session() as session:
            audit.console_query(
                session,
                rt.settings,
                calling_ae=found.calling_ae,
                address=found.address,
                sop_class_uid=found.sop_class_uid,
                query=found.query,
            )

    return write


def _audit_delivery(rt: Runtime) -> Any:
    def write(summary: AssociationSummary) -> None:
        settings = rt.settings
        host = summary.address
        with rt.db.session() as session:
            for study in summary.studies:
                audit.instances_transferred(
                    session,
                    settings,
                    source_ae=summary.calling_ae,
                    source_host=host,
                    destination=audit.us(settings),
                    study_uid=study.study_uid,
                    sop_classes=study.sop_classes,
                    patient_id=study.patient_id or "unknown",
                    patient_name_value=study.patient_name,
                    action="C" if study.new else "R",
                    outcome=4 if summary.aborted else 0,
                )

    return write


if __name__ == "__main__":
    # Run through the imported module, so that its loggers keep their name.
    from server.serve import listener_main as run_listener

    sys.exit(run_listener() if sys.argv[1:] == ["--dicom-listener"] else 2)
