"""The FHIR endpoint: identity feed, registration, errors as OperationOutcome."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from server.models import AuditRecord, Patient, Registration
from server.runtime import Runtime
from tests.audit_schema import assert_valid_audit
from tests.conftest import load_json
from tests.fhir_schema import assert_valid_fhir

C20A = "fhir/C20a-appointment-instant-without-timezone-dst-day.json"
C21 = "fhir/C21-appointment-noshow-with-cancelation-reason.json"
C22 = "fhir/C22-patient-primitive-extensions-without-value.json"
FHIR = "application/fhir+json"


RELIABILITY = (
    "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-identity-reliability"
)


def qualified(status: str = "VALI") -> dict[str, Any]:
    """The FR Core identity-reliability extension with `status`."""
    return {
        "url": RELIABILITY,
        "extension": [
            {
                "url": "identityStatus",
                "valueCoding": {
                    "system": "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0445",
                    "code": status,
                },
            }
        ],
    }


def patient_body(local: str = "A1", ins: str = "158037512345678") -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "extension": [qualified()],
        "identifier": [
            {"system": "urn:oid:1.2.250.1.213.1.4.8", "value": ins},
            {"system": "urn:oid:2.999.1.1", "value": local},
        ],
        "name": [{"use": "official", "family": "LÉVÊQUE", "given": ["Noël"]}],
        "gender": "male",
        "birthDate": "1958-03-14",
    }


def appointment_body(patient_id: str, key: str = "RCP-1") -> dict[str, Any]:
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


def post(client: FlaskClient, path: str, body: Any) -> Any:
    return client.post(path, data=json.dumps(body), content_type=FHIR)


def count(rt: Runtime, model: Any) -> int:
    with rt.db.session() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def assert_outcome(rsp: Any, status: int) -> dict[str, Any]:
    assert rsp.status_code == status, rsp.get_data(as_text=True)
    assert rsp.mimetype == FHIR
    body = rsp.get_json()
    assert body["resourceType"] == "OperationOutcome"
    assert_valid_fhir(body)
    return dict(body)


def test_metadata_capability_statement_is_valid_r4(client: FlaskClient) -> None:
    rsp = client.get("/fhir/metadata")
    assert rsp.status_code == 200
    body = rsp.get_json()
    assert body["fhirVersion"] == "4.0.1"
    assert_valid_fhir(body)


def test_create_patient_links_identifiers_and_audits(
    client: FlaskClient, rt: Runtime
) -> None:
    rsp = post(client, "/fhir/Patient", patient_body())
    assert rsp.status_code == 201
    created = rsp.get_json()
    assert rsp.headers["Location"].endswith(f"/fhir/Patient/{created['id']}")
    assert rsp.headers["ETag"] == 'W/"1"'
    assert_valid_fhir(created)
    with rt.db.session() as session:
        patient = session.get(Patient, created["id"])
        assert patient is not None
        assert sorted((i.system, i.value) for i in patient.identifiers) == [
            ("1.2.250.1.213.1.4.8", "158037512345678"),
            ("2.999.1.1", "A1"),
        ]
        records = session.scalars(select(AuditRecord)).all()
        # The token's first use (110114), then the feed itself.
        assert [(r.event_id, r.event_action) for r in records] == [
            ("110114", "E"),
            ("110110", "C"),
        ]
        assert_valid_audit(records[1].xml.encode())


def test_create_patient_again_with_new_identifier_updates_same_patient(
    client: FlaskClient, rt: Runtime
) -> None:
    first = post(client, "/fhir/Patient", patient_body()).get_json()
    body = patient_body()
    body["identifier"].append({"system": "urn:oid:2.999.1.2", "value": "B7"})
    rsp = post(client, "/fhir/Patient", body)
    assert rsp.status_code == 200
    assert rsp.get_json()["id"] == first["id"]
    assert rsp.headers["ETag"] == 'W/"2"'
    assert count(rt, Patient) == 1


def test_create_patient_homonym_with_other_ins_is_another_patient(
    client: FlaskClient, rt: Runtime
) -> None:
    one = post(client, "/fhir/Patient", patient_body("A1", "158037512345678"))
    two = post(client, "/fhir/Patient", patient_body("A2", "158037598765432"))
    assert (one.status_code, two.status_code) == (201, 201)
    assert one.get_json()["id"] != two.get_json()["id"]
    assert count(rt, Patient) == 2


def test_create_patient_joining_two_patients_is_refused(
    client: FlaskClient, rt: Runtime
) -> None:
    post(client, "/fhir/Patient", patient_body("A1", "158037512345678"))
    post(client, "/fhir/Patient", patient_body("A2", "158037598765432"))
    rsp = post(client, "/fhir/Patient", patient_body("A1", "158037598765432"))
    body = assert_outcome(rsp, 409)
    assert "merge" in body["issue"][0]["diagnostics"]
    assert count(rt, Patient) == 2


def test_create_patient_c22_value_less_primitives_kept_on_read(
    client: FlaskClient,
) -> None:
    rsp = post(client, "/fhir/Patient", load_json(C22))
    assert rsp.status_code == 201
    read = client.get(rsp.headers["Location"]).get_json()
    assert read["_birthDate"]["extension"][0]["valueCode"] == "masked"
    assert read["name"][0]["given"] == ["Hélène", None]
    assert "birthDate" not in read


def test_create_appointment_registers_case_and_queues_discovery(
    client: FlaskClient, rt: Runtime
) -> None:
    patient = post(client, "/fhir/Patient", patient_body()).get_json()
    rsp = post(client, "/fhir/Appointment", appointment_body(patient["id"]))
    assert rsp.status_code == 201
    appt = rsp.get_json()
    assert_valid_fhir(appt)
    assert rsp.headers["Location"].endswith(f"/fhir/Appointment/{appt['id']}")
    with rt.db.session() as session:
        registration = session.get(Registration, appt["id"])
        assert registration is not None
        assert registration.discovery == "queued"
        assert registration.patient_id == patient["id"]
        assert registration.meeting_start is not None
        assert registration.meeting_start.isoformat() == "2030-04-02T12:30:00+00:00"
    detail = client.get(f"/api/registrations/{appt['id']}").get_json()
    assert detail["state"] == "discovering"


def test_create_appointment_resent_is_registered_once(
    client: FlaskClient, rt: Runtime
) -> None:
    patient = post(client, "/fhir/Patient", patient_body()).get_json()
    first = post(client, "/fhir/Appointment", appointment_body(patient["id"]))
    again = post(client, "/fhir/Appointment", appointment_body(patient["id"]))
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.get_json()["id"] == first.get_json()["id"]
    assert count(rt, Registration) == 1
    changed = appointment_body(patient["id"])
    changed["start"], changed["end"] = (
        "2030-05-01T09:00:00+02:00",
        "2030-05-01T10:00:00+02:00",
    )
    assert_outcome(post(client, "/fhir/Appointment", changed), 409)
    assert count(rt, Registration) == 1


def test_create_appointment_c20a_zoneless_instants_422_nothing_stored(
    client: FlaskClient, rt: Runtime
) -> None:
    rsp = post(client, "/fhir/Appointment", load_json(C20A))
    body = assert_outcome(rsp, 422)
    offset = "an instant needs its time and UTC offset (2030-04-02T14:30:00+02:00)"
    assert [(i["expression"], i["diagnostics"]) for i in body["issue"]] == [
        (["Appointment.start"], offset),
        (["Appointment.end"], offset),
    ]
    assert count(rt, Registration) == 0


def test_create_appointment_c21_noshow_with_cancelation_reason_201(
    client: FlaskClient, rt: Runtime
) -> None:
    patient = patient_body()
    patient["id"] = "pat-4000147"
    assert (
        client.put(
            "/fhir/Patient/pat-4000147", data=json.dumps(patient), content_type=FHIR
        ).status_code
        == 201
    )
    rsp = post(client, "/fhir/Appointment", load_json(C21))
    assert rsp.status_code == 201, rsp.get_data(as_text=True)
    read = client.get(rsp.headers["Location"]).get_json()
    assert read["status"] == "noshow"
    assert read["cancelationReason"]["coding"][0]["code"] == "pat"
    with rt.db.session() as session:
        registration = session.get(Registration, read["id"])
        assert registration is not None
        assert registration.discovery == "none"


def test_create_appointment_unknown_patient_422_nothing_stored(
    client: FlaskClient, rt: Runtime
) -> None:
    body = assert_outcome(
        post(client, "/fhir/Appointment", appointment_body("nobody")), 422
    )
    assert body["issue"][0]["code"] == "not-found"
    assert count(rt, Registration) == 0


def test_create_appointment_reference_and_identifier_of_two_patients_422(
    client: FlaskClient, rt: Runtime
) -> None:
    first = post(client, "/fhir/Patient", patient_body("A1", "158037512345678"))
    other = post(client, "/fhir/Patient", patient_body("A2", "258037512345679"))
    assert (first.status_code, other.status_code) == (201, 201)
    body = appointment_body(first.get_json()["id"])
    actor = body["participant"][0]["actor"]
    actor["type"] = "Patient"
    actor["identifier"] = {"system": "urn:oid:2.999.1.1", "value": "A2"}
    outcome = assert_outcome(post(client, "/fhir/Appointment", body), 422)
    assert [(i["code"], i["diagnostics"]) for i in outcome["issue"]] == [
        ("invalid", "reference and identifier do not name the same patient")
    ]
    assert count(rt, Registration) == 0
    actor["identifier"]["value"] = "A1"
    assert post(client, "/fhir/Appointment", body).status_code == 201


def test_create_appointment_for_a_merged_patient_registers_its_survivor(
    client: FlaskClient, rt: Runtime
) -> None:
    from ihe.pix import patient_index
    from mappings.identifiers import Identifier

    survivor = post(client, "/fhir/Patient", patient_body("A1")).get_json()["id"]
    absorbed = post(
        client, "/fhir/Patient", patient_body("A2", "258037512345679")
    ).get_json()["id"]
    with rt.db.session() as session:
        patient_index.merge(
            session, Identifier("2.999.1.1", "A1"), Identifier("2.999.1.1", "A2")
        )
        session.commit()
    rsp = post(client, "/fhir/Appointment", appointment_body(absorbed))
    assert rsp.status_code == 201, rsp.get_data(as_text=True)
    with rt.db.session() as session:
        (registration,) = session.scalars(select(Registration)).all()
        assert registration.patient_id == survivor
    # The retired record cannot be rewritten: it would touch the survivor.
    again = client.put(
        f"/fhir/Patient/{absorbed}",
        data=json.dumps({**patient_body("B9", "258037512345679"), "id": absorbed}),
        content_type=FHIR,
    )
    outcome = assert_outcome(again, 409)
    assert outcome["issue"][0]["diagnostics"] == (
        f"Patient/{absorbed} was merged into Patient/{survivor}: update the "
        "surviving patient"
    )


def test_create_appointment_numeric_instants_422_nothing_stored(
    client: FlaskClient, rt: Runtime
) -> None:
    patient = post(client, "/fhir/Patient", patient_body()).get_json()
    body = {**appointment_body(patient["id"]), "start": 1901772000, "end": 1901779200}
    outcome = assert_outcome(post(client, "/fhir/Appointment", body), 422)
    assert [(i["expression"], i["diagnostics"]) for i in outcome["issue"]] == [
        (["Appointment.start"], "an instant is a JSON string"),
        (["Appointment.end"], "an instant is a JSON string"),
    ]
    assert count(rt, Registration) == 0


def test_create_appointment_without_board_422(client: FlaskClient, rt: Runtime) -> None:
    patient = post(client, "/fhir/Patient", patient_body()).get_json()
    body = appointment_body(patient["id"])
    body["participant"] = body["participant"][:1]
    assert_outcome(post(client, "/fhir/Appointment", body), 422)
    assert count(rt, Registration) == 0


def test_post_not_json_400(client: FlaskClient) -> None:
    rsp = client.post("/fhir/Appointment", data=b"\xff{not json", content_type=FHIR)
    assert_outcome(rsp, 400)


def test_post_json_array_400(client: FlaskClient) -> None:
    assert_outcome(post(client, "/fhir/Patient", [1, 2]), 400)


def test_read_unknown_resources_404(client: FlaskClient) -> None:
    for path in (
        "/fhir/Patient/x",
        "/fhir/Appointment/x",
        "/fhir/Task/x",
        "/api/registrations/x",
        "/fhir/Nothing",
    ):
        assert_outcome(client.get(path), 404)


def test_put_patient_bad_id_400(client: FlaskClient) -> None:
    rsp = client.put(
        "/fhir/Patient/bad_id!", data=json.dumps(patient_body()), content_type=FHIR
    )
    assert_outcome(rsp, 400)


def test_put_patient_id_mismatch_422(client: FlaskClient) -> None:
    body = patient_body()
    body["id"] = "other"
    rsp = client.put("/fhir/Patient/mine", data=json.dumps(body), content_type=FHIR)
    assert_outcome(rsp, 422)


def test_refused_request_logs_the_route_not_the_path(
    client: FlaskClient, anonymous: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # A hospital number sent where a resource id belongs.
    assert client.get("/fhir/Patient/IPP-7731").status_code == 404
    assert anonymous.get("/fhir/Patient/IPP-7731").status_code == 401
    logged = [
        " ".join([r.getMessage(), *map(str, r.__dict__.values())])
        for r in caplog.records
    ]
    assert not [x for x in logged if "IPP-7731" in x]
    routes = {getattr(r, "route", None) for r in caplog.records}
    assert "GET /fhir/Patient/<resource_id>" in routes


def test_patient_fed_again_without_traits_reads_with_the_kept_ones(
    client: FlaskClient,
) -> None:
    first = post(client, "/fhir/Patient", patient_body()).get_json()
    bare = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:2.999.1.1", "value": "A1"}],
    }
    assert post(client, "/fhir/Patient", bare).status_code in (200, 201)
    read = client.get(f"/fhir/Patient/{first['id']}").get_json()
    assert_valid_fhir(read)
    assert (read["name"], read["gender"], read["birthDate"]) == (
        [{"family": "LÉVÊQUE", "given": ["Noël"]}],
        "male",
        "1958-03-14",
    )
    found = client.get("/fhir/Patient?identifier=urn:oid:2.999.1.1|A1").get_json()
    assert found["entry"][0]["resource"]["birthDate"] == "1958-03-14"
