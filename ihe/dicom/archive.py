"""The instance archive: files on disk and their index in the database.

The board's cache and the demo's simulated sites are both archives. Each
instance is written exactly as it arrived (the dataset bytes of the C-STORE,
with a File Meta Information header naming the negotiated transfer syntax),
under ``<root>/<study UID>/<series UID>/<SOP instance UID>.dcm``. A path is
built only from UIDs that are digits and dots; any other value is replaced
by its SHA-256, so no crafted UID can leave the root.

An instance received again replaces the earlier file and row; an instance
whose SOP Instance UID is already held for another study or patient is refused,
as are identifiers that are not UIDs (over-long UIDs are kept, with a warning).

Instances arrive as bytes (:meth:`Archive.store`, the Storage SCP and the
C-GET client) or as a file already written in the archive's work folder
(:meth:`Archive.store_file`, the WADO-RS client); both go through the same
checks and index.

Limitations
-----------
Each stored instance is one database transaction.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ihe.dicom.ae import is_safe_uid
from server.errors import StoreRefused
from server.models import CachedInstance

logger = logging.getLogger(__name__)

LOG_STORED = "instance stored"
MAX_UID = 64


@dataclass(frozen=True)
class _Row:
    """What the index row of an instance is made from."""

    ds: Dataset
    sop_uid: str
    study_uid: str
    series_uid: str
    path: Path
    size: int
    transfer_syntax: str
    source_ae: str | None


@dataclass(frozen=True)
class StoredInstance:
    """What :meth:`Archive.store` did with one instance."""

    sop_instance_uid: str
    study_uid: str
    path: Path
    replaced: bool
    warnings: tuple[str, ...] = ()


class Archive:
    """Files under `root`, indexed in the ``cached_instance`` table.

    Parameters
    ----------
    root : pathlib.Path
        Directory that holds every instance file.
    sessions : sqlalchemy.orm.sessionmaker
        Session factory of the database holding the index.
    """

    def __init__(self, root: Path, sessions: sessionmaker[Session]) -> None:
        self.root = root
        self.sessions = sessions
        self.incoming = root / ".incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)

    # Storage

    def store(
        self, encoded: bytes, ds: Dataset, transfer_syntax: str, source_ae: str | None
    ) -> StoredInstance:
        """Write one instance and index it.

        Parameters
        ----------
        encoded : bytes
            The Part 10 bytes (preamble, File Meta, dataset as received).
        ds : pydicom.dataset.Dataset
            The same dataset, decoded, for the index.
        transfer_syntax : str
            The transfer syntax UID it was received in.
        source_ae : str or None
            The AE title that sent it.
        """
        sop_uid, study_uid, series_uid, warnings = self._admit(ds)

        def place(path: Path) -> None:
            # A name no other writer uses, even for the same instance at once.
            tmp = self.incoming_file()
            tmp.write_bytes(encoded)
            os.replace(tmp, path)

        path, replaced = self._place_and_index(
            ds,
            (study_uid, series_uid, sop_uid),
            place,
            len(encoded),
            transfer_syntax,
            source_ae,
        )
        logger.debug(LOG_STORED, extra={"replaced": replaced})
        return StoredInstance(sop_uid, study_uid, path, replaced, warnings)

    def store_file(
        self, part10: Path, ds: Dataset, transfer_syntax: str, source_ae: str | None
    ) -> StoredInstance:
        """Move a Part 10 file already on disk into the archive and index it.

        The same checks as :meth:`store`, for clients that receive an instance
        into a file (WADO-RS) and should not read it back into memory.

        Parameters
        ----------
        part10 : pathlib.Path
            The file, on the archive's file system (see :meth:`incoming_file`);
            it is moved, not copied, when accepted, and left in place when
            refused.
        ds : pydicom.dataset.Dataset
            The file's dataset (pixel data may be left out), for the index.
        transfer_syntax : str
            The transfer syntax UID of the file's dataset.
        source_ae : str or None
            The AE title (or other name) of the sender.

        Raises
        ------
        server.errors.StoreRefused
            Identifiers that are not UIDs, or an instance held for another
            study or patient.
        """
        sop_uid, study_uid, series_uid, warnings = self._admit(ds)

        def place(path: Path) -> None:
            os.replace(part10, path)

        size = part10.stat().st_size
        path, replaced = self._place_and_index(
            ds,
            (study_uid, series_uid, sop_uid),
            place,
            size,
            transfer_syntax,
            source_ae,
        )
        logger.debug(LOG_STORED, extra={"replaced": replaced})
        return StoredInstance(sop_uid, study_uid, path, replaced, warnings)

    def incoming_file(self) -> Path:
        """A fresh name in the archive's work folder, for :meth:`store_file`."""
        return self.incoming / f"{os.getpid()}-{uuid.uuid4().hex}.part"

    def _admit(self, ds: Dataset) -> tuple[str, str, str, tuple[str, ...]]:
        """The instance's UIDs and data-quality warnings, or StoreRefused."""
        sop_uid = str(ds.SOPInstanceUID)
        study_uid = str(ds.StudyInstanceUID)
        series_uid = str(ds.SeriesInstanceUID)
        for name, value in (
            ("SOPInstanceUID", sop_uid),
            ("StudyInstanceUID", study_uid),
            ("SeriesInstanceUID", series_uid),
        ):
            if not is_safe_uid(value):
                raise StoreRefused(f"{name} is not a UID (digits and dots)")
        warnings = tuple(
            f"{name} {value} is {len(value)} characters long (DICOM allows {MAX_UID})"
            for name, value in (
                ("SOPInstanceUID", sop_uid),
                ("StudyInstanceUID", study_uid),
                ("SeriesInstanceUID", series_uid),
            )
            if len(value) > MAX_UID
        )
        return sop_uid, study_uid, series_uid, warnings

    def _place_and_index(
        self,
        ds: Dataset,
        uids: tuple[str, str, str],
        place: Callable[[Path], None],
        size: int,
        transfer_syntax: str,
        source_ae: str | None,
    ) -> tuple[Path, bool]:
        """Refuse, or put the file at its path and index it: its path, and
        whether it replaced an instance already held."""
        study_uid, series_uid, sop_uid = uids
        path = self.path_for(study_uid, series_uid, sop_uid)
        row = _Row(
            ds, sop_uid, study_uid, series_uid, path, size, transfer_syntax, source_ae
        )
        try:
            return path, self._index(row, place)
        except IntegrityError:
            # The same instance was indexed by another association at once:
            # the second pass updates that row; the file is in place already.
            return path, self._index(row, None)

    def _index(self, new: _Row, place: Callable[[Path], None] | None) -> bool:
        """Index `new` in one transaction; with `place`, first refuse an
        instance held for another study or patient, then place the file."""
        with self.sessions() as session, session.begin():
            row = session.scalar(
                select(CachedInstance).where(
                    CachedInstance.sop_instance_uid == new.sop_uid
                )
            )
            replaced = row is not None
            if place is not None:
                if row is not None and (row.study_uid, row.patient_id) != (
                    new.study_uid,
                    _text(new.ds, "PatientID"),
                ):
                    raise StoreRefused(
                        "this SOP Instance UID is already held for another study "
                        "or patient"
                    )
                new.path.parent.mkdir(parents=True, exist_ok=True)
                place(new.path)
            if row is None:
                row = CachedInstance(sop_instance_uid=new.sop_uid)
                session.add(row)
            _fill(row, new.ds, new.study_uid, new.series_uid)
            row.transfer_syntax = new.transfer_syntax
            row.path = str(new.path.relative_to(self.root))
            row.size = new.size
            row.source_ae = new.source_ae
        return replaced

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """The file path of an instance, always inside :attr:`root`."""
        return (
            self.root
            / _safe_name(study_uid)
            / _safe_name(series_uid)
            / f"{_safe_name(sop_uid)}.dcm"
        )

    # Reading

    def count_instances(self, study_uid: str) -> int:
        """Number of instances of `study_uid` held."""
        with self.sessions() as session:
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(CachedInstance)
                    .where(CachedInstance.study_uid == study_uid)
                )
                or 0
            )

    def count_by_sop_class(self, study_uid: str) -> dict[str, int]:
        """Instances of `study_uid` held, per SOP Class UID."""
        with self.sessions() as session:
            rows = session.execute(
                select(CachedInstance.sop_class_uid, func.count())
                .where(CachedInstance.study_uid == study_uid)
                .group_by(CachedInstance.sop_class_uid)
            ).all()
        return {str(uid): int(n) for uid, n in rows}

    def instances(self, **criteria: Any) -> list[CachedInstance]:
        """Index rows whose columns equal `criteria` (lists mean any of)."""
        query = select(CachedInstance)
        for column, value in criteria.items():
            attribute = getattr(CachedInstance, column)
            if isinstance(value, (list, tuple, set)):
                query = query.where(attribute.in_(list(value)))
            else:
                query = query.where(attribute == value)
        with self.sessions() as session:
            return list(session.scalars(query.order_by(CachedInstance.id)))

    def absolute(self, rows: Iterable[CachedInstance]) -> Iterator[Path]:
        """The files of index `rows`."""
        for row in rows:
            yield self.root / row.path


def _fill(row: CachedInstance, ds: Dataset, study_uid: str, series_uid: str) -> None:
    row.sop_class_uid = str(ds.get("SOPClassUID", ""))
    row.study_uid = study_uid
    row.series_uid = series_uid
    row.patient_id = _text(ds, "PatientID")
    row.issuer_of_patient_id = _text(ds, "IssuerOfPatientID")
    row.patient_name = _text(ds, "PatientName")
    row.patient_birth_date = _text(ds, "PatientBirthDate")
    row.patient_sex = _text(ds, "PatientSex")
    row.study_date = _text(ds, "StudyDate")
    row.study_time = _text(ds, "StudyTime")
    row.study_description = _text(ds, "StudyDescription")
    row.study_id = _text(ds, "StudyID")
    row.accession_number = _text(ds, "AccessionNumber")
    row.modality = _text(ds, "Modality")
    row.series_number = _int(ds, "SeriesNumber")
    row.series_description = _text(ds, "SeriesDescription")
    row.instance_number = _int(ds, "InstanceNumber")


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value).strip()


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _safe_name(uid: str) -> str:
    if is_safe_uid(uid):
        return uid
    return hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()
