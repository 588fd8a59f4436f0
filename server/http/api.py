"""JSON API for coordinators and the dashboard: registrations, selection and
the event feed (``GET /api/events?since=<id>``)."""

from __future__ import annotations

from typing import Any, cast

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from ihe.iua.roles import Role
from server import audit, tasks
from server.errors import Conflict, InputError, NotFound
from server.http.auth import audit_requestor, caller, requires
from server.http.fhir import audit_read
from server.models import Registration, utcnow
from server.runtime import Runtime
from server.workflow import events, selection, vigilance
from server.workflow.deadlines import deadline
from server.workflow.status import registration_json as _registration_json

bp = Blueprint("api", __name__)


def rt() -> Runtime:
    """The runtime this app serves."""
    return cast(Runtime, current_app.config["SPIDERS_RUNTIME"])


@bp.get("/registrations")
@requires(Role.COORDINATOR, Role.CLINICIAN, Role.RADIOLOGIST)
def list_registrations() -> Response:
    """Every registration with its state, newest first."""
    with rt().db.session() as session:
        rows = session.scalars(
            select(Registration).order_by(Registration.created_at.desc())
        ).all()
        audit_read(session, rows)
        return jsonify([registration_json(r) for r in rows])


@bp.get("/registrations/<registration_id>")
@requires(Role.COORDINATOR, Role.CLINICIAN, Role.RADIOLOGIST)
def get_registration(registration_id: str) -> Response:
    """One registration: sites queried, candidates, prefetch progress."""
    with rt().db.session() as session:
        registration = _get(session, registration_id)
        audit_read(session, [registration])
        return jsonify(registration_json(registration))


@bp.put("/registrations/<registration_id>/selection")
@requires(Role.CLINICIAN, Role.RADIOLOGIST)
def put_selection(registration_id: str) -> Response:
    """Replace the selection: ``{"candidates": [id, ...]}``."""
    body = _json_body()
    ids = body.get("candidates") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in ids
    ):
        raise InputError(
            'expected {"candidates": [candidate id, ...]}',
            [("candidates", "a list of integer candidate ids")],
        )
    try:
        with rt().db.session() as session:
            registration = _locked(session, registration_id)
            selection.change_selection(
                rt().settings, registration, ids, by=f"user:{caller()}"
            )
            audit.registration_event(
                session,
                rt().settings,
                registration,
                action="U",
                requestor=audit_requestor(),
            )
            session.flush()
            body_out = registration_json(registration)
    except IntegrityError as exc:
        raise Conflict("the selection changed meanwhile; send it again") from exc
    tasks.dispatch_due()
    return jsonify(body_out)


@bp.post("/registrations/<registration_id>/candidates/<int:candidate_id>/review")
@requires(Role.CLINICIAN, Role.RADIOLOGIST)
def post_review(registration_id: str, candidate_id: int) -> Response:
    """Confirm or reject a study flagged by identity vigilance.

    Body: ``{"decision": "confirm" | "reject", "note": "why"}``. A confirmed
    study may then be selected (and is, if the rule wants it); a rejected one
    never is. The decision is audited with the person who made it.
    """
    body = _json_body()
    if not isinstance(body, dict):
        raise InputError(
            'expected a JSON object {"decision": "confirm" | "reject", "note": "..."}',
            [("body", "a JSON object")],
        )
    decision, note = body.get("decision"), body.get("note")
    faults: list[tuple[str | None, str]] = []
    if decision not in ("confirm", "reject"):
        faults.append(("decision", 'decision must be "confirm" or "reject"'))
    if not isinstance(note, str | None):
        faults.append(("note", "note must be text, or left out"))
    if faults:
        raise InputError("invalid review: " + "; ".join(m for _, m in faults), faults)
    decision = str(decision)
    with rt().db.session() as session:
        registration = _locked(session, registration_id)
        candidate = next(
            (c for c in registration.candidates if c.id == candidate_id), None
        )
        if candidate is None:
            raise NotFound(f"no candidate {candidate_id} in this registration")
        vigilance.review(candidate, decision=decision, by=f"user:{caller()}", note=note)
        if decision == "confirm":
            selection.auto_select(rt().settings, registration)
            selection.schedule(rt().settings, registration)
        audit.registration_event(
            session,
            rt().settings,
            registration,
            action="U",
            requestor=audit_requestor(),
            event_type=audit.IDENTITY_REVIEW[decision],
        )
        session.flush()
        body_out = registration_json(registration)
    tasks.dispatch_due()
    return jsonify(body_out)


@bp.post("/registrations/<registration_id>/retry")
@requires(Role.COORDINATOR, Role.CLINICIAN)
def post_retry(registration_id: str) -> Response:
    """Query the sites again and retry failed or partial retrieves.

    What a person decided about the selection is kept; studies found anew are
    selected by the rule.
    """
    with rt().db.session() as session:
        _get(session, registration_id)
    sent = tasks.retry(registration_id)
    with rt().db.session() as session:
        audit.registration_event(
            session,
            rt().settings,
            _get(session, registration_id),
            action="U",
            requestor=audit_requestor(),
        )
    with rt().db.session() as session:
        body = registration_json(_get(session, registration_id))
    body["retry"] = sent
    response = jsonify(body)
    response.status_code = 202
    return response


@bp.get("/events")
@requires(Role.COORDINATOR, Role.CLINICIAN, Role.SYSTEM)
def list_events() -> Response:
    """Events after ``since`` (an event id, default 0), oldest first.

    ``limit`` caps the answer (default 100, at most 500); ``next`` is the id
    to send as ``since`` for what comes after.
    """
    since = _int_arg("since", 0)
    limit = _int_arg("limit", 100)
    with rt().db.session() as session:
        rows = events.feed(session, since=since, limit=limit)
        body = {
            "events": [events.event_json(e) for e in rows],
            "next": rows[-1].id if rows else since,
        }
    return jsonify(body)


def registration_json(registration: Registration) -> dict[str, Any]:
    """A registration as the API shows it, with its prefetch deadline."""
    return _registration_json(
        registration, deadline=deadline(rt().settings, registration)
    )


def _int_arg(name: str, default: int) -> int:
    value = request.args.get(name)
    if value is None or value == "":
        return default
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise InputError(
            f"{name} must be a non-negative integer",
            [(name, "a non-negative integer")],
        )
    return int(value)


def _json_body() -> Any:
    """The request's JSON body, or None when it is not JSON."""
    try:
        return request.get_json(silent=True)
    except RecursionError as exc:
        raise InputError("the body is nested too deeply") from exc


def _locked(session: Any, registration_id: str) -> Registration:
    """The registration, read after taking its row lock, so that two changes
    at once (two selections, two reviews) are applied one after the other."""
    session.execute(
        update(Registration)
        .where(Registration.id == registration_id)
        .values(updated_at=utcnow())
    )
    return _get(session, registration_id)


def _get(session: Any, registration_id: str) -> Registration:
    registration = session.get(Registration, registration_id)
    if registration is None:
        raise NotFound(f"registration {registration_id} is unknown")
    return cast(Registration, registration)
