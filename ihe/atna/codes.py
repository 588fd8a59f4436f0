"""Coded values of the DICOM audit message (PS3.15 A.5, PS3.16 CID 400-402).

A coded value in the audit XML carries three attributes: ``csd-code``,
``codeSystemName`` and ``originalText`` (the code meaning). :class:`Code` holds
those three; the enumerations below name the values SPIDERS emits, each member
being its ``csd-code`` and offering the full :class:`Code` as ``member.code``.
Plain enumerated attributes (outcome, object type and role, network access
point type) are :class:`~enum.IntEnum` members written as their number.

Limitations
-----------
Only the codes SPIDERS uses or is likely to use are listed: CID 400 and 401
from the DICOM scheme, the RFC 3881 participant object ID types, and the IHE
transactions SPIDERS takes part in. Any other code can still be written by
building a :class:`Code` by hand; nothing checks it against a terminology.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Self

logger = logging.getLogger(__name__)

DCM = "DCM"
RFC_3881 = "RFC-3881"
IHE_TRANSACTIONS = "IHE Transactions"


@dataclass(frozen=True, slots=True)
class Code:
    """One coded value, as written in the audit XML.

    Parameters
    ----------
    csd_code : str
        The code value (``csd-code`` attribute).
    code_system_name : str
        The coding scheme (``codeSystemName``), e.g. ``"DCM"``.
    original_text : str
        The code meaning (``originalText``).
    """

    csd_code: str
    code_system_name: str
    original_text: str


class CodedEnum(StrEnum):
    """Base of the enumerations whose members are coded values.

    A member is declared as ``NAME = csd_code, meaning`` or, outside the DICOM
    scheme, ``NAME = csd_code, meaning, scheme``; it compares equal to its
    ``csd_code``.
    """

    meaning: str
    scheme: str

    def __new__(cls, value: str, meaning: str = "", scheme: str = DCM) -> Self:
        member = str.__new__(cls, value)
        member._value_ = value
        member.meaning = meaning
        member.scheme = scheme
        return member

    @property
    def code(self) -> Code:
        """The coded value of this member."""
        return Code(str(self.value), self.scheme, self.meaning)


class EventID(CodedEnum):
    """Audit event IDs, PS3.16 CID 400 "Audit Event ID" (PS3.15 A.5.3)."""

    APPLICATION_ACTIVITY = "110100", "Application Activity"
    AUDIT_LOG_USED = "110101", "Audit Log Used"
    BEGIN_TRANSFERRING_DICOM_INSTANCES = (
        "110102",
        "Begin Transferring DICOM Instances",
    )
    DICOM_INSTANCES_ACCESSED = "110103", "DICOM Instances Accessed"
    DICOM_INSTANCES_TRANSFERRED = "110104", "DICOM Instances Transferred"
    DICOM_STUDY_DELETED = "110105", "DICOM Study Deleted"
    EXPORT = "110106", "Export"
    IMPORT = "110107", "Import"
    NETWORK_ENTRY = "110108", "Network Entry"
    ORDER_RECORD = "110109", "Order Record"
    PATIENT_RECORD = "110110", "Patient Record"
    PROCEDURE_RECORD = "110111", "Procedure Record"
    QUERY = "110112", "Query"
    SECURITY_ALERT = "110113", "Security Alert"
    USER_AUTHENTICATION = "110114", "User Authentication"


class EventTypeCode(CodedEnum):
    """Event type codes: PS3.16 CID 401 "Audit Event Type Code" and IHE transactions.

    IHE transactions use the scheme "IHE Transactions" with the transaction
    number as code and its title as meaning (IHE ITI TF-2, audit sections of
    each transaction).
    """

    APPLICATION_START = "110120", "Application Start"
    APPLICATION_STOP = "110121", "Application Stop"
    LOGIN = "110122", "Login"
    LOGOUT = "110123", "Logout"
    ATTACH = "110124", "Attach"
    DETACH = "110125", "Detach"
    NODE_AUTHENTICATION = "110126", "Node Authentication"
    EMERGENCY_OVERRIDE_STARTED = "110127", "Emergency Override Started"
    NETWORK_CONFIGURATION = "110128", "Network Configuration"
    SECURITY_CONFIGURATION = "110129", "Security Configuration"
    HARDWARE_CONFIGURATION = "110130", "Hardware Configuration"
    SOFTWARE_CONFIGURATION = "110131", "Software Configuration"
    USE_OF_RESTRICTED_FUNCTION = "110132", "Use of Restricted Function"
    AUDIT_RECORDING_STOPPED = "110133", "Audit Recording Stopped"
    AUDIT_RECORDING_STARTED = "110134", "Audit Recording Started"
    OBJECT_SECURITY_ATTRIBUTES_CHANGED = (
        "110135",
        "Object Security Attributes Changed",
    )
    SECURITY_ROLES_CHANGED = "110136", "Security Roles Changed"
    USER_SECURITY_ATTRIBUTES_CHANGED = "110137", "User Security Attributes Changed"

    ITI_8 = "ITI-8", "Patient Identity Feed", IHE_TRANSACTIONS
    ITI_9 = "ITI-9", "PIX Query", IHE_TRANSACTIONS
    ITI_18 = "ITI-18", "Registry Stored Query", IHE_TRANSACTIONS
    ITI_20 = "ITI-20", "Record Audit Event", IHE_TRANSACTIONS
    ITI_21 = "ITI-21", "Patient Demographics Query", IHE_TRANSACTIONS
    ITI_30 = "ITI-30", "Patient Identity Management", IHE_TRANSACTIONS
    ITI_31 = "ITI-31", "Patient Encounter Management", IHE_TRANSACTIONS
    ITI_41 = "ITI-41", "Provide and Register Document Set-b", IHE_TRANSACTIONS
    ITI_78 = "ITI-78", "Mobile Patient Demographics Query", IHE_TRANSACTIONS
    ITI_81 = "ITI-81", "Retrieve ATNA Audit Event", IHE_TRANSACTIONS
    ITI_83 = (
        "ITI-83",
        "Mobile Patient Identifier Cross-reference Query",
        IHE_TRANSACTIONS,
    )
    RAD_14 = "RAD-14", "Query Images", IHE_TRANSACTIONS
    RAD_16 = "RAD-16", "Retrieve Images", IHE_TRANSACTIONS
    RAD_69 = "RAD-69", "Retrieve Imaging Document Set", IHE_TRANSACTIONS


class RoleIDCode(CodedEnum):
    """Active participant roles, PS3.16 CID 402 "Audit Active Participant Role ID"."""

    APPLICATION = "110150", "Application"
    APPLICATION_LAUNCHER = "110151", "Application Launcher"
    DESTINATION = "110152", "Destination Role ID"
    SOURCE = "110153", "Source Role ID"
    DESTINATION_MEDIA = "110154", "Destination Media"
    SOURCE_MEDIA = "110155", "Source Media"


class ParticipantObjectIDTypeCode(CodedEnum):
    """Participant object ID types: PS3.15 A.5.1.2.4 (RFC 3881) and DCM codes."""

    MEDICAL_RECORD_NUMBER = "1", "Medical Record Number", RFC_3881
    PATIENT_NUMBER = "2", "Patient Number", RFC_3881
    ENCOUNTER_NUMBER = "3", "Encounter Number", RFC_3881
    SEARCH_CRITERIA = "10", "Search Criteria", RFC_3881
    USER_IDENTIFIER = "11", "User Identifier", RFC_3881
    URI = "12", "URI", RFC_3881
    STUDY_INSTANCE_UID = "110180", "Study Instance UID"
    SOP_CLASS_UID = "110181", "SOP Class UID"
    NODE_ID = "110182", "Node ID"


class AuditSourceTypeCode(CodedEnum):
    """Kinds of audit source, PS3.15 A.5.1.2.1 "Audit Source Type Code".

    The standard calls these values rather than a coded terminology; SPIDERS
    writes them with the scheme "DCM" and the table's meaning, both optional in
    the schema.
    """

    END_USER_INTERFACE = "1", "End-user interface"
    DATA_ACQUISITION_DEVICE = "2", "Data acquisition device or instrument"
    WEB_SERVER = "3", "Web server process tier in a multi-tier system"
    APPLICATION_SERVER = "4", "Application server process tier in a multi-tier system"
    DATABASE_SERVER = "5", "Database server process tier in a multi-tier system"
    SECURITY_SERVER = "6", "Security server, e.g., a domain controller"
    NETWORK_COMPONENT = "7", "ISO level 1-3 network component"
    OPERATING_SOFTWARE = "8", "ISO level 4-6 operating software"
    OTHER = "9", "External source, other or unknown type"


class EventActionCode(StrEnum):
    """What the audited action did to its objects (PS3.15 A.5.1 EventActionCode)."""

    CREATE = "C"
    READ = "R"
    UPDATE = "U"
    DELETE = "D"
    EXECUTE = "E"


class EventOutcomeIndicator(IntEnum):
    """How the audited action ended (PS3.15 A.5.1 EventOutcomeIndicator)."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


class NetworkAccessPointTypeCode(IntEnum):
    """What ``NetworkAccessPointID`` holds (PS3.15 A.5.1 ActiveParticipant)."""

    MACHINE_NAME = 1
    IP_ADDRESS = 2
    TELEPHONE_NUMBER = 3
    EMAIL_ADDRESS = 4
    URI = 5


class ParticipantObjectTypeCode(IntEnum):
    """Kinds of participant object (PS3.15 A.5.1 ParticipantObjectTypeCode)."""

    PERSON = 1
    SYSTEM_OBJECT = 2
    ORGANIZATION = 3
    OTHER = 4


class ParticipantObjectTypeCodeRole(IntEnum):
    """Roles of a participant object, PS3.15 A.5.1.2.2.

    Roles 4, 7, 12 and 14 are deprecated by DICOM and kept for reading only.
    """

    PATIENT = 1
    LOCATION = 2
    REPORT = 3
    RESOURCE = 4
    MASTER_FILE = 5
    USER = 6
    LIST = 7
    DOCTOR = 8
    SUBSCRIBER = 9
    GUARANTOR = 10
    SECURITY_USER_ENTITY = 11
    SECURITY_USER_GROUP = 12
    SECURITY_RESOURCE = 13
    SECURITY_GRANULARITY_DEFINITION = 14
    PROVIDER = 15
    DATA_DESTINATION = 16
    DATA_REPOSITORY = 17
    SCHEDULE = 18
    CUSTOMER = 19
    JOB = 20
    JOB_STREAM = 21
    TABLE = 22
    ROUTING_CRITERIA = 23
    QUERY = 24
    DATA_SOURCE = 25
    PROCESSING_ELEMENT = 26
