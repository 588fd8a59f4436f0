"""Query/Retrieve SCP (PS3.4 Annex C) over an archive: C-FIND, C-MOVE, C-GET.

The board's console (or any foreign Q/R client such as dcmtk's ``findscu``,
``movescu`` and ``getscu``) searches and retrieves what the cache holds. The
same handlers serve the demo's simulated sites.

Matching follows PS3.4 C.2.2.2 for the keys a console uses: single value
(with ``*`` and ``?`` wildcards on text keys, case-insensitive for names), UID
lists, and date ranges. Study- and series-level counts
(NumberOfStudyRelatedSeries, NumberOfStudyRelatedInstances,
NumberOfSeriesRelatedInstances) and ModalitiesInStudy are computed from what the
archive holds.

Instances go out in the transfer syntax they are stored in when the peer
accepts it, else decoded to an uncompressed syntax; an instance that can go out
in neither fails alone, listed in the Failed SOP Instance UID List (see
:mod:`ihe.dicom.transfer_syntaxes`).

Limitations
-----------
Study Root and Patient Root information models only; relational queries and
sequence matching are not supported (sequence keys are returned empty). Time
ranges are compared as text.
"""

from __future__ import annotations

import fnmatch
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext

from ihe.dicom.archive import Archive
from ihe.dicom.transfer_syntaxes import (
    DestinationWatch,
    destination_with_contexts,
    not_sent,
    prepare,
    propose_contexts,
)
from mappings.dicom_study import normalise_character_set
from mappings.names import fold
from server.models import CachedInstance

logger = logging.getLogger(__name__)

LOG_FIND = "C-FIND answered"
LOG_RETRIEVE = "retrieve sub-operations started"
LOG_CHARSET_FIXED = "character set of a cached instance corrected for sending"

STATUS_PENDING = 0xFF00
STATUS_SUCCESS = 0x0000
STATUS_IDENTIFIER_MISMATCH = 0xA900

# Keyword → CachedInstance column, per level that owns the attribute.
PATIENT_KEYS = {
    "PatientID": "patient_id",
    "IssuerOfPatientID": "issuer_of_patient_id",
    "PatientName": "patient_name",
    "PatientBirthDate": "patient_birth_date",
    "PatientSex": "patient_sex",
}
STUDY_KEYS = {
    **PATIENT_KEYS,
    "StudyInstanceUID": "study_uid",
    "StudyDate": "study_date",
    "StudyTime": "study_time",
    "StudyDescription": "study_description",
    "StudyID": "study_id",
    "AccessionNumber": "accession_number",
}
SERIES_KEYS = {
    "StudyInstanceUID": "study_uid",
    "SeriesInstanceUID": "series_uid",
    "Modality": "modality",
    "SeriesNumber": "series_number",
    "SeriesDescription": "series_description",
}
IMAGE_KEYS = {
    "StudyInstanceUID": "study_uid",
    "SeriesInstanceUID": "series_uid",
    "SOPInstanceUID": "sop_instance_uid",
    "SOPClassUID": "sop_class_uid",
    "InstanceNumber": "instance_number",
}
LEVELS: dict[str, tuple[str, dict[str, str]]] = {
    "PATIENT": ("patient_id", PATIENT_KEYS),
    "STUDY": ("study_uid", STUDY_KEYS),
    "SERIES": ("series_uid", SERIES_KEYS),
    "IMAGE": ("sop_instance_uid", IMAGE_KEYS),
}
UID_COLUMNS = {"study_uid", "series_uid", "sop_instance_uid", "sop_class_uid"}
DATE_COLUMNS = {"study_date", "patient_birth_date"}
NAME_COLUMNS = {"patient_name"}


@dataclass(frozen=True)
class FindSummary:
    """A C-FIND answered: who asked, the identifier as received, how many matched."""

    calling_ae: str
    address: str
    sop_class_uid: str
    query: bytes
    matches: int


@dataclass
class Match:
    """One entity (patient, study, series or instance) found in the archive."""

    attributes: dict[str, Any]
    rows: list[CachedInstance]


@dataclass
class StudySent:
    """What one C-MOVE or C-GET offered of one study."""

    study_uid: str
    patient_id: str | None
    patient_name: str | None
    sop_classes: Counter[str] = field(default_factory=Counter)


@dataclass
class RetrieveSummary:
    """What one C-MOVE or C-GET sent, and to whom, for auditing."""

    requestor_ae: str
    requestor_address: str
    destination_ae: str
    destination_host: str
    studies: list[StudySent]
    cancelled: bool = False


class QueryRetrieveSCP:
    """C-FIND, C-MOVE and C-GET handlers over `archive`.

    Parameters
    ----------
    archive : Archive
        What is searched and sent.
    ae_title : str
        Our AE title, returned as Retrieve AE Title.
    move_destination : callable
        Maps a Move Destination AE title to ``(host, port)`` or ``(host, port,
        associate keyword arguments)`` (for example ``{"tls_args": ...}``), or
        ``None`` when the destination is unknown (answered 0xA801).
    on_sent : callable, optional
        Called with a :class:`RetrieveSummary` once a C-MOVE or C-GET has
        offered its last instance, to audit the transfer; its errors are
        logged, never sent to the peer. The counts are the instances handed
        to pynetdicom, whose sub-operation statuses the handler never sees;
        an instance no accepted presentation context can carry is not
        counted.
    """

    def __init__(
        self,
        archive: Archive,
        ae_title: str,
        move_destination: Callable[[str], tuple[Any, ...] | None],
        on_sent: Callable[[RetrieveSummary], None] | None = None,
        on_find: Callable[[FindSummary], None] | None = None,
        on_refused: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.on_refused = on_refused
        self.archive = archive
        self.ae_title = ae_title
        self.move_destination = move_destination
        self.on_sent = on_sent
        self.on_find = on_find

    @property
    def handlers(self) -> list[evt.EventHandlerType]:
        """The (event, handler) pairs to bind on the AE's server."""
        return [
            (evt.EVT_C_FIND, self.handle_find),
            (evt.EVT_C_MOVE, self.handle_move),
            (evt.EVT_C_GET, self.handle_get),
        ]

    # C-FIND

    def handle_find(self, event: Event) -> Iterator[tuple[int, Dataset | None]]:
        """Yield one pending response per match, then success."""
        identifier = event.identifier
        level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
        if level not in LEVELS:
            yield STATUS_IDENTIFIER_MISMATCH, None
            return
        matches = self.search(level, identifier)
        for match in matches:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield STATUS_PENDING, self._response(identifier, level, match)
        logger.info(LOG_FIND, extra={"level": level, "matches": len(matches)})
        if self.on_find is not None:
            requestor = event.assoc.requestor
            summary = FindSummary(
                calling_ae=str(requestor.ae_title).strip(),
                address=str(requestor.address),
                sop_class_uid=str(event.context.abstract_syntax),
                query=_raw_identifier(event),
                matches=len(matches),
            )
            try:
                self.on_find(summary)
            except Exception:
                logger.exception("reporting a C-FIND failed")

    def search(self, level: str, identifier: Dataset) -> list[Match]:
        """Entities at `level` whose attributes match `identifier`'s keys."""
        group_column, keys = LEVELS[level]
        prefilter: dict[str, Any] = {}
        for keyword, column in keys.items():
            value = _value(identifier, keyword)
            if (
                column in UID_COLUMNS
                and value
                and "*" not in value
                and "?" not in value
            ):
                prefilter[column] = value.split("\\")
        rows = self.archive.instances(**prefilter)
        groups: dict[str, list[CachedInstance]] = {}
        for row in rows:
            key = getattr(row, group_column)
            if key is not None:
                groups.setdefault(str(key), []).append(row)
        matches = []
        for group in groups.values():
            attributes = _attributes(group, keys)
            if _matches(identifier, keys, attributes) and _match_modalities(
                identifier, level, group
            ):
                matches.append(Match(attributes, group))
        return matches

    def _response(self, identifier: Dataset, level: str, match: Match) -> Dataset:
        rsp = Dataset()
        rsp.SpecificCharacterSet = "ISO_IR 192"
        rsp.QueryRetrieveLevel = level
        keys = LEVELS[level][1]
        rows = match.rows
        computed = {
            "NumberOfStudyRelatedSeries": len({r.series_uid for r in rows}),
            "NumberOfStudyRelatedInstances": len(rows),
            "NumberOfSeriesRelatedInstances": len(rows),
            "NumberOfPatientRelatedStudies": len({r.study_uid for r in rows}),
            "NumberOfPatientRelatedInstances": len(rows),
            "ModalitiesInStudy": sorted({r.modality for r in rows if r.modality}),
            "SOPClassesInStudy": sorted({r.sop_class_uid for r in rows}),
        }
        for element in identifier:
            keyword = element.keyword
            if not keyword or keyword in ("QueryRetrieveLevel", "SpecificCharacterSet"):
                continue
            if keyword in computed:
                setattr(rsp, keyword, computed[keyword])
            elif keyword in keys and match.attributes.get(keys[keyword]) is not None:
                setattr(rsp, keyword, match.attributes[keys[keyword]])
            elif element.VR == "SQ":
                setattr(rsp, keyword, [])
            else:
                setattr(rsp, keyword, "")
        # Unique keys of the levels above are always returned (PS3.4 C.4.1.2.1).
        for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID"):
            column = {**STUDY_KEYS, **SERIES_KEYS}[keyword]
            if keyword in keys and keyword not in rsp:
                setattr(rsp, keyword, match.attributes.get(column) or "")
        rsp.RetrieveAETitle = self.ae_title
        return rsp

    # C-MOVE and C-GET

    def handle_move(self, event: Event) -> Iterator[Any]:
        """Resolve the destination, then yield the matching instances."""
        destination = self.move_destination(str(event.move_destination).strip())
        if destination is None:
            unknown = str(event.move_destination).strip()
            logger.warning(
                "C-MOVE to an unknown destination refused",
                extra={"destination": unknown},
            )
            if self.on_refused is not None:
                requestor = event.assoc.requestor
                try:
                    self.on_refused(
                        str(requestor.ae_title).strip(),
                        str(requestor.address),
                        f"C-MOVE to unknown destination {unknown} refused",
                    )
                except Exception:
                    logger.exception("reporting a refusal failed")
            yield None, None
            return
        # The destination association proposes the batch's own transfer syntaxes
        # and an uncompressed context per SOP class (see transfer_syntaxes).
        rows = self._retrieved(event)
        batch = [(row.sop_class_uid, row.transfer_syntax) for row in rows or []]
        watch = DestinationWatch()
        yield destination_with_contexts(destination, propose_contexts(batch), watch)
        move_ae = str(event.move_destination).strip()
        yield from self._send(event, move_ae, str(destination[0]), rows, watch.accepted)

    def handle_get(self, event: Event) -> Iterator[Any]:
        """Yield the number of matching instances, then each of them."""
        requestor = event.assoc.requestor
        rows = self._retrieved(event)

        def accepted() -> list[PresentationContext]:
            return list(event.assoc.accepted_contexts)

        yield from self._send(
            event, requestor.ae_title, requestor.address, rows, accepted
        )

    def _retrieved(self, event: Event) -> list[CachedInstance] | None:
        """The instances a C-MOVE or C-GET asks for; ``None`` for a bad level."""
        identifier = event.identifier
        level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
        if level not in LEVELS:
            return None
        rows = [row for match in self.search(level, identifier) for row in match.rows]
        logger.info(LOG_RETRIEVE, extra={"level": level, "instances": len(rows)})

        return rows

    def _send(
        self,
        event: Event,
        dest_ae: str,
        dest_host: str,
        rows: list[CachedInstance] | None,
        accepted: Callable[[], list[PresentationContext]],
    ) -> Iterator[Any]:
        if rows is None:
            # One announced sub-operation lets the failure status reach the peer.
            yield 1
            yield STATUS_IDENTIFIER_MISMATCH, None
            return
        yield len(rows)
        requestor = event.assoc.requestor
        summary = RetrieveSummary(
            requestor.ae_title, requestor.address, dest_ae, dest_host, []
        )
        try:
            for row, path in zip(rows, self.archive.absolute(rows), strict=True):
                if event.is_cancelled:
                    summary.cancelled = True
                    yield 0xFE00, None
                    return
                try:
                    ds = dcmread(path)
                except (OSError, ValueError) as exc:
                    logger.error("cached file unreadable", extra={"error": str(exc)})
                    yield STATUS_PENDING, not_sent(row.sop_instance_uid)
                    continue
                # The stored file keeps what the site wrote; what we send
                # carries a defined term for its character set (field case C09).
                raw = normalise_character_set(ds)
                if raw is not None:
                    logger.warning(
                        LOG_CHARSET_FIXED, extra={"received": raw, "sop": row.id}
                    )
                # A failed instance is a failed sub-operation; the others go on.
                outgoing = prepare(ds, accepted())
                if outgoing.error is None:
                    _count_sent(summary, row)
                yield STATUS_PENDING, outgoing.dataset
        finally:
            self._report(summary)

    def _report(self, summary: RetrieveSummary) -> None:
        if self.on_sent is None or not summary.studies:
            return
        try:
            self.on_sent(summary)
        except Exception:
            logger.exception("audit of a retrieve failed")


def _count_sent(summary: RetrieveSummary, row: CachedInstance) -> None:
    for study in summary.studies:
        if study.study_uid == row.study_uid:
            break
    else:
        study = StudySent(row.study_uid, row.patient_id, row.patient_name)
        summary.studies.append(study)
    study.sop_classes[row.sop_class_uid] += 1


def _raw_identifier(event: Event) -> bytes:
    """The C-FIND identifier as the peer encoded it."""
    stream = getattr(event.request, "Identifier", None)
    return bytes(stream.getvalue()) if stream is not None else b""


def _value(identifier: Dataset, keyword: str) -> str:
    if keyword not in identifier:
        return ""
    value = identifier.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _attributes(rows: list[CachedInstance], keys: dict[str, str]) -> dict[str, Any]:
    first = rows[0]
    return {column: getattr(first, column) for column in keys.values()}


def _matches(identifier: Dataset, keys: dict[str, str], attrs: dict[str, Any]) -> bool:
    for keyword, column in keys.items():
        wanted = _value(identifier, keyword)
        if not wanted or wanted == "*":
            continue
        have = "" if attrs.get(column) is None else str(attrs[column])
        if not _match_one(column, wanted, have):
            return False
    return True


def _match_modalities(
    identifier: Dataset, level: str, rows: list[CachedInstance]
) -> bool:
    wanted = _value(identifier, "ModalitiesInStudy")
    if level != "STUDY" or not wanted or wanted == "*":
        return True
    have = {row.modality for row in rows if row.modality}
    return bool(have & set(wanted.split("\\")))


def _match_one(column: str, wanted: str, have: str) -> bool:
    if column in UID_COLUMNS:
        return have in wanted.split("\\")
    if column in DATE_COLUMNS and "-" in wanted:
        low, _, high = wanted.partition("-")
        return bool(have) and (not low or have >= low) and (not high or have <= high)
    if column in NAME_COLUMNS:
        return fnmatch.fnmatchcase(fold(have), fold(wanted).replace("[", "[[]"))
    if "*" in wanted or "?" in wanted:
        return fnmatch.fnmatchcase(have, wanted.replace("[", "[[]"))
    return have == wanted
