"""Which callers the cache's DICOM listener accepts.

Only the configured sites and consoles may associate, each from the addresses
its host name resolves to. Any other caller is rejected during association
negotiation with the standard answer (A-ASSOCIATE-RJ, rejected-permanent,
service-user, "calling-AE-title-not-recognized", PS3.8 9.3.4) and reported to a
callback so it can be audited as a security alert. Setting
``SPIDERS_DICOM_ALLOW_UNKNOWN_CALLERS=true`` turns the check off.

Limitations
-----------
Host names are resolved once, when the listener starts.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from pynetdicom import evt
from pynetdicom.events import Event

logger = logging.getLogger(__name__)

# A-ASSOCIATE-RJ: result 1 rejected-permanent, source 1 service-user,
# reason 3 calling-AE-title-not-recognized (PS3.8 Table 9-21).
REJECT_PERMANENT = 0x01
SOURCE_SERVICE_USER = 0x01
REASON_CALLING_AE_NOT_RECOGNIZED = 0x03


@dataclass(frozen=True)
class RefusedCaller:
    """A caller the listener turned away."""

    calling_ae: str
    address: str
    reason: str


class CallerPolicy:
    """The (AE title, address) pairs allowed to associate.

    Parameters
    ----------
    allowed : mapping of str to iterable of str
        AE title to the host names or addresses it may call from.
    allow_unknown : bool
        Accept every caller (the check is off).
    on_refused : callable, optional
        Called with a :class:`RefusedCaller` for each rejection.
    """

    def __init__(
        self,
        allowed: Mapping[str, Iterable[str]],
        *,
        allow_unknown: bool = False,
        on_refused: Callable[[RefusedCaller], None] | None = None,
    ) -> None:
        self.allowed = {ae.strip(): _addresses(hosts) for ae, hosts in allowed.items()}
        self.allow_unknown = allow_unknown
        self.on_refused = on_refused

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

    def handle_requested(self, event: Event) -> None:
        """Reject the association now if its caller is not allowed."""
        assoc = event.assoc
        request = assoc.requestor.primitive
        if request is None:  # pynetdicom sets it before this event
            return
        calling = str(request.calling_ae_title).strip()
        address = str(assoc.requestor.address)
        reason = self.check(calling, address)
        if reason is None:
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
