"""The HL7 v2 receiving application: store, check, process, acknowledge.

For every frame, in this order:

1. read MSH from the bytes (:func:`~ihe.hl7v2.er7.read_header`);
2. look the sender (``MSH-3|MSH-4``) and MSH-10 up in the message store: a
   resend of a message already answered gets the stored acknowledgement
   again, byte for byte, and is not processed twice. A resend is the same
   message: the same bytes but for MSH-7 (the time of the message) and
   trailing segment terminators or white space. Another message under a key
   already used is answered ``AE``, ERR-2 ``MSH^1^10``, ERR-3 205 (duplicate
   key identifier), and is neither stored nor processed; the stored one is
   left as it is;
3. commit the raw bytes to the store (``hl7_message``), so that nothing is
   acknowledged before it is durable; if the store is down, answer ``AR``
   (ERR 207) and keep nothing;
4. decode and split (:mod:`~ihe.hl7v2.er7`), check MSH-9, MSH-10, MSH-11 and
   MSH-12, and hand the message to the handler of its type and event, in one
   transaction that also records the outcome and the acknowledgement (``AA``,
   with an ERR ``W`` or ``I`` for each warning the handler returns);
5. if anything fails, roll the processing back and record the error and its
   acknowledgement (``AE``/``AR`` with ERR) in a transaction of its own.

Messages of one sender and MSH-10 are processed one at a time (under one of
64 locks chosen by that key), so a resend racing its original waits for the
original's answer.

Queries (``QBP``) are reads and take another path: they are neither stored
nor deduplicated (a query sent twice is answered twice), MSH-10 and MSH-11
are checked as for any message, and the query's handler answers with its own
response message (``RSP``, :mod:`ihe.hl7v2.query`) and audits it, in one
transaction. A query that cannot be read, or whose MSH is refused, is
answered with an ``RSP`` ``AR`` or ``AE`` with ERR, never with a general
acknowledgement; such a refusal is logged, not audited, as no query was run.

Routes (HL7 v2.5 and IHE):

=================================  =========================================
``SIU^S12..S15, S17, S26``         RAD-48 Appointment Notification
``ORM^O01``, ``OMI^O23``           RAD-4 Procedure Scheduled (order hints)
``ADT^A01/A04/A05/A08``            ITI-8 Patient Identity Feed
``ADT^A02/A03/A06/A07/A11-A13``    PAM ITI-31 movements, read for their PID
``ADT^A28/A31/A40/A47``            ITI-30 Patient Identity Management
``QBP^Q23``, answered ``RSP^K23``  ITI-9 PIX Query
``QBP^Q22``, answered ``RSP^K22``  ITI-21 Patient Demographics Query
=================================  =========================================

Limitations
-----------
Only production messages (MSH-11 ``P``) are processed; ``T`` and ``D`` are
rejected with ``AR`` 202. Keys are never cut to fit the store: an MSH-10
longer than 199 characters (its HL7 v2.5 length) or an MSH-3 or MSH-4 longer
than 227 (the HD length) is answered ``AE`` 102 at that field and not
stored. An ``ACK`` received is stored and never answered, as HL7 forbids
acknowledging an acknowledgement. The per-key lock lives in
this process: one MLLP listener per database. A frame above
``SPIDERS_MLLP_MAX_FRAME`` is answered ``AR`` and not stored.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable, Mapping

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from ihe.hl7v2 import ack, er7
from ihe.hl7v2.application import Context, Handler, Outcome
from ihe.hl7v2.codes import AckCode, ErrorCode, ProcessingId
from ihe.hl7v2.listener import MllpListener, Reply
from ihe.hl7v2.query import QueryRoute, refuse
from ihe.pdq import iti21_patient_demographics_query
from ihe.pix import (
    iti8_patient_identity_feed,
    iti9_pix_query,
    iti30_patient_identity_management,
)
from ihe.swf import rad4_procedure_scheduled, rad48_appointment_notification
from ihe.tls import server_context
from server.config import Settings
from server.db import Database
from server.errors import MessageError, MessageRejected, SpidersError
from server.models import Hl7Message, Hl7Outcome, utcnow

logger = logging.getLogger(__name__)

# HL7 v2.5 lengths of MSH-10 (ST) and of MSH-3/MSH-4 (HD): the store's key
# columns hold them whole (``sender`` is 512 wide, MSH-3|MSH-4 at most 455).
MAX_CONTROL_ID = 199
MAX_HD = 227
_BLANK = b"\r\n \t"

LOG_ACKNOWLEDGED = "message acknowledged"
LOG_DUPLICATE = "duplicate message: previous acknowledgement sent again"
LOG_KEY_REUSED = "message control ID reused for another message: refused"
LOG_REFUSED = "message refused"
LOG_FAILED = "message processing failed"
LOG_NOT_STORED = "message not stored: the message store is unavailable"
LOG_OVERSIZED = "frame above the size limit refused"
LOG_ACK_RECEIVED = "acknowledgement received and not answered"
LOG_QUERY_ANSWERED = "query answered"
KEY_LOCKS = 64

ROUTES: Mapping[tuple[str, str], Handler] = {
    **rad48_appointment_notification.HANDLERS,
    **rad4_procedure_scheduled.HANDLERS,
    **iti8_patient_identity_feed.HANDLERS,
    **iti30_patient_identity_management.HANDLERS,
}

QUERY_ROUTES: Mapping[tuple[str, str], QueryRoute] = {
    **iti9_pix_query.QUERIES,
    **iti21_patient_demographics_query.QUERIES,
}

_OUTCOME = {
    AckCode.APPLICATION_ACCEPT: Hl7Outcome.ACCEPTED,
    AckCode.APPLICATION_ERROR: Hl7Outcome.ERROR,
    AckCode.APPLICATION_REJECT: Hl7Outcome.REJECTED,
    AckCode.COMMIT_ACCEPT: Hl7Outcome.ACCEPTED,
    AckCode.COMMIT_ERROR: Hl7Outcome.ERROR,
    AckCode.COMMIT_REJECT: Hl7Outcome.REJECTED,
}


def make_listener(
    settings: Settings,
    db: Database,
    on_committed: Callable[[], object] | None = None,
    on_tls_failure: Callable[[str, str], None] | None = None,
) -> MllpListener:
    """The MLLP listener of ``SPIDERS_MLLP_*`` over a :class:`Receiver`, not started.

    TLS is on when ``SPIDERS_MLLP_TLS_CERT`` and ``_KEY`` are set; client
    certificates are then required when ``SPIDERS_MLLP_TLS_CLIENT_CA`` is.
    """
    tls = None
    if settings.mllp_tls_cert is not None and settings.mllp_tls_key is not None:
        tls = server_context(
            settings.mllp_tls_cert, settings.mllp_tls_key, settings.mllp_tls_client_ca
        )
    return MllpListener(
        Receiver(db, settings, on_committed=on_committed),
        settings.mllp_host,
        settings.mllp_port,
        max_frame=settings.mllp_max_frame,
        ssl_context=tls,
        on_tls_failure=on_tls_failure,
        max_connections=settings.mllp_max_connections,
        idle_seconds=settings.mllp_idle_seconds,
    )


class Receiver:
    """The frame handler of the MLLP listener.

    Parameters
    ----------
    db : Database
        Where messages are stored and processed.
    settings : Settings
        ``hl7_default_charset`` and what handlers need.
    routes : mapping, optional
        ``(MSH-9.1, MSH-9.2)`` → handler; :data:`ROUTES` by default.
    on_committed : callable, optional
        Run after the ACK of a message whose handler left work for the task
        queue (``server.tasks.dispatch_due`` in ``spiders serve``).
    queries : mapping, optional
        ``(MSH-9.1, MSH-9.2)`` → query route; :data:`QUERY_ROUTES` by default.
    """

    def __init__(
        self,
        db: Database,
        settings: Settings,
        routes: Mapping[tuple[str, str], Handler] | None = None,
        on_committed: Callable[[], object] | None = None,
        queries: Mapping[tuple[str, str], QueryRoute] | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.routes = dict(ROUTES if routes is None else routes)
        self.queries = dict(QUERY_ROUTES if queries is None else queries)
        self.types = {message_type for message_type, _ in [*self.routes, *self.queries]}
        self.on_committed = on_committed
        self._locks = [threading.Lock() for _ in range(KEY_LOCKS)]

    def handle(self, payload: bytes, peer: str) -> Reply:
        """Store, process and answer one frame; never raises."""
        try:
            msh: er7.Segment | None = er7.read_header(payload)
        except MessageError:
            msh = None
        except Exception as exc:
            # A header our reader did not foresee: answered like an unreadable one.
            _log_failure(exc, {"peer": peer})
            msh = None
        try:
            return self._handle(payload, msh, peer)
        except Exception as exc:
            # Our own failure outside processing: answer, keep the connection.
            _log_failure(exc, {"peer": peer})
            detail = ack.ErrorDetail(
                ErrorCode.APPLICATION_INTERNAL_ERROR,
                message="the message could not be handled; send it again later",
            )
            return Reply(self._answer(msh, AckCode.APPLICATION_REJECT, [detail], None))

    def _handle(self, payload: bytes, msh: er7.Segment | None, peer: str) -> Reply:
        route = self.queries.get(_key_of(msh)) if msh is not None else None
        if msh is not None and route is not None:
            return self._query(payload, msh, route, peer)
        try:
            sender, control_id = _keys(msh)
        except MessageError as exc:
            return self._refuse_unstored(msh, exc)
        lock = self._locks[zlib.crc32(f"{sender}\x00{control_id}".encode()) % KEY_LOCKS]
        with lock:
            try:
                row_id, previous = self._store(payload, msh, sender, control_id, peer)
            except MessageError as exc:
                logger.warning(LOG_KEY_REUSED, extra={"control_id": control_id})
                return self._refuse_unstored(msh, exc)
            except SQLAlchemyError:
                logger.error(LOG_NOT_STORED, extra={"control_id": control_id})
                code, detail = (
                    AckCode.APPLICATION_REJECT,
                    ack.ErrorDetail(
                        ErrorCode.APPLICATION_INTERNAL_ERROR,
                        message="the message could not be stored; send it again later",
                    ),
                )
                return Reply(self._answer(msh, code, [detail], None))
            if previous is not None:
                logger.info(LOG_DUPLICATE, extra={"control_id": control_id})
                return Reply(previous.ack)
            return self._process(row_id, payload, msh, sender, peer)

    def handle_oversized(self, head: bytes, size: int, peer: str) -> Reply:
        """Answer ``AR`` to a frame above the limit; nothing is stored."""
        try:
            msh: er7.Segment | None = er7.read_header(head)
        except MessageError:
            msh = None
        logger.warning(
            LOG_OVERSIZED,
            extra={"peer": peer, "bytes": size, "limit": self.settings.mllp_max_frame},
        )
        detail = ack.ErrorDetail(
            ErrorCode.APPLICATION_INTERNAL_ERROR,
            message=f"message of {size} bytes above the limit of "
            f"{self.settings.mllp_max_frame} bytes",
        )
        return Reply(self._answer(msh, AckCode.APPLICATION_REJECT, [detail], None))

    def _refuse_unstored(self, msh: er7.Segment | None, exc: MessageError) -> Reply:
        """Answer a message that cannot be stored under its key; keep nothing.

        An acknowledgement is never answered, even refused.
        """
        code, detail = ack.for_exception(exc)
        logger.warning(
            LOG_REFUSED,
            extra={
                "ack": code.value,
                "error": int(detail.code),
                "location": "^".join(str(p) for p in detail.location),
            },
        )
        if msh is not None and _key_of(msh)[0] == ack.ACK:
            return Reply(None)
        version: str | None = None
        if msh is not None:
            try:
                version = er7.version_id(msh.value(12))
            except MessageError:
                version = None
        return Reply(self._answer(msh, code, [detail], version))

    def _store(
        self,
        payload: bytes,
        msh: er7.Segment | None,
        sender: str,
        control_id: str | None,
        peer: str,
    ) -> tuple[int, Hl7Message | None]:
        """The stored row's id, and the row when it was already answered.

        Raises
        ------
        MessageError
            The key is already used by another message (ERR-3 205).
        """
        with self.db.session() as session:
            existing = _find(session, sender, control_id)
            if existing is not None:
                return existing.id, _previous(existing, payload)
            row = Hl7Message(
                sender=sender,
                control_id=control_id,
                message_type=_type_of(msh),
                peer=peer,
                raw=payload,
            )
            session.add(row)
            try:
                session.flush()
            except IntegrityError:
                # Stored meanwhile by another process sharing the database.
                session.rollback()
                again = _find(session, sender, control_id)
                assert again is not None
                return again.id, _previous(again, payload)
            return row.id, None

    def _process(
        self,
        row_id: int,
        payload: bytes,
        msh: er7.Segment | None,
        sender: str,
        peer: str,
    ) -> Reply:
        version: str | None = None
        try:
            msg = er7.parse_bytes(payload, self.settings.hl7_default_charset)
            msh = msg.msh
            version = msg.version
            handler = self._route(msg)
            if handler is None:
                return self._record_unanswered(row_id, msg)
            context = Context(self.settings, sender, peer.rsplit(":", 1)[0])
            with self.db.session() as session:
                outcome = handler(session, msg, context)
                warnings = list(outcome.warnings)
                answer = self._answer(
                    msh, AckCode.APPLICATION_ACCEPT, warnings, version
                )
                sent = _sent(msh, AckCode.APPLICATION_ACCEPT)
                _record(session, row_id, sent, answer, outcome)
        except Exception as exc:
            return self._refuse(row_id, msh, version, exc)
        logger.info(
            LOG_ACKNOWLEDGED,
            extra={
                "control_id": msg.control_id,
                "type": f"{msg.message_type}^{msg.event}",
                "ack": AckCode.APPLICATION_ACCEPT.value,
            },
        )
        after = self.on_committed if outcome.dispatch else None
        return Reply(answer, after)

    def _query(
        self, payload: bytes, msh: er7.Segment, route: QueryRoute, peer: str
    ) -> Reply:
        """Answer a query with its response; nothing is stored but the audit."""
        qpd: er7.Segment | None = None
        try:
            msg = er7.parse_bytes(payload, self.settings.hl7_default_charset)
            msh, qpd = msg.msh, msg.segment("QPD")
            _check_control(msg)
            sender, _ = _keys(msh)
            er7.version_id(msg.msh.value(12))  # an unsupported MSH-12: AR 203
            context = Context(self.settings, sender, peer.rsplit(":", 1)[0])
            with self.db.session() as session:
                answer = route.handler(session, msg, context)
        except Exception as exc:
            if isinstance(exc, SpidersError):
                code, detail = ack.for_exception(exc)
                logger.warning(
                    LOG_REFUSED,
                    extra={
                        "control_id": msh.value(10),
                        "ack": code.value,
                        "error": int(detail.code),
                        "location": "^".join(str(p) for p in detail.location),
                    },
                )
            else:
                _log_failure(exc, {"control_id": msh.value(10)})
            default = self.settings.hl7_default_charset
            answer = refuse(msh, route.spec, exc, qpd=qpd, default_charset=default)
            return Reply(answer.message)
        logger.info(
            LOG_QUERY_ANSWERED,
            extra={
                "control_id": msg.control_id,
                "type": f"{msg.message_type}^{msg.event}",
                "ack": answer.ack_code.value,
                "status": answer.status.value,
                "hits": answer.hits,
            },
        )
        return Reply(answer.message)

    def _route(self, msg: er7.Message) -> Handler | None:
        """The handler for `msg`; None for an ACK, which is not answered.

        Raises
        ------
        MessageError
            MSH-9 or MSH-10 missing (ERR-3 101).
        MessageRejected
            Unsupported processing id, type or event (202, 200, 201).
        """
        if not msg.message_type:
            raise MessageError(
                "MSH-9 is empty", ErrorCode.REQUIRED_FIELD_MISSING, _at(9)
            )
        if msg.message_type == ack.ACK:
            return None
        _check_control(msg)
        if msg.message_type not in self.types:
            raise MessageRejected(
                f"message type {msg.message_type!r} is not supported",
                ErrorCode.UNSUPPORTED_MESSAGE_TYPE,
                (*_at(9), 1, 1),
            )
        handler = self.routes.get((msg.message_type, msg.event))
        if handler is None:
            raise MessageRejected(
                f"event {msg.event!r} of {msg.message_type} is not supported",
                ErrorCode.UNSUPPORTED_EVENT_CODE,
                (*_at(9), 1, 2),
            )
        return handler

    def _refuse(
        self, row_id: int, msh: er7.Segment | None, version: str | None, exc: Exception
    ) -> Reply:
        code, detail = ack.for_exception(exc)
        control_id = msh.value(10) if msh is not None else None
        if isinstance(exc, SpidersError):
            logger.warning(
                LOG_REFUSED,
                extra={
                    "control_id": control_id,
                    "ack": code.value,
                    "error": int(detail.code),
                    "location": "^".join(str(p) for p in detail.location),
                },
            )
        else:
            _log_failure(exc, {"control_id": control_id})
        answer = self._answer(msh, code, [detail], version)
        text = f"{int(detail.code)} {detail.code.text}: {detail.message}"
        try:
            with self.db.session() as session:
                _record(session, row_id, _sent(msh, code), answer, Outcome(text))
        except SQLAlchemyError:
            logger.error(LOG_NOT_STORED, extra={"control_id": control_id})
        return Reply(answer)

    def _record_unanswered(self, row_id: int, msg: er7.Message) -> Reply:
        logger.warning(LOG_ACK_RECEIVED, extra={"control_id": msg.control_id})
        with self.db.session() as session:
            row = session.get(Hl7Message, row_id)
            assert row is not None
            row.outcome = Hl7Outcome.ACCEPTED
            row.detail = "acknowledgement received; not answered"
            row.processed_at = utcnow()
        return Reply(None)

    def _answer(
        self,
        msh: er7.Segment | None,
        code: AckCode,
        errors: list[ack.ErrorDetail],
        version: str | None,
    ) -> bytes | None:
        if msh is not None and not ack.wanted(msh, code):
            return None
        return ack.build(msh, code, errors, version=version)


def _check_control(msg: er7.Message) -> None:
    """Refuse an empty MSH-10 (ERR-3 101) and any MSH-11 but ``P`` (``AR`` 202)."""
    if not msg.control_id.strip():
        raise MessageError("MSH-10 is empty", ErrorCode.REQUIRED_FIELD_MISSING, _at(10))
    if msg.msh.value(11).strip().upper() != ProcessingId.PRODUCTION:
        raise MessageRejected(
            f"processing id {msg.msh.value(11)!r} (MSH-11) is not accepted; only P",
            ErrorCode.UNSUPPORTED_PROCESSING_ID,
            _at(11),
        )


def _keys(msh: er7.Segment | None) -> tuple[str, str | None]:
    """The store's key of a message: ``MSH-3|MSH-4`` and MSH-10 (None if empty).

    Raises
    ------
    MessageError
        MSH-3, MSH-4 or MSH-10 longer than its HL7 v2.5 length, or a NUL
        character in the header, which no column can hold (ERR-3 102).
    """
    if msh is None:
        return "|", None
    for n in range(1, msh.size + 1):
        values = [s for rep in msh.field(n) for c in rep for s in c] if n > 2 else []
        if er7.NUL in msh.raw(n) or any(er7.NUL in value for value in values):
            raise MessageError(
                "a field holds a NUL character, which no field may hold",
                ErrorCode.DATA_TYPE_ERROR,
                _at(n),
            )
    for n in (3, 4):
        if len(msh.raw(n)) > MAX_HD:
            raise MessageError(
                f"MSH-{n} is longer than {MAX_HD} characters (HD)",
                ErrorCode.DATA_TYPE_ERROR,
                _at(n),
            )
    control_id = msh.value(10).strip() or None
    if control_id is not None and len(control_id) > MAX_CONTROL_ID:
        raise MessageError(
            f"MSH-10 is longer than {MAX_CONTROL_ID} characters",
            ErrorCode.DATA_TYPE_ERROR,
            _at(10),
        )
    return f"{msh.raw(3)}|{msh.raw(4)}", control_id


def _previous(row: Hl7Message, payload: bytes) -> Hl7Message | None:
    """`row` when `payload` resends its answered message; None to process it.

    Raises
    ------
    MessageError
        `payload` is another message under `row`'s key (ERR-3 205).
    """
    if resend_form(row.raw) != resend_form(payload):
        raise MessageError(
            "MSH-10 was already used by another message of this sender; "
            "send new messages with new control IDs",
            ErrorCode.DUPLICATE_KEY_IDENTIFIER,
            _at(10),
        )
    return row if row.outcome != Hl7Outcome.RECEIVED else None


def resend_form(raw: bytes) -> bytes:
    """What two sendings of one message share: MSH-7 blanked, ends trimmed.

    MSH-7 is the time the message was sent, which a sender may renew when it
    sends again; trailing segment terminators and white space are framing.
    """
    body = raw.strip(_BLANK).removeprefix(er7.UTF8_BOM)
    ends = [i for i in (body.find(b"\r"), body.find(b"\n")) if i >= 0]
    cut = min(ends) if ends else len(body)
    header, rest = body[:cut], body[cut:]
    if header.startswith(b"MSH") and len(header) > 3:
        fields = header.split(header[3:4])
        # fields[0] is "MSH", so MSH-n is fields[n - 1]: MSH-7 is fields[6].
        if len(fields) > 6:
            fields[6] = b""
        header = header[3:4].join(fields)
    return header + rest


def _key_of(msh: er7.Segment) -> tuple[str, str]:
    """``(MSH-9.1, MSH-9.2)`` as routes name them."""
    return msh.value(9, 1, 1).strip().upper(), msh.value(9, 1, 2).strip().upper()


def _log_failure(exc: BaseException, fields: dict[str, object]) -> None:
    """Log our own failure: its kind at ERROR, its traceback at DEBUG.

    The traceback may quote message content, that is patient data.
    """
    logger.error(LOG_FAILED, extra={**fields, "error": type(exc).__name__})
    logger.debug(LOG_FAILED, exc_info=exc)


def _find(session: Session, sender: str, control_id: str | None) -> Hl7Message | None:
    if control_id is None:
        return None
    return session.scalar(
        select(Hl7Message).where(
            Hl7Message.sender == sender, Hl7Message.control_id == control_id
        )
    )


def _record(
    session: Session, row_id: int, code: AckCode, answer: bytes | None, outcome: Outcome
) -> None:
    session.execute(
        update(Hl7Message)
        .where(Hl7Message.id == row_id)
        .values(
            outcome=_OUTCOME[code],
            ack_code=code.value,
            ack=answer,
            detail=outcome.detail,
            processed_at=utcnow(),
        )
    )


def _sent(msh: er7.Segment | None, code: AckCode) -> AckCode:
    """The code as written: its commit form in enhanced mode."""
    return code.commit if msh is not None and ack.enhanced(msh) else code


def _type_of(msh: er7.Segment | None) -> str:
    if msh is None:
        return ""
    return f"{msh.value(9, 1, 1)}^{msh.value(9, 1, 2)}".strip("^")[:32]


def _at(field: int) -> tuple[str | int, ...]:
    return (er7.MSH, 1, field)
