"""SPIDERS' own audit helpers: security events and transfers land in the outbox."""

from __future__ import annotations

import base64

from sqlalchemy import select

from ihe.atna.codes import EventTypeCode
from ihe.dicom.acceptance import RefusedCaller
from server import audit
from server.models import AuditRecord
from server.runtime import Runtime
from tests.audit_schema import assert_valid_audit


def records(rt: Runtime) -> list[AuditRecord]:
    with rt.db.session() as session:
        return list(session.scalars(select(AuditRecord).order_by(AuditRecord.id)))


def test_refused_association_recorded_as_security_alert(rt: Runtime) -> None:
    write = audit.refused_association(rt.settings, rt.db)

    write(RefusedCaller("INTRUDER", "192.0.2.66", "calling AE title not recognized"))

    (record,) = records(rt)
    assert (record.event_id, record.event_action, record.outcome) == ("110113", "E", 4)
    assert record.event_type == "110126"
    assert_valid_audit(record.xml.encode())
    assert "INTRUDER@192.0.2.66" in record.xml
    description = base64.b64encode(
        b"association refused: calling AE title not recognized"
    ).decode()
    assert description in record.xml


def test_security_alert_and_user_authentication_recorded(rt: Runtime) -> None:
    with rt.db.session() as session:
        audit.security_alert(
            session,
            rt.settings,
            alert_type=EventTypeCode.USE_OF_RESTRICTED_FUNCTION,
            subject="/fhir/AuditEvent",
            description="role refused",
            peer=audit.http_client("dr.x", "192.0.2.7"),
        )
        audit.user_authentication(
            session, rt.settings, user="dr.x", address="192.0.2.7", outcome=4
        )

    alert, login = records(rt)
    assert (alert.event_id, alert.event_type) == ("110113", "110132")
    assert (login.event_id, login.event_type, login.outcome) == ("110114", "110122", 4)
    for record in (alert, login):
        assert_valid_audit(record.xml.encode())


def test_transfer_without_prefetch_belongs_to_no_registration(rt: Runtime) -> None:
    with rt.db.session() as session:
        audit.instances_transferred(
            session,
            rt.settings,
            source_ae="SOMEONE",
            source_host="192.0.2.8",
            destination=audit.us(rt.settings),
            study_uid="2.999.77",
            sop_classes={"1.2.840.10008.5.1.4.1.1.2": 1},
            patient_id="X1",
            patient_name_value=None,
            action="C",
        )

    (record,) = records(rt)
    assert (record.registration_id, record.patient_id) == (None, None)
