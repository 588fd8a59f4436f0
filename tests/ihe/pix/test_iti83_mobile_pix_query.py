"""ITI-83 PIXm: $ihe-pix answers, every failure of ITI TF-2 3.83.4.2.2, audit."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask.testing import FlaskClient
from lxml import etree
from sqlalchemy import select

from ihe.pix import patient_index
from mappings.identifiers import Identifier
from server.config import Settings, load_settings
from server.models import AuditRecord
from server.runtime import Runtime
from tests.conftest import auth_headers
from tests.fhir_schema import assert_valid_fhir

FHIR = "application/fhir+json"
BASE = "http://localhost/fhir"
PIX = "/fhir/Patient/$ihe-pix"
SITE_DOMAIN = "2.999.1.9"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A sites file declaring a domain no patient has an identifier in yet."""
    sites = tmp_path / "sites.yaml"
    site = {
        "name": "chu-sud",
        "ae_title": "CHU_SUD",
        "host": "127.0.0.1",
        "port": 104,
        "patient_id_domain": SITE_DOMAIN,
    }
    sites.write_text(yaml.safe_dump({"sites": [site]}), encoding="utf-8")
    return load_settings(
        {"SPIDERS_DATA_DIR": str(tmp_path / "var"), "SPIDERS_SITES_FILE": str(sites)}
    )


def feed(client: FlaskClient, *idents: tuple[str, str]) -> str:
    body = {
        "resourceType": "Patient",
        "identifier": [{"system": f"urn:oid:{s}", "value": v} for s, v in idents],
        "name": [{"family": "LÉVÊQUE", "given": ["Noël"]}],
        "gender": "male",
        "birthDate": "1958-03-14",
    }
    rsp = client.post("/fhir/Patient", data=json.dumps(body), content_type=FHIR)
    assert rsp.status_code == 201, rsp.get_data(as_text=True)
    return str(rsp.get_json()["id"])


def pix(client: FlaskClient, query: str) -> Any:
    return client.get(f"{PIX}?{query}")


def params(rsp: Any) -> list[tuple[str, Any]]:
    assert rsp.status_code == 200, rsp.get_data(as_text=True)
    assert rsp.mimetype == FHIR
    body = rsp.get_json()
    assert body["resourceType"] == "Parameters"
    assert_valid_fhir(body)
    return sorted(
        (
            (p["name"], p.get("valueIdentifier") or p.get("valueReference"))
            for p in body.get("parameter", [])
        ),
        key=lambda pair: json.dumps(pair, sort_keys=True),
    )


def outcome(rsp: Any, status: int, code: str, diagnostics: str) -> None:
    assert rsp.status_code == status, rsp.get_data(as_text=True)
    body = rsp.get_json()
    assert_valid_fhir(body)
    assert body["resourceType"] == "OperationOutcome"
    assert [(i["severity"], i["code"], i["diagnostics"]) for i in body["issue"]] == [
        ("error", code, diagnostics)
    ]


def test_iti83_known_identifier_returns_other_identifiers_and_target_id(
    client: FlaskClient,
) -> None:
    pid = feed(client, ("2.999.1.1", "A1"), ("2.999.1.2", "B7"))
    rsp = pix(client, "sourceIdentifier=urn:oid:2.999.1.1|A1")
    assert params(rsp) == [
        ("targetId", {"reference": f"Patient/{pid}"}),
        ("targetIdentifier", {"system": "urn:oid:2.999.1.2", "value": "B7"}),
    ]


def test_iti83_target_system_restricts_domains_and_drops_target_id(
    client: FlaskClient,
) -> None:
    feed(client, ("2.999.1.1", "A1"), ("2.999.1.2", "B7"), ("2.999.1.3", "C3"))
    rsp = pix(
        client,
        "sourceIdentifier=urn:oid:2.999.1.1|A1&targetSystem=urn:oid:2.999.1.3",
    )
    assert params(rsp) == [
        ("targetIdentifier", {"system": "urn:oid:2.999.1.3", "value": "C3"})
    ]


def test_iti83_target_system_fhir_base_returns_target_id_only(
    client: FlaskClient,
) -> None:
    pid = feed(client, ("2.999.1.1", "A1"), ("2.999.1.2", "B7"))
    rsp = pix(client, f"sourceIdentifier=urn:oid:2.999.1.1|A1&targetSystem={BASE}")
    assert params(rsp) == [("targetId", {"reference": f"Patient/{pid}"})]


def test_iti83_source_logical_id_returns_identifiers(client: FlaskClient) -> None:
    pid = feed(client, ("2.999.1.1", "A1"), ("2.999.1.2", "B7"))
    rsp = pix(client, f"sourceIdentifier={BASE}|Patient/{pid}")
    assert params(rsp) == [
        ("targetIdentifier", {"system": "urn:oid:2.999.1.1", "value": "A1"}),
        ("targetIdentifier", {"system": "urn:oid:2.999.1.2", "value": "B7"}),
    ]


def test_iti83_known_but_nothing_in_target_domain_200_empty_parameters(
    client: FlaskClient,
) -> None:
    feed(client, ("2.999.1.1", "A1"))
    rsp = pix(
        client,
        f"sourceIdentifier=urn:oid:2.999.1.1|A1&targetSystem=urn:oid:{SITE_DOMAIN}",
    )
    assert rsp.status_code == 200
    assert rsp.get_json() == {"resourceType": "Parameters"}
    assert_valid_fhir(rsp.get_json())


def test_iti83_unknown_source_domain_400_code_invalid(client: FlaskClient) -> None:
    feed(client, ("2.999.1.1", "A1"))
    rsp = pix(client, "sourceIdentifier=urn:oid:2.999.77|A1")
    outcome(rsp, 400, "code-invalid", "sourceIdentifier Assigning Authority not found")


def test_iti83_unknown_target_domain_403_code_invalid(client: FlaskClient) -> None:
    feed(client, ("2.999.1.1", "A1"))
    rsp = pix(
        client, "sourceIdentifier=urn:oid:2.999.1.1|A1&targetSystem=urn:oid:2.999.77"
    )
    outcome(rsp, 403, "code-invalid", "targetSystem not found")
    assert "WWW-Authenticate" not in rsp.headers


def test_iti83_unknown_identifier_in_known_domain_404_not_found(
    client: FlaskClient,
) -> None:
    feed(client, ("2.999.1.1", "A1"))
    rsp = pix(client, "sourceIdentifier=urn:oid:2.999.1.1|NOPE")
    outcome(rsp, 404, "not-found", "sourceIdentifier Patient Identifier not found")


def test_iti83_site_domain_is_known_before_any_patient_404(
    client: FlaskClient,
) -> None:
    rsp = pix(client, f"sourceIdentifier=urn:oid:{SITE_DOMAIN}|X1")
    outcome(rsp, 404, "not-found", "sourceIdentifier Patient Identifier not found")


@pytest.mark.parametrize(
    "query",
    [
        "",
        "targetSystem=urn:oid:2.999.1.1",
        "sourceIdentifier=A1",
        "sourceIdentifier=urn:oid:2.999.1.1|",
        "sourceIdentifier=|A1",
        "sourceIdentifier=urn:oid:2.999.1.1|A1&sourceIdentifier=urn:oid:2.999.1.1|A2",
        "sourceIdentifier=urn:oid:2.999.1.1|A1&targetSystem=",
    ],
)
def test_iti83_missing_or_malformed_source_400_invalid(
    client: FlaskClient, query: str
) -> None:
    rsp = pix(client, query)
    assert rsp.status_code == 400
    body = rsp.get_json()
    assert_valid_fhir(body)
    assert [i["code"] for i in body["issue"]] == ["invalid"]


def test_iti83_format_xml_406(client: FlaskClient) -> None:
    feed(client, ("2.999.1.1", "A1"))
    rsp = pix(client, "sourceIdentifier=urn:oid:2.999.1.1|A1&_format=xml")
    assert rsp.status_code == 406
    assert rsp.get_json()["issue"][0]["code"] == "not-supported"


def test_iti83_merged_identifier_resolves_to_survivor(
    client: FlaskClient, rt: Runtime
) -> None:
    survivor = feed(client, ("2.999.1.1", "A1"), ("2.999.1.2", "B7"))
    feed(client, ("2.999.1.1", "A2"))
    with rt.db.session() as session:
        patient_index.merge(
            session, Identifier("2.999.1.1", "A1"), Identifier("2.999.1.1", "A2")
        )
    rsp = pix(client, "sourceIdentifier=urn:oid:2.999.1.1|A2")
    assert params(rsp) == [
        ("targetId", {"reference": f"Patient/{survivor}"}),
        ("targetIdentifier", {"system": "urn:oid:2.999.1.1", "value": "A1"}),
        ("targetIdentifier", {"system": "urn:oid:2.999.1.2", "value": "B7"}),
    ]


def test_iti83_post_parameters_body_same_answer(client: FlaskClient) -> None:
    pid = feed(client, ("2.999.1.1", "A1"), ("2.999.1.2", "B7"))
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "sourceIdentifier",
                "valueIdentifier": {"system": "urn:oid:2.999.1.1", "value": "A1"},
            },
            {"name": "targetSystem", "valueUri": "urn:oid:2.999.1.2"},
            {"name": "targetSystem", "valueUri": BASE},
        ],
    }
    rsp = client.post(PIX, data=json.dumps(body), content_type=FHIR)
    assert params(rsp) == [
        ("targetId", {"reference": f"Patient/{pid}"}),
        ("targetIdentifier", {"system": "urn:oid:2.999.1.2", "value": "B7"}),
    ]


def test_iti83_needs_a_reader_role_403(anonymous: FlaskClient, rt: Runtime) -> None:
    rsp = anonymous.get(
        f"{PIX}?sourceIdentifier=urn:oid:2.999.1.1|A1",
        headers=auth_headers(rt, "security-officer"),
    )
    assert rsp.status_code == 403
    assert 'error="insufficient_scope"' in rsp.headers["WWW-Authenticate"]


def query_audits(rt: Runtime) -> list[Any]:
    with rt.db.session() as session:
        rows = session.scalars(
            select(AuditRecord).where(AuditRecord.event_id == "110112")
        ).all()
        return [(r.event_type, r.outcome, r.patient_id, r.xml) for r in rows]


def test_iti83_answer_audited_as_query_with_patient_and_query_objects(
    client: FlaskClient, rt: Runtime
) -> None:
    pid = feed(client, ("2.999.1.1", "A1"), ("2.999.1.2", "B7"))
    query = "sourceIdentifier=urn:oid:2.999.1.1|A1"
    assert pix(client, query).status_code == 200
    [(event_type, result, patient_id, xml)] = query_audits(rt)
    assert (event_type, result, patient_id) == ("ITI-83", 0, pid)
    root = etree.fromstring(xml.encode())
    event_type_code = root.find("EventIdentification/EventTypeCode")
    assert dict(event_type_code.attrib) == {
        "csd-code": "ITI-83",
        "codeSystemName": "IHE Transactions",
        "originalText": "Mobile Patient Identifier Cross-reference Query",
    }
    objects = root.findall("ParticipantObjectIdentification")
    roles = [
        (o.get("ParticipantObjectTypeCode"), o.get("ParticipantObjectTypeCodeRole"))
        for o in objects
    ]
    assert roles == [("1", "1"), ("2", "24")]
    assert objects[0].get("ParticipantObjectID") == "A1^^^&2.999.1.1&ISO"
    assert objects[1].find("ParticipantObjectIDTypeCode").get("csd-code") == "ITI-83"
    sent = base64.b64decode(objects[1].findtext("ParticipantObjectQuery"))
    assert sent == query.encode()


def test_iti83_refused_query_audited_as_minor_failure(
    client: FlaskClient, rt: Runtime
) -> None:
    feed(client, ("2.999.1.1", "A1"))
    assert pix(client, "sourceIdentifier=urn:oid:2.999.1.1|NOPE").status_code == 404
    [(event_type, result, patient_id, _)] = query_audits(rt)
    assert (event_type, result, patient_id) == ("ITI-83", 4, None)
