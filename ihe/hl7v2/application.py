"""What a transaction's message handler receives and returns.

The receiver (:mod:`ihe.hl7v2.receiver`) stores each message, then calls the
handler registered for its type and event inside one database transaction.
A handler maps the message, changes the records it owns and returns an
:class:`Outcome`; it raises an exception of the error tree to refuse the
message, and the acknowledgement builder turns that exception into ``AE`` or
``AR`` with its ERR segment. The handler never builds an acknowledgement.

A refusal that no table 0357 code names (a PID whose demographics disagree
with the patient index) is an :class:`ApplicationRuleError`: ERR-3 207 with the
application error code in ERR-5, as the French CI-SIS profiles answer it.

A message accepted with something the sender should know (an INS kept
without linking) is answered ``AA`` with ERR segments of severity ``W`` or
``I`` (ERR-4, HL7 table 0516) and ERR-3 0 (message accepted): the handler
returns them in :attr:`Outcome.warnings` as :class:`ErrorDetail` values.

Limitations
-----------
A handler sees one message at a time and cannot answer with anything but the
general acknowledgement (no ``ORR``, ``ORL`` or ``SRR`` responses).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from ihe.hl7v2.codes import ApplicationErrorCode, ErrorCode, Severity
from ihe.hl7v2.er7 import Message
from server.config import Settings
from server.errors import MessageError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    """Where a message came from.

    Attributes
    ----------
    settings : Settings
        The configuration of this process.
    sender : str
        ``MSH-3|MSH-4`` as received: the sending application and facility.
    peer : str
        The network address the message arrived from (host only).
    """

    settings: Settings
    sender: str
    peer: str


@dataclass(frozen=True)
class ErrorDetail:
    """One ERR segment.

    Parameters
    ----------
    code : ErrorCode
        ERR-3, HL7 table 0357.
    location : tuple of str or int
        ERR-2: segment ID, sequence, field, repetition, component,
        subcomponent; as many as known.
    message : str
        ERR-8, for the sender's operators; never patient data.
    severity : Severity
        ERR-4, HL7 table 0516.
    application : ApplicationErrorCode, optional
        ERR-5, the application's own code for the error.
    """

    code: ErrorCode
    location: tuple[str | int, ...] = ()
    message: str = ""
    severity: Severity = Severity.ERROR
    application: ApplicationErrorCode | None = None


@dataclass(frozen=True)
class Outcome:
    """What a handler did, for the message store and the log.

    Attributes
    ----------
    detail : str
        One line naming what changed by internal ids only (never patient
        data): ``registration 5f0c... created``.
    dispatch : bool
        True when work is waiting for the task queue (a new or rescheduled
        registration): the receiver dispatches it once the ACK is sent.
    warnings : tuple of ErrorDetail
        ERR segments of severity ``W`` or ``I`` (ERR-3 0) sent with the
        ``AA``: what was accepted but not done as the sender may expect.
    """

    detail: str
    dispatch: bool = False
    warnings: tuple[ErrorDetail, ...] = ()


class ApplicationRuleError(MessageError):
    """A message refused by an application rule: ``AE``, ERR-3 207, ERR-5 the rule.

    Parameters
    ----------
    message : str
        One sentence for the sender (ERR-8); never patient data.
    application_code : ApplicationErrorCode
        ERR-5, the rule the message breaks.
    location : tuple of str or int
        ERR-2, the field that breaks it.
    """

    def __init__(
        self,
        message: str,
        application_code: ApplicationErrorCode,
        location: Sequence[str | int] = (),
    ) -> None:
        super().__init__(message, ErrorCode.APPLICATION_INTERNAL_ERROR, location)
        self.application_code = application_code


Handler = Callable[[Session, Message, Context], Outcome]
