"""Demographic search of the patient index, shared by ITI-21 PDQ and ITI-78 PDQm.

Both transactions ask the same question with different syntax: which active
patients have this name, birth date, sex or identifier. This module answers
it once; the transaction modules parse their query into a
:class:`PatientQuery` and render the patients found.

Names match case- and accent-insensitively on their folded form
(:func:`mappings.names.fold`): ``Lévêque``, ``LEVEQUE`` and ``leveque`` are
one name, and so are ``DUPONT-MARTIN`` and ``DUPONT MARTIN``. A family name
matches the used name or the birth name. With ``exact`` false (PDQm's string
search, and a trailing ``*`` in PDQ), a value matches names that start with it.
With ``verbatim`` (PDQm's ``:exact``), the whole name must be as stored, case
and accents included: ``Lévêque`` finds ``Lévêque`` but not ``LEVEQUE``; a
given name must be one of the patient's given names as stored.

Merged (inactive) patients are never returned: their identifiers resolve to
the survivor, which is returned instead.

Limitations
-----------
No phonetic or fuzzy matching: a misspelt name finds nothing, which is the
safe answer for identity. Address, telecom and mother's maiden name are not
searchable; the birth place matches only as stored (the same INSEE code).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import ColumnElement, Integer, Select, func, or_, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import InstrumentedAttribute, Session
from sqlalchemy.sql.functions import FunctionElement

from mappings.names import fold
from server.models import Patient, PatientIdentifier

DEFAULT_LIMIT = 100


@dataclass(frozen=True)
class PatientQuery:
    """What a demographic query asks for; empty fields are not constraints.

    Attributes
    ----------
    identifiers : tuple of (system, value or None)
        An identifier in a domain, or with value None any patient that has an
        identifier in that domain (PDQm ``identifier=system|``).
    birth_place : str or None
        The birth place as stored (PID-23, an INSEE code), compared exactly.
    domains : tuple of str
        Not a search parameter but a filter: only patients holding an
        identifier in at least one of these domains (PDQ QPD-8).
    verbatim : bool
        Names must also match as stored, case and accents included (with
        `exact`, FHIR's ``:exact`` modifier).
    """

    family: str | None = None
    given: str | None = None
    birth_date: date | None = None
    sex: str | None = None
    identifiers: tuple[tuple[str, str | None], ...] = ()
    exact: bool = True
    verbatim: bool = False
    patient_ids: tuple[str, ...] = field(default=())
    birth_place: str | None = None
    domains: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """True when the query constrains nothing."""
        return not (
            self.family
            or self.given
            or self.birth_date
            or self.sex
            or self.identifiers
            or self.patient_ids
            or self.birth_place
        )


def search(session: Session, query: PatientQuery) -> list[Patient]:
    """Active patients matching every constraint of `query`, in a stable order.

    The order (by internal id) is what continuation pointers rely on: page
    ``n`` of a query is the same patients whoever asks and however often.
    """
    return list(session.scalars(statement(query)))


def statement(query: PatientQuery) -> Select[Patient]:
    """The SELECT for `query`, for callers that page or count it."""
    stmt = select(Patient).where(Patient.active.is_(True))
    if query.family:
        stmt = stmt.where(
            or_(
                _name(Patient.family_fold, query.family, query.exact),
                _name(Patient.birth_family_fold, query.family, query.exact),
            )
        )
    if query.given:
        folded = fold(query.given)
        # Any of the given names: "MARIE" finds "MARIE CLAIRE" and "ANNE MARIE".
        stmt = stmt.where(
            or_(
                Patient.given_fold == folded,
                Patient.given_fold.like(_escape(folded) + " %", escape="\\"),
                Patient.given_fold.like("% " + _escape(folded), escape="\\"),
                Patient.given_fold.like("% " + _escape(folded) + " %", escape="\\"),
                *(
                    ()
                    if query.exact
                    else (Patient.given_fold.like(_escape(folded) + "%", escape="\\"),)
                ),
            )
        )
    if query.verbatim and query.family:
        stmt = stmt.where(
            or_(
                Patient.family_name == query.family,
                Patient.birth_family_name == query.family,
            )
        )
    if query.verbatim and query.given:
        words = " " + func.coalesce(Patient.given_names, "") + " "
        stmt = stmt.where(Contains(words, f" {query.given} ") > 0)
    if query.birth_date:
        stmt = stmt.where(Patient.birth_date == query.birth_date)
    if query.sex:
        stmt = stmt.where(Patient.sex == query.sex)
    if query.patient_ids:
        stmt = stmt.where(Patient.id.in_(query.patient_ids))
    if query.birth_place:
        stmt = stmt.where(Patient.birth_place == query.birth_place)
    if query.domains:
        stmt = stmt.where(
            Patient.id.in_(
                select(PatientIdentifier.patient_id).where(
                    PatientIdentifier.system.in_(query.domains)
                )
            )
        )
    for system, value in query.identifiers:
        held = select(PatientIdentifier.patient_id).where(
            PatientIdentifier.system == system
        )
        if value is not None:
            held = held.where(PatientIdentifier.value == value)
        stmt = stmt.where(Patient.id.in_(held))
    return stmt.order_by(Patient.id)


def fold_name(value: str | None) -> str | None:
    """The folded form the index stores for a name, None for an empty one."""
    folded = fold(value or "")
    return folded or None


def _name(
    column: InstrumentedAttribute[str | None], value: str, exact: bool
) -> ColumnElement[bool]:
    folded = fold(value)
    if exact:
        return column == folded
    return column.like(_escape(folded) + "%", escape="\\")


class Contains(FunctionElement[int]):
    """Case-sensitive position of a text in another, 0 when absent.

    ``LIKE`` ignores case on SQLite, so the verbatim given-name match uses
    the engine's own substring search: ``instr`` on SQLite, ``strpos`` on
    PostgreSQL.
    """

    type = Integer()
    inherit_cache = True


@compiles(Contains)
def _contains(element: Contains, compiler: Any, **kw: Any) -> str:
    return f"instr({compiler.process(element.clauses, **kw)})"


@compiles(Contains, "postgresql")
def _contains_postgresql(element: Contains, compiler: Any, **kw: Any) -> str:
    return f"strpos({compiler.process(element.clauses, **kw)})"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
