"""Database models: the nouns of SPIDERS.

``Patient``, ``PatientIdentifier`` and ``PatientHistory`` form the patient
index; ``Board`` and
``Registration`` the tumour-board cases; ``SiteQuery`` and ``Candidate`` what
discovery found; ``Prefetch`` one study's retrieve and ``PrefetchSeries`` its
series' counts; ``SiteSlot`` and ``SiteSlotUse`` the leases on the sites'
associations; ``Event`` the notifications for users; ``CachedInstance`` what the
cache holds; ``Hl7Message`` every HL7 v2 message received and its
acknowledgement; ``AuditRecord`` the audit outbox, with its search keys and
delivery state.
"""

from server.models.audit import (
    AuditDelivery,
    AuditRecord,
    AuditRepository,
    AuditSearchKey,
)
from server.models.base import Base, new_id, utcnow
from server.models.cache import CachedInstance, RetrievePermit
from server.models.hl7 import Hl7Message, Hl7Outcome
from server.models.patient import Patient, PatientHistory, PatientIdentifier
from server.models.registration import (
    Board,
    Candidate,
    Prefetch,
    PrefetchSeries,
    PrefetchState,
    Registration,
    SiteQuery,
)
from server.models.site import SiteRecord
from server.models.work import Event, SiteSlot, SiteSlotUse

__all__ = [
    "AuditDelivery",
    "AuditRecord",
    "AuditRepository",
    "AuditSearchKey",
    "Base",
    "Board",
    "CachedInstance",
    "Candidate",
    "Event",
    "Hl7Message",
    "Hl7Outcome",
    "Patient",
    "PatientHistory",
    "PatientIdentifier",
    "Prefetch",
    "PrefetchSeries",
    "PrefetchState",
    "Registration",
    "RetrievePermit",
    "SiteQuery",
    "SiteRecord",
    "SiteSlot",
    "SiteSlotUse",
    "new_id",
    "utcnow",
]
