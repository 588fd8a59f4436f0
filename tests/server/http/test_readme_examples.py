"""The FHIR examples of the README are accepted as they are written."""

from __future__ import annotations

import json
import re
from pathlib import Path

from flask.testing import FlaskClient

README = Path(__file__).parents[3] / "README.md"
FHIR = "application/fhir+json"


def json_blocks() -> list[dict[str, object]]:
    text = README.read_text(encoding="utf-8")
    return [json.loads(b) for b in re.findall(r"```json\n(.*?)```", text, re.S)]


def test_readme_appointment_example_registers_a_case(client: FlaskClient) -> None:
    (appointment,) = [b for b in json_blocks() if b["resourceType"] == "Appointment"]
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:1.2.250.1.999.1.1", "value": "A100"}],
        "name": [{"family": "TEST", "given": ["Readme"]}],
        "gender": "female",
        "birthDate": "1960-01-02",
    }
    fed = client.post("/fhir/Patient", data=json.dumps(patient), content_type=FHIR)
    assert fed.status_code == 201, fed.get_data(as_text=True)
    rsp = client.post(
        "/fhir/Appointment", data=json.dumps(appointment), content_type=FHIR
    )
    assert rsp.status_code == 201, rsp.get_data(as_text=True)
    assert rsp.get_json()["participant"][0]["actor"]["identifier"]["value"] == "A100"
