"""Which callers the cache's DICOM listener accepts, and in which role.

Only the configured sites and consoles may associate, each from the addresses
its host name resolves to. Any other caller is rejected during association
negotiation with the standard answer (A-ASSOCIATE-RJ, rejected-permanent,
service-user, "calling-AE-title-not-recognized", PS3.8 9.3.4) and reported to a
callback so it can be audited as a security alert. Setting
``SPIDERS_DICOM_ALLOW_UNKNOWN_CALLERS=true`` turns the check off.

Each caller has a role. A site sends studies: it may use Verification (C-ECHO)
and the Storage SOP classes (C-STORE). A console views them: it may use
Verification and the Query/Retrieve SOP classes (C-FIND, C-MOVE, C-GET). An AE
title listed both as a site and as a console (from the same host) has both
roles; an unknown caller let in by ``SPIDERS_DICOM_ALLOW_UNKNOWN_CALLERS`` is
a console.

A site's Query/Retrieve presentation contexts are refused during association
negotiation: they are left out of the contexts this association supports, so
the A-ASSOCIATE-AC answers each of them "abstract-syntax-not-supported"
(PS3.8 9.3.3.2, Table 9-18) and the site cannot send a C-FIND, C-MOVE or
C-GET at all. This is the standard way for an SCP to decline a service to a
peer, and the only one that fits C-MOVE: pynetdicom answers a
C-MOVE refused by its handler with 0xA801 (Move Destination Unknown), which
would misstate the reason. Each such refusal is logged at WARNING and
reported to a callback, to be audited as Use of Restricted Function. What a
console may not do, C-STORE, is refused per instance by the Storage SCP with
0x0124 (Refused: Not Authorized, PS3.7 Annex C; see
:mod:`ihe.dicom.storage_scp`), since a console's association must keep its
Storage contexts for C-GET.

Limitations
-----------
Host names are resolved once, when the listener starts. Roles are read from
the sites file the listener was started with. With DICOM TLS, the client
certificate is checked against the CA but not tied to an AE title: a caller
with any certificate of that CA, from a host a site or console is declared
on, may use that site's or console's AE title.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from pynetdicom import evt
from pynetdicom.events import Event

from ihe.dicom.sop_classes import QUERY_RETRIEVE_MODELS

logger = logging.getLogger(__name__)

LOG_QR_REFUSED = "query/retrieve refused to a site"

# A-ASSOCIATE-RJ: result 1 rejected-permanent, source 1 service-user,
# reason 3 calling-AE-title-not-recognized (PS3.8 Table 9-21).
REJECT_PERMANENT = 0x01
SOURCE_SERVICE_USER = 0x01
REASON_CALLING_AE_NOT_RECOGNIZED = 0x03

# The Query/Retrieve SOP classes only a console may use (PS3.4 C.6).
QUERY_RETRIEVE_UIDS = frozenset(str(sop_class) for sop_class in QUERY_RETRIEVE_MODELS)


class Role(StrEnum):
    """What a caller is to the cache, from the sites file."""

    SITE = "site"  # sends studies: C-STORE, C-ECHO
    CONSOLE = "console"  # views them: C-FIND, C-MOVE, C-GET, C-ECHO


@dataclass(frozen=True)
class KnownPeer:
    """A site or console of the sites file, as a caller."""

    name: str
    ae_title: str
    host: str
    role: Role


@dataclass(frozen=True)
class RefusedCaller:
    """A caller the listener turned away."""

    calling_ae: str
    address: str
    reason: str


class CallerPolicy:
    """The callers allowed to associate, from where, and in which role.

    Parameters
    ----------
    peers : iterable of KnownPeer
        The sites and consoles, each with the host it may call from.
    allow_unknown : bool
        Accept every caller (the check is off); unknown ones are consoles.
    on_refused : callable, optional
        Called with a :class:`RefusedCaller` for each rejection.
    on_restricted : callable, optional
        Called with (calling AE, address, what) when a site proposed
        Query/Retrieve contexts, which were refused.
    """

    def __init__(
        self,
        peers: Iterable[KnownPeer],
        *,
        allow_unknown: bool = False,
        on_refused: Callable[[RefusedCaller], None] | None = None,
        on_restricted: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.peers = tuple(
            KnownPeer(p.name, p.ae_title.strip(), p.host, p.role) for p in peers
        )
        hosts: dict[KnownPeer, frozenset[str]] = {}
        for peer in self.peers:
            hosts[peer] = _addresses([peer.host])
        self._hosts = hosts
        allowed: dict[str, set[str]] = {}
        for peer, addresses in hosts.items():
            allowed.setdefault(peer.ae_title, set()).update(addresses)
        self.allowed: Mapping[str, frozenset[str]] = {
            ae: frozenset(addresses) for ae, addresses in allowed.items()
        }
        self.allow_unknown = allow_unknown
        self.on_refused = on_refused
        self.on_restricted = on_restricted

    @property
    def handlers(self) -> list[evt.EventHandlerType]:
        """The handler to bind on the listener."""
        return [(evt.EVT_REQUESTED, self.handle_requested)]

    def check(self, calling_ae: str, address: str) -> str | None:
        """Why this caller is refused, or ``None`` when it is allowed."""
        if self.allow_unknown:
            return None
        addresses = self.allowed.get(calling_ae.strip())
        if addresses is None:
            return "unknown calling AE title"
        if address not in addresses:
            return "calling AE title used from an address not configured for it"
        return None

    def identify(self, calling_ae: str, address: str) -> list[KnownPeer]:
        """The sites and consoles this caller is.

        Those of its AE title configured for `address`; when unknown callers
        are let in, those of its AE title from any address.
        """
        calling = calling_ae.strip()
        named = [p for p in self.peers if p.ae_title == calling]
        here = [p for p in named if address in self._hosts[p]]
        return here or (named if self.allow_unknown else [])

    def roles(self, calling_ae: str, address: str) -> frozenset[Role]:
        """The roles of this caller; an unknown one let in is a console."""
        peers = self.identify(calling_ae, address)
        if not peers:
            return frozenset({Role.CONSOLE}) if self.allow_unknown else frozenset()
        return frozenset(p.role for p in peers)

    def site_names(self, calling_ae: str, address: str) -> list[str]:
        """The names of the sites this caller is (usually one, or none)."""
        peers = self.identify(calling_ae, address)
        return [p.name for p in peers if p.role is Role.SITE]

    def handle_requested(self, event: Event) -> None:
        """Reject the association now if its caller is not allowed; keep a
        site's association to the services a site may use."""
        assoc = event.assoc
        request = assoc.requestor.primitive
        if request is None:  # pynetdicom sets it before this event
            return
        calling = str(request.calling_ae_title).strip()
        address = str(assoc.requestor.address)
        reason = self.check(calling, address)
        if reason is None:
            if Role.CONSOLE not in self.roles(calling, address):
                self._restrict_to_storage(event, calling, address)
            return
        assoc.acse.send_reject(
            REJECT_PERMANENT, SOURCE_SERVICE_USER, REASON_CALLING_AE_NOT_RECOGNIZED
        )
        # As pynetdicom does for its own rejections: let the DUL send the
        # A-ASSOCIATE-RJ before the connection is closed.
        assoc.kill()
        logger.warning(
            "association refused",
            extra={"calling_ae": calling, "address": address, "reason": reason},
        )
        if self.on_refused is not None:
            try:
                self.on_refused(RefusedCaller(calling, address, reason))
            except Exception:
                logger.exception("reporting a refused caller failed")

    def _restrict_to_storage(self, event: Event, calling: str, address: str) -> None:
        """Leave the Query/Retrieve contexts out of a site's association."""
        assoc = event.assoc
        supported = assoc.acceptor.supported_contexts
        assoc.acceptor.supported_contexts = [
            cx for cx in supported if cx.abstract_syntax not in QUERY_RETRIEVE_UIDS
        ]
        request = assoc.requestor.primitive
        proposed = request.presentation_context_definition_list if request else []
        asked = sorted(
            {
                str(cx.abstract_syntax)
                for cx in proposed
                if cx.abstract_syntax in QUERY_RETRIEVE_UIDS
            }
        )
        if not asked:
            return
        logger.warning(
            LOG_QR_REFUSED,
            extra={"calling_ae": calling, "address": address, "contexts": len(asked)},
        )
        if self.on_restricted is None:
            return
        what = (
            "query/retrieve refused: a site may only store and verify "
            f"(proposed {', '.join(asked)})"
        )
        try:
            self.on_restricted(calling, address, what)
        except Exception:
            logger.exception("reporting a refused query/retrieve failed")


def _addresses(hosts: Iterable[str]) -> frozenset[str]:
    found: set[str] = set()
    for host in hosts:
        found.add(host)
        try:
            for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP):
                found.add(str(info[4][0]))
        except OSError:
            logger.warning("host name not resolved", extra={"host": host})
    return frozenset(found)
