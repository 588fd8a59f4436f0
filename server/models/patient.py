"""The patient index: one person, many identifiers, each in its domain.

A merge (HL7 A40) moves the absorbed patient's identifiers to the survivor,
each remembering where it came from (``merged_from``), and leaves the absorbed
patient inactive with ``merged_into`` set. Every merge, identifier change and
link is written to :class:`PatientHistory`.

The INS (French national identifier) is always kept as sent, with its identity
status (``ins_system``, ``ins_value``, ``ins_status``); it becomes a linking
:class:`PatientIdentifier` only when its status is VALI or QUAL and the
identity is neither fictitious nor doubtful (see the patient index).

Names are also kept folded (upper case, no accents, separators as single
spaces) so that demographic queries are one indexed comparison.

Limitations
-----------
One used name plus one birth name per patient; other names sent in a feed
(aliases, pseudonyms) are kept only in the stored resource.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from server.models.base import Base, UTCDateTime, new_id, utcnow


class Patient(Base):
    """One person known to the patient index."""

    __tablename__ = "patient"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    version: Mapped[int] = mapped_column(Integer, default=1)
    family_name: Mapped[str | None] = mapped_column(String(200))
    given_names: Mapped[str | None] = mapped_column(String(200))
    birth_family_name: Mapped[str | None] = mapped_column(String(200))
    birth_date: Mapped[date | None] = mapped_column(Date, index=True)
    sex: Mapped[str | None] = mapped_column(String(16))
    # PID-23 / FHIR patient-birthPlace (an INSEE code when the sender has one).
    birth_place: Mapped[str | None] = mapped_column(String(128))
    family_fold: Mapped[str | None] = mapped_column(String(200), index=True)
    birth_family_fold: Mapped[str | None] = mapped_column(String(200), index=True)
    given_fold: Mapped[str | None] = mapped_column(String(200))
    # The INS as last sent, whatever its status; it links only when trusted.
    ins_system: Mapped[str | None] = mapped_column(String(128))
    ins_value: Mapped[str | None] = mapped_column(String(128))
    ins_status: Mapped[str | None] = mapped_column(String(8))
    # RNIV identity attributes (PID-32 beside the status): DOUT, FICT, HOMA...
    identity_attributes: Mapped[list[str] | None] = mapped_column(JSON)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # The survivor this patient was merged into (inactive then).
    merged_into: Mapped[str | None] = mapped_column(String(64))
    resource: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow
    )

    identifiers: Mapped[list[PatientIdentifier]] = relationship(
        back_populates="patient",
        cascade="all, delete-orphan",
        order_by="PatientIdentifier.id",
    )
    history: Mapped[list[PatientHistory]] = relationship(
        back_populates="patient",
        cascade="all, delete-orphan",
        order_by="PatientHistory.id",
    )

    @property
    def fictitious_or_doubtful(self) -> bool:
        """True when the identity carries the FICT or DOUT attribute."""
        return bool({"FICT", "DOUT"} & set(self.identity_attributes or ()))

    def identifier_in(self, system: str) -> str | None:
        """Return this patient's identifier value in domain `system`, if any.

        The patient's own identifier comes before one taken over in a merge.
        """
        found = [i for i in self.identifiers if i.system == system]
        found.sort(key=lambda ident: ident.merged_from is not None)
        return found[0].value if found else None


class PatientIdentifier(Base):
    """An identifier of a patient in one assigning authority (an OID)."""

    __tablename__ = "patient_identifier"
    __table_args__ = (UniqueConstraint("system", "value", name="uq_identifier"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    patient_id: Mapped[str] = mapped_column(
        ForeignKey("patient.id", ondelete="CASCADE"), index=True
    )
    system: Mapped[str] = mapped_column(String(128))
    value: Mapped[str] = mapped_column(String(128))
    type_code: Mapped[str | None] = mapped_column(String(16))
    # The patient this identifier belonged to before a merge moved it here.
    merged_from: Mapped[str | None] = mapped_column(String(64))

    patient: Mapped[Patient] = relationship(back_populates="identifiers")


class PatientHistory(Base):
    """One event in a patient's identity history.

    ``kind`` is ``created``, ``linked`` (an identifier joined the patient),
    ``merged`` (another patient was absorbed), ``absorbed`` (this patient was
    merged into ``other_patient_id``), ``identifier-changed`` or ``ins-held``
    (an INS kept without linking, with the reason).
    """

    __tablename__ = "patient_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    patient_id: Mapped[str] = mapped_column(
        ForeignKey("patient.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    other_patient_id: Mapped[str | None] = mapped_column(String(64))
    system: Mapped[str | None] = mapped_column(String(128))
    old_value: Mapped[str | None] = mapped_column(String(128))
    new_value: Mapped[str | None] = mapped_column(String(128))
    detail: Mapped[str | None] = mapped_column(Text)

    patient: Mapped[Patient] = relationship(back_populates="history")
