"""ITI-9 PIX Query over MLLP: every outcome of ITI TF-2a 3.9, merges, audit."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree
from sqlalchemy import func, select

from ihe.hl7v2 import er7
from server.config import Settings, load_settings
from server.models import AuditRecord, Hl7Message, Patient
from server.runtime import Runtime
from tests.audit_schema import assert_valid_audit
from tests.ihe.hl7v2.hl7v2_support import Client, adt, listening
from tests.ihe.pix.query_support import SITES_YAML, feed, qbp_q23, raw_field

DOMAIN_X = "2.999.30.1"
IPP_A = f"A100^^^CH_X&{DOMAIN_X}&ISO^PI"
IPP_B = f"B200^^^CH_X&{DOMAIN_X}&ISO^PI"
IPP_Y = "Y300^^^CH_Y&2.999.30.2&ISO^PI"
INS = "279089912300175^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS"
NAME = "MARTIN^Louise^^^^^L"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """The embedded default with one site, whose domain 2.999.9.1 is empty."""
    sites = tmp_path / "sites.yaml"
    sites.write_text(SITES_YAML, encoding="utf-8")
    return load_settings(
        {"SPIDERS_DATA_DIR": str(tmp_path / "var"), "SPIDERS_SITES_FILE": str(sites)}
    )


@pytest.fixture
def client(rt: Runtime) -> Iterator[Client]:
    """An MLLP connection to a listener over `rt`, the index fed with one
    patient known in two local domains and by INS, and one other patient."""
    with listening(rt) as port, Client(port) as connection:
        feed(connection, "FEED-1", f"{IPP_A}~{IPP_Y}~{INS}", NAME)
        feed(connection, "FEED-2", IPP_B, "DURAND^Paul^^^^^L", sex="M")
        yield connection


def query(client: Client, payload: bytes) -> er7.Message:
    client.send(payload)
    return er7.parse_bytes(client.read(), "UNICODE UTF-8")


def err(answer: er7.Message) -> tuple[str, str]:
    """ERR-2 as written and ERR-3.1 of the first ERR."""
    return raw_field(answer, "ERR", 2), answer.value("ERR-3")


def test_iti9_known_identifier_answers_ok_with_other_identifiers(
    client: Client,
) -> None:
    answer = query(client, qbp_q23("Q23-1", IPP_A))
    assert answer.names == ["MSH", "MSA", "QAK", "QPD", "PID"]
    assert raw_field(answer, "MSH", 9) == "RSP^K23^RSP_K23"
    assert (raw_field(answer, "MSH", 3), raw_field(answer, "MSH", 5)) == (
        "SPIDERS",
        "PIX_CONSUMER",
    )
    assert (answer.value("MSA-1"), answer.value("MSA-2")) == ("AA", "Q23-1")
    assert (answer.value("QAK-1"), answer.value("QAK-2")) == ("PIXQ1", "OK")
    assert raw_field(answer, "QPD", 3) == IPP_A
    assert raw_field(answer, "PID", 3) == (
        "Y300^^^&2.999.30.2&ISO^PI~279089912300175^^^&1.2.250.1.213.1.4.8&ISO^INS"
    )
    assert raw_field(answer, "PID", 5) == "~^^^^^^S"
    assert raw_field(answer, "PID", 7) == ""


def test_iti9_qpd4_restricts_identifiers_to_requested_domains(
    client: Client,
) -> None:
    answer = query(client, qbp_q23("Q23-2", IPP_A, "^^^&1.2.250.1.213.1.4.8&ISO"))
    assert (answer.value("MSA-1"), answer.value("QAK-2")) == ("AA", "OK")
    assert raw_field(answer, "PID", 3) == (
        "279089912300175^^^&1.2.250.1.213.1.4.8&ISO^INS"
    )
    assert raw_field(answer, "QPD", 4) == "^^^&1.2.250.1.213.1.4.8&ISO"


def test_iti9_namespace_and_oid_query_matches_oid_domain(client: Client) -> None:
    by_oid = query(client, qbp_q23("Q23-3", f"A100^^^&{DOMAIN_X}&ISO"))
    assert (by_oid.value("MSA-1"), by_oid.value("QAK-2")) == ("AA", "OK")
    assert by_oid.value("PID-3(1).1") == "Y300"


def test_iti9_known_but_nothing_in_requested_domain_answers_nf(
    client: Client,
) -> None:
    # 2.999.9.1 is known from the sites file only: no identifier is in it.
    answer = query(client, qbp_q23("Q23-4", IPP_A, "^^^&2.999.9.1&ISO"))
    assert answer.names == ["MSH", "MSA", "QAK", "QPD"]
    assert (answer.value("MSA-1"), answer.value("QAK-1"), answer.value("QAK-2")) == (
        "AA",
        "PIXQ1",
        "NF",
    )


def test_iti9_only_the_queried_identifier_answers_nf(client: Client) -> None:
    answer = query(client, qbp_q23("Q23-5", IPP_B))
    assert (answer.value("MSA-1"), answer.value("QAK-2")) == ("AA", "NF")
    assert answer.segment("PID") is None


def test_iti9_unknown_identifier_in_known_domain_ae_qpd_3_1_1_204(
    client: Client,
) -> None:
    answer = query(client, qbp_q23("Q23-6", f"Z999^^^CH_X&{DOMAIN_X}&ISO"))
    assert answer.names == ["MSH", "MSA", "ERR", "QAK", "QPD"]
    assert (answer.value("MSA-1"), answer.value("MSA-2")) == ("AE", "Q23-6")
    assert (answer.value("QAK-1"), answer.value("QAK-2")) == ("PIXQ1", "AE")
    assert err(answer) == ("QPD^1^3^1^1", "204")
    assert raw_field(answer, "ERR", 3) == "204^Unknown key identifier^HL70357"
    assert raw_field(answer, "ERR", 4) == "E"


def test_iti9_identifier_of_site_domain_without_patients_ae_qpd_3_1_1(
    client: Client,
) -> None:
    answer = query(client, qbp_q23("Q23-7", "S1^^^&2.999.9.1&ISO"))
    assert answer.value("MSA-1") == "AE"
    assert err(answer) == ("QPD^1^3^1^1", "204")


def test_iti9_unknown_assigning_authority_ae_qpd_3_1_4_204(client: Client) -> None:
    answer = query(client, qbp_q23("Q23-8", "A100^^^ELSEWHERE&2.999.77.7&ISO"))
    assert (answer.value("MSA-1"), answer.value("QAK-2")) == ("AE", "AE")
    assert err(answer) == ("QPD^1^3^1^4", "204")


def test_iti9_identifier_without_authority_ae_qpd_3_1_4_204(client: Client) -> None:
    answer = query(client, qbp_q23("Q23-9", "A100"))
    assert err(answer) == ("QPD^1^3^1^4", "204")


def test_iti9_unknown_requested_domain_ae_qpd_4_repetition_204(
    client: Client,
) -> None:
    domains = "^^^&1.2.250.1.213.1.4.8&ISO~^^^NOWHERE&2.999.77.8&ISO"
    answer = query(client, qbp_q23("Q23-10", IPP_A, domains))
    assert (answer.value("MSA-1"), answer.value("QAK-2")) == ("AE", "AE")
    assert err(answer) == ("QPD^1^4^2", "204")
    assert answer.segment("PID") is None


def test_iti9_absorbed_identifier_answers_survivor_identifiers(
    client: Client,
) -> None:
    merge = adt("A40-1", IPP_B, event="A40", extra=f"MRG|{IPP_A}")
    assert client.exchange(merge).value("MSA-1") == "AA"
    by_absorbed = query(client, qbp_q23("Q23-11", IPP_A))
    by_survivor = query(client, qbp_q23("Q23-12", IPP_B))
    assert (by_absorbed.value("MSA-1"), by_absorbed.value("QAK-2")) == ("AA", "OK")
    assert raw_field(by_absorbed, "PID", 3) == (
        f"B200^^^&{DOMAIN_X}&ISO^PI~Y300^^^&2.999.30.2&ISO^PI"
        "~279089912300175^^^&1.2.250.1.213.1.4.8&ISO^INS"
    )
    # The absorbed identifier is superseded in its domain: never answered.
    assert raw_field(by_survivor, "PID", 3) == (
        "Y300^^^&2.999.30.2&ISO^PI~279089912300175^^^&1.2.250.1.213.1.4.8&ISO^INS"
    )


def test_iti9_query_audited_110112_with_qpd_and_msh10(
    rt: Runtime, client: Client
) -> None:
    query(client, qbp_q23("Q23-13", IPP_A))
    query(client, qbp_q23("Q23-14", "A100^^^ELSEWHERE&2.999.77.7&ISO"))
    with rt.db.session() as session:
        rows = session.scalars(
            select(AuditRecord)
            .where(AuditRecord.event_id == "110112")
            .order_by(AuditRecord.id)
        ).all()
        found, refused = [(r.event_type, r.outcome, r.xml) for r in rows]
    assert (found[0], found[1], refused[1]) == ("ITI-9", 0, 4)
    assert_valid_audit(found[2].encode("utf-8"))
    root = etree.fromstring(found[2].encode("utf-8"))
    (source,) = [
        p
        for p in root.iter("ActiveParticipant")
        if p.find("RoleIDCode").get("csd-code") == "110153"
    ]
    assert (source.get("UserID"), source.get("UserIsRequestor")) == (
        "PIX_CONSUMER|CHU_SUD",
        "true",
    )
    (query_object,) = [
        o
        for o in root.iter("ParticipantObjectIdentification")
        if o.get("ParticipantObjectTypeCodeRole") == "24"
    ]
    assert query_object.get("ParticipantObjectTypeCode") == "2"
    assert query_object.find("ParticipantObjectIDTypeCode").get("csd-code") == "ITI-9"
    qpd = base64.b64decode(query_object.findtext("ParticipantObjectQuery") or "")
    assert qpd == f"QPD|IHE PIX Query|PIXQ1|{IPP_A}".encode()
    detail = query_object.find("ParticipantObjectDetail")
    assert (detail.get("type"), base64.b64decode(detail.get("value"))) == (
        "MSH-10",
        b"Q23-13",
    )
    patients = [
        o
        for o in root.iter("ParticipantObjectIdentification")
        if o.get("ParticipantObjectTypeCodeRole") == "1"
    ]
    assert len(patients) == 1


def test_iti9_query_sent_twice_answered_twice_and_not_stored(
    rt: Runtime, client: Client
) -> None:
    first = query(client, qbp_q23("Q23-15", IPP_A))
    second = query(client, qbp_q23("Q23-15", IPP_A))
    assert first.value("MSA-2") == second.value("MSA-2") == "Q23-15"
    assert first.value("MSH-10") != second.value("MSH-10")
    with rt.db.session() as session:
        stored = session.scalar(
            select(func.count())
            .select_from(Hl7Message)
            .where(Hl7Message.message_type.like("QBP%"))
        )
        audited = session.scalar(
            select(func.count())
            .select_from(AuditRecord)
            .where(AuditRecord.event_type == "ITI-9")
        )
    assert (stored, audited) == (0, 2)


def test_iti9_feed_replay_protection_intact_beside_queries(
    rt: Runtime, client: Client
) -> None:
    query(client, qbp_q23("FEED-1", IPP_A))
    # Another message under FEED-1's key: refused as a duplicate key, not processed.
    again = client.exchange(adt("FEED-1", IPP_A, name="AUTRE^Nom^^^^^L"))
    assert (again.value("MSA-1"), again.value("MSA-2")) == ("AE", "FEED-1")
    assert (again.value("ERR-2"), again.value("ERR-3")) == ("MSH", "205")
    with rt.db.session() as session:
        names = session.scalars(select(Patient.family_name)).all()
    assert sorted(n or "" for n in names) == ["DURAND", "MARTIN"]


def test_iti9_without_qpd_answers_ae_100_not_a_crash(client: Client) -> None:
    payload = qbp_q23("Q23-16", IPP_A).replace(
        f"QPD|IHE PIX Query|PIXQ1|{IPP_A}\r".encode(), b""
    )
    answer = query(client, payload)
    assert raw_field(answer, "MSH", 9) == "RSP^K23^RSP_K23"
    assert (answer.value("MSA-1"), answer.value("QAK-2")) == ("AE", "AE")
    assert err(answer) == ("QPD", "100")


def test_iti9_training_processing_id_rejected_ar_202(client: Client) -> None:
    payload = qbp_q23("Q23-17", IPP_A).replace(b"|Q23-17|P|", b"|Q23-17|T|")
    answer = query(client, payload)
    assert raw_field(answer, "MSH", 9) == "RSP^K23^RSP_K23"
    assert (answer.value("MSA-1"), answer.value("QAK-2")) == ("AR", "AR")
    assert err(answer) == ("MSH^1^11", "202")
    assert answer.value("QAK-1") == "PIXQ1"


def test_iti9_empty_query_tag_ae_101(client: Client) -> None:
    answer = query(client, qbp_q23("Q23-18", IPP_A, tag=""))
    assert err(answer) == ("QPD^1^2", "101")


def test_iti9_unsupported_query_event_ar_201(client: Client) -> None:
    payload = qbp_q23("Q23-19", IPP_A).replace(b"QBP^Q23^", b"QBP^Q99^")
    answer = client.exchange(payload)
    assert (answer.value("MSA-1"), answer.value("ERR-3")) == ("AR", "201")


def test_iti9_no_patient_data_in_logs(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        query(client, qbp_q23("Q23-20", IPP_A))
        query(client, qbp_q23("Q23-21", "Z999^^^CH_X&2.999.30.1&ISO"))
    text = "\n".join(
        f"{r.getMessage()} {r.__dict__}" for r in caplog.records if r.levelno >= 20
    )
    assert "query answered" in text
    for value in ("A100", "Y300", "279089912300175", "Z999", "MARTIN"):
        assert value not in text
