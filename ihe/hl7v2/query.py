"""Query by parameter (``QBP``) and segment pattern response (``RSP``) messages.

HL7 v2.5 chapter 5 (conformance-based queries) as IHE ITI TF-2a uses it for
ITI-9 and ITI-21: the query names itself in QPD-1, carries a tag in QPD-2
that the response echoes in QAK-1, and its parameters in QPD-3 onwards; RCP
sets the quantity limit and DSC-1 carries a continuation pointer. The
response is one message on the same connection::

    MSH MSA [ERR] QAK QPD {body segments} [DSC]

Its MSH swaps the sending and receiving application and facility of the
query, names the response type in MSH-9 (``RSP^K23^RSP_K23``), copies MSH-11,
MSH-12 and MSH-18; MSA-2 is the query's MSH-10, QAK-2 the query response
status (HL7 table 0208) and QPD the query's own, as received.

A query is a read: the receiver does not store it, does not deduplicate it
(a query sent twice is answered twice) and answers with the response, never
with a general acknowledgement. A transaction module exposes its queries as
:class:`QueryRoute` entries; the handler raises :class:`QueryError` for the
error answers of its transaction and audits every answer it gives.

Limitations
-----------
Queries are answered in original mode whatever MSH-15 and MSH-16 ask; no
commit acknowledgement comes first. The response is written with the default
delimiters ``|^~\\&`` whatever the query used, in the character set of the
query (MSH-18, or the site default when the query has none, then written to
MSH-18). Query cancellation (``QCN^J01``) is not supported: continuation
pointers simply expire.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy.orm import Session

from ihe.atna.codes import EventTypeCode
from ihe.hl7v2 import er7
from ihe.hl7v2.ack import PARIS, ErrorDetail, for_exception
from ihe.hl7v2.application import Context
from ihe.hl7v2.codes import CHARSETS, ERROR_CODE_SYSTEM, AckCode, ErrorCode
from server.errors import MessageError

logger = logging.getLogger(__name__)

QPD = "QPD"
RCP = "RCP"
DSC = "DSC"
RSP = "RSP"
DEFAULT_VERSION = "2.5"
# DSC-2 continuation style, HL7 table 0398: interactive continuation.
INTERACTIVE_CONTINUATION = "I"


class QueryStatus(StrEnum):
    """QAK-2 query response status, HL7 table 0208."""

    OK = "OK"
    NO_DATA = "NF"
    APPLICATION_ERROR = "AE"
    APPLICATION_REJECT = "AR"


@dataclass(frozen=True)
class QuerySpec:
    """What identifies a query and its response.

    Attributes
    ----------
    name : str
        QPD-1.1, the message query name (``IHE PIX Query``).
    response_event : str
        MSH-9.2 of the response (``K23``).
    response_structure : str
        MSH-9.3 of the response (``RSP_K23``).
    transaction : EventTypeCode
        The IHE transaction, for the audit message.
    """

    name: str
    response_event: str
    response_structure: str
    transaction: EventTypeCode

    @property
    def response_type(self) -> str:
        """MSH-9 of the response, as written."""
        return f"{RSP}^{self.response_event}^{self.response_structure}"


@dataclass(frozen=True)
class Answer:
    """A query's response, ready to send, and what it said.

    Attributes
    ----------
    message : bytes
        The encoded response.
    ack_code : AckCode
        MSA-1.
    status : QueryStatus
        QAK-2.
    hits : int
        The patients (PID segments) sent in this response.
    """

    message: bytes
    ack_code: AckCode
    status: QueryStatus
    hits: int = 0


QueryHandler = Callable[[Session, er7.Message, Context], Answer]


@dataclass(frozen=True)
class QueryRoute:
    """One query the receiver answers: its description and handler."""

    spec: QuerySpec
    handler: QueryHandler


class QueryError(MessageError):
    """A query answered ``AE`` (or ``AR``) with one ERR per detail.

    Parameters
    ----------
    message : str
        ERR-8 of the first error; never patient data.
    code : int
        ERR-3 of the first error, HL7 table 0357.
    location : sequence of str or int
        ERR-2 of the first error.
    more : sequence of ErrorDetail
        Further errors, one ERR segment each.
    """

    def __init__(
        self,
        message: str,
        code: int,
        location: Sequence[str | int] = (),
        more: Sequence[ErrorDetail] = (),
    ) -> None:
        super().__init__(message, code, location)
        self.more = tuple(more)

    @property
    def details(self) -> list[ErrorDetail]:
        """Every ERR segment this error is answered with."""
        first = ErrorDetail(ErrorCode(self.code), self.location, str(self))
        return [first, *self.more]


def query_segment(msg: er7.Message) -> er7.Segment:
    """The QPD segment of a query.

    Raises
    ------
    QueryError
        No QPD (ERR-3 100).
    """
    qpd = msg.segment(QPD)
    if qpd is None:
        raise QueryError(
            "the query has no QPD segment", ErrorCode.SEGMENT_SEQUENCE_ERROR, (QPD,)
        )
    return qpd


def query_tag(qpd: er7.Segment) -> str:
    """QPD-2, the query tag.

    Raises
    ------
    QueryError
        QPD-2 is empty (ERR-3 101).
    """
    tag = qpd.value(2).strip()
    if not tag:
        raise QueryError(
            "QPD-2 (query tag) is empty",
            ErrorCode.REQUIRED_FIELD_MISSING,
            (QPD, 1, 2),
        )
    return tag


def check_name(qpd: er7.Segment, spec: QuerySpec) -> None:
    """Refuse a QPD-1 that names another query (``AE`` 103 at QPD-1).

    An empty QPD-1 is taken as the query MSH-9 names.
    """
    name = qpd.value(1).strip()
    if name and name.upper() != spec.name.upper():
        raise QueryError(
            f"QPD-1 names another query than {spec.name!r}",
            ErrorCode.TABLE_VALUE_NOT_FOUND,
            (QPD, 1, 1),
        )


def respond(
    msh: er7.Segment,
    spec: QuerySpec,
    *,
    ack_code: AckCode,
    status: QueryStatus,
    qpd: er7.Segment | None = None,
    errors: Sequence[ErrorDetail] = (),
    body: Sequence[str] = (),
    continuation: str | None = None,
    hits: tuple[int, int, int] | None = None,
    default_charset: str = "UNICODE UTF-8",
    now: datetime | None = None,
) -> Answer:
    """Build the response to the query whose header is `msh`.

    Parameters
    ----------
    msh : Segment
        The query's MSH.
    spec : QuerySpec
        The query answered.
    ack_code : AckCode
        MSA-1.
    status : QueryStatus
        QAK-2.
    qpd : Segment, optional
        The query's QPD, echoed; its tag is QAK-1.
    errors : sequence of ErrorDetail
        One ERR segment each.
    body : sequence of str
        Encoded segments after QPD (PID...), without terminators.
    continuation : str, optional
        DSC-1, when more records remain.
    hits : (int, int, int), optional
        QAK-4 total, QAK-5 in this response and QAK-6 remaining.
    default_charset : str
        The MSH-18 label to write and encode with when the query has none.
    now : datetime, optional
        MSH-7; the current time in Europe/Paris when omitted.
    """
    label = msh.value(18).strip().upper() or default_charset.strip().upper()
    codec = CHARSETS.get(label, "ascii")
    segments = [_header(msh, spec, label, now), _msa(msh, ack_code, errors)]
    segments += [_err(error) for error in errors]
    tag = qpd.value(2) if qpd is not None else ""
    qak = ["QAK", er7.escape(tag), str(status), er7.escape(spec.name)]
    if hits is not None:
        qak += [str(n) for n in hits]
    segments.append("|".join(qak))
    if qpd is not None:
        segments.append(_echo(qpd))
    segments += list(body)
    if continuation is not None:
        segments.append(f"{DSC}|{continuation}|{INTERACTIVE_CONTINUATION}")
    text = er7.SEGMENT_TERMINATOR.join(segments) + er7.SEGMENT_TERMINATOR
    records = sum(1 for segment in body if segment.startswith("PID|"))
    return Answer(text.encode(codec, errors="replace"), ack_code, status, records)


def refuse(
    msh: er7.Segment,
    spec: QuerySpec,
    exc: BaseException,
    *,
    qpd: er7.Segment | None = None,
    default_charset: str = "UNICODE UTF-8",
) -> Answer:
    """The error response for `exc`: ``AR`` for a rejected message, else ``AE``.

    An exception outside the error tree is our own failure: ``AR`` with ERR-3
    207, so that the sender may ask again later.
    """
    if isinstance(exc, QueryError):
        ack_code, errors = AckCode.APPLICATION_ERROR, exc.details
    elif isinstance(exc, MessageError):
        ack_code, detail = for_exception(exc)
        errors = [detail]
    else:
        ack_code = AckCode.APPLICATION_REJECT
        errors = [
            ErrorDetail(
                ErrorCode.APPLICATION_INTERNAL_ERROR,
                message="the query could not be answered; send it again later",
            )
        ]
    status = (
        QueryStatus.APPLICATION_REJECT
        if ack_code is AckCode.APPLICATION_REJECT
        else QueryStatus.APPLICATION_ERROR
    )
    return respond(
        msh,
        spec,
        ack_code=ack_code,
        status=status,
        qpd=qpd,
        errors=errors,
        default_charset=default_charset,
    )


def _header(msh: er7.Segment, spec: QuerySpec, label: str, now: datetime | None) -> str:
    def copy(n: int) -> str:
        return er7.encode_field(msh.field(n))

    fields = [
        "MSH",
        er7.DEFAULT_ENCODING_CHARACTERS,
        copy(5),
        copy(6),
        copy(3),
        copy(4),
        (now or datetime.now(PARIS)).strftime("%Y%m%d%H%M%S%z"),
        "",
        spec.response_type,
        uuid.uuid4().hex[:20].upper(),
        copy(11) or "P",
        copy(12) or DEFAULT_VERSION,
        *[""] * 5,
        label if label in CHARSETS else "",
    ]
    return "|".join(fields).rstrip("|")


def _msa(msh: er7.Segment, code: AckCode, errors: Sequence[ErrorDetail]) -> str:
    fields = ["MSA", str(code), er7.encode_field(msh.field(10))]
    if errors:
        fields.append(er7.escape(errors[0].message))
    return "|".join(fields)


def _err(error: ErrorDetail) -> str:
    code = f"{int(error.code)}^{error.code.text}^{ERROR_CODE_SYSTEM}"
    location = "^".join(er7.escape(str(part)) for part in error.location)
    fields = ["ERR", "", location, code, str(error.severity), "", "", ""]
    fields.append(er7.escape(error.message))
    return "|".join(fields)


def _echo(qpd: er7.Segment) -> str:
    """The QPD as received, rewritten with the default delimiters."""
    fields = [er7.encode_field(qpd.field(n)) for n in range(1, qpd.size + 1)]
    return "|".join([QPD, *fields]).rstrip("|")
