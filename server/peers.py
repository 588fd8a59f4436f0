"""How to reach a configured site: its TLS context, DICOM and DICOMweb arguments.

The TLS context of a site is built once per process and site. The DICOM
Query/Retrieve clients (:mod:`ihe.qr`) all take the same keyword arguments
to reach a site, given here by :func:`site_call`; the DICOMweb clients
(:mod:`ihe.dicomweb`) take an :class:`~ihe.dicomweb.rad129_qido_rs_query.Endpoint`,
given by :func:`site_endpoint`.

Limitations
-----------
A TLS context is kept for the life of the process: CA, certificate or key
files replaced on disk under the same names are read again only after a
restart.
"""

from __future__ import annotations

import ssl
import threading
from typing import TypedDict

from ihe.dicomweb.rad129_qido_rs_query import Endpoint
from ihe.tls import client_context
from server.config import Settings, Site

_lock = threading.Lock()
_contexts: dict[tuple[str, str, str, str], ssl.SSLContext] = {}


class SiteCall(TypedDict):
    """The keyword arguments of an :mod:`ihe.qr` client that name the peers."""

    calling_ae: str
    ae_title: str
    host: str
    port: int
    timeout: float
    tls: ssl.SSLContext | None


def site_tls(site: Site) -> ssl.SSLContext | None:
    """The client TLS context for `site`, or ``None`` when it takes plain TCP."""
    if site.tls_ca is None:
        return None
    key = (site.name, str(site.tls_ca), str(site.tls_cert), str(site.tls_key))
    with _lock:
        ctx = _contexts.get(key)
        if ctx is None:
            ctx = _contexts[key] = client_context(
                site.tls_ca, site.tls_cert, site.tls_key
            )
        return ctx


def site_call(settings: Settings, site: Site) -> SiteCall:
    """Our AE title and `site`'s address, time-out and TLS, as keyword arguments."""
    return SiteCall(
        calling_ae=settings.ae_title,
        ae_title=site.ae_title,
        host=site.host,
        port=site.port,
        timeout=site.timeout,
        tls=site_tls(site),
    )


def site_endpoint(site: Site) -> Endpoint:
    """The site's DICOMweb service, with its credentials and TLS files."""
    return Endpoint(
        url=site.dicomweb_url or "",
        auth_header=site.dicomweb_auth_header,
        ca=site.tls_ca,
        cert=site.tls_cert,
        key=site.tls_key,
        timeout=site.timeout,
    )
