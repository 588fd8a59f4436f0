"""The producing sites as the database holds them, for every process to read.

The sites file is the operator's source; each process that opens the database
writes what it read there (:func:`server.site_directory.sync`), so a worker on
another host, the status views and the audit of slots all see one directory.
A site dropped from the file stays as a row with ``active`` false: its
queries, candidates and slot history keep their meaning.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, Float, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from server.models.base import Base, UTCDateTime, utcnow


class SiteRecord(Base):
    """One producing site: how to reach it, query it and retrieve from it."""

    __tablename__ = "site"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    ae_title: Mapped[str] = mapped_column(String(16))
    host: Mapped[str] = mapped_column(String(256))
    port: Mapped[int] = mapped_column(Integer)
    patient_id_domain: Mapped[str] = mapped_column(String(128))
    query: Mapped[str] = mapped_column(String(16))
    query_model: Mapped[str] = mapped_column(String(16))
    retrieve: Mapped[str] = mapped_column(String(16))
    dicomweb_url: Mapped[str | None] = mapped_column(String(512))
    dicomweb_auth_header: Mapped[str | None] = mapped_column(Text)
    max_associations: Mapped[int] = mapped_column(Integer)
    timeout: Mapped[float] = mapped_column(Float)
    # Windows as the sites file writes them ("Sun 01:00-05:00"), and their zone.
    maintenance: Mapped[list[str]] = mapped_column(JSON, default=list)
    timezone: Mapped[str] = mapped_column(String(64))
    bandwidth_mbps: Mapped[float | None] = mapped_column(Float)
    tls_ca: Mapped[str | None] = mapped_column(String(512))
    tls_cert: Mapped[str | None] = mapped_column(String(512))
    tls_key: Mapped[str | None] = mapped_column(String(512))
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow
    )
