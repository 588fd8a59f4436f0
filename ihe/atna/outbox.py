"""The audit outbox: audit messages stored with the action they record.

An audit message is added to the same database session as the clinical change
it describes, so that both are committed, or rolled back, together; delivery
(ITI-20) reads the outbox afterwards and can retry without losing a message.
The event ID, action, outcome, time and type are read back from the message,
and the identifiers of its participants and objects indexed, so that the
outbox can be searched (ITI-81) without parsing every row.

Limitations
-----------
Only the DICOM PS3.15 A.5 XML format is accepted. A message without an
``EventActionCode`` is refused although the schema makes it optional, since
every message SPIDERS builds sets it. The XML is stored as text exactly as
built; the message is not validated against the schema here. An ``EventDateTime``
without an offset is taken as UTC. Identifiers longer than 256 characters
are indexed truncated, so a search must name them by their first 256.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from lxml import etree
from sqlalchemy.orm import Session

from server.models import AuditRecord, AuditSearchKey
from server.models.audit import SEARCH_KEY_LENGTH

logger = logging.getLogger(__name__)

# PS3.15 A.5.2.2: how DICOM participants list their AE titles.
AE_TITLES_PREFIX = "AETITLES="

# A hardened parser: our own messages need no entities, DTDs or network.
_PARSER = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    huge_tree=False,
    remove_blank_text=False,
)


def record(
    session: Session,
    xml: bytes,
    *,
    registration_id: str | None = None,
    patient_id: str | None = None,
) -> AuditRecord:
    """Add an audit message to the outbox, in the caller's session.

    The session is not committed: the caller commits it with the action the
    message records.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        The session holding the audited change.
    xml : bytes
        A DICOM audit message, as built by :mod:`ihe.atna.messages`.
    registration_id : str, optional
        The tumour-board registration the event belongs to, if any.
    patient_id : str, optional
        The patient index id of the patient the event concerns, if known;
        it lets ITI-81 find the record by ``patient=Patient/<id>``.

    Returns
    -------
    AuditRecord
        The new outbox row, pending in ``session``.

    Raises
    ------
    ValueError
        If ``xml`` is not well-formed or is not an ``AuditMessage`` with an
        event ID, an action, an outcome and a valid event time.
    """
    root = _parse(xml)
    event = root.find("EventIdentification")
    if event is None:
        raise ValueError("audit message without EventIdentification")
    event_id = _attribute(event.find("EventID"), "csd-code")
    event_action = _attribute(event, "EventActionCode")
    outcome = _outcome(_attribute(event, "EventOutcomeIndicator"))
    event_type = event.find("EventTypeCode")
    row = AuditRecord(
        event_id=event_id,
        event_action=event_action,
        outcome=outcome,
        registration_id=registration_id,
        patient_id=patient_id,
        event_time=_event_time(_attribute(event, "EventDateTime")),
        event_type=None if event_type is None else event_type.get("csd-code"),
        xml=xml.decode("utf-8"),
        search_keys=[
            AuditSearchKey(kind=kind, value=value[:SEARCH_KEY_LENGTH])
            for kind, value in dict.fromkeys(search_keys(root))
        ],
    )
    session.add(row)
    logger.debug(
        "audit message queued",
        extra={
            "event_id": event_id,
            "event_action": event_action,
            "outcome": outcome,
            "registration_id": registration_id,
        },
    )

    return row


def search_keys(root: Any) -> list[tuple[str, str]]:
    """The ``(kind, value)`` pairs a message is found by.

    ``agent`` keys are each participant's ``UserID``, ``AlternativeUserID``
    and, for DICOM peers, each AE title of ``AETITLES=AE1;AE2``; ``entity``
    keys are each participant object's ``ParticipantObjectID``.

    Parameters
    ----------
    root : lxml.etree._Element
        The ``AuditMessage``.

    Returns
    -------
    list of (str, str)
        In document order, possibly repeated.
    """
    keys: list[tuple[str, str]] = []
    for participant in root.iterfind("ActiveParticipant"):
        for name in ("UserID", "AlternativeUserID"):
            value = participant.get(name)
            if value:
                keys.append(("agent", value))
        alternative = participant.get("AlternativeUserID") or ""
        if alternative.startswith(AE_TITLES_PREFIX):
            for ae_title in alternative.removeprefix(AE_TITLES_PREFIX).split(";"):
                if ae_title:
                    keys.append(("agent", ae_title))
    for obj in root.iterfind("ParticipantObjectIdentification"):
        value = obj.get("ParticipantObjectID")
        if value:
            keys.append(("entity", value))

    return keys


def _parse(xml: bytes) -> Any:
    try:
        root = etree.fromstring(xml, parser=_PARSER)
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"audit message is not well-formed XML: {exc}") from exc
    if root.tag != "AuditMessage":
        raise ValueError(f"expected an AuditMessage, got {root.tag!r}")

    return root


def _outcome(text: str) -> int:
    try:
        return int(text)
    except ValueError as exc:
        raise ValueError(f"EventOutcomeIndicator {text!r} is not a number") from exc


def _event_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"EventDateTime {text!r} is not a date and time") from exc
    if moment.utcoffset() is None:
        moment = moment.replace(tzinfo=UTC)

    return moment.astimezone(UTC)


def _attribute(element: Any, name: str) -> str:
    value = None if element is None else element.get(name)
    if not value:
        raise ValueError(f"audit message without {name}")

    return str(value)
