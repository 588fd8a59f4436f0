"""DICOM audit messages (PS3.15 A.5) for the events SPIDERS takes part in.

Each builder returns one ``AuditMessage`` document as UTF-8 bytes, with an XML
declaration and without a byte order mark, ready for the audit outbox
(:func:`ihe.atna.outbox.record`) and, from there, for ITI-20 delivery. The
messages follow the DICOM-specific specialisations of PS3.15 A.5.3:

- :func:`application_activity`: A.5.3.1 Application Activity (110100);
- :func:`instances_transferred`: A.5.3 Begin Transferring DICOM Instances
  (110102) and DICOM Instances Transferred (110104);
- :func:`patient_record`: Patient Record (110110), as IHE ITI-8 and ITI-30
  receivers record it;
- :func:`query`: Query (110112), as a C-FIND or QIDO-RS requestor records it.

Elements are written in the order the A.5.1 schema sequences them, and every
participant object carries a ``ParticipantObjectName`` or a
``ParticipantObjectQuery``, which the schema requires even where the A.5.3
tables call both optional: a patient without a known name is named by its
identifier, a study by its Study Instance UID.

Limitations
-----------
``EventOutcomeDescription``, media participants (``MediaIdentifier``), data
life cycle, sensitivity, MPPS references, per-instance UIDs and the
``Encrypted``/``Anonymized`` flags are never written. Each message carries one
patient; several patients need several messages. Text that XML cannot carry
(control characters other than tab and line breaks) makes the builder raise
``ValueError`` instead of producing a message. Nothing here validates against
the schema at run time; the test suite does.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
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
    EventTypeCode,
    NetworkAccessPointTypeCode,
    ParticipantObjectIDTypeCode,
    ParticipantObjectTypeCode,
    ParticipantObjectTypeCodeRole,
    RoleIDCode,
)

logger = logging.getLogger(__name__)

XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'

# ParticipantObjectDetail types named by PS3.15 A.5.3 and IHE ITI TF-2.
DETAIL_MSH_10 = "MSH-10"
DETAIL_TRANSFER_SYNTAX = "TransferSyntax"

_PATIENT_RECORD_ACTIONS = frozenset("CUD")
_TRANSFER_ACTIONS = frozenset("CRU")


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


def application_activity(
    *,
    started: bool,
    application: Participant,
    source: AuditSource,
    launchers: Sequence[Participant] = (),
    outcome: int = EventOutcomeIndicator.SUCCESS,
    when: datetime | None = None,
) -> bytes:
    """Build an Application Activity message (PS3.15 A.5.3.1).

    Parameters
    ----------
    started : bool
        True for Application Start (110120), False for Application Stop
        (110121).
    application : Participant
        The application started or stopped; it gets the role 110150.
    source : AuditSource
        The audit source reporting the event.
    launchers : sequence of Participant
        Persons or processes that started or stopped the application; each
        gets the role 110151 "Application Launcher".
    outcome : int
        An :class:`~ihe.atna.codes.EventOutcomeIndicator` value.
    when : datetime, optional
        Timezone-aware time of the event; now, in UTC, when omitted.

    Returns
    -------
    bytes
        The ``AuditMessage`` document, UTF-8.

    Raises
    ------
    ValueError
        If ``outcome`` is not 0, 4, 8 or 12, or ``when`` is naive.
    """
    event_type = (
        EventTypeCode.APPLICATION_START if started else EventTypeCode.APPLICATION_STOP
    )
    root = _audit_message(
        EventID.APPLICATION_ACTIVITY,
        EventActionCode.EXECUTE,
        outcome,
        when,
        event_type,
    )
    _active_participant(root, application, RoleIDCode.APPLICATION)
    for launcher in launchers:
        _active_participant(root, launcher, RoleIDCode.APPLICATION_LAUNCHER)
    _audit_source(root, source)

    return _serialize(root)


def patient_record(
    *,
    action: str,
    patient_id: str,
    patient_name: str | None,
    source: Participant,
    destination: Participant,
    audit_source: AuditSource,
    event_type: Code | CodedEnum | None = None,
    message_id: str | None = None,
    outcome: int = EventOutcomeIndicator.SUCCESS,
    when: datetime | None = None,
) -> bytes:
    """Build a Patient Record message (110110), as an ITI-8 or ITI-30 receiver.

    Parameters
    ----------
    action : {'C', 'U', 'D'}
        Patient created, updated, or deleted (the losing side of a merge).
    patient_id : str
        The patient identifier in HL7 CX form, e.g.
        ``A1001^^^&2.999.1.1&ISO``.
    patient_name : str or None
        The patient name; the identifier stands in for it when None, as the
        schema requires a ``ParticipantObjectName``.
    source : Participant
        The sender (role 110153 "Source Role ID"), ``MSH-3|MSH-4``.
    destination : Participant
        The receiver (role 110152 "Destination Role ID"), ``MSH-5|MSH-6``.
    audit_source : AuditSource
        The audit source reporting the event.
    event_type : Code or CodedEnum, optional
        The transaction, e.g. ``EventTypeCode.ITI_8``.
    message_id : str, optional
        MSH-10 of the message, written as the ``MSH-10`` detail.
    outcome : int
        An :class:`~ihe.atna.codes.EventOutcomeIndicator` value.
    when : datetime, optional
        Timezone-aware time of the event; now, in UTC, when omitted.

    Returns
    -------
    bytes
        The ``AuditMessage`` document, UTF-8.

    Raises
    ------
    ValueError
        If ``action`` is not C, U or D, ``patient_id`` is empty, ``outcome``
        is not 0, 4, 8 or 12, or ``when`` is naive.
    """
    root = _audit_message(
        EventID.PATIENT_RECORD,
        _action(action, _PATIENT_RECORD_ACTIONS),
        outcome,
        when,
        event_type,
    )
    _active_participant(root, source, RoleIDCode.SOURCE)
    _active_participant(root, destination, RoleIDCode.DESTINATION)
    _audit_source(root, audit_source)
    details = [] if message_id is None else [(DETAIL_MSH_10, message_id.encode())]
    _patient_object(root, patient_id, patient_name, details)

    return _serialize(root)


def query(
    *,
    sop_class_uid: str,
    query: bytes,
    source: Participant,
    destination: Participant,
    audit_source: AuditSource,
    patient_id: str | None = None,
    patient_name: str | None = None,
    transfer_syntax: str | None = None,
    event_type: Code | CodedEnum | None = None,
    outcome: int = EventOutcomeIndicator.SUCCESS,
    when: datetime | None = None,
) -> bytes:
    """Build a Query message (110112), as the requestor of a C-FIND or QIDO-RS.

    Parameters
    ----------
    sop_class_uid : str
        The query SOP Class UID, e.g. Study Root Query/Retrieve FIND.
    query : bytes
        The query as sent: the encoded C-FIND identifier, or the request
        bytes for other transports. Written base64-encoded, unaltered.
    source : Participant
        The querying side (role 110153); normally the requestor.
    destination : Participant
        The queried side (role 110152).
    audit_source : AuditSource
        The audit source reporting the event.
    patient_id : str, optional
        The patient the query is about, in HL7 CX form, when known.
    patient_name : str, optional
        That patient's name; ignored without ``patient_id``.
    transfer_syntax : str, optional
        UID of the transfer syntax ``query`` is encoded in (required by
        A.5.3 for a DICOM identifier), written as the ``TransferSyntax``
        detail.
    event_type : Code or CodedEnum, optional
        The transaction, e.g. ``EventTypeCode.RAD_14``.
    outcome : int
        An :class:`~ihe.atna.codes.EventOutcomeIndicator` value.
    when : datetime, optional
        Timezone-aware time of the event; now, in UTC, when omitted.

    Returns
    -------
    bytes
        The ``AuditMessage`` document, UTF-8.

    Raises
    ------
    ValueError
        If ``outcome`` is not 0, 4, 8 or 12, ``when`` is naive, or
        ``patient_id`` is given empty.
    """
    root = _audit_message(
        EventID.QUERY, EventActionCode.EXECUTE, outcome, when, event_type
    )
    _active_participant(root, source, RoleIDCode.SOURCE)
    _active_participant(root, destination, RoleIDCode.DESTINATION)
    _audit_source(root, audit_source)

    # The query object comes first: it is what the message is about.
    details: list[tuple[str, bytes]] = []
    if transfer_syntax is not None:
        details.append((DETAIL_TRANSFER_SYNTAX, transfer_syntax.encode("ascii")))
    _participant_object(
        root,
        object_id=sop_class_uid,
        type_code=ParticipantObjectTypeCode.SYSTEM_OBJECT,
        role=ParticipantObjectTypeCodeRole.REPORT,
        id_type=ParticipantObjectIDTypeCode.SOP_CLASS_UID,
        query=query,
        details=details,
    )
    if patient_id is not None:
        _patient_object(root, patient_id, patient_name)

    return _serialize(root)


def instances_transferred(
    *,
    action: str,
    source: Participant,
    destination: Participant,
    audit_source: AuditSource,
    study_uid: str,
    sop_classes: Mapping[str, int],
    patient_id: str,
    patient_name: str | None,
    accession_numbers: Sequence[str] = (),
    event_type: Code | CodedEnum | None = None,
    outcome: int = EventOutcomeIndicator.SUCCESS,
    when: datetime | None = None,
    begin: bool = False,
) -> bytes:
    """Build a DICOM Instances Transferred message (110104), or its beginning.

    Parameters
    ----------
    action : {'C', 'R', 'U'}
        The receiver created new instances, already had them (read), or
        changed them. Checked, but not written, when ``begin`` is true.
    source : Participant
        The sending side (role 110153), e.g. the PACS answering a C-MOVE.
    destination : Participant
        The receiving side (role 110152).
    audit_source : AuditSource
        The audit source reporting the event.
    study_uid : str
        The Study Instance UID, also written as the study object's name.
    sop_classes : mapping of str to int
        SOP Class UID to number of instances transferred in that class.
    patient_id : str
        The patient identifier in HL7 CX form.
    patient_name : str or None
        The patient name; the identifier stands in for it when None.
    accession_numbers : sequence of str
        Accession numbers of the study; empty values are skipped.
    event_type : Code or CodedEnum, optional
        The transaction, e.g. ``EventTypeCode.RAD_16``.
    outcome : int
        An :class:`~ihe.atna.codes.EventOutcomeIndicator` value.
    when : datetime, optional
        Timezone-aware time of the event; now, in UTC, when omitted.
    begin : bool
        True for Begin Transferring DICOM Instances (110102), whose action
        is always E (execute).

    Returns
    -------
    bytes
        The ``AuditMessage`` document, UTF-8.

    Raises
    ------
    ValueError
        If ``action`` is not C, R or U, a count is negative, ``patient_id``
        is empty, ``outcome`` is not 0, 4, 8 or 12, or ``when`` is naive.
    """
    event_action = _action(action, _TRANSFER_ACTIONS)
    event_id = EventID.DICOM_INSTANCES_TRANSFERRED
    if begin:
        event_id = EventID.BEGIN_TRANSFERRING_DICOM_INSTANCES
        event_action = EventActionCode.EXECUTE
    root = _audit_message(event_id, event_action, outcome, when, event_type)
    _active_participant(root, source, RoleIDCode.SOURCE)
    _active_participant(root, destination, RoleIDCode.DESTINATION)
    _audit_source(root, audit_source)

    study = _participant_object(
        root,
        object_id=study_uid,
        type_code=ParticipantObjectTypeCode.SYSTEM_OBJECT,
        role=ParticipantObjectTypeCodeRole.REPORT,
        id_type=ParticipantObjectIDTypeCode.STUDY_INSTANCE_UID,
        name=study_uid,
    )
    _study_description(study, sop_classes, accession_numbers)
    _patient_object(root, patient_id, patient_name)

    return _serialize(root)


def _audit_message(
    event_id: EventID,
    action: EventActionCode,
    outcome: int,
    when: datetime | None,
    event_type: Code | CodedEnum | None,
) -> Any:
    root = etree.Element("AuditMessage")
    event = etree.SubElement(
        root,
        "EventIdentification",
        EventActionCode=action.value,
        EventDateTime=_event_time(when),
        EventOutcomeIndicator=str(int(EventOutcomeIndicator(outcome))),
    )
    _coded(event, "EventID", event_id)
    if event_type is not None:
        _coded(event, "EventTypeCode", event_type)

    return root


def _active_participant(root: Any, participant: Participant, role: RoleIDCode) -> None:
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
    element = etree.SubElement(root, "ActiveParticipant", attrib)

    roles = [role.code]
    if participant.role is not None:
        roles.append(_as_code(participant.role))
    for code in dict.fromkeys(roles):
        _coded(element, "RoleIDCode", code)


def _audit_source(root: Any, source: AuditSource) -> None:
    attrib = {"AuditSourceID": source.source_id}
    if source.enterprise_site_id is not None:
        attrib["AuditEnterpriseSiteID"] = source.enterprise_site_id
    element = etree.SubElement(root, "AuditSourceIdentification", attrib)
    _coded(element, "AuditSourceTypeCode", AuditSourceTypeCode.APPLICATION_SERVER)


def _participant_object(
    root: Any,
    *,
    object_id: str,
    type_code: ParticipantObjectTypeCode,
    role: ParticipantObjectTypeCodeRole,
    id_type: ParticipantObjectIDTypeCode,
    name: str | None = None,
    query: bytes | None = None,
    details: Iterable[tuple[str, bytes]] = (),
) -> Any:
    element = etree.SubElement(
        root,
        "ParticipantObjectIdentification",
        ParticipantObjectID=object_id,
        ParticipantObjectTypeCode=str(int(type_code)),
        ParticipantObjectTypeCodeRole=str(int(role)),
    )
    _coded(element, "ParticipantObjectIDTypeCode", id_type)

    # The schema wants exactly one of name and query, right after the type.
    if query is not None:
        etree.SubElement(element, "ParticipantObjectQuery").text = _b64(query)
    else:
        etree.SubElement(element, "ParticipantObjectName").text = name or object_id
    for detail_type, value in details:
        etree.SubElement(
            element, "ParticipantObjectDetail", type=detail_type, value=_b64(value)
        )

    return element


def _patient_object(
    root: Any,
    patient_id: str,
    patient_name: str | None,
    details: Iterable[tuple[str, bytes]] = (),
) -> None:
    if not patient_id:
        raise ValueError("a patient object needs a non-empty patient_id")
    _participant_object(
        root,
        object_id=patient_id,
        type_code=ParticipantObjectTypeCode.PERSON,
        role=ParticipantObjectTypeCodeRole.PATIENT,
        id_type=ParticipantObjectIDTypeCode.PATIENT_NUMBER,
        name=patient_name or patient_id,
        details=details,
    )


def _study_description(
    study: Any, sop_classes: Mapping[str, int], accession_numbers: Sequence[str]
) -> None:
    accessions = [number for number in accession_numbers if number]
    if not sop_classes and not accessions:
        return
    # The schema orders the description's children: Accession before SOPClass.
    description = etree.SubElement(study, "ParticipantObjectDescription")
    for number in dict.fromkeys(accessions):
        etree.SubElement(description, "Accession", Number=number)
    for uid, count in sop_classes.items():
        if count < 0:
            raise ValueError(f"negative instance count for SOP class {uid}")
        etree.SubElement(
            description, "SOPClass", UID=uid, NumberOfInstances=str(int(count))
        )


def _coded(parent: Any, tag: str, value: Code | CodedEnum) -> None:
    code = _as_code(value)
    etree.SubElement(
        parent,
        tag,
        {
            "csd-code": code.csd_code,
            "codeSystemName": code.code_system_name,
            "originalText": code.original_text,
        },
    )


def _as_code(value: Code | CodedEnum) -> Code:
    return value.code if isinstance(value, CodedEnum) else value


def _action(action: str, allowed: frozenset[str]) -> EventActionCode:
    if action not in allowed:
        raise ValueError(
            f"EventActionCode {action!r} not allowed here; use one of "
            + ", ".join(sorted(allowed))
        )

    return EventActionCode(action)


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


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _serialize(root: Any) -> bytes:
    body: bytes = etree.tostring(root, encoding="UTF-8", xml_declaration=False)
    logger.debug(
        "audit message built",
        extra={"event_id": root[0][0].get("csd-code"), "size": len(body)},
    )

    return XML_DECLARATION + body
