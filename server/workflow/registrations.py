"""Registering a patient for a tumour board, from a FHIR Appointment or an SIU.

An Appointment's identifier is the sender's key: the same Appointment sent
again is answered with the registration already made, never registered twice.
The scheduling messages address a registration by that key (:func:`find`)
to reschedule or modify it (:func:`reschedule`), cancel it (:func:`cancel`,
which also cancels the retrieves not yet started) or record a no-show
(:func:`no_show`).

Limitations
-----------
Over FHIR, rescheduling and cancellation through an update of the
Appointment are not supported yet; a resend that differs from the stored one
is refused. A registration is found by the one key it was created with.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ihe.pix import patient_index
from mappings.fhir_appointment import ACTIVE_STATUS, RegistrationRequest
from mappings.identifiers import Identifier
from server.config import Settings
from server.errors import Conflict, InvalidResource, UnknownReference
from server.models import (
    Board,
    Patient,
    Prefetch,
    PrefetchState,
    Registration,
    new_id,
    utcnow,
)
from server.workflow import prefetch, selection

logger = logging.getLogger(__name__)

LOG_REGISTERED = "registration created"
LOG_RESCHEDULED = "registration rescheduled"
LOG_CANCELLED = "registration cancelled"


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
            board = existing.board.location_reference if existing.board else None
            stored = (
                existing.patient_id,
                existing.status,
                existing.meeting_start,
                existing.meeting_end,
                board,
            )
            sent = (
                patient.id,
                request.status,
                request.start,
                request.end,
                request.location_reference,
            )
            if stored != sent:
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


def find(session: Session, keys: Iterable[Identifier]) -> Registration | None:
    """The registration created with one of `keys` (tried in order), if any."""
    for key in keys:
        registration = session.scalar(
            select(Registration).where(
                Registration.identifier_system == key.system,
                Registration.identifier_value == key.value,
            )
        )
        if registration is not None:
            return registration
    return None


def reschedule(
    session: Session,
    settings: Settings,
    registration: Registration,
    request: RegistrationRequest,
    resource: dict[str, Any],
) -> Registration:
    """Apply a rescheduled or modified appointment to its registration.

    The meeting, board and status change as `request` says (a missing start
    or board keeps the current one). Retrieves not yet due follow the new
    meeting time; an inactive status cancels those not started.

    Raises
    ------
    Conflict
        The request names another patient.
    """
    patient_id = request.patient.resource_id
    if patient_id is not None and patient_id != registration.patient_id:
        raise Conflict("a rescheduled appointment cannot change its patient")
    if request.location_reference is not None:
        registration.board = _board(session, request)
    registration.status = request.status
    if request.start is not None:
        registration.meeting_start = request.start
        registration.meeting_end = request.end
    if request.status in ACTIVE_STATUS:
        if registration.discovery == "none":
            registration.discovery = "pending"
        due = selection.due_time(settings, registration)
        for waiting in _scheduled(session, registration):
            waiting.due_at = due
    else:
        _stop(session, registration)
    _new_version(registration, resource)
    logger.info(
        LOG_RESCHEDULED,
        extra={"registration": registration.id, "status": registration.status},
    )
    return registration


def cancel(
    session: Session, registration: Registration, status: str = "cancelled"
) -> int:
    """Cancel a registration and its retrieves not started; returns how many.

    `status` is ``cancelled``, or ``entered-in-error`` for a deletion.
    """
    registration.status = status
    cancelled = _stop(session, registration)
    _new_version(registration, {**registration.resource, "status": status})
    logger.info(
        LOG_CANCELLED,
        extra={
            "registration": registration.id,
            "status": status,
            "prefetches": cancelled,
        },
    )
    return cancelled


def no_show(session: Session, registration: Registration) -> int:
    """Record that the patient's case was not presented (``noshow``).

    The retrieves not started are cancelled, as for a cancellation; returns
    how many.
    """
    return cancel(session, registration, "noshow")


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
    """The patient the Appointment names, followed to its survivor if merged.

    Raises
    ------
    UnknownReference
        The patient is not in the index.
    InvalidResource
        The reference and the identifier name two different patients.
    """
    ref = request.patient
    by_id = by_identifier = None
    if ref.resource_id is not None:
        by_id = _survivor(session, session.get(Patient, ref.resource_id))
        where = f"Patient/{ref.resource_id}"
    if ref.identifier is not None:
        by_identifier = patient_index.find_patient(session, ref.identifier)
        if ref.resource_id is None:
            where = f"Patient?identifier={ref.identifier.system}|{ref.identifier.value}"
    disagree = by_identifier is None or by_identifier.id != getattr(by_id, "id", None)
    if by_id is not None and ref.identifier is not None and disagree:
        raise InvalidResource(
            "the Appointment's patient reference and identifier name different "
            "patients",
            [
                (
                    "Appointment.participant.actor",
                    "reference and identifier do not name the same patient",
                )
            ],
        )
    patient = by_id if ref.resource_id is not None else by_identifier
    if patient is None:
        raise UnknownReference(
            "the Appointment's patient is not in the patient index; send the Patient "
            "first",
            [("Appointment.participant.actor", f"{where} is unknown")],
        )
    return patient


def _survivor(session: Session, patient: Patient | None) -> Patient | None:
    """`patient`, or the patient it was merged into (followed to the end)."""
    seen: set[str] = set()
    while patient is not None and patient.merged_into and patient.id not in seen:
        seen.add(patient.id)
        patient = session.get(Patient, patient.merged_into)
    return patient


def _scheduled(session: Session, registration: Registration) -> list[Prefetch]:
    return list(
        session.scalars(
            select(Prefetch).where(
                Prefetch.registration_id == registration.id,
                Prefetch.state == PrefetchState.SCHEDULED,
            )
        )
    )


def _stop(session: Session, registration: Registration) -> int:
    """No discovery to come and no retrieve to start for `registration`."""
    if registration.discovery == "pending":
        registration.discovery = "none"
    return prefetch.cancel_for(session, registration.id)


def _new_version(registration: Registration, resource: dict[str, Any]) -> None:
    registration.version += 1
    registration.resource = stamp(resource, registration.id, registration.version)


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
