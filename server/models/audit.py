"""The audit outbox: one row per audit message, committed with its action.

:class:`AuditRecord` holds the DICOM PS3.15 message as built, with the fields
searches need read out of it (event, type, outcome, time, the registration
and the patient it concerns). :class:`AuditSearchKey` indexes the identifiers
of its participants and objects for the ITI-81 ``agent`` and ``entity``
parameters. Delivery to the audit repositories is tracked per repository:
:class:`AuditDelivery` marks one record sent to one repository, and
:class:`AuditRepository` keeps each repository's outage and backoff state and
the lease of the process sending to it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from server.models.base import Base, UTCDateTime, utcnow

SEARCH_KEY_LENGTH = 256


class AuditRecord(Base):
    """A DICOM PS3.15 audit message waiting for delivery, or delivered.

    ``delivered_at`` is set once every configured repository has the
    message; ``attempts`` counts the connections it was sent on.
    """

    __tablename__ = "audit_record"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, index=True
    )
    event_id: Mapped[str] = mapped_column(String(16), index=True)
    event_action: Mapped[str] = mapped_column(String(1))
    outcome: Mapped[int] = mapped_column(Integer, default=0)
    registration_id: Mapped[str | None] = mapped_column(String(64), index=True)
    xml: Mapped[str] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # EventDateTime of the message, what ITI-81's ``date`` searches.
    event_time: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    # The first EventTypeCode's csd-code, what ITI-81's ``subtype`` searches.
    event_type: Mapped[str | None] = mapped_column(String(64), index=True)
    # The patient index id of the patient the event concerns, when known.
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)

    search_keys: Mapped[list[AuditSearchKey]] = relationship(
        back_populates="record", cascade="all, delete-orphan"
    )


class AuditSearchKey(Base):
    """One identifier of a record's participants (``agent``) or objects."""

    __tablename__ = "audit_search_key"
    __table_args__ = (Index("ix_audit_search_key_kind_value", "kind", "value"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    record_id: Mapped[int] = mapped_column(
        ForeignKey("audit_record.id", ondelete="CASCADE"), index=True
    )
    # agent | entity
    kind: Mapped[str] = mapped_column(String(8))
    value: Mapped[str] = mapped_column(String(SEARCH_KEY_LENGTH))

    record: Mapped[AuditRecord] = relationship(back_populates="search_keys")


class AuditDelivery(Base):
    """One record accepted by one audit repository."""

    __tablename__ = "audit_delivery"
    __table_args__ = (UniqueConstraint("record_id", "repository"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    record_id: Mapped[int] = mapped_column(
        ForeignKey("audit_record.id", ondelete="CASCADE"), index=True
    )
    repository: Mapped[str] = mapped_column(String(256))
    delivered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditRepository(Base):
    """Delivery state of one audit repository (``tls://host:port``...)."""

    __tablename__ = "audit_repository"

    url: Mapped[str] = mapped_column(String(256), primary_key=True)
    # Which process sends to this repository, and until when.
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Consecutive failed attempts; zero while the repository answers.
    failures: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered: Mapped[int] = mapped_column(Integer, default=0)
    last_delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
