"""TLS contexts for every link SPIDERS opens or accepts (DICOM, HTTP, MLLP, syslog).

Contexts require TLS 1.2 or later and verify peers against the configured CA.
A server context asks for client certificates only when a client CA is given,
and then refuses clients without a valid one (mutual TLS).
"""

from __future__ import annotations

import ssl
from pathlib import Path


def server_context(
    cert: Path, key: Path, client_ca: Path | None = None
) -> ssl.SSLContext:
    """A context for a listener presenting `cert`; mutual TLS with `client_ca`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    if client_ca is not None:
        ctx.load_verify_locations(cafile=str(client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(
    ca: Path, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A context that verifies the server against `ca`, presenting `cert` if given."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx
