"""Over MLLP: an INS that links nothing is answered AA with an ERR W or I at PID-32.

The user's case: an ADT whose INS has no identity status in PID-32 is kept
without linking, so PIX queries by that INS find nothing; the ``AA`` now says
why. PROV and RECUP are information (``I``), a missing status a warning
(``W``); a VALI INS is answered ``AA`` alone.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mappings.identifiers import INS_NIR
from server.runtime import Runtime
from tests.ihe.hl7v2.hl7v2_support import Client, adt, listening

IPP = "A100^^^CH_X&2.999.30.1&ISO^PI"
INS = f"279089912300175^^^ASIP-SANTE-INS-NIR&{INS_NIR}&ISO^INS"
HELD = "INS kept without linking: "


@pytest.fixture
def port(rt: Runtime) -> Iterator[int]:
    with listening(rt) as listening_port:
        yield listening_port


def answer(port: int, message: bytes) -> list[str]:
    """The segments after MSH of the ACK to `message`."""
    with Client(port) as client:
        client.send(message)
        return client.read().decode("ascii").split("\r")[1:-1]


@pytest.mark.parametrize(
    ("reliability", "severity", "why"),
    [
        ("", "W", "PID-32 carries no identity status (VALI or QUAL links it)"),
        ("PROV", "I", "identity status PROV (VALI or QUAL links it)"),
        ("RECUP", "I", "identity status RECUP (VALI or QUAL links it)"),
    ],
    ids=["no-status", "prov", "recup"],
)
def test_iti30_ins_not_linking_answered_aa_with_err_at_pid32(
    rt: Runtime, port: int, reliability: str, severity: str, why: str
) -> None:
    message = adt("A28-1", f"{IPP}~{INS}", reliability=reliability)
    assert answer(port, message) == [
        f"MSA|AA|A28-1|{HELD}{why}",
        f"ERR||PID^1^32|0^Message accepted^HL70357|{severity}||||{HELD}{why}",
    ]


def test_iti8_a01_ins_without_status_answered_aa_with_err_w(
    rt: Runtime, port: int
) -> None:
    why = "PID-32 carries no identity status (VALI or QUAL links it)"
    assert answer(port, adt("A01-1", INS, event="A01")) == [
        f"MSA|AA|A01-1|{HELD}{why}",
        f"ERR||PID^1^32|0^Message accepted^HL70357|W||||{HELD}{why}",
    ]


def test_iti30_vali_ins_answered_aa_without_err(rt: Runtime, port: int) -> None:
    message = adt("A28-2", f"{IPP}~{INS}", reliability="VALI")
    assert answer(port, message) == ["MSA|AA|A28-2"]


def test_iti30_resend_gets_the_same_aa_with_err(rt: Runtime, port: int) -> None:
    message = adt("A28-3", INS)
    first = answer(port, message)
    assert first[1].startswith("ERR||PID^1^32|0^")
    assert answer(port, message) == first
