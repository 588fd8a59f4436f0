"""DICOM PS3.15 audit message to FHIR R4 AuditEvent (IHE BALP patterns).

The audit outbox keeps each event as the DICOM XML sent over ITI-20; ITI-81
serves the same events as AuditEvent resources, mapped here element by
element:

==================================  =========================================
DICOM (PS3.15 A.5.1)                FHIR R4 AuditEvent
==================================  =========================================
EventID                             ``type`` (DCM system)
EventTypeCode                       ``subtype`` (DCM, or
                                    ``urn:ihe:event-type-code`` for IHE
                                    transactions, as BALP writes them)
@EventActionCode                    ``action``
@EventDateTime                      ``recorded``
@EventOutcomeIndicator              ``outcome``; EventOutcomeDescription
                                    ``outcomeDesc``
ActiveParticipant                   ``agent``: first RoleIDCode ``type``,
                                    others ``role``; @UserID
                                    ``who.identifier``; @AlternativeUserID
                                    ``altId``; @UserName ``name``;
                                    @UserIsRequestor ``requestor``;
                                    @NetworkAccessPoint* ``network``
AuditSourceIdentification           ``source``: @AuditSourceID
                                    ``observer``, @AuditEnterpriseSiteID
                                    ``site``, AuditSourceTypeCode ``type``
ParticipantObjectIdentification     ``entity``: @ParticipantObjectID
                                    ``what.identifier`` (and
                                    ``what.reference`` when it names a
                                    resource of ours), type code ``type``
                                    (audit-entity-type), role ``role``
                                    (object-role), Name ``name``, Query
                                    ``query``, Detail ``detail``,
                                    Description ``description``
==================================  =========================================

The patient object (type 1, role 1) refers to ``Patient/<id>`` when the
caller knows the patient index id of the record's patient; otherwise it
carries the CX identifier only.

Limitations
-----------
Codes of the RFC 3881 scheme (participant object ID types) have no FHIR
system and are written without one, with their meaning as text. Media
identifiers, data life cycle and sensitivity are not mapped (SPIDERS never
writes them). No ``meta.profile`` is claimed: the events are DICOM-shaped,
not one of the BALP profiles exactly.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from lxml import etree

DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
IHE_EVENT_TYPE_SYSTEM = "urn:ihe:event-type-code"
ENTITY_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/security-source-type"

# codeSystemName in the DICOM message -> FHIR code system.
CODE_SYSTEMS = {
    "DCM": DCM_SYSTEM,
    "IHE Transactions": IHE_EVENT_TYPE_SYSTEM,
}
# Participant objects whose ID is a relative reference to one of our resources.
_REFERENCE = re.compile(r"^(Appointment|Patient|Task|AuditEvent)/[A-Za-z0-9\-.]{1,64}$")
_PATIENT_TYPE, _PATIENT_ROLE = "1", "1"

# Hardened: audit XML needs no DTD, entities or network, and is never huge.
_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
)


def to_audit_event(
    xml: str | bytes, *, resource_id: str, patient_id: str | None = None
) -> dict[str, Any]:
    """Map one DICOM audit message to an R4 AuditEvent.

    Parameters
    ----------
    xml : str or bytes
        The ``AuditMessage`` document.
    resource_id : str
        The AuditEvent's logical id.
    patient_id : str, optional
        Patient index id of the patient object, for ``Patient/<id>``.

    Returns
    -------
    dict
        The AuditEvent as FHIR JSON.

    Raises
    ------
    ValueError
        If ``xml`` is not well-formed (external entities are refused), or
        not an ``AuditMessage`` with an ``EventIdentification`` and a valid
        ``EventDateTime``.
    """
    data = xml.encode("utf-8") if isinstance(xml, str) else xml
    try:
        root = etree.fromstring(data, parser=_PARSER)
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"audit message is not well-formed XML: {exc}") from exc
    event = root.find("EventIdentification")
    if root.tag != "AuditMessage" or event is None:
        raise ValueError("not a DICOM AuditMessage")

    resource: dict[str, Any] = {"resourceType": "AuditEvent", "id": resource_id}
    resource["type"] = _coding(event.find("EventID"))
    subtypes = [_coding(code) for code in event.iterfind("EventTypeCode")]
    if subtypes:
        resource["subtype"] = subtypes
    if event.get("EventActionCode"):
        resource["action"] = event.get("EventActionCode")
    resource["recorded"] = _instant(event.get("EventDateTime", ""))
    resource["outcome"] = event.get("EventOutcomeIndicator", "0")
    description = event.findtext("EventOutcomeDescription")
    if description:
        resource["outcomeDesc"] = description
    resource["agent"] = [_agent(p) for p in root.iterfind("ActiveParticipant")]
    resource["source"] = _source(root.find("AuditSourceIdentification"))
    entities = [
        _entity(obj, patient_id)
        for obj in root.iterfind("ParticipantObjectIdentification")
    ]
    if entities:
        resource["entity"] = entities

    return resource


def _agent(participant: Any) -> dict[str, Any]:
    roles = [_concept(code) for code in participant.iterfind("RoleIDCode")]
    agent: dict[str, Any] = {}
    if roles:
        agent["type"] = roles[0]
    if roles[1:]:
        agent["role"] = roles[1:]
    who: dict[str, Any] = {"identifier": {"value": participant.get("UserID", "")}}
    if participant.get("UserName"):
        who["display"] = participant.get("UserName")
    agent["who"] = who
    if participant.get("AlternativeUserID"):
        agent["altId"] = participant.get("AlternativeUserID")
    if participant.get("UserName"):
        agent["name"] = participant.get("UserName")
    agent["requestor"] = participant.get("UserIsRequestor") == "true"
    address = participant.get("NetworkAccessPointID")
    if address:
        network = {"address": address}
        if participant.get("NetworkAccessPointTypeCode"):
            network["type"] = participant.get("NetworkAccessPointTypeCode")
        agent["network"] = network

    return agent


def _source(source: Any) -> dict[str, Any]:
    if source is None:
        return {"observer": {"display": "unknown"}}
    source_id = source.get("AuditSourceID", "")
    mapped: dict[str, Any] = {
        "observer": {"identifier": {"value": source_id}, "display": source_id}
    }
    if source.get("AuditEnterpriseSiteID"):
        mapped["site"] = source.get("AuditEnterpriseSiteID")
    types = [
        {
            "system": SOURCE_TYPE_SYSTEM,
            "code": code.get("csd-code"),
            "display": code.get("originalText"),
        }
        for code in source.iterfind("AuditSourceTypeCode")
        if code.get("csd-code")
    ]
    if types:
        mapped["type"] = types

    return mapped


def _entity(obj: Any, patient_id: str | None) -> dict[str, Any]:
    object_id = obj.get("ParticipantObjectID", "")
    type_code = obj.get("ParticipantObjectTypeCode")
    role_code = obj.get("ParticipantObjectTypeCodeRole")
    what: dict[str, Any] = {}
    if (type_code, role_code) == (_PATIENT_TYPE, _PATIENT_ROLE) and patient_id:
        what["reference"] = f"Patient/{patient_id}"
    elif _REFERENCE.match(object_id):
        what["reference"] = object_id
    identifier: dict[str, Any] = {"value": object_id}
    id_type = obj.find("ParticipantObjectIDTypeCode")
    if id_type is not None:
        identifier["type"] = _concept(id_type)
    what["identifier"] = identifier

    entity: dict[str, Any] = {"what": what}
    if type_code:
        entity["type"] = {"system": ENTITY_TYPE_SYSTEM, "code": type_code}
    if role_code:
        entity["role"] = {"system": OBJECT_ROLE_SYSTEM, "code": role_code}
    name = obj.findtext("ParticipantObjectName")
    if name:
        entity["name"] = name
    description = _description(obj.find("ParticipantObjectDescription"))
    if description:
        entity["description"] = description
    query = (obj.findtext("ParticipantObjectQuery") or "").strip()
    if query:
        entity["query"] = query
    details = [
        {"type": d.get("type"), "valueBase64Binary": d.get("value")}
        for d in obj.iterfind("ParticipantObjectDetail")
        if d.get("type") and d.get("value")
    ]
    if details:
        entity["detail"] = details

    return entity


def _description(element: Any) -> str:
    if element is None:
        return ""
    parts = [f"accession {a.get('Number')}" for a in element.iterfind("Accession")]
    parts += [
        f"SOP class {c.get('UID')}: {c.get('NumberOfInstances', '?')} instance(s)"
        for c in element.iterfind("SOPClass")
    ]

    return "; ".join(parts)


def _coding(code: Any) -> dict[str, Any]:
    if code is None:
        return {}
    coding: dict[str, Any] = {}
    system = CODE_SYSTEMS.get(code.get("codeSystemName", ""))
    if system:
        coding["system"] = system
    coding["code"] = code.get("csd-code", "")
    if code.get("originalText"):
        coding["display"] = code.get("originalText")

    return coding


def _concept(code: Any) -> dict[str, Any]:
    concept: dict[str, Any] = {"coding": [_coding(code)]}
    if code.get("originalText"):
        concept["text"] = code.get("originalText")

    return concept


def _instant(text: str) -> str:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"EventDateTime {text!r} is not a date and time") from exc
    if moment.utcoffset() is None:
        moment = moment.replace(tzinfo=UTC)

    return moment.isoformat(timespec="milliseconds")
