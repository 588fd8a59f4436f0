"""Each HTTP action on patient data leaves its audit event."""

from __future__ import annotations

import json

from flask.testing import FlaskClient
from sqlalchemy import select

from server.models import AuditRecord
from server.runtime import Runtime
from tests.conftest import ALL_ROLES, token_for

FHIR = "application/fhir+json"


def events(rt: Runtime) -> list[tuple[str, str]]:
    with rt.db.session() as session:
        rows = session.scalars(select(AuditRecord).order_by(AuditRecord.id)).all()
        return [(r.event_id, r.event_action) for r in rows]


def test_first_use_of_a_token_is_a_user_authentication_once(
    anonymous: FlaskClient, rt: Runtime
) -> None:
    headers = {"Authorization": f"Bearer {token_for(rt, *ALL_ROLES, subject='dr-x')}"}
    for _ in range(3):
        assert anonymous.get("/api/registrations", headers=headers).status_code == 200
    assert events(rt).count(("110114", "E")) == 1
    other = {"Authorization": f"Bearer {token_for(rt, 'coordinator', subject='dr-y')}"}
    anonymous.get("/api/registrations", headers=other)
    assert events(rt).count(("110114", "E")) == 2


def test_reads_and_changes_of_a_case_are_procedure_records(
    client: FlaskClient, rt: Runtime
) -> None:
    patient = client.post(
        "/fhir/Patient",
        content_type=FHIR,
        data=json.dumps(
            {
                "resourceType": "Patient",
                "identifier": [{"system": "urn:oid:2.999.1.1", "value": "A1"}],
                "name": [{"family": "MARTIN", "given": ["Léa"]}],
            }
        ),
    ).get_json()
    appt = client.post(
        "/fhir/Appointment",
        content_type=FHIR,
        data=json.dumps(
            {
                "resourceType": "Appointment",
                "status": "booked",
                "start": "2030-01-01T10:00:00+01:00",
                "end": "2030-01-01T11:00:00+01:00",
                "participant": [
                    {
                        "actor": {"reference": f"Patient/{patient['id']}"},
                        "status": "accepted",
                    },
                    {"actor": {"reference": "Location/rcp"}, "status": "accepted"},
                ],
            }
        ),
    ).get_json()
    before = events(rt)
    assert client.get(f"/fhir/Patient/{patient['id']}").status_code == 200
    assert client.get(f"/fhir/Appointment/{appt['id']}").status_code == 200
    assert client.get(f"/api/registrations/{appt['id']}").status_code == 200
    assert (
        client.put(
            f"/api/registrations/{appt['id']}/selection", json={"candidates": []}
        ).status_code
        == 200
    )
    after = events(rt)[len(before) :]
    assert after == [("110110", "R"), ("110111", "R"), ("110111", "R"), ("110111", "U")]
    assert ("110111", "C") in before
