"""Identity vigilance: does a study a site returned belong to the registered patient?

Discovery asks each site with the patient's identifier in that site's domain,
so every study returned is the site's answer for that identifier. Vigilance
checks that answer against the patient index before anything is fetched: a
study whose patient name, birth date or sex disagrees with the index is kept
as a candidate with the reasons, excluded from automatic selection, and
waits for a person to confirm or reject it (:func:`review`).

Names are compared the way French identity records differ without being
different people (the RNIV rules on used and birth names):

* case, accents and ligatures do not count (``Lévêque`` = ``LEVEQUE``,
  ``DESŒUVRES`` = ``DESOEUVRES``);
* separators do not count (``DUPONT-MARTIN`` = ``DUPONT MARTIN``,
  ``LE GOFF`` = ``LEGOFF``, ``D'ARC`` = ``DARC``);
* leading particles may be dropped (``DE LA TOUR`` = ``LA TOUR`` = ``TOUR``);
* one part of a composite name matches the whole (``DUPONT`` for
  ``DUPONT-MARTIN``: many PACS keep only the first part);
* the family name may match the used name or the birth name.

Given names agree when they share one name (``JEAN-PIERRE`` and ``Jean``),
or an initial. Values a site leaves empty are not disagreements: absence is
not evidence.

Limitations
-----------
No phonetic matching: a typing error in a family name at a site flags the
study, and a person decides. Only the alphabetic group of a DICOM Person Name
is compared (ideographic and phonetic groups are ignored).
"""

from __future__ import annotations

import logging
from datetime import datetime

from mappings.dicom_study import StudyFound
from mappings.names import fold
from server.errors import Conflict
from server.models import Candidate, Patient, PrefetchState, Registration, utcnow

logger = logging.getLogger(__name__)

LOG_REVIEWED = "flagged study reviewed"
PARTICLES = frozenset({"DE", "DU", "DES", "LE", "LA", "LES", "D", "L", "VAN", "VON"})
KNOWN_SEXES = frozenset({"M", "F"})


class Review:
    """The states of a flagged candidate, as ``Candidate.review`` holds them."""

    PENDING = "pending"
    CONFIRMED = "confirmed"
    REJECTED = "rejected"


UID_COLLISION = (
    "this Study Instance UID is in the cache, or asked for, for another patient: "
    "the same UID under two patients needs a person's review"
)


def identity_warning(registration: Registration, study: StudyFound) -> str | None:
    """Why the study's patient may not be the registered one, or ``None``."""
    reasons = disagreements(
        registration.patient,
        name=study.patient_name,
        birth_date=study.patient_birth_date,
        sex=study.patient_sex,
    )
    return "; ".join(reasons) or None


def disagreements(
    patient: Patient,
    *,
    name: str | None,
    birth_date: str | None,
    sex: str | None,
) -> list[str]:
    """The reasons a DICOM patient (name, birth date, sex) is not `patient`."""
    reasons = []
    birth = (birth_date or "").strip(" \0")
    if (
        patient.birth_date
        and len(birth) == 8
        and birth.isdigit()
        and birth != patient.birth_date.strftime("%Y%m%d")
    ):
        reasons.append("birth date differs from the patient index")
    site_sex = (sex or "").strip(" \0").upper()
    if (
        site_sex in KNOWN_SEXES
        and patient.sex in KNOWN_SEXES
        and site_sex != patient.sex
    ):
        reasons.append("sex differs from the patient index")
    family, given = _split_pn(name)
    known = [n for n in (patient.family_name, patient.birth_family_name) if n]
    if family and known and not any(family_names_match(family, n) for n in known):
        reasons.append("family name differs from the patient index")
    if (
        given
        and patient.given_names
        and not given_names_match(given, patient.given_names)
    ):
        reasons.append("given name differs from the patient index")
    return reasons


def family_names_match(first: str, second: str) -> bool:
    """True when two family names may be the same person's (see the module)."""
    return bool(_family_forms(first) & _family_forms(second))


def given_names_match(first: str, second: str) -> bool:
    """True when two given-name lists share a name, or an initial with a name."""
    ours, theirs = fold(first).split(), fold(second).split()
    for a in ours:
        for b in theirs:
            if (
                a == b
                or (len(a) == 1 and b.startswith(a))
                or (len(b) == 1 and a.startswith(b))
            ):
                return True
    return False


def review(
    candidate: Candidate, *, decision: str, by: str, note: str | None = None
) -> None:
    """Record a person's decision on a flagged candidate.

    A confirmed study becomes eligible for selection; a rejected one is
    deselected and can never be selected for this registration.

    Raises
    ------
    Conflict
        The candidate carries no identity warning, was already decided the
        other way, its retrieve has started (for a rejection), or its Study
        Instance UID is another patient's too (for a confirmation).
    """
    if candidate.warning is None:
        raise Conflict(f"candidate {candidate.id} has no identity warning to review")
    wanted = {"confirm": Review.CONFIRMED, "reject": Review.REJECTED}[decision]
    if wanted == Review.CONFIRMED and candidate.warning == UID_COLLISION:
        # The cache files studies by UID: fetching it would put two patients'
        # images under one study.
        raise Conflict(
            f"candidate {candidate.id} cannot be confirmed: its Study Instance UID "
            "is also another patient's; the site must correct the UID"
        )
    if candidate.review not in (None, Review.PENDING, wanted):
        raise Conflict(
            f"candidate {candidate.id} was already {candidate.review}; "
            "a decision is not reversed"
        )
    if wanted == Review.REJECTED and candidate.selected:
        prefetch = candidate.prefetch
        if prefetch is not None and prefetch.state not in ("scheduled", "cancelled"):
            raise Conflict(
                f"candidate {candidate.id} cannot be rejected: its retrieve is "
                f"{prefetch.state}"
            )
        candidate.selected, candidate.selected_by = False, by
        candidate.prefetch = None
    candidate.review = wanted
    candidate.reviewed_by = by
    candidate.reviewed_at = _now()
    candidate.review_note = note
    logger.info(
        LOG_REVIEWED,
        extra={"candidate": candidate.id, "decision": wanted},
    )


def needs_review(candidate: Candidate) -> bool:
    """True for a flagged candidate nobody has confirmed or rejected yet."""
    return candidate.warning is not None and candidate.review in (
        None,
        Review.PENDING,
    )


def flag(candidate: Candidate, warning: str) -> None:
    """Put `candidate` under identity review for `warning`.

    A retrieve not started yet (scheduled or queued) is cancelled, and the
    study leaves the selection with it; one under way or done is left as it
    is, the flag shown beside it.
    """
    candidate.warning, candidate.review = warning, None
    prefetch = candidate.prefetch
    if prefetch is not None and prefetch.state in (
        PrefetchState.SCHEDULED,
        PrefetchState.QUEUED,
    ):
        candidate.selected, candidate.selected_by = False, "identity"
        prefetch.state = PrefetchState.CANCELLED
        prefetch.finished_at = utcnow()
        prefetch.reason = warning


def selectable(candidate: Candidate) -> bool:
    """True when a person may select the candidate (not flagged-pending or rejected)."""
    return candidate.review != Review.REJECTED and not needs_review(candidate)


def _now() -> datetime:
    return utcnow()


def _split_pn(value: str | None) -> tuple[str, str]:
    """Family and given names of a DICOM PN's alphabetic group."""
    alphabetic = (value or "").split("=", 1)[0].strip(" \0")
    parts = alphabetic.split("^")
    family = parts[0].strip()
    given = " ".join(p.strip() for p in parts[1:3] if p.strip())
    return family, given


def _family_forms(name: str) -> set[str]:
    """Every form under which a family name may be recorded."""
    folded = fold(name)
    if not folded:
        return set()
    words = folded.split()
    forms = {folded, folded.replace(" ", "")}
    core = words
    while len(core) > 1 and core[0] in PARTICLES:
        core = core[1:]
    forms |= {" ".join(core), "".join(core)}
    # Parts of a composite name: split on the hyphens of the original.
    parts = [fold(p) for p in name.replace("--", "-").split("-") if fold(p)]
    if len(parts) > 1:
        forms |= set(parts) | {p.replace(" ", "") for p in parts}
    return forms
