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

An INS (PID-3 under an INS-NIR or INS-NIA authority) links records only
under the identity status VALI or QUAL and without the attribute FICT or
DOUT (:func:`ihe.pix.patient_index.ins_links`). Otherwise it is kept on the
patient without linking, and the ``AA`` says so in one ERR segment at
``PID^1^32`` with ERR-3 ``0`` (message accepted):

==========================  ======  ===========================================
PID-32                      ERR-4   ERR-8
==========================  ======  ===========================================
no identity status          ``W``   INS kept without linking: PID-32 carries no
                                    identity status (VALI or QUAL links it)
``PROV`` or ``RECUP``       ``I``   INS kept without linking: identity status
                                    PROV (VALI or QUAL links it)
``FICT`` or ``DOUT``        ``I``   INS kept without linking: identity marked
                                    FICT (a fictitious or doubtful identity
                                    links nothing)
==========================  ======  ===========================================

A missing status is a warning (table 0516 ``W``): the sender most likely
meant to send one, and the INS then resolves nothing in PIX queries. A
provisional, recovered, fictitious or doubtful identity is information
(``I``): the sender said so, and not linking is the rule it expects.

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
from ihe.hl7v2.application import Context, ErrorDetail, Handler, Outcome
from ihe.hl7v2.codes import ErrorCode, Severity
from ihe.hl7v2.er7 import Message
from ihe.pix import patient_index
from mappings import hl7_pid
from mappings.fhir_patient import PatientRecord
from server import audit
from server.errors import IdentityError, MessageError
from server.models import Patient
from server.workflow.registrations import stamp

logger = logging.getLogger(__name__)

FEED_EVENTS = ("A01", "A04", "A05", "A08")
MOVEMENT_EVENTS = ("A02", "A03", "A06", "A07", "A11", "A12", "A13")
# ERR-8 of an INS kept without linking, by reason.
INS_HELD = "INS kept without linking"
INS_WITHOUT_STATUS = (
    f"{INS_HELD}: PID-32 carries no identity status (VALI or QUAL links it)"
)
INS_STATUS_NOT_TRUSTED = f"{INS_HELD}: identity status {{}} (VALI or QUAL links it)"
INS_IDENTITY_MARKED = (
    f"{INS_HELD}: identity marked {{}} "
    "(a fictitious or doubtful identity links nothing)"
)
RELIABILITY = ("PID", 1, 32)


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
    return Outcome(f"patient {patient.id} {verb}", warnings=ins_warnings(pid.record))


def ins_warnings(record: PatientRecord) -> tuple[ErrorDetail, ...]:
    """The ERR segment telling why the record's INS links nothing, if it does not.

    Returns
    -------
    tuple of ErrorDetail
        Empty when the record has no INS or its INS links; else one ERR at
        ``PID^1^32``, ERR-3 0, severity ``W`` (no status) or ``I``.
    """
    has_ins = any(i.is_ins for i in record.identifiers)
    if not has_ins or patient_index.ins_links(record):
        return ()
    status = record.identity_status
    marked = sorted(
        set(record.identity_attributes or ()) & patient_index.UNLINKABLE_ATTRIBUTES
    )
    if status is None:
        message, severity = INS_WITHOUT_STATUS, Severity.WARNING
    elif status not in patient_index.TRUSTED_INS_STATUSES:
        message, severity = INS_STATUS_NOT_TRUSTED.format(status), Severity.INFORMATION
    else:
        message = INS_IDENTITY_MARKED.format(" and ".join(marked))
        severity = Severity.INFORMATION
    return (ErrorDetail(ErrorCode.MESSAGE_ACCEPTED, RELIABILITY, message, severity),)


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
