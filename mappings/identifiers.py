"""Patient identifiers between FHIR, HL7 v2 (CX) and DICOM.

A FHIR ``Identifier.system`` of the form ``urn:oid:<OID>`` is the same assigning
authority as the universal ID of an HL7 CX (CX-4.2, type ``ISO`` in CX-4.3) and
the Universal Entity ID (0040,0032) of a DICOM Issuer of Patient ID Qualifiers
item. Systems that are not OIDs are kept as written and never become an HL7
universal ID.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

URN_OID = "urn:oid:"

# French national identifier (INS) assigning authorities (ANS, CI-SIS).
INS_NIR = "1.2.250.1.213.1.4.8"
INS_NIA = "1.2.250.1.213.1.4.9"
INS_NIR_TEST = "1.2.250.1.213.1.4.10"
INS_NIR_DEMO = "1.2.250.1.213.1.4.11"
INS_OIDS = frozenset({INS_NIR, INS_NIA, INS_NIR_TEST, INS_NIR_DEMO})

_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")


@dataclass(frozen=True)
class Identifier:
    """A patient identifier in one assigning authority.

    Attributes
    ----------
    system : str
        The assigning authority: an OID without ``urn:oid:``, or a URI.
    value : str
        The identifier itself.
    type_code : str or None
        HL7 table 0203 identifier type (``PI``, ``INS``, ``NH``...).
    namespace : str
        The authority's namespace ID (CX-4.1), empty when unknown.
    """

    system: str
    value: str
    type_code: str | None = None
    namespace: str = ""

    @property
    def is_oid(self) -> bool:
        """True when the system is an ISO OID."""
        return is_oid(self.system)

    @property
    def is_ins(self) -> bool:
        """True for a French INS (NIR or NIA, production or test)."""
        return self.system in INS_OIDS


def is_oid(value: str) -> bool:
    """True when `value` is a syntactically valid ISO OID."""
    return bool(_OID.match(value))


def system_to_authority(system: str) -> str:
    """Return the assigning authority for a FHIR ``Identifier.system``.

    ``urn:oid:1.2.3`` becomes ``1.2.3``; any other URI is returned as is.
    """
    system = system.strip()
    if system[: len(URN_OID)].lower() == URN_OID:
        return system[len(URN_OID) :]
    return system


def authority_to_system(authority: str) -> str:
    """Return the FHIR ``Identifier.system`` for an assigning authority."""
    return URN_OID + authority if is_oid(authority) else authority


def to_cx(ident: Identifier) -> str:
    """Format `ident` as an HL7 v2 CX: ``value^^^namespace&oid&ISO^type``.

    Delimiters are the HL7 defaults; values are assumed free of them (the
    caller escapes free text before it reaches here).
    """
    if ident.is_oid:
        authority = f"{ident.namespace}&{ident.system}&ISO"
    else:
        authority = ident.namespace or ident.system
    cx = f"{ident.value}^^^{authority}"
    if ident.type_code:
        cx += f"^{ident.type_code}"
    return cx
