"""DICOM audit messages (PS3.15 A.5) for security events.

Builders, like those of :mod:`ihe.atna.messages`, return one ``AuditMessage``
document as UTF-8 bytes:

- :func:`audit_log_used`: Audit Log Used (110101), written when a
  security officer reads the audit trail (ITI-81 or the registration trail);
- :func:`security_alert`: Security Alert (110113), for a refused
  token, a failed TLS handshake or a refused association;
- :func:`user_authentication`: User Authentication (110114), for a
  login or logout, successful or not.

Limitations
-----------
A security alert names one subject (URI, node or user); several subjects need
several messages. The alert description is free text chosen by the caller and
must carry no token, password or patient data. User authentication messages
carry no participant object, as asks.
"""

from __future__ import annotations

import dataclasses
import logging
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
from ihe.atna.elements import AuditSource, Participant

logger = logging.getLogger(__name__)

# PS3.15 A.5.3: the name of the audit log object.
AUDIT_LOG_NAME = "Security Audit Log"
# PS3.15 A.5.3: the ParticipantObjectDetail type of a security alert.
DETAIL_ALERT_DESCRIPTION = "Alert Description"


def audit_log_used(
    *,
    accessor: Participant,
    audit_source: AuditSource,
    log_uri: str,
    server: Participant | None = None,
    query: bytes | None = None,
    event_type: Code | CodedEnum | None = EventTypeCode.ITI_81,
    outcome: int = EventOutcomeIndicator.SUCCESS,
    when: datetime | None = None,
) -> bytes:
    """Build an Audit Log Used message (110101, PS3.15 A.5.3), action R.

    Parameters
    ----------
    accessor : Participant
        The user or application that read the log (role 110153, written as
        the requestor).
    audit_source : AuditSource
        The audit source reporting the event.
    log_uri : str
        URI of the audit log read, e.g. the AuditEvent endpoint.
    server : Participant, optional
        The process serving the log (role 110152, not a requestor),
        normally SPIDERS.
    query : bytes, optional
        The search as received (the URL's query string), written as a query
        object (type 2, role 24, ID type ``event_type``).
    event_type : Code or CodedEnum, optional
        The transaction; ITI-81 "Retrieve ATNA Audit Event" by default.
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
    root = elements.audit_message(
        EventID.AUDIT_LOG_USED, EventActionCode.READ, outcome, when, event_type
    )
    requestor = dataclasses.replace(accessor, is_requestor=True)
    elements.active_participant(root, requestor, RoleIDCode.SOURCE)
    if server is not None:
        served = dataclasses.replace(server, is_requestor=False)
        elements.active_participant(root, served, RoleIDCode.DESTINATION)
    elements.audit_source(root, audit_source)

    elements.participant_object(
        root,
        object_id=log_uri,
        type_code=ParticipantObjectTypeCode.SYSTEM_OBJECT,
        role=ParticipantObjectTypeCodeRole.SECURITY_RESOURCE,
        id_type=ParticipantObjectIDTypeCode.URI,
        name=AUDIT_LOG_NAME,
    )
    if query is not None:
        elements.participant_object(
            root,
            object_id=log_uri,
            type_code=ParticipantObjectTypeCode.SYSTEM_OBJECT,
            role=ParticipantObjectTypeCodeRole.QUERY,
            id_type=event_type or ParticipantObjectIDTypeCode.SEARCH_CRITERIA,
            query=query,
        )

    return elements.serialize(root)


def security_alert(
    *,
    alert_type: Code | CodedEnum,
    reporter: Participant,
    audit_source: AuditSource,
    subject_id: str,
    subject_id_type: Code | CodedEnum = ParticipantObjectIDTypeCode.URI,
    description: str | None = None,
    performer: Participant | None = None,
    outcome: int = EventOutcomeIndicator.MINOR_FAILURE,
    when: datetime | None = None,
) -> bytes:
    """Build a Security Alert message (110113, PS3.15 A.5.3), action E.

    Parameters
    ----------
    alert_type : Code or CodedEnum
        What happened, a CID 401 code such as
        ``EventTypeCode.NODE_AUTHENTICATION`` (TLS failure, bad token) or
        ``EventTypeCode.USE_OF_RESTRICTED_FUNCTION`` (role refused).
    reporter : Participant
        The process reporting the alert, written as the requestor.
    audit_source : AuditSource
        The audit source reporting the event.
    subject_id : str
        The alert subject: the URI called, the peer's node or certificate
        subject, or a user identifier.
    subject_id_type : Code or CodedEnum
        What ``subject_id`` is: URI (default), ``NODE_ID`` or
        ``USER_IDENTIFIER``.
    description : str, optional
        Free text written as the ``Alert Description`` detail; no secrets.
    performer : Participant, optional
        The peer whose action raised the alert (not a requestor).
    outcome : int
        An :class:`~ihe.atna.codes.EventOutcomeIndicator` value; minor
        failure (4) by default, the refused action having failed.
    when : datetime, optional
        Timezone-aware time of the event; now, in UTC, when omitted.

    Returns
    -------
    bytes
        The ``AuditMessage`` document, UTF-8.

    Raises
    ------
    ValueError
        If ``subject_id`` is empty, ``outcome`` is not 0, 4, 8 or 12, or
        ``when`` is naive.
    """
    if not subject_id:
        raise ValueError("a security alert needs a subject")
    root = elements.audit_message(
        EventID.SECURITY_ALERT, EventActionCode.EXECUTE, outcome, when, alert_type
    )
    elements.active_participant(
        root, dataclasses.replace(reporter, is_requestor=True), None
    )
    if performer is not None:
        elements.active_participant(
            root, dataclasses.replace(performer, is_requestor=False), None
        )
    elements.audit_source(root, audit_source)

    details = []
    if description:
        details.append((DETAIL_ALERT_DESCRIPTION, description.encode("utf-8")))
    elements.participant_object(
        root,
        object_id=subject_id,
        type_code=ParticipantObjectTypeCode.SYSTEM_OBJECT,
        role=ParticipantObjectTypeCodeRole.SECURITY_RESOURCE,
        id_type=subject_id_type,
        details=details,
    )

    return elements.serialize(root)


def user_authentication(
    *,
    login: bool,
    user: Participant,
    audit_source: AuditSource,
    node: Participant | None = None,
    outcome: int = EventOutcomeIndicator.SUCCESS,
    when: datetime | None = None,
) -> bytes:
    """Build a User Authentication message (110114, PS3.15 A.5.3).

    Parameters
    ----------
    login : bool
        True for Login (110122), False for Logout (110123).
    user : Participant
        The person authenticated, written as the requestor.
    audit_source : AuditSource
        The audit source reporting the event.
    node : Participant, optional
        The system that authenticated the user (not a requestor).
    outcome : int
        An :class:`~ihe.atna.codes.EventOutcomeIndicator` value; a refused
        login is a minor failure (4).
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
    event_type = EventTypeCode.LOGIN if login else EventTypeCode.LOGOUT
    root = elements.audit_message(
        EventID.USER_AUTHENTICATION, EventActionCode.EXECUTE, outcome, when, event_type
    )
    elements.active_participant(
        root, dataclasses.replace(user, is_requestor=True), None
    )
    if node is not None:
        elements.active_participant(
            root, dataclasses.replace(node, is_requestor=False), None
        )
    elements.audit_source(root, audit_source)

    return elements.serialize(root)
