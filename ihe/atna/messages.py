"""DICOM audit messages (PS3.15 A.5) for the data SPIDERS moves and keeps.

Each builder returns one ``AuditMessage`` document as UTF-8 bytes, with an XML
declaration and without a byte order mark, ready for the audit outbox
(:func:`ihe.atna.outbox.record`) and, from there, for ITI-20 delivery. The
messages follow the DICOM-specific specialisations of PS3.15 A.5.3:

- :func:`application_activity`: Application Activity (110100);
- :func:`instances_transferred`: Begin Transferring DICOM Instances
  (110102) and DICOM Instances Transferred (110104);
- :func:`study_deleted`: DICOM Study Deleted (110105);
- :func:`export`: Export (110106), for studies or, as an IHE ITI-41
  Document Source records it, a submission set;
- :func:`import_`: Import (110107), as a RAD-69 Imaging Document
  Consumer records it;
- :func:`patient_record`: Patient Record (110110), as IHE ITI-8 and
  ITI-30 receivers record it;
- :func:`procedure_record`: Procedure Record (110111), for a
  tumour-board registration;
- :func:`query`: Query (110112), as a C-FIND or QIDO-RS requestor
  records it;
- :func:`patient_query`: Query (110112), as the answering side of an IHE
  patient query (ITI-78 PDQm, ITI-83 PIXm) records it, with every patient
  returned.
- :func:`hl7_query`: Query (110112), as an IHE ITI-9 PIX Manager or ITI-21
  Patient Demographics Supplier records the HL7 v2 query it answered, with
  the query's MSH-10.

The security events (Audit Log Used, Security Alert, User Authentication)
are built by :mod:`ihe.atna.security_messages`; the elements both modules
share by :mod:`ihe.atna.elements`.

Limitations
-----------
Each message carries one patient, except :func:`patient_query` and
:func:`hl7_query`, which name every patient a query returned.
The elements :mod:`ihe.atna.elements` never writes (media identifiers, data
life cycle, per-instance UIDs and others) are never written here either.
Nothing here validates against the schema at run time; the test suite does.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime

from ihe.atna import elements
from ihe.atna.codes import (
    Code,
    CodedEnum,
    EventActionCode,
    EventID,
    EventOutcomeIndicator,
    EventTypeCode,
    ParticipantObjectIDTypeCode,
    ParticipantObjectTypeCode,
    ParticipantObjectTypeCodeRole,
    RoleIDCode,
)
from ihe.atna.elements import XML_DECLARATION, AuditSource, Participant

__all__ = [
    "DETAIL_MSH_10",
    "DETAIL_TRANSFER_SYNTAX",
    "SUBMISSION_SET_ID_TYPE",
    "XML_DECLARATION",
    "AuditSource",
    "Participant",
    "application_activity",
    "export",
    "import_",
    "instances_transferred",
    "patient_query",
    "patient_record",
    "procedure_record",
    "query",
    "study_deleted",
]

logger = logging.getLogger(__name__)

# ParticipantObjectDetail types named by PS3.15 A.5.3 and IHE ITI TF-2.
DETAIL_MSH_10 = "MSH-10"
DETAIL_TRANSFER_SYNTAX = "TransferSyntax"

# IHE ITI TF-2 3.41.5: the submission set object's ID type.
SUBMISSION_SET_ID_TYPE = Code(
    "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd",
    "IHE XDS Metadata",
    "submission set classificationNode",
)

_PATIENT_RECORD_ACTIONS = frozenset("CRUD")
_PROCEDURE_RECORD_ACTIONS = frozenset("CRUD")
_TRANSFER_ACTIONS = frozenset("CRU")


def application_activity(
    *,
    started: bool,
    application: Participant,
    source: AuditSource,
    launchers: Sequence[Participant] = (),
    outcome: int = EventOutcomeIndicator.SUCCESS,
    when: datetime | None = None,
) -> bytes:
    """Build an Application Activity message (PS3.15 A.5.3).

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
    root = elements.audit_message(
        EventID.APPLICATION_ACTIVITY,
        EventActionCode.EXECUTE,
        outcome,
        when,
        event_type,
    )
    elements.active_participant(root, application, RoleIDCode.APPLICATION)
    for launcher in launchers:
        elements.active_participant(root, launcher, RoleIDCode.APPLICATION_LAUNCHER)
    elements.audit_source(root, source)

    return elements.serialize(root)


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
    root = elements.audit_message(
        EventID.PATIENT_RECORD,
        elements.event_action(action, _PATIENT_RECORD_ACTIONS),
        outcome,
        when,
        event_type,
    )
    elements.active_participant(root, source, RoleIDCode.SOURCE)
    elements.active_participant(root, destination, RoleIDCode.DESTINATION)
    elements.audit_source(root, audit_source)
    details = [] if message_id is None else [(DETAIL_MSH_10, message_id.encode())]
    elements.patient_object(root, patient_id, patient_name, details)

    return elements.serialize(root)


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
    root = elements.audit_message(
        EventID.QUERY, EventActionCode.EXECUTE, outcome, when, event_type
    )
    elements.active_participant(root, source, RoleIDCode.SOURCE)
    elements.active_participant(root, destination, RoleIDCode.DESTINATION)
    elements.audit_source(root, audit_source)

    # The query object comes first: it is what the message is about.
    details: list[tuple[str, bytes]] = []
    if transfer_syntax is not None:
        details.append((DETAIL_TRANSFER_SYNTAX, transfer_syntax.encode("ascii")))
    elements.participant_object(
        root,
        object_id=sop_class_uid,
        type_code=ParticipantObjectTypeCode.SYSTEM_OBJECT,
        role=ParticipantObjectTypeCodeRole.REPORT,
        id_type=ParticipantObjectIDTypeCode.SOP_CLASS_UID,
        query=query,
        details=details,
    )
    if patient_id is not None:
        elements.patient_object(root, patient_id, patient_name)

    return elements.serialize(root)


def patient_query(
    *,
    transaction: Code | CodedEnum,
    query_id: str,
    query: bytes,
    source: Participant,
    destination: Participant,
    audit_source: AuditSource,
    patients: Sequence[tuple[str, str | None]] = (),
    outcome: int = EventOutcomeIndicator.SUCCESS,
    when: datetime | None = None,
    message_id: str | None = None,
) -> bytes:
    """Build a Query message (110112) for an IHE patient query that was answered.

    The layout is the one IHE ITI TF-2 gives the PIX and PDQ queries (ITI-9,
    ITI-21) and their RESTful forms (ITI-83, ITI-78): the consumer as source,
    the supplier as destination, one patient object per patient returned and
    one query object whose ID type is the transaction.

    Parameters
    ----------
    transaction : Code or CodedEnum
        The transaction, e.g. ``EventTypeCode.ITI_83``; it is the event type
        and the query object's ID type.
    query_id : str
        ``ParticipantObjectID`` of the query object, e.g. the request path.
    query : bytes
        The query as received (an HTTP query string, or the QPD segment of an
        HL7 v2 query), written base64-encoded.
    source : Participant
        The consumer that asked (role 110153), normally the requestor.
    destination : Participant
        The supplier that answered (role 110152), normally SPIDERS.
    audit_source : AuditSource
        The audit source reporting the event.
    patients : sequence of (str, str or None)
        Each patient returned, as (identifier in HL7 CX form, name or None).
    outcome : int
        An :class:`~ihe.atna.codes.EventOutcomeIndicator` value.
    when : datetime, optional
        Timezone-aware time of the event; now, in UTC, when omitted.
    message_id : str, optional
        MSH-10 of an HL7 v2 query, written as the ``MSH-10`` detail.

    Returns
    -------
    bytes
        The ``AuditMessage`` document, UTF-8.

    Raises
    ------
    ValueError
        If a patient identifier or ``query_id`` is empty, ``outcome`` is not
        0, 4, 8 or 12, or ``when`` is naive.
    """
    if not query_id:
        raise ValueError("a query object needs a non-empty query_id")
    root = elements.audit_message(
        EventID.QUERY, EventActionCode.EXECUTE, outcome, when, transaction
    )
    elements.active_participant(root, _requestor(source), RoleIDCode.SOURCE)
    elements.active_participant(root, destination, RoleIDCode.DESTINATION)
    elements.audit_source(root, audit_source)

    for patient_id, patient_name in patients:
        elements.patient_object(root, patient_id, patient_name)
    details = [] if message_id is None else [(DETAIL_MSH_10, message_id.encode())]
    elements.participant_object(
        root,
        object_id=query_id,
        type_code=ParticipantObjectTypeCode.SYSTEM_OBJECT,
        role=ParticipantObjectTypeCodeRole.QUERY,
        id_type=transaction,
        query=query,
        details=details,
    )

    return elements.serialize(root)


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
    event_action = elements.event_action(action, _TRANSFER_ACTIONS)
    event_id = EventID.DICOM_INSTANCES_TRANSFERRED
    if begin:
        event_id = EventID.BEGIN_TRANSFERRING_DICOM_INSTANCES
        event_action = EventActionCode.EXECUTE
    root = elements.audit_message(event_id, event_action, outcome, when, event_type)
    elements.active_participant(root, source, RoleIDCode.SOURCE)
    elements.active_participant(root, destination, RoleIDCode.DESTINATION)
    elements.audit_source(root, audit_source)

    elements.study_object(root, study_uid, sop_classes, accession_numbers)
    elements.patient_object(root, patient_id, patient_name)

    return elements.serialize(root)


def study_deleted(
    *,
    deleter: Participant,
    audit_source: AuditSource,
    study_uid: str,
    sop_classes: Mapping[str, int],
    patient_id: str,
    patient_name: str | None,
    accession_numbers: Sequence[str] = (),
    outcome: int = EventOutcomeIndicator.SUCCESS,
    when: datetime | None = None,
) -> bytes:
    """Build a DICOM Study Deleted message (110105, PS3.15 A.5.3).

    Parameters
    ----------
    deleter : Participant
        The person or process that deleted the study (written as the
        requestor), e.g. the cache's retention task.
    audit_source : AuditSource
        The audit source reporting the event.
    study_uid : str
        The Study Instance UID.
    sop_classes : mapping of str to int
        SOP Class UID to number of instances deleted in that class.
    patient_id : str
        The patient identifier in HL7 CX form.
    patient_name : str or None
        The patient name; the identifier stands in for it when None.
    accession_numbers : sequence of str
        Accession numbers of the study; empty values are skipped.
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
        If a count is negative, ``patient_id`` is empty, ``outcome`` is not
        0, 4, 8 or 12, or ``when`` is naive.
    """
    root = elements.audit_message(
        EventID.DICOM_STUDY_DELETED, EventActionCode.DELETE, outcome, when, None
    )
    elements.active_participant(root, _requestor(deleter), None)
    elements.audit_source(root, audit_source)
    elements.study_object(root, study_uid, sop_classes, accession_numbers)
    elements.patient_object(root, patient_id, patient_name)

    return elements.serialize(root)


def export(
    *,
    source: Participant,
    destination: Participant,
    audit_source: AuditSource,
    patient_id: str,
    patient_name: str | None,
    study_uid: str | None = None,
    sop_classes: Mapping[str, int] | None = None,
    submission_set_uid: str | None = None,
    human_requestor: Participant | None = None,
    event_type: Code | CodedEnum | None = None,
    outcome: int = EventOutcomeIndicator.SUCCESS,
    when: datetime | None = None,
) -> bytes:
    """Build an Export message (110106, PS3.15 A.5.3), action R.

    Parameters
    ----------
    source : Participant
        The exporting process (role 110153), e.g. SPIDERS publishing a KOS.
    destination : Participant
        The receiving side (role 110152): remote process, repository URI.
    audit_source : AuditSource
        The audit source reporting the event.
    patient_id : str
        The patient identifier in HL7 CX form.
    patient_name : str or None
        The patient name; the identifier stands in for it when None.
    study_uid : str, optional
        The study exported, written as a study object.
    sop_classes : mapping of str to int, optional
        SOP Class UID to number of instances exported; with ``study_uid``.
    submission_set_uid : str, optional
        The XDS submission set uniqueId, for an ITI-41 export (object type
        2, role 20 "Job").
    human_requestor : Participant, optional
        The user who asked for the export, written without an event role.
    event_type : Code or CodedEnum, optional
        The transaction, e.g. ``EventTypeCode.ITI_41``.
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
        If neither ``study_uid`` nor ``submission_set_uid`` is given,
        ``patient_id`` is empty, ``outcome`` is not 0, 4, 8 or 12, or
        ``when`` is naive.
    """
    if study_uid is None and submission_set_uid is None:
        raise ValueError("an export names a study or a submission set")
    root = elements.audit_message(
        EventID.EXPORT, EventActionCode.READ, outcome, when, event_type
    )
    elements.active_participant(root, source, RoleIDCode.SOURCE)
    if human_requestor is not None:
        elements.active_participant(root, _requestor(human_requestor), None)
    elements.active_participant(root, destination, RoleIDCode.DESTINATION)
    elements.audit_source(root, audit_source)

    if study_uid is not None:
        elements.study_object(root, study_uid, sop_classes or {})
    elements.patient_object(root, patient_id, patient_name)
    if submission_set_uid is not None:
        elements.participant_object(
            root,
            object_id=submission_set_uid,
            type_code=ParticipantObjectTypeCode.SYSTEM_OBJECT,
            role=ParticipantObjectTypeCodeRole.JOB,
            id_type=SUBMISSION_SET_ID_TYPE,
        )

    return elements.serialize(root)


def import_(
    *,
    source: Participant,
    destination: Participant,
    audit_source: AuditSource,
    study_uid: str,
    sop_classes: Mapping[str, int],
    patient_id: str,
    patient_name: str | None,
    accession_numbers: Sequence[str] = (),
    event_type: Code | CodedEnum | None = EventTypeCode.RAD_69,
    outcome: int = EventOutcomeIndicator.SUCCESS,
    when: datetime | None = None,
) -> bytes:
    """Build an Import message (110107, PS3.15 A.5.3), action C.

    The trailing underscore keeps the name off the Python keyword.

    Parameters
    ----------
    source : Participant
        Where the data came from (role 110153), e.g. an Imaging Document
        Source endpoint.
    destination : Participant
        The importing process (role 110152), normally SPIDERS.
    audit_source : AuditSource
        The audit source reporting the event.
    study_uid : str
        The Study Instance UID imported.
    sop_classes : mapping of str to int
        SOP Class UID to number of instances imported in that class.
    patient_id : str
        The patient identifier in HL7 CX form.
    patient_name : str or None
        The patient name; the identifier stands in for it when None.
    accession_numbers : sequence of str
        Accession numbers of the study; empty values are skipped.
    event_type : Code or CodedEnum, optional
        The transaction; RAD-69 "Retrieve Imaging Document Set" by default.
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
        If a count is negative, ``patient_id`` is empty, ``outcome`` is not
        0, 4, 8 or 12, or ``when`` is naive.
    """
    root = elements.audit_message(
        EventID.IMPORT, EventActionCode.CREATE, outcome, when, event_type
    )
    elements.active_participant(root, source, RoleIDCode.SOURCE)
    elements.active_participant(root, destination, RoleIDCode.DESTINATION)
    elements.audit_source(root, audit_source)
    elements.study_object(root, study_uid, sop_classes, accession_numbers)
    elements.patient_object(root, patient_id, patient_name)

    return elements.serialize(root)


def procedure_record(
    *,
    action: str,
    procedure_uri: str,
    patient_id: str,
    patient_name: str | None,
    source: Participant,
    destination: Participant,
    audit_source: AuditSource,
    event_type: Code | CodedEnum | None = None,
    outcome: int = EventOutcomeIndicator.SUCCESS,
    when: datetime | None = None,
) -> bytes:
    """Build a Procedure Record message (110111, PS3.15 A.5.3).

    SPIDERS records a tumour-board registration (a FHIR Appointment) this
    way: the procedure is the board's review of the case, written as an
    object of role 18 "Schedule" identified by its URI.

    Parameters
    ----------
    action : {'C', 'R', 'U', 'D'}
        Registration created, read, updated or cancelled.
    procedure_uri : str
        The registration's URI, e.g. ``Appointment/<id>``.
    patient_id : str
        The patient identifier in HL7 CX form.
    patient_name : str or None
        The patient name; the identifier stands in for it when None.
    source : Participant
        Who sent the registration (role 110153).
    destination : Participant
        Who recorded it (role 110152), normally SPIDERS.
    audit_source : AuditSource
        The audit source reporting the event.
    event_type : Code or CodedEnum, optional
        The transaction, if any.
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
        If ``action`` is not C, R, U or D, ``patient_id`` is empty,
        ``outcome`` is not 0, 4, 8 or 12, or ``when`` is naive.
    """
    root = elements.audit_message(
        EventID.PROCEDURE_RECORD,
        elements.event_action(action, _PROCEDURE_RECORD_ACTIONS),
        outcome,
        when,
        event_type,
    )
    elements.active_participant(root, source, RoleIDCode.SOURCE)
    elements.active_participant(root, destination, RoleIDCode.DESTINATION)
    elements.audit_source(root, audit_source)
    elements.patient_object(root, patient_id, patient_name)
    elements.participant_object(
        root,
        object_id=procedure_uri,
        type_code=ParticipantObjectTypeCode.SYSTEM_OBJECT,
        role=ParticipantObjectTypeCodeRole.SCHEDULE,
        id_type=ParticipantObjectIDTypeCode.URI,
    )

    return elements.serialize(root)


def _requestor(participant: Participant) -> Participant:
    return dataclasses.replace(participant, is_requestor=True)
