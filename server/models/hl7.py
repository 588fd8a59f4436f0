"""The HL7 v2 message store: every message received, as bytes, with its answer.

A message is committed here before it is processed and before any
acknowledgement leaves. The sender (``MSH-3|MSH-4``) and the control ID
(MSH-10) are unique together, and stored whole (a key longer than its column
is refused by the receiver, never cut): the same message sent again under the
same pair is answered with the acknowledgement already sent and not processed
twice; another message under a pair already used is refused and not stored.

Limitations
-----------
Messages are kept forever; nothing purges old rows yet.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from server.models.base import Base, UTCDateTime, utcnow


class Hl7Outcome(enum.StrEnum):
    """Where a stored message stands."""

    RECEIVED = "received"  # stored, not processed (or processing was interrupted)
    ACCEPTED = "accepted"  # processed; AA (CA) sent
    ERROR = "error"  # refused for its content or failed; AE (CE) sent
    REJECTED = "rejected"  # refused unprocessed; AR (CR) sent


class Hl7Message(Base):
    """One HL7 v2 message as received over MLLP, and the ACK sent for it."""

    __tablename__ = "hl7_message"
    __table_args__ = (
        UniqueConstraint("sender", "control_id", name="uq_hl7_message_sender_msh10"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # MSH-3|MSH-4 as written in the message.
    sender: Mapped[str] = mapped_column(String(512))
    # MSH-10; NULL when missing, so that such messages are never duplicates.
    control_id: Mapped[str | None] = mapped_column(String(199))
    # MSH-9.1^MSH-9.2, e.g. SIU^S12.
    message_type: Mapped[str] = mapped_column(String(32), default="")
    peer: Mapped[str] = mapped_column(String(128), default="")
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    outcome: Mapped[str] = mapped_column(String(16), default=Hl7Outcome.RECEIVED)
    ack_code: Mapped[str | None] = mapped_column(String(2))
    # The ACK payload exactly as sent (unframed); NULL when none was sent.
    ack: Mapped[bytes | None] = mapped_column(LargeBinary)
    # What processing did (internal ids only) or why it failed (the ERR text).
    detail: Mapped[str | None] = mapped_column(Text)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
