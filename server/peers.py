"""TLS contexts for the configured sites, built once per process and site."""

from __future__ import annotations

import ssl
import threading

from ihe.tls import client_context
from server.config import Site

_lock = threading.Lock()
_contexts: dict[tuple[str, str, str, str], ssl.SSLContext] = {}


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
