"""Application Entity factory: one place that sets up every pynetdicom AE.

Every AE SPIDERS creates, as a client of the sites or as the cache's server,
comes from here so that timeouts, accepted transfer syntaxes and socket
options are the same everywhere.

Over-long UIDs: pynetdicom validates UI elements of the DIMSE command set and
aborts the association when one exceeds 64 characters. Devices do send such
UIDs; aborting loses the whole transfer. :func:`relax_uid_length` replaces
the UI validator so that values up to 128 characters pass, and the storage
SCP warns about them instead.

Nagle's algorithm: pynetdicom leaves ``TCP_NODELAY`` off, so every small PDU
waits for the previous one's acknowledgement (about 20 images a second on
loopback). :func:`enable_tcp_nodelay` wraps pynetdicom's socket creation, on
both the requesting and the accepting side, once per process.

Several processes, one port: :func:`start_shared_port_server` binds with
``SO_REUSEPORT``, so that several listener processes accept associations on
the same port and the kernel spreads the associations between them.

Protocol traces: pynetdicom's own event handlers that trace every PDU and
DIMSE message are not bound (``LOG_HANDLER_LEVEL`` ``"none"``), and its logger
stays at WARNING, so query identifiers (patient data) never reach the logs.

Limitations
-----------
No TLS yet: associations are plain TCP. The TCP_NODELAY wrap changes
pynetdicom's socket classes for the whole process, not one AE. Setting the
``pynetdicom`` logger to DEBUG shows no PDU or DIMSE traces: they are turned
off for every AE of the process, not one.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import threading
from typing import Any

from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    AllStoragePresentationContexts,
    _config,
)
from pynetdicom.events import EventHandlerType
from pynetdicom.transport import (
    AddressInformation,
    AssociationServer,
    AssociationSocket,
    ThreadedAssociationServer,
)

logger = logging.getLogger(__name__)

ACSE_TIMEOUT = 30.0
DIMSE_TIMEOUT = 120.0
NETWORK_TIMEOUT = 120.0
MAXIMUM_PDU_SIZE = 0  # unlimited: fewer, larger P-DATA PDUs
MAX_UID_LENGTH = 128
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def relax_uid_length() -> None:
    """Let DIMSE command sets carry UIDs up to 128 characters.

    Patient data never passes through here; only the length check changes.
    """

    def validate_ui(value: Any) -> tuple[bool, str]:
        text = str(value or "")
        if len(text) > MAX_UID_LENGTH:
            return False, f"UID longer than {MAX_UID_LENGTH} characters"
        return True, ""

    _config.VALIDATORS["UI"] = validate_ui


def quiet_identifiers() -> None:
    """Keep pynetdicom from logging query identifiers (patient data).

    Its protocol traces (one handler call per PDU and per DIMSE message, which
    formats lines below WARNING) are not bound either: at WARNING they would
    print nothing, and they cost every received instance some CPU.
    """
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    _config.LOG_HANDLER_LEVEL = "none"
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def make_ae(ae_title: str) -> AE:
    """Return an AE with SPIDERS' timeouts and PDU size."""
    relax_uid_length()
    quiet_identifiers()
    enable_tcp_nodelay()
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ACSE_TIMEOUT
    ae.dimse_timeout = DIMSE_TIMEOUT
    ae.network_timeout = NETWORK_TIMEOUT
    ae.maximum_pdu_size = MAXIMUM_PDU_SIZE
    return ae


def add_storage_scp_contexts(ae: AE) -> None:
    """Accept every storage SOP class in every transfer syntax, as sent.

    Role selection proposals are accepted both ways, so a C-GET client can act
    as the storage SCP on its own association.
    """
    for cx in AllStoragePresentationContexts:
        # pynetdicom's own context lists always name their abstract syntax.
        assert cx.abstract_syntax is not None
        ae.add_supported_context(
            cx.abstract_syntax, ALL_TRANSFER_SYNTAXES, scu_role=True, scp_role=True
        )


def set_nodelay(sock: socket.socket) -> None:
    """Turn Nagle's algorithm off: small PDUs otherwise wait ~40 ms each."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:  # not a TCP socket (tests may pass pairs)
        logger.debug("TCP_NODELAY not set", extra={"error": str(exc)})


_nodelay_enabled = False
_nodelay_lock = threading.Lock()
# Attribute of an association server holding a callable(peer, reason) told of
# each failed TLS handshake.
TLS_FAILURE_CALLBACK = "spiders_on_tls_failure"


def enable_tcp_nodelay() -> None:
    """Set TCP_NODELAY on every association socket pynetdicom creates."""
    global _nodelay_enabled
    with _nodelay_lock:
        if _nodelay_enabled:
            return
        _wrap_sockets()
        _nodelay_enabled = True


def _wrap_sockets() -> None:
    """Wrap pynetdicom's socket creation on both sides (once per process)."""
    create = AssociationSocket._create_socket

    def get_request(
        self: AssociationServer,
    ) -> tuple[socket.socket, tuple[str, int]]:
        # pynetdicom's own steps (accept, then TLS), with TCP_NODELAY set and
        # a failed handshake reported before the error reaches socketserver.
        assert self.socket is not None
        client, address = self.socket.accept()
        set_nodelay(client)
        if self.ssl_context:
            try:
                client = self.ssl_context.wrap_socket(client, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                client.close()
                report = getattr(self, TLS_FAILURE_CALLBACK, None)
                if report is not None:
                    report(f"{address[0]}:{address[1]}", type(exc).__name__)
                raise
        return client, address

    def create_socket(
        self: AssociationSocket, address: AddressInformation
    ) -> socket.socket:
        sock = create(self, address)
        set_nodelay(sock)
        return sock

    AssociationServer.get_request = get_request  # type: ignore[method-assign]
    AssociationSocket._create_socket = create_socket  # type: ignore[method-assign]


class SharedPortServer(ThreadedAssociationServer):
    """A threaded association server whose port other processes share.

    ``SO_REUSEPORT`` is set before binding; every process bound this way
    accepts whole associations, chosen by the kernel.
    """

    def server_bind(self) -> None:
        """Set ``SO_REUSEPORT``, then bind as pynetdicom does."""
        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def start_shared_port_server(
    ae: AE,
    address: tuple[str, int],
    *,
    ssl_context: ssl.SSLContext | None,
    evt_handlers: list[EventHandlerType],
) -> ThreadedAssociationServer:
    """Start `ae` as a non-blocking acceptor on a port shared by processes.

    The same steps as ``AE.start_server(block=False)``, with
    :class:`SharedPortServer`.
    """
    server = ae.make_server(
        address,
        ssl_context=ssl_context,
        evt_handlers=evt_handlers,
        server_class=SharedPortServer,
    )
    thread = threading.Thread(
        target=server.serve_forever, name="shared-port-acceptor", daemon=True
    )
    thread.start()
    ae._servers.append(server)
    return server


def port_is_free(address: tuple[str, int]) -> bool:
    """True when no socket listens on `address` (sockets in TIME_WAIT aside).

    Sockets bound with ``SO_REUSEPORT`` would let a second server join the
    first one's port silently; binding once without it first tells.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError:
            return False
    return True


def is_safe_uid(value: str) -> bool:
    """True when `value` is digits and dots only, usable as a file name."""
    return (
        bool(_UID.fullmatch(value))
        and len(value) <= MAX_UID_LENGTH
        and ".." not in value
    )
