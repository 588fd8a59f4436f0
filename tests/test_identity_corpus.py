"""The identity corpus: zero wrong-patient studies, against two Orthanc sites.

Every scenario of ``tests/data/identity/corpus.yaml`` feeds the patient
index, files its studies at two real PACS (Orthanc, one patient-ID domain
each), registers a patient, runs discovery over C-FIND and the selection
rule, applies its identity events, and compares what may be fetched with the
scenario's exact expectation. Across the corpus, no study of another person
may be fetchable.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from ihe.pix import patient_index
from mappings.fhir_patient import PatientRecord
from mappings.identifiers import INS_NIR, Identifier
from server.config import Directory, Settings, Site
from server.demo.studies import DemoPatient, SeriesSpec, StudySpec, generate_study
from server.errors import IdentityError
from server.models import Board, Registration
from server.runtime import Runtime
from server.workflow import discovery, identity_changes, selection
from server.workflow.vigilance import needs_review
from tests.peers import OrthancPeer, require

pytestmark = pytest.mark.peer

CORPUS = Path(__file__).parent / "data" / "identity" / "corpus.yaml"
SCENARIOS: list[dict[str, Any]] = yaml.safe_load(CORPUS.read_text("utf-8"))["scenarios"]
DOMAINS = {"A": "2.999.71.1", "B": "2.999.71.2"}
ISSUERS = {"A": "CH_ARMOR", "B": "CHU_BREST"}


@dataclass
class Sites:
    peers: dict[str, OrthancPeer]
    # (scenario id, study key) -> Study Instance UID
    uids: dict[tuple[str, str], str]


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sites]:
    require("Orthanc", "orthanc")
    out = tmp_path_factory.mktemp("identity-corpus")
    files: dict[str, list[str]] = {"A": [], "B": []}
    uids = {}
    seed = 7100
    for scenario in SCENARIOS:
        for study in scenario["studies"]:
            seed += 1
            generated = generate_study(_spec(study), out, seed=seed)
            files[study["site"]].extend(str(f) for f in generated.files)
            uids[(scenario["id"], study["key"])] = generated.study_uid
    with OrthancPeer("CH_ARMOR") as site_a, OrthancPeer("CHU_BREST") as site_b:
        assert site_a.upload(files["A"]) == len(files["A"])
        assert site_b.upload(files["B"]) == len(files["B"])
        yield Sites({"A": site_a, "B": site_b}, uids)


@pytest.fixture
def corpus_rt(settings: Settings, sites: Sites) -> Iterator[Runtime]:
    directory = Directory(
        sites=tuple(
            Site(
                name=f"site-{key.lower()}",
                ae_title=peer.aet,
                host="127.0.0.1",
                port=peer.dicom_port,
                patient_id_domain=DOMAINS[key],
                timeout=10,
            )
            for key, peer in sites.peers.items()
        )
    )
    rt = Runtime(replace(settings, directory=directory))
    yield rt
    rt.db.dispose()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["id"] for s in SCENARIOS])
def test_identity_corpus_exact_studies_and_no_wrong_patient(
    corpus_rt: Runtime, sites: Sites, scenario: dict[str, Any]
) -> None:
    for item in scenario["feeds"]:
        _feed(corpus_rt, item)
    for event in scenario.get("events", []):
        if not event["after"]:
            _event(corpus_rt, event)
    with corpus_rt.db.session() as session:
        patient = patient_index.find_patient(session, _ident(scenario["register"]))
        assert patient is not None
        registration = Registration(
            status="booked",
            patient=patient,
            board=Board(location_reference=f"Location/{scenario['id']}"),
            meeting_start=datetime.now(UTC) + timedelta(days=5),
            discovery="running",
        )
        session.add(registration)
        _discover(corpus_rt, session, registration)
        registration_id = registration.id
    for event in scenario.get("events", []):
        if event["after"]:
            _event(corpus_rt, event)
    with corpus_rt.db.session() as session:
        registration = session.get(Registration, registration_id)
        assert registration is not None
        if registration.discovery == "pending":
            _discover(corpus_rt, session, registration)
        assert registration.identity_source == "local"
        fetchable = {c.study_uid for c in registration.candidates if c.selected}
        flagged = {c.study_uid for c in registration.candidates if needs_review(c)}
    by_uid = {sites.uids[(scenario["id"], s["key"])]: s for s in scenario["studies"]}
    # Zero wrong-patient studies: whatever else, none belongs to another person.
    wrong = [
        by_uid[uid]["key"]
        for uid in fetchable
        if by_uid[uid]["person"] != scenario["person"]
    ]
    assert wrong == []
    assert sorted(by_uid[uid]["key"] for uid in fetchable) == sorted(scenario["fetch"])
    assert sorted(by_uid[uid]["key"] for uid in flagged) == sorted(scenario["flagged"])


def test_identity_corpus_has_thirty_scenarios_of_every_kind() -> None:
    assert len(SCENARIOS) >= 30
    assert len({s["id"] for s in SCENARIOS}) == len(SCENARIOS)
    kinds = {
        "merge": any("merge" in e for s in SCENARIOS for e in s.get("events", [])),
        "change": any("change" in e for s in SCENARIOS for e in s.get("events", [])),
        "flagged": any(s["flagged"] for s in SCENARIOS),
        "untrusted INS": any(
            f.get("status") in {"PROV", "RECUP"} for s in SCENARIOS for f in s["feeds"]
        ),
    }
    assert all(kinds.values()), kinds


def _spec(study: dict[str, Any]) -> StudySpec:
    name = study.get("name", "MARTIN^PAUL")
    family, _, given = name.partition("^")
    who = DemoPatient(
        study["pid"],
        ISSUERS[study["site"]],
        DOMAINS[study["site"]],
        family,
        given,
        study.get("birth", "19600101"),
        study.get("sex", "M"),
    )
    when = (datetime.now(UTC) - timedelta(days=study.get("days", 30))).strftime(
        "%Y%m%d"
    )
    series = SeriesSpec(study.get("modality", "CT"), "corpus", 1, 16, 16)
    return StudySpec(who, when, "Corpus", (series,))


def _ident(ids: dict[str, str]) -> Identifier:
    ((site, value),) = ids.items()
    return Identifier(DOMAINS[site], value)


def _feed(rt: Runtime, item: dict[str, Any]) -> None:
    identifiers = [Identifier(DOMAINS[k], v, "PI") for k, v in item["ids"].items()]
    if "ins" in item:
        identifiers.append(Identifier(INS_NIR, item["ins"], "INS"))
    record = PatientRecord(
        identifiers=tuple(identifiers),
        family=item.get("family", "MARTIN"),
        given=(item.get("given", "Paul"),),
        birth_family=item.get("birth_family"),
        birth_date=item.get("birth", date(1960, 1, 1)),
        sex=item.get("sex", "M"),
        identity_status=item.get("status"),
        identity_attributes=tuple(item["attributes"]) if "attributes" in item else None,
    )
    with rt.db.session() as session:
        if item.get("refused"):
            with pytest.raises(IdentityError):
                patient_index.feed(session, record, {})
            session.rollback()
            return
        patient_index.feed(session, record, {})


def _event(rt: Runtime, event: dict[str, Any]) -> None:
    with rt.db.session() as session:
        if "merge" in event:
            survivor = _ident(event["merge"]["survivor"])
            absorbed = _ident(event["merge"]["absorbed"])
            if event.get("refused"):
                with pytest.raises(IdentityError):
                    patient_index.merge(session, survivor, absorbed)
                session.rollback()
                return
            result = patient_index.merge(session, survivor, absorbed)
            assert result.absorbed is not None
            identity_changes.after_merge(
                session, rt.settings, result.survivor, result.absorbed.id
            )
        else:
            change = event["change"]
            old = Identifier(DOMAINS[change["site"]], change["old"])
            patient = patient_index.change_identifier(
                session, old, Identifier(old.system, change["new"])
            )
            identity_changes.after_identifier_change(
                session, rt.settings, patient, old, change["new"]
            )


def _discover(rt: Runtime, session: Any, registration: Registration) -> None:
    discovery.discover(rt.settings, session, registration)
    selection.auto_select(rt.settings, registration)
    session.flush()
