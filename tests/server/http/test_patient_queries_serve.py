"""ITI-83 PIXm and ITI-78 PDQm against a running ``spiders serve`` over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from server.config import load_settings
from server.demo.run import Server, server_env
from tests.fhir_schema import assert_valid_fhir
from tests.flow_support import assert_all_audit_valid
from tests.peers import free_port


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    root = tmp_path_factory.mktemp("serve")
    sites = root / "sites.yaml"
    sites.write_text(yaml.safe_dump({"sites": [], "consoles": []}), encoding="utf-8")
    http_port, dicom_port = free_port(), free_port()
    env = server_env(load_settings({}), root / "data", sites, http_port, dicom_port)
    server = Server(env, http_port, root / "serve.log")
    try:
        server.wait_ready()
        for family, idents in [
            ("Lévêque", [("2.999.1.1", "A1"), ("2.999.1.2", "B1")]),
            ("LEVESQUE", [("2.999.1.1", "A2")]),
        ]:
            status, _ = server.request(
                "POST",
                "/fhir/Patient",
                {
                    "resourceType": "Patient",
                    "identifier": [
                        {"system": f"urn:oid:{s}", "value": v} for s, v in idents
                    ],
                    "name": [{"family": family, "given": ["Noël"]}],
                    "gender": "male",
                    "birthDate": "1958-03-14",
                },
            )
            assert status == 201
        yield server, root / "data"
    finally:
        server.stop()


def test_serve_iti83_pix_query_over_http(served: tuple[Server, Path]) -> None:
    server, data = served
    source = quote("urn:oid:2.999.1.1|A1", safe="")
    status, body = server.request(
        "GET", f"/fhir/Patient/$ihe-pix?sourceIdentifier={source}"
    )
    assert status == 200
    assert_valid_fhir(body)
    names = sorted(p["name"] for p in body["parameter"])
    assert names == ["targetId", "targetIdentifier"]
    assert {"system": "urn:oid:2.999.1.2", "value": "B1"} in [
        p.get("valueIdentifier") for p in body["parameter"]
    ]
    status, body = server.request(
        "GET", "/fhir/Patient/$ihe-pix?sourceIdentifier=urn:oid:2.999.77%7CA1"
    )
    assert status == 400
    assert body["issue"][0]["code"] == "code-invalid"
    rows = assert_all_audit_valid(data)
    assert any(e == "110112" and "ITI-83" in xml for e, _, xml in rows)


def test_serve_iti78_pdqm_search_over_http(served: tuple[Server, Path]) -> None:
    server, data = served
    status, body = server.request(
        "GET", f"/fhir/Patient?family={quote('levêq')}&_count=1"
    )
    assert status == 200
    assert_valid_fhir(body)
    assert (body["type"], body["total"]) == ("searchset", 1)
    assert body["entry"][0]["resource"]["name"][0]["family"] == "Lévêque"
    status, body = server.request("GET", "/fhir/Patient?family=LEVE&_count=1")
    assert (status, body["total"], len(body["entry"])) == (200, 2, 1)
    following = {link["relation"]: link["url"] for link in body["link"]}["next"]
    assert following.startswith(server.base + "/fhir/Patient?")
    status, page = server.request("GET", following.removeprefix(server.base))
    assert status == 200
    assert page["entry"][0]["resource"]["id"] != body["entry"][0]["resource"]["id"]
    rows = assert_all_audit_valid(data)
    assert any(e == "110112" and "ITI-78" in xml for e, _, xml in rows)
