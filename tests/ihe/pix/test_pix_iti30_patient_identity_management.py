"""ITI-8 and ITI-30 over MLLP: feeds, PID-32, merges (C07), identifier changes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from ihe.hl7v2 import er7
from ihe.pix import patient_index
from mappings.identifiers import Identifier
from server.errors import IdentityError
from server.models import AuditRecord, Patient, Registration
from server.runtime import Runtime
from tests.audit_schema import assert_valid_audit
from tests.ihe.hl7v2.hl7v2_support import Client, adt, listening, siu

IPP_A = "A100^^^CH_X&2.999.30.1&ISO^PI"
IPP_B = "B200^^^CH_X&2.999.30.1&ISO^PI"
INS = "279089912300175^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS"
A = Identifier("2.999.30.1", "A100")
B = Identifier("2.999.30.1", "B200")


def merge_message(control_id: str, survivor: str, absorbed: str) -> bytes:
    return adt(control_id, survivor, event="A40", extra=f"MRG|{absorbed}")


def err_location(ack: er7.Message) -> str:
    err = ack.segment("ERR")
    assert err is not None
    return err.raw(2)


def patient(rt: Runtime, ident: Identifier) -> Patient:
    with rt.db.session() as session:
        found = patient_index.find_patient(session, ident)
        assert found is not None
        found.identifiers  # noqa: B018 - loaded before the session closes
        return found


def audits(rt: Runtime) -> list[tuple[str, str, str]]:
    with rt.db.session() as session:
        rows = session.scalars(select(AuditRecord).order_by(AuditRecord.id))
        return [(r.event_id, r.event_action, r.xml) for r in rows]


@pytest.fixture
def port(rt: Runtime) -> Iterator[int]:
    with listening(rt) as listening_port:
        yield listening_port


def test_iti8_feed_links_identifiers_reads_pid32_and_audits_110110(
    rt: Runtime, port: int
) -> None:
    message = adt(
        "A01-1",
        f"{IPP_A}~{INS}",
        event="A01",
        name="MARTIN^Louise^Anne^^MME^^D~DURAND^Louise^^^^^L",
    ).replace(b"|19700101|F", b"|19700101|F" + b"|" * 24 + b"VALI~HOMA")
    with Client(port) as client:
        assert client.exchange(message).value("MSA-1") == "AA"
    fed = patient(rt, Identifier("1.2.250.1.213.1.4.8", "279089912300175"))
    assert fed.id == patient(rt, A).id
    assert (fed.family_name, fed.given_names, fed.birth_family_name) == (
        "MARTIN",
        "Louise Anne",
        "DURAND",
    )
    assert (fed.ins_status, fed.identity_attributes) == ("VALI", ["HOMA"])
    assert fed.resource["name"][0] == {
        "use": "usual",
        "family": "MARTIN",
        "given": ["Louise", "Anne"],
    }
    ((event, action, xml),) = [a for a in audits(rt) if a[0] == "110110"]
    assert (event, action) == ("110110", "C")
    assert 'csd-code="ITI-8"' in xml and "GAM|CHU_BELLEVAL" in xml
    assert_valid_audit(xml.encode("utf-8"))


def test_iti8_identifiers_of_two_patients_refused_ae_205(
    rt: Runtime, port: int
) -> None:
    with Client(port) as client:
        client.exchange(adt("A28-1", IPP_A))
        client.exchange(adt("A28-2", INS, reliability="VALI"))
        ack = client.exchange(
            adt("A08-1", f"{IPP_A}~{INS}", event="A08", reliability="VALI")
        )
    assert (ack.value("MSA-1"), ack.value("ERR-3")) == ("AE", "205")
    assert err_location(ack) == "PID^1^3"


def test_iti30_merge_moves_identifiers_and_registrations_absorbed_inactive(
    rt: Runtime, port: int
) -> None:
    with Client(port) as client:
        client.exchange(adt("A28-A", IPP_A))
        client.exchange(adt("A28-B", IPP_B))
        absorbed_id = patient(rt, A).id
        client.exchange(siu("S12-1", "S12", "RDV3001", IPP_A, "20250402143000"))
        ack = client.exchange(merge_message("A40-1", IPP_B, IPP_A))
        again = client.exchange(merge_message("A40-2", IPP_B, IPP_A))
        inverse = client.exchange(merge_message("A40-3", IPP_A, IPP_B))
    assert ack.value("MSA-1") == "AA"
    assert again.value("MSA-1") == "AA"
    assert (inverse.value("MSA-1"), inverse.value("ERR-3")) == ("AE", "205")
    assert err_location(inverse) == "MRG^1^1"
    survivor = patient(rt, A)
    assert survivor.id == patient(rt, B).id != absorbed_id
    assert survivor.identifier_in("2.999.30.1") == "B200"
    with rt.db.session() as session:
        absorbed = session.get(Patient, absorbed_id)
        assert absorbed is not None
        assert (absorbed.active, absorbed.merged_into) == (False, survivor.id)
        reg = session.scalar(select(Registration))
        assert reg is not None and reg.patient_id == survivor.id
    actions = [(e, a) for e, a, _ in audits(rt) if e == "110110"]
    assert ("110110", "D") in actions
    for _, _, xml in audits(rt):
        assert_valid_audit(xml.encode("utf-8"))


def test_iti30_merge_of_unknown_prior_patient_refused_ae_204(port: int) -> None:
    with Client(port) as client:
        client.exchange(adt("A28-B", IPP_B))
        ack = client.exchange(merge_message("A40-9", IPP_B, IPP_A))
    assert (ack.value("MSA-1"), ack.value("ERR-3")) == ("AE", "204")
    assert err_location(ack) == "MRG^1^1"


def test_iti30_a47_changes_identifier_within_domain(rt: Runtime, port: int) -> None:
    with Client(port) as client:
        client.exchange(adt("A28-A", IPP_A))
        before = patient(rt, A).id
        ack = client.exchange(adt("A47-1", IPP_B, event="A47", extra=f"MRG|{IPP_A}"))
        other = client.exchange(
            adt(
                "A47-2",
                "Z1^^^CH_Y&2.999.30.2&ISO^PI",
                event="A47",
                extra=f"MRG|{IPP_B}",
            )
        )
    assert ack.value("MSA-1") == "AA"
    assert patient(rt, B).id == before
    with rt.db.session() as session:
        assert patient_index.find_patient(session, A) is None
    assert (other.value("MSA-1"), other.value("ERR-3")) == ("AE", "205")


def test_iti30_unknown_pid32_code_refused_ae_103(port: int) -> None:
    message = adt("A28-X", IPP_A).replace(
        b"|19700101|F", b"|19700101|F" + b"|" * 24 + b"ZZZ"
    )
    with Client(port) as client:
        ack = client.exchange(message)
    assert (ack.value("MSA-1"), ack.value("ERR-3")) == ("AE", "103")
    assert err_location(ack) == "PID^1^32^1"


def test_patient_index_merge_refuses_self_merge(rt: Runtime) -> None:
    with rt.db.session() as session, pytest.raises(IdentityError):
        patient_index.merge(session, A, A)
