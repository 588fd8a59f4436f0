"""ITI-83 Mobile Patient Identifier Cross-reference Query (PIXm), Consumer side.

IHE PIXm, ITI TF-2 3.83: SPIDERS asks an external PIX Manager for the
identifiers of the person behind one identifier it knows::

    GET {base}/Patient/$ihe-pix?sourceIdentifier=urn:oid:<OID>|<value>
        &targetSystem=urn:oid:<OID>&targetSystem=urn:oid:<OID>

and reads the ``Parameters`` answer: each ``targetIdentifier``
(``valueIdentifier``) is an identifier in a domain asked. The statuses of
3.83.4.2.2 become the same values and errors as the ITI-9 consumer's
(:mod:`ihe.pix.iti9_pix_consumer`):

=======================  ==============================================
200                      known: the ``targetIdentifier`` values
404                      not known to the PIX Manager
400                      :class:`UnknownPixDomainError`: the source's
                         domain
403                      :class:`UnknownPixDomainError`: a domain
                         asked (the one asked, or all of them: the
                         answer does not say which)
any other 4xx            :class:`PixQueryError` with the status
5xx, a time-out, no      :class:`~server.errors.PeerError`
connection, a body that
is not ``Parameters``
=======================  ==============================================

The request carries ``Accept: application/fhir+json`` and the configured
``Authorization`` header; it has the peer's time-out for the connection and
for each read, and the whole body must fit :data:`MAX_ANSWER` bytes. HTTPS
peers are verified against the configured CA (or the system's), with an
optional client certificate.

Limitations
-----------
``targetId`` (the PIX Manager's own Patient resource) is not read. Only JSON
answers are understood. Redirects are not followed. The header value is
never logged, and nor are identifiers: log lines carry the status and counts.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import requests

from ihe.pix.iti9_pix_consumer import CrossReference
from mappings.identifiers import Identifier, authority_to_system, system_to_authority
from server.errors import PeerError, PixQueryError, UnknownPixDomainError

logger = logging.getLogger(__name__)

OPERATION = "Patient/$ihe-pix"
SOURCE_IDENTIFIER = "sourceIdentifier"
TARGET_SYSTEM = "targetSystem"
TARGET_IDENTIFIER = "targetIdentifier"
FHIR_JSON = "application/fhir+json"
MAX_ANSWER = 1024 * 1024
LOG_ASKED = "PIXm query answered by the PIX Manager"
LOG_FAILED = "PIXm query to the PIX Manager failed"


@dataclass(frozen=True)
class PixmPeer:
    """The PIX Manager's FHIR endpoint and how to reach it.

    Attributes
    ----------
    base_url : str
        Its FHIR base, without a trailing slash.
    timeout : float
        Seconds for the connection and for each read.
    ca : Path, optional
        The CA its HTTPS certificate must chain to; the system's otherwise.
    cert, key : Path, optional
        Our client certificate and key, when it asks for one.
    auth_header : str, optional
        The ``Authorization`` header value sent with the query.
    """

    base_url: str
    timeout: float
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    auth_header: str | None = None


def query_params(source: Identifier, domains: Sequence[str]) -> list[tuple[str, str]]:
    """The operation's input parameters, in order, for `source` and `domains`."""
    params = [
        (SOURCE_IDENTIFIER, f"{authority_to_system(source.system)}|{source.value}")
    ]
    params += [(TARGET_SYSTEM, authority_to_system(d)) for d in domains]
    return params


def query_string(source: Identifier, domains: Sequence[str]) -> str:
    """The URL query string of the request (also the audit's query)."""
    return urlencode(query_params(source, domains))


def ask(
    peer: PixmPeer,
    source: Identifier,
    domains: Sequence[str],
    http: requests.Session | None = None,
) -> CrossReference:
    """Ask the PIX Manager at `peer` for `source`'s identifiers in `domains`.

    Raises
    ------
    UnknownPixDomainError
        400 (the source's domain) or 403 (a domain asked).
    PixQueryError
        Any other 4xx answer.
    PeerError
        5xx, a time-out, no connection, or a body that is not ``Parameters``.
    """
    started = time.monotonic()
    try:
        status, body = _get(peer, query_string(source, domains), http)
        answer = parse_answer(status, body, source, domains)
    except PeerError as exc:
        logger.warning(
            LOG_FAILED,
            extra={"peer": peer.base_url, "error": type(exc).__name__},
        )
        raise
    logger.info(
        LOG_ASKED,
        extra={
            "status": status,
            "known": answer.known,
            "identifiers": len(answer.identifiers),
            "seconds": round(time.monotonic() - started, 3),
        },
    )
    return answer


def parse_answer(
    status: int, body: Any, source: Identifier, domains: Sequence[str]
) -> CrossReference:
    """Read one answer: its HTTP status and its parsed JSON body (or None).

    Raises
    ------
    UnknownPixDomainError, PixQueryError, PeerError
        As :func:`ask`.
    """
    if status == 200:
        return CrossReference(True, _identifiers(body, source, domains))
    if status == 404:
        return CrossReference(known=False)
    if status == 400:
        raise UnknownPixDomainError(
            "the PIX Manager does not know the source identifier's domain",
            [source.system],
            status=status,
        )
    if status == 403:
        raise UnknownPixDomainError(
            "the PIX Manager does not know a domain asked", domains, status=status
        )
    if 400 <= status < 500:
        raise PixQueryError(
            f"the PIX Manager refused the query ({status})", status=status
        )
    raise PeerError(f"the PIX Manager failed to answer ({status})")


def _identifiers(
    body: Any, source: Identifier, domains: Sequence[str]
) -> tuple[Identifier, ...]:
    """The ``targetIdentifier`` values in the domains asked, source excepted."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise PeerError("the PIX Manager's answer is not a Parameters resource")
    found: dict[tuple[str, str], Identifier] = {}
    for item in body.get("parameter") or []:
        if not isinstance(item, dict) or item.get("name") != TARGET_IDENTIFIER:
            continue
        ident = item.get("valueIdentifier")
        if not isinstance(ident, dict):
            raise PeerError("a targetIdentifier of the answer is not an Identifier")
        system, value = ident.get("system"), ident.get("value")
        if not isinstance(system, str) or not isinstance(value, str):
            continue
        authority = system_to_authority(system.strip())
        value = value.strip()
        if not authority or not value or (domains and authority not in domains):
            continue
        if (authority, value) == (source.system, source.value):
            continue
        found.setdefault((authority, value), Identifier(authority, value))
    return tuple(found.values())


def _get(peer: PixmPeer, query: str, http: requests.Session | None) -> tuple[int, Any]:
    """GET the operation; the status and the JSON body (None when not JSON)."""
    url = f"{peer.base_url.rstrip('/')}/{OPERATION}?{query}"
    headers = {"Accept": FHIR_JSON}
    if peer.auth_header:
        headers["Authorization"] = peer.auth_header
    cert = (str(peer.cert), str(peer.key)) if peer.cert and peer.key else None
    verify: str | bool = str(peer.ca) if peer.ca is not None else True
    getter = http or requests
    deadline = time.monotonic() + peer.timeout
    try:
        with getter.get(
            url,
            headers=headers,
            timeout=peer.timeout,
            verify=verify,
            cert=cert,
            allow_redirects=False,
            stream=True,
        ) as rsp:
            raw = bytearray()
            for chunk in rsp.iter_content(65536):
                raw += chunk
                if len(raw) > MAX_ANSWER or time.monotonic() > deadline:
                    raise PeerError("the PIX Manager's answer is too large or slow")
            status = rsp.status_code
    except requests.RequestException as exc:
        raise PeerError(
            f"the PIX Manager at {peer.base_url} did not answer ({type(exc).__name__})"
        ) from exc
    return status, _json(bytes(raw))


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None
