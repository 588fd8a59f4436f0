"""An INS that links nothing is accepted with an ERR W or I; PID-30 outside Y/N refused.

An ADT whose INS has no identity status in PID-32 (or PROV, RECUP, or an
identity marked FICT or DOUT) keeps the INS on the patient without linking it
(:mod:`ihe.pix.patient_index`). The handler says why in the outcome's
warnings, which the ``AA`` carries as one ERR at ``PID^1^32`` with ERR-3 0
(message accepted) and ERR-4 ``W`` (no status) or ``I``. A PID-30 (patient
death indicator, table 0136) holding anything but ``Y`` or ``N``, such as an
identity status sent in the wrong field, is answered ``AE`` 103 at
``PID^1^30`` over MLLP.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from ihe.hl7v2 import ack, er7
from ihe.hl7v2.application import Context, Outcome
from ihe.hl7v2.codes import AckCode
from ihe.pix import iti8_patient_identity_feed, iti30_patient_identity_management
from mappings.identifiers import INS_NIR
from server.models import Patient
from server.runtime import Runtime
from tests.ihe.hl7v2.hl7v2_support import Client, adt, listening

IPP = "A100^^^CH_X&2.999.30.1&ISO^PI"
INS = f"279089912300175^^^ASIP-SANTE-INS-NIR&{INS_NIR}&ISO^INS"
NOW = datetime(2025, 3, 17, 9, 0, 1, tzinfo=ZoneInfo("Europe/Paris"))
NO_STATUS = (
    "INS kept without linking: PID-32 carries no identity status "
    "(VALI or QUAL links it)"
)
PID30_REFUSED = (
    "patient death indicator (PID-30) is not Y or N (HL7 table 0136): "
    "identity reliability codes belong in PID-32"
)


def with_pid30(message: bytes, value: str) -> bytes:
    """`message` (from the ``adt`` helper, no PID-32) with PID-30 set."""
    return message.replace(b"|19700101|F", b"|19700101|F" + b"|" * 22 + value.encode())


def feed(rt: Runtime, message: bytes, event: str = "A28") -> Outcome:
    """Run the ITI-30 (or ITI-8) handler of `message` in one transaction."""
    msg = er7.parse(message.decode("utf-8"))
    handlers = {
        **iti8_patient_identity_feed.HANDLERS,
        **iti30_patient_identity_management.HANDLERS,
    }
    with rt.db.session() as session:
        return handlers[("ADT", event)](
            session, msg, Context(rt.settings, "GAM|CHU_BELLEVAL", "127.0.0.1")
        )


def accepted(message: bytes, outcome: Outcome) -> list[str]:
    """The segments after MSH of the ``AA`` answering `message` with `outcome`."""
    msg = er7.parse(message.decode("utf-8"))
    payload = ack.build(
        msg.msh,
        AckCode.APPLICATION_ACCEPT,
        outcome.warnings,
        version=msg.version,
        now=NOW,
    )
    return payload.decode("ascii").split("\r")[1:-1]


def test_iti30_ins_without_status_accepted_aa_with_err_w_at_pid32(
    rt: Runtime,
) -> None:
    message = adt("A28-1", f"{IPP}~{INS}")
    assert accepted(message, feed(rt, message)) == [
        f"MSA|AA|A28-1|{NO_STATUS}",
        f"ERR||PID^1^32|0^Message accepted^HL70357|W||||{NO_STATUS}",
    ]
    with rt.db.session() as session:
        patient = session.scalar(select(Patient))
        assert patient is not None
        assert (patient.ins_value, patient.ins_status) == ("279089912300175", None)


@pytest.mark.parametrize(
    ("reliability", "severity", "text"),
    [
        ("PROV", "I", "identity status PROV (VALI or QUAL links it)"),
        ("RECUP~HOMA", "I", "identity status RECUP (VALI or QUAL links it)"),
        (
            "VALI~FICT",
            "I",
            "identity marked FICT (a fictitious or doubtful identity links nothing)",
        ),
        (
            "QUAL~DOUT~FICT",
            "I",
            "identity marked DOUT and FICT "
            "(a fictitious or doubtful identity links nothing)",
        ),
    ],
    ids=["prov", "recup", "fict", "dout-fict"],
)
def test_iti30_ins_untrusted_accepted_aa_with_err_i_at_pid32(
    rt: Runtime, reliability: str, severity: str, text: str
) -> None:
    message = adt("A28-2", INS, reliability=reliability)
    message_text = f"INS kept without linking: {text}"
    assert accepted(message, feed(rt, message)) == [
        f"MSA|AA|A28-2|{message_text}",
        f"ERR||PID^1^32|0^Message accepted^HL70357|{severity}||||{message_text}",
    ]


@pytest.mark.parametrize(
    ("pid3", "reliability"),
    [(f"{IPP}~{INS}", "VALI"), (INS, "QUAL~HOMA"), (IPP, ""), (IPP, "PROV")],
    ids=["vali", "qual", "no-ins", "no-ins-prov"],
)
def test_iti30_ins_trusted_or_absent_accepted_aa_without_err(
    rt: Runtime, pid3: str, reliability: str
) -> None:
    message = adt("A28-3", pid3, reliability=reliability)
    outcome = feed(rt, message)
    assert outcome.warnings == ()
    assert accepted(message, outcome) == ["MSA|AA|A28-3"]


def test_iti8_v231_ins_without_status_err_also_written_as_eld(rt: Runtime) -> None:
    message = adt("A01-1", INS, event="A01").replace(b"|P|2.5|", b"|P|2.3.1|")
    assert accepted(message, feed(rt, message, "A01")) == [
        f"MSA|AA|A01-1|{NO_STATUS}",
        "ERR|PID^1^32^0&Message accepted&HL70357|PID^1^32|0^Message accepted^HL70357"
        f"|W||||{NO_STATUS}",
    ]


def test_iti30_merge_with_ins_without_status_keeps_the_feed_warning(
    rt: Runtime,
) -> None:
    feed(rt, adt("A28-4", "B200^^^CH_X&2.999.30.1&ISO^PI"))
    message = adt(
        "A40-1", f"{IPP}~{INS}", event="A40", extra="MRG|B200^^^CH_X&2.999.30.1&ISO^PI"
    )
    outcome = feed(rt, message, "A40")
    assert "merged into" in outcome.detail
    assert accepted(message, outcome)[1] == (
        f"ERR||PID^1^32|0^Message accepted^HL70357|W||||{NO_STATUS}"
    )


@pytest.fixture
def port(rt: Runtime) -> Iterator[int]:
    with listening(rt) as listening_port:
        yield listening_port


def test_iti30_pid30_identity_status_refused_ae_103_at_pid30(
    rt: Runtime, port: int
) -> None:
    message = with_pid30(adt("A28-5", f"{IPP}~{INS}"), "VALI")
    with Client(port) as client:
        client.send(message)
        answer = client.read().decode("ascii").split("\r")
    assert answer[1:] == [
        f"MSA|AE|A28-5|{PID30_REFUSED}",
        f"ERR||PID^1^30|103^Table value not found^HL70357|E||||{PID30_REFUSED}",
        "",
    ]
    with rt.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Patient)) == 0


@pytest.mark.parametrize("value", ["Y", "N", "n", '""'])
def test_iti30_pid30_yes_no_or_null_accepted_aa(
    rt: Runtime, port: int, value: str
) -> None:
    with Client(port) as client:
        ack_msg = client.exchange(with_pid30(adt("A28-6", IPP), value))
    assert ack_msg.value("MSA-1") == "AA"
    assert ack_msg.segment("ERR") is None


def test_iti30_pid30_other_value_refused_ae_103_without_hint(
    rt: Runtime, port: int
) -> None:
    with Client(port) as client:
        ack_msg = client.exchange(with_pid30(adt("A28-7", IPP), "X"))
    err = ack_msg.segment("ERR")
    assert err is not None
    assert (ack_msg.value("MSA-1"), err.raw(2), err.raw(3), err.raw(4)) == (
        "AE",
        "PID^1^30",
        "103^Table value not found^HL70357",
        "E",
    )
    assert ack_msg.value("ERR-8") == (
        "patient death indicator (PID-30) is not Y or N (HL7 table 0136)"
    )
