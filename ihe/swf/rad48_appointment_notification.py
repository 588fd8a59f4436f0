"""RAD-48 Appointment Notification (HL7 v2 SIU), receiving side.

IHE RAD TF-2 section 4.48 carries scheduling messages from the department
system scheduler; for SPIDERS an appointment is a patient's slot at a tumour
board, and each message acts on that patient's registration exactly as the
FHIR Appointment path does (:mod:`server.workflow.registrations`):

=====  =======================================================================
S12    new booking: a registration, its patient resolved by the patient
       index from PID-3 (``AE`` 204 when unknown); discovery starts once the
       ACK is sent
S13    rescheduled: meeting, board and status follow the message
S14    modified: the same
S15    cancelled: status ``cancelled``, retrieves not started are cancelled
S17    deleted: status ``entered-in-error``, likewise
S26    no-show: status ``noshow``, likewise
=====  =======================================================================

S13 to S26 find the registration by SCH-2 (filler appointment ID), else SCH-1
(placer appointment ID); an appointment SPIDERS does not know is answered
``AE`` with ERR-3 204 at SCH-2.

Every event checks the PID's name, birth date and sex against the patient
PID-3 resolves to (:mod:`ihe.swf.demographics`): a message that disagrees is
answered ``AE`` (ERR-2 the PID field, ERR-3 207, ERR-5 904) and changes
nothing.

Limitations
-----------
A registration is found by the key it was created with: an S12 that named
SCH-2 is not found by an S15 that names only SCH-1. An S12 sent again with
other content under the same key is refused (``AE`` 205); S13/S14 change it.
S16 (discontinued) and the request messages (SRM) are not supported.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from sqlalchemy.orm import Session

from ihe.atna.messages import Participant
from ihe.hl7v2.application import Context, Handler, Outcome
from ihe.hl7v2.codes import ErrorCode
from ihe.hl7v2.er7 import Message
from ihe.pix import patient_index
from ihe.swf import demographics
from mappings import hl7_pid, hl7_siu
from mappings.fhir_appointment import ACTIVE_STATUS, PatientRef
from server import audit
from server.errors import Conflict, IdentityError, MessageError
from server.models import Patient, Registration
from server.workflow import registrations

logger = logging.getLogger(__name__)

CANCEL_STATUS = {"S15": "cancelled", "S17": "entered-in-error"}


def handle_siu(session: Session, msg: Message, ctx: Context) -> Outcome:
    """Apply one SIU message to its registration.

    Raises
    ------
    MessageError
        The message cannot be mapped, its patient or appointment is unknown
        (ERR-3 204), it conflicts with the registration (205), or its PID
        disagrees with the patient index (207, ERR-5 904).
    """
    pid = hl7_pid.read_pid(msg)
    appt = hl7_siu.read_siu(msg, pid.record.identifiers)
    patient = _patient(session, appt)
    demographics.check(patient, pid)
    request = replace(appt.request, patient=PatientRef(resource_id=patient.id))
    resource = hl7_siu.appointment_resource(appt, patient.id)
    if appt.event == "S12":
        try:
            done = registrations.register(session, request, resource)
        except Conflict as exc:
            raise MessageError(
                str(exc), ErrorCode.DUPLICATE_KEY_IDENTIFIER, ("SCH", 1, 2)
            ) from exc
        reg = done.registration
        if done.created:
            audit.registration_event(
                session, ctx.settings, reg, action="C", requestor=_sender(ctx)
            )
        verb = "created" if done.created else "already made"
        return Outcome(f"registration {reg.id} {verb}", dispatch=done.created)
    reg = _registration(session, appt)
    if reg.patient_id != patient.id:
        raise MessageError(
            "the appointment is registered for another patient",
            ErrorCode.DUPLICATE_KEY_IDENTIFIER,
            ("PID", 1, 3),
        )
    if appt.event in ("S13", "S14"):
        registrations.reschedule(session, ctx.settings, reg, request, resource)
        audit.registration_event(
            session, ctx.settings, reg, action="U", requestor=_sender(ctx)
        )
        dispatch = reg.status in ACTIVE_STATUS and reg.discovery == "pending"
        return Outcome(f"registration {reg.id} rescheduled", dispatch=dispatch)
    if appt.event == "S26":
        cancelled = registrations.no_show(session, reg)
        action = "U"
    else:
        cancelled = registrations.cancel(session, reg, CANCEL_STATUS[appt.event])
        action = "D"
    audit.registration_event(
        session, ctx.settings, reg, action=action, requestor=_sender(ctx)
    )
    return Outcome(
        f"registration {reg.id} {reg.status}; {cancelled} prefetch(es) cancelled"
    )


def _sender(ctx: Context) -> Participant:
    return audit.hl7_sender(ctx.sender, ctx.peer)


def _patient(session: Session, appt: hl7_siu.SiuAppointment) -> Patient:
    try:
        patient = patient_index.resolve(session, appt.patient_identifiers)
    except IdentityError as exc:
        raise MessageError(
            str(exc), ErrorCode.DUPLICATE_KEY_IDENTIFIER, ("PID", 1, 3)
        ) from exc
    if patient is None:
        raise MessageError(
            "the patient (PID-3) is not in the patient index; send its ADT first",
            ErrorCode.UNKNOWN_KEY_IDENTIFIER,
            ("PID", 1, 3),
        )
    return patient


def _registration(session: Session, appt: hl7_siu.SiuAppointment) -> Registration:
    reg = registrations.find(session, appt.keys)
    if reg is None:
        raise MessageError(
            "the appointment (SCH-2, SCH-1) is unknown",
            ErrorCode.UNKNOWN_KEY_IDENTIFIER,
            ("SCH", 1, 2),
        )
    return reg


HANDLERS: dict[tuple[str, str], Handler] = {
    ("SIU", event): handle_siu for event in hl7_siu.EVENT_STATUS
}
