"""RAD-4 Procedure Scheduled (HL7 v2 ORM^O01, OMI^O23), receiving side.

IHE RAD TF-2 section 4.4: the department system scheduler announces the
imaging procedures it scheduled, with their accession number and Study
Instance UID (ZDS-1 in ORM^O01 v2.3.1, IPC-3 in OMI^O23 v2.5.1). For a tumour
board these are hints that let discovery target the study: they are attached
to every active registration of the order's patient (``hints`` of the
registration: ``accessionNumbers`` and ``studyInstanceUIDs``); a cancelled or
discontinued order (ORC-1 ``CA``, ``DC``...) withdraws them.

Orders arrive for every patient of a department, most of whom no tumour board
will see: an order for a patient unknown to the index, or with no active
registration, is acknowledged ``AA`` and kept in the message store, and
changes nothing. An order whose PID name, birth date or sex disagrees with
the indexed patient of its PID-3 is refused (``AE``, ERR-2 the PID field,
ERR-3 207, ERR-5 904; :mod:`ihe.swf.demographics`) and attaches nothing.

Limitations
-----------
Hints are attached only to registrations that exist when the order arrives;
a later registration does not look back at stored orders.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from ihe.hl7v2.application import Context, Handler, Outcome
from ihe.hl7v2.codes import ErrorCode
from ihe.hl7v2.er7 import Message
from ihe.pix import patient_index
from ihe.swf import demographics
from mappings import hl7_order, hl7_pid
from mappings.fhir_appointment import ACTIVE_STATUS
from server import audit
from server.errors import IdentityError, MessageError
from server.models import Registration

logger = logging.getLogger(__name__)

ACCESSION_HINTS = "accessionNumbers"
STUDY_HINTS = "studyInstanceUIDs"


def handle_order(session: Session, msg: Message, ctx: Context) -> Outcome:
    """Attach (or withdraw) an order's hints to its patient's registrations.

    Raises
    ------
    MessageError
        The PID or an order cannot be mapped, PID-3 names two patients
        (ERR-3 205), or the PID disagrees with the patient index (207,
        ERR-5 904).
    """
    pid = hl7_pid.read_pid(msg)
    orders = hl7_order.read_orders(msg)
    try:
        patient = patient_index.resolve(session, pid.record.identifiers)
    except IdentityError as exc:
        raise MessageError(
            str(exc), ErrorCode.DUPLICATE_KEY_IDENTIFIER, ("PID", 1, 3)
        ) from exc
    if patient is None:
        return Outcome("order for a patient not in the index; nothing attached")
    demographics.check(patient, pid)
    active = session.scalars(
        select(Registration).where(
            Registration.patient_id == patient.id,
            Registration.status.in_(ACTIVE_STATUS),
        )
    ).all()
    for registration in active:
        hints = {key: list(values) for key, values in registration.hints.items()}
        for order in orders:
            _apply(hints, ACCESSION_HINTS, order.accession_number, order.withdrawn)
            _apply(hints, STUDY_HINTS, order.study_uid, order.withdrawn)
        # A new dict, so that the JSON column sees the change.
        registration.hints = hints
        audit.registration_event(
            session,
            ctx.settings,
            registration,
            action="U",
            requestor=audit.hl7_sender(ctx.sender, ctx.peer),
        )
    ids = ", ".join(r.id for r in active) or "none"
    return Outcome(f"{len(orders)} order(s); registrations updated: {ids}")


def _apply(hints: dict[str, list[str]], key: str, value: str, withdrawn: bool) -> None:
    if not value:
        return
    values = hints.setdefault(key, [])
    if withdrawn and value in values:
        values.remove(value)
    elif not withdrawn and value not in values:
        values.append(value)


HANDLERS: dict[tuple[str, str], Handler] = {
    ("ORM", "O01"): handle_order,
    ("OMI", "O23"): handle_order,
}
