"""Helpers for the PIX and PDQ query tests: QBP messages, feeds, response fields."""

from __future__ import annotations

from ihe.hl7v2 import er7
from tests.ihe.hl7v2.hl7v2_support import Client

SITES_YAML = """\
sites:
  - name: chu-nord
    ae_title: CHU_NORD
    host: 127.0.0.1
    port: 104
    patient_id_domain: 2.999.9.1
consoles: []
"""


def qbp_q23(control_id: str, pid3: str, domains: str = "", tag: str = "PIXQ1") -> bytes:
    """A PIX query (ITI-9) for `pid3`, asking for `domains` (QPD-4)."""
    segments = [
        "MSH|^~\\&|PIX_CONSUMER|CHU_SUD|SPIDERS|RCP_REGION|20250317090000||"
        f"QBP^Q23^QBP_Q21|{control_id}|P|2.5|||||FRA|UNICODE UTF-8",
        f"QPD|IHE PIX Query|{tag}|{pid3}|{domains}".rstrip("|"),
        "RCP|I",
    ]
    return ("\r".join(segments) + "\r").encode("utf-8")


def qbp_q22(
    control_id: str,
    parameters: str,
    *,
    domains: str = "",
    limit: str = "",
    pointer: str = "",
    tag: str = "PDQ1",
) -> bytes:
    """A demographics query (ITI-21): QPD-3 `parameters`, QPD-8 `domains`."""
    qpd = ["QPD", "IHE PDQ Query", tag, parameters, "", "", "", "", domains]
    segments = [
        "MSH|^~\\&|PDQ_CONSUMER|CHU_SUD|SPIDERS|RCP_REGION|20250317090000||"
        f"QBP^Q22^QBP_Q21|{control_id}|P|2.5|||||FRA|UNICODE UTF-8",
        "|".join(qpd).rstrip("|"),
        f"RCP|I|{limit}".rstrip("|"),
        *([f"DSC|{pointer}|I"] if pointer else []),
    ]
    return ("\r".join(segments) + "\r").encode("utf-8")


def feed(
    client: Client,
    control_id: str,
    pid3: str,
    name: str,
    *,
    birth: str = "19700101",
    sex: str = "F",
    status: str = "VALI",
) -> None:
    """Feed one patient with an ADT^A28 and check it was accepted.

    `status` is PID-32, the identity reliability: an INS links only under a
    qualified status (VALI, QUAL).
    """
    segments = [
        "MSH|^~\\&|GAM|CHU_BELLEVAL|SPIDERS|SPIDERS|20250317090000||"
        f"ADT^A28^ADT_A05|{control_id}|P|2.5|||||FRA|UNICODE UTF-8",
        "EVN||20250317090000",
        f"PID|1||{pid3}||{name}||{birth}|{sex}" + "|" * 24 + status,
    ]
    ack = client.exchange(("\r".join(segments) + "\r").encode("utf-8"))
    assert ack.value("MSA-1") == "AA", ack.value("ERR-8")


def raw_field(msg: er7.Message, name: str, n: int, occurrence: int = 1) -> str:
    """Field `n` of a segment as written (escaped), ``""`` when absent."""
    seg = msg.segment(name, occurrence)
    return seg.raw(n) if seg is not None else ""
