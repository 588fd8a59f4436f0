"""FHIR R4 Appointment to a tumour-board registration.

The Appointment is the board meeting slot of one patient: ``start`` is the
meeting, a ``Patient`` participant names the patient, a ``Location``
participant the board. Checks beyond the JSON structure are the R4 invariants
app-2 (start and end together), app-3 (start required unless proposed,
cancelled or waitlist) and app-4 (``cancelationReason`` only when cancelled or
``noshow``, the code as R4 defines it, not the ``no-show`` spelling of the
published invariant), plus the required value sets of ``status`` and
``participant.status``.

Limitations
-----------
Study hints are read only from ``supportingInformation`` items that carry an
identifier with system ``urn:dicom:uid``; accession numbers from
``basedOn`` ServiceRequests are not read yet.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir.resources.R4B.appointment import Appointment
from pydantic import ValidationError

from mappings.fhir_validation import issues_from_validation
from mappings.identifiers import Identifier, system_to_authority
from server.errors import InvalidResource

# Required bindings in R4 (http://hl7.org/fhir/R4/valueset-appointmentstatus.html
# and valueset-participationstatus.html).
APPOINTMENT_STATUS = frozenset(
    {
        "proposed",
        "pending",
        "booked",
        "arrived",
        "fulfilled",
        "cancelled",
        "noshow",
        "entered-in-error",
        "checked-in",
        "waitlist",
    }
)
PARTICIPATION_STATUS = frozenset({"accepted", "declined", "tentative", "needs-action"})
# Statuses for which the board should have the images: these start discovery.
ACTIVE_STATUS = frozenset({"booked", "arrived", "checked-in", "pending"})
DICOM_UID_SYSTEM = "urn:dicom:uid"
MAX_REFERENCE = 256  # widths of the registration's columns
MAX_KEY = 128


@dataclass(frozen=True)
class PatientRef:
    """A reference to the patient, by logical id or by identifier."""

    resource_id: str | None = None
    identifier: Identifier | None = None


@dataclass(frozen=True)
class RegistrationRequest:
    """What a registration needs from an Appointment."""

    status: str
    start: datetime | None
    end: datetime | None
    patient: PatientRef
    location_reference: str | None
    location_display: str | None
    identifier: Identifier | None
    study_uids: tuple[str, ...]


def parse_appointment(data: Any) -> RegistrationRequest:
    """Validate a FHIR Appointment given as parsed JSON and map it.

    Raises
    ------
    InvalidResource
        The Appointment breaks FHIR R4 or a rule above; every problem found is
        one issue of the exception.
    """
    if not isinstance(data, dict) or data.get("resourceType") != "Appointment":
        raise InvalidResource(
            "the body is not an Appointment resource",
            [("Appointment", "resourceType must be Appointment")],
        )
    # FHIR JSON writes an instant as a string; the model would read a number
    # as seconds since 1970 and store a resource that no reader accepts.
    not_text = [
        (f"Appointment.{name}", "an instant is a JSON string")
        for name in ("start", "end")
        if name in data and not isinstance(data[name], str)
    ]
    # The most common mistake, named as such rather than by the model's regex.
    not_text += [
        (
            f"Appointment.{name}",
            "an instant needs its time and UTC offset (2030-04-02T14:30:00+02:00)",
        )
        for name in ("start", "end")
        if isinstance(data.get(name), str) and not _INSTANT_END.search(data[name])
    ]
    if not_text:
        raise InvalidResource("the Appointment does not conform to FHIR R4", not_text)
    try:
        appt = Appointment.model_validate(data)
    except ValidationError as exc:
        raise InvalidResource(
            "the Appointment does not conform to FHIR R4",
            issues_from_validation(exc, "Appointment"),
        ) from exc
    issues = _instant_issues(appt) or _invariant_issues(appt)
    patient, location, location_display, more = _participants(appt)
    issues += more
    if location is not None and len(location) > MAX_REFERENCE:
        issues.append(
            (
                "Appointment.participant.actor.reference",
                f"a Location reference is at most {MAX_REFERENCE} characters",
            )
        )
    if appt.identifier and len(appt.identifier[0].value or "") > MAX_KEY:
        issues.append(
            (
                "Appointment.identifier[0].value",
                f"the identifier is at most {MAX_KEY} characters",
            )
        )
    if issues:
        raise InvalidResource("the Appointment breaks FHIR R4 rules", issues)
    assert patient is not None  # _participants reports a missing patient
    ident = None
    if appt.identifier and (appt.identifier[0].value or "").strip():
        first = appt.identifier[0]
        ident = Identifier(
            system_to_authority(first.system or ""), (first.value or "").strip()
        )
    return RegistrationRequest(
        status=str(appt.status),
        start=appt.start,
        end=appt.end,
        patient=patient,
        location_reference=location,
        location_display=location_display,
        identifier=ident,
        study_uids=_study_hints(appt),
    )


# An instant ends with a time and its offset (FHIR R4 instant).
_INSTANT_END = re.compile(r"T\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")

# Meetings outside these years are typing errors, and near the ends of the
# calendar a time-zone conversion overflows.
EARLIEST_YEAR, LATEST_YEAR = 1900, 2200


def _instant_issues(appt: Appointment) -> list[tuple[str | None, str]]:
    issues: list[tuple[str | None, str]] = []
    for name in ("start", "end"):
        value = getattr(appt, name)
        if value is None:
            continue
        if not isinstance(value, datetime) or value.tzinfo is None:
            issues.append((f"Appointment.{name}", "not a valid instant"))
        elif not EARLIEST_YEAR <= value.year <= LATEST_YEAR:
            issues.append(
                (
                    f"Appointment.{name}",
                    f"year {value.year} outside {EARLIEST_YEAR}-{LATEST_YEAR}",
                )
            )
    return issues


def _invariant_issues(appt: Appointment) -> list[tuple[str | None, str]]:
    issues: list[tuple[str | None, str]] = []
    if appt.status not in APPOINTMENT_STATUS:
        issues.append(("Appointment.status", f"unknown status {appt.status!r}"))
    if (appt.start is None) != (appt.end is None):
        issues.append(("Appointment.start", "app-2: start and end go together"))
    if appt.start is None and appt.status not in {"proposed", "cancelled", "waitlist"}:
        issues.append(
            (
                "Appointment.start",
                "app-3: start is required unless proposed, cancelled or waitlist",
            )
        )
    if appt.cancelationReason and appt.status not in {"cancelled", "noshow"}:
        issues.append(
            (
                "Appointment.cancelationReason",
                "app-4: a cancellation reason needs status cancelled or noshow",
            )
        )
    if appt.start and appt.end and appt.end < appt.start:
        issues.append(("Appointment.end", "end is before start"))
    return issues


def _participants(
    appt: Appointment,
) -> tuple[PatientRef | None, str | None, str | None, list[tuple[str | None, str]]]:
    patient: PatientRef | None = None
    location = display = None
    issues: list[tuple[str | None, str]] = []
    for index, part in enumerate(appt.participant or []):
        where = f"Appointment.participant[{index}]"
        if part.status not in PARTICIPATION_STATUS:
            issues.append((f"{where}.status", f"unknown status {part.status!r}"))
        actor = part.actor
        if actor is None:
            continue
        ref = actor.reference or ""
        if ref.startswith("Patient/") or actor.type == "Patient":
            if patient is not None:
                issues.append((where, "only one Patient participant is allowed"))
                continue
            patient = _patient_ref(actor, where, issues)
        elif ref.startswith("Location/") or actor.type == "Location":
            location, display = ref or None, actor.display
    if patient is None and not any(e and "Patient" in e for e, _ in issues):
        issues.append(("Appointment.participant", "a Patient participant is required"))
    return patient, location, display, issues


def _patient_ref(
    actor: Any, where: str, issues: list[tuple[str | None, str]]
) -> PatientRef | None:
    ref = actor.reference or ""
    resource_id = None
    if ref.startswith("Patient/") and len(ref) > len("Patient/"):
        resource_id = ref.split("/", 1)[1]
    ident = actor.identifier
    identifier = None
    if ident is not None and ident.system and ident.value:
        identifier = Identifier(system_to_authority(ident.system), ident.value)
    if resource_id is None and identifier is None:
        issues.append(
            (f"{where}.actor", "the Patient reference has no id or identifier")
        )
        return None
    # With both, the registration checks that they name the same patient.
    return PatientRef(resource_id=resource_id, identifier=identifier)


def _study_hints(appt: Appointment) -> tuple[str, ...]:
    uids: list[str] = []
    for info in appt.supportingInformation or []:
        ident = info.identifier
        if ident is not None and ident.system == DICOM_UID_SYSTEM and ident.value:
            uids.append(ident.value.removeprefix("urn:oid:"))
    return tuple(uids)
