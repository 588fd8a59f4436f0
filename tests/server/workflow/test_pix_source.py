"""The sites' identifiers for discovery: local index, or an external PIX Manager."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from ihe.hl7v2 import er7, mllp
from ihe.pix import patient_index
from mappings.fhir_patient import PatientRecord
from mappings.identifiers import Identifier
from server.config import Directory, Settings, Site, load_settings
from server.errors import ConfigurationError
from server.models import AuditRecord, Patient
from server.runtime import Runtime
from server.workflow import pix_source
from server.workflow.pix_source import LINKED_DETAIL, PixSource
from tests.ihe.pix.test_iti9_pix_consumer import fake_manager
from tests.ihe.pix.test_iti83_pixm_consumer import fake_pixm

A, B, C = "2.999.73.1", "2.999.73.2", "2.999.73.3"
SITES = Directory(
    sites=(
        Site("site-a", "SITE_A", "127.0.0.1", 1, A),
        Site("site-b", "SITE_B", "127.0.0.1", 2, B),
        Site("site-c", "SITE_C", "127.0.0.1", 3, C),
    )
)


@pytest.fixture
def region(settings: Settings) -> Iterator[Runtime]:
    """A runtime over three sites whose index holds patient A1 (A only), and
    B9 (B) of another patient."""
    rt = Runtime(replace(settings, directory=SITES))
    with rt.db.session() as session:
        for system, value in ((A, "A1"), (B, "B9")):
            record = PatientRecord(identifiers=(Identifier(system, value),))
            patient_index.feed(session, record, {})
    yield rt
    rt.db.dispose()


def patient_a1(session: Session) -> Patient:
    patient = patient_index.find_patient(session, Identifier(A, "A1"))
    assert patient is not None
    return patient


def rsp_for(frame: bytes, *segments: str) -> bytes:
    """The RSP^K23 to the query in `frame`, echoing its MSH-10 and tag."""
    query = er7.parse_bytes(frame, "UNICODE UTF-8")
    text = "\r".join(
        [
            "MSH|^~\\&|MPI|REGION|SPIDERS||20250317093001||RSP^K23^RSP_K23|R1|P|2.5",
            segments[0].format(id=query.control_id),
            f"QAK|{query.value('QPD-2')}|{segments[1]}|IHE PIX Query",
            *segments[2:],
        ]
    )
    return mllp.frame((text + "\r").encode("utf-8"))


def iti9_settings(rt: Runtime, port: int) -> Settings:
    return replace(
        rt.settings,
        pix_source="iti9",
        pix_mllp_host="127.0.0.1",
        pix_mllp_port=port,
        pix_timeout=2.0,
    )


def audits(session: Session) -> list[AuditRecord]:
    return list(
        session.scalars(select(AuditRecord).where(AuditRecord.event_id == "110112"))
    )


def test_site_identifiers_local_own_before_merged(settings: Settings) -> None:
    rt = Runtime(replace(settings, directory=SITES))
    with rt.db.session() as session:
        for idents in [((A, "A1"), (B, "B1")), ((B, "B2"), (C, "C2"))]:
            record = PatientRecord(identifiers=tuple(Identifier(*i) for i in idents))
            patient_index.feed(session, record, {})
        patient_index.merge(session, Identifier(A, "A1"), Identifier(C, "C2"))
        found = pix_source.site_identifiers(rt.settings, session, patient_a1(session))
        assert audits(session) == []
    assert found == {A: "A1", B: "B1", C: "C2"}
    assert (found.source, found.fallback) == (PixSource.LOCAL, False)
    rt.db.dispose()


def test_site_identifiers_iti9_links_answer_and_audits(region: Runtime) -> None:
    answer = "PID|||B-7^^^&2.999.73.2&ISO^PI~C-3^^^&2.999.73.3&ISO^PI"
    with (
        fake_manager(lambda f: rsp_for(f, "MSA|AA|{id}", "OK", answer)) as mpi,
        region.db.session() as session,
    ):
        found = pix_source.site_identifiers(
            iti9_settings(region, mpi.port), session, patient_a1(session), "r-1"
        )
    assert found == {A: "A1", B: "B-7", C: "C-3"}
    assert (found.source, found.fallback) == (PixSource.ITI9, False)
    qpd = er7.parse_bytes(mpi.received[0], "UNICODE UTF-8").segment("QPD")
    assert qpd is not None
    assert qpd.raw(3) == "A1^^^&2.999.73.1&ISO"
    assert qpd.raw(4) == "^^^&2.999.73.2&ISO~^^^&2.999.73.3&ISO"
    with region.db.session() as session:
        patient = patient_a1(session)
        assert [(i.system, i.value, i.type_code) for i in patient.identifiers] == [
            (A, "A1", None),
            (B, "B-7", "PI"),
            (C, "C-3", "PI"),
        ]
        linked = [(h.kind, h.system, h.new_value, h.detail) for h in patient.history]
        assert linked[1:] == [
            ("linked", B, "B-7", LINKED_DETAIL),
            ("linked", C, "C-3", LINKED_DETAIL),
        ]
        (record,) = audits(session)
        assert (record.outcome, record.registration_id, record.patient_id) == (
            0,
            "r-1",
            patient.id,
        )
        assert 'csd-code="ITI-9"' in record.xml
        assert "A1^^^&amp;2.999.73.1&amp;ISO" in record.xml


def test_site_identifiers_iti9_unsafe_answer_not_linked(
    region: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    # B9 is another patient's; the INS is never linked from a PIX answer.
    answer = "PID|||B9^^^&2.999.73.2&ISO~1234^^^&1.2.250.1.213.1.4.8&ISO"
    with (
        fake_manager(lambda f: rsp_for(f, "MSA|AA|{id}", "OK", answer)) as mpi,
        region.db.session() as session,
    ):
        patient = patient_a1(session)
        found = pix_source.site_identifiers(
            iti9_settings(region, mpi.port), session, patient
        )
        assert [h.kind for h in patient.history] == ["created"]
    assert found == {A: "A1"}
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert [r.getMessage() for r in warnings] == [pix_source.LOG_NOT_LINKED]
    assert warnings[0].refused == 1


def test_site_identifiers_iti9_doubtful_identity_not_linked(region: Runtime) -> None:
    answer = "PID|||C-3^^^&2.999.73.3&ISO"
    with (
        fake_manager(lambda f: rsp_for(f, "MSA|AA|{id}", "OK", answer)) as mpi,
        region.db.session() as session,
    ):
        patient = patient_a1(session)
        patient.identity_attributes = ["DOUT"]
        found = pix_source.site_identifiers(
            iti9_settings(region, mpi.port), session, patient
        )
        assert len(patient.identifiers) == 1
    assert found == {A: "A1"}


def test_site_identifiers_iti9_not_known_keeps_local(region: Runtime) -> None:
    def unknown(frame: bytes) -> bytes:
        return rsp_for(
            frame, "MSA|AE|{id}", "AE", "ERR||QPD^1^3^1^1|204^Unknown key identifier|E"
        )

    with fake_manager(unknown) as mpi, region.db.session() as session:
        found = pix_source.site_identifiers(
            iti9_settings(region, mpi.port), session, patient_a1(session)
        )
        (record,) = audits(session)
        assert record.outcome == 4
    assert found == {A: "A1"}
    assert (found.source, found.fallback) == (PixSource.ITI9, False)


def test_site_identifiers_manager_down_falls_back_to_local(
    region: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    with fake_manager(lambda f: None) as mpi:
        settings = replace(iti9_settings(region, mpi.port), pix_timeout=0.5)
        with region.db.session() as session:
            found = pix_source.site_identifiers(
                settings, session, patient_a1(session), "r-2"
            )
            (record,) = audits(session)
            assert (record.outcome, record.registration_id) == (8, "r-2")
    assert found == {A: "A1"}
    assert (found.source, found.fallback) == (PixSource.LOCAL, True)
    fallback = [r for r in caplog.records if r.getMessage() == pix_source.LOG_FALLBACK]
    assert len(fallback) == 1 and fallback[0].levelname == "WARNING"
    assert fallback[0].pix_source == "iti9"
    assert "A1" not in caplog.text


def test_site_identifiers_iti83_links_answer(region: Runtime) -> None:
    body: dict[str, Any] = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "targetIdentifier",
                "valueIdentifier": {"system": f"urn:oid:{C}", "value": "C-3"},
            }
        ],
    }
    with fake_pixm(200, body) as httpd:
        settings = replace(
            region.settings,
            pix_source="iti83",
            pix_url=f"http://127.0.0.1:{httpd.server_address[1]}/fhir",
            pix_auth_header="Bearer abc",
        )
        with region.db.session() as session:
            found = pix_source.site_identifiers(settings, session, patient_a1(session))
            (record,) = audits(session)
            assert 'csd-code="ITI-83"' in record.xml and record.outcome == 0
    assert found == {A: "A1", C: "C-3"}
    assert found.source is PixSource.ITI83
    ((path, headers),) = httpd.seen
    assert path.endswith(
        "targetSystem=urn%3Aoid%3A2.999.73.2&targetSystem=urn%3Aoid%3A2.999.73.3"
    )
    assert headers["Authorization"] == "Bearer abc"


def test_load_settings_pix_defaults_and_values(tmp_path: Path) -> None:
    default = load_settings({})
    assert (default.pix_source, default.pix_timeout) == ("local", 10.0)
    settings = load_settings(
        {
            "SPIDERS_PIX_SOURCE": "ITI9",
            "SPIDERS_PIX_MLLP": "mpi.region.example:3700",
            "SPIDERS_PIX_TIMEOUT": "4.5",
            "SPIDERS_PIX_TLS_CA": str(tmp_path / "ca.pem"),
            "SPIDERS_PIX_TLS_CERT": str(tmp_path / "c.pem"),
            "SPIDERS_PIX_TLS_KEY": str(tmp_path / "c.key"),
        }
    )
    assert (settings.pix_source, settings.pix_mllp_host, settings.pix_mllp_port) == (
        "iti9",
        "mpi.region.example",
        3700,
    )
    assert (settings.pix_timeout, settings.pix_tls_ca) == (4.5, tmp_path / "ca.pem")
    pixm = load_settings(
        {
            "SPIDERS_PIX_SOURCE": "iti83",
            "SPIDERS_PIX_URL": "https://mpi.example/fhir/",
            "SPIDERS_PIX_AUTH_HEADER": "Bearer x",
        }
    )
    assert (pixm.pix_url, pixm.pix_auth_header) == (
        "https://mpi.example/fhir",
        "Bearer x",
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SPIDERS_PIX_SOURCE": "pdq"}, "SPIDERS_PIX_SOURCE 'pdq' is not supported"),
        ({"SPIDERS_PIX_SOURCE": "iti9"}, "iti9 needs SPIDERS_PIX_MLLP"),
        ({"SPIDERS_PIX_SOURCE": "iti83"}, "iti83 needs SPIDERS_PIX_URL"),
        ({"SPIDERS_PIX_MLLP": "mpi.example"}, "must be host:port"),
        (
            {"SPIDERS_PIX_MLLP": "mpi.example:x"},
            "SPIDERS_PIX_MLLP port must be an integer",
        ),
        ({"SPIDERS_PIX_MLLP": "mpi.example:0"}, "must be host:port"),
        ({"SPIDERS_PIX_URL": "ftp://mpi"}, "SPIDERS_PIX_URL must be an http"),
        ({"SPIDERS_PIX_TIMEOUT": "0"}, "SPIDERS_PIX_TIMEOUT must be above 0"),
        ({"SPIDERS_PIX_TIMEOUT": "soon"}, "SPIDERS_PIX_TIMEOUT must be a number"),
        ({"SPIDERS_PIX_TLS_CERT": "/c.pem"}, "SPIDERS_PIX_TLS_KEY go together"),
        (
            {"SPIDERS_PIX_TLS_CERT": "/c.pem", "SPIDERS_PIX_TLS_KEY": "/c.key"},
            "SPIDERS_PIX_TLS_CERT needs SPIDERS_PIX_TLS_CA",
        ),
    ],
)
def test_load_settings_pix_bad_value_is_configuration_error(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_settings(env)
