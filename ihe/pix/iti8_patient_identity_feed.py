"""ITI-8 Patient Identity Feed (HL7 v2 ADT), PIX Manager side.

IHE ITI TF-2a section 3.8: a patient identity source sends ``ADT^A01``
(admit), ``A04`` (register), ``A05`` (pre-admit) and ``A08`` (update); each
feeds the patient index with the PID segment: every PID-3 identifier (linked
together, as one authoritative message carries them), the names, the birth
date, the sex and the PID-32 identity reliability codes. French PAM senders
also send movement messages (ITI-31: ``A02`` transfer, ``A03`` discharge,
``A06``/``A07`` class changes, ``A11``-``A13`` cancellations); their PID is
read the same way, and nothing else of them.

Every feed writes a Patient Record audit message (110110, DIGEST 7.3): action
``C`` for a new patient, ``U`` for an update, with the sender ``MSH-3|MSH-4``
as source and MSH-10 as detail.

Limitations
-----------
Movements (ZBE, PV1) are not recorded; an A11-A13 cancellation does not undo
the demographics of the movement it cancels. Identifiers already belonging to
two different patients are refused (``AE`` 205): joining them is an A40.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from ihe.atna import messages, outbox
from ihe.atna.codes import Code, CodedEnum, EventTypeCode
from ihe.hl7v2.application import Context, Handler, Outcome
from ihe.hl7v2.codes import ErrorCode
from ihe.hl7v2.er7 import Message
from ihe.pix import patient_index
from mappings import hl7_pid
from server import audit
from server.errors import IdentityError, MessageError
from server.models import Patient
from server.workflow.registrations import stamp

logger = logging.getLogger(__name__)

FEED_EVENTS = ("A01", "A04", "A05", "A08")
MOVEMENT_EVENTS = ("A02", "A03", "A06", "A07", "A11", "A12", "A13")


def handle_feed(session: Session, msg: Message, ctx: Context) -> Outcome:
    """Create or update the patient of an ITI-8 feed or a PAM movement."""
    transaction = (
        EventTypeCode.ITI_31 if msg.event in MOVEMENT_EVENTS else EventTypeCode.ITI_8
    )
    return feed_patient(session, msg, ctx, transaction)


def feed_patient(
    session: Session, msg: Message, ctx: Context, transaction: Code | CodedEnum
) -> Outcome:
    """Feed the index with the message's PID and audit it as `transaction`.

    Raises
    ------
    MessageError
        The PID cannot be mapped, or its identifiers belong to different
        patients (ERR-3 205, at PID-3).
    """
    pid = hl7_pid.read_pid(msg)
    try:
        result = patient_index.feed(session, pid.record, {})
    except IdentityError as exc:
        raise MessageError(
            str(exc), ErrorCode.DUPLICATE_KEY_IDENTIFIER, ("PID", 1, 3)
        ) from exc
    patient = result.patient
    patient.resource = stamp(hl7_pid.patient_resource(pid), patient.id, patient.version)
    audit_feed(
        session,
        ctx,
        patient,
        action="C" if result.created else "U",
        transaction=transaction,
        message_id=msg.control_id,
    )
    verb = "created" if result.created else "updated"
    return Outcome(f"patient {patient.id} {verb}")


def audit_feed(
    session: Session,
    ctx: Context,
    patient: Patient,
    *,
    action: str,
    transaction: Code | CodedEnum,
    message_id: str,
    patient_cx: str | None = None,
) -> None:
    """Patient Record (110110) for a patient fed or merged by an HL7 message.

    `patient_cx` names the patient when its identifiers have already moved
    (the absorbed side of a merge).
    """
    xml = messages.patient_record(
        action=action,
        patient_id=patient_cx or audit.patient_cx(patient),
        patient_name=audit.patient_name(patient),
        source=messages.Participant(
            user_id=ctx.sender, is_requestor=True, network_access_point=ctx.peer
        ),
        destination=audit.us(ctx.settings),
        audit_source=audit.audit_source(ctx.settings),
        event_type=transaction,
        message_id=message_id,
    )
    outbox.record(session, xml, patient_id=patient.id)


HANDLERS: dict[tuple[str, str], Handler] = {
    ("ADT", event): handle_feed for event in (*FEED_EVENTS, *MOVEMENT_EVENTS)
}
