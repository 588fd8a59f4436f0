"""The audit outbox: audit messages stored with the action they record.

An audit message is added to the same database session as the clinical change
it describes, so that both are committed, or rolled back, together; delivery
(ITI-20) reads the outbox afterwards and can retry without losing a message.
The event ID, action and outcome are read back from the message so that the
outbox can be searched without parsing every row.

Limitations
-----------
Only the DICOM PS3.15 A.5 XML format is accepted. A message without an
``EventActionCode`` is refused although the schema makes it optional, since
every message SPIDERS builds sets it. The XML is stored as text exactly as
built; the message is not validated against the schema here.
"""

from __future__ import annotations

import logging
from typing import Any

from lxml import etree
from sqlalchemy.orm import Session

from server.models import AuditRecord

logger = logging.getLogger(__name__)

# A hardened parser: our own messages need no entities, DTDs or network.
_PARSER = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    huge_tree=False,
    remove_blank_text=False,
)


def record(
    session: Session, xml: bytes, *, registration_id: str | None = None
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

    Returns
    -------
    AuditRecord
        The new outbox row, pending in ``session``.

    Raises
    ------
    ValueError
        If ``xml`` is not well-formed or is not an ``AuditMessage`` with an
        event ID, an action and an outcome.
    """
    event = _event_identification(xml)
    event_id = _attribute(event.find("EventID"), "csd-code")
    event_action = _attribute(event, "EventActionCode")
    outcome_text = _attribute(event, "EventOutcomeIndicator")
    try:
        outcome = int(outcome_text)
    except ValueError as exc:
        raise ValueError(
            f"EventOutcomeIndicator {outcome_text!r} is not a number"
        ) from exc

    row = AuditRecord(
        event_id=event_id,
        event_action=event_action,
        outcome=outcome,
        registration_id=registration_id,
        xml=xml.decode("utf-8"),
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


def _event_identification(xml: bytes) -> Any:
    try:
        root = etree.fromstring(xml, parser=_PARSER)
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"audit message is not well-formed XML: {exc}") from exc
    if root.tag != "AuditMessage":
        raise ValueError(f"expected an AuditMessage, got {root.tag!r}")
    event = root.find("EventIdentification")
    if event is None:
        raise ValueError("audit message without EventIdentification")

    return event


def _attribute(element: Any, name: str) -> str:
    value = None if element is None else element.get(name)
    if not value:
        raise ValueError(f"audit message without {name}")

    return str(value)
