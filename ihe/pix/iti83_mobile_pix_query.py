"""ITI-83 Mobile Patient Identifier Cross-reference Query (PIXm), Manager side.

IHE PIXm, ITI TF-2 3.83: ``GET [base]/Patient/$ihe-pix?sourceIdentifier=
system|value{&targetSystem=uri}`` answers the identifiers the patient index
holds for the person behind one identifier, as a ``Parameters`` resource:

* one ``targetIdentifier`` (``valueIdentifier``) per domain in which the
  patient has an identifier, other than the identifier asked about;
* one ``targetId`` (``valueReference`` ``Patient/{id}``) for the patient's
  resource on this server.

``targetSystem`` (repeatable) keeps only the domains named. The server's
own FHIR base URL is the domain of its Patient logical ids: ``targetId`` is
returned when no ``targetSystem`` is given or when one of them is that base,
and ``sourceIdentifier=<base>|Patient/<id>`` asks by logical id.

A domain is recognised when an identifier of the index is in it, when a site
of the sites file declares it as its ``patient_id_domain``, or when it is an
INS authority. The failures of 3.83.4.2.2 map to the error tree:
an unrecognised source domain is :class:`~server.errors.UnknownDomain` (400,
``code-invalid``), an unrecognised target domain
:class:`~server.errors.UnknownTargetDomain` (403, ``code-invalid``), an
identifier unknown in a recognised domain :class:`~server.errors.NotFound`
(404, ``not-found``). A patient known but without an identifier in the target
domains gets 200 and a ``Parameters`` resource without any parameter.

After a merge the absorbed identifiers resolve to the survivor; in a domain
where the survivor holds its own identifier and one taken over in the merge,
only its own is returned (the other is retired at the sending site).

Limitations
-----------
The answer is JSON only. Identifiers held on a patient without linking (an
INS of a provisional identity) are not cross-referenced; no access policy
restricts which domains a caller may see beyond the role the route requires.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ihe.pix import patient_index
from mappings.identifiers import (
    INS_OIDS,
    Identifier,
    authority_to_system,
    system_to_authority,
)
from server.errors import InputError, NotFound, UnknownDomain, UnknownTargetDomain
from server.models import Patient, PatientIdentifier

logger = logging.getLogger(__name__)

OPERATION = "$ihe-pix"
SOURCE_IDENTIFIER = "sourceIdentifier"
TARGET_SYSTEM = "targetSystem"
TARGET_IDENTIFIER = "targetIdentifier"
TARGET_ID = "targetId"
# ITI TF-2 3.83.4.2.2.2 to 3.83.4.2.2.4: the diagnostics the standard fixes.
SOURCE_NOT_FOUND = "sourceIdentifier Patient Identifier not found"
SOURCE_DOMAIN_NOT_FOUND = "sourceIdentifier Assigning Authority not found"
TARGET_DOMAIN_NOT_FOUND = "targetSystem not found"
LOG_ANSWERED = "PIXm query answered"
# A merge chain longer than this is a loop in the data, not a real history.
MAX_MERGE_HOPS = 16


@dataclass(frozen=True)
class PixQuery:
    """An ITI-83 query as parsed.

    Attributes
    ----------
    system : str
        The source identifier's domain: an OID without ``urn:oid:``, a URI,
        or the server's FHIR base when `by_resource_id` is true.
    value : str
        The source identifier (a logical id when `by_resource_id`).
    target_systems : tuple of str
        Domains to answer in, as assigning authorities; empty for all.
    resource_domain : str
        This server's FHIR base URL, the domain of its Patient logical ids.
    by_resource_id : bool
        True when the source is a Patient logical id of this server.
    """

    system: str
    value: str
    target_systems: tuple[str, ...] = ()
    resource_domain: str = ""
    by_resource_id: bool = False


@dataclass(frozen=True)
class PixAnswer:
    """The ``Parameters`` resource to return and the patient it describes."""

    parameters: dict[str, Any]
    patient: Patient


def parse_query(params: Sequence[tuple[str, str]], fhir_base: str) -> PixQuery:
    """Parse the operation's input parameters (query string or form pairs).

    Parameters
    ----------
    params : sequence of (str, str)
        The parameters as received, in order, repeated names kept.
    fhir_base : str
        This server's FHIR base URL, the domain of Patient logical ids.

    Raises
    ------
    InputError
        ``sourceIdentifier`` is missing, repeated, or not ``system|value``
        with both parts; a ``targetSystem`` is empty.
    """
    sources = [v for k, v in params if k == SOURCE_IDENTIFIER]
    if len(sources) != 1:
        raise InputError(
            "exactly one sourceIdentifier is required",
            [(SOURCE_IDENTIFIER, f"{len(sources)} given, 1 required")],
        )
    system, bar, value = sources[0].partition("|")
    system, value = system.strip(), value.strip()
    if not bar or not system or not value:
        raise InputError(
            "sourceIdentifier must be system|value",
            [(SOURCE_IDENTIFIER, "expected a token system|value, both given")],
        )
    targets = []
    for raw in (v for k, v in params if k == TARGET_SYSTEM):
        if not raw.strip():
            raise InputError(
                "targetSystem must not be empty", [(TARGET_SYSTEM, "empty value")]
            )
        targets.append(_authority(raw, fhir_base))
    base = _base(fhir_base)
    if _base(system) == base:
        return PixQuery(
            base,
            value.removeprefix("Patient/"),
            tuple(targets),
            resource_domain=base,
            by_resource_id=True,
        )
    return PixQuery(
        system_to_authority(system), value, tuple(targets), resource_domain=base
    )


def parameters_to_pairs(body: dict[str, Any]) -> list[tuple[str, str]]:
    """The input pairs of a POSTed ``Parameters`` resource.

    ``sourceIdentifier`` may be a ``valueIdentifier`` or a token string;
    ``targetSystem`` a ``valueUri`` (or ``valueString``).

    Raises
    ------
    InputError
        The body is not a Parameters resource or a value has the wrong type.
    """
    if body.get("resourceType") != "Parameters":
        raise InputError(
            "the body must be a Parameters resource",
            [("resourceType", "expected Parameters")],
        )
    pairs = []
    for item in body.get("parameter") or []:
        name = item.get("name") if isinstance(item, dict) else None
        if name == SOURCE_IDENTIFIER:
            pairs.append((name, _token_value(item)))
        elif name == TARGET_SYSTEM:
            uri = item.get("valueUri", item.get("valueString"))
            if not isinstance(uri, str):
                raise InputError(
                    "targetSystem must be a valueUri",
                    [("Parameters.parameter.value", "expected valueUri")],
                )
            pairs.append((name, uri))
    return pairs


def cross_reference(
    session: Session, query: PixQuery, site_domains: Collection[str]
) -> PixAnswer:
    """Answer `query` from the patient index (ITI TF-2 3.83.4.1.3).

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        A session on the index.
    query : PixQuery
        The parsed query.
    site_domains : collection of str
        The sites' patient identifier domains (OIDs), recognised even before
        the index holds an identifier in them.

    Raises
    ------
    UnknownDomain
        The source domain is not recognised (400).
    UnknownTargetDomain
        A target domain is not recognised (403).
    NotFound
        The source identifier is unknown in its recognised domain (404).
    """
    if not query.by_resource_id and not domain_known(
        session, query.system, site_domains
    ):
        raise UnknownDomain(
            SOURCE_DOMAIN_NOT_FOUND, [(SOURCE_IDENTIFIER, SOURCE_DOMAIN_NOT_FOUND)]
        )
    for target in query.target_systems:
        if target != query.resource_domain and not domain_known(
            session, target, site_domains
        ):
            raise UnknownTargetDomain(
                TARGET_DOMAIN_NOT_FOUND, [(TARGET_SYSTEM, TARGET_DOMAIN_NOT_FOUND)]
            )
    patient = _source_patient(session, query)
    if patient is None:
        raise NotFound(SOURCE_NOT_FOUND)
    parameters = _parameters(patient, query)
    logger.info(
        LOG_ANSWERED,
        extra={"patient": patient.id, "returned": len(parameters.get("parameter", []))},
    )
    return PixAnswer(parameters, patient)


def domain_known(
    session: Session, authority: str, site_domains: Collection[str]
) -> bool:
    """True when `authority` is a patient identifier domain SPIDERS recognises."""
    if authority in site_domains or authority in INS_OIDS:
        return True
    held = session.scalar(
        select(PatientIdentifier.id)
        .where(PatientIdentifier.system == authority)
        .limit(1)
    )
    return held is not None


def current_identifiers(patient: Patient) -> list[PatientIdentifier]:
    """One identifier per domain: the patient's own before one merged in."""
    chosen: dict[str, PatientIdentifier] = {}
    for row in patient.identifiers:
        held = chosen.get(row.system)
        if held is None or (held.merged_from is not None and row.merged_from is None):
            chosen[row.system] = row
    return list(chosen.values())


def _parameters(patient: Patient, query: PixQuery) -> dict[str, Any]:
    targets = set(query.target_systems)
    parameter: list[dict[str, Any]] = []
    for row in current_identifiers(patient):
        if targets and row.system not in targets:
            continue
        if not query.by_resource_id and (row.system, row.value) == (
            query.system,
            query.value,
        ):
            continue
        parameter.append(
            {
                "name": TARGET_IDENTIFIER,
                "valueIdentifier": {
                    "system": authority_to_system(row.system),
                    "value": row.value,
                },
            }
        )
    wants_id = not targets or query.resource_domain in targets
    if wants_id and not (query.by_resource_id and query.value == patient.id):
        parameter.append(
            {
                "name": TARGET_ID,
                "valueReference": {"reference": f"Patient/{patient.id}"},
            }
        )
    body: dict[str, Any] = {"resourceType": "Parameters"}
    if parameter:
        body["parameter"] = parameter
    return body


def _source_patient(session: Session, query: PixQuery) -> Patient | None:
    if query.by_resource_id:
        patient = session.get(Patient, query.value)
    else:
        patient = patient_index.find_patient(
            session, Identifier(query.system, query.value)
        )
    return _survivor(session, patient)


def _survivor(session: Session, patient: Patient | None) -> Patient | None:
    """The patient a merged (inactive) patient now lives on as."""
    for _ in range(MAX_MERGE_HOPS):
        if patient is None or patient.active or patient.merged_into is None:
            return patient
        patient = session.get(Patient, patient.merged_into)
    return None


def _token_value(item: dict[str, Any]) -> str:
    ident = item.get("valueIdentifier")
    if isinstance(ident, dict):
        return f"{ident.get('system') or ''}|{ident.get('value') or ''}"
    text = item.get("valueString", item.get("valueToken"))
    if isinstance(text, str):
        return text
    raise InputError(
        "sourceIdentifier must be a valueIdentifier",
        [("Parameters.parameter.value", "expected valueIdentifier")],
    )


def _authority(raw: str, fhir_base: str) -> str:
    base = _base(fhir_base)
    return base if _base(raw) == base else system_to_authority(raw)


def _base(url: str) -> str:
    return url.strip().rstrip("/")
