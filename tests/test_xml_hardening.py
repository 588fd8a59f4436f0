"""XML parsers refuse external entities and entity expansion (audit XML)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ihe.atna import outbox
from mappings.fhir_audit_event import to_audit_event
from server.db import Database

SECRET_TEXT = "s3cr3t-from-the-server-disk"

MESSAGE = """<?xml version="1.0"?>
<!DOCTYPE AuditMessage [
  <!ENTITY leak SYSTEM "file://{secret}">
  <!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">
  <!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
  <!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
  <!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">
  <!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;">
]>
<AuditMessage>
  <EventIdentification EventActionCode="E" EventDateTime="2026-12-03T10:00:00+01:00"
      EventOutcomeIndicator="0">
    <EventID csd-code="110100" codeSystemName="DCM"
        originalText="Application Activity"/>
    <EventOutcomeDescription>&leak;&e;</EventOutcomeDescription>
  </EventIdentification>
  <ActiveParticipant UserID="1" UserIsRequestor="false"/>
  <AuditSourceIdentification AuditSourceID="x"/>
</AuditMessage>
"""


def hostile(tmp_path: Path) -> bytes:
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET_TEXT)
    return MESSAGE.format(secret=secret).encode()


def test_audit_event_mapping_never_expands_entities(tmp_path: Path) -> None:
    try:
        resource = to_audit_event(hostile(tmp_path), resource_id="1")
    except ValueError:
        return  # refused outright: fine
    text = json.dumps(resource)
    assert SECRET_TEXT not in text
    assert "a" * 1000 not in text


@pytest.mark.audit_unchecked
def test_outbox_never_expands_entities(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'x.sqlite'}")
    db.create_schema()
    try:
        with db.session() as session:
            try:
                row = outbox.record(session, hostile(tmp_path))
            except ValueError:
                return
            assert row.event_id == "110100"
            stored = row.xml
        assert len(stored) < 5000
        assert SECRET_TEXT not in stored
    finally:
        db.dispose()
