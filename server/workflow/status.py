"""The state of a registration, as the coordinator and the FHIR Task see it.

Besides the state word, a registration shows its prefetch deadline and, once
that passed with studies missing, why it is late
(:mod:`server.workflow.deadlines`); each prefetch shows the series the site
announced and those the cache does not hold in full yet.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import object_session

from server.models import (
    CachedInstance,
    Candidate,
    Prefetch,
    PrefetchState,
    Registration,
)
from server.workflow.vigilance import needs_review

# PrefetchState → FHIR R4 Task.status (http://hl7.org/fhir/R4/valueset-task-status.html)
TASK_STATUS = {
    PrefetchState.SCHEDULED: "requested",
    PrefetchState.QUEUED: "accepted",
    PrefetchState.RUNNING: "in-progress",
    PrefetchState.READY: "completed",
    PrefetchState.PARTIAL: "failed",
    PrefetchState.FAILED: "failed",
    PrefetchState.CANCELLED: "cancelled",
}


def registration_state(registration: Registration) -> str:
    """One word for the whole case.

    ``discovering`` until every site answered; then ``no-studies`` when
    nothing is selected, ``prefetching`` while any retrieve is unfinished,
    and finally ``ready``, ``partial`` or ``failed``. A site that could not be
    queried makes the case at best ``partial`` (or ``failed`` when nothing
    else was found): its studies may be missing.
    """
    if registration.status not in ("booked", "arrived", "checked-in", "pending"):
        return registration.status
    if registration.discovery == "failed":
        return "failed"
    if registration.discovery != "done":
        return "discovering"
    prefetches = [c.prefetch for c in registration.candidates if c.prefetch]
    site_failed = any(q.status == "failed" for q in registration.site_queries)
    if not prefetches:
        # A site that could not be asked may hold the studies: not "nothing".
        return "failed" if site_failed else "no-studies"
    states = {PrefetchState(p.state) for p in prefetches}
    if not all(s.finished for s in states):
        return "prefetching"
    if states <= {PrefetchState.READY}:
        return "partial" if site_failed else "ready"
    if PrefetchState.READY in states or PrefetchState.PARTIAL in states:
        return "partial"
    return "failed"


def candidate_json(candidate: Candidate) -> dict[str, Any]:
    """A candidate study and its prefetch, for the JSON API."""
    prefetch = candidate.prefetch
    return {
        "id": candidate.id,
        "site": candidate.site_name,
        "studyInstanceUID": candidate.study_uid,
        "studyDate": candidate.study_date,
        "modalities": candidate.modalities,
        "description": candidate.description,
        "accessionNumber": candidate.accession_number,
        "numberOfSeries": candidate.num_series,
        "numberOfInstances": candidate.num_instances,
        "selected": candidate.selected,
        "selectedBy": candidate.selected_by,
        "alsoAt": candidate.also_at or [],
        "hinted": bool(candidate.hinted),
        "identityWarning": candidate.warning,
        "identityReview": _review(candidate),
        "prefetch": prefetch_json(prefetch) if prefetch else None,
    }


def prefetch_json(prefetch: Prefetch) -> dict[str, Any]:
    """One prefetch, for the JSON API."""
    return {
        "id": prefetch.id,
        "state": prefetch.state,
        "dueAt": prefetch.due_at.isoformat(),
        "attempts": prefetch.attempts,
        "expectedInstances": prefetch.expected_instances,
        "receivedInstances": _received(prefetch),
        "reason": prefetch.reason,
        "late": bool(prefetch.late),
        "series": [
            {
                "seriesInstanceUID": s.series_uid,
                "expectedInstances": s.expected,
                "receivedInstances": s.received,
            }
            for s in prefetch.series
        ],
        "incompleteSeries": [s.series_uid for s in prefetch.series if not s.complete],
    }


def _received(prefetch: Prefetch) -> int:
    """While a retrieve runs, what the cache already holds; after, the count
    the retrieve concluded on."""
    session = object_session(prefetch)
    if prefetch.state != PrefetchState.RUNNING or session is None:
        return prefetch.received_instances
    held = session.scalar(
        select(func.count())
        .select_from(CachedInstance)
        .where(CachedInstance.study_uid == prefetch.study_uid)
    )
    return int(held or 0)


def registration_json(
    registration: Registration, deadline: datetime | None = None
) -> dict[str, Any]:
    """A registration with its discovery and prefetch progress.

    `deadline`, when given, is shown as ``deadline``; ``late`` is the reason
    the case was late at it, or ``None``.
    """
    return {
        "id": registration.id,
        "appointment": f"Appointment/{registration.id}",
        "patient": f"Patient/{registration.patient_id}",
        "board": registration.board.location_reference if registration.board else None,
        "meetingStart": registration.meeting_start.isoformat()
        if registration.meeting_start
        else None,
        "status": registration.status,
        "state": registration_state(registration),
        "discovery": registration.discovery,
        "identitySource": registration.identity_source,
        "deadline": deadline.isoformat() if deadline else None,
        "late": registration.late_reason,
        # "ready" speaks of the studies selected; these wait for a person.
        "awaitingReview": sum(1 for c in registration.candidates if needs_review(c)),
        "sites": [
            {
                "site": q.site_name,
                "status": q.status,
                "studiesFound": q.studies_found,
                "reason": q.reason,
            }
            for q in registration.site_queries
        ],
        "candidates": [candidate_json(c) for c in registration.candidates],
    }


def task_resource(prefetch: Prefetch, patient_id: str) -> dict[str, Any]:
    """A prefetch as a FHIR R4 Task."""
    task: dict[str, Any] = {
        "resourceType": "Task",
        "id": prefetch.id,
        "status": TASK_STATUS[PrefetchState(prefetch.state)],
        "businessStatus": {"text": prefetch.state},
        "intent": "order",
        "code": {"text": "Retrieve a study into the tumour board's imaging cache"},
        "focus": {
            "type": "ImagingStudy",
            "identifier": {
                "system": "urn:dicom:uid",
                "value": f"urn:oid:{prefetch.study_uid}",
            },
        },
        "for": {"reference": f"Patient/{patient_id}"},
        "basedOn": [{"reference": f"Appointment/{prefetch.registration_id}"}],
        "authoredOn": prefetch.created_at.isoformat(),
        "restriction": {"period": {"end": prefetch.due_at.isoformat()}},
        "input": [{"type": {"text": "site"}, "valueString": prefetch.site_name}],
        "output": [
            {
                "type": {"text": "received instances"},
                "valueInteger": prefetch.received_instances,
            },
        ],
    }
    if prefetch.expected_instances is not None:
        task["output"].append(
            {
                "type": {"text": "expected instances"},
                "valueInteger": prefetch.expected_instances,
            }
        )
    if prefetch.reason:
        task["statusReason"] = {"text": prefetch.reason}
    if prefetch.late:
        task["note"] = [
            {"text": "late: not in the cache at the registration's deadline"}
        ]
    if prefetch.started_at:
        period = {"start": prefetch.started_at.isoformat()}
        if prefetch.finished_at:
            period["end"] = prefetch.finished_at.isoformat()
        task["executionPeriod"] = period
    return task


def _review(candidate: Candidate) -> dict[str, Any] | None:
    """The review of a flagged candidate: pending, or who decided what and when."""
    if candidate.warning is None:
        return None
    return {
        "state": candidate.review or "pending",
        "by": candidate.reviewed_by,
        "at": candidate.reviewed_at.isoformat() if candidate.reviewed_at else None,
        "note": candidate.review_note,
    }
