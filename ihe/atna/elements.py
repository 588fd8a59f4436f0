"""Building blocks of the DICOM audit message (PS3.15 A.5.1).

The message builders (:mod:`ihe.atna.messages`,
:mod:`ihe.atna.security_messages`) assemble an ``AuditMessage`` from these
pieces: the ``EventIdentification``, one ``ActiveParticipant`` per
participant, the ``AuditSourceIdentification`` and the
``ParticipantObjectIdentification`` elements, in the order the A.5.1 schema
sequences them. A coded value is always written with its three attributes
``csd-code``, ``codeSystemName`` and ``originalText``.

Every participant object carries a ``ParticipantObjectName`` or a
``ParticipantObjectQuery``: the schema requires one of the two even where the
A.5.3 tables call both optional, so an object without a name is named by its
identifier.

Limitations
-----------
``EventOutcomeDescription``, media participants (``MediaIdentifier``), data
life cycle, sensitivity, MPPS references, per-instance UIDs and the
``Encrypted``/``Anonymized`` flags are never written. Text that XML cannot
carry (control characters other than tab and line breaks) makes lxml raise
``ValueError``. Nothing here validates against the schema at run time; the
test suite does.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lxml import etree

from ihe.atna.codes import (
    AuditSourceTypeCode,
    Code,
    CodedEnum,
    EventActionCode,
    EventID,
    EventOutcomeIndicator,
    NetworkAccessPointTypeCode,
    ParticipantObjectIDTypeCode,
    ParticipantObjectTypeCode,
    ParticipantObjectTypeCodeRole,
    RoleIDCode,
)

logger = logging.getLogger(__name__)

XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'


@dataclass(frozen=True, slots=True)
class Participant:
    """One ``ActiveParticipant`` of an audited event.

    Parameters
    ----------
    user_id : str
        ``UserID``: process id, endpoint URI or ``MSH-3|MSH-4`` as PS3.15
        A.5.2.1 and the IHE transaction ask.
    alternative_user_id : str, optional
        ``AlternativeUserID``; for DICOM peers ``AETITLES=AE1;AE2`` (A.5.2.2).
    user_name : str, optional
        ``UserName``, a human-readable name.
    is_requestor : bool
        ``UserIsRequestor``: whether this participant started the event.
    role : Code or CodedEnum, optional
        A ``RoleIDCode``. Builders add the role the event gives the
        participant (source, destination, application); this one is written
        after it when it differs.
    network_access_point : str, optional
        Host name or IP address of the participant; the type code (1 for a
        machine name, 2 for an IP address) is derived from it.
    """

    user_id: str
    alternative_user_id: str | None = None
    user_name: str | None = None
    is_requestor: bool = False
    role: Code | CodedEnum | None = None
    network_access_point: str | None = None


@dataclass(frozen=True, slots=True)
class AuditSource:
    """The ``AuditSourceIdentification``: who reports the event.

    Parameters
    ----------
    source_id : str
        ``AuditSourceID``, the reporting system.
    enterprise_site_id : str, optional
        ``AuditEnterpriseSiteID``, the site or organisation running it.
    """

    source_id: str
    enterprise_site_id: str | None = None


def audit_message(
    event_id: EventID,
    action: EventActionCode,
    outcome: int,
    when: datetime | None,
    event_type: Code | CodedEnum | None,
) -> Any:
    """Start an ``AuditMessage`` with its ``EventIdentification``.

    Parameters
    ----------
    event_id : EventID
        The event (CID 400).
    action : EventActionCode
        What the event did to its objects.
    outcome : int
        An :class:`~ihe.atna.codes.EventOutcomeIndicator` value.
    when : datetime or None
        Timezone-aware time of the event; now, in UTC, when None.
    event_type : Code or CodedEnum or None
        The ``EventTypeCode`` (CID 401 or an IHE transaction), if any.

    Returns
    -------
    lxml.etree._Element
        The root element, ready for the participants.

    Raises
    ------
    ValueError
        If ``outcome`` is not 0, 4, 8 or 12, or ``when`` is naive.
    """
    root = etree.Element("AuditMessage")
    event = _sub(
        root,
        "EventIdentification",
        EventActionCode=action.value,
        EventDateTime=_event_time(when),
        EventOutcomeIndicator=str(int(EventOutcomeIndicator(outcome))),
    )
    coded(event, "EventID", event_id)
    if event_type is not None:
        coded(event, "EventTypeCode", event_type)

    return root


def active_participant(
    root: Any, participant: Participant, role: RoleIDCode | None
) -> None:
    """Append one ``ActiveParticipant``, with the role the event gives it.

    Parameters
    ----------
    root : lxml.etree._Element
        The ``AuditMessage``.
    participant : Participant
        Who took part.
    role : RoleIDCode or None
        The role the event gives this participant, written before the
        participant's own ``role``; None when the event names no role.
    """
    attrib = {
        "UserID": participant.user_id,
        "UserIsRequestor": "true" if participant.is_requestor else "false",
    }
    if participant.alternative_user_id is not None:
        attrib["AlternativeUserID"] = participant.alternative_user_id
    if participant.user_name is not None:
        attrib["UserName"] = participant.user_name
    if participant.network_access_point is not None:
        host = participant.network_access_point
        attrib["NetworkAccessPointID"] = host
        attrib["NetworkAccessPointTypeCode"] = str(int(_access_point_type(host)))
    element = _sub(root, "ActiveParticipant", attrib)

    roles = [] if role is None else [role.code]
    if participant.role is not None:
        roles.append(as_code(participant.role))
    for code in dict.fromkeys(roles):
        coded(element, "RoleIDCode", code)


def audit_source(root: Any, source: AuditSource) -> None:
    """Append the ``AuditSourceIdentification`` (an application server)."""
    attrib = {"AuditSourceID": source.source_id}
    if source.enterprise_site_id is not None:
        attrib["AuditEnterpriseSiteID"] = source.enterprise_site_id
    element = _sub(root, "AuditSourceIdentification", attrib)
    coded(element, "AuditSourceTypeCode", AuditSourceTypeCode.APPLICATION_SERVER)


def participant_object(
    root: Any,
    *,
    object_id: str,
    type_code: ParticipantObjectTypeCode,
    role: ParticipantObjectTypeCodeRole,
    id_type: Code | CodedEnum,
    name: str | None = None,
    query: bytes | None = None,
    details: Iterable[tuple[str, bytes]] = (),
) -> Any:
    """Append one ``ParticipantObjectIdentification``.

    Parameters
    ----------
    root : lxml.etree._Element
        The ``AuditMessage``.
    object_id : str
        ``ParticipantObjectID``.
    type_code : ParticipantObjectTypeCode
        Person, system object, organisation or other.
    role : ParticipantObjectTypeCodeRole
        The object's role in the event.
    id_type : Code or CodedEnum
        ``ParticipantObjectIDTypeCode``: what kind of identifier
        ``object_id`` is.
    name : str, optional
        ``ParticipantObjectName``; ``object_id`` stands in for it when
        neither a name nor a query is given.
    query : bytes, optional
        The query as sent, written base64-encoded as
        ``ParticipantObjectQuery`` instead of a name.
    details : iterable of (str, bytes)
        ``ParticipantObjectDetail`` type and value pairs; values are written
        base64-encoded.

    Returns
    -------
    lxml.etree._Element
        The new element, for a description to be added.
    """
    element = _sub(
        root,
        "ParticipantObjectIdentification",
        ParticipantObjectID=object_id,
        ParticipantObjectTypeCode=str(int(type_code)),
        ParticipantObjectTypeCodeRole=str(int(role)),
    )
    coded(element, "ParticipantObjectIDTypeCode", id_type)

    # The schema wants exactly one of name and query, right after the type.
    if query is not None:
        _sub(element, "ParticipantObjectQuery").text = _clean(_b64(query))
    else:
        _sub(element, "ParticipantObjectName").text = _clean(name or object_id)
    for detail_type, value in details:
        _sub(element, "ParticipantObjectDetail", type=detail_type, value=_b64(value))

    return element


def patient_object(
    root: Any,
    patient_id: str,
    patient_name: str | None,
    details: Iterable[tuple[str, bytes]] = (),
) -> None:
    """Append the patient (person, role patient, ID type "Patient Number").

    Raises
    ------
    ValueError
        If ``patient_id`` is empty.
    """
    if not patient_id:
        raise ValueError("a patient object needs a non-empty patient_id")
    participant_object(
        root,
        object_id=patient_id,
        type_code=ParticipantObjectTypeCode.PERSON,
        role=ParticipantObjectTypeCodeRole.PATIENT,
        id_type=ParticipantObjectIDTypeCode.PATIENT_NUMBER,
        name=patient_name or patient_id,
        details=details,
    )


def study_object(
    root: Any,
    study_uid: str,
    sop_classes: Mapping[str, int],
    accession_numbers: Sequence[str] = (),
) -> None:
    """Append a study (system object, role report, ID type 110180).

    The description lists the accession numbers, then each SOP class with its
    number of instances, the order the schema asks for.

    Raises
    ------
    ValueError
        If an instance count is negative.
    """
    study = participant_object(
        root,
        object_id=study_uid,
        type_code=ParticipantObjectTypeCode.SYSTEM_OBJECT,
        role=ParticipantObjectTypeCodeRole.REPORT,
        id_type=ParticipantObjectIDTypeCode.STUDY_INSTANCE_UID,
        name=study_uid,
    )
    accessions = [number for number in accession_numbers if number]
    if not sop_classes and not accessions:
        return
    description = _sub(study, "ParticipantObjectDescription")
    for number in dict.fromkeys(accessions):
        _sub(description, "Accession", Number=number)
    for uid, count in sop_classes.items():
        if count < 0:
            raise ValueError(f"negative instance count for SOP class {uid}")
        _sub(description, "SOPClass", UID=uid, NumberOfInstances=str(int(count)))


def coded(parent: Any, tag: str, value: Code | CodedEnum) -> None:
    """Append a coded value element ``tag`` with its three attributes."""
    code = as_code(value)
    _sub(
        parent,
        tag,
        {
            "csd-code": code.csd_code,
            "codeSystemName": code.code_system_name,
            "originalText": code.original_text,
        },
    )


def as_code(value: Code | CodedEnum) -> Code:
    """The :class:`~ihe.atna.codes.Code` of an enumeration member or a code."""
    return value.code if isinstance(value, CodedEnum) else value


def event_action(action: str, allowed: frozenset[str]) -> EventActionCode:
    """Check an ``EventActionCode`` against those the event allows.

    Raises
    ------
    ValueError
        If ``action`` is not in ``allowed``.
    """
    if action not in allowed:
        raise ValueError(
            f"EventActionCode {action!r} not allowed here; use one of "
            + ", ".join(sorted(allowed))
        )

    return EventActionCode(action)


def serialize(root: Any) -> bytes:
    """The message as UTF-8 bytes, with an XML declaration and no BOM."""
    body: bytes = etree.tostring(root, encoding="UTF-8", xml_declaration=False)
    logger.debug(
        "audit message built",
        extra={"event_id": root[0][0].get("csd-code"), "size": len(body)},
    )

    return XML_DECLARATION + body


def _event_time(when: datetime | None) -> str:
    moment = datetime.now(UTC) if when is None else when
    if moment.utcoffset() is None:
        raise ValueError("EventDateTime needs a timezone-aware datetime")

    return moment.isoformat(timespec="milliseconds")


def _access_point_type(host: str) -> NetworkAccessPointTypeCode:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return NetworkAccessPointTypeCode.MACHINE_NAME

    return NetworkAccessPointTypeCode.IP_ADDRESS


# Characters XML 1.0 cannot carry (C0 controls other than tab, LF and CR; lone
# surrogates; U+FFFE and U+FFFF). Values come from peers: never let one of them
# make an audit message impossible to write.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _clean(value: str) -> str:
    """`value` without the characters XML cannot hold (each becomes U+FFFD)."""
    return _NOT_XML.sub("\ufffd", value)


def _sub(
    parent: Any, tag: str, attrib: Mapping[str, str] | None = None, **extra: str
) -> Any:
    """An lxml sub-element whose attribute values are XML-safe."""
    values = {**(attrib or {}), **extra}
    return etree.SubElement(parent, tag, {k: _clean(v) for k, v in values.items()})


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")
