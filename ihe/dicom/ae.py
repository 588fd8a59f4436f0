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

Limitations
-----------
No TLS yet: associations are plain TCP. The TCP_NODELAY wrap changes
pynetdicom's socket classes for the whole process, not one AE.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
from typing import Any

from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    AllStoragePresentationContexts,
    _config,
)
from pynetdicom.transport import (
    AddressInformation,
    AssociationServer,
    AssociationSocket,
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
    """Keep pynetdicom from logging query identifiers (patient data)."""
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
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
# Attribute of an association server holding a callable(peer, reason) told of
# each failed TLS handshake.
TLS_FAILURE_CALLBACK = "spiders_on_tls_failure"


def enable_tcp_nodelay() -> None:
    """Set TCP_NODELAY on every association socket pynetdicom creates."""
    global _nodelay_enabled
    if _nodelay_enabled:
        return
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
    _nodelay_enabled = True


def is_safe_uid(value: str) -> bool:
    """True when `value` is digits and dots only, usable as a file name."""
    return (
        bool(_UID.fullmatch(value))
        and len(value) <= MAX_UID_LENGTH
        and ".." not in value
    )
