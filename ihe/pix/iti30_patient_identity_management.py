"""ITI-30 Patient Identity Management (HL7 v2.5 ADT), Patient Demographics Consumer.

IHE ITI TF-2b section 3.30 and the PAM national extension for France:

=======  =====================================================================
A28      add person information: the PID feeds the index, as ITI-8 does
A31      update person information: the same
A40      merge: the patient of MRG-1 is absorbed by the patient of PID-3
A47      change identifier: MRG-1 becomes PID-3, in the same domain
=======  =====================================================================

A40 also exists in ITI-8 (HL7 v2.3.1); its handler serves both and audits it
as the transaction its version implies. A merge whose MRG-1 names the same
identifier as PID-3 is refused before anything changes (``AE``, ERR-2
``MRG^1^1``, ERR-3 205); so is the inverse of a merge already made. A merge
writes a Patient Record audit message (110110) for the survivor (``U``) and
for the absorbed patient (``D``). A28, A31 and A40 tell of an INS kept
without linking as ITI-8 does (``AA`` with an ERR ``W`` or ``I`` at
``PID^1^32``).

Limitations
-----------
Only the first PID-3 and MRG-1 identifiers are merged (one merge per
message, as ITI-30 requires one patient per A40); link and unlink (A24, A37)
are not supported and answered ``AR`` 201.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from ihe.atna.codes import EventTypeCode
from ihe.hl7v2.application import Context, Handler, Outcome
from ihe.hl7v2.codes import ErrorCode
from ihe.hl7v2.er7 import Message
from ihe.pix import patient_index
from ihe.pix.iti8_patient_identity_feed import audit_feed, feed_patient
from mappings import hl7_pid
from server import audit
from server.errors import IdentityError, MessageError, UnknownReference
from server.workflow import identity_changes

logger = logging.getLogger(__name__)

# Versions of ITI-8 (HL7 v2.3.1); later versions are ITI-30.
ITI_8_VERSIONS = frozenset({"2.3", "2.3.1", "2.4"})


def handle_update(session: Session, msg: Message, ctx: Context) -> Outcome:
    """A28 and A31: feed the index with the message's PID."""
    return feed_patient(session, msg, ctx, EventTypeCode.ITI_30)


def handle_merge(session: Session, msg: Message, ctx: Context) -> Outcome:
    """A40: merge the patient of MRG-1 into the patient of PID-3.

    Raises
    ------
    MessageError
        MRG-1 equals PID-3, the inverse of a merge already made (ERR-3 205),
        or MRG-1 unknown (204).
    """
    pid = hl7_pid.read_pid(msg)
    survivor = pid.cxs[0].identifier()
    absorbed = hl7_pid.prior_cxs(msg)[0].identifier()
    if (survivor.system, survivor.value) == (absorbed.system, absorbed.value):
        raise MessageError(
            "MRG-1 matches PID-3: a patient cannot be merged into itself",
            ErrorCode.DUPLICATE_KEY_IDENTIFIER,
            ("MRG", 1, 1),
        )
    transaction = (
        EventTypeCode.ITI_8 if msg.version in ITI_8_VERSIONS else EventTypeCode.ITI_30
    )
    absorbed_patient = patient_index.find_patient(session, absorbed)
    if absorbed_patient is None:
        raise MessageError(
            "the patient of MRG-1 is not in the index",
            ErrorCode.UNKNOWN_KEY_IDENTIFIER,
            ("MRG", 1, 1),
        )
    absorbed_cx = audit.patient_cx(absorbed_patient)
    fed = feed_patient(session, msg, ctx, transaction)
    try:
        result = patient_index.merge(session, survivor, absorbed)
    except (IdentityError, UnknownReference) as exc:
        raise MessageError(
            str(exc), ErrorCode.DUPLICATE_KEY_IDENTIFIER, ("MRG", 1, 1)
        ) from exc
    if result.absorbed is None:
        return Outcome(
            f"patient {result.survivor.id}: merge already made", warnings=fed.warnings
        )
    identity_changes.after_merge(
        session, ctx.settings, result.survivor, result.absorbed.id
    )
    audit_feed(
        session,
        ctx,
        result.absorbed,
        action="D",
        transaction=transaction,
        message_id=msg.control_id,
        patient_cx=absorbed_cx,
    )
    return Outcome(
        f"patient {result.absorbed.id} merged into {result.survivor.id}",
        warnings=fed.warnings,
    )


def handle_change_identifier(session: Session, msg: Message, ctx: Context) -> Outcome:
    """A47: MRG-1 is renamed PID-3 within its domain.

    Raises
    ------
    MessageError
        MRG-1 unknown (ERR-3 204), or PID-3 in another domain or owned by
        another patient (205).
    """
    new = hl7_pid.read_pid(msg).cxs[0].identifier()
    old = hl7_pid.prior_cxs(msg)[0].identifier()
    try:
        patient = patient_index.change_identifier(session, old, new)
    except UnknownReference as exc:
        raise MessageError(
            str(exc), ErrorCode.UNKNOWN_KEY_IDENTIFIER, ("MRG", 1, 1)
        ) from exc
    except IdentityError as exc:
        raise MessageError(
            str(exc), ErrorCode.DUPLICATE_KEY_IDENTIFIER, ("PID", 1, 3)
        ) from exc
    identity_changes.after_identifier_change(
        session, ctx.settings, patient, old, new.value
    )
    audit_feed(
        session,
        ctx,
        patient,
        action="U",
        transaction=EventTypeCode.ITI_30,
        message_id=msg.control_id,
    )
    return Outcome(f"patient {patient.id}: identifier changed")


HANDLERS: dict[tuple[str, str], Handler] = {
    ("ADT", "A28"): handle_update,
    ("ADT", "A31"): handle_update,
    ("ADT", "A40"): handle_merge,
    ("ADT", "A47"): handle_change_identifier,
}
