"""HL7 v2 PID and MRG segments to the patient index's records.

PID fields read (HL7 v2.5 section 3.4.2, IHE PAM national extension for
France):

=========  ===================================================================
PID-3      every non-empty repetition: CX-1 id, CX-4 authority, CX-5 type
PID-5      names: type ``D`` (nom d'usage) is the used name, else ``L``; the
           first ``L`` (birth name in PAM France), ``B`` or ``M`` repetition
           gives the birth family name; XPN-2 and XPN-3 the given names
PID-7      birth date (DTM, day precision or better)
PID-8      administrative sex, table 0001 (``A`` read as ``O``, ``N`` as
           ``U``)
PID-30     patient death indicator, table 0136: checked (``Y``, ``N`` or
           empty), not kept
PID-32     identity reliability codes (French RNIV): one status among
           ``PROV``, ``RECUP``, ``VALI``, ``QUAL`` and any attributes
MRG-1      the prior (absorbed) identifiers of a merge or identifier change
=========  ===================================================================

A family name (XPN-1) or given names (XPN-2 and XPN-3 together) of more than
100 characters are refused (ERR-3 102 at the component) rather than cut: the
index keeps each name, and its folded form, in 200 characters.

Limitations
-----------
Addresses, telecoms, mother's maiden name and PD1 are not read. A PID-32
code outside the French table is refused (ERR-3 103) rather than stored. A
PID-30 value other than ``Y`` or ``N`` is refused the same way (ERR-3 103 at
``PID^1^30``): an identity status sent there by mistake would otherwise be
lost, and the INS it qualifies left unlinked. The death indicator and date
(PID-29) are not kept: a deceased patient is indexed like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ihe.hl7v2.codes import ErrorCode
from ihe.hl7v2.er7 import Message, Repetition, Segment, component
from mappings.fhir_patient import (
    IDENTITY_ATTRIBUTES,
    IDENTITY_STATUS,
    SEX_TO_GENDER,
    PatientRecord,
)
from mappings.hl7_types import Cx, check_length, parse_cx, parse_date
from mappings.identifiers import authority_to_system
from server.errors import MessageError

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
# HL7 table 0136 (yes/no indicator), the values of PID-30.
YES_NO = frozenset({"Y", "N"})
# HL7 table 0001 → the patient index's sex codes.
SEX = {"F": "F", "M": "M", "O": "O", "U": "U", "A": "O", "N": "U"}
USED_NAME = "D"
BIRTH_NAME_TYPES = ("L", "B", "M")
# PID-5.7 name type → FHIR HumanName.use, as FR Core reads PAM France.
NAME_USE = {"D": "usual", "L": "official", "B": "maiden", "M": "maiden"}
# Widest family name, and given names together; folding may double them (Œ→OE).
MAX_NAME = 100


@dataclass(frozen=True)
class Xpn:
    """One PID-5 repetition."""

    family: str
    given: str
    further_given: str
    prefix: str
    type_code: str


@dataclass(frozen=True)
class PidPatient:
    """A PID segment mapped: the record for the index and what it came from.

    ``name_repetitions`` holds the PID-5 repetition number of each of
    ``names`` (empty repetitions are skipped), for error locations.
    """

    record: PatientRecord
    cxs: tuple[Cx, ...]
    names: tuple[Xpn, ...]
    name_repetitions: tuple[int, ...] = ()


def read_pid(msg: Message) -> PidPatient:
    """Map the message's first PID segment.

    Raises
    ------
    MessageError
        No PID (ERR-3 100), no identifier (101), or a field that breaks its
        data type or table (102, 103, 204); ERR-2 names the field.
    """
    pid = _segment(msg, "PID")
    cxs = patient_cxs(pid, 3)
    if not cxs:
        raise MessageError(
            "PID-3 holds no patient identifier",
            ErrorCode.REQUIRED_FIELD_MISSING,
            ("PID", 1, 3),
        )
    numbered = [
        (index, _xpn(rep, index))
        for index, rep in enumerate(pid.field(5), start=1)
        if any(any(c) for c in rep)
    ]
    names = tuple(xpn for _, xpn in numbered)
    used = _first(names, (USED_NAME, *BIRTH_NAME_TYPES)) or (
        names[0] if names else None
    )
    birth = _first(names, BIRTH_NAME_TYPES)
    _check_death_indicator(pid.value(30))
    status, attributes = _reliability(pid)
    record = PatientRecord(
        identifiers=tuple(cx.identifier() for cx in cxs),
        family=(used.family or None) if used else None,
        given=_given(used),
        birth_family=(birth.family or None) if birth else None,
        birth_date=parse_date(pid.value(7), ("PID", 1, 7)),
        sex=_sex(pid.value(8)),
        identity_status=status,
        identity_attributes=attributes,
        birth_place=_birth_place(pid),
    )
    return PidPatient(record, cxs, names, tuple(index for index, _ in numbered))


def patient_cxs(seg: Segment, field: int) -> tuple[Cx, ...]:
    """The identifiers of a CX field (PID-3, MRG-1), empty repetitions skipped.

    Raises
    ------
    MessageError
        A repetition without assigning authority (ERR-3 204).
    """
    found = []
    for index, rep in enumerate(seg.field(field), start=1):
        cx = parse_cx(rep, (seg.name, 1, field, index))
        if cx is not None:
            found.append(cx)
    return tuple(found)


def prior_cxs(msg: Message) -> tuple[Cx, ...]:
    """MRG-1, the prior identifiers of a merge or identifier change.

    Raises
    ------
    MessageError
        No MRG segment (ERR-3 100) or an empty MRG-1 (101).
    """
    mrg = _segment(msg, "MRG")
    cxs = patient_cxs(mrg, 1)
    if not cxs:
        raise MessageError(
            "MRG-1 holds no prior identifier",
            ErrorCode.REQUIRED_FIELD_MISSING,
            ("MRG", 1, 1),
        )
    return cxs


def patient_resource(pid: PidPatient) -> dict[str, Any]:
    """The FHIR R4 Patient the index keeps for read-back of an HL7 feed."""
    record = pid.record
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [
            {
                "system": authority_to_system(ident.system),
                "value": ident.value,
                **_identifier_type(ident.type_code),
            }
            for ident in record.identifiers
        ],
        "active": True,
    }
    names = []
    for xpn in pid.names:
        name: dict[str, Any] = {"use": NAME_USE.get(xpn.type_code, "official")}
        if xpn.family:
            name["family"] = xpn.family
        given = [g for g in (xpn.given, *xpn.further_given.split()) if g]
        if given:
            name["given"] = given
        names.append(name)
    if names:
        resource["name"] = names
    if record.birth_date is not None:
        resource["birthDate"] = record.birth_date.isoformat()
    if record.sex is not None:
        resource["gender"] = SEX_TO_GENDER[record.sex]
    return resource


def _identifier_type(code: str | None) -> dict[str, Any]:
    if not code:
        return {}
    return {"type": {"coding": [{"system": V2_0203, "code": code}]}}


def _segment(msg: Message, name: str) -> Segment:
    seg = msg.segment(name)
    if seg is None:
        raise MessageError(
            f"the message has no {name} segment",
            ErrorCode.SEGMENT_SEQUENCE_ERROR,
            (name,),
        )
    return seg


def _given(name: Xpn | None) -> tuple[str, ...]:
    if name is None:
        return ()
    return tuple(g for g in (name.given, name.further_given) if g)


def _xpn(rep: Repetition, index: int) -> Xpn:
    xpn = Xpn(
        family=component(rep, 1, 1).strip(),
        given=component(rep, 2).strip(),
        further_given=component(rep, 3).strip(),
        prefix=component(rep, 5).strip(),
        type_code=component(rep, 7).strip().upper(),
    )
    check_length(xpn.family, MAX_NAME, ("PID", 1, 5, index, 1))
    check_length(xpn.given, MAX_NAME, ("PID", 1, 5, index, 2))
    given = " ".join(g for g in (xpn.given, xpn.further_given) if g)
    check_length(given, MAX_NAME, ("PID", 1, 5, index, 3))
    return xpn


def _first(names: tuple[Xpn, ...], types: tuple[str, ...]) -> Xpn | None:
    for wanted in types:
        for name in names:
            if name.type_code == wanted:
                return name
    return None


def _sex(value: str) -> str | None:
    code = value.strip().upper()
    if not code:
        return None
    if code not in SEX:
        raise MessageError(
            f"administrative sex {code!r} is not in HL7 table 0001",
            ErrorCode.TABLE_VALUE_NOT_FOUND,
            ("PID", 1, 8),
        )
    return SEX[code]


def _check_death_indicator(value: str) -> None:
    """Refuse a PID-30 outside table 0136; HL7's explicit null ``""`` is empty."""
    code = value.strip().upper()
    if code in ("", '""') or code in YES_NO:
        return
    hint = (
        ": identity reliability codes belong in PID-32"
        if code in IDENTITY_STATUS or code in IDENTITY_ATTRIBUTES
        else ""
    )
    raise MessageError(
        f"patient death indicator (PID-30) is not Y or N (HL7 table 0136){hint}",
        ErrorCode.TABLE_VALUE_NOT_FOUND,
        ("PID", 1, 30),
    )


def _reliability(pid: Segment) -> tuple[str | None, tuple[str, ...] | None]:
    """PID-32: (status, attributes); (None, None) when the field is absent."""
    reps = pid.repetitions(32)
    if not reps:
        return None, None
    status: str | None = None
    attributes: list[str] = []
    for index, rep in enumerate(reps, start=1):
        code = component(rep, 1).strip().upper()
        where = ("PID", 1, 32, index)
        if code in IDENTITY_STATUS:
            if status is not None and status != code:
                raise MessageError(
                    "PID-32 holds two identity statuses",
                    ErrorCode.TABLE_VALUE_NOT_FOUND,
                    where,
                )
            status = code
        elif code in IDENTITY_ATTRIBUTES:
            if code not in attributes:
                attributes.append(code)
        else:
            raise MessageError(
                f"identity reliability code {code!r} (PID-32) is unknown",
                ErrorCode.TABLE_VALUE_NOT_FOUND,
                where,
            )
    return status, tuple(attributes)


def _birth_place(pid: Segment) -> str | None:
    """The INSEE code of the PID-11 address of type BDL, else PID-23 as text."""
    for rep in pid.repetitions(11):
        if component(rep, 7).strip().upper() == "BDL":
            code = component(rep, 9).strip()
            if code:
                return code[:128]
    text = pid.value(23).strip()
    return text[:128] or None
