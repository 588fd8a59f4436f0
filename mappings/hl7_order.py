"""HL7 v2 imaging orders (ORM^O01, OMI^O23) to study hints and DICOM attributes.

For a tumour board an order is a hint: its accession number and Study
Instance UID let discovery target the right study. Each ORC starts one order
(an OBR without a preceding ORC starts one too); the segments after it, up to
the next ORC, belong to it (HL7 v2.5 sections 4.4.1 and 4.4.6; IHE RAD-4):

=============================  ===============================================
control                        ORC-1 (table 0119); ``CA``, ``DC``, ``OC``,
                               ``CR`` withdraw the hints
placer / filler order number   ORC-2 / ORC-3 (else OBR-2 / OBR-3), EI-1
procedure                      OBR-4 code and text (CWE-1, CWE-2)
accession number               IPC-1 (OMI), else OBR-18 (ORM, IHE SWF)
Study Instance UID             IPC-3 (OMI), else ZDS-1 (ORM, IHE SWF)
requested procedure ID         IPC-2, else OBR-19
modality                       IPC-5, else OBR-24
=============================  ===============================================

Limitations
-----------
One IPC per order is read (the first); several requested procedures of one
order are not told apart. Order status changes other than withdrawal do not
change the hints.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.dataset import Dataset

from ihe.hl7v2.codes import ErrorCode
from ihe.hl7v2.er7 import Message, Segment
from server.errors import MessageError

# ORC-1 order control codes (HL7 table 0119) that withdraw an order.
WITHDRAWN = frozenset({"CA", "DC", "OC", "CR", "OD"})
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
MAX_UID_LENGTH = 64


@dataclass
class Order:
    """One imaging order of a message."""

    control: str = ""
    placer_number: str = ""
    filler_number: str = ""
    procedure_code: str = ""
    procedure_text: str = ""
    accession_number: str = ""
    study_uid: str = ""
    requested_procedure_id: str = ""
    modality: str = ""

    @property
    def withdrawn(self) -> bool:
        """True when ORC-1 cancels or discontinues the order."""
        return self.control in WITHDRAWN


def read_orders(msg: Message) -> list[Order]:
    """The orders of an ORM^O01 or OMI^O23 message, in order.

    Raises
    ------
    MessageError
        No ORC or OBR (ERR-3 100), or a Study Instance UID that is not a
        DICOM UID (102).
    """
    orders: list[Order] = []
    current: Order | None = None
    seen: dict[str, int] = {}
    for seg in msg.segments:
        seen[seg.name] = seen.get(seg.name, 0) + 1
        if seg.name == "ORC" or (seg.name == "OBR" and current is None):
            current = Order()
            orders.append(current)
        if current is not None:
            _read(seg, current, seen[seg.name])
    if not orders:
        raise MessageError(
            "the message has no order (ORC or OBR)",
            ErrorCode.SEGMENT_SEQUENCE_ERROR,
            ("ORC",),
        )
    return orders


def to_dicom(order: Order) -> Dataset:
    """The DICOM attributes of an order (Requested Procedure, PS3.3 C.4.11)."""
    ds = Dataset()
    ds.AccessionNumber = order.accession_number
    if order.study_uid:
        ds.StudyInstanceUID = order.study_uid
    ds.RequestedProcedureDescription = order.procedure_text or order.procedure_code
    ds.RequestedProcedureID = order.requested_procedure_id
    ds.PlacerOrderNumberImagingServiceRequest = order.placer_number
    ds.FillerOrderNumberImagingServiceRequest = order.filler_number
    if order.modality:
        ds.Modality = order.modality
    return ds


def _read(seg: Segment, order: Order, sequence: int) -> None:
    if seg.name == "ORC":
        order.control = seg.value(1).strip().upper()
        order.placer_number = seg.value(2).strip()
        order.filler_number = seg.value(3).strip()
    elif seg.name == "OBR":
        order.placer_number = order.placer_number or seg.value(2).strip()
        order.filler_number = order.filler_number or seg.value(3).strip()
        order.procedure_code = seg.value(4, 1, 1).strip()
        order.procedure_text = seg.value(4, 1, 2).strip()
        order.accession_number = order.accession_number or seg.value(18).strip()
        order.requested_procedure_id = (
            order.requested_procedure_id or seg.value(19).strip()
        )
        order.modality = order.modality or seg.value(24).strip()
    elif seg.name == "IPC" and not order.study_uid:
        order.accession_number = seg.value(1).strip() or order.accession_number
        order.requested_procedure_id = seg.value(2).strip()
        order.study_uid = _uid(seg.value(3), ("IPC", sequence, 3))
        order.modality = seg.value(5, 1, 1).strip() or order.modality
    elif seg.name == "ZDS" and not order.study_uid:
        order.study_uid = _uid(seg.value(1), ("ZDS", sequence, 1))


def _uid(value: str, where: tuple[str | int, ...]) -> str:
    uid = value.strip()
    if uid and (len(uid) > MAX_UID_LENGTH or not _UID.match(uid)):
        raise MessageError(
            "the Study Instance UID is not a DICOM UID",
            ErrorCode.DATA_TYPE_ERROR,
            where,
        )
    return uid
