"""JSON API for coordinators and the dashboard: registrations and selection."""

from __future__ import annotations

from typing import Any, cast

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from ihe.iua.roles import Role
from server import audit, tasks
from server.errors import Conflict, InputError, NotFound
from server.http.auth import caller, requires
from server.http.fhir import audit_read
from server.models import Registration, utcnow
from server.runtime import Runtime
from server.workflow import selection
from server.workflow.status import registration_json

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
    try:
        body = request.get_json(silent=True)
    except RecursionError as exc:
        raise InputError("the body is nested too deeply") from exc
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
            # Take the registration's row lock before reading it, so that two
            # selections at once are applied one after the other.
            session.execute(
                update(Registration)
                .where(Registration.id == registration_id)
                .values(updated_at=utcnow())
            )
            registration = _get(session, registration_id)
            selection.change_selection(
                rt().settings, registration, ids, by=f"user:{caller()}"
            )
            audit.registration_event(
                session,
                rt().settings,
                registration,
                action="U",
                requestor=audit.http_client(caller(), request.remote_addr),
            )
            session.flush()
            body_out = registration_json(registration)
    except IntegrityError as exc:
        raise Conflict("the selection changed meanwhile; send it again") from exc
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
            requestor=audit.http_client(caller(), request.remote_addr),
        )
    with rt().db.session() as session:
        body = registration_json(_get(session, registration_id))
    body["retry"] = sent
    response = jsonify(body)
    response.status_code = 202
    return response


def _get(session: Any, registration_id: str) -> Registration:
    registration = session.get(Registration, registration_id)
    if registration is None:
        raise NotFound(f"registration {registration_id} is unknown")
    return cast(Registration, registration)
