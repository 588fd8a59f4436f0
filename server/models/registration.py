"""Tumour boards, the cases registered for them, and what was found and fetched.

A :class:`Registration` is one patient registered for one board meeting (an
FHIR Appointment). Discovery records one :class:`SiteQuery` per site and one
:class:`Candidate` per study found; selecting a candidate creates its
:class:`Prefetch`, the retrieve of that study into the cache, and each
:class:`PrefetchSeries` the count of one series the site announced for it.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from server.models.base import Base, UTCDateTime, new_id, utcnow
from server.models.patient import Patient


class PrefetchState(enum.StrEnum):
    """Life of one study's retrieve into the cache."""

    SCHEDULED = "scheduled"  # waiting for its due time
    QUEUED = "queued"  # handed to the task queue
    RUNNING = "running"
    READY = "ready"  # every instance the site announced is in the cache
    PARTIAL = "partial"  # some instances arrived, not all
    FAILED = "failed"  # nothing usable arrived
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """True when no more work will happen for this prefetch."""
        return self in {self.READY, self.PARTIAL, self.FAILED, self.CANCELLED}


class Board(Base):
    """A tumour board (RCP): where it meets and which console shows the images."""

    __tablename__ = "board"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    location_reference: Mapped[str] = mapped_column(String(256), unique=True)
    name: Mapped[str | None] = mapped_column(String(256))


class Registration(Base):
    """A patient registered for a board meeting (one case)."""

    __tablename__ = "registration"
    # The sender's key: an Appointment sent twice, even at once, is one case.
    __table_args__ = (
        UniqueConstraint(
            "identifier_system", "identifier_value", name="uq_appointment"
        ),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    version: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(32))
    patient_id: Mapped[str] = mapped_column(ForeignKey("patient.id"), index=True)
    board_id: Mapped[str | None] = mapped_column(ForeignKey("board.id"))
    meeting_start: Mapped[datetime | None] = mapped_column(UTCDateTime)
    meeting_end: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Appointment.identifier (first), to let senders address their own key.
    identifier_system: Mapped[str | None] = mapped_column(String(256))
    identifier_value: Mapped[str | None] = mapped_column(String(128))
    hints: Mapped[dict[str, list[str]]] = mapped_column(JSON, default=dict)
    discovery: Mapped[str] = mapped_column(String(16), default="pending")
    # Where the site identifiers came from at the last discovery: local, iti9
    # or iti83 (the region's PIX Manager), with a note when it was unavailable.
    identity_source: Mapped[str | None] = mapped_column(String(64))
    # Sites skipped (maintenance, busy) are asked again from this moment.
    rediscover_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    resource: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow
    )
    # Set once the prefetch deadline passed and the case was checked; the
    # reason is set only when the case was late then.
    late_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    late_reason: Mapped[str | None] = mapped_column(Text)

    patient: Mapped[Patient] = relationship()
    board: Mapped[Board | None] = relationship()
    site_queries: Mapped[list[SiteQuery]] = relationship(
        back_populates="registration",
        cascade="all, delete-orphan",
        order_by="SiteQuery.site_name",
    )
    candidates: Mapped[list[Candidate]] = relationship(
        back_populates="registration",
        cascade="all, delete-orphan",
        order_by="(Candidate.site_name, Candidate.study_date, Candidate.study_uid)",
    )


class SiteQuery(Base):
    """The outcome of discovery at one site for one registration."""

    __tablename__ = "site_query"
    __table_args__ = (UniqueConstraint("registration_id", "site_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    registration_id: Mapped[str] = mapped_column(
        ForeignKey("registration.id", ondelete="CASCADE"), index=True
    )
    site_name: Mapped[str] = mapped_column(String(64))
    # ok | no-identifier | failed
    status: Mapped[str] = mapped_column(String(16))
    studies_found: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    registration: Mapped[Registration] = relationship(back_populates="site_queries")


class Candidate(Base):
    """A study found at a site for a registration."""

    __tablename__ = "candidate"
    __table_args__ = (UniqueConstraint("registration_id", "site_name", "study_uid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    registration_id: Mapped[str] = mapped_column(
        ForeignKey("registration.id", ondelete="CASCADE"), index=True
    )
    site_name: Mapped[str] = mapped_column(String(64))
    study_uid: Mapped[str] = mapped_column(String(128))
    patient_id_at_site: Mapped[str] = mapped_column(String(128))
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_time: Mapped[str | None] = mapped_column(String(32))
    accession_number: Mapped[str | None] = mapped_column(String(64))
    modalities: Mapped[list[str]] = mapped_column(JSON, default=list)
    description: Mapped[str | None] = mapped_column(String(128))
    num_series: Mapped[int | None] = mapped_column(Integer)
    num_instances: Mapped[int | None] = mapped_column(Integer)
    selected: Mapped[bool] = mapped_column(Boolean, default=False)
    selected_by: Mapped[str | None] = mapped_column(String(64))
    warning: Mapped[str | None] = mapped_column(Text)
    # A person's decision on a flagged study: pending, confirmed or rejected.
    review: Mapped[str | None] = mapped_column(String(16))
    reviewed_by: Mapped[str | None] = mapped_column(String(64))
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    review_note: Mapped[str | None] = mapped_column(Text)
    # Other sites holding the same Study Instance UID: [{"site", "instances"}].
    also_at: Mapped[list[dict[str, object]] | None] = mapped_column(JSON)
    # Named by an order or appointment hint (accession number or study UID).
    hinted: Mapped[bool | None] = mapped_column(Boolean)

    registration: Mapped[Registration] = relationship(back_populates="candidates")
    prefetch: Mapped[Prefetch | None] = relationship(
        back_populates="candidate", uselist=False, cascade="all, delete-orphan"
    )


class Prefetch(Base):
    """The retrieve of one selected study into the cache."""

    __tablename__ = "prefetch"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    candidate_id: Mapped[int] = mapped_column(
        ForeignKey("candidate.id", ondelete="CASCADE"), unique=True
    )
    registration_id: Mapped[str] = mapped_column(String(64), index=True)
    site_name: Mapped[str] = mapped_column(String(64))
    study_uid: Mapped[str] = mapped_column(String(128), index=True)
    state: Mapped[str] = mapped_column(String(16), default=PrefetchState.SCHEDULED)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    expected_instances: Mapped[int | None] = mapped_column(Integer)
    received_instances: Mapped[int] = mapped_column(Integer, default=0)
    dimse_status: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The worker running it and until when its lease holds; an expired lease
    # means the worker stopped and another one may resume the retrieve.
    worker: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Not ready when its registration's deadline passed.
    late: Mapped[bool] = mapped_column(Boolean, default=False)

    candidate: Mapped[Candidate] = relationship(back_populates="prefetch")
    series: Mapped[list[PrefetchSeries]] = relationship(
        back_populates="prefetch",
        cascade="all, delete-orphan",
        order_by="PrefetchSeries.series_uid",
    )


class PrefetchSeries(Base):
    """One series of a prefetched study: what the site holds and the cache has.

    ``expected`` is the site's NumberOfSeriesRelatedInstances from a
    SERIES-level C-FIND made when the retrieve starts; ``received`` is the
    cache's count of that series after the retrieve.
    """

    __tablename__ = "prefetch_series"
    __table_args__ = (UniqueConstraint("prefetch_id", "series_uid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    prefetch_id: Mapped[str] = mapped_column(
        ForeignKey("prefetch.id", ondelete="CASCADE"), index=True
    )
    series_uid: Mapped[str] = mapped_column(String(128))
    expected: Mapped[int] = mapped_column(Integer)
    received: Mapped[int] = mapped_column(Integer, default=0)

    prefetch: Mapped[Prefetch] = relationship(back_populates="series")

    @property
    def complete(self) -> bool:
        """True when the cache holds every instance the site announced."""
        return self.received >= self.expected
