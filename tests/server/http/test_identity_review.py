"""A person confirms or rejects a study that identity vigilance flagged."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import select

from server.models import (
    AuditRecord,
    Board,
    Candidate,
    Patient,
    PatientIdentifier,
    Registration,
)
from server.runtime import Runtime
from server.workflow import selection
from tests.conftest import auth_headers

RECENT = (datetime.now(UTC) - timedelta(days=30)).strftime("%Y%m%d")
FLAG = "birth date differs from the patient index"


def seed(rt: Runtime) -> None:
    with rt.db.session() as session:
        patient = Patient(id="p1", family_name="LEVEQUE")
        patient.identifiers.append(PatientIdentifier(system="2.999.1.1", value="A1"))
        reg = Registration(
            id="r1",
            status="booked",
            patient=patient,
            board=Board(location_reference="Location/rcp"),
            meeting_start=datetime.now(UTC) + timedelta(days=5),
            discovery="done",
        )
        reg.candidates = [
            Candidate(
                id=cid,
                site_name="a",
                study_uid=f"1.2.{cid}",
                patient_id_at_site="A1",
                modalities=["CT"],
                study_date=RECENT,
                num_instances=10,
                warning=warning,
            )
            for cid, warning in ((1, None), (2, FLAG), (3, FLAG))
        ]
        session.add(reg)
        selection.auto_select(rt.settings, reg)
        selection.schedule(rt.settings, reg)


def review(client: FlaskClient, cid: int, body: object, **kw: Any) -> Any:
    return client.post(
        f"/api/registrations/r1/candidates/{cid}/review",
        data=json.dumps(body),
        content_type="application/json",
        **kw,
    )


def selected(body: dict[str, Any]) -> list[int]:
    return [c["id"] for c in body["candidates"] if c["selected"]]


def test_flagged_study_not_selected_until_confirmed(
    client: FlaskClient, rt: Runtime
) -> None:
    seed(rt)
    body = client.get("/api/registrations/r1").get_json()
    assert selected(body) == [1]
    assert body["awaitingReview"] == 2
    assert body["candidates"][1]["identityReview"]["state"] == "pending"
    rsp = client.put(
        "/api/registrations/r1/selection",
        data=json.dumps({"candidates": [1, 2]}),
        content_type="application/json",
    )
    assert rsp.status_code == 422
    issues = rsp.get_json()["issue"]
    assert [(i["expression"], i["diagnostics"]) for i in issues] == [
        (["selection"], "candidate 2 needs an identity review")
    ]
    rsp = review(client, 2, {"decision": "confirm", "note": "same IPP, typo at site"})
    assert rsp.status_code == 200
    body = rsp.get_json()
    assert selected(body) == [1, 2]
    assert body["awaitingReview"] == 1
    assert body["candidates"][1]["prefetch"]["state"] == "scheduled"
    decided = body["candidates"][1]["identityReview"]
    assert (decided["state"], decided["by"], decided["note"]) == (
        "confirmed",
        "user:test-user",
        "same IPP, typo at site",
    )


def test_rejected_study_never_selected_and_decision_final(
    client: FlaskClient, rt: Runtime
) -> None:
    seed(rt)
    assert review(client, 3, {"decision": "reject"}).status_code == 200
    rsp = client.put(
        "/api/registrations/r1/selection",
        data=json.dumps({"candidates": [1, 3]}),
        content_type="application/json",
    )
    assert rsp.status_code == 422
    issues = rsp.get_json()["issue"]
    assert [(i["expression"], i["diagnostics"]) for i in issues] == [
        (["selection"], "candidate 3 was rejected at identity review")
    ]
    again = review(client, 3, {"decision": "confirm"})
    assert again.status_code == 409
    assert "already rejected" in again.get_json()["issue"][0]["diagnostics"]


def test_review_is_audited_with_the_decision(client: FlaskClient, rt: Runtime) -> None:
    seed(rt)
    review(client, 2, {"decision": "confirm"})
    review(client, 3, {"decision": "reject"})
    with rt.db.session() as session:
        xmls = session.scalars(
            select(AuditRecord.xml).where(AuditRecord.registration_id == "r1")
        ).all()
    confirmed = [x for x in xmls if 'csd-code="identity-confirmed"' in x]
    rejected = [x for x in xmls if 'csd-code="identity-rejected"' in x]
    assert len(confirmed) == 1 and len(rejected) == 1
    assert 'EventActionCode="U"' in confirmed[0]
    assert 'UserID="test-user"' in confirmed[0]


def test_review_errors_are_operation_outcomes(client: FlaskClient, rt: Runtime) -> None:
    seed(rt)
    assert review(client, 1, {"decision": "confirm"}).status_code == 409
    assert review(client, 9, {"decision": "confirm"}).status_code == 404
    for bad in ({"decision": "maybe"}, {"decision": "confirm", "note": 3}, [1], None):
        rsp = review(client, 2, bad)
        assert rsp.status_code == 400
        assert rsp.get_json()["resourceType"] == "OperationOutcome"
    faulty = {
        "decision": {"decision": "maybe", "note": "fine"},
        "note": {"decision": "confirm", "note": 3},
    }
    for field, bad in faulty.items():
        issues = review(client, 2, bad).get_json()["issue"]
        assert [i["expression"] for i in issues] == [[field]]


def test_review_needs_clinician_or_radiologist(
    anonymous: FlaskClient, rt: Runtime
) -> None:
    seed(rt)
    rsp = review(
        anonymous, 2, {"decision": "confirm"}, headers=auth_headers(rt, "coordinator")
    )
    assert rsp.status_code == 403
    rsp = review(
        anonymous, 2, {"decision": "confirm"}, headers=auth_headers(rt, "radiologist")
    )
    assert rsp.status_code == 200


def test_cli_status_shows_the_study_awaiting_review(rt: Runtime) -> None:
    from click.testing import CliRunner

    from server.cli import main

    seed(rt)
    env = {"SPIDERS_DATA_DIR": str(rt.settings.data_dir), "COLUMNS": "80"}
    result = CliRunner().invoke(main, ["status"], env=env)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "  3 studies found at 1 site(s), 1 selected, 2 awaiting identity review" in (
        lines
    )
    assert lines[0].endswith("  prefetching; 2 awaiting identity review")
    (scheduled,) = [x.rstrip() for x in lines if " 1.2.1 " in x]
    assert re.search(r" 0/10 +scheduled, due \d{4}-\d\d-\d\d \d\d:\d\d UTC$", scheduled)
    flagged = [x for x in lines if "identity review:" in x]
    assert [x.split()[1] for x in flagged] == ["1.2.2", "1.2.3"]
    words = " ".join(result.output.split())
    for uid in ("1.2.2", "1.2.3"):
        assert f"a {uid} identity review: {FLAG}" in words
    assert all(len(x) <= 80 for x in lines)
    listed = CliRunner().invoke(main, ["status", "--json"], env=env)
    (case,) = json.loads(listed.output)
    reviews = [c["identityReview"]["state"] for c in case["candidates"][1:]]
    assert (case["id"], reviews) == ("r1", ["pending", "pending"])
