"""HL7 v2 SIU scheduling messages to a tumour-board registration.

The same :class:`~mappings.fhir_appointment.RegistrationRequest` as a FHIR
Appointment, read from (HL7 v2.5 chapter 10):

==============  ==============================================================
key             SCH-2 filler appointment ID (EI), else SCH-1 placer ID
start           TQ1-7, else SCH-11.4 (TQ start), else AIS-4, else AIL-6
end             TQ1-8, else SCH-11.5, else start + AIS-7 (units AIS-8)
board           AIL-3 location, else AIG-3 resource, else AIS-3 service (the
                board's type), qualified by its facility (PL-4 or MSH-4)
status          by event: S15 ``cancelled``, S17 ``entered-in-error``, S26
                ``noshow``; S12-S14 from SCH-25 (table 0278), ``booked`` when
                empty
patient         PID-3, every identifier (resolved by the patient index)
==============  ==============================================================

Date-times without an offset are Europe/Paris local times
(:func:`~mappings.hl7_types.parse_dtm`); an ambiguous one is refused. The
Appointment written for read-back always carries explicit offsets. An
appointment key (SCH-1, SCH-2) or board longer than a registration keeps is
refused (ERR-3 102), never cut.

Limitations
-----------
Only the first RGS group's AIS, AIG and AIL are read; several resource
groups, repeating appointments (TQ1 repeats) and SCH-6/SCH-7 reasons are not
mapped. A board read from HL7 is not the same board as a FHIR ``Location``
reference unless both name it alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ihe.hl7v2.codes import ErrorCode
from ihe.hl7v2.er7 import Message, Segment
from mappings.fhir_appointment import ACTIVE_STATUS, PatientRef, RegistrationRequest
from mappings.hl7_types import check_length, parse_dtm, parse_ei
from mappings.identifiers import Identifier, authority_to_system
from server.errors import MessageError

# Events and the registration status they set (None: from SCH-25).
EVENT_STATUS: dict[str, str | None] = {
    "S12": None,
    "S13": None,
    "S14": None,
    "S15": "cancelled",
    "S17": "entered-in-error",
    "S26": "noshow",
}
# SCH-25 filler status code (HL7 table 0278) → FHIR R4 Appointment.status.
FILLER_STATUS = {
    "PENDING": "pending",
    "WAITLIST": "waitlist",
    "BOOKED": "booked",
    "STARTED": "arrived",
    "COMPLETE": "fulfilled",
    "CANCELLED": "cancelled",
    "DC": "cancelled",
    "DELETED": "entered-in-error",
    "BLOCKED": "booked",
    "OVERBOOK": "booked",
    "NOSHOW": "noshow",
}
# AIS-8 duration units (ISO+ / ANSI codes senders use) → minutes.
DURATION_UNITS = {"MIN": 1, "M": 1, "S": 1 / 60, "H": 60, "HR": 60, "D": 1440}
DEFAULT_STATUS = "booked"
# Widest board reference and name a registration's board keeps.
MAX_BOARD = 256


@dataclass(frozen=True)
class SiuAppointment:
    """An SIU message mapped.

    Attributes
    ----------
    event : str
        MSH-9.2, ``S12`` to ``S26``.
    keys : tuple of Identifier
        The appointment's keys, filler (SCH-2) first, then placer (SCH-1).
    patient_identifiers : tuple of Identifier
        PID-3, in order.
    request : RegistrationRequest
        What a registration needs; its patient is referenced by the first
        identifier until the patient index resolves it.
    service : tuple of str
        AIS-3 code and text, the service booked (the board's type).
    """

    event: str
    keys: tuple[Identifier, ...]
    patient_identifiers: tuple[Identifier, ...]
    request: RegistrationRequest
    service: tuple[str, str]


def read_siu(
    msg: Message, patient_identifiers: tuple[Identifier, ...]
) -> SiuAppointment:
    """Map an SIU message; `patient_identifiers` are its PID-3 identifiers.

    Raises
    ------
    MessageError
        No SCH (ERR-3 100), no appointment key (101), a date-time that is
        not one or is ambiguous (102), an unknown SCH-25 (103), or no board
        for an active registration (101).
    """
    event = msg.event
    sch = msg.segment("SCH")
    if sch is None:
        raise MessageError(
            "the message has no SCH segment", ErrorCode.SEGMENT_SEQUENCE_ERROR, ("SCH",)
        )
    facility = msg.msh.value(4)
    keys = tuple(key for n in (2, 1) if (key := _key(sch, n, facility)) is not None)
    if not keys:
        raise MessageError(
            "neither SCH-2 nor SCH-1 identifies the appointment",
            ErrorCode.REQUIRED_FIELD_MISSING,
            ("SCH", 1, 2),
        )
    status = EVENT_STATUS.get(event) or _filler_status(sch)
    start, end = _timing(msg, sch)
    reference, display = _board(msg, facility)
    if reference is None and event == "S12" and status in ACTIVE_STATUS:
        raise MessageError(
            "no board: neither AIL-3, AIG-3 nor AIS-3 is present",
            ErrorCode.REQUIRED_FIELD_MISSING,
            ("AIL", 1, 3),
        )
    request = RegistrationRequest(
        status=status,
        start=start,
        end=end,
        patient=PatientRef(identifier=patient_identifiers[0]),
        location_reference=reference,
        location_display=display,
        identifier=keys[0],
        study_uids=(),
    )
    ais = msg.segment("AIS")
    service = (ais.value(3, 1, 1), ais.value(3, 1, 2)) if ais else ("", "")
    return SiuAppointment(event, keys, patient_identifiers, request, service)


def appointment_resource(appt: SiuAppointment, patient_id: str) -> dict[str, Any]:
    """The FHIR R4 Appointment kept for read-back of an SIU registration."""
    req = appt.request
    resource: dict[str, Any] = {
        "resourceType": "Appointment",
        "identifier": [
            {"system": authority_to_system(key.system), "value": key.value}
            for key in appt.keys
        ],
        "status": req.status,
        "participant": [
            {"actor": {"reference": f"Patient/{patient_id}"}, "status": "accepted"}
        ],
    }
    if req.start is not None:
        resource["start"] = req.start.isoformat()
    if req.end is not None:
        resource["end"] = req.end.isoformat()
    if appt.service[0]:
        coding = {"code": appt.service[0]}
        if appt.service[1]:
            coding["display"] = appt.service[1]
        resource["serviceType"] = [{"coding": [coding]}]
    if req.location_reference is not None:
        location: dict[str, Any] = {"reference": req.location_reference}
        if req.location_display is not None:
            location["display"] = req.location_display
        resource["participant"].append({"actor": location, "status": "accepted"})
    return resource


def _key(sch: Segment, n: int, facility: str) -> Identifier | None:
    reps = sch.field(n)
    return parse_ei(reps[0], facility, ("SCH", 1, n, 1)) if reps else None


def _filler_status(sch: Segment) -> str:
    code = sch.value(25).strip().upper()
    if not code:
        return DEFAULT_STATUS
    if code not in FILLER_STATUS:
        raise MessageError(
            f"filler status {code!r} (SCH-25) is not in HL7 table 0278",
            ErrorCode.TABLE_VALUE_NOT_FOUND,
            ("SCH", 1, 25),
        )
    return FILLER_STATUS[code]


def _timing(msg: Message, sch: Segment) -> tuple[datetime | None, datetime | None]:
    ais = msg.segment("AIS")
    tq1 = msg.segment("TQ1")
    ail = msg.segment("AIL")
    end: datetime | None = None
    if tq1 is not None and tq1.value(7).strip():
        start = parse_dtm(tq1.value(7), ("TQ1", 1, 7))
        end = parse_dtm(tq1.value(8), ("TQ1", 1, 8))
    elif sch.value(11, 1, 4).strip():
        start = parse_dtm(sch.value(11, 1, 4), ("SCH", 1, 11, 1, 4))
        end = parse_dtm(sch.value(11, 1, 5), ("SCH", 1, 11, 1, 5))
    elif ais is not None and ais.value(4).strip():
        start = parse_dtm(ais.value(4), ("AIS", 1, 4))
    elif ail is not None:
        start = parse_dtm(ail.value(6), ("AIL", 1, 6))
    else:
        start = None
    return start, end or _end_from_duration(ais, start)


def _end_from_duration(ais: Segment | None, start: datetime | None) -> datetime | None:
    if ais is None or start is None:
        return None
    try:
        duration = float(ais.value(7))
    except ValueError:
        return None
    unit = DURATION_UNITS.get(ais.value(8, 1, 1).strip().upper() or "MIN")
    if unit is None:
        return None
    return start + timedelta(minutes=duration * unit)


def _board(msg: Message, facility: str) -> tuple[str | None, str | None]:
    """The board as (location reference, display), from AIL, AIG or AIS.

    Raises
    ------
    MessageError
        A reference or name longer than a board keeps (ERR-3 102).
    """
    ail = msg.segment("AIL")
    if ail is not None:
        code = next((ail.value(3, 1, c) for c in (1, 2, 3) if ail.value(3, 1, c)), "")
        if code:
            where = ail.value(3, 1, 4) or facility
            display = ail.value(3, 1, 9)
            check_length(_reference(where, code), MAX_BOARD, ("AIL", 1, 3))
            check_length(display, MAX_BOARD, ("AIL", 1, 3, 1, 9))
            return _reference(where, code), display or None
    for name in ("AIG", "AIS"):
        seg = msg.segment(name)
        if seg is not None and seg.value(3, 1, 1).strip():
            code = seg.value(3, 1, 1).strip()
            display = seg.value(3, 1, 2)
            check_length(_reference(facility, code), MAX_BOARD, (name, 1, 3, 1, 1))
            check_length(display, MAX_BOARD, (name, 1, 3, 1, 2))
            return _reference(facility, code), display or None
    return None, None


def _reference(facility: str, code: str) -> str:
    """A board's reference: ``Location?identifier=<facility>|<code>``."""
    if not facility:
        return f"Location?identifier={code}"
    return f"Location?identifier={facility}|{code}"
