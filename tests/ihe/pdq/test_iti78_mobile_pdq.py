"""ITI-78 PDQm: Patient search as a searchset Bundle, paging, merges, audit."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from flask.testing import FlaskClient
from lxml import etree
from sqlalchemy import select

from ihe.pix import patient_index
from mappings.identifiers import Identifier
from server.models import AuditRecord
from server.runtime import Runtime
from tests.fhir_schema import assert_valid_fhir

FHIR = "application/fhir+json"
BASE = "http://localhost/fhir"


def feed(
    client: FlaskClient,
    family: str,
    *idents: tuple[str, str],
    given: str = "Noël",
    gender: str = "male",
    birth: str = "1958-03-14",
) -> str:
    body = {
        "resourceType": "Patient",
        "identifier": [{"system": f"urn:oid:{s}", "value": v} for s, v in idents],
        "name": [{"family": family, "given": [given]}],
        "gender": gender,
        "birthDate": birth,
    }
    rsp = client.post("/fhir/Patient", data=json.dumps(body), content_type=FHIR)
    assert rsp.status_code == 201, rsp.get_data(as_text=True)
    return str(rsp.get_json()["id"])


def bundle(rsp: Any) -> dict[str, Any]:
    assert rsp.status_code == 200, rsp.get_data(as_text=True)
    assert rsp.mimetype == FHIR
    body = rsp.get_json()
    assert_valid_fhir(body)
    assert (body["resourceType"], body["type"]) == ("Bundle", "searchset")
    for entry in body.get("entry", []):
        if entry["search"]["mode"] == "match":
            assert entry["fullUrl"] == f"{BASE}/Patient/{entry['resource']['id']}"
    return dict(body)


def ids(body: dict[str, Any]) -> list[str]:
    return [
        e["resource"]["id"]
        for e in body.get("entry", [])
        if e["search"]["mode"] == "match"
    ]


def links(body: dict[str, Any]) -> dict[str, str]:
    return {link["relation"]: link["url"] for link in body["link"]}


def test_iti78_family_accent_and_case_insensitive_prefix(client: FlaskClient) -> None:
    pid = feed(client, "Lévêque", ("2.999.1.1", "A1"))
    feed(client, "MARTIN", ("2.999.1.1", "A2"))
    for value in ("levêq", "LEVEQUE", "Lévêque", "lev"):
        body = bundle(client.get(f"/fhir/Patient?family={value}"))
        assert (body["total"], ids(body)) == (1, [pid])


def test_iti78_family_exact_needs_whole_name_case_and_accents(
    client: FlaskClient,
) -> None:
    pid = feed(client, "Lévêque", ("2.999.1.1", "A1"))
    for value in ("LEVEQ", "LEVEQUE", "Leveque", "lévêque"):
        body = bundle(client.get(f"/fhir/Patient?family:exact={value}"))
        assert body["total"] == 0, value
    body = bundle(client.get("/fhir/Patient?family:exact=Lévêque"))
    assert ids(body) == [pid]


def test_iti78_given_exact_is_one_given_name_as_stored(client: FlaskClient) -> None:
    pid = feed(client, "MARTIN", ("2.999.1.1", "A1"), given="Anne Hélène")
    for value, found in (
        ("Hélène", [pid]),
        ("Anne", [pid]),
        ("Anne Hélène", [pid]),
        ("HELENE", []),
        ("Helene", []),
        ("Hél", []),
    ):
        body = bundle(client.get("/fhir/Patient", query_string={"given:exact": value}))
        assert ids(body) == found, value
    mixed = {"family": "mart", "given:exact": "Hélène"}
    assert ids(bundle(client.get("/fhir/Patient", query_string=mixed))) == [pid]
    mixed["given:exact"] = "HÉLÈNE"
    assert ids(bundle(client.get("/fhir/Patient", query_string=mixed))) == []


def test_iti78_identifier_without_system_matches_no_domain(
    client: FlaskClient,
) -> None:
    feed(client, "DUPONT", ("2.999.1.1", "A100"))
    body = bundle(client.get("/fhir/Patient", query_string={"identifier": "|A100"}))
    assert (body["total"], body.get("entry", [])) == (0, [])
    assert ids(bundle(client.get("/fhir/Patient?identifier=A100"))) != []


def test_iti78_active_alone_is_not_a_criterion(client: FlaskClient) -> None:
    feed(client, "MARTIN", ("2.999.1.1", "A1"))
    rsp = client.get("/fhir/Patient?active=true")
    assert rsp.status_code == 400
    assert rsp.get_json()["issue"][0]["diagnostics"] == (
        "give family, given, birthdate, gender, identifier or _id"
    )


def test_iti78_identifier_system_only_filters_domain_and_identifiers(
    client: FlaskClient,
) -> None:
    both = feed(client, "DUPONT", ("2.999.1.1", "A1"), ("2.999.1.2", "B1"))
    feed(client, "DUPONT", ("2.999.1.1", "A2"))
    body = bundle(client.get("/fhir/Patient?identifier=urn:oid:2.999.1.2|"))
    assert (body["total"], ids(body)) == (1, [both])
    assert body["entry"][0]["resource"]["identifier"] == [
        {"system": "urn:oid:2.999.1.2", "value": "B1"}
    ]


def test_iti78_identifier_system_value_and_alternatives(client: FlaskClient) -> None:
    one = feed(client, "DUPONT", ("2.999.1.1", "A1"))
    two = feed(client, "DURAND", ("2.999.1.2", "B2"))
    feed(client, "DUVAL", ("2.999.1.1", "A3"))
    body = bundle(client.get("/fhir/Patient?identifier=urn:oid:2.999.1.1|A1"))
    assert ids(body) == [one]
    body = bundle(
        client.get("/fhir/Patient?identifier=urn:oid:2.999.1.1|A1,urn:oid:2.999.1.2|B2")
    )
    assert sorted(ids(body)) == sorted([one, two])


def test_iti78_birthdate_and_gender(client: FlaskClient) -> None:
    male = feed(client, "DUPONT", ("2.999.1.1", "A1"))
    feed(client, "DUPONT", ("2.999.1.1", "A2"), gender="female")
    feed(client, "DUPONT", ("2.999.1.1", "A3"), birth="1960-01-01")
    for birthdate in ("1958-03-14", "eq1958-03-14"):
        body = bundle(client.get(f"/fhir/Patient?birthdate={birthdate}&gender=male"))
        assert (body["total"], ids(body)) == (1, [male])


@pytest.mark.parametrize(
    "query",
    [
        "birthdate=gt1958-01-01",
        "birthdate=1958",
        "birthdate=1958-02-30",
        "gender=M",
        "family=A&family=B",
        "_count=-1",
        "active=maybe",
        "",
        "active=true",
    ],
)
def test_iti78_unusable_parameters_400(client: FlaskClient, query: str) -> None:
    rsp = client.get(f"/fhir/Patient?{query}")
    assert rsp.status_code == 400, rsp.get_data(as_text=True)
    body = rsp.get_json()
    assert_valid_fhir(body)
    assert body["resourceType"] == "OperationOutcome"
    assert {i["code"] for i in body["issue"]} == {"invalid"}


def test_iti78_paging_count_2_over_5_matches(client: FlaskClient) -> None:
    expected = {feed(client, "DUPONT", ("2.999.1.1", f"A{n}")) for n in range(5)}
    feed(client, "MARTIN", ("2.999.1.1", "M1"))
    url: str | None = "/fhir/Patient?family=dupont&_count=2"
    seen: list[str] = []
    pages = 0
    while url:
        body = bundle(client.get(url))
        assert body["total"] == 5
        assert len(ids(body)) <= 2
        seen += ids(body)
        pages += 1
        following = links(body).get("next")
        url = None
        if following:
            parts = urlsplit(following)
            assert f"{parts.scheme}://{parts.netloc}" == "http://localhost"
            url = f"{parts.path}?{parts.query}"
    assert pages == 3
    assert len(seen) == len(set(seen)) == 5
    assert set(seen) == expected


def test_iti78_self_link_lists_used_parameters_only(client: FlaskClient) -> None:
    feed(client, "DUPONT", ("2.999.1.1", "A1"))
    body = bundle(client.get("/fhir/Patient?family=DUPONT&shoe-size=42"))
    self_url = urlsplit(links(body)["self"])
    assert self_url.path == "/fhir/Patient"
    assert parse_qsl(self_url.query) == [("family", "DUPONT"), ("_count", "20")]
    assert "next" not in links(body)


def test_iti78_unknown_parameter_strict_400(client: FlaskClient) -> None:
    rsp = client.get(
        "/fhir/Patient?family=DUPONT&shoe-size=42",
        headers={"Prefer": "handling=strict"},
    )
    assert rsp.status_code == 400
    assert rsp.get_json()["issue"][0]["expression"] == ["shoe-size"]


def test_iti78_unknown_identifier_domain_200_empty_with_warning(
    client: FlaskClient,
) -> None:
    feed(client, "DUPONT", ("2.999.1.1", "A1"))
    body = bundle(client.get("/fhir/Patient?identifier=urn:oid:2.999.77|"))
    assert body["total"] == 0
    [entry] = body["entry"]
    assert entry["search"] == {"mode": "outcome"}
    assert entry["resource"]["issue"] == [
        {
            "severity": "warning",
            "code": "not-found",
            "diagnostics": "targetSystem not found",
            "expression": ["identifier"],
        }
    ]


def test_iti78_format_xml_406(client: FlaskClient) -> None:
    rsp = client.get("/fhir/Patient?family=DUPONT&_format=application/fhir+xml")
    assert rsp.status_code == 406
    assert rsp.get_json()["issue"][0]["code"] == "not-supported"


def test_iti78_merged_patient_not_returned_and_read_replaced_by(
    client: FlaskClient, rt: Runtime
) -> None:
    survivor = feed(client, "DUPONT", ("2.999.1.1", "A1"))
    absorbed = feed(client, "DUPONT", ("2.999.1.2", "B1"))
    with rt.db.session() as session:
        patient_index.merge(
            session, Identifier("2.999.1.1", "A1"), Identifier("2.999.1.2", "B1")
        )
    body = bundle(client.get("/fhir/Patient?family=DUPONT"))
    assert ids(body) == [survivor]
    assert body["entry"][0]["resource"]["identifier"] == [
        {"system": "urn:oid:2.999.1.1", "value": "A1"},
        {"system": "urn:oid:2.999.1.2", "value": "B1"},
    ]
    assert bundle(client.get("/fhir/Patient?family=DUPONT&active=false"))["total"] == 0
    body = bundle(client.get("/fhir/Patient?identifier=urn:oid:2.999.1.2|B1"))
    assert ids(body) == [survivor]
    rsp = client.get(f"/fhir/Patient/{absorbed}")
    assert rsp.status_code == 200
    read = rsp.get_json()
    assert_valid_fhir(read)
    assert read["active"] is False
    assert read["link"] == [
        {"other": {"reference": f"Patient/{survivor}"}, "type": "replaced-by"}
    ]


def test_iti78_post_search_form_encoded(client: FlaskClient) -> None:
    pid = feed(client, "Lévêque", ("2.999.1.1", "A1"))
    rsp = client.post(
        "/fhir/Patient/_search",
        data={"family": "leveque", "gender": "male"},
        content_type="application/x-www-form-urlencoded",
    )
    assert ids(bundle(rsp)) == [pid]
    rsp = client.post("/fhir/Patient/_search", data="{}", content_type=FHIR)
    assert rsp.status_code == 415


def test_iti78_answer_audited_with_one_patient_object_per_patient(
    client: FlaskClient, rt: Runtime
) -> None:
    feed(client, "DUPONT", ("2.999.1.1", "A1"))
    feed(client, "DUPONT", ("2.999.1.1", "A2"))
    query = "family=DUPONT"
    assert client.get(f"/fhir/Patient?{query}").status_code == 200
    with rt.db.session() as session:
        [row] = session.scalars(
            select(AuditRecord).where(AuditRecord.event_id == "110112")
        ).all()
        assert (row.event_type, row.event_action, row.outcome) == ("ITI-78", "E", 0)
        root = etree.fromstring(row.xml.encode())
    code = root.find("EventIdentification/EventTypeCode")
    assert code.get("originalText") == "Mobile Patient Demographics Query"
    objects = root.findall("ParticipantObjectIdentification")
    assert sorted(o.get("ParticipantObjectID") for o in objects[:2]) == [
        "A1^^^&2.999.1.1&ISO",
        "A2^^^&2.999.1.1&ISO",
    ]
    assert objects[2].get("ParticipantObjectTypeCodeRole") == "24"
    sent = base64.b64decode(objects[2].findtext("ParticipantObjectQuery"))
    assert sent == query.encode()
