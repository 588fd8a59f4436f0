"""Database models: the nouns of SPIDERS.

``Patient`` and ``PatientIdentifier`` form the patient index; ``Board`` and
``Registration`` the tumour-board cases; ``SiteQuery`` and ``Candidate`` what
discovery found; ``Prefetch`` one study's retrieve; ``CachedInstance`` what the
cache holds; ``AuditRecord`` the audit outbox.
"""

from server.models.audit import AuditRecord
from server.models.base import Base, new_id, utcnow
from server.models.cache import CachedInstance
from server.models.patient import Patient, PatientIdentifier
from server.models.registration import (
    Board,
    Candidate,
    Prefetch,
    PrefetchState,
    Registration,
    SiteQuery,
)

__all__ = [
    "AuditRecord",
    "Base",
    "Board",
    "CachedInstance",
    "Candidate",
    "Patient",
    "PatientIdentifier",
    "Prefetch",
    "PrefetchState",
    "Registration",
    "SiteQuery",
    "new_id",
    "utcnow",
]
