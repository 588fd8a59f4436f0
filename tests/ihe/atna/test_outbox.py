"""The audit outbox: rows added in the caller's session, committed with it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from ihe.atna import messages
from ihe.atna.messages import AuditSource, Participant
from ihe.atna.outbox import record
from server.db import Database
from server.models import AuditRecord
from tests.audit_samples import PATIENT_ID as C25_PATIENT
from tests.audit_samples import SAMPLES, STUDY_UID

PATIENT_ID = "A1001^^^&2.999.1.1&ISO"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    # A file, not sqlite:// in memory, where every connection has its own database.
    database = Database(f"sqlite:///{tmp_path / 'outbox.db'}")
    database.create_schema()
    yield database
    database.dispose()


def query_xml(outcome: int = 0) -> bytes:
    return messages.query(
        sop_class_uid="1.2.840.10008.5.1.4.1.2.2.1",
        query=b"\x10\x00\x20\x00",
        source=Participant("spiders", is_requestor=True),
        destination=Participant("pacs"),
        audit_source=AuditSource("spiders"),
        patient_id=PATIENT_ID,
        patient_name="DUPONT^MARIE",
        outcome=outcome,
        when=datetime(2024, 3, 5, 14, 30, tzinfo=UTC),
    )


def test_record_committed_session_stores_event_fields(db: Database) -> None:
    xml = query_xml(outcome=4)

    with db.session() as session:
        row = record(session, xml, registration_id="reg-1")
        assert row in session.new

    with db.session() as session:
        (stored,) = session.scalars(select(AuditRecord)).all()
        assert stored.event_id == "110112"
        assert stored.event_action == "E"
        assert stored.outcome == 4
        assert stored.registration_id == "reg-1"
        assert stored.xml.encode("utf-8") == xml
        assert stored.delivered_at is None
        assert stored.attempts == 0


def test_record_rolled_back_session_leaves_no_row(db: Database) -> None:
    with pytest.raises(RuntimeError), db.session() as session:
        record(session, query_xml())
        raise RuntimeError("the audited action failed")

    with db.session() as session:
        assert session.scalars(select(AuditRecord)).all() == []


def test_record_patient_record_stores_action_without_registration(
    db: Database,
) -> None:
    xml = messages.patient_record(
        action="D",
        patient_id=PATIENT_ID,
        patient_name=None,
        source=Participant("ADT|CHU"),
        destination=Participant("SPIDERS|RCP"),
        audit_source=AuditSource("spiders"),
    )

    with db.session() as session:
        record(session, xml)

    with db.session() as session:
        stored = session.scalars(select(AuditRecord)).one()
        assert (stored.event_id, stored.event_action, stored.outcome) == (
            "110110",
            "D",
            0,
        )
        assert stored.registration_id is None


def test_record_logs_at_debug_only_without_patient_data(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ihe.atna")

    with db.session() as session:
        record(session, query_xml(), registration_id="reg-1")

    logged = [r for r in caplog.records if r.name.startswith("ihe.atna")]
    assert logged
    assert {r.levelno for r in logged} == {logging.DEBUG}
    for entry in logged:
        assert "A1001" not in entry.getMessage()
        assert "A1001" not in repr(entry.__dict__)


@pytest.mark.parametrize(
    "xml",
    [
        b"not xml",
        b'<?xml version="1.0"?><Other/>',
        b"<AuditMessage/>",
        b'<AuditMessage><EventIdentification EventActionCode="E"'
        b' EventOutcomeIndicator="0"/></AuditMessage>',
        b'<AuditMessage><EventIdentification EventOutcomeIndicator="0">'
        b'<EventID csd-code="110112"/></EventIdentification></AuditMessage>',
        b'<AuditMessage><EventIdentification EventActionCode="E"'
        b' EventOutcomeIndicator="x"><EventID csd-code="110112"/>'
        b"</EventIdentification></AuditMessage>",
    ],
    ids=[
        "not_xml",
        "other_root",
        "no_event",
        "no_event_id",
        "no_action",
        "outcome_not_number",
    ],
)
def test_record_unusable_message_raises_value_error(db: Database, xml: bytes) -> None:
    with db.session() as session:
        with pytest.raises(ValueError):
            record(session, xml)
        assert not session.new


def test_record_indexes_time_type_patient_and_identifiers(db: Database) -> None:
    with db.session() as session:
        record(session, SAMPLES["110104"](), registration_id="r1", patient_id="p1")

    with db.session() as session:
        (stored,) = session.scalars(select(AuditRecord)).all()
        assert stored.event_time == datetime(2025, 3, 21, 13, 30, 2, 417000, tzinfo=UTC)
        assert (stored.event_type, stored.patient_id) == ("RAD-16", "p1")
        keys = {(k.kind, k.value) for k in stored.search_keys}
    assert keys == {
        ("agent", "PACS_BELLEVAL"),
        ("agent", "AETITLES=PACS_BELLEVAL"),
        ("agent", "INTEROP_GW"),
        ("agent", "AETITLES=INTEROP_GW"),
        ("entity", STUDY_UID),
        ("entity", C25_PATIENT),
    }


def test_record_event_time_without_offset_read_as_utc(db: Database) -> None:
    xml = query_xml().replace(b"+00:00", b"")

    with db.session() as session:
        row = record(session, xml)

    assert row.event_time == datetime(2024, 3, 5, 14, 30, tzinfo=UTC)


def test_record_unparseable_event_time_refused(db: Database) -> None:
    xml = query_xml().replace(b"2024-03-05T14:30:00.000+00:00", b"yesterday")

    with pytest.raises(ValueError, match="EventDateTime"), db.session() as session:
        record(session, xml)
