"""ITI-81 search of AuditEvent, read, roles, self-audit, and a registration's trail."""

from __future__ import annotations

import base64
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from ihe.atna import messages, outbox
from ihe.atna.codes import EventTypeCode
from ihe.atna.messages import AuditSource, Participant
from ihe.dicom.qr_scp import RetrieveSummary, StudySent
from server import audit
from server.models import AuditRecord, Candidate, Prefetch, PrefetchState, Registration
from server.runtime import Runtime
from tests.audit_schema import assert_valid_audit
from tests.conftest import auth_headers
from tests.fhir_schema import assert_valid_fhir

FHIR = "application/fhir+json"
DAY = datetime(2025, 3, 21, tzinfo=UTC)
PACS = Participant("PACS_NORD", "AETITLES=PACS_NORD", network_access_point="192.0.2.10")
US = Participant("spiders", "AETITLES=SPIDERS", is_requestor=True)
SOURCE = AuditSource("SPIDERS@test")
STUDY_A, STUDY_B = "2.999.1.10", "2.999.1.20"
CX_1, CX_2 = "A1^^^&2.999.1.1&ISO", "B2^^^&2.999.1.1&ISO"


@pytest.fixture
def officer(app: Flask, rt: Runtime) -> FlaskClient:
    """A client with the security officer's token."""
    client = app.test_client()
    token = auth_headers(rt, "security-officer")["Authorization"]
    client.environ_base["HTTP_AUTHORIZATION"] = token
    return client


def query_xml(hour: int, *, outcome: int = 0, minute: int = 0) -> bytes:
    return messages.query(
        sop_class_uid="1.2.840.10008.5.1.4.1.2.2.1",
        query=b"\x10\x00\x20\x00",
        source=US,
        destination=PACS,
        audit_source=SOURCE,
        patient_id=CX_1,
        event_type=EventTypeCode.RAD_14,
        outcome=outcome,
        when=DAY + timedelta(hours=hour, minutes=minute),
    )


def transfer_xml(hour: int, study: str, cx: str) -> bytes:
    return messages.instances_transferred(
        action="C",
        source=PACS,
        destination=US,
        audit_source=SOURCE,
        study_uid=study,
        sop_classes={"1.2.840.10008.5.1.4.1.1.2": 2},
        patient_id=cx,
        patient_name=None,
        event_type=EventTypeCode.RAD_16,
        when=DAY + timedelta(hours=hour),
    )


def seed(rt: Runtime) -> None:
    """Five events on 2025-03-21 (UTC): 10:00, 11:00, 12:00, 13:00, 14:00."""
    with rt.db.session() as session:
        outbox.record(session, query_xml(10), registration_id="r1", patient_id="p1")
        outbox.record(
            session,
            transfer_xml(11, STUDY_A, CX_1),
            registration_id="r1",
            patient_id="p1",
        )
        outbox.record(session, query_xml(12, outcome=8), patient_id="p1")
        outbox.record(
            session,
            transfer_xml(13, STUDY_B, CX_2),
            registration_id="r2",
            patient_id="p2",
        )
        outbox.record(session, query_xml(14))


def search(client: FlaskClient, query: str, status: int = 200) -> dict[str, Any]:
    rsp = client.get(f"/fhir/AuditEvent?{query}")
    assert rsp.status_code == status, rsp.get_data(as_text=True)
    assert rsp.mimetype == FHIR
    body: dict[str, Any] = rsp.get_json()
    assert_valid_fhir(body)
    return body


def hours(bundle: dict[str, Any]) -> list[int]:
    return [
        datetime.fromisoformat(e["resource"]["recorded"]).astimezone(UTC).hour
        for e in bundle["entry"]
    ]


def test_search_without_date_bound_400(officer: FlaskClient, rt: Runtime) -> None:
    seed(rt)

    body = search(officer, "patient=Patient/p1", 400)

    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["expression"] == ["date"]


@pytest.mark.parametrize(
    "date", ["ge2025-13-01", "geyesterday", "ge2025-03-21T10:00+15:00"]
)
def test_search_malformed_date_400(officer: FlaskClient, date: str) -> None:
    search(officer, f"date={date}", 400)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("date=ge2025-03-21T11:00:00Z&date=le2025-03-21T13:00:00Z", [11, 12, 13]),
        ("date=gt2025-03-21T11:00:00Z&date=lt2025-03-21T13:00:00Z", [12]),
        ("date=ge2025-03-21T11:30:00%2B01:00&date=le2025-03-21T12:00:00%2B01:00", [11]),
        ("date=2025-03-21", [10, 11, 12, 13, 14]),
        ("date=eq2025-03-21T12:00", [12]),
        ("date=lt2025-03-21T11:00:00Z", [10]),
        ("date=ge2025-03-22&date=le2025-12-31", []),
        ("date=2025-03", [10, 11, 12, 13, 14]),
        ("date=le2025", [10, 11, 12, 13, 14]),
    ],
)
def test_search_date_bounds(
    officer: FlaskClient, rt: Runtime, query: str, expected: list[int]
) -> None:
    seed(rt)

    bundle = search(officer, query)

    assert bundle["type"] == "searchset"
    assert hours(bundle) == expected
    assert bundle["total"] == len(expected)


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        ("patient=Patient/p1", [10, 11, 12]),
        ("patient=p2", [13]),
        ("patient=p1,p2", [10, 11, 12, 13]),
        ("entity=Patient/p2", [13]),
        ("entity=Appointment/r1", [10, 11]),
        (f"entity={STUDY_A}", [11]),
        (f"entity=urn:oid:{STUDY_B}", [13]),
        (f"entity={quote(CX_2, safe='')}", [13]),
        ("agent=PACS_NORD", [10, 11, 12, 13, 14]),
        ("agent=nobody", []),
        ("type=110112", [10, 12, 14]),
        ("type=http://dicom.nema.org/resources/ontology/DCM|110104", [11, 13]),
        ("type=http://other.example|110104", []),
        ("type=110104,110112", [10, 11, 12, 13, 14]),
        ("subtype=RAD-16", [11, 13]),
        ("subtype=urn:ihe:event-type-code|RAD-14", [10, 12, 14]),
        ("outcome=8", [12]),
        ("action=C", [11, 13]),
        ("patient=p1&type=110112", [10, 12]),
    ],
)
def test_search_each_filter(
    officer: FlaskClient, rt: Runtime, param: str, expected: list[int]
) -> None:
    seed(rt)

    bundle = search(officer, f"date=ge2025-03-21&{param.replace('+', '%2B')}")

    assert hours(bundle) == expected


@pytest.mark.parametrize("param", ["outcome=3", "action=X", "_count=zero", "_count=0"])
def test_search_bad_token_400(officer: FlaskClient, param: str) -> None:
    search(officer, f"date=ge2025-03-21&{param}", 400)


def test_search_pages_follow_next_links(officer: FlaskClient, rt: Runtime) -> None:
    with rt.db.session() as session:
        for minute in range(7):
            outbox.record(session, query_xml(9, minute=minute))

    seen: list[str] = []
    url: str | None = "/fhir/AuditEvent?date=ge2025-03-21&type=110112&_count=3"
    sizes = []
    while url is not None:
        parts = urlsplit(url)
        bundle = search(officer, parts.query)
        assert bundle["total"] == 7
        sizes.append(len(bundle["entry"]))
        seen += [e["resource"]["id"] for e in bundle["entry"]]
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        assert "self" in links
        url = links.get("next")
        if len(seen) > 3:
            assert "previous" in links

    assert sizes == [3, 3, 1]
    assert len(set(seen)) == 7
    assert [int(i) for i in seen] == sorted(int(i) for i in seen)


def test_search_every_audit_event_valid_r4(officer: FlaskClient, rt: Runtime) -> None:
    seed(rt)

    bundle = search(officer, "date=ge2025-01-01")

    for entry in bundle["entry"]:
        assert entry["resource"]["resourceType"] == "AuditEvent"
        assert_valid_fhir(entry["resource"])
        assert entry["fullUrl"].endswith(f"/fhir/AuditEvent/{entry['resource']['id']}")


def test_read_one_event_and_unknown_404(officer: FlaskClient, rt: Runtime) -> None:
    seed(rt)

    rsp = officer.get("/fhir/AuditEvent/2")
    assert rsp.status_code == 200
    event = rsp.get_json()
    assert_valid_fhir(event)
    assert event["type"]["code"] == "110104"
    patient = [e for e in event["entity"] if e["role"]["code"] == "1"]
    assert patient[0]["what"]["reference"] == "Patient/p1"
    assert officer.get("/fhir/AuditEvent/999").status_code == 404
    assert officer.get("/fhir/AuditEvent/abc").status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/fhir/AuditEvent?date=ge2025-01-01",
        "/fhir/AuditEvent/1",
        "/api/registrations/r1/audit",
    ],
)
def test_audit_endpoints_need_the_security_officer(
    client: FlaskClient, anonymous: FlaskClient, rt: Runtime, path: str
) -> None:
    seed(rt)

    assert client.get(path).status_code == 403
    assert anonymous.get(path).status_code == 401


def test_reading_the_trail_is_audited_as_audit_log_used(
    officer: FlaskClient, rt: Runtime
) -> None:
    seed(rt)

    search(officer, "date=ge2025-03-21&patient=Patient/p1")
    officer.get("/fhir/AuditEvent/1")

    with rt.db.session() as session:
        used = session.scalars(
            select(AuditRecord).where(AuditRecord.event_id == "110101")
        ).all()
    assert len(used) == 2
    for record in used:
        assert_valid_audit(record.xml.encode())
    search_record = used[0].xml
    assert "test-user" in search_record
    query = base64.b64encode(b"date=ge2025-03-21&patient=Patient/p1").decode()
    assert f"<ParticipantObjectQuery>{query}</ParticipantObjectQuery>" in search_record
    bundle = search(officer, "date=ge2020-01-01&type=110101&agent=test-user")
    assert bundle["total"] == 2


def patient_body(local: str, ins: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [
            {"system": "urn:oid:1.2.250.1.213.1.4.8", "value": ins},
            {"system": "urn:oid:2.999.1.1", "value": local},
        ],
        "name": [{"family": "DESŒUVRES", "given": ["Marie-Hélène"]}],
        "birthDate": "1961-02-03",
    }


def appointment_body(patient_id: str, key: str) -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "identifier": [{"system": "urn:oid:2.999.20.1", "value": key}],
        "status": "booked",
        "start": "2030-04-02T14:30:00+02:00",
        "end": "2030-04-02T16:30:00+02:00",
        "participant": [
            {"actor": {"reference": f"Patient/{patient_id}"}, "status": "accepted"},
            {"actor": {"reference": "Location/rcp-thorax"}, "status": "accepted"},
        ],
    }


def register(client: FlaskClient, local: str, ins: str, key: str) -> tuple[str, str]:
    def post(path: str, body: Any) -> Any:
        rsp = client.post(path, data=json.dumps(body), content_type=FHIR)
        assert rsp.status_code == 201, rsp.get_data(as_text=True)
        return rsp.get_json()

    patient = post("/fhir/Patient", patient_body(local, ins))
    appointment = post("/fhir/Appointment", appointment_body(patient["id"], key))
    return patient["id"], appointment["id"]


def prefetch_running(rt: Runtime, registration_id: str, study_uid: str) -> None:
    with rt.db.session() as session:
        registration = session.get(Registration, registration_id)
        assert registration is not None
        candidate = Candidate(
            site_name="chu-nord",
            study_uid=study_uid,
            patient_id_at_site="A1",
            selected=True,
        )
        registration.candidates.append(candidate)
        session.flush()
        session.add(
            Prefetch(
                candidate_id=candidate.id,
                registration_id=registration_id,
                site_name="chu-nord",
                study_uid=study_uid,
                state=PrefetchState.RUNNING,
                due_at=datetime.now(UTC),
                started_at=datetime.now(UTC),
            )
        )


def test_registration_trail_intake_to_console_in_one_query(
    client: FlaskClient, officer: FlaskClient, rt: Runtime
) -> None:
    settings = rt.settings
    patient_id, reg_id = register(client, "A1", "261027512345678", "RCP-7")
    _, other_reg = register(client, "B2", "158037512345679", "RCP-8")
    with rt.db.session() as session:
        # Discovery's query of a site, as the workflow records it.
        audit.site_query(
            session,
            settings,
            site_ae="PACS_NORD",
            site_host="192.0.2.10",
            query=b"\x10\x00\x20\x00",
            patient_cx_value=CX_1,
            sop_class_uid="1.2.840.10008.5.1.4.1.2.2.1",
            outcome=0,
            registration_id=reg_id,
        )
    prefetch_running(rt, reg_id, STUDY_A)
    with rt.db.session() as session:
        # The site's C-STORE into the cache, attributed through the prefetch.
        audit.instances_transferred(
            session,
            settings,
            source_ae="PACS_NORD",
            source_host="192.0.2.10",
            destination=audit.us(settings),
            study_uid=STUDY_A,
            sop_classes={"1.2.840.10008.5.1.4.1.1.2": 2},
            patient_id="A1",
            patient_name_value=None,
            action="C",
        )
    # The console's retrieve from the cache.
    audit.retrieve_sent(settings, rt.db)(
        RetrieveSummary(
            "RCP_CONSOLE",
            "192.0.2.50",
            "RCP_CONSOLE",
            "192.0.2.50",
            [StudySent(STUDY_A, "A1", None, Counter({"1.2.840.10008.5.1.4.1.1.2": 2}))],
        )
    )

    rsp = officer.get(f"/api/registrations/{reg_id}/audit")

    assert rsp.status_code == 200
    bundle = rsp.get_json()
    assert_valid_fhir(bundle)
    events = [
        (e["resource"]["type"]["code"], e["resource"]["action"])
        for e in bundle["entry"]
    ]
    assert events == [
        ("110110", "C"),
        ("110111", "C"),
        ("110112", "E"),
        ("110104", "C"),
        ("110104", "R"),
    ]
    console = bundle["entry"][-1]["resource"]
    assert [a["who"]["identifier"]["value"] for a in console["agent"]][1] == (
        "RCP_CONSOLE"
    )
    for entry in bundle["entry"]:
        patients = [e for e in entry["resource"]["entity"] if e["role"]["code"] == "1"]
        assert patients[0]["what"]["reference"] == f"Patient/{patient_id}"
    other = officer.get(f"/api/registrations/{other_reg}/audit").get_json()
    assert [e["resource"]["type"]["code"] for e in other["entry"]] == [
        "110110",
        "110111",
    ]
    assert officer.get("/api/registrations/nope/audit").status_code == 404
    with rt.db.session() as session:
        records = session.scalars(select(AuditRecord)).all()
    for record in records:
        assert_valid_audit(record.xml.encode())


def test_registration_entity_search_matches_the_trail(
    client: FlaskClient, officer: FlaskClient, rt: Runtime
) -> None:
    _, reg_id = register(client, "A1", "261027512345678", "RCP-9")

    bundle = search(officer, f"date=ge2020-01-01&entity=Appointment/{reg_id}")

    assert [e["resource"]["type"]["code"] for e in bundle["entry"]] == ["110111"]
    registration = bundle["entry"][0]["resource"]
    schedule = [e for e in registration["entity"] if e["role"]["code"] == "18"]
    assert schedule[0]["what"]["reference"] == f"Appointment/{reg_id}"


def test_offsets_in_the_query_are_honoured() -> None:
    from server.http.audit_events import date_range

    start, end = date_range("2025-03-21T12:30:00+01:00")

    assert start == datetime(2025, 3, 21, 11, 30, tzinfo=UTC)
    assert end - start == timedelta(seconds=1)
    start, end = date_range("2025-12")
    assert (start.tzinfo, end) == (UTC, datetime(2026, 1, 1, tzinfo=UTC))
    assert date_range("2025-03-21T10:00:00.5-02:00")[0] == datetime(
        2025, 3, 21, 12, 0, 0, 500000, tzinfo=UTC
    )
