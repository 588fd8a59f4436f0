"""Coded values of HL7 v2 message control (HL7 v2.5 chapter 2, tables 0008-0516).

Each enumeration is one HL7 table; a member is the code as written in the
message. :data:`CHARSETS` maps the MSH-18 values of table 0211 that SPIDERS
reads to Python codecs, and :data:`SUPPORTED_VERSIONS` lists the MSH-12
version IDs it accepts.

Limitations
-----------
Only the members SPIDERS writes or tests are listed. Table 0211 is limited to
ASCII, ISO 8859-1 to 8859-9, 8859-15 and UTF-8; ISO 2022 code switching
(``ISO IR87`` and the like) and UTF-16/32 are not decoded.
"""

from __future__ import annotations

import logging
from enum import IntEnum, StrEnum

logger = logging.getLogger(__name__)


class AckCode(StrEnum):
    """MSA-1 acknowledgment code, HL7 table 0008."""

    APPLICATION_ACCEPT = "AA"
    APPLICATION_ERROR = "AE"
    APPLICATION_REJECT = "AR"
    COMMIT_ACCEPT = "CA"
    COMMIT_ERROR = "CE"
    COMMIT_REJECT = "CR"

    @property
    def commit(self) -> AckCode:
        """The enhanced-mode (commit) code of the same meaning."""
        return _COMMIT[self]


_COMMIT = {
    AckCode.APPLICATION_ACCEPT: AckCode.COMMIT_ACCEPT,
    AckCode.APPLICATION_ERROR: AckCode.COMMIT_ERROR,
    AckCode.APPLICATION_REJECT: AckCode.COMMIT_REJECT,
    AckCode.COMMIT_ACCEPT: AckCode.COMMIT_ACCEPT,
    AckCode.COMMIT_ERROR: AckCode.COMMIT_ERROR,
    AckCode.COMMIT_REJECT: AckCode.COMMIT_REJECT,
}


class ErrorCode(IntEnum):
    """ERR-3 message error condition code, HL7 table 0357."""

    MESSAGE_ACCEPTED = 0
    SEGMENT_SEQUENCE_ERROR = 100
    REQUIRED_FIELD_MISSING = 101
    DATA_TYPE_ERROR = 102
    TABLE_VALUE_NOT_FOUND = 103
    UNSUPPORTED_MESSAGE_TYPE = 200
    UNSUPPORTED_EVENT_CODE = 201
    UNSUPPORTED_PROCESSING_ID = 202
    UNSUPPORTED_VERSION_ID = 203
    UNKNOWN_KEY_IDENTIFIER = 204
    DUPLICATE_KEY_IDENTIFIER = 205
    APPLICATION_RECORD_LOCKED = 206
    APPLICATION_INTERNAL_ERROR = 207

    @property
    def text(self) -> str:
        """The code's meaning as table 0357 words it (ERR-3.2)."""
        return _ERROR_TEXT[self]


_ERROR_TEXT = {
    ErrorCode.MESSAGE_ACCEPTED: "Message accepted",
    ErrorCode.SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    ErrorCode.REQUIRED_FIELD_MISSING: "Required field missing",
    ErrorCode.DATA_TYPE_ERROR: "Data type error",
    ErrorCode.TABLE_VALUE_NOT_FOUND: "Table value not found",
    ErrorCode.UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    ErrorCode.UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    ErrorCode.UNSUPPORTED_PROCESSING_ID: "Unsupported processing id",
    ErrorCode.UNSUPPORTED_VERSION_ID: "Unsupported version id",
    ErrorCode.UNKNOWN_KEY_IDENTIFIER: "Unknown key identifier",
    ErrorCode.DUPLICATE_KEY_IDENTIFIER: "Duplicate key identifier",
    ErrorCode.APPLICATION_RECORD_LOCKED: "Application record locked",
    ErrorCode.APPLICATION_INTERNAL_ERROR: "Application internal error",
}

# The coding system of ERR-3 (CWE-3).
ERROR_CODE_SYSTEM = "HL70357"


class ApplicationErrorCode(IntEnum):
    """ERR-5 application error code, HL7 user-defined table 0533.

    HL7 leaves the table to each site; the codes are those the French CI-SIS
    HL7 v2 profiles define (ANS, "Transmission de documents CDA en HL7v2",
    table applicationErrorCode), which go with ERR-3 207.
    """

    DEMOGRAPHICS_DIFFER = 904

    @property
    def text(self) -> str:
        """The code's meaning (ERR-5.2)."""
        return _APPLICATION_ERROR_TEXT[self]


_APPLICATION_ERROR_TEXT = {
    ApplicationErrorCode.DEMOGRAPHICS_DIFFER: (
        "Patient demographics differ from the patient index"
    ),
}

# The coding system of ERR-5 (CWE-3).
APPLICATION_ERROR_CODE_SYSTEM = "HL70533"


class Severity(StrEnum):
    """ERR-4 error severity, HL7 table 0516."""

    WARNING = "W"
    INFORMATION = "I"
    ERROR = "E"
    FATAL = "F"


class AckCondition(StrEnum):
    """MSH-15/MSH-16 accept and application acknowledgment type, HL7 table 0155."""

    ALWAYS = "AL"
    NEVER = "NE"
    ERROR_ONLY = "ER"
    SUCCESS_ONLY = "SU"


class ProcessingId(StrEnum):
    """MSH-11 processing ID, HL7 table 0103."""

    DEBUGGING = "D"
    PRODUCTION = "P"
    TRAINING = "T"


# MSH-18 character sets (HL7 table 0211) → Python codec. An empty MSH-18 means
# the site default (SPIDERS_HL7_DEFAULT_CHARSET).
CHARSETS = {
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/2": "iso8859_2",
    "8859/3": "iso8859_3",
    "8859/4": "iso8859_4",
    "8859/5": "iso8859_5",
    "8859/6": "iso8859_6",
    "8859/7": "iso8859_7",
    "8859/8": "iso8859_8",
    "8859/9": "iso8859_9",
    "8859/15": "iso8859_15",
    "UNICODE UTF-8": "utf-8",
}

# MSH-12.1 version IDs accepted; close variants are mapped by er7.version_id.
SUPPORTED_VERSIONS = frozenset(
    {"2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8"}
)
# Versions whose ERR segment is the single ERR-1 (ELD) field of v2.3/v2.4.
ELD_VERSIONS = frozenset({"2.3", "2.3.1", "2.4"})
