"""The cache index: one row per stored SOP instance; and the permits of the
``spiders retrieve`` commands running, which let the cache keep what they
ask for (:mod:`ihe.dicom.admission`).

Study and series attributes are kept on every instance row so that the
console's C-FIND at any level is one grouped query.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from server.models.base import Base, UTCDateTime, utcnow


class CachedInstance(Base):
    """A SOP instance stored in the board's cache, exactly as received."""

    __tablename__ = "cached_instance"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(128), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(128))
    study_uid: Mapped[str] = mapped_column(String(128), index=True)
    series_uid: Mapped[str] = mapped_column(String(128), index=True)
    transfer_syntax: Mapped[str] = mapped_column(String(128))
    path: Mapped[str] = mapped_column(String(512))
    size: Mapped[int] = mapped_column(BigInteger)
    source_ae: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Patient and study attributes, as the instance carries them.
    patient_id: Mapped[str | None] = mapped_column(String(128), index=True)
    issuer_of_patient_id: Mapped[str | None] = mapped_column(String(128))
    patient_name: Mapped[str | None] = mapped_column(String(320))
    patient_birth_date: Mapped[str | None] = mapped_column(String(8))
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_time: Mapped[str | None] = mapped_column(String(32))
    study_description: Mapped[str | None] = mapped_column(String(128))
    study_id: Mapped[str | None] = mapped_column(String(16))
    accession_number: Mapped[str | None] = mapped_column(String(64))
    # Series and instance attributes.
    modality: Mapped[str | None] = mapped_column(String(16))
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(String(128))
    instance_number: Mapped[int | None] = mapped_column(Integer)


class RetrievePermit(Base):
    """A study ``spiders retrieve`` is asking a site for, while it runs.

    The row lives as long as the retrieve, renewed every third of its
    lifetime; a command that dies leaves a row that lapses at `expires_at`.
    """

    __tablename__ = "retrieve_permit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    site_name: Mapped[str] = mapped_column(String(64))
    study_uid: Mapped[str] = mapped_column(String(128), index=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
