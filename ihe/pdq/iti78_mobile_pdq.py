"""ITI-78 Mobile Patient Demographics Query (PDQm), Patient Demographics Supplier.

IHE PDQm, ITI TF-2 3.78: ``GET [base]/Patient?...`` (or ``POST
[base]/Patient/_search`` with the same parameters form-encoded) answers a
``searchset`` Bundle of the active patients of the index that match every
parameter. The question itself is asked of :mod:`ihe.pdq.patient_search`,
shared with ITI-21; this module parses the FHIR search and renders the
Bundle.

Parameters
----------
``family``, ``given``
    FHIR string search: case- and accent-insensitive, a value matches names
    that start with it (``levêq`` and ``LEVEQ`` find ``Lévêque``). With
    ``:exact`` the whole name must match as stored, case and accents
    included (``Lévêque``, not ``LEVEQUE``); ``given:exact`` one of the given
    names. ``family`` matches the used name or the birth name.
``birthdate``
    A full date, with no prefix or ``eq``.
``gender``
    ``male``, ``female``, ``other``, ``unknown``.
``identifier``
    ``system|value``; ``system|`` for any identifier in that domain (which
    also keeps only that domain's identifiers in the patients returned, 3.78
    Case 2); ``value`` alone for any domain; comma-separated values are
    alternatives. A domain SPIDERS does not recognise finds nothing and adds
    an OperationOutcome entry (warning, ``not-found``, "targetSystem not
    found"): 3.78 Case 4 allows 200 with the results available.
``_id``
    Logical ids, comma-separated alternatives.
``active``
    ``true`` changes nothing; ``false`` finds nothing: merged patients are
    not returned (3.78 Case 6), their identifiers find the survivor. It is
    not a criterion by itself: ``active=true`` alone would list the index.
``_count``
    Page size, 20 by default, at most 100. Pages follow the index's stable
    order; the ``next`` link carries the last id returned (``_cursor``), so
    a patient added between two pages is neither repeated nor skipped.

Unknown parameters and modifiers are ignored and left out of the ``self``
link (FHIR's lenient handling) unless the request says ``Prefer:
handling=strict``, which answers 400. Repeating a parameter other than
``identifier``, or giving alternatives to ``family``, ``given``,
``birthdate`` or ``gender``, is refused with 400.

Limitations
-----------
No ``telecom``, ``address`` or ``mothersMaidenName`` search (the index does
not keep them searchable): they are unknown parameters. Partial dates and date
prefixes other than ``eq`` are refused. A query must have at least one
criterion: the whole index is never listed. JSON only: ``_format`` asking
for XML answers 406.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from datetime import date
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.orm import Session

from ihe.pdq.patient_search import PatientQuery, statement
from ihe.pix.iti83_mobile_pix_query import current_identifiers, domain_known
from mappings.fhir_patient import GENDER_TO_SEX, SEX_TO_GENDER
from mappings.identifiers import authority_to_system, system_to_authority
from server.errors import InputError, NotAcceptable
from server.models import Patient, PatientIdentifier

logger = logging.getLogger(__name__)

DEFAULT_COUNT = 20
MAX_COUNT = 100
CURSOR = "_cursor"
TARGET_SYSTEM_NOT_FOUND = "targetSystem not found"
NO_SYSTEM = ""
LOG_ANSWERED = "PDQm search answered"
STRING_PARAMETERS = ("family", "given")
SINGLE_PARAMETERS = ("family", "given", "birthdate", "gender", "active", "_count")
JSON_FORMATS = frozenset({"json", "application/json", "application/fhir+json"})
# Parameters read but never part of the search itself.
CONTROL_PARAMETERS = frozenset({"_format", CURSOR})
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_PREFIX = re.compile(r"^([a-z]{2})(\d.*)$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")

Token = tuple[str | None, str | None]


@dataclass(frozen=True)
class PdqmSearch:
    """An ITI-78 search as parsed.

    Attributes
    ----------
    query : PatientQuery
        The constraints the shared demographic search applies.
    exact_names : PatientQuery or None
        Names searched with ``:exact`` when other names are searched as
        prefixes; None otherwise.
    identifier_groups : tuple of tuple of Token
        Identifier parameters the shared query cannot express (alternatives,
        or a value without a system); each group is one OR.
    domains : tuple of str
        Domains asked with ``system|``: only their identifiers are returned.
    count : int
        Page size.
    cursor : str or None
        The last id of the previous page.
    used : tuple of (str, str)
        Parameters applied, as received, for the ``self`` and ``next`` links.
    matches_nothing : bool
        True for ``active=false``.
    systems : tuple of str
        Every domain named by an identifier parameter, to check it is known.
    """

    query: PatientQuery
    exact_names: PatientQuery | None = None
    identifier_groups: tuple[tuple[Token, ...], ...] = ()
    domains: tuple[str, ...] = ()
    count: int = DEFAULT_COUNT
    cursor: str | None = None
    used: tuple[tuple[str, str], ...] = ()
    matches_nothing: bool = False
    systems: tuple[str, ...] = ()


@dataclass(frozen=True)
class SearchPage:
    """The Bundle to return and the patients on this page."""

    bundle: dict[str, Any]
    patients: list[Patient]


def parse_search(params: Sequence[tuple[str, str]], *, strict: bool) -> PdqmSearch:
    """Parse FHIR search parameters into a :class:`PdqmSearch`.

    Parameters
    ----------
    params : sequence of (str, str)
        The parameters as received, in order, repeated names kept.
    strict : bool
        True under ``Prefer: handling=strict``: unknown parameters are errors.

    Raises
    ------
    InputError
        A value cannot be used, a parameter is repeated or unknown (strict
        handling), or no criterion is given.
    NotAcceptable
        ``_format`` asks for something else than JSON.
    """
    fields: dict[str, Any] = {}
    exact: dict[str, str] = {}
    prefix: dict[str, str] = {}
    simple_ids: list[tuple[str, str | None]] = []
    groups: list[tuple[Token, ...]] = []
    used: list[tuple[str, str]] = []
    unknown: list[str] = []
    count, cursor, nothing = DEFAULT_COUNT, None, False
    _check_repeats(params)
    for name, raw in params:
        value = raw.strip()
        base, _, modifier = name.partition(":")
        if name in CONTROL_PARAMETERS:
            cursor = _control(name, value) or cursor
            continue
        if not value:
            continue
        if base in STRING_PARAMETERS and modifier in ("", "exact"):
            (exact if modifier else prefix)[base] = _one(name, value)
        elif name == "birthdate":
            fields["birth_date"] = _birthdate(value)
        elif name == "gender":
            fields["sex"] = _gender(value)
        elif name == "identifier":
            tokens = tuple(_token(part) for part in _split(value, ","))
            if len(tokens) == 1 and tokens[0][0] is not None:
                simple_ids.append((str(tokens[0][0]), tokens[0][1]))
            else:
                groups.append(tokens)
        elif name == "_id":
            fields["patient_ids"] = tuple(_ids(value))
        elif name == "active":
            nothing = _active(value)
        elif name == "_count":
            count = _count(value)
            continue
        else:
            unknown.append(name)
            continue
        used.append((name, value))
    if unknown and strict:
        raise InputError(
            "unknown search parameters under Prefer: handling=strict",
            [(n, "parameter not supported") for n in unknown],
        )
    query, exact_names = _queries(fields, exact, prefix, simple_ids)
    if query.empty and not groups and exact_names is None:
        raise InputError(
            "a demographics query needs at least one criterion",
            [(None, "give family, given, birthdate, gender, identifier or _id")],
        )
    return PdqmSearch(
        query=query,
        exact_names=exact_names,
        identifier_groups=tuple(groups),
        domains=_domains(simple_ids, groups),
        count=count,
        cursor=cursor,
        used=tuple(used),
        matches_nothing=nothing,
        systems=_systems(simple_ids, groups),
    )


def search_page(
    session: Session,
    search: PdqmSearch,
    *,
    fhir_base: str,
    site_domains: Collection[str],
) -> SearchPage:
    """Run `search` and render one page as a ``searchset`` Bundle.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        A session on the index.
    search : PdqmSearch
        The parsed search.
    fhir_base : str
        This server's FHIR base URL, for ``fullUrl`` and the links.
    site_domains : collection of str
        The sites' patient identifier domains (OIDs).
    """
    unknown = [s for s in search.systems if not domain_known(session, s, site_domains)]
    if search.matches_nothing:
        total, patients = 0, []
    else:
        stmt = _statement(search)
        counted = select(func.count()).select_from(stmt.order_by(None).subquery())
        total = int(session.scalar(counted) or 0)
        if search.cursor is not None:
            stmt = stmt.where(Patient.id > search.cursor)
        patients = list(session.scalars(stmt.limit(search.count + 1)))
    more = len(patients) > search.count
    patients = patients[: search.count]
    base = fhir_base.rstrip("/")
    links = [_link("self", base, search, search.cursor)]
    if more and patients:
        links.append(_link("next", base, search, patients[-1].id))
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"{base}/Patient/{p.id}",
            "resource": patient_resource(p, search.domains),
            "search": {"mode": "match"},
        }
        for p in patients
    ]
    if unknown:
        entries.append(_unknown_domain_entry())
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
    }
    if entries:
        bundle["entry"] = entries
    logger.info(LOG_ANSWERED, extra={"total": total, "returned": len(patients)})
    return SearchPage(bundle, patients)


def patient_resource(patient: Patient, domains: Collection[str] = ()) -> dict[str, Any]:
    """The Patient resource the server shows for `patient`.

    The resource as last fed, with the identifiers the index holds now (a
    merge adds the absorbed ones) and the name, gender and birth date the
    index kept when the last feed left them out, restricted to `domains` when given. A
    merged patient is ``active: false`` with a ``replaced-by`` link to the
    patient it was merged into (3.78.4.3.3 Case 3).
    """
    resource: dict[str, Any] = dict(patient.resource)
    resource.setdefault("resourceType", "Patient")
    resource.setdefault("id", patient.id)
    # A feed that left a trait out did not erase it: the index kept it.
    if "name" not in resource and (patient.family_name or patient.given_names):
        name: dict[str, Any] = {}
        if patient.family_name:
            name["family"] = patient.family_name
        if patient.given_names:
            name["given"] = patient.given_names.split()
        resource["name"] = [name]
    if "gender" not in resource and patient.sex in SEX_TO_GENDER:
        resource["gender"] = SEX_TO_GENDER[patient.sex]
    if "birthDate" not in resource and patient.birth_date is not None:
        resource["birthDate"] = patient.birth_date.isoformat()
    fed = resource.get("identifier")
    current = {(r.system, r.value) for r in current_identifiers(patient)}
    linked = {system for system, _ in current}
    # The index decides in the domains it links; other identifiers (an INS
    # held without linking) are shown as fed.
    identifiers = [
        i
        for i in (fed if isinstance(fed, list) else [])
        if isinstance(i, dict) and (_key(i)[0] not in linked or _key(i) in current)
    ]
    shown = {_key(i) for i in identifiers}
    identifiers += [
        {"system": authority_to_system(system), "value": value}
        for system, value in sorted(current - shown)
    ]
    if domains:
        identifiers = [i for i in identifiers if _key(i)[0] in domains]
    if identifiers:
        resource["identifier"] = identifiers
    else:
        resource.pop("identifier", None)
    if not patient.active:
        resource["active"] = False
        if patient.merged_into:
            resource["link"] = [
                {
                    "other": {"reference": f"Patient/{patient.merged_into}"},
                    "type": "replaced-by",
                }
            ]
    return resource


def check_format(value: str | None) -> None:
    """Refuse a ``_format`` other than JSON (3.78.4.1.3 Case 5).

    Raises
    ------
    NotAcceptable
        The format is XML or unknown.
    """
    if value is None or not value.strip():
        return
    if value.strip().split(";")[0].strip().lower() not in JSON_FORMATS:
        raise NotAcceptable(
            "only JSON is produced", [("_format", "use json or application/fhir+json")]
        )


def _key(identifier: dict[str, Any]) -> tuple[str, str]:
    system = system_to_authority(str(identifier.get("system") or ""))
    return system, str(identifier.get("value") or "")


def _statement(search: PdqmSearch) -> Select[Patient]:
    stmt = statement(search.query)
    if search.exact_names is not None:
        exact_ids = statement(search.exact_names).with_only_columns(Patient.id)
        stmt = stmt.where(Patient.id.in_(exact_ids.order_by(None)))
    for group in search.identifier_groups:
        held = select(PatientIdentifier.patient_id).where(
            or_(*(_identifier_clause(t) for t in group))
        )
        stmt = stmt.where(Patient.id.in_(held))
    return stmt


def _identifier_clause(token: Token) -> ColumnElement[bool]:
    system, value = token
    clauses = []
    if system is not None:
        clauses.append(PatientIdentifier.system == system)
    if value is not None:
        clauses.append(PatientIdentifier.value == value)
    return and_(*clauses)


def _queries(
    fields: dict[str, Any],
    exact: dict[str, str],
    prefix: dict[str, str],
    simple_ids: list[tuple[str, str | None]],
) -> tuple[PatientQuery, PatientQuery | None]:
    """The shared query, plus an exact-name query when both modes are mixed."""
    query = PatientQuery(identifiers=tuple(simple_ids), exact=False, **fields)
    if not exact:
        return _names(query, prefix), None
    if not prefix:
        return _names(replace(query, exact=True, verbatim=True), exact), None
    verbatim = PatientQuery(exact=True, verbatim=True)
    return _names(query, prefix), _names(verbatim, exact)


def _names(query: PatientQuery, names: dict[str, str]) -> PatientQuery:
    return replace(query, family=names.get("family"), given=names.get("given"))


def _check_repeats(params: Sequence[tuple[str, str]]) -> None:
    seen: set[str] = set()
    for name, value in params:
        key = name.partition(":")[0]
        if key in SINGLE_PARAMETERS and value.strip():
            if key in seen:
                raise InputError(
                    f"{key} may be given once",
                    [(key, "repeated parameters (AND) are not supported")],
                )
            seen.add(key)


def _control(name: str, value: str) -> str | None:
    if name == "_format":
        check_format(value)
        return None
    if not _ID.match(value):
        raise InputError("invalid paging cursor", [(CURSOR, "not a resource id")])
    return value


def _one(name: str, value: str) -> str:
    parts = _split(value, ",")
    if len(parts) != 1:
        raise InputError(
            f"{name} takes one value", [(name, "alternatives (OR) are not supported")]
        )
    return parts[0]


def _birthdate(value: str) -> date:
    text = _one("birthdate", value)
    found = _PREFIX.match(text)
    if found:
        if found.group(1) != "eq":
            raise InputError(
                "only equality is supported on birthdate",
                [("birthdate", f"prefix {found.group(1)} not supported; use eq")],
            )
        text = found.group(2)
    if not _DATE.match(text):
        raise InputError(
            "birthdate must be a full date", [("birthdate", "expected YYYY-MM-DD")]
        )
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise InputError(
            "birthdate is not a date", [("birthdate", "not a calendar date")]
        ) from exc


def _gender(value: str) -> str:
    sex = GENDER_TO_SEX.get(_one("gender", value))
    if sex is None:
        raise InputError(
            "gender is male, female, other or unknown",
            [("gender", "not an administrative gender code")],
        )
    return sex


def _active(value: str) -> bool:
    if value not in ("true", "false"):
        raise InputError("active is true or false", [("active", "not a boolean")])
    return value == "false"


def _count(value: str) -> int:
    if not value.isdigit():
        raise InputError(
            "_count must be a whole number", [("_count", "expected 0 or more")]
        )
    return min(int(value), MAX_COUNT)


def _ids(value: str) -> list[str]:
    ids = _split(value, ",")
    if not all(_ID.match(i) for i in ids):
        raise InputError("_id must be resource ids", [("_id", "not a resource id")])
    return ids


def _token(text: str) -> Token:
    """``system|value``, ``system|``, ``|value`` or ``value`` as (system, value)."""
    parts = _split(text, "|")
    if len(parts) == 1:
        return None, parts[0] or None
    if len(parts) != 2 or not (parts[0] or parts[1]):
        raise InputError(
            "identifier must be system|value",
            [("identifier", "expected system|value, system| or value")],
        )
    # "|value" asks for an identifier without a system (FHIR token search):
    # the index holds none, so the empty system matches nothing.
    system = system_to_authority(parts[0]) if parts[0] else NO_SYSTEM
    return system, parts[1] or None


def _split(text: str, sep: str) -> list[str]:
    """Split on `sep` unless escaped by a backslash (FHIR search escaping)."""
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _domains(
    simple_ids: list[tuple[str, str | None]], groups: list[tuple[Token, ...]]
) -> tuple[str, ...]:
    tokens = [*simple_ids, *(t for g in groups for t in g)]
    return tuple(dict.fromkeys(s for s, v in tokens if s is not None and v is None))


def _systems(
    simple_ids: list[tuple[str, str | None]], groups: list[tuple[Token, ...]]
) -> tuple[str, ...]:
    tokens = [*simple_ids, *(t for g in groups for t in g)]
    return tuple(dict.fromkeys(s for s, _ in tokens if s))


def _link(relation: str, base: str, search: PdqmSearch, cursor: str | None) -> Any:
    params = [*search.used, ("_count", str(search.count))]
    if cursor is not None:
        params.append((CURSOR, cursor))
    return {"relation": relation, "url": f"{base}/Patient?{urlencode(params)}"}


def _unknown_domain_entry() -> dict[str, Any]:
    """3.78.4.1.3 Case 4, answered 200: the warning rides in the Bundle."""
    issue = {
        "severity": "warning",
        "code": "not-found",
        "diagnostics": TARGET_SYSTEM_NOT_FOUND,
        "expression": ["identifier"],
    }
    return {
        "resource": {"resourceType": "OperationOutcome", "issue": [issue]},
        "search": {"mode": "outcome"},
    }
