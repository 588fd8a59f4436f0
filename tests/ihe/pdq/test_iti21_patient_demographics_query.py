"""ITI-21 Patient Demographics Query over MLLP: matching, outcomes, paging, audit."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree
from sqlalchemy import select

from ihe.hl7v2 import er7
from ihe.pdq.iti21_patient_demographics_query import make_pointer
from server.config import Settings, load_settings
from server.models import AuditRecord
from server.runtime import Runtime
from tests.audit_schema import assert_valid_audit
from tests.ihe.hl7v2.hl7v2_support import Client, listening
from tests.ihe.pix.query_support import SITES_YAML, feed, qbp_q22, raw_field

X = "2.999.21.1"
INS_OID = "1.2.250.1.213.1.4.8"
LEVEQUE = (
    f"L100^^^CH_X&{X}&ISO^PI~180017512345678^^^ASIP-SANTE-INS-NIR&{INS_OID}&ISO^INS"
)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """The embedded default with one site (domain 2.999.9.1, no patient)."""
    sites = tmp_path / "sites.yaml"
    sites.write_text(SITES_YAML, encoding="utf-8")
    return load_settings(
        {"SPIDERS_DATA_DIR": str(tmp_path / "var"), "SPIDERS_SITES_FILE": str(sites)}
    )


@pytest.fixture
def client(rt: Runtime) -> Iterator[Client]:
    """An MLLP connection to a listener over an index of eight patients."""
    with listening(rt) as port, Client(port) as connection:
        feed(
            connection,
            "F-1",
            LEVEQUE,
            "Lévêque^Hélène^Marie^^^^L",
            birth="19620314",
            sex="F",
        )
        feed(connection, "F-2", f"D200^^^CH_X&{X}&ISO^PI", "DUPONT-MARTIN^Jean^^^^^L")
        for n in range(5):
            feed(
                connection,
                f"F-BER-{n}",
                f"B30{n}^^^CH_X&{X}&ISO^PI",
                f"BERNARD^Anne{n}^^^^^L",
                birth="19800101",
            )
        feed(connection, "F-3", f"M400^^^CH_X&{X}&ISO^PI", "MARTIN^Luc^^^^^L", sex="M")
        yield connection


def query(client: Client, payload: bytes) -> er7.Message:
    client.send(payload)
    return er7.parse_bytes(client.read(), "UNICODE UTF-8")


def err(answer: er7.Message) -> tuple[str, str]:
    return raw_field(answer, "ERR", 2), answer.value("ERR-3")


def pid3_values(answer: er7.Message) -> list[str]:
    return [seg.value(3) for seg in answer.all("PID")]


def test_iti21_unaccented_family_name_finds_accented_patient(client: Client) -> None:
    answer = query(client, qbp_q22("Q22-1", "@PID.5.1.1^LEVEQUE"))
    assert answer.names == ["MSH", "MSA", "QAK", "QPD", "PID"]
    assert raw_field(answer, "MSH", 9) == "RSP^K22^RSP_K21"
    assert raw_field(answer, "MSH", 18) == "UNICODE UTF-8"
    assert (answer.value("MSA-1"), answer.value("MSA-2")) == ("AA", "Q22-1")
    qak = answer.segment("QAK")
    assert qak is not None
    assert qak.text == "QAK|PDQ1|OK|IHE PDQ Query|1|1|0"
    assert raw_field(answer, "QPD", 3) == "@PID.5.1.1^LEVEQUE"
    pid = answer.segment("PID")
    assert pid is not None
    assert pid.text == (
        f"PID|1||L100^^^&{X}&ISO^PI~180017512345678^^^&{INS_OID}&ISO^INS||"
        "Lévêque^Hélène^Marie^^^^L||19620314|F"
    )
    assert answer.segment("DSC") is None


def test_iti21_lower_case_accented_query_and_birth_date_sex(client: Client) -> None:
    params = "@PID.5.1.1^lévêque~@PID.7.1^19620314~@PID.8^F~@PID.5.2^HELENE"
    answer = query(client, qbp_q22("Q22-2", params))
    assert (answer.value("QAK-2"), pid3_values(answer)) == ("OK", ["L100"])


def test_iti21_composite_family_name_matches_with_space_or_prefix(
    client: Client,
) -> None:
    spaced = query(client, qbp_q22("Q22-3", "@PID.5.1.1^DUPONT MARTIN"))
    prefix = query(client, qbp_q22("Q22-4", "@PID.5.1.1^DUPONT*"))
    exact = query(client, qbp_q22("Q22-5", "@PID.5.1.1^DUPONT"))
    assert pid3_values(spaced) == ["D200"]
    assert spaced.value("PID-5.1") == "DUPONT-MARTIN"
    assert pid3_values(prefix) == ["D200"]
    assert (exact.value("MSA-1"), exact.value("QAK-2")) == ("AA", "NF")
    assert exact.names == ["MSH", "MSA", "QAK", "QPD"]


def test_iti21_identifier_in_domain_found(client: Client) -> None:
    params = f"@PID.3.1^M400~@PID.3.4.2^{X}"
    answer = query(client, qbp_q22("Q22-6", params))
    assert pid3_values(answer) == ["M400"]
    assert answer.value("PID-8") == "M"


def test_iti21_qpd8_restricts_returned_identifiers(client: Client) -> None:
    domains = f"^^^ASIP-SANTE-INS-NIR&{INS_OID}&ISO"
    answer = query(client, qbp_q22("Q22-7", "@PID.5.1.1^L*", domains=domains))
    # MARTIN has no INS: only LEVEQUE has an identifier in the domain asked.
    assert raw_field(answer, "PID", 3) == f"180017512345678^^^&{INS_OID}&ISO^INS"
    assert len(answer.all("PID")) == 1


def test_iti21_no_match_answers_aa_nf(client: Client) -> None:
    answer = query(client, qbp_q22("Q22-8", "@PID.5.1.1^NOBODY"))
    assert (answer.value("MSA-1"), answer.value("QAK-1"), answer.value("QAK-2")) == (
        "AA",
        "PDQ1",
        "NF",
    )


def test_iti21_unknown_domain_in_qpd8_ae_qpd_8_1_204(client: Client) -> None:
    answer = query(
        client,
        qbp_q22("Q22-9", "@PID.5.1.1^LEVEQUE", domains="^^^NOWHERE&2.999.77.9&ISO"),
    )
    assert answer.names == ["MSH", "MSA", "ERR", "QAK", "QPD"]
    assert (answer.value("MSA-1"), answer.value("QAK-2")) == ("AE", "AE")
    assert err(answer) == ("QPD^1^8^1", "204")
    assert raw_field(answer, "ERR", 3) == "204^Unknown key identifier^HL70357"


def test_iti21_no_search_parameter_ae_101_at_qpd_3(client: Client) -> None:
    answer = query(client, qbp_q22("Q22-10", ""))
    assert (answer.value("MSA-1"), answer.value("QAK-2")) == ("AE", "AE")
    assert err(answer) == ("QPD^1^3", "101")


def test_iti21_unsupported_field_ae_102_at_its_repetition(client: Client) -> None:
    params = "@PID.5.1.1^MARTIN~@PID.11.3^PARIS"
    answer = query(client, qbp_q22("Q22-11", params))
    assert answer.value("MSA-1") == "AE"
    assert err(answer) == ("QPD^1^3^2^1", "102")


def test_iti21_invalid_birth_date_ae_102_and_sex_outside_table_103(
    client: Client,
) -> None:
    date = query(client, qbp_q22("Q22-12", "@PID.5.1.1^MARTIN~@PID.7.1^1980-01-01"))
    sex = query(client, qbp_q22("Q22-13", "@PID.5.1.1^MARTIN~@PID.8^Z"))
    assert err(date) == ("QPD^1^3^2^2", "102")
    assert err(sex) == ("QPD^1^3^2^2", "103")


def test_iti21_identifier_without_domain_ae_101(client: Client) -> None:
    answer = query(client, qbp_q22("Q22-14", "@PID.3.1^M400"))
    assert err(answer) == ("QPD^1^3^1^1", "101")


def test_iti21_bad_quantity_limit_ae_102_at_rcp_2(client: Client) -> None:
    answer = query(client, qbp_q22("Q22-15", "@PID.5.1.1^BERNARD", limit="two^RD"))
    assert err(answer) == ("RCP^1^2^1^1", "102")


def test_iti21_paging_limit_2_over_5_matches_gives_2_2_1(client: Client) -> None:
    params = "@PID.5.1.1^BERNARD"
    first = query(client, qbp_q22("Q22-P1", params, limit="2^RD"))
    pointer = first.value("DSC-1")
    second = query(client, qbp_q22("Q22-P2", params, limit="2^RD", pointer=pointer))
    pointer_2 = second.value("DSC-1")
    third = query(client, qbp_q22("Q22-P3", params, limit="2^RD", pointer=pointer_2))
    assert [len(page.all("PID")) for page in (first, second, third)] == [2, 2, 1]
    assert [page.value("QAK-2") for page in (first, second, third)] == ["OK"] * 3
    assert [raw_field(page, "QAK", 4) for page in (first, second, third)] == ["5"] * 3
    assert [raw_field(page, "QAK", 5) for page in (first, second, third)] == [
        "2",
        "2",
        "1",
    ]
    assert [raw_field(page, "QAK", 6) for page in (first, second, third)] == [
        "3",
        "1",
        "0",
    ]
    assert pointer and pointer_2 and pointer != pointer_2
    assert raw_field(first, "DSC", 2) == "I"
    assert third.segment("DSC") is None
    found = [v for page in (first, second, third) for v in pid3_values(page)]
    assert sorted(found) == ["B300", "B301", "B302", "B303", "B304"]
    assert [seg.value(1) for seg in second.all("PID")] == ["1", "2"]


def test_iti21_pointer_of_another_query_ae_204_at_dsc(client: Client) -> None:
    first = query(client, qbp_q22("Q22-16", "@PID.5.1.1^BERNARD", limit="2^RD"))
    other = qbp_q22(
        "Q22-17", "@PID.7.1^19800101", limit="2^RD", pointer=first.value("DSC-1")
    )
    answer = query(client, other)
    assert (answer.value("MSA-1"), answer.value("QAK-2")) == ("AE", "AE")
    assert err(answer) == ("DSC^1^1", "204")
    assert "another query" in answer.value("ERR-8")


def test_iti21_unknown_and_expired_pointers_ae_204(client: Client) -> None:
    params = "@PID.5.1.1^BERNARD"
    garbage = query(client, qbp_q22("Q22-18", params, pointer="not-a-pointer"))
    # A pointer this query would have had, issued two hours ago.
    key = "\x00".join(["PDQ_CONSUMER|CHU_SUD", "PDQ1", params, ""])
    old = make_pointer(key, "0", int(time.time()) - 7200)
    expired = query(client, qbp_q22("Q22-19", params, pointer=old))
    assert err(garbage) == ("DSC^1^1", "204")
    assert err(expired) == ("DSC^1^1", "204")
    assert "expired" in expired.value("ERR-8")


def test_iti21_query_audited_with_each_patient_sent(
    rt: Runtime, client: Client
) -> None:
    query(client, qbp_q22("Q22-20", "@PID.5.1.1^BERNARD", limit="3^RD"))
    with rt.db.session() as session:
        (row,) = session.scalars(
            select(AuditRecord).where(AuditRecord.event_type == "ITI-21")
        ).all()
        xml, outcome, event = row.xml.encode("utf-8"), row.outcome, row.event_id
    assert (event, outcome) == ("110112", 0)
    assert_valid_audit(xml)
    root = etree.fromstring(xml)
    objects = list(root.iter("ParticipantObjectIdentification"))
    roles = [o.get("ParticipantObjectTypeCodeRole") for o in objects]
    assert roles == ["1", "1", "1", "24"]
    (query_object,) = [
        o for o in objects if o.get("ParticipantObjectTypeCodeRole") == "24"
    ]
    assert query_object.find("ParticipantObjectIDTypeCode").get("csd-code") == "ITI-21"
    qpd = base64.b64decode(query_object.findtext("ParticipantObjectQuery") or "")
    assert qpd == b"QPD|IHE PDQ Query|PDQ1|@PID.5.1.1^BERNARD"


def test_iti21_latin1_bytes_declared_utf8_answered_rsp_ae_102(client: Client) -> None:
    payload = qbp_q22("Q22-21", "@PID.5.1.1^LEVEQUE").replace(
        b"LEVEQUE", "LÉVÊQUE".encode("latin-1")
    )
    answer = query(client, payload)
    assert raw_field(answer, "MSH", 9) == "RSP^K22^RSP_K21"
    assert (answer.value("MSA-1"), answer.value("MSA-2")) == ("AE", "Q22-21")
    assert answer.value("QAK-2") == "AE"
    assert err(answer) == ("MSH^1^18", "102")


def test_iti21_unsupported_version_answered_rsp_ar_203(client: Client) -> None:
    payload = qbp_q22("Q22-22", "@PID.5.1.1^LEVEQUE").replace(b"|P|2.5|", b"|P|2.1|")
    answer = query(client, payload)
    assert (answer.value("MSA-1"), answer.value("QAK-2")) == ("AR", "AR")
    assert err(answer) == ("MSH^1^12", "203")
    assert answer.value("QAK-1") == "PDQ1"
