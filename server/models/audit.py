"""The audit outbox: one row per audit message, committed with its action."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from server.models.base import Base, UTCDateTime, utcnow


class AuditRecord(Base):
    """A DICOM PS3.15 audit message waiting for delivery, or delivered."""

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
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
