"""ITI-81 Retrieve ATNA Audit Event, and the audit trail of one registration.

``GET /fhir/AuditEvent`` searches the audit outbox, where every event SPIDERS
records stays after ITI-20 delivery, and answers a searchset Bundle of R4
AuditEvent resources (:mod:`mappings.fhir_audit_event`), oldest first. ITI-81
requires a ``date`` bound; the parameters are:

============  ===============================================================
``date``      ``ge``/``gt``/``le``/``lt``/``eq`` + a FHIR date or dateTime,
              repeatable (a range takes two); at least one is required
``patient``   ``Patient/<id>`` or ``<id>`` of the patient index
``entity``    ``Patient/<id>``, ``Appointment/<id>`` (the registration), or
              the identifier of any participant object (study UID, CX...)
``agent``     the ``UserID``, ``AlternativeUserID`` or an AE title of a
              participant
``type``      the event ID, ``[system|]code``, e.g. ``110112``
``subtype``   the event type, e.g. ``RAD-14`` or ``urn:ihe:event-type-code|RAD-14``
``action``    ``C``, ``R``, ``U``, ``D`` or ``E``
``outcome``   ``0``, ``4``, ``8`` or ``12``
``_count``    page size, 50 by default, at most 500
============  ===============================================================

Values separated by commas are alternatives (OR); different parameters all
apply (AND). Pages are linked by ``next`` and ``previous`` links carrying
``_offset``. ``GET /fhir/AuditEvent/<id>`` reads one event, and
``GET /api/registrations/<id>/audit`` gives the whole trail of one
registration, from the patient's identity feed to the console, in one Bundle.

Only a security officer may call these endpoints, and every call is itself
audited as Audit Log Used (110101).

Limitations
-----------
A date or dateTime without a timezone is read as UTC. Unknown search
parameters are ignored, as FHIR allows by default, and so are modifiers;
chained parameters and ``_sort`` are not supported (the order is always the
event time, then the record id). Offset paging can repeat or skip an event
when events are recorded inside the searched period between two pages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any, cast
from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, jsonify, request, url_for
from sqlalchemy import ColumnElement, and_, exists, false, func, or_, select

from ihe.iua.roles import Role
from mappings.fhir_audit_event import (
    DCM_SYSTEM,
    IHE_EVENT_TYPE_SYSTEM,
    to_audit_event,
)
from server import audit
from server.errors import InputError, NotFound
from server.http.auth import caller, requires
from server.models import AuditRecord, AuditSearchKey, Registration
from server.runtime import Runtime

bp = Blueprint("audit_events", __name__)
trail_bp = Blueprint("audit_trail", __name__)

FHIR_JSON = "application/fhir+json"
DEFAULT_COUNT = 50
MAX_COUNT = 500
ACTIONS = frozenset("CRUDE")
OUTCOMES = frozenset({"0", "4", "8", "12"})
_DATE = re.compile(
    r"^(?P<year>\d{4})(-(?P<month>\d{2})(-(?P<day>\d{2})"
    r"(T(?P<hour>\d{2}):(?P<minute>\d{2})(:(?P<second>\d{2})(?P<fraction>\.\d+)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_PREFIXES = ("ge", "gt", "le", "lt", "eq")


@dataclass(frozen=True)
class Page:
    """One page of a search: the matching records and their total."""

    records: list[AuditRecord]
    total: int
    offset: int
    count: int


def rt() -> Runtime:
    """The runtime this app serves."""
    return cast(Runtime, current_app.config["SPIDERS_RUNTIME"])


@bp.get("/AuditEvent")
@requires(Role.SECURITY_OFFICER)
def search_audit_events() -> Response:
    """ITI-81: search audit events; a ``date`` bound is required."""
    conditions = search_conditions(request.args.to_dict(flat=False))
    count = _int_param("_count", DEFAULT_COUNT, 1, MAX_COUNT)
    offset = _int_param("_offset", 0, 0, None)
    with rt().db.session() as session:
        total = session.scalar(
            select(func.count()).select_from(AuditRecord).where(*conditions)
        )
        records = session.scalars(
            select(AuditRecord)
            .where(*conditions)
            .order_by(AuditRecord.event_time, AuditRecord.id)
            .offset(offset)
            .limit(count)
        ).all()
        page = Page(list(records), int(total or 0), offset, count)
        _audit_read(session)
        bundle = _bundle(page, links=_links(page))

    return _fhir(bundle)


@bp.get("/AuditEvent/<resource_id>")
@requires(Role.SECURITY_OFFICER)
def read_audit_event(resource_id: str) -> Response:
    """Read one audit event."""
    with rt().db.session() as session:
        record = (
            session.get(AuditRecord, int(resource_id))
            if resource_id.isdigit()
            else None
        )
        if record is None:
            raise NotFound(f"AuditEvent/{resource_id} is unknown")
        _audit_read(session)
        resource = _resource(record)

    return _fhir(resource)


@trail_bp.get("/registrations/<registration_id>/audit")
@requires(Role.SECURITY_OFFICER)
def registration_trail(registration_id: str) -> Response:
    """Every audit event of one registration and of its patient's feed."""
    with rt().db.session() as session:
        registration = session.get(Registration, registration_id)
        if registration is None:
            raise NotFound(f"registration {registration_id} is unknown")
        records = session.scalars(
            select(AuditRecord)
            .where(trail_condition(registration_id, registration.patient_id))
            .order_by(AuditRecord.event_time, AuditRecord.id)
        ).all()
        page = Page(list(records), len(records), 0, len(records))
        _audit_read(session)
        bundle = _bundle(page, links=[{"relation": "self", "url": request.url}])

    return _fhir(bundle)


def trail_condition(registration_id: str, patient_id: str) -> ColumnElement[bool]:
    """Records of the registration, and those of its patient outside any."""
    return or_(
        AuditRecord.registration_id == registration_id,
        and_(
            AuditRecord.registration_id.is_(None),
            AuditRecord.patient_id == patient_id,
        ),
    )


def search_conditions(args: dict[str, list[str]]) -> list[ColumnElement[bool]]:
    """The WHERE conditions of an ITI-81 search.

    Parameters
    ----------
    args : dict of str to list of str
        The query parameters, each with all its values.

    Returns
    -------
    list of sqlalchemy conditions
        To be combined with AND.

    Raises
    ------
    InputError
        If no ``date`` bound is given, or a value is malformed.
    """
    dates = args.get("date", [])
    if not dates:
        raise InputError(
            "ITI-81 requires a date bound: date=ge<start>&date=le<end>",
            [("date", "at least one date parameter is required")],
        )
    conditions = [_date_condition(value) for value in dates]
    builders = {
        "patient": _patient_condition,
        "entity": _entity_condition,
        "agent": _agent_condition,
        "type": _type_condition,
        "subtype": _subtype_condition,
        "action": _action_condition,
        "outcome": _outcome_condition,
    }
    for name, build in builders.items():
        for value in args.get(name, []):
            alternatives = [item for item in value.split(",") if item]
            conditions.append(or_(*[build(item) for item in alternatives]))

    return conditions


def date_range(value: str) -> tuple[datetime, datetime]:
    """The instants ``[start, end)`` a FHIR date or dateTime covers.

    Raises
    ------
    InputError
        If `value` is not a FHIR date or dateTime.
    """
    match = _DATE.match(value)
    if match is None:
        raise InputError(
            f"{value!r} is not a FHIR date or dateTime",
            [("date", "expected e.g. 2025-03-21 or 2025-03-21T14:30:00+01:00")],
        )
    parts = {
        k: int(v)
        for k, v in match.groupdict().items()
        if v and k not in ("tz", "fraction")
    }
    tz = _timezone(match["tz"])
    try:
        start = datetime(
            parts["year"],
            parts.get("month", 1),
            parts.get("day", 1),
            parts.get("hour", 0),
            parts.get("minute", 0),
            parts.get("second", 0),
            tzinfo=tz,
        )
    except ValueError as exc:
        raise InputError(
            f"{value!r} is not a valid date", [("date", str(exc))]
        ) from exc
    if match["fraction"]:
        start += timedelta(seconds=float(match["fraction"]))

    return start, _end_of_precision(start, match)


def _date_condition(value: str) -> ColumnElement[bool]:
    prefix, text = ("eq", value)
    if value[:2] in _PREFIXES:
        prefix, text = value[:2], value[2:]
    start, end = date_range(text)
    column = AuditRecord.event_time
    if prefix == "ge":
        return column >= start
    if prefix == "gt":
        return column >= end
    if prefix == "le":
        return column < end
    if prefix == "lt":
        return column < start

    return and_(column >= start, column < end)


def _patient_condition(value: str) -> ColumnElement[bool]:
    return AuditRecord.patient_id == value.removeprefix("Patient/")


def _entity_condition(value: str) -> ColumnElement[bool]:
    if value.startswith("Patient/"):
        return _patient_condition(value)
    if value.startswith("Appointment/"):
        registration_id = value.removeprefix("Appointment/")
        return or_(
            AuditRecord.registration_id == registration_id, _key("entity", value)
        )

    return _key("entity", value.removeprefix("urn:oid:"))


def _agent_condition(value: str) -> ColumnElement[bool]:
    return _key("agent", value)


def _type_condition(value: str) -> ColumnElement[bool]:
    system, code = _token(value)
    if system not in (None, DCM_SYSTEM):
        return false()

    return AuditRecord.event_id == code


def _subtype_condition(value: str) -> ColumnElement[bool]:
    system, code = _token(value)
    if system not in (None, DCM_SYSTEM, IHE_EVENT_TYPE_SYSTEM):
        return false()

    return AuditRecord.event_type == code


def _action_condition(value: str) -> ColumnElement[bool]:
    if value not in ACTIONS:
        raise InputError(
            f"action {value!r} is not C, R, U, D or E", [("action", "unknown code")]
        )

    return AuditRecord.event_action == value


def _outcome_condition(value: str) -> ColumnElement[bool]:
    _, code = _token(value)
    if code not in OUTCOMES:
        raise InputError(
            f"outcome {value!r} is not 0, 4, 8 or 12", [("outcome", "unknown code")]
        )

    return AuditRecord.outcome == int(code)


def _key(kind: str, value: str) -> ColumnElement[bool]:
    return exists().where(
        AuditSearchKey.record_id == AuditRecord.id,
        AuditSearchKey.kind == kind,
        AuditSearchKey.value == value,
    )


def _token(value: str) -> tuple[str | None, str]:
    system, sep, code = value.rpartition("|")
    return (system or None) if sep else None, code


def _timezone(text: str | None) -> tzinfo:
    if text is None or text == "Z":
        return UTC
    hours, minutes = int(text[1:3]), int(text[4:6])
    if hours > 14 or minutes > 59:
        raise InputError(f"timezone {text!r} is invalid", [("date", "bad offset")])
    offset = timedelta(hours=hours, minutes=minutes)

    return timezone(-offset if text[0] == "-" else offset)


def _end_of_precision(start: datetime, match: re.Match[str]) -> datetime:
    if match["fraction"] or match["second"]:
        return start + timedelta(milliseconds=1 if match["fraction"] else 1000)
    if match["minute"]:
        return start + timedelta(minutes=1)
    if match["day"]:
        return start + timedelta(days=1)
    if match["month"]:
        year, month = divmod(start.month, 12)
        return start.replace(year=start.year + year, month=month + 1)

    return start.replace(year=start.year + 1)


def _int_param(name: str, default: int, low: int, high: int | None) -> int:
    text = request.args.get(name)
    if text is None:
        return default
    if not text.isdigit() or int(text) < low:
        raise InputError(f"{name} must be an integer of at least {low}", [(name, text)])

    return int(text) if high is None else min(int(text), high)


def _audit_read(session: Any) -> None:
    audit.audit_log_used(
        session,
        rt().settings,
        log_uri=request.base_url,
        query=request.query_string or None,
        user=caller(),
        address=request.remote_addr,
    )


def _resource(record: AuditRecord) -> dict[str, Any]:
    return to_audit_event(
        record.xml, resource_id=str(record.id), patient_id=record.patient_id
    )


def _bundle(page: Page, links: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": page.total,
        "link": links,
        "entry": [
            {
                "fullUrl": url_for(
                    "audit_events.read_audit_event",
                    resource_id=str(record.id),
                    _external=True,
                ),
                "resource": _resource(record),
                "search": {"mode": "match"},
            }
            for record in page.records
        ],
    }


def _links(page: Page) -> list[dict[str, str]]:
    links = [{"relation": "self", "url": request.url}]
    params = [(k, v) for k, v in request.args.items(multi=True) if k != "_offset"]

    def at(offset: int) -> str:
        query = urlencode([*params, ("_offset", str(offset))])
        return f"{request.base_url}?{query}"

    if page.offset + page.count < page.total:
        links.append({"relation": "next", "url": at(page.offset + page.count)})
    if page.offset > 0:
        links.append(
            {"relation": "previous", "url": at(max(0, page.offset - page.count))}
        )

    return links


def _fhir(body: dict[str, Any]) -> Response:
    response = jsonify(body)
    response.mimetype = FHIR_JSON

    return response
