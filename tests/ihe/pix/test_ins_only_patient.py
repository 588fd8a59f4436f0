"""A patient known to the index only by its INS, over HL7 v2 and FHIR.

Such a patient has no linked identifier while its INS is not trusted (PROV,
RECUP) or once a trusted one is downgraded; feeds of it must be answered and
audited like any other, naming the patient by the INS kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from mappings.identifiers import INS_NIR
from server.models import AuditRecord, Patient
from server.runtime import Runtime
from tests.audit_schema import assert_valid_audit
from tests.ihe.hl7v2.hl7v2_support import Client, adt, listening

NIR = "279089912300175"
INS = f"{NIR}^^^ASIP-SANTE-INS-NIR&{INS_NIR}&ISO^INS"
INS_CX = f"{NIR}^^^&{INS_NIR}&ISO^INS"


@pytest.fixture
def port(rt: Runtime) -> Iterator[int]:
    with listening(rt) as listening_port:
        yield listening_port


def only_patient(rt: Runtime) -> Patient:
    with rt.db.session() as session:
        (patient,) = session.scalars(select(Patient)).all()
        patient.identifiers  # noqa: B018 - loaded before the session closes
        return patient


def patient_record_audits(rt: Runtime) -> list[str]:
    with rt.db.session() as session:
        return list(
            session.scalars(
                select(AuditRecord.xml)
                .where(AuditRecord.event_id == "110110")
                .order_by(AuditRecord.id)
            )
        )


def test_hl7_feed_of_a_provisional_ins_alone_accepted_and_audited(
    rt: Runtime, port: int
) -> None:
    with Client(port) as client:
        ack = client.exchange(adt("A28-1", INS, reliability="PROV"))
    # Accepted, with the reason the INS links nothing (ERR-4 I, ERR-3 0).
    assert (ack.value("MSA-1"), ack.value("ERR-2"), ack.value("ERR-3")) == (
        "AA",
        "PID",
        "0",
    )
    assert ack.value("ERR-4") == "I"
    patient = only_patient(rt)
    assert (patient.ins_value, patient.ins_status, patient.identifiers) == (
        NIR,
        "PROV",
        [],
    )
    (xml,) = patient_record_audits(rt)
    assert f'ParticipantObjectID="{INS_CX.replace("&", "&amp;")}"' in xml
    assert_valid_audit(xml.encode("utf-8"))


def test_hl7_downgrade_of_an_ins_only_patient_unlinks_it(
    rt: Runtime, port: int
) -> None:
    with Client(port) as client:
        first = client.exchange(adt("A28-1", INS, reliability="VALI"))
        assert only_patient(rt).identifiers[0].value == NIR
        ack = client.exchange(adt("A08-1", INS, event="A08", reliability="PROV"))
    assert (first.value("MSA-1"), ack.value("MSA-1")) == ("AA", "AA")
    patient = only_patient(rt)
    assert (patient.ins_status, patient.identifiers) == ("PROV", [])


def test_fhir_feed_of_a_provisional_ins_alone_created(
    client: FlaskClient, rt: Runtime
) -> None:
    body = {
        "resourceType": "Patient",
        "identifier": [{"system": f"urn:oid:{INS_NIR}", "value": NIR}],
        "extension": [
            {
                "url": "https://hl7.fr/ig/fhir/core/StructureDefinition/"
                "fr-core-identity-reliability",
                "extension": [
                    {"url": "identityStatus", "valueCoding": {"code": "PROV"}}
                ],
            }
        ],
        "name": [{"family": "TEST", "given": ["Ins"]}],
        "gender": "female",
        "birthDate": "1979-08-22",
    }
    rsp = client.post(
        "/fhir/Patient", data=json.dumps(body), content_type="application/fhir+json"
    )
    assert rsp.status_code == 201, rsp.get_data(as_text=True)
    (xml,) = patient_record_audits(rt)
    assert f'ParticipantObjectID="{INS_CX.replace("&", "&amp;")}"' in xml
