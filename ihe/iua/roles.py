"""The roles SPIDERS grants, read from a claim of the access token.

Each HTTP endpoint names the roles allowed to call it; a token carrying none
of them is answered 403 ``insufficient_scope``.
"""

from __future__ import annotations

import enum


class Role(enum.StrEnum):
    """A user's or a system's role, as written in the token's roles claim."""

    CLINICIAN = "clinician"  # registers patients for a board, selects studies
    COORDINATOR = "coordinator"  # runs boards: cases and prefetch progress
    RADIOLOGIST = "radiologist"  # reads cases, selects studies
    SECURITY_OFFICER = "security-officer"  # reads the audit trail
    SYSTEM = "system"  # other systems' intake (identity feeds, registrations)


READERS = (Role.CLINICIAN, Role.COORDINATOR, Role.RADIOLOGIST, Role.SYSTEM)
