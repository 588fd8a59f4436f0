"""ITI-9 PIX Query (HL7 v2.5 ``QBP^Q23``), PIX Consumer side.

IHE ITI TF-2a section 3.9: SPIDERS asks an external PIX Manager for the
identifiers of the person behind one identifier it knows, in the domains it
names. The query is one message over MLLP, answered on the same connection::

    MSH|^~\\&|SPIDERS||||<time>||QBP^Q23^QBP_Q21|<id>|P|2.5|||||FRA|UNICODE UTF-8
    QPD|IHE PIX Query|<tag>|<value>^^^&<OID>&ISO|^^^&<OID>&ISO~^^^&<OID>&ISO
    RCP|I

QPD-2 is a tag unique to this query, QPD-3 the identifier known (CX with its
assigning authority as ``&OID&ISO``), QPD-4 the domains wanted (repeating);
RCP-1 ``I`` asks for an immediate answer. The ``RSP^K23`` answer reads:

==========================================  ===================================
MSA-1 ``AA``, QAK-2 ``OK``                  known: PID-3 lists the identifiers
MSA-1 ``AA``, QAK-2 ``NF``                  known, none in the domains asked
``AE``, ERR-3 204 at ``QPD^1^3^1^1``        not known to the PIX Manager
``AE``, ERR-3 204 at ``QPD^1^3^1^4``        :class:`UnknownPixDomainError`:
                                            the source's domain
``AE``, ERR-3 204 at ``QPD^1^4^n``          :class:`UnknownPixDomainError`:
                                            the n-th domain asked
any other ``AE`` or ``AR``                  :class:`PixQueryError` with ERR-3
                                            and ERR-2
no answer, a closed connection, a           :class:`~server.errors.PeerError`
time-out, an unreadable or mismatched
answer
==========================================  ===================================

"Not known" is a value (:class:`CrossReference` with ``known`` false), not an
error: the PIX Manager worked and simply holds no such patient. The same
:class:`CrossReference` and errors serve the ITI-83 consumer
(:mod:`ihe.pix.iti83_pixm_consumer`).

Every network step has the peer's time-out; the answer must come within it
as a whole. Nothing here logs patient data: the log lines carry the query's
MSH-10 and counts only.

Limitations
-----------
One connection per query: the connection is not kept for the next one.
MSH-5 and MSH-6 (the PIX Manager's application and facility) are left empty.
The query is written in UTF-8; an answer whose MSH-18 is empty is read as
UTF-8. A domain named only by its namespace (no OID) is sent as CX-4.1 and
matched on it. Only the first PID segment of an answer is read.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ihe.hl7v2 import er7, mllp
from ihe.hl7v2.ack import PARIS
from ihe.hl7v2.codes import AckCode, ErrorCode
from ihe.hl7v2.query import QueryStatus
from mappings.identifiers import Identifier, is_oid
from server.errors import (
    MessageError,
    PeerError,
    PixQueryError,
    UnknownPixDomainError,
)

logger = logging.getLogger(__name__)

QUERY_NAME = "IHE PIX Query"
QUERY_TYPE = "QBP^Q23^QBP_Q21"
RESPONSE_TYPE = ("RSP", "K23")
VERSION = "2.5"
CHARSET = "UNICODE UTF-8"
COUNTRY = "FRA"
# RCP-1 query priority, HL7 table 0091: immediate.
IMMEDIATE = "I"
# The largest answer read: a PID-3 of every domain of a region fits many times.
MAX_ANSWER = 1024 * 1024
LOG_ASKED = "PIX query answered by the PIX Manager"
LOG_FAILED = "PIX query to the PIX Manager failed"


@dataclass(frozen=True)
class CrossReference:
    """What a PIX Manager said about one identifier.

    Attributes
    ----------
    known : bool
        False when the PIX Manager does not know the identifier.
    identifiers : tuple of Identifier
        The person's identifiers in the domains asked, the queried one
        excepted; empty when unknown or when it holds none there.
    """

    known: bool
    identifiers: tuple[Identifier, ...] = ()


@dataclass(frozen=True)
class MllpPeer:
    """Where the PIX Manager listens, and how to reach it.

    Attributes
    ----------
    host, port : str, int
        Its HL7 v2 listener.
    timeout : float
        Seconds for the connection, and for the whole answer.
    tls : ssl.SSLContext, optional
        A client context when the listener takes TLS.
    """

    host: str
    port: int
    timeout: float
    tls: ssl.SSLContext | None = None


@dataclass(frozen=True)
class PixQuery:
    """One ``QBP^Q23`` as sent: the bytes and what the answer must echo.

    Attributes
    ----------
    message : bytes
        The encoded query, without MLLP framing.
    control_id : str
        MSH-10, echoed in MSA-2.
    tag : str
        QPD-2, echoed in QAK-1.
    qpd : str
        The QPD segment as written, for the audit message.
    source : Identifier
        QPD-3.
    domains : tuple of str
        QPD-4, in order.
    sender : str
        ``MSH-3|MSH-4``, for the audit message.
    """

    message: bytes
    control_id: str
    tag: str
    qpd: str
    source: Identifier
    domains: tuple[str, ...]
    sender: str


def build_query(
    source: Identifier,
    domains: Sequence[str],
    *,
    application: str = "SPIDERS",
    facility: str = "",
    control_id: str | None = None,
    tag: str | None = None,
    now: datetime | None = None,
) -> PixQuery:
    """Build the ``QBP^Q23^QBP_Q21`` asking for `source` in `domains`.

    Parameters
    ----------
    source : Identifier
        The identifier known (QPD-3); its system is an OID or a namespace.
    domains : sequence of str
        The domains wanted (QPD-4); empty asks for every domain.
    application, facility : str
        MSH-3 and MSH-4.
    control_id, tag : str, optional
        MSH-10 and QPD-2; fresh unique values when omitted.
    now : datetime, optional
        MSH-7; the current time in Europe/Paris when omitted.
    """
    control_id = control_id or uuid.uuid4().hex[:20].upper()
    tag = tag or f"PIX{uuid.uuid4().hex[:16].upper()}"
    stamp = (now or datetime.now(PARIS)).strftime("%Y%m%d%H%M%S%z")
    msh = "|".join(
        [
            "MSH",
            er7.DEFAULT_ENCODING_CHARACTERS,
            er7.escape(application),
            er7.escape(facility),
            "",
            "",
            stamp,
            "",
            QUERY_TYPE,
            er7.escape(control_id),
            "P",
            VERSION,
            *[""] * 4,
            COUNTRY,
            CHARSET,
        ]
    )
    wanted = "~".join(f"^^^{_authority(d)}" for d in domains)
    cx = f"{er7.escape(source.value)}^^^{_authority(source.system)}"
    qpd = f"QPD|{QUERY_NAME}|{er7.escape(tag)}|{cx}|{wanted}".rstrip("|")
    text = er7.SEGMENT_TERMINATOR.join([msh, qpd, f"RCP|{IMMEDIATE}"])
    return PixQuery(
        message=(text + er7.SEGMENT_TERMINATOR).encode("utf-8"),
        control_id=control_id,
        tag=tag,
        qpd=qpd,
        source=source,
        domains=tuple(domains),
        sender=f"{application}|{facility}",
    )


def ask(peer: MllpPeer, query: PixQuery) -> CrossReference:
    """Send `query` to the PIX Manager at `peer` and read its answer.

    Raises
    ------
    UnknownPixDomainError
        A domain of the query is not known to the PIX Manager.
    PixQueryError
        Any other ``AE`` or ``AR`` answer.
    PeerError
        No connection, a time-out, a closed connection or an answer that is
        not the ``RSP^K23`` to this query.
    """
    started = time.monotonic()
    try:
        raw = exchange(peer, query.message)
        answer = parse_response(raw, query)
    except PeerError as exc:
        logger.warning(
            LOG_FAILED,
            extra={
                "msh10": query.control_id,
                "peer": f"{peer.host}:{peer.port}",
                "error": type(exc).__name__,
            },
        )
        raise
    logger.info(
        LOG_ASKED,
        extra={
            "msh10": query.control_id,
            "known": answer.known,
            "identifiers": len(answer.identifiers),
            "seconds": round(time.monotonic() - started, 3),
        },
    )
    return answer


def exchange(peer: MllpPeer, payload: bytes) -> bytes:
    """One MLLP round trip: send `payload` framed, return the answer's payload.

    Raises
    ------
    PeerError
        No connection, a TLS failure, the connection closed before an answer,
        no whole answer within the peer's time-out, or an oversized answer.
    """
    deadline = time.monotonic() + peer.timeout
    where = f"{peer.host}:{peer.port}"
    try:
        sock = socket.create_connection((peer.host, peer.port), timeout=peer.timeout)
    except OSError as exc:
        raise PeerError(f"cannot connect to the PIX Manager at {where}") from exc
    try:
        if peer.tls is not None:
            sock = peer.tls.wrap_socket(sock, server_hostname=peer.host)
        sock.sendall(mllp.frame(payload))
        return _read_frame(sock, deadline, where)
    except TimeoutError as exc:
        raise PeerError(f"the PIX Manager at {where} did not answer in time") from exc
    except (OSError, ssl.SSLError) as exc:
        raise PeerError(f"the PIX Manager at {where} did not answer") from exc
    finally:
        sock.close()


def parse_response(raw: bytes, query: PixQuery) -> CrossReference:
    """Read the ``RSP^K23`` answer to `query`.

    Raises
    ------
    UnknownPixDomainError, PixQueryError
        An ``AE`` or ``AR`` answer (see the module's table).
    PeerError
        Not an ``RSP^K23``, or not the answer to `query` (MSA-2, QAK-1).
    """
    try:
        msg = er7.parse_bytes(raw, CHARSET)
    except MessageError as exc:
        raise PeerError("the PIX Manager's answer is not a readable message") from exc
    _check_answers(msg, query)
    ack_code = msg.value("MSA-1").strip().upper()
    status = msg.value("QAK-2").strip().upper()
    if ack_code == AckCode.APPLICATION_ACCEPT:
        if status == QueryStatus.NO_DATA:
            return CrossReference(known=True)
        if status == QueryStatus.OK:
            return CrossReference(True, _identifiers(msg, query))
        raise PeerError(f"the PIX Manager answered AA with QAK-2 {status!r}")
    if ack_code in (AckCode.APPLICATION_ERROR, AckCode.APPLICATION_REJECT):
        return _refusal(msg, query, ack_code)
    raise PeerError(f"the PIX Manager answered MSA-1 {ack_code!r}")


def _check_answers(msg: er7.Message, query: PixQuery) -> None:
    """The answer must be an ``RSP^K23`` to this query's MSH-10 and tag."""
    if (msg.message_type, msg.event) != RESPONSE_TYPE:
        raise PeerError(
            f"the PIX Manager answered {msg.message_type}^{msg.event}, not RSP^K23"
        )
    if msg.value("MSA-2") != query.control_id:
        raise PeerError("the PIX Manager's answer acknowledges another message")
    qak_tag = msg.value("QAK-1")
    if msg.segment("QAK") is not None and qak_tag and qak_tag != query.tag:
        raise PeerError("the PIX Manager's answer carries another query tag")


def _identifiers(msg: er7.Message, query: PixQuery) -> tuple[Identifier, ...]:
    """PID-3 of the first PID, limited to the domains asked, query excepted."""
    pid = msg.segment("PID")
    if pid is None:
        return ()
    found: dict[tuple[str, str], Identifier] = {}
    for rep in pid.repetitions(3):
        value = er7.component(rep, 1).strip()
        namespace = er7.component(rep, 4, 1).strip()
        system = er7.component(rep, 4, 2).strip() or namespace
        if not value or not system:
            continue
        if query.domains and system not in query.domains:
            continue
        if (system, value) == (query.source.system, query.source.value):
            continue
        type_code = er7.component(rep, 5).strip() or None
        ident = Identifier(system, value, type_code, namespace)
        found.setdefault((system, value), ident)
    return tuple(found.values())


def _refusal(msg: er7.Message, query: PixQuery, ack_code: str) -> CrossReference:
    """Turn an ``AE``/``AR`` answer into "not known" or a typed error."""
    errors = [_err(seg) for seg in msg.all("ERR")]
    unknown = [loc for code, loc in errors if code == ErrorCode.UNKNOWN_KEY_IDENTIFIER]
    # 204 on the identifier itself: the PIX Manager does not know the patient.
    if ("QPD", "1", "3", "1", "1") in [loc[:5] for loc in unknown]:
        return CrossReference(known=False)
    domains = [d for loc in unknown if (d := _refused_domain(loc, query))]
    if domains:
        raise UnknownPixDomainError(
            "the PIX Manager does not know a domain of the query",
            domains,
            code=ErrorCode.UNKNOWN_KEY_IDENTIFIER,
            location=unknown[0],
        )
    code, location = errors[0] if errors else (None, ())
    raise PixQueryError(
        f"the PIX Manager answered {ack_code} (ERR-3 {code or 'absent'})",
        code=code,
        location=location,
    )


def _refused_domain(location: tuple[str, ...], query: PixQuery) -> str | None:
    """The domain an ERR-2 location points at: QPD-3.4, or a QPD-4 repetition."""
    if location[:3] == ("QPD", "1", "3") and location[4:5] == ("4",):
        return query.source.system
    if location[:3] == ("QPD", "1", "4"):
        index = int(location[3]) if location[3:4] and location[3].isdigit() else 0
        if 0 < index <= len(query.domains):
            return query.domains[index - 1]
        return ", ".join(query.domains) or None
    return None


def _err(seg: er7.Segment) -> tuple[int | None, tuple[str, ...]]:
    """ERR-3.1 as a number, and ERR-2 (first repetition) as its components."""
    text = seg.value(3).strip()
    code = int(text) if text.isdigit() else None
    fld = seg.field(2)
    rep = fld[0] if fld else []
    location = tuple(er7.component(rep, n).strip() for n in range(1, len(rep) + 1))
    return code, location if any(location) else ()


def _authority(system: str) -> str:
    """CX-4 of a domain: ``&OID&ISO`` for an OID, else the namespace."""
    return f"&{system}&ISO" if is_oid(system) else er7.escape(system)


def _read_frame(sock: socket.socket, deadline: float, where: str) -> bytes:
    """The first whole frame the peer sends before `deadline`."""
    decoder = mllp.FrameDecoder(MAX_ANSWER)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise PeerError(f"the PIX Manager at {where} did not answer in time")
        sock.settimeout(left)
        data = sock.recv(65536)
        if not data:
            raise PeerError(f"the PIX Manager at {where} closed the connection")
        for item in decoder.feed(data):
            if isinstance(item, mllp.Oversized):
                raise PeerError(f"the PIX Manager at {where} sent an oversized answer")
            return item
