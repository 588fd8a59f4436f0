"""Shared work state between processes: site association slots and events.

A :class:`SiteSlot` is one of the ``max_associations`` slots of a site; a
worker holds one for as long as it talks to the site, under a lease it renews.
:class:`SiteSlotUse` keeps when each lease began and ended, for operators.
An :class:`Event` is a notification for users (a case late at its deadline),
kept until it is read from the feed and, when a webhook is configured,
delivered to it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from server.models.base import Base, UTCDateTime, utcnow


class SiteSlot(Base):
    """One association slot of a site; free when `holder` is empty or its
    lease has expired."""

    __tablename__ = "site_slot"

    site_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    slot_no: Mapped[int] = mapped_column(Integer, primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(128))
    prefetch_id: Mapped[str | None] = mapped_column(String(64))
    use_id: Mapped[int | None] = mapped_column(Integer)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SiteSlotUse(Base):
    """One lease of a site slot: who held it, for which prefetch, and when.

    ``ended_at`` is the release time, or the lease's expiry when its holder
    stopped without releasing it (``expired`` is then true).
    """

    __tablename__ = "site_slot_use"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    site_name: Mapped[str] = mapped_column(String(64), index=True)
    slot_no: Mapped[int] = mapped_column(Integer)
    holder: Mapped[str] = mapped_column(String(128))
    prefetch_id: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expired: Mapped[bool] = mapped_column(default=False)


class Event(Base):
    """A notification for users, in the order it happened (`id` grows)."""

    __tablename__ = "event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(64))
    registration_id: Mapped[str | None] = mapped_column(String(64), index=True)
    payload: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Webhook delivery (SPIDERS_NOTIFY_URL): when it succeeded, how often it
    # was tried, and when it may be tried next.
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, index=True
    )
    last_error: Mapped[str | None] = mapped_column(Text)
