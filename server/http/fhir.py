"""The FHIR R4 REST endpoint: Patient (identity feed), Appointment (registration),
Task (prefetch progress) and the CapabilityStatement.

Patient is also searched as IHE ITI-78 PDQm (:mod:`ihe.pdq.iti78_mobile_pdq`)
and cross-referenced with ``$ihe-pix``, IHE ITI-83 PIXm
(:mod:`ihe.pix.iti83_mobile_pix_query`); both are audited as Query (110112).

Limitations
-----------
No search on Appointment, no conditional or versioned updates, no XML;
Appointment cannot be updated yet.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar, cast
from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, jsonify, request, url_for
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ihe.atna.codes import EventOutcomeIndicator, EventTypeCode
from ihe.iua.roles import READERS, Role
from ihe.pdq import iti78_mobile_pdq
from ihe.pix import iti83_mobile_pix_query, patient_index
from mappings.fhir_appointment import parse_appointment
from mappings.fhir_patient import parse_patient
from server import audit, tasks
from server.errors import (
    Conflict,
    InputError,
    InvalidResource,
    NotFound,
    SpidersError,
    UnsupportedMediaType,
)
from server.http.auth import audit_requestor, caller, requires
from server.models import Patient, Prefetch, Registration
from server.runtime import Runtime
from server.workflow import registrations
from server.workflow.status import task_resource

bp = Blueprint("fhir", __name__)

FHIR_JSON = "application/fhir+json"
FORM = "application/x-www-form-urlencoded"
PIXM_OPERATION = "https://profiles.ihe.net/ITI/PIXm/OperationDefinition/IHE.PIXm.pix"
PDQM_SEARCH_PARAMETERS = (
    ("_id", "token"),
    ("active", "token"),
    ("family", "string"),
    ("given", "string"),
    ("identifier", "token"),
    ("birthdate", "date"),
    ("gender", "token"),
)
JSON_TYPES = frozenset({FHIR_JSON, "application/json"})
RACE_RETRIES = 3
FHIR_ID_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-."
)


def rt() -> Runtime:
    """The runtime this app serves."""
    return cast(Runtime, current_app.config["SPIDERS_RUNTIME"])


@bp.get("/metadata")
def metadata() -> Response:
    """The CapabilityStatement of this server."""
    return _fhir(capability_statement())


@bp.post("/Patient")
@requires(Role.SYSTEM, Role.COORDINATOR)
def create_patient() -> Response:
    """Identity feed: create or update a patient from its identifiers."""
    return _feed_patient(None)


@bp.put("/Patient/<resource_id>")
@requires(Role.SYSTEM, Role.COORDINATOR)
def update_patient(resource_id: str) -> Response:
    """Identity feed with a client-chosen id (update as create)."""
    _check_id(resource_id)
    return _feed_patient(resource_id)


@bp.get("/Patient/<resource_id>")
@requires(*READERS)
def read_patient(resource_id: str) -> Response:
    """Read a patient as last fed."""
    with rt().db.session() as session:
        patient = session.get(Patient, resource_id)
        if patient is None:
            raise NotFound(f"Patient/{resource_id} is unknown")
        audit.patient_read(session, rt().settings, patient, requestor=audit_requestor())
        return _fhir(iti78_mobile_pdq.patient_resource(patient))


@bp.get("/Patient")
@requires(*READERS)
def search_patients() -> Response:
    """ITI-78 Mobile Patient Demographics Query (PDQm) by GET."""
    params = list(request.args.items(multi=True))
    return _pdqm(params, request.query_string)


@bp.post("/Patient/_search")
@requires(*READERS)
def search_patients_by_post() -> Response:
    """ITI-78 by POST: the search parameters form-encoded in the body."""
    if request.mimetype != FORM:
        raise UnsupportedMediaType(f"send the search parameters as {FORM}")
    params = [*request.args.items(multi=True), *request.form.items(multi=True)]
    return _pdqm(params, urlencode(params).encode())


@bp.route("/Patient/$ihe-pix", methods=["GET", "POST"])
@requires(*READERS)
def pix_query() -> Response:
    """ITI-83 Mobile Patient Identifier Cross-reference Query (PIXm)."""
    if request.method == "GET":
        params = list(request.args.items(multi=True))
        raw = request.query_string
    else:
        if request.mimetype == FORM:
            params = list(request.form.items(multi=True))
        else:
            params = iti83_mobile_pix_query.parameters_to_pairs(_body())
        raw = urlencode(params).encode()

    def answer(session: Session) -> tuple[dict[str, Any], list[Patient]]:
        iti78_mobile_pdq.check_format(request.args.get("_format"))
        query = iti83_mobile_pix_query.parse_query(params, _fhir_base())
        found = iti83_mobile_pix_query.cross_reference(session, query, _site_domains())
        return found.parameters, [found.patient]

    return _fhir(_audited_query(EventTypeCode.ITI_83, raw, answer))


@bp.post("/Appointment")
@requires(Role.CLINICIAN, Role.COORDINATOR, Role.SYSTEM)
def create_appointment() -> Response:
    """Register a patient for a tumour board."""
    body = _body()
    req = parse_appointment(body)

    def store(session: Session) -> registrations.Registered:
        done = registrations.register(session, req, body)
        if done.created:
            audit.registration_event(
                session,
                rt().settings,
                done.registration,
                action="C",
                requestor=audit_requestor(),
            )
        return done

    # The same Appointment (or a new board) stored by a concurrent request is
    # found on the next attempt.
    done = _with_race_retries(store)
    registration = done.registration
    resource, reg_id = registration.resource, registration.id
    if done.created and registration.discovery == "pending":
        tasks.dispatch_due()
    location = url_for("fhir.read_appointment", resource_id=reg_id)
    return _fhir(resource, 201 if done.created else 200, location)


@bp.get("/Appointment/<resource_id>")
@requires(*READERS)
def read_appointment(resource_id: str) -> Response:
    """Read a registration's Appointment as stored."""
    with rt().db.session() as session:
        registration = session.get(Registration, resource_id)
        if registration is None:
            raise NotFound(f"Appointment/{resource_id} is unknown")
        audit_read(session, [registration])
        return _fhir(registration.resource)


@bp.get("/Task")
@requires(*READERS)
def search_tasks() -> Response:
    """Prefetch tasks, optionally of one Appointment (``based-on``)."""
    based_on = request.args.get("based-on", "")
    query = select(Prefetch, Registration.patient_id).join(
        Registration, Registration.id == Prefetch.registration_id
    )
    if based_on:
        query = query.where(
            Prefetch.registration_id == based_on.removeprefix("Appointment/")
        )
    with rt().db.session() as session:
        rows = session.execute(query.order_by(Prefetch.created_at)).all()
        read = {p.registration_id for p, _ in rows}
        audit_read(
            session,
            session.scalars(
                select(Registration).where(Registration.id.in_(read))
            ).all(),
        )
        entries = [
            {
                "fullUrl": url_for("fhir.read_task", resource_id=p.id, _external=True),
                "resource": task_resource(p, patient_id),
                "search": {"mode": "match"},
            }
            for p, patient_id in rows
        ]
    return _fhir(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(entries),
            "entry": entries,
        }
    )


@bp.get("/Task/<resource_id>")
@requires(*READERS)
def read_task(resource_id: str) -> Response:
    """One prefetch as a Task."""
    with rt().db.session() as session:
        prefetch = session.get(Prefetch, resource_id)
        if prefetch is None:
            raise NotFound(f"Task/{resource_id} is unknown")
        registration = session.get(Registration, prefetch.registration_id)
        assert registration is not None
        audit_read(session, [registration])
        return _fhir(task_resource(prefetch, registration.patient_id))


def audit_read(session: Any, read: Sequence[Registration]) -> None:
    """One Procedure Record (110111, R) per registration a response shows."""
    requestor = audit_requestor()
    for registration in read:
        audit.registration_event(
            session, rt().settings, registration, action="R", requestor=requestor
        )


def _pdqm(params: list[tuple[str, str]], raw: bytes) -> Response:
    strict = _prefers_strict(request.headers.get("Prefer", ""))

    def answer(session: Session) -> tuple[dict[str, Any], list[Patient]]:
        search = iti78_mobile_pdq.parse_search(params, strict=strict)
        page = iti78_mobile_pdq.search_page(
            session, search, fhir_base=_fhir_base(), site_domains=_site_domains()
        )
        return page.bundle, page.patients

    return _fhir(_audited_query(EventTypeCode.ITI_78, raw, answer))


def _audited_query(
    transaction: EventTypeCode,
    raw: bytes,
    answer: Callable[[Session], tuple[dict[str, Any], list[Patient]]],
) -> dict[str, Any]:
    """Run a patient query and record its Query audit (110112), also when the
    query is refused (outcome 4, no patient)."""
    record = partial(
        audit.patient_query,
        transaction=transaction,
        query_id=request.base_url,
        query=raw,
        requestor=audit_requestor(),
    )
    try:
        with rt().db.session() as session:
            body, patients = answer(session)
            record(session, rt().settings, patients=patients)
            return body
    except SpidersError:
        with rt().db.session() as session:
            record(session, rt().settings, outcome=EventOutcomeIndicator.MINOR_FAILURE)
        raise


def _prefers_strict(prefer: str) -> bool:
    """True when the ``Prefer`` header asks for ``handling=strict``."""
    tokens = (t.strip().lower().replace(" ", "") for t in re.split("[,;]", prefer))
    return "handling=strict" in tokens


def _fhir_base() -> str:
    return url_for("fhir.metadata", _external=True).removesuffix("/metadata")


def _site_domains() -> frozenset[str]:
    return frozenset(s.patient_id_domain for s in rt().settings.directory.sites)


def capability_statement() -> dict[str, Any]:
    """What this server accepts, as an R4 CapabilityStatement."""

    def resource(kind: str, interactions: list[str], doc: str) -> dict[str, Any]:
        return {
            "type": kind,
            "documentation": doc,
            "interaction": [{"code": i} for i in interactions],
        }

    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-12-03",
        "kind": "instance",
        "software": {"name": "SPIDERS"},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "resource": [
                    {
                        **resource(
                            "Patient",
                            ["create", "update", "read", "search-type"],
                            "Identity feed: every identifier sent together is "
                            "linked. Search is IHE ITI-78 (PDQm): names match "
                            "case- and accent-insensitively from their start; "
                            "merged patients are not returned and read as "
                            "active false with a replaced-by link.",
                        ),
                        "searchParam": [
                            {"name": name, "type": kind}
                            for name, kind in PDQM_SEARCH_PARAMETERS
                        ],
                        "operation": [
                            {
                                "name": "ihe-pix",
                                "definition": PIXM_OPERATION,
                                "documentation": "IHE ITI-83 (PIXm): the "
                                "patient's identifiers in the other domains.",
                            }
                        ],
                    },
                    resource(
                        "Appointment",
                        ["create", "read"],
                        "Registration of a patient for a tumour board meeting.",
                    ),
                    resource(
                        "Task",
                        ["read", "search-type"],
                        "One study's prefetch into the board's imaging cache.",
                    ),
                    resource(
                        "AuditEvent",
                        ["read", "search-type"],
                        "IHE ITI-81: the audit trail, for security officers; a "
                        "date bound is required.",
                    ),
                ],
            }
        ],
    }


def _feed_patient(resource_id: str | None) -> Response:
    body = _body()
    if resource_id is not None and body.get("id") not in (None, resource_id):
        raise InvalidResource(
            "the id in the body differs from the id in the URL",
            [("Patient.id", "must equal the id in the URL")],
        )
    record = parse_patient(body)

    def store(session: Session) -> patient_index.FeedResult:
        result = patient_index.feed(session, record, body, resource_id)
        patient = result.patient
        patient.resource = registrations.stamp(body, patient.id, patient.version)
        audit.patient_record(
            session,
            rt().settings,
            patient,
            action="C" if result.created else "U",
            client=caller(),
        )
        return result

    # A concurrent feed that stored one of these identifiers first is seen on
    # the next attempt.
    result = _with_race_retries(store)
    resource, pid = result.patient.resource, result.patient.id
    location = url_for("fhir.read_patient", resource_id=pid)
    return _fhir(resource, 201 if result.created else 200, location)


T = TypeVar("T")


def _with_race_retries(work: Callable[[Session], T]) -> T:
    """Run `work` in a transaction, again when a concurrent request made it
    break a unique constraint; 409 after :data:`RACE_RETRIES` attempts."""
    for attempt in range(RACE_RETRIES):
        try:
            with rt().db.session() as session:
                return work(session)
        except IntegrityError as exc:
            if attempt == RACE_RETRIES - 1:
                raise Conflict("concurrent changes; send the request again") from exc
    raise AssertionError("unreachable: the loop returns or raises")


def _body() -> dict[str, Any]:
    mimetype = request.mimetype
    if mimetype not in JSON_TYPES:
        raise UnsupportedMediaType(
            f"send {FHIR_JSON} (or application/json), not {mimetype or 'no type'}"
        )
    raw = request.get_data(cache=False)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError("the body is not JSON", [(None, f"not JSON: {exc}")]) from exc
    except RecursionError as exc:
        raise InputError("the body is nested too deeply") from exc
    if not isinstance(body, dict):
        raise InputError("the body is not a JSON object")
    return body


def _check_id(resource_id: str) -> None:
    if not (0 < len(resource_id) <= 64) or set(resource_id) - FHIR_ID_CHARS:
        raise InputError(
            f"{resource_id!r} is not a FHIR id",
            [(None, "ids are 1-64 of A-Z a-z 0-9 - .")],
        )


def _fhir(
    body: dict[str, Any], status: int = 200, location: str | None = None
) -> Response:
    response = jsonify(body)
    response.status_code = status
    response.mimetype = FHIR_JSON
    if location:
        response.headers["Location"] = location
        version = (body.get("meta") or {}).get("versionId")
        if version:
            response.headers["ETag"] = f'W/"{version}"'
    return response
