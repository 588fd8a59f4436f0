"""General acknowledgement (``ACK``) messages, original and enhanced mode.

HL7 v2.5 section 2.9 (acknowledgement rules) and 2.14.1 (``ACK``): the ACK
answers on the same connection, its MSH swaps the sending and receiving
application and facility of the message, copies MSH-11 and MSH-12, and names
the event in MSH-9 (``ACK^S12^ACK``). MSA-1 is the acknowledgement code and
MSA-2 the received MSH-10. Every error is one ERR segment: ERR-2 its location
(ERL ``SEG^seq^field^rep^comp^sub``), ERR-3 the table 0357 code, ERR-4 the
severity and ERR-8 a sentence for the sender; for v2.3 and v2.4 messages the
older ERR-1 (ELD) is written as well. An ``AA`` may carry ERR segments too:
warnings (``W``) and information (``I``) about a message accepted, with
ERR-3 0 (message accepted), as the HL7 v2.5 ERR segment allows (ERR-4,
table 0516).

:func:`for_exception` is the one place where an exception becomes an answer:
``MessageRejected`` gives ``AR``, other ``MessageError`` ``AE`` with their
code and location (and ERR-5 for an application rule), the error tree's
input, identity and conflict errors ``AE`` with 204 or 205, anything else
``AE`` 207 (internal error).

Limitations
-----------
In enhanced mode (MSH-15/MSH-16 present) only the accept acknowledgement is
sent (``CA``/``CE``/``CR``), after processing so that it carries the outcome;
application acknowledgements (MSH-16) are never sent. The ACK is written with
the default delimiters ``|^~\\&`` whatever the message used, and without
the NUL characters a refused header may have held.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from ihe.hl7v2 import er7
from ihe.hl7v2.application import ApplicationRuleError
from ihe.hl7v2.application import ErrorDetail as ErrorDetail  # ack.ErrorDetail
from ihe.hl7v2.codes import (
    APPLICATION_ERROR_CODE_SYSTEM,
    CHARSETS,
    ELD_VERSIONS,
    ERROR_CODE_SYSTEM,
    AckCode,
    AckCondition,
    ErrorCode,
)
from server.errors import (
    Conflict,
    IdentityError,
    InputError,
    MessageError,
    MessageRejected,
    UnknownReference,
)

logger = logging.getLogger(__name__)

ACK = "ACK"
DEFAULT_VERSION = "2.5"
PARIS = ZoneInfo("Europe/Paris")


def for_exception(exc: BaseException) -> tuple[AckCode, ErrorDetail]:
    """The acknowledgement code and ERR segment that answer `exc`."""
    if isinstance(exc, MessageError):
        code = (
            AckCode.APPLICATION_REJECT
            if isinstance(exc, MessageRejected)
            else AckCode.APPLICATION_ERROR
        )
        application = (
            exc.application_code if isinstance(exc, ApplicationRuleError) else None
        )
        return code, ErrorDetail(
            ErrorCode(exc.code), exc.location, str(exc), application=application
        )
    if isinstance(exc, UnknownReference):
        error = ErrorCode.UNKNOWN_KEY_IDENTIFIER
    elif isinstance(exc, IdentityError | Conflict):
        error = ErrorCode.DUPLICATE_KEY_IDENTIFIER
    elif isinstance(exc, InputError):
        error = ErrorCode.DATA_TYPE_ERROR
    else:
        return AckCode.APPLICATION_ERROR, ErrorDetail(
            ErrorCode.APPLICATION_INTERNAL_ERROR,
            message="the message could not be processed; it is kept for review",
        )
    return AckCode.APPLICATION_ERROR, ErrorDetail(error, message=str(exc))


def enhanced(msh: er7.Segment) -> bool:
    """True when MSH-15 or MSH-16 asks for enhanced-mode acknowledgements."""
    return bool(msh.value(15).strip() or msh.value(16).strip())


def wanted(msh: er7.Segment, code: AckCode) -> bool:
    """Whether an acknowledgement with `code` is to be sent at all (MSH-15).

    Original mode always answers; enhanced mode answers as MSH-15 asks
    (``AL`` or empty: always, ``NE``: never, ``ER``: on error, ``SU``: on
    success).
    """
    if not enhanced(msh):
        return True
    condition = msh.value(15).strip().upper()
    accepted = code in (AckCode.APPLICATION_ACCEPT, AckCode.COMMIT_ACCEPT)
    if condition == AckCondition.NEVER:
        return False
    if condition == AckCondition.ERROR_ONLY:
        return not accepted
    if condition == AckCondition.SUCCESS_ONLY:
        return accepted
    return True


def build(
    msh: er7.Segment | None,
    code: AckCode,
    errors: Sequence[ErrorDetail] = (),
    *,
    version: str | None = None,
    now: datetime | None = None,
) -> bytes:
    """The ACK for a message whose header is `msh`, encoded for sending.

    Parameters
    ----------
    msh : Segment or None
        The received MSH (decoded, or read from the bytes); None when the
        frame held no readable MSH.
    code : AckCode
        The outcome; turned into its commit code in enhanced mode.
    errors : sequence of ErrorDetail
        One ERR segment each.
    version : str, optional
        The mapped version of the message, when it is supported; its MSH-12
        is then copied, else ``2.5`` is written.
    now : datetime, optional
        MSH-7; the current time in Europe/Paris when omitted.
    """
    if msh is not None and enhanced(msh):
        code = code.commit
    text = _text(msh, code, errors, version, now)
    label = msh.value(18).strip().upper() if msh is not None else ""
    codec = CHARSETS.get(label)
    if codec is None:
        # An empty or unknown MSH-18: keep the ACK within ASCII.
        return text.encode("ascii", errors="replace")
    return text.encode(codec, errors="replace")


def _text(
    msh: er7.Segment | None,
    code: AckCode,
    errors: Sequence[ErrorDetail],
    version: str | None,
    now: datetime | None,
) -> str:
    def copy(n: int) -> str:
        # A NUL the message held is refused, never sent back.
        text = er7.encode_field(msh.field(n)) if msh is not None else ""
        return text.replace(er7.NUL, "")

    event = msh.value(9, 1, 2) if msh is not None else ""
    msh_12 = copy(12) if version is not None else DEFAULT_VERSION
    label = msh.value(18).strip().upper() if msh is not None else ""
    header = [
        "MSH",
        er7.DEFAULT_ENCODING_CHARACTERS,
        copy(5),
        copy(6),
        copy(3),
        copy(4),
        (now or datetime.now(PARIS)).strftime("%Y%m%d%H%M%S%z"),
        "",
        f"{ACK}^{er7.escape(event)}^{ACK}" if event else ACK,
        uuid.uuid4().hex[:20].upper(),
        copy(11) or "P",
        msh_12,
        *[""] * 5,
        label if label in CHARSETS else "",
    ]
    msa = ["MSA", str(code), copy(10)]
    if errors:
        msa.append(er7.escape(errors[0].message))
    segments = ["|".join(header).rstrip("|"), "|".join(msa)]
    eld = version in ELD_VERSIONS
    segments += [_err(error, eld) for error in errors]
    return er7.SEGMENT_TERMINATOR.join(segments) + er7.SEGMENT_TERMINATOR


def _err(error: ErrorDetail, eld: bool) -> str:
    code = f"{int(error.code)}^{error.code.text}^{ERROR_CODE_SYSTEM}"
    location = "^".join(er7.escape(str(part)) for part in error.location)
    fields = ["ERR", "", location, code, str(error.severity), "", "", "", ""]
    fields[8] = er7.escape(error.message)
    if error.application is not None:
        fields[5] = "^".join(
            [
                str(int(error.application)),
                er7.escape(error.application.text),
                APPLICATION_ERROR_CODE_SYSTEM,
            ]
        )
    if eld:
        # ERR-1 (ELD) of v2.3/v2.4: segment^sequence^field^code&text&system.
        where = [str(p) for p in error.location[:3]]
        where += [""] * (3 - len(where))
        fields[1] = "^".join([*where, code.replace("^", "&")])
    return "|".join(fields)
