"""HL7 v2 data types to Python values: DTM/TS, DT, CX and EI.

Date-times (DTM, and TS component 1) follow HL7 v2.5 section 2.A.22:
``YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]``. A value with an offset
keeps it; an offset beyond 14 hours or 59 minutes is refused. A value
without one is the sender's local time, read as Europe/Paris wall-clock time
on that date (summer or winter offset as that date has it); a local time
that occurs twice (the autumn change, 02:00-03:00) or never (the spring
change) is refused rather than guessed.

A CX (extended composite ID, PID-3 and MRG-1) becomes an
:class:`~mappings.identifiers.Identifier` whose assigning authority is the
universal ID of CX-4 (CX-4.2, an OID when CX-4.3 is ``ISO``) or, without one,
its namespace ID (CX-4.1). An EI (SCH-1, SCH-2, ORC-2...) is read the same way
from EI-2/EI-3.

Values longer than the patient index and registrations can keep are refused
(ERR-3 102 at the component), never cut: an identifier (CX-1, EI-1) or an
assigning authority (CX-4) of more than 128 characters, a CX-5 type code of
more than 16, an EI authority of more than 256.

Limitations
-----------
A date-time needs at least a day (``YYYYMMDD``); year-only and month-only
values are refused where a date-time is required and read as unknown for a
birth date. A CX without any assigning authority is refused, and an
authority named by its namespace ID only (``CHU_X``) is another domain than
the same authority named by its OID: a sender must name it one way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from ihe.hl7v2.codes import ErrorCode
from ihe.hl7v2.er7 import Repetition, component
from mappings.identifiers import Identifier
from server.errors import MessageError

PARIS = ZoneInfo("Europe/Paris")
Location = tuple[str | int, ...]

# Widest values the patient index and registration columns hold.
MAX_IDENTIFIER = 128
MAX_AUTHORITY = 128
MAX_TYPE_CODE = 16
MAX_EI_AUTHORITY = 256
# Widest UTC offset in use (+14:00, Kiribati) and the minutes of an hour.
MAX_OFFSET_HOURS = 14
MAX_OFFSET_MINUTES = 59

_DTM = re.compile(
    r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?"
    r"(?:([+-])(\d{2})(\d{2}))?$"
)


@dataclass(frozen=True)
class Cx:
    """The parts of one CX that identify a patient."""

    id: str
    namespace: str
    universal_id: str
    universal_id_type: str
    type_code: str

    def identifier(self) -> Identifier:
        """The patient index's identifier for this CX."""
        return Identifier(
            system=self.universal_id or self.namespace,
            value=self.id,
            type_code=self.type_code or None,
            namespace=self.namespace,
        )


def parse_dtm(value: str, where: Location) -> datetime | None:
    """An aware date-time from a DTM, ``None`` when empty.

    Raises
    ------
    MessageError
        Not a DTM with at least a day, a date or UTC offset that does not
        exist, or a local time that is ambiguous or skipped in Europe/Paris
        (ERR-3 102).
    """
    text = value.strip()
    if not text:
        return None
    match = _DTM.match(text)
    if match is None or match.group(3) is None:
        raise _error(f"{text!r} is not a date-time (YYYYMMDD[HHMM[SS]][+ZZZZ])", where)
    year, month, day, hour, minute, second, fraction, sign, oh, om = match.groups()
    try:
        naive = datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((fraction or "0").ljust(6, "0")),
        )
    except ValueError as exc:
        raise _error(f"{text!r} is not a valid date-time", where) from exc
    if sign:
        if int(oh) > MAX_OFFSET_HOURS or int(om) > MAX_OFFSET_MINUTES:
            raise _error(f"{text!r} has no valid UTC offset (+/-HHMM)", where)
        offset = timedelta(hours=int(oh), minutes=int(om))
        return naive.replace(tzinfo=timezone(-offset if sign == "-" else offset))
    return paris_time(naive, where)


def paris_time(naive: datetime, where: Location) -> datetime:
    """`naive` as Europe/Paris wall-clock time, refusing DST ambiguity.

    Raises
    ------
    MessageError
        The local time occurs twice or never on that date (ERR-3 102).
    """
    early = naive.replace(tzinfo=PARIS, fold=0)
    late = naive.replace(tzinfo=PARIS, fold=1)
    if early.utcoffset() == late.utcoffset():
        return early
    round_trip = early.astimezone(UTC).astimezone(PARIS).replace(tzinfo=None)
    what = "ambiguous (it occurs twice)" if round_trip == naive else "skipped"
    raise _error(
        f"local time {naive.isoformat()} is {what} in Europe/Paris at the "
        "daylight-saving change; send it with its UTC offset",
        where,
    )


def parse_date(value: str, where: Location) -> date | None:
    """The date of a DT or DTM; ``None`` when empty or less precise than a day.

    Raises
    ------
    MessageError
        Not a date (ERR-3 102).
    """
    text = value.strip()
    if not text:
        return None
    match = _DTM.match(text)
    if match is None:
        raise _error(f"{text!r} is not a date", where)
    if match.group(3) is None:
        return None
    try:
        return date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    except ValueError as exc:
        raise _error(f"{text!r} is not a valid date", where) from exc


def parse_cx(rep: Repetition, where: Location) -> Cx | None:
    """One CX repetition; ``None`` when it holds no ID.

    Raises
    ------
    MessageError
        An ID without any assigning authority (ERR-3 204, at CX-4), or a
        component longer than the index keeps (102, at that component).
    """
    ident = component(rep, 1).strip()
    if not ident:
        return None
    cx = Cx(
        id=ident,
        namespace=component(rep, 4, 1).strip(),
        universal_id=component(rep, 4, 2).strip(),
        universal_id_type=component(rep, 4, 3).strip(),
        type_code=component(rep, 5).strip(),
    )
    if not (cx.namespace or cx.universal_id):
        raise MessageError(
            "a patient identifier has no assigning authority (CX-4)",
            ErrorCode.UNKNOWN_KEY_IDENTIFIER,
            (*where, 4),
        )
    check_length(cx.id, MAX_IDENTIFIER, (*where, 1))
    check_length(cx.namespace, MAX_AUTHORITY, (*where, 4, 1))
    check_length(cx.universal_id, MAX_AUTHORITY, (*where, 4, 2))
    check_length(cx.type_code, MAX_TYPE_CODE, (*where, 5))
    return cx


def parse_ei(
    rep: Repetition, fallback_namespace: str = "", where: Location = ()
) -> Identifier | None:
    """An EI as an identifier: EI-1 in the authority EI-3 (or EI-2).

    `fallback_namespace` (usually the sending facility) stands in for an EI
    that names no authority; `where` locates the EI for errors.

    Raises
    ------
    MessageError
        A component longer than a registration keeps (ERR-3 102).
    """
    value = component(rep, 1).strip()
    if not value:
        return None
    namespace = component(rep, 2).strip()
    check_length(value, MAX_IDENTIFIER, (*where, 1))
    check_length(namespace, MAX_EI_AUTHORITY, (*where, 2))
    check_length(component(rep, 3).strip(), MAX_EI_AUTHORITY, (*where, 3))
    system = component(rep, 3).strip() or namespace or fallback_namespace
    return Identifier(system=system, value=value, namespace=namespace)


def check_length(value: str, limit: int, where: Location) -> None:
    """Refuse `value` when longer than `limit` characters.

    Raises
    ------
    MessageError
        ERR-3 102 at `where`; the value is never cut, as a cut key could
        name another record.
    """
    if len(value) > limit:
        raise _error(
            f"a value of {len(value)} characters is longer than the "
            f"{limit} this field may hold",
            where,
        )


def _error(message: str, where: Location) -> MessageError:
    return MessageError(message, ErrorCode.DATA_TYPE_ERROR, where)
