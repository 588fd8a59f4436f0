"""Registering a patient for a tumour board from a FHIR Appointment.

An Appointment's identifier is the sender's key: the same Appointment sent
again is answered with the registration already made, never registered twice.

Limitations
-----------
Rescheduling and cancellation through an update of the Appointment are not
supported yet; a resend that differs from the stored one is refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ihe.pix import patient_index
from mappings.fhir_appointment import ACTIVE_STATUS, RegistrationRequest
from server.errors import Conflict, UnknownReference
from server.models import Board, Patient, Registration, new_id, utcnow

logger = logging.getLogger(__name__)

LOG_REGISTERED = "registration created"


@dataclass(frozen=True)
class Registered:
    """The registration, and whether this request created it."""

    registration: Registration
    created: bool


def register(
    session: Session, request: RegistrationRequest, resource: dict[str, Any]
) -> Registered:
    """Create the registration described by an Appointment.

    Raises
    ------
    UnknownReference
        The patient is not in the patient index.
    Conflict
        An Appointment with the same identifier was registered with other
        content.
    """
    patient = _patient(session, request)
    if request.identifier is not None:
        existing = session.scalar(
            select(Registration).where(
                Registration.identifier_system == request.identifier.system,
                Registration.identifier_value == request.identifier.value,
            )
        )
        if existing is not None:
            if (existing.patient_id, existing.status, existing.meeting_start) != (
                patient.id,
                request.status,
                request.start,
            ):
                raise Conflict(
                    "an Appointment with this identifier is already registered with "
                    f"other content (Appointment/{existing.id})"
                )
            return Registered(existing, created=False)
    registration = Registration(
        id=new_id(),  # FHIR create ignores a client's id
        status=request.status,
        patient=patient,
        board=_board(session, request),
        meeting_start=request.start,
        meeting_end=request.end,
        identifier_system=request.identifier.system if request.identifier else None,
        identifier_value=request.identifier.value if request.identifier else None,
        hints={"studyInstanceUIDs": list(request.study_uids)},
        discovery="pending" if request.status in ACTIVE_STATUS else "none",
    )
    session.add(registration)
    session.flush()
    registration.resource = stamp(resource, registration.id, registration.version)
    logger.info(
        LOG_REGISTERED,
        extra={"registration": registration.id, "status": registration.status},
    )
    return Registered(registration, created=True)


def stamp(resource: dict[str, Any], resource_id: str, version: int) -> dict[str, Any]:
    """The resource as stored: our id, version and last update time."""
    stored = dict(resource)
    stored["id"] = resource_id
    stored["meta"] = {
        **(resource.get("meta") or {}),
        "versionId": str(version),
        "lastUpdated": utcnow().isoformat(),
    }
    return stored


def _patient(session: Session, request: RegistrationRequest) -> Patient:
    ref = request.patient
    patient = None
    if ref.resource_id is not None:
        patient = session.get(Patient, ref.resource_id)
        where = f"Patient/{ref.resource_id}"
    elif ref.identifier is not None:
        patient = patient_index.find_patient(session, ref.identifier)
        where = f"Patient?identifier={ref.identifier.system}|{ref.identifier.value}"
    if patient is None:
        raise UnknownReference(
            "the Appointment's patient is not in the patient index; send the Patient "
            "first",
            [("Appointment.participant.actor", f"{where} is unknown")],
        )
    return patient


def _board(session: Session, request: RegistrationRequest) -> Board | None:
    if request.location_reference is None:
        if request.status in ACTIVE_STATUS:
            raise UnknownReference(
                "a booked registration needs the board as a Location participant",
                [("Appointment.participant", "a Location participant is required")],
            )
        return None
    board = session.scalar(
        select(Board).where(Board.location_reference == request.location_reference)
    )
    if board is None:
        board = Board(
            location_reference=request.location_reference, name=request.location_display
        )
        session.add(board)
    return board
