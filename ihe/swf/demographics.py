"""The PID of a scheduling or order message checked against the patient index.

SIU (RAD-48) and ORM/OMI (RAD-4) messages name their patient by PID-3 only;
the patient index resolves it. Their PID also carries the patient's name,
birth date and sex, and a message whose demographics disagree with the
patient that PID-3 resolves to is about another person, or names the wrong
identifier: acting on it would register a case, or attach an order, to the
wrong patient. Such a message is refused before anything changes.

The comparison is the one identity vigilance makes for studies
(:mod:`server.workflow.vigilance`):

=========  ===================================================================
PID-5      every repetition: the family name (XPN-1) must match the index's
           used or birth family name, without case, accents or separators,
           with leading particles optional and one part of a composite name
           enough; the given names (XPN-2 and XPN-3) must share a name or an
           initial with the index's
PID-7      the birth date must be the index's, to the day
PID-8      the sex, when ``M`` or ``F`` on both sides, must be the index's
=========  ===================================================================

An empty value, on either side, is no disagreement. The refusal is ``AE``
with ERR-2 the first field that disagrees (``PID^1^5^1^1`` family name,
``PID^1^5^1^2`` given names, ``PID^1^7``, ``PID^1^8``), ERR-3 207 and ERR-5
904 (:class:`~ihe.hl7v2.codes.ApplicationErrorCode`); ERR-8 names every field
that disagrees, never their values: "The birth date (PID-7) of PID differs
from the patient index for the patient PID-3 names; nothing was changed:
correct the message, or update the patient (ADT) first" (``differ`` for the
given names or several fields).

Table 0357 has no code for "the record's data contradict the key": 204
(unknown key) would tell the sender PID-3 is unknown, which it is not, and
205 that the key is used twice. The French CI-SIS profiles answer this case
with ERR-3 207 and the application code 904 in ERR-5 ("the identity traits
do not match those stored"), which is what is sent here.

Limitations
-----------
No phonetic or typing-error tolerance: a misspelt family name is refused,
and the sender corrects it or updates the index (ADT ``A31``/``A08``) first.
A used name the index does not know yet is refused the same way.
"""

from __future__ import annotations

import logging

from ihe.hl7v2.application import ApplicationRuleError
from ihe.hl7v2.codes import ApplicationErrorCode
from mappings.hl7_pid import PidPatient
from server.models import Patient
from server.workflow.vigilance import (
    KNOWN_SEXES,
    family_names_match,
    given_names_match,
)

logger = logging.getLogger(__name__)

Location = tuple[str | int, ...]
# What differs, as ERR-8 names it.
FAMILY = "the family name (PID-5.1)"
GIVEN = "the given names (PID-5.2, PID-5.3)"
BIRTH_DATE = "the birth date (PID-7)"
SEX = "the sex (PID-8)"
_ORDER = [FAMILY, GIVEN, BIRTH_DATE, SEX]
# The one field named in the plural: the verb agrees with it.
_PLURAL = frozenset({GIVEN})


def check(patient: Patient, pid: PidPatient) -> None:
    """Refuse `pid` when its demographics disagree with the indexed `patient`.

    Raises
    ------
    ApplicationRuleError
        ERR-3 207, ERR-5 904, ERR-2 the first field that disagrees.
    """
    found = disagreements(patient, pid)
    if not found:
        return
    fields = sorted({what for what, _ in found}, key=_ORDER.index)
    raise ApplicationRuleError(
        f"{_listed(fields)} of PID {_differ(fields)} from the patient index for "
        "the patient PID-3 names; nothing was changed: correct the message, or "
        "update the patient (ADT) first",
        ApplicationErrorCode.DEMOGRAPHICS_DIFFER,
        found[0][1],
    )


def disagreements(patient: Patient, pid: PidPatient) -> list[tuple[str, Location]]:
    """Every disagreement as (what differs, its ERR-2 location), in field order."""
    found: list[tuple[str, Location]] = []
    known = [n for n in (patient.family_name, patient.birth_family_name) if n]
    for rep, xpn in zip(pid.name_repetitions, pid.names, strict=True):
        if (
            xpn.family
            and known
            and not any(family_names_match(xpn.family, name) for name in known)
        ):
            found.append((FAMILY, ("PID", 1, 5, rep, 1)))
        given = " ".join(g for g in (xpn.given, xpn.further_given) if g)
        if (
            given
            and patient.given_names
            and not given_names_match(given, patient.given_names)
        ):
            found.append((GIVEN, ("PID", 1, 5, rep, 2)))
    record = pid.record
    birth = record.birth_date
    if birth and patient.birth_date and birth != patient.birth_date:
        found.append((BIRTH_DATE, ("PID", 1, 7)))
    sexes = (record.sex, patient.sex)
    if all(s in KNOWN_SEXES for s in sexes) and record.sex != patient.sex:
        found.append((SEX, ("PID", 1, 8)))
    return found


def _differ(fields: list[str]) -> str:
    """The verb agreeing with `fields`: one field in the singular takes "differs"."""
    plural = len(fields) > 1 or fields[0] in _PLURAL
    return "differ" if plural else "differs"


def _listed(items: list[str]) -> str:
    text = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return text[0].upper() + text[1:]
